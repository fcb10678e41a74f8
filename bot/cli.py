"""`animebot` command line: generate images, list models, manage the tag database."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from bot.config import Config, ConfigError, load_config
from bot.core.errors import StartError, StoreBusy, UserError
from bot.core.folders import make_folder
from bot.core.jobs import JobState
from bot.prompts.builder import PromptChoices
from bot.prompts.dialects import DialectError
from bot.prompts.requests import GenerationRequest, ResolvedRequest, resolve_request
from bot.prompts.tags import TagDatabase, TagDatabaseBusy, TagImportError

EXIT_USAGE = 2
EXIT_FAILURE = 1
# Refusals of a valid request because of the machine, not the input: exit code 1, not 2.
RUNTIME_REFUSALS = frozenset({"job_too_large"})


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _shown(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        if text.strip().lstrip("+-").isdecimal():  # more digits than int() reads (4,300)
            raise argparse.ArgumentTypeError(f"number too large: {_shown(text)}") from None
        raise argparse.ArgumentTypeError(f"not a whole number: {_shown(text)}") from None
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one `--help` away) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")


# What must not reach a terminal raw: control characters and line breaks (a message is one line) and lone
# surrogates (an undecodable argument); shown as Python escapes instead.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _one_line(text: str) -> str:
    """`text` as one printable line."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _fail(*lines: str, code: int) -> int:
    for line in lines:
        print(f"animebot: error: {_one_line(line)}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", type=Path, help="config file (TOML); default: embedded tiny models")

    parser = _Parser(prog="animebot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    gen = sub.add_parser("generate", parents=[common], help="make images from a prompt")
    gen.add_argument("prompt", help="tags and/or sentences, comma-separated")
    gen.add_argument("--model", help="model name (see `animebot models`); default from the config")
    gen.add_argument(
        "--quality",
        help="masterpiece, best, great, good, normal, low, worst, the model's own terms, or none (no quality tags; "
        "default: the model's recommended ones)",
    )
    gen.add_argument("--year", help="a year such as 2019, or a period: newest, recent, mid, early, oldest")
    gen.add_argument("--rating", help="general (safe), sensitive, questionable (nsfw), explicit")
    gen.add_argument("--artist", help="artist name(s), comma-separated")
    gen.add_argument("--character", help="character name(s) (Danbooru tags or their aliases), comma-separated")
    gen.add_argument("--negative", default="", help="added to the model's recommended negative prompt")
    gen.add_argument("--no-default-negative", action="store_true", help="leave out the recommended negative")
    gen.add_argument("--seed", type=_whole_number)
    gen.add_argument("--steps", type=_whole_number)
    gen.add_argument("--cfg", type=_number)
    gen.add_argument("--sampler", help="sampler id (euler_a, euler, dpmpp_2m, dpmpp_2m_karras; Anima: flow_euler)")
    size = gen.add_mutually_exclusive_group()
    size.add_argument("--aspect", help="W:H, e.g. 13:19 (nearest trained resolution)")
    size.add_argument("--size", help="exact WxH, e.g. 832x1216")
    gen.add_argument("--count", type=_whole_number, default=1, help="images, one seed each (seed, seed+1, ...)")
    gen.add_argument("--out", type=Path, help="also copy the images here (they stay in <data_dir>/images)")
    gen.add_argument("--dry-run", action="store_true", help="print the final parameters as JSON; load nothing")

    sub.add_parser("models", parents=[common], help="list configured models")
    sub.add_parser("doctor", parents=[common], help="check the install and the config; exit 1 if `run` would fail")
    sub.add_parser("run", parents=[common], help="run the Discord bot (token: DISCORD_TOKEN or [discord] token)")
    work = sub.add_parser("work", parents=[common], help="run queued jobs (e.g. left by a crash) until none wait")
    work.add_argument("--resume", action="store_true", help="unpause the queue first (an admin paused it)")
    pool = sub.add_parser(
        "worker", parents=[common], help="serve a bot's jobs from Redis ([workers] mode = \"redis\"); no Discord token"
    )
    pool.add_argument("--device", help="the device to run on (cuda:1, cuda, cpu, ...); default: [inference] device")
    pool.add_argument("--models", help="serve only these models (comma-separated names); default: every one")
    pool.add_argument("--id", dest="worker_id", help="this worker's name (default: HOST:DEVICE with --device, "
                      "else HOST:PID); a restarted worker with the same id finishes the jobs it had read")
    pool.add_argument("--redis-url", help="redis:// or rediss:// (TLS); default: [workers] url, else "
                      "redis://127.0.0.1:6379/0; the password may come from REDIS_PASSWORD")

    tags = sub.add_parser("tags", help="the Danbooru tag database used for autocomplete and tag order")
    tag_sub = tags.add_subparsers(dest="tags_command", required=True, metavar="ACTION", parser_class=_Parser)
    imp = tag_sub.add_parser("import", parents=[common], help="import a tag CSV (name,category,count,aliases)")
    imp.add_argument("file", type=Path)
    search = tag_sub.add_parser("search", parents=[common], help="search tags as autocomplete does")
    search.add_argument("text")
    search.add_argument("--category", choices=["general", "artist", "copyright", "character", "meta"])
    search.add_argument("--model", help="format results for this model (default from the config)")
    upd = tag_sub.add_parser(
        "update", parents=[common], help="download (https) or import a full tag list; the old one stays until done"
    )
    upd.add_argument("source", nargs="?", help="a URL or a local CSV; default: [tags] update_url")
    build = tag_sub.add_parser("build-default", help="build the compact default tag set shipped in data/tags/")
    build.add_argument("source", type=Path, help="a full tag CSV (tagcomplete format)")
    build.add_argument("out", type=Path, help="the .csv.gz to write")
    for category, flag in (("general", "--general"), ("artist", "--artists"), ("character", "--characters"),
                           ("copyright", "--copyrights"), ("meta", "--meta")):
        build.add_argument(flag, type=_whole_number, dest=f"top_{category}", metavar="N",
                           help=f"the N most-used {category} tags")

    describe = sub.add_parser("describe", parents=[common], help="tag an image with the WD tagger, as a prompt")
    describe.add_argument("file", type=Path, help="a PNG, JPEG, WebP or GIF image")
    describe.add_argument("--model", help="write the prompt for this model (default from the config)")
    describe.add_argument("--general-threshold", type=_number, help="general tags from this score (0..1) up")
    describe.add_argument("--character-threshold", type=_number, help="characters from this score (0..1) up")
    describe.add_argument("--json", action="store_true", help="print the rating, tags and prompt as JSON")
    return parser


def _open_tags(config: Config) -> TagDatabase | None:
    """The tag database if one was imported, else None (the builder then keeps tag order as typed).
    CliError if it cannot be used (not a tag database, another schema version)."""
    try:
        if not config.tags_db.is_file():
            return None
    except OSError as e:  # a name the OS cannot even look up (too long)
        raise CliError(f"tag database {config.tags_db}: {e.strerror or e}") from None
    try:
        # Lazy: building one prompt asks the file for a few tags (milliseconds), not the 1-2 s index.
        return TagDatabase.open(config.tags_db, lazy=True)
    except TagDatabaseBusy as e:
        raise CliError(str(e), EXIT_FAILURE) from None
    except TagImportError as e:
        raise CliError(str(e)) from None


def _request(args: argparse.Namespace, config: Config) -> GenerationRequest:
    choices = PromptChoices(
        prompt=args.prompt,
        negative=args.negative,
        quality=args.quality,
        year=args.year,
        rating=args.rating,
        artist=args.artist,
        character=args.character,
        default_negative=not args.no_default_negative,
    )
    return GenerationRequest(
        model=args.model or config.inference.default_model,
        choices=choices,
        seed=args.seed,
        steps=args.steps,
        cfg=args.cfg,
        aspect=args.aspect,
        size=args.size,
        count=args.count,
        sampler=args.sampler,
    )


def dry_run_json(resolved: ResolvedRequest) -> dict[str, object]:
    p = resolved.params
    return {
        "model": resolved.spec.name,
        "dialect": resolved.dialect.id,
        "prompt": p.prompt,
        "negative_prompt": p.negative_prompt,
        "width": p.width,
        "height": p.height,
        "steps": p.steps,
        "cfg": p.cfg,
        "sampler": p.sampler,
        "seed": p.seeds[0],
        "seeds": list(p.seeds),
        "count": p.count,
    }


class _TerminalProgress:
    """One updating status line on stderr."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.interactive = stream.isatty()

    def line(self, text: str, final: bool = False) -> None:
        if self.interactive:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()


def _generate(args: argparse.Namespace, config: Config) -> int:
    request = _request(args, config)
    if args.dry_run:
        resolved = resolve_request(request, config.models, _open_tags(config), config.discord.banned_words)
        # Valid UTF-8 whatever the input: resolve_request normalized every text (lone surrogates → U+FFFD).
        print(json.dumps(dry_run_json(resolved), ensure_ascii=False, indent=2))
        return 0
    if args.out is not None:
        _prepare_out_dir(args.out)
    config.ensure_data_dir()
    return asyncio.run(_generate_through_queue(request, args.out, config))


def _prepare_out_dir(out: Path) -> None:
    """`--out` is a folder (created now, before any work): a usage error if it cannot be."""
    problem = make_folder(out)
    if problem is not None:
        raise CliError(f"--out {problem}")


async def _generate_through_queue(request: GenerationRequest, out: Path | None, config: Config) -> int:
    """Submit to the same durable queue the bot uses, run the worker until this job is finished, and
    print the image paths. If the process dies, the job stays queued and runs at the next start."""
    from bot.core.events import JobEnded, JobProgress, JobStarted
    from bot.core.service import GenerationService, cli_user
    from bot.progress import Progress, loading_progress

    status = _TerminalProgress(sys.stderr)
    service = GenerationService(config)
    # Model loads belong to no job: every one is shown (a bar on a terminal), from the start on.
    unlisten = service.events.listen(loading_progress(Progress(sys.stderr)))
    try:
        await service.start()
    except BaseException:
        unlisten()
        raise
    try:
        job = await service.submit(request, cli_user(), exempt=True)
        if service.interrupted:
            status.line(f"resuming {len(service.interrupted)} interrupted job(s) first", final=True)
        if service.waiting_for_worker():  # redis mode: kept in the queue until a worker connects
            from bot.core.messages import render

            status.line(render("queue_no_worker", "en"), final=True)
        finished = job
        async with contextlib.aclosing(service.watch(job.id)) as events:
            async for event in events:
                if isinstance(event, JobStarted):
                    status.line(f"job #{job.id} started on {event.model}", final=True)
                elif isinstance(event, JobProgress):
                    status.line(f"job #{job.id}: step {event.step}/{event.total}, ETA {event.eta:.1f}s",
                                final=event.step == event.total)
                elif isinstance(event, JobEnded):
                    finished = event.job
        if finished.state != JobState.DONE:
            raise CliError(f"job #{job.id} {finished.state.value}: {finished.error or ''}".rstrip(": "), EXIT_FAILURE)
        for image in await service.images(job.id):
            path = service.image_path(image.path)
            if out is not None:
                try:
                    out.mkdir(parents=True, exist_ok=True)
                    path = Path(shutil.copy2(path, out / path.name))
                except OSError as e:
                    raise CliError(
                        f"job #{job.id} is done (images in {path.parent}), but copying to --out {out} failed: "
                        f"{e.strerror or e}",
                        EXIT_FAILURE,
                    ) from None
            print(path)
        await service.mark_delivered(job.id, "cli")
        return 0
    finally:
        unlisten()
        await service.close()


def _work(config: Config, resume: bool = False) -> int:
    """Run the worker until the queue is empty (jobs left by a crash or submitted elsewhere)."""

    async def run() -> int:
        from bot.core.service import GenerationService
        from bot.progress import Progress, WorkProgress, loading_progress

        service = GenerationService(config)
        progress = Progress(sys.stderr)  # a bar on a terminal, plain lines otherwise
        work = WorkProgress(progress)
        listening = [service.events.listen(work), service.events.listen(loading_progress(progress))]  # from start
        await service.start()
        try:
            if resume:
                await service.set_paused(False)
            waiting = await service.queue_length()
            print(f"{waiting} job(s) waiting ({len(service.interrupted)} interrupted)", file=sys.stderr)
            if waiting and await service.paused():
                raise CliError("the queue is paused: run `animebot work --resume` to unpause it and run them")
            work.remaining(waiting + len(await service.running_jobs()))
            await service.drain()
            work.close()
            for job in await service.undelivered():
                print(f"job #{job.id}: {job.state.value}" + (f" ({job.error})" if job.error else ""))
            return 0
        finally:
            for unlisten in listening:
                unlisten()
            await service.close()

    return asyncio.run(run())


def _pool_worker(args: argparse.Namespace, config: Config) -> int:
    """Run one pool worker until SIGTERM or SIGINT (bot/core/pool/worker_process.py)."""
    import logging
    import signal

    from bot.core.pool.worker_process import (
        WorkerSetupError,
        check_device,
        parse_models,
        run_worker,
        served_models,
        worker_id_for,
    )

    models = parse_models(args.models)
    try:  # everything the arguments can get wrong, before seconds of imports
        served_models(config, models)
        if args.device is not None:
            check_device(args.device)
        worker_id_for(args.worker_id, args.device)
        settings = config.workers.with_url(args.redis_url)
    except ValueError as e:  # WorkerSetupError too
        raise CliError(str(e)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers (Windows)
                loop.add_signal_handler(signum, stop.set)
        await run_worker(
            config, device=args.device, models=models, worker_id=args.worker_id, stop=stop, settings=settings
        )

    try:
        asyncio.run(run())
    except WorkerSetupError as e:  # the device is not there (CUDA missing), the id is in use
        raise CliError(str(e), EXIT_FAILURE) from None
    return 0


def _models(config: Config) -> int:
    from bot.core.memory_info import describe_vae, memory_status
    from inference.memory import MODE_FEATURES, gib, reference_footprint
    from inference.sources import describe_source

    budget, device, problem = _device_budget(config)
    rows = []
    modes = []
    for name, spec in config.models.items():
        state = describe_source(spec.source, config.cache_dir)
        status = memory_status(spec, budget, reference_footprint(spec))  # nothing is loaded here
        marker = "*" if name == config.inference.default_model else " "
        memory = f"{spec.memory} -> {status.mode}" if spec.memory == "auto" else status.mode
        rows.append((f"{marker} {name}", spec.family, spec.dialect, state.state, memory, state.description))
        modes.append(status.mode)
    header = ("  name", "family", "dialect", "state", "memory", "source")
    last = len(header) - 1
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(last)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) if i < last else cell for i, cell in enumerate(row)).rstrip())
    print("* default model")
    limit = f" (vram_limit_gb = {config.inference.vram_limit_gb:g})" if config.vram_limit is not None else ""
    usable = "no limit" if budget is None else gib(budget)
    if problem is not None:
        print(f"device {device}: {problem}")
    print(f"device {device}: usable memory {usable}{limit}; auto picks the mode for it when a model loads")
    for mode in dict.fromkeys(modes):  # each mode shown once, in table order
        print(f"{mode} mode: {', '.join(MODE_FEATURES[mode])}")
    for name, spec in config.models.items():
        if spec.vae is not None:
            print(f"{name}: VAE: {describe_vae(spec.vae)}")
    return 0


def _doctor(config: Config) -> int:
    """Every check of bot/doctor.py, one line each as it is known; exit 1 when something blocks `run`."""
    from bot.doctor import run_checks

    findings = []
    for finding in run_checks(config):
        findings.append(finding)
        print(_one_line(finding.line()), flush=True)
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    if errors:
        print(f"{errors} problem(s) block `animebot run`, {warnings} warning(s)")
        return EXIT_FAILURE
    print(f"ready for `animebot run` ({warnings} warning(s))")
    return 0


def _device_budget(config: Config) -> tuple[int | None, str, str | None]:
    """The device memory the bot could use now (None: no limit known), the device's name, and why the
    configured device cannot be used (None when it can). Imports torch (to ask CUDA what is free)."""
    from inference.device import device_budget, make_runtime

    inf = config.inference
    try:
        runtime = make_runtime(inf.device, inf.dtype, config.cache_dir, inf.local_files_only, config.vram_limit)
    except ValueError as e:  # the configured device is not present: the list is still worth showing
        return config.vram_limit, inf.device, str(e)
    return device_budget(runtime), runtime.device, None


def _build_default_tags(args: argparse.Namespace) -> int:
    from bot.prompts.tags import TagCategory
    from bot.prompts.tags.bundled import DEFAULT_COUNTS, build_default

    counts = {}
    for category in TagCategory:
        n = getattr(args, f"top_{category.name.lower()}")
        n = DEFAULT_COUNTS[category] if n is None else n
        if n < 0:
            raise CliError(f"--{category.name.lower()}: a count cannot be negative ({n})")
        counts[category] = n
    try:
        report = build_default(args.source, args.out, counts)
    except TagImportError as e:
        raise CliError(str(e)) from None
    print(report.summary())
    return 0


class _TqdmProgress:
    """The download's progress as a tqdm bar on stderr."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar: tqdm[None] | None = None

    def start(self, total: int | None, already: int) -> None:
        self.bar = self._tqdm(
            total=total, initial=already, unit="B", unit_scale=True, unit_divisor=1024, desc="tags", file=sys.stderr
        )

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _update_tags(args: argparse.Namespace, config: Config) -> int:
    from bot.prompts.tags.update import update

    source = args.source or config.settings.tags.update_url
    progress = _TqdmProgress()
    try:
        report = update(source, config.tags_db, progress)
    except TagDatabaseBusy as e:
        raise CliError(str(e), EXIT_FAILURE) from None
    except TagImportError as e:
        raise CliError(f"{e}; the tag database was not changed", EXIT_FAILURE) from None
    finally:
        progress.close()
    print(report.summary())
    return 0


def _tags(args: argparse.Namespace, config: Config) -> int:
    from bot.prompts.tags import TagCategory, import_csv

    if args.tags_command == "update":
        return _update_tags(args, config)
    if args.tags_command == "import":
        try:
            report = import_csv(args.file, config.tags_db)
        except TagDatabaseBusy as e:
            raise CliError(str(e), EXIT_FAILURE) from None
        except TagImportError as e:
            raise CliError(str(e)) from None
        print(report)
        return 0

    from bot.prompts.dialects import load_dialect

    model = args.model or config.inference.default_model
    if model not in config.models:
        raise CliError(f"unknown model {model!r} (have: {', '.join(config.models)})")
    dialect = load_dialect(config.models[model].dialect)
    db = _open_tags(config)
    if db is None:
        raise CliError(f"no tag database at {config.tags_db}: run `animebot tags import FILE` first")
    category = TagCategory.parse(args.category) if args.category else None
    for match in db.search(args.text, category):
        tag = match.tag
        text = dialect.format_artist(tag.name) if tag.category == TagCategory.ARTIST else dialect.format_tag(tag.name)
        print(f"{text}\t{tag.category.name.lower()}\t{tag.post_count}")
    return 0


def _describe(args: argparse.Namespace, config: Config) -> int:
    """Tag one image file and print the prompt (first line), then the rating and the tags with their scores."""
    from bot.core.messages import render
    from bot.prompts.describe import describe_prompt
    from bot.prompts.dialects import load_dialect
    from inference.tagger import ImageRejected, TaggerError, TaggerLoader, open_image

    model = args.model or config.inference.default_model
    if model not in config.models:
        raise CliError(f"unknown model {model!r} (have: {', '.join(config.models)})")
    for name in ("general_threshold", "character_threshold"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 1:
            raise CliError(f"--{name.replace('_', '-')} must be more than 0 and at most 1 (got {value})")
    limit = int(config.tagger.max_upload_mb * 2**20)
    try:
        size = args.file.stat().st_size
        if size > limit:  # before reading it
            megabytes = {"size": f"{size / 2**20:.1f}", "limit": f"{limit / 2**20:g}"}
            raise CliError(f"{args.file}: {render('describe_too_big', **megabytes)}")
        data = args.file.read_bytes()
    except OSError as e:
        raise CliError(f"{args.file}: {e.strerror or e}") from None
    try:
        image = open_image(data, max_bytes=limit, max_pixels=config.tagger.max_pixels)
    except ImageRejected as e:
        raise CliError(f"{args.file}: {render(f'describe_{e.reason}', 'en', **e.params)}") from None
    try:
        tagger = TaggerLoader(config.tagger_options).get()  # downloads on first use (huggingface_hub's bar)
        result = tagger.tag(
            image, general_threshold=args.general_threshold, character_threshold=args.character_threshold
        )
    except TaggerError as e:
        raise CliError(str(e), EXIT_FAILURE) from None
    prompt = describe_prompt(load_dialect(config.models[model].dialect), result)
    if args.json:
        print(json.dumps({
            "model": model,
            "prompt": prompt,
            "rating": result.rating,
            "rating_scores": result.rating_scores,
            "characters": [[t, round(s, 4)] for t, s in result.characters],
            "general": [[t, round(s, 4)] for t, s in result.general],
        }, ensure_ascii=False, indent=2))
        return 0
    if not prompt:
        print("animebot: the tagger found no tags above the thresholds", file=sys.stderr)
    print(prompt)
    others = ", ".join(f"{r} {s:.2f}" for r, s in result.rating_scores.items() if r != result.rating)
    print(f"rating: {result.rating} {result.rating_scores[result.rating]:.2f} ({others})")
    for label, tags in (("characters", result.characters), ("general", result.general)):
        print(f"{label}: " + (", ".join(f"{t} {s:.2f}" for t, s in tags) or "-"))
    return 0


NO_TOKEN_HELP = """animebot: error: no Discord bot token.
Get one: https://discord.com/developers/applications -> your application (or New Application) -> Bot
-> Reset Token, and copy it. Then set it in the environment (preferred):
    export DISCORD_TOKEN=...
or put `token = "..."` in the [discord] section of the config file."""


def _run(config: Config) -> int:
    import logging
    import os

    token = os.environ.get("DISCORD_TOKEN") or config.discord.token
    if not token:
        print(NO_TOKEN_HELP, file=sys.stderr)
        return EXIT_USAGE
    from bot.discord_app.client import create_bot
    from bot.metrics import start_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bot = create_bot(config, freeze_gc=True)
    metrics = start_metrics(bot.service, config.metrics)  # listening now: StartError if the port is taken
    if metrics is not None:
        bot.add_listener(metrics.feed.start, "on_ready")  # the queue gauges are read once the bot is up
        logging.getLogger("animebot").info("Prometheus metrics at %s", metrics.url)
    try:
        bot.run(token, log_handler=None)
    finally:
        if metrics is not None:
            metrics.server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "tags" and args.tags_command == "build-default":  # a build step: no config
            return _build_default_tags(args)
        config = load_config(args.config)
        if args.command == "generate":
            return _generate(args, config)
        if args.command == "models":
            return _models(config)
        if args.command == "doctor":
            return _doctor(config)
        if args.command == "run":
            config.ensure_data_dir()
            return _run(config)
        if args.command == "work":
            config.ensure_data_dir()
            return _work(config, args.resume)
        if args.command == "worker":
            return _pool_worker(args, config)
        if args.command == "describe":
            return _describe(args, config)
        return _tags(args, config)
    except ConfigError as e:  # one line per mistake in the file
        return _fail(*str(e).splitlines(), code=EXIT_USAGE)
    except UserError as e:  # the input is wrong (2); or right, but too large for this device (1)
        return _fail(str(e), code=EXIT_FAILURE if e.key in RUNTIME_REFUSALS else EXIT_USAGE)
    except TagDatabaseBusy as e:  # opened by the service (the CLI's own opens raise CliError)
        return _fail(str(e), code=EXIT_FAILURE)
    except TagImportError as e:
        return _fail(str(e), code=EXIT_USAGE)
    except DialectError as e:  # a broken data file of the installation, not the user's input
        return _fail(*(f"broken data file: {line}" for line in str(e).splitlines()), code=EXIT_FAILURE)
    except CliError as e:
        return _fail(str(e), code=e.code)
    except (StartError, StoreBusy) as e:  # the data directory is in use, the database cannot be used
        return _fail(str(e), code=EXIT_FAILURE)
    except KeyboardInterrupt:
        print("\nanimebot: interrupted", file=sys.stderr)
        return 130
