"""Forged component interactions, over the loopback Discord: a button whose custom_id names a job of another
channel (Discord would not send it; a hostile client or a gap in Discord's checks might) reveals nothing and
does nothing; neither does a history rerun menu value naming someone else's job."""

from __future__ import annotations

from typing import Any

from bot.discord_app.client import AnimeBot
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from tests.cogs.conftest import BotFactory
from tests.cogs.test_wire import (  # noqa: F401  (fixture)
    TIMEOUT,
    delivered,
    fake_discord,
    jobs_of,
    online,
    request_to,
)
from tests.fakes.discord_server import EPHEMERAL, FakeDiscord

SECRET = "1girl, secret garden"


def forge(fake: FakeDiscord, message_id: int, custom_id: str, member: dict[str, Any], **data: Any) -> dict[str, Any]:
    """A click on a component the message never had, as if Discord reported the message with it: past both
    Discord's check and discord.py's (which drops a custom_id the interaction's message lacks)."""
    click = fake.click(message_id, custom_id, member, forged=True)
    kind = data.get("component_type", 2)
    component: dict[str, Any] = {"type": kind, "custom_id": custom_id, "id": 99}
    if kind == 2:
        component["style"] = 2
        component["label"] = "forged"
    else:
        component["options"] = [{"label": v, "value": v} for v in data["values"]]
    click["message"]["components"].append({"type": 1, "id": 98, "components": [component]})
    click["data"].update(data)
    return click


async def press(fake: FakeDiscord, message_id: int, custom_id: str, member: dict[str, Any]) -> dict[str, Any]:
    """Click (forged if need be) and return the bot's answer: the callback's data."""
    click = forge(fake, message_id, custom_id, member)
    await fake.dispatch("INTERACTION_CREATE", click)
    path = f"/interactions/{click['id']}/{click['token']}/callback"
    callback = await fake.wait_for_request(request_to("POST", path), timeout=TIMEOUT)
    return dict(callback.json.get("data") or {})


async def test_forged_buttons_reveal_and_change_nothing(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:  # noqa: F811
    fake = fake_discord
    bot: AnimeBot = await make_bot("[discord]\nreroll_by_anyone = true\n")
    async with online(bot, fake):
        alice, mallory = fake.add_member("alice"), fake.add_member("mallory")
        command = fake.slash("generate", alice, prompt="1girl, smile", steps=1, aspect="1:1")
        await fake.dispatch("INTERACTION_CREATE", command)
        original = f"/webhooks/{fake.application_id}/{command['token']}/messages/@original"
        final = await fake.wait_for_request(request_to("PATCH", original, files=True), timeout=TIMEOUT)
        await delivered(bot)
        message_id = int(final.response["id"])
        (shown,) = await jobs_of(bot, int(alice["user"]["id"]))

        # Someone's job in another channel (a DM or another server's channel).
        await bot.service.set_paused(True)
        request = GenerationRequest("tiny", PromptChoices(SECRET), steps=1, aspect="1:1")
        secret = await bot.service.submit(request, "discord:4242", channel_id="4243")

        # The real ℹ️ button shows the shown job's parameters to anyone who sees it ...
        answer = await press(fake, message_id, f"animebot:info:{shown.id}", mallory)
        assert answer["flags"] & EPHEMERAL and "1girl, smile" in answer["content"]
        # ... but a forged one naming the other job reveals nothing; forged reroll, delete, upscale and vary (and
        # their choices of image) do nothing.
        for action in ("info", "reroll", "delete", "upscale", "vary", "upscale:0:2", "vary:0"):
            name = action.split(":")[0]
            custom_id = f"animebot:{name}:{secret.id}" + action[len(name):]
            answer = await press(fake, message_id, custom_id, mallory)
            assert answer["flags"] & EPHEMERAL, action
            assert answer["content"] == f"There is no job #{secret.id}.", action
            assert "secret" not in str(answer)
        assert await jobs_of(bot, int(mallory["user"]["id"])) == []
        assert message_id in fake.messages

        # mallory's own history menu, with a forged value naming alice's job: refused, nothing queued.
        history = fake.slash("history", mallory)
        await fake.dispatch("INTERACTION_CREATE", history)
        await fake.wait_for_request(
            request_to("POST", f"/interactions/{history['id']}/{history['token']}/callback"), timeout=TIMEOUT
        )
        mallory_id = int(mallory["user"]["id"])
        custom_id, values = f"animebot:rerun:{mallory_id}", [str(shown.id)]
        select = forge(fake, message_id, custom_id, mallory, component_type=3, values=values)
        await fake.dispatch("INTERACTION_CREATE", select)
        callback = await fake.wait_for_request(
            request_to("POST", f"/interactions/{select['id']}/{select['token']}/callback"), timeout=TIMEOUT
        )
        assert callback.json["data"]["content"] == f"There is no job #{shown.id}."
        assert await jobs_of(bot, mallory_id) == []
        assert len(await jobs_of(bot, int(alice["user"]["id"]))) == 1
