"""Issue 13's autocomplete through the real command tree (simcord), on the bundled default tag set: a typo, a
later word, kana and an invisible character typed into the character and artist options still offer the
tag meant; the tag index is built when the cog loads, not by the first autocomplete."""

from __future__ import annotations

from pathlib import Path

import simcord

from bot.prompts.tags import TagDatabase, import_csv
from bot.prompts.tags.bundled import DEFAULT_TAGS_FILE
from tests.cogs.conftest import BotFactory, server


async def test_typos_and_kana_find_the_intended_tag(make_bot: BotFactory, tmp_path: Path) -> None:
    import_csv(DEFAULT_TAGS_FILE, tmp_path / "data" / "tags.sqlite")  # where make_bot looks: kept
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        tags = bot.service.tags
        assert isinstance(tags, TagDatabase) and tags.loaded  # built by the cog's load, off the event loop
        channel, (alice,) = server(env, "alice")

        async def values(option: str, typed: str) -> list[str]:
            choices = await alice.autocomplete(channel, "generate", option, typed)
            assert 1 <= len(choices) <= 25, (option, typed)
            return [c["value"] for c in choices]

        assert (await values("character", "hatsnue miku"))[0] == "hatsune_miku"  # a transposition
        assert (await values("character", "shirakam_fubu"))[0] == "shirakami_fubuki"  # a deletion, typed halfway
        assert (await values("character", "はつねみく"))[0] == "hatsune_miku"
        assert (await values("character", "ハツネ"))[0] == "hatsune_miku"
        assert "shirakami_fubuki" in await values("character", "しらかみ")
        assert (await values("character", "1girl, しらかみふぶき"))[0] == "1girl, shirakami_fubuki"
        assert (await values("character", "hatsune\u200b_miku"))[0] == "hatsune_miku"  # a zero-width space
        assert "wlop" in await values("artist", "wlpo")
        assert "ebifurya" in await values("artist", "ebifruya")
