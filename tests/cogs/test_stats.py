"""/stats through the real command tree (simcord): the last 24 hours' figures from the store, per server for
a server admin, every server's for a bot admin, refused (ephemerally, nothing shown) to anyone else; English
and Japanese."""

from __future__ import annotations

import re
import time

import simcord

from bot.core.jobs import JobState, PeriodStats, UserFigures
from bot.discord_app.client import AnimeBot
from cogs.stats import stats_text
from tests.cogs.conftest import BotFactory
from tests.cogs.test_admin_scope import Servers, refused, two_servers
from tests.cogs.test_generate import finish, jobs_of
from tests.cogs.test_i18n import japanese_users  # noqa: F401  (fixture)

ADMIN_ONLY = "Only admins can do that. Nothing changed."


async def reply(member: simcord.MemberActor, channel: simcord.ChannelHandle, **options: object) -> str:
    result = await member.slash(channel, "stats", **options)
    assert result.ephemeral and result.response is not None
    return result.response.content


async def run_jobs(env: simcord.Env, bot: AnimeBot, s: Servers) -> None:
    """In server A, alice: a job of two images (done) and a cancelled one; in server B, bob: one image."""
    await alice_generates(env, bot, s, count=2)
    await bot.service.set_paused(True)
    await s.alice.slash(s.channel_a, "generate", prompt="1girl, waiting", aspect="1:1", steps=1)
    waiting = [job for job in await jobs_of(bot, s.alice.id) if job.state == JobState.QUEUED]
    await bot.service.cancel(waiting[0].id, "test", admin=True)
    await bot.service.set_paused(False)
    await s.bob.slash(s.channel_b, "generate", prompt="1boy", aspect="1:1", steps=1)
    (job,) = await jobs_of(bot, s.bob.id)
    assert (await finish(env, bot, job.id)).state == JobState.DONE


async def alice_generates(env: simcord.Env, bot: AnimeBot, s: Servers, count: int) -> None:
    await s.alice.slash(s.channel_a, "generate", prompt="1girl, smile", aspect="1:1", steps=1, count=count)
    job = (await jobs_of(bot, s.alice.id))[0]
    assert (await finish(env, bot, job.id)).state == JobState.DONE


async def test_stats_per_server_for_its_admin_and_everywhere_for_a_bot_admin(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=120) as env:
        s = two_servers(env, bot)
        assert await reply(s.mod_a, s.channel_a) == "No jobs in the last 24 hours (this server)."
        await run_jobs(env, bot, s)

        text = await reply(s.mod_a, s.channel_a)
        lines = text.splitlines()
        assert lines[0] == "Last 24 hours, this server:"
        assert lines[1] == "Jobs: 2 (1 done, 0 failed, 1 cancelled, 0 waiting or running)"
        assert lines[2] == "Images: 2"
        assert re.fullmatch(r"Median wait: \d+s · median run: \d+s", lines[3]), lines[3]
        assert lines[4] == f"Busiest users: <@{s.alice.id}> (2 jobs, 2 images)"
        assert lines[5:] == ["Per model:", "· tiny: 2 jobs, 1 done, 0 failed, 2 images"]
        assert str(s.bob.id) not in text  # server B's jobs are not server A's admin's business

        everywhere = await reply(s.owner, s.channel_b, everywhere=True)
        assert everywhere.splitlines()[:3] == [
            "Last 24 hours, every server:",
            "Jobs: 3 (2 done, 0 failed, 1 cancelled, 0 waiting or running)",
            "Images: 3",
        ]
        assert f"Busiest users: <@{s.alice.id}> (2 jobs, 2 images), <@{s.bob.id}> (1 jobs, 1 images)" in everywhere
        assert "· tiny: 3 jobs, 2 done, 0 failed, 3 images" in everywhere
        # Server B's own figures, for its admin.
        assert "Jobs: 1 (1 done," in await reply(s.mod_b, s.channel_b)
        # A job older than 24 hours is not counted.
        (bobs,) = await jobs_of(bot, s.bob.id)
        await bot.service.store.execute(
            "UPDATE jobs SET created_at = ? WHERE id = ?", (time.time() - 25 * 3600, bobs.id)
        )
        assert await reply(s.mod_b, s.channel_b) == "No jobs in the last 24 hours (this server)."


async def test_stats_is_refused_to_members_and_everywhere_to_server_admins(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=120) as env:
        s = two_servers(env, bot)
        await alice_generates(env, bot, s, count=1)
        assert await refused(s.alice, s.channel_a, "stats") == ADMIN_ONLY
        assert await refused(s.mod_a, s.channel_a, "stats", everywhere=True) == ADMIN_ONLY
        assert (await reply(s.owner, s.channel_b)).startswith("No jobs in the last 24 hours (this server).")
        # The bot admin may see any server's figures from it.
        assert (await reply(s.owner, s.channel_b, everywhere=True)).startswith("Last 24 hours, every server:")


async def test_stats_in_japanese(make_bot: BotFactory, japanese_users: set[int]) -> None:  # noqa: F811
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=120) as env:
        s = two_servers(env, bot)
        japanese_users.add(s.mod_a.id)
        assert await reply(s.mod_a, s.channel_a) == "過去24時間のジョブはありません（このサーバー）。"
        await alice_generates(env, bot, s, count=1)
        lines = (await reply(s.mod_a, s.channel_a)).splitlines()
        assert lines[0] == "過去24時間（このサーバー）:"
        assert lines[1] == "ジョブ: 1件（完了1件、失敗0件、キャンセル0件、待機中・実行中0件）"
        assert lines[2] == "画像: 1枚"
        assert lines[4] == f"利用の多いユーザー: <@{s.alice.id}>（1件、1枚）"
        assert lines[6] == "· tiny: 1件、完了1件、失敗0件、1枚"
        japanese_users.add(s.alice.id)
        assert await refused(s.alice, s.channel_a, "stats") == "この操作は管理者のみ行えます。変更はありません。"


def test_stats_text_without_times_and_for_cli_users() -> None:
    stats = PeriodStats(
        since=0.0,
        states={"queued": 2, "failed": 1},
        users=[UserFigures("cli:ops", "", 3, 0)],
    )
    lines = stats_text(stats, "en", everywhere=True).splitlines()
    assert lines[1] == "Jobs: 3 (0 done, 1 failed, 0 cancelled, 2 waiting or running)"
    assert lines[3] == "Median wait: n/a · median run: n/a"
    assert lines[4] == "Busiest users: cli:ops (3 jobs, 0 images)"
