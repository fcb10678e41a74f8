"""The wire format: messages round-trip, and what does not follow the protocol is refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis

from bot.core.pool.protocol import (
    PNG_SIGNATURE,
    ControlMessage,
    EventMessage,
    Heartbeat,
    ImageMeta,
    JobMessage,
    Keys,
    ProtocolError,
    ResultMessage,
    WireParams,
    dead_letter,
    new_token,
)
from inference.types import GenerationParams
from tests.fakes.redis_server import RedisServer

PARAMS = GenerationParams("1girl, solo", "lowres", 832, 1216, 28, 5.0, (1, 2), "euler_a")
PNG = PNG_SIGNATURE + b"rest of a png"


def job(**changes: object) -> JobMessage:
    data: dict[str, object] = {
        "job_id": 7, "attempt": 1, "token": new_token(), "model": "tiny-sdxl",
        "params": WireParams.of(PARAMS), "sent_at": 1.0,
    }
    data.update(changes)
    return JobMessage.model_validate(data)


def result(**changes: object) -> ResultMessage:
    data: dict[str, object] = {
        "job_id": 7, "attempt": 1, "token": new_token(), "worker": "box:cuda:1", "outcome": "done",
        "images": (ImageMeta(index=0, seed=1, width=832, height=1216, parameters="p"),),
    }
    data.update(changes)
    return ResultMessage.model_validate(data)


def as_stream(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    return {key.encode(): value for key, value in fields.items()}


def test_a_job_round_trips_with_its_parameters() -> None:
    message = job()
    read = JobMessage.from_fields(as_stream(message.fields()))
    assert read == message
    assert read.params.to_params() == PARAMS


def test_a_result_round_trips_with_its_pngs() -> None:
    message = result()
    read, pngs = ResultMessage.from_fields(as_stream(message.fields([PNG])))
    assert read == message and pngs == [PNG]


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({}, "missing"),
        ({b"job": b"not json"}, "JobMessage"),
        ({b"job": job().to_json().replace(b'"v":1', b'"v":2')}, "v"),
        ({b"job": job().to_json().replace(b'"job_id":7', b'"job_id":-7')}, "job_id"),
        ({b"job": job().to_json()[:-1] + b', "extra": 1}'}, "extra"),
        ({b"job": b"x" * (300 * 1024)}, "bytes"),
    ],
)
def test_malformed_jobs_are_refused(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        JobMessage.from_fields(fields)


def test_a_job_with_too_many_images_or_a_bad_token_is_refused() -> None:
    with pytest.raises(ProtocolError):
        many = b'"seeds":[' + b",".join([b"1"] * 17) + b"]"
        JobMessage.from_fields({b"job": job().to_json().replace(b'"seeds":[1,2]', many)})
    with pytest.raises(ProtocolError, match="token"):
        message = job()
        JobMessage.from_fields({b"job": message.to_json().replace(message.token.encode(), b"x" * 32)})


def test_results_must_carry_real_pngs_within_the_limit() -> None:
    message = result()
    with pytest.raises(ProtocolError, match="not a PNG"):
        ResultMessage.from_fields(as_stream({"result": message.to_json(), "png:0": b"GIF89a"}))
    with pytest.raises(ProtocolError, match="more than"):
        message.fields([PNG + b"x" * 100], max_bytes=50)
    with pytest.raises(ProtocolError, match="unexpected"):
        ResultMessage.from_fields(as_stream(message.fields([PNG]) | {"png:5": PNG}))
    with pytest.raises(ProtocolError, match="differ"):
        ResultMessage.from_fields(as_stream({"result": message.to_json()}))
    with pytest.raises(ProtocolError, match="carries images"):
        result(outcome="failed", error="boom").fields([PNG])
    with pytest.raises(ProtocolError, match="without images"):
        result(images=()).fields([])
    assert ResultMessage.from_fields(as_stream(result(outcome="failed", error="x", images=()).fields([])))[1] == []


def test_worker_ids_cannot_escape_their_key() -> None:
    keys = Keys("bot1")
    assert keys.inbox("box:cuda:1") == "bot1:inbox:box:cuda:1"
    for bad in ("", "a b", "a*", "x" * 101, "a\nb"):
        with pytest.raises(ProtocolError):
            keys.inbox(bad)
    with pytest.raises(ProtocolError):
        Heartbeat.from_bytes(Heartbeat(id="ok").to_json().replace(b'"ok"', b'"o k"'))
    with pytest.raises(ProtocolError):
        Keys("a b")


def test_events_controls_and_dead_letters() -> None:
    event = EventMessage(kind="progress", worker="w1", job_id=3, token=new_token(), step=2, total=28, elapsed=0.5)
    assert EventMessage.from_fields(as_stream(event.fields())) == event
    control = ControlMessage(job_id=3, token=new_token())
    assert ControlMessage.from_bytes(control.to_json()) == control
    letter = dead_letter({b"job": b"\xff" * 10_000}, "animebot:inbox:w1", "JobMessage: missing")
    assert len(letter["fields"]) < 3 * 4096 + 100 and letter["reason"] == b"JobMessage: missing"


async def first_entry(client: redis.Redis, stream: str) -> dict[bytes, bytes]:
    reply: Any = await client.xread({stream: 0})
    [(_, [(_, fields)])] = reply
    return dict(fields)


async def test_messages_survive_a_real_redis_stream(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = Keys()
        message = result()
        await client.xadd(keys.results, message.fields([PNG]))  # type: ignore[arg-type]
        assert ResultMessage.from_fields(await first_entry(client, keys.results)) == (message, [PNG])
        redis_server.restart()  # the append-only file keeps it
        await client.connection_pool.disconnect()
        assert ResultMessage.from_fields(await first_entry(client, keys.results))[0] == message
    finally:
        await client.aclose()
