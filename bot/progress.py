"""Progress of long CLI work on stderr: a tqdm bar on a terminal, plain lines otherwise (a log file, a pipe,
a service manager's journal), where a redrawn bar would be noise.

`work_progress` follows `animebot work` (jobs done of the queue, the running job's steps) and
`loading_progress` a model's load (build or download stages, from the worker's LoadProgress reports), both
from the service's events."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, TextIO

from tqdm import tqdm

from bot.core.events import Event, JobFinished, JobProgress, JobStarted, JobSubmitted, ModelLoading


class Bar(Protocol):
    def update(self, done: int, total: int, status: str = "", milestone: bool = False) -> None:
        """Now `done` of `total`. A plain line is written when done or total changed, or for a `milestone`."""

    def close(self) -> None: ...


class TerminalBar:
    """A tqdm bar, redrawn in place; drawn from its first update on (nothing shows for work that never came)."""

    def __init__(self, stream: TextIO, description: str, total: int, unit: str) -> None:
        self.stream = stream
        self.description = description
        self.unit = unit
        self._bar: tqdm[None] | None = None

    def update(self, done: int, total: int, status: str = "", milestone: bool = False) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=total, desc=self.description, unit=f" {self.unit}", file=self.stream, dynamic_ncols=True,
                leave=True, mininterval=0.1,
            )
        self._bar.total = total
        self._bar.n = done
        self._bar.set_postfix_str(status, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class LineBar:
    """One line per change that matters: `work: 2/5 jobs (job #12 done)`."""

    def __init__(self, stream: TextIO, description: str, total: int, unit: str) -> None:
        self.stream = stream
        self.description = description
        self.unit = unit
        self._last: tuple[int, int] | None = None

    def update(self, done: int, total: int, status: str = "", milestone: bool = False) -> None:
        if (done, total) == self._last and not milestone:
            return
        self._last = (done, total)
        suffix = f" ({status})" if status else ""
        self.stream.write(f"{self.description}: {done}/{total} {self.unit}{suffix}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class Progress:
    """Makes bars: tqdm when `stream` is a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive

    def bar(self, description: str, total: int, unit: str) -> Bar:
        kind = TerminalBar if self.interactive else LineBar
        return kind(self.stream, description, total, unit)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def loading_progress(progress: Progress) -> Callable[[Event], None]:
    """An EventBus listener: a bar per model being loaded, its stages (`unet`, `vae`, ...) as they come."""
    bars: dict[str, Bar] = {}

    def on_event(event: Event) -> None:
        if not isinstance(event, ModelLoading):
            return
        bar = bars.get(event.model)
        if bar is None:
            bar = bars[event.model] = progress.bar(f"loading {event.model}", event.total, "stages")
        bar.update(event.done, event.total, event.stage, milestone=True)
        if event.done >= event.total:
            bar.close()
            del bars[event.model]

    return on_event


class WorkProgress:
    """`animebot work`: jobs finished of the jobs there were to run (more when more are queued meanwhile),
    and what the running job is doing."""

    def __init__(self, progress: Progress, waiting: int = 0) -> None:
        self.total = waiting
        self.done = 0
        self.bar = progress.bar("work", waiting, "jobs")

    def remaining(self, count: int) -> None:
        """`count` jobs are still to run (waiting or running now): the total is those and the ones done."""
        self.total = max(self.total, self.done + count)

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobSubmitted):
            self.total += 1
            self.bar.update(self.done, self.total)
        elif isinstance(event, JobStarted):
            self.total = max(self.total, self.done + 1)  # started before the queue was counted
            self.bar.update(self.done, self.total, f"job #{event.job_id} on {event.model}", milestone=True)
        elif isinstance(event, JobProgress):
            self.bar.update(self.done, self.total, f"job #{event.job_id}: step {event.step}/{event.total}")
        elif isinstance(event, JobFinished):
            self.done += 1
            self.total = max(self.total, self.done)
            self.bar.update(self.done, self.total, f"job #{event.job_id} {event.state}", milestone=True)

    def close(self) -> None:
        self.bar.close()
