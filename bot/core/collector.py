"""The garbage collector's policy for the long-running bot (`animebot run`): what is frozen, and when.

CPython's cycle collector walks every tracked object that is not frozen, holding the GIL: while a full
collection runs, the event loop stalls for as long, whichever thread runs it. Most of this process's heap
never dies: the modules of discord.py, torch, diffusers and transformers, the tag index, and each loaded
model's objects (in the bot, a tiny model's first load leaves ~100k tracked objects, most of them the diffusers
and transformers pipeline modules it imports: each full collection walked them for 57-73 ms while generating,
benchmarks/bench_e2e.py). So:

- at start, before the bot serves anyone (`startup`): one full collection, then `gc.freeze()`: what
  survived moves to the permanent generation, which no collection walks;
- after each model load (`model_loaded`, which the GPU worker calls on its thread when a load finished):
  `gc.freeze()` alone, without a collection first. Freezing is O(1) (it splices the generations' lists),
  whereas the collection would stall the loop as long as the walk it saves.

What that costs, measured on the tiny models (tests/bot/core/test_collector.py checks the first):
- a frozen object is still freed by reference counting; only a cycle among frozen objects is never
  collected. An unloaded model has none that keep its weights alive: its pipeline and modules are freed
  when the cache drops it.
- the cyclic garbage alive at the moment of a freeze stays for the process's life: 14 objects after
  tiny-sdxl's load, 78 after tiny-anima's (what a gc.collect() found then); so do the objects alive then that
  later end in a cycle (a request in flight), once per load.
- the collector's thresholds stay CPython's defaults: with the long-lived heap frozen, a full collection walks
  only what the bot made since the last freeze (its queue, its interactions): 6-19 ms in 20 bursts of
  Discord traffic while generating, 20 ms with 10,000 jobs waiting (before: 55-73 ms, and 109 ms), young
  ones under 5 ms (benchmarks/bench_e2e.py prints every collection's pause). Higher thresholds would make
  full collections rarer, not shorter.

No discord, no torch: the bot's run path and the benchmarks use the same object.
"""

from __future__ import annotations

import gc
import logging
import threading

log = logging.getLogger(__name__)


class CollectorPolicy:
    """Keeps the long-lived heap out of the cycle collector's walk (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # model_loaded runs on the GPU thread, startup on the event loop
        self._started = False
        self.freezes = 0  # freezes after a load

    def startup(self) -> None:
        """Collect once and freeze what is alive: call it once the process has started, before it serves
        anyone (the collection takes as long as a full walk of the start-up heap)."""
        with self._lock:
            gc.collect()
            gc.freeze()
            self._started = True
        log.debug("garbage collector: %d start-up objects frozen", gc.get_freeze_count())

    def model_loaded(self, name: str) -> None:
        """A model (or another long-lived resource, such as the tagger) finished loading: freeze what is
        alive now, without collecting first. Cheap, callable from any thread. Before `startup` it does nothing:
        the start-up collection is still to come, and what it finds dead must not have been frozen."""
        with self._lock:
            if not self._started:
                return
            gc.freeze()
            self.freezes += 1
        log.debug("garbage collector: frozen after loading %s (%d objects frozen)", name, gc.get_freeze_count())

    def release(self) -> None:
        """Unfreeze everything, e.g. when a worker that shares its process with other work stops (tests, benchmarks):
        its frozen objects become collectable again."""
        with self._lock:
            gc.unfreeze()
            self._started = False
