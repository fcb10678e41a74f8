"""/generate end to end through the real bot ÷ the bare diffusers call, and the event loop's lag while generating
with Discord traffic (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_e2e.py [--model tiny-sdxl] [--size 128] [--steps 8] [--counts 1,4] [--runs 5]
                                   [--threads 1] [--bursts 0] [--waiting 0] [--switch-interval 0.005] [--repo PATH]

The real bot (`create_bot(config, service, freeze_gc=True)`, as `animebot run` makes it: every cog, the command
tree, delivery, the garbage-collection policy) connects over HTTP and the gateway websocket to the loopback
Discord of tests/fakes/discord_server.py, which runs on its own thread and event loop (so serving the fake is not
counted as the bot's loop time; the two threads still share the GIL, which a real Discord does not). The
GenerationService runs on a temporary data_dir with a built-in tiny model (inference/tiny/) at --size x --size
(the model's size_scale; /generate's aspect 1:1), the bundled tag list (as on a first start) and the rating of
results off.

1) End to end, per count (--counts) and run (--runs), after one untimed warm-up job per count:
   bot   = from the moment the fake sends the /generate INTERACTION_CREATE to the moment it has received the
           result: the multipart PATCH of the original response carrying the PNGs (its body read). The job's
           queueing, the worker, progress edits, PNG encoding and writing, the database and the delivery.
   bare  = the diffusers pipeline call the backend makes for the same job, made directly on the worker's GPU
           thread with the same pipeline object (the same loaded weights and scheduler), the job's final
           prompt, negative prompt, size, steps, guidance and seeds (SDXL: one call with a generator per
           seed; Anima: one modular-pipeline call per seed), without the bot's progress/cancel hooks.
   ratio = bot ÷ bare of the same run. min / median / max of each. The uploaded PNGs are decoded and compared
           with the bare call's images pixel for pixel. The bot's time is also split at the job's events
           (EventBus): dispatch→queued (the interaction, the submit), queued→started (the claim), started→done
           (the worker: the pipeline with the progress hooks, PNG encoding and writing, the record),
           done→upload (the delivery).
2) --bursts N: N bursts, each a few /generate jobs (--burst-jobs, count 1) generating while other members type
   the artist option (an autocomplete per character), run /queue and /history and click the ℹ️ button of an
   earlier result, all over the loopback Discord. A LagProbe (benchmarks/measure.py: a 10 ms sleep that
   records how late it wakes) runs on the bot's loop through each burst; gc.callbacks record every
   collection's pause (by generation, and the thread it ran on: every pause holds the GIL, so it stalls the
   loop wherever it runs). Printed per burst and overall: lag p99 / max, the collections, how many wake-ups
   over 20 ms had a collection of 10 ms or more during their sleep (the others waited for a core: other
   processes; or for the GIL); and each kind of interaction's acknowledgement (from the dispatch to the fake's
   receipt of the interaction callback).
3) --waiting N: at the end, the queue paused, N jobs queued through service.submit, one full gc.collect() timed
   (what a generation-2 collection stalls the loop for at that heap); then they are cancelled.

--switch-interval sets sys.setswitchinterval (Python's default: 5 ms, the slice a thread running Python code
holds the GIL before another may take it). --repo runs another checkout's bot (e.g. the code before a change:
`git archive <commit> | tar -x -C /tmp/before`; this script's own helpers still come from here). Times are
time.perf_counter. The load average is printed with every figure; on a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar


def _code_root(argv: list[str]) -> Path:
    """--repo's value (read before the bot is imported), else this checkout."""
    for index, arg in enumerate(argv):
        if arg == "--repo" and index + 1 < len(argv):
            return Path(argv[index + 1]).resolve()
        if arg.startswith("--repo="):
            return Path(arg.split("=", 1)[1]).resolve()
    return Path(__file__).resolve().parent.parent


CODE = _code_root(sys.argv)
sys.path.insert(0, str(CODE))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import discord  # noqa: E402
import discord.gateway  # noqa: E402
import discord.http  # noqa: E402
import numpy as np  # noqa: E402
from measure import LagProbe, percentile  # noqa: E402  (benchmarks/)
from PIL import Image  # noqa: E402

from bot.config import Config, load_config  # noqa: E402
from bot.core.service import GenerationService  # noqa: E402
from bot.discord_app.client import AnimeBot, create_bot  # noqa: E402
from inference.types import GenerationParams  # noqa: E402
from tests.fakes.discord_server import FakeDiscord, RecordedRequest  # noqa: E402

T = TypeVar("T")
Json = dict[str, Any]
PROMPT = "1girl, solo, smile, long hair, blue eyes, night sky, outdoors, looking at viewer"
TIMEOUT = 300.0
ARTISTS = ("wlop", "kantoku", "mika pikazo", "huke", "ningen mame", "tiv", "fuzichoco", "rella", "ask (askzy)")


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def spread(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
    """min / median / max."""
    figures = (min(values), statistics.median(values), max(values))
    return " / ".join(f"{v * scale:.{digits}f}" for v in figures) + (f" {unit}" if unit else "")


# -- the loopback Discord on its own thread ----------------------------------------------------------------


class TimedFake(FakeDiscord):
    """The fake, noting when each REST request's body had been read (before it is answered)."""

    def __init__(self) -> None:
        super().__init__()
        self.received: dict[int, float] = {}

    async def _answer(self, request: RecordedRequest) -> tuple[int, Any]:
        self.received[id(request)] = time.perf_counter()
        return await super()._answer(request)

    def arrival(self, request: RecordedRequest) -> float:
        return self.received[id(request)]


class FakeThread:
    """A TimedFake served by its own event loop on a thread. Everything that touches it runs there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-discord", daemon=True)
        self.thread.start()
        self._fake: TimedFake | None = None
        self._restore: tuple[str, Any] = ("", None)

    @property
    def fake(self) -> TimedFake:
        assert self._fake is not None
        return self._fake

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def call(self, function: Callable[[], T]) -> T:
        """A plain function on the fake's loop (its dicts and lists change there)."""

        async def wrapped() -> T:
            return function()

        return await self.run(wrapped())

    async def start(self) -> TimedFake:
        async def make() -> TimedFake:
            fake = TimedFake()
            await fake.start()
            return fake

        self._fake = await self.run(make())
        self._restore = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        discord.http.Route.BASE = self.fake.base_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self.fake.gateway_url
        return self.fake

    async def close(self) -> None:
        if self._fake is not None:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._restore
            await self.run(self._fake.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def dispatch(self, payload: Json) -> float:
        """Send INTERACTION_CREATE; the moment it was handed to the websocket."""

        async def send() -> float:
            sent = time.perf_counter()
            await self.fake.dispatch("INTERACTION_CREATE", payload)
            return sent

        return await self.run(send())

    async def wait_for(self, predicate: Callable[[RecordedRequest], bool]) -> tuple[RecordedRequest, float]:
        """The first matching answered request and when the fake had received it."""
        request = await self.run(self.fake.wait_for_request(predicate, timeout=TIMEOUT))
        return request, self.fake.arrival(request)


def request_to(method: str, path: str, *, files: bool | None = None) -> Callable[[RecordedRequest], bool]:
    def matches(r: RecordedRequest) -> bool:
        return r.method == method and r.path == path and (files is None or bool(r.files) == files)

    return matches


def callback_of(payload: Json) -> Callable[[RecordedRequest], bool]:
    return request_to("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")


def result_of(fake: FakeDiscord, payload: Json) -> Callable[[RecordedRequest], bool]:
    return request_to("PATCH", f"/webhooks/{fake.application_id}/{payload['token']}/messages/@original", files=True)


def autocomplete(fake: FakeDiscord, member: Json, typed: str) -> Json:
    """An APPLICATION_COMMAND_AUTOCOMPLETE for /generate's artist option (the prompt already typed)."""
    command, _ = fake.command("generate")
    data = {
        "id": command["id"],
        "name": "generate",
        "type": 1,
        "options": [
            {"name": "prompt", "type": 3, "value": PROMPT},
            {"name": "artist", "type": 3, "value": typed, "focused": True},
        ],
    }
    return fake._interaction(4, member, data, "en-US")


# -- the bot -------------------------------------------------------------------------------------------------


def write_config(root: Path, model: str, size: int, tags: bool) -> Config:
    path = root / "config.toml"
    path.write_text(
        f'data_dir = "{root / "data"}"\n'
        '[inference]\ndefault_model = "bench"\ndevice = "cpu"\n'
        "[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n"
        f"[tags]\nimport_default = {'true' if tags else 'false'}\n"
        "[safety]\nrate_results = false\n"
        f'[models.bench]\nbuiltin = "{model}"\nsize_scale = {size / 1024}\n',
        encoding="utf-8",
    )
    config = load_config(path)
    config.ensure_data_dir()
    return config


@dataclass
class Online:
    bot: AnimeBot
    runner: asyncio.Task[None]

    async def close(self) -> None:
        await self.bot.close()
        await asyncio.wait_for(self.runner, TIMEOUT)


async def online(bot: AnimeBot, fake: FakeDiscord) -> Online:
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    bot.add_listener(on_ready)
    bot._connection.guild_ready_timeout = 0.1  # the fake sends GUILD_CREATE right after READY
    runner = asyncio.create_task(bot.start(fake.token), name="bot-start")
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({runner, waiter}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        runner.result()
        raise RuntimeError("the bot stopped before it was ready")
    if waiter not in done:
        raise RuntimeError("the bot was not ready in time")
    return Online(bot, runner)


async def settled(bot: AnimeBot) -> None:
    """Wait until the delivery tasks running now are done (the result is marked delivered)."""
    while True:
        tasks = [t for t in bot.deliveries.tasks if t.get_name() != "deliver-pending" and not t.done()]
        if not tasks:
            return
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)


# -- the bare diffusers call ---------------------------------------------------------------------------------


def bare_call(backend: Any, params: GenerationParams) -> tuple[list[Image.Image], float]:
    """The pipeline call(s) the backend makes for `params`, made directly (see the module's docstring); the
    images and the seconds of the call(s) alone. On the worker's GPU thread."""
    import torch

    pipe = backend.pipeline
    if backend.spec.family == "sdxl":
        pipe.scheduler = backend._scheduler(params.sampler)  # the backend's scheduler object for this sampler
        text = backend._text_arguments(pipe, params.prompt, params.negative_prompt)
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in params.seeds]
        started = time.perf_counter()
        result = pipe(
            **text,
            width=params.width,
            height=params.height,
            num_inference_steps=params.steps,
            guidance_scale=params.cfg,
            num_images_per_prompt=params.count,
            generator=generators,
            output_type="pil",
        )
        return list(result.images), time.perf_counter() - started
    backend._use_sampler(params.sampler)  # what the backend sets on the pipeline before its calls
    backend._use_cfg(params.cfg)
    images: list[Image.Image] = []
    started = time.perf_counter()
    for seed in params.seeds:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        out = pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            height=params.height,
            width=params.width,
            num_inference_steps=params.steps,
            generator=generator,
            output_type="pil",
            output="images",
        )
        images.append(out[0])
    return images, time.perf_counter() - started


def compare(uploaded: list[bytes], bare: list[Image.Image]) -> str:
    """"identical", or how the uploaded PNGs differ from the bare call's images."""
    if len(uploaded) != len(bare):
        return f"{len(uploaded)} images uploaded, {len(bare)} made by the bare call"
    notes = []
    for index, (data, image) in enumerate(zip(uploaded, bare, strict=True)):
        posted = Image.open(io.BytesIO(data))
        posted.load()
        a = np.asarray(posted.convert("RGB"), dtype=np.int16)
        b = np.asarray(image.convert("RGB"), dtype=np.int16)
        if a.shape != b.shape:
            notes.append(f"image {index}: {a.shape} != {b.shape}")
        elif not np.array_equal(a, b):
            diff = np.abs(a - b)
            notes.append(f"image {index}: {int((diff > 0).any(axis=2).sum())} pixels differ (max {int(diff.max())})")
    return "; ".join(notes) or "identical"


# -- GC pauses -----------------------------------------------------------------------------------------------


class TimedLagProbe(LagProbe):
    """LagProbe that also notes when each late wake-up's sleep began, to match stalls with collections."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[tuple[float, float]] = []  # (sleep started, woke up)

    async def _run(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            woke = time.perf_counter()
            self.lags.append(max(0.0, woke - before - self.interval))
            self.windows.append((before, woke))

    def stalls(self, threshold: float) -> list[tuple[float, float, float]]:
        """(start, end, lag) of the wake-ups later than `threshold`."""
        return [(b, w, lag) for (b, w), lag in zip(self.windows, self.lags, strict=True) if lag > threshold]


@dataclass
class Collection:
    started: float
    seconds: float
    generation: int
    thread: str


@dataclass
class GcPauses:
    """Every collection's pause, through gc.callbacks."""

    collections: list[Collection] = field(default_factory=list)
    _starts: dict[int, float] = field(default_factory=dict)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        ident = threading.get_ident()
        if phase == "start":
            self._starts[ident] = now
        elif ident in self._starts:
            started = self._starts.pop(ident)
            name = threading.current_thread().name
            self.collections.append(Collection(started, now - started, info["generation"], name))

    def install(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        gc.callbacks.remove(self)

    def between(self, start: float, end: float) -> list[Collection]:
        return [c for c in self.collections if start <= c.started < end]

    @staticmethod
    def summary(collections: list[Collection]) -> str:
        parts = []
        for generation in (0, 1, 2):
            pauses = [c.seconds for c in collections if c.generation == generation]
            if pauses:
                parts.append(f"gen{generation} {len(pauses)} (max {max(pauses) * 1000:.1f} ms)")
        return ", ".join(parts) or "none"


# -- the benchmark -------------------------------------------------------------------------------------------


PHASES = {  # what the bot's time is made of: from the event (or the dispatch) before to this one
    "JobSubmitted": "dispatch→queued",
    "JobStarted": "queued→started",
    "JobFinished": "started→done",
    "upload": "done→upload",
}


@dataclass
class Run:
    count: int
    bot: float
    bare: float
    pixels: str
    phases: dict[str, float] = field(default_factory=dict)  # PHASES' labels → seconds

    @property
    def ratio(self) -> float:
        return self.bot / self.bare


@dataclass
class Burst:
    lags: list[float]
    collections: list[Collection]
    acks: dict[str, list[float]]
    seconds: float
    stalls: int = 0  # wake-ups over 20 ms
    gc_stalls: int = 0  # of which a collection of 10 ms or more ran during the sleep


class Bench:
    def __init__(self, args: argparse.Namespace, fakes: FakeThread, bot: AnimeBot, service: GenerationService) -> None:
        self.args = args
        self.fakes = fakes
        self.fake = fakes.fake
        self.bot = bot
        self.service = service
        self.members: dict[str, Json] = {}
        self.results: list[tuple[int, int]] = []  # (message id, job id) of delivered results
        self.marks: dict[int, dict[str, float]] = {}  # job id → the first time of each kind of its events
        service.events.listen(self._mark)
        self.seed = 1000

    def _mark(self, event: object) -> None:
        job_id = getattr(event, "job_id", None)
        if isinstance(job_id, int):
            self.marks.setdefault(job_id, {}).setdefault(type(event).__name__, time.perf_counter())

    def phases(self, job_id: int, sent: float, arrived: float) -> dict[str, float]:
        marks = {**self.marks.pop(job_id, {}), "upload": arrived}
        phases, before = {}, sent
        for kind, label in PHASES.items():
            if kind in marks:
                phases[label] = marks[kind] - before
                before = marks[kind]
        return phases

    async def forget(self) -> None:
        """Drop the fake's record of past requests and interactions (all answered by now): it looks them up by
        scanning, and its thread shares the GIL with the bot."""

        def clear() -> None:
            self.fake.requests.clear()
            self.fake.received.clear()
            self.fake.interactions.clear()

        await self.fakes.call(clear)

    async def member(self, name: str) -> Json:
        if name not in self.members:
            self.members[name] = await self.fakes.call(lambda: self.fake.add_member(name))
        return self.members[name]

    async def generate(self, name: str, count: int) -> tuple[Json, float]:
        """Dispatch one /generate; the payload and when it was sent."""
        member = await self.member(name)
        self.seed += 1
        seed, steps = self.seed, self.args.steps
        options = {"prompt": PROMPT, "seed": seed, "steps": steps, "count": count, "aspect": "1:1"}
        payload = await self.fakes.call(lambda: self.fake.slash("generate", member, **options))
        return payload, await self.fakes.dispatch(payload)

    async def finished(self, payload: Json) -> tuple[RecordedRequest, float, int]:
        """Wait for the result upload of a /generate; the request, its arrival, the job id."""
        upload, arrived = await self.fakes.wait_for(result_of(self.fake, payload))
        message_id = int(upload.response["id"])
        job_id = int(upload.json["components"][0]["components"][0]["custom_id"].rsplit(":", 1)[1])
        self.results.append((message_id, job_id))
        return upload, arrived, job_id

    async def e2e(self, count: int) -> Run:
        await self.forget()
        payload, sent = await self.generate("runner", count)
        upload, arrived, job_id = await self.finished(payload)
        await settled(self.bot)
        job = await self.service.wait(job_id)
        worker = self.service.worker
        backend = worker.cache.loaded(self.service.config.models["bench"])
        assert backend is not None, "the model is loaded by the job"
        images, bare = await worker._on_gpu(lambda: bare_call(backend, job.params))
        pixels = compare([f.data for f in upload.files], images)
        return Run(count, arrived - sent, bare, pixels, self.phases(job_id, sent, arrived))

    async def typing(self, name: str, stop: asyncio.Event, acks: list[float], index: int) -> None:
        """A member typing artist names into /generate, an autocomplete per character, until `stop`."""
        member = await self.member(name)
        artist = ARTISTS[index % len(ARTISTS)]
        while not stop.is_set():
            for end in range(1, len(artist) + 1):
                typed = artist[:end]
                payload = await self.fakes.call(lambda typed=typed: autocomplete(self.fake, member, typed))  # type: ignore[misc]
                sent = await self.fakes.dispatch(payload)
                _, answered = await self.fakes.wait_for(callback_of(payload))
                acks.append(answered - sent)
                await asyncio.sleep(0.06)
                if stop.is_set():
                    return
            index += 1
            artist = ARTISTS[index % len(ARTISTS)]

    async def command(self, name: str, command: str, acks: list[float], **options: Any) -> None:
        member = await self.member(name)
        payload = await self.fakes.call(lambda: self.fake.slash(command, member, **options))
        sent = await self.fakes.dispatch(payload)
        _, answered = await self.fakes.wait_for(callback_of(payload))
        acks.append(answered - sent)

    async def click_info(self, name: str, acks: list[float]) -> None:
        if not self.results:
            return
        message_id, job_id = self.results[-1]
        member = await self.member(name)
        payload = await self.fakes.call(lambda: self.fake.click(message_id, f"animebot:info:{job_id}", member))
        sent = await self.fakes.dispatch(payload)
        _, answered = await self.fakes.wait_for(callback_of(payload))
        acks.append(answered - sent)

    async def burst(self, number: int, pauses: GcPauses) -> Burst:
        await self.forget()
        acks: dict[str, list[float]] = {"autocomplete": [], "generate": [], "queue": [], "history": [], "info": []}
        stop = asyncio.Event()
        probe = TimedLagProbe()
        probe.start()
        start = time.perf_counter()
        typers = [
            asyncio.create_task(self.typing(f"typer{i}", stop, acks["autocomplete"], number + i)) for i in range(2)
        ]
        payloads = []
        for i in range(self.args.burst_jobs):
            payload, sent = await self.generate(f"maker{i}", 1)
            _, answered = await self.fakes.wait_for(callback_of(payload))
            acks["generate"].append(answered - sent)
            payloads.append(payload)
            await asyncio.sleep(0.02)
        await self.command("reader", "queue", acks["queue"])
        await self.command("reader", "history", acks["history"])
        await self.click_info("reader", acks["info"])
        for payload in payloads:
            await self.finished(payload)
        await settled(self.bot)
        stop.set()
        await asyncio.gather(*typers)
        await probe.stop()
        end = time.perf_counter()
        collections = pauses.between(start, end)
        stalls = probe.stalls(0.020)
        long = [c for c in collections if c.seconds >= 0.010]
        by_gc = sum(any(b <= c.started + c.seconds and c.started <= w for c in long) for b, w, _ in stalls)
        return Burst(probe.lags, collections, acks, end - start, len(stalls), by_gc)


async def full_collection_with_waiting(service: GenerationService, waiting: int) -> str:
    """Pause the queue, queue `waiting` jobs (ten owners, through service.submit), time one full collection
    (what a generation-2 collection would stall the loop for at this heap), then cancel them."""
    from bot.prompts.builder import PromptChoices
    from bot.prompts.requests import GenerationRequest

    await service.set_paused(True)
    started = time.perf_counter()
    for i in range(waiting):
        await service.submit(GenerationRequest("bench", PromptChoices(f"1girl, {i}"), steps=1), f"filler:{i % 10}")
    filled = time.perf_counter() - started
    tracked = len(gc.get_objects())
    started = time.perf_counter()
    gc.collect()
    pause = time.perf_counter() - started
    await service.clear_queue("bench")
    await service.set_paused(False)
    return (
        f"{waiting:,} waiting (queued in {filled:.0f} s): a full collection {pause * 1000:.1f} ms over {tracked:,} "
        f"tracked objects ({gc.get_freeze_count():,} frozen); {load()}"
    )


def print_runs(model: str, runs: list[Run]) -> None:
    for count in sorted({r.count for r in runs}):
        of = [r for r in runs if r.count == count]
        pixels = sorted({r.pixels for r in of})
        print(
            f"{model} x{count}: bot {spread([r.bot for r in of])}, bare {spread([r.bare for r in of])}, "
            f"ratio {spread([r.ratio for r in of], unit='', digits=3)} (min / median / max of {len(of)} runs); "
            f"bot - bare median {statistics.median([r.bot - r.bare for r in of]) * 1000:.0f} ms; "
            f"pixels: {', '.join(pixels)}; {load()}"
        )
        labels = [label for label in PHASES.values() if all(label in r.phases for r in of)]
        print("  bot's time, median ms: " + ", ".join(
            f"{label} {statistics.median([r.phases[label] for r in of]) * 1000:.0f}" for label in labels))


def print_bursts(bursts: list[Burst]) -> None:
    print("burst | seconds | lag p99 / max (ms) | wake-ups over 20 ms | collections | ack max (ms)")
    for i, b in enumerate(bursts, 1):
        acks = ", ".join(f"{k} {max(v) * 1000:.0f}" for k, v in b.acks.items() if v)
        print(
            f"{i} | {b.seconds:.1f} | {percentile(b.lags, 99) * 1000:.1f} / {max(b.lags) * 1000:.1f} | "
            f"{sum(x > 0.020 for x in b.lags)} | {GcPauses.summary(b.collections)} | {acks}"
        )
    lags = [x for b in bursts for x in b.lags]
    collections = [c for b in bursts for c in b.collections]
    over = sum(max(b.lags) > 0.020 for b in bursts)
    stalls, by_gc = sum(b.stalls for b in bursts), sum(b.gc_stalls for b in bursts)
    print(
        f"bursts: {len(bursts)}, lag p99 {percentile(lags, 99) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms "
        f"({len(lags)} wake-ups, {sum(x > 0.020 for x in lags)} over 20 ms; {over} of {len(bursts)} bursts with "
        f"a wake-up over 20 ms); collections: {GcPauses.summary(collections)}; {load()}"
    )
    print(f"  wake-ups over 20 ms during a collection of 10 ms or more: {by_gc} of {stalls} (the others: the "
          "process waited for a core or the GIL)")
    for kind in bursts[0].acks:
        values = [x for b in bursts for x in b.acks[kind]]
        if values:
            print(f"  ack {kind}: p50 {percentile(values, 50) * 1000:.1f} / p99 "
                  f"{percentile(values, 99) * 1000:.1f} / max {max(values) * 1000:.1f} ms ({len(values)})")
    long = sorted(collections, key=lambda c: c.seconds, reverse=True)[:5]
    if long:
        print("  longest collections: " + ", ".join(
            f"gen{c.generation} {c.seconds * 1000:.1f} ms on {c.thread}" for c in long))


async def run(args: argparse.Namespace, root: Path) -> tuple[list[Run], list[Burst]]:
    import torch

    threads, interval = torch.get_num_threads(), sys.getswitchinterval()  # put back at the end
    torch.set_num_threads(args.threads)
    sys.setswitchinterval(args.switch_interval)
    config = write_config(root, args.model, args.size, args.tags)
    pauses = GcPauses().install()
    fakes = FakeThread()
    service = GenerationService(config)
    connection: Online | None = None
    try:
        await fakes.start()
        await service.start()
        await service.worker._on_gpu(lambda: torch.set_num_threads(args.threads))
        bot = create_bot(config, service, freeze_gc=True)  # as `animebot run` makes it
        connection = await online(bot, fakes.fake)
        bench = Bench(args, fakes, bot, service)
        started = time.perf_counter()
        for count in args.counts:  # warm-up: loads the model, first calls of each shape
            payload, _ = await bench.generate("runner", count)
            await bench.finished(payload)
            await settled(bot)
        print(f"{args.model}: loaded and warmed up in {time.perf_counter() - started:.1f} s; "
              f"collections so far: {GcPauses.summary(pauses.collections)}; "
              f"frozen objects {gc.get_freeze_count()}; {load()}")
        runs = [await bench.e2e(count) for _ in range(args.runs) for count in args.counts]
        bursts = [await bench.burst(i, pauses) for i in range(args.bursts)]
        if args.waiting:
            print(await full_collection_with_waiting(service, args.waiting))
        return runs, bursts
    finally:
        if connection is not None:
            await connection.close()
        await service.close()
        await fakes.close()
        pauses.remove()
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny-sdxl", "tiny-anima"), default="tiny-sdxl")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (1:1)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--counts", default="1,4", help="images per job, comma-separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--bursts", type=int, default=0, help="loop-lag bursts after the end-to-end runs")
    parser.add_argument("--burst-jobs", type=int, default=3)
    parser.add_argument("--waiting", type=int, default=0, help="at the end: a full collection with N jobs waiting")
    parser.add_argument("--switch-interval", type=float, default=0.005, help="sys.setswitchinterval, seconds")
    parser.add_argument("--no-tags", dest="tags", action="store_false", help="no tag database (faster start)")
    parser.add_argument("--repo", type=Path, default=None, help="the checkout whose bot runs (default: this one)")
    args = parser.parse_args(argv)
    args.counts = [int(c) for c in args.counts.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"code: {CODE}; model {args.model} {args.size}x{args.size}, {args.steps} steps, {args.threads} thread(s), "
        f"switch interval {args.switch_interval * 1000:g} ms; {os.cpu_count()} cores; {load()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        runs, bursts = asyncio.run(run(args, Path(tmp)))
    if runs:
        print_runs(args.model, runs)
    if bursts:
        print_bursts(bursts)


if __name__ == "__main__":
    main()
