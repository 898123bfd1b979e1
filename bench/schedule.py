"""The order in which ``label_efficiency.py`` starts its runs when several run side by side.

First every method at the first seed (the baselines of every data set first, since the gap
needs both, then the methods that take longest, so that they do not end the table alone);
then, as workers free up, the other seeds: the baselines' first, then those of the methods that
close the most of the gap *so far* (the mean over the data sets of the results finished when
the worker asks), up to ``extra_best`` methods. A time limit cuts the list wherever it stands.
"""

from __future__ import annotations

import threading
from typing import Callable

SLOWEST_FIRST = ("ctct", "dct", "uamt", "urpc", "cct", "cps", "rdrop", "bcp", "ict", "adversarial", "fixmatch",
                 "mean_teacher", "entropy_minimization")
"""Methods by their seconds per iteration in the CPU tables (CTCT's Swin U-Net and DCT's
adversarial passes first); a method missing here goes last."""


def first_seed_tasks(keys: list[str], baselines: tuple[str, ...], methods: list[str], seed: int) -> list[tuple]:
    """``(key, method, seed)`` for every data set and method at ``seed``, baselines first, then the
    methods slowest first, the data sets interleaved."""
    rank = {m: i for i, m in enumerate(SLOWEST_FIRST)}
    ordered = sorted(methods, key=lambda m: rank.get(m, len(rank)))
    return [(k, m, seed) for m in baselines for k in keys] + [(k, m, seed) for m in ordered for k in keys]


class RunQueue:
    """Hands out ``(key, method, seed)`` tasks to worker threads (thread-safe).

    ``gap_so_far()`` returns ``{method: mean gap closed over the data sets}`` from the finished
    runs; it is asked only once the first seed's tasks are all handed out.
    """

    def __init__(self, keys: list[str], baselines: tuple[str, ...], methods: list[str], seeds: list[int],
                 extra_seeds: list[int], extra_best: int, gap_so_far: Callable[[], dict[str, float]]):
        self.keys, self.baselines, self.methods = keys, baselines, methods
        self.pending = first_seed_tasks(keys, baselines, methods, seeds[0])
        # every method at the other --seeds; then the baselines at the extra seeds
        self.pending += [(k, m, s) for s in seeds[1:] for m in (*baselines, *methods) for k in keys]
        self.pending += [(k, m, s) for s in extra_seeds for m in baselines for k in keys if s not in seeds]
        self.extra_seeds = [s for s in extra_seeds if s not in seeds]
        self.extra_best, self.gap_so_far = extra_best, gap_so_far
        self.chosen: list[str] = []
        self.lock = threading.Lock()

    def next(self) -> tuple | None:
        with self.lock:
            if not self.pending and self.extra_seeds and len(self.chosen) < self.extra_best:
                self._choose_next_best()
            return self.pending.pop(0) if self.pending else None

    def _choose_next_best(self) -> None:
        gaps = {m: g for m, g in self.gap_so_far().items() if m in self.methods and m not in self.chosen}
        if not gaps:
            return
        best = max(gaps, key=gaps.get)
        self.chosen.append(best)
        self.pending += [(k, best, s) for s in self.extra_seeds for k in self.keys]
