"""Nothing a user typed can ping anyone: every message the bot sends (responses, edits, followups, channel
posts, DMs) carries allowed_mentions that allow at most the user it addresses. Checked on the REST payloads
simcord records and on the pings simcord's Discord model computes from them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import discord
import simcord

from bot.discord_app.client import AnimeBot
from tests.cogs.conftest import BotFactory, server
from tests.cogs.test_generate import finish, jobs_of


def hostile_prompt(user_id: int, role_id: int) -> str:
    return f"1girl, <@{user_id}> <@!{user_id}> <@&{role_id}> @everyone @here look"


def message_bodies(requests: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(method and path, message body) of every request that creates or edits a message's content."""
    for r in requests:
        if r.method not in ("POST", "PATCH") or not isinstance(r.json, dict):
            continue
        body = r.json.get("data") if r.path.endswith("/callback") else r.json
        if isinstance(body, dict) and "content" in body:
            yield f"{r.method} {r.path}", body


def mention_problem(body: dict[str, Any], addressed: set[int]) -> str | None:
    """Why this body could ping someone it does not address (None: it cannot)."""
    policy = body.get("allowed_mentions")
    if policy is None:
        return "no allowed_mentions: Discord would parse every mention in the content"
    if set(policy.get("parse", [])) & {"everyone", "roles", "users"}:
        return f"parses {policy['parse']}"
    if policy.get("roles"):
        return f"allows roles {policy['roles']}"
    others = {int(u) for u in policy.get("users", [])} - addressed
    if others:
        return f"allows users {others}"
    return None


def check_payloads(requests: list[Any], addressed: set[int]) -> int:
    bodies = list(message_bodies(requests))
    problems = [(where, problem) for where, body in bodies if (problem := mention_problem(body, addressed))]
    assert not problems, problems
    return len(bodies)


def pings(env: simcord.Env) -> list[tuple[int, list[int], list[int], bool]]:
    """Every stored message that pings someone: (id, users, roles, everyone)."""
    return [
        (m.id, list(m.ping_user_ids), list(m.ping_role_ids), bool(m.mention_everyone))
        for channel in env.backend.messages.values()
        for m in channel.values()
        if m.ping_user_ids or m.ping_role_ids or m.mention_everyone
    ]


def test_mention_problem_reader() -> None:
    assert mention_problem({"content": "x"}, {1}) is not None
    assert mention_problem({"content": "x", "allowed_mentions": {"parse": ["everyone"]}}, {1}) is not None
    assert mention_problem({"content": "x", "allowed_mentions": {"parse": [], "users": ["2"]}}, {1}) is not None
    assert mention_problem({"content": "x", "allowed_mentions": {"parse": [], "users": ["1"]}}, {1}) is None
    assert mention_problem({"content": "x", "allowed_mentions": {"parse": []}}, set()) is None


async def test_a_prompt_full_of_mentions_pings_nobody(make_bot: BotFactory) -> None:
    bot: AnimeBot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice, bob) = server(env, "alice", "bob", guild=guild)
        role = guild.create_role("everybody-cares", mentionable=True)
        prompt = hostile_prompt(bob.id, role.id)

        # /generate: the acknowledgement echoes the prompt; progress edits; the result.
        result = await alice.slash(channel, "generate", prompt=prompt, steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        await finish(env, bot, job.id)
        assert result.response is not None and result.response.attachments
        assert f"<@{bob.id}>" in str(requests_with(env, "/callback")[0].json)  # echoed, but inert

        # 🔄 reaction: a channel post that addresses alice (and may ping her, nobody else).
        await alice.react(result.response.message, "🔄")
        rerolled = (await jobs_of(bot, alice.id))[0]
        await finish(env, bot, rerolled.id)
        posts = requests_with(env, f"/channels/{channel.id}/messages", "POST")
        assert posts and [int(u) for u in posts[-1].json["allowed_mentions"]["users"]] == [alice.id]

        # Ephemeral texts that show the prompt: the parameters, the history; and a request in a DM.
        await bob.click(result.response, custom_id=f"animebot:info:{job.id}")
        await alice.slash(channel, "history")
        dave = env.create_user("dave")
        dm = await dave.slash("generate", prompt=prompt, steps=1, aspect="1:1")
        await finish(env, bot, (await jobs_of(bot, dave.id))[0].id)
        assert dm.response is not None and dm.response.attachments

        # A result whose edit fails is posted in the channel, mentioning its owner.
        env.inject_error("PATCH", "/webhooks/*/messages/@original", status=404, code=10008, times=None)
        await alice.slash(channel, "generate", prompt=prompt, steps=1, aspect="1:1")
        await finish(env, bot, (await jobs_of(bot, alice.id))[0].id)
        post = requests_with(env, f"/channels/{channel.id}/messages", "POST")[-1]
        assert f"<@{alice.id}> your images are ready" in post.json["content"]
        assert [int(u) for u in post.json["allowed_mentions"]["users"]] == [alice.id]

        assert check_payloads(env.http_requests, {alice.id}) >= 10
        pinged = pings(env)
        assert pinged  # alice was pinged by the posts addressed to her, nobody else by anything
        assert all(users == [alice.id] and not roles and not everyone for _, users, roles, everyone in pinged)


def requests_with(env: simcord.Env, fragment: str, method: str | None = None) -> list[Any]:
    return [r for r in env.http_requests if fragment in r.path and (method is None or r.method == method)]


def test_the_bot_mentions_nobody_by_default(tmp_path: Any) -> None:
    from bot.config import load_config
    from bot.discord_app.client import create_bot

    path = tmp_path / "config.toml"
    path.write_text('data_dir = "data"\n', encoding="utf-8")
    bot = create_bot(load_config(path))
    policy = bot.allowed_mentions
    assert policy is not None and policy.to_dict() == discord.AllowedMentions.none().to_dict()
