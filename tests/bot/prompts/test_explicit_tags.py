"""data/policy/explicit_tags.toml: valid, reviewed against the tag list, and matched as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.errors import UserError
from bot.prompts.dialects import DialectError
from bot.prompts.policy import EXPLICIT_TAGS_FILE, PolicyFields, content_policy, load_explicit_tags
from bot.prompts.tags import Tag, TagCategory
from bot.prompts.tags.bundled import DEFAULT_TAGS_FILE
from bot.prompts.tags.importer import parse_rows

# Entries that are words users type, not Danbooru tags or aliases (each says so in the file).
NOT_TAGS = {"nudity", "areolae", "hentai", "porn", "xxx"}


def test_every_entry_is_a_danbooru_tag_or_alias_or_a_declared_word() -> None:
    rows = parse_rows(DEFAULT_TAGS_FILE)
    known = {r.name for r in rows} | {a for r in rows for a in r.aliases}
    explicit = load_explicit_tags()
    entries = [*explicit.words.values(), *explicit.tags.values()]
    assert len(entries) == len(set(entries)) >= 40
    assert [e for e in entries if e not in known and e not in NOT_TAGS] == []
    assert EXPLICIT_TAGS_FILE.is_file()


@pytest.mark.parametrize(
    "content",
    ['version = 1\nwords = []\n', 'version = 2\nwords = ["nude"]\n', 'version = 1\nwords = ["nude"]\nextra = 1\n',
     'version = 1\nwords = ["--"]\n', "not toml ["],
)
def test_a_broken_list_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "explicit.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DialectError, match=str(path.name)):
        load_explicit_tags(path)


class Aliases:
    """A tag lookup with one alias: `birthday suit` -> `nude`."""

    def lookup(self, names: object) -> dict[str, Tag]:
        nude = Tag("nude", TagCategory.GENERAL, 1, ("birthday_suit",))
        return {n: nude for n in names if n.replace("_", " ").lower() == "birthday suit"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("prompt", "refused"),
    [
        ("1girl, nude", True),
        ("1girl, completely nude", True),
        ("a nude girl.", True),
        ("1girl, n-u-d-e", True),
        ("1girl, oral", True),
        ("1girl, facial", True),
        ("1girl, facial mark", False),
        ("1girl, facial hair", False),
        ("1girl, missionary", True),
        ("a missionary in a church, 1boy", False),
        ("1girl, topless", True),
        ("1girl, sexy", False),
        ("1girl, denuded", False),
        ("1girl, smile", False),
    ],
)
def test_words_anywhere_tags_only_whole(prompt: str, refused: bool) -> None:
    policy = content_policy()
    judge = lambda allowed: policy.judge(PolicyFields(prompt), prompt, nsfw_allowed=allowed, sfw_negative=False)  # noqa: E731
    if refused:
        with pytest.raises(UserError) as caught:
            judge(False)
        assert caught.value.key == "nsfw_not_allowed" and caught.value.params["value"] == "explicit"
        assert judge(True).nsfw and judge(True).rating == "explicit"
    else:
        assert not judge(False).nsfw


def test_an_alias_is_refused_through_the_tag_lookup() -> None:
    policy = content_policy()
    fields = PolicyFields("1girl, (birthday suit:1.2)")
    assert not policy.judge(fields, fields.prompt, nsfw_allowed=False, sfw_negative=False).nsfw  # no lookup
    with pytest.raises(UserError):
        policy.judge(fields, fields.prompt, nsfw_allowed=False, sfw_negative=False, tags=Aliases())
