"""Timing records: best and median of N runs, throughput, and a check against the exact answer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# Averages are compared to the exact one (integer hundredths) with this relative tolerance:
# float summation over millions of rows drifts in the last digits, a parse error does not.
REL_TOL = 1e-9


@dataclass
class Throughput:
    name: str
    nbytes: int
    times: list[float] = field(default_factory=list)
    value: float | None = None
    expected: float | None = None
    note: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.value is not None and self.correct

    @property
    def correct(self) -> bool:
        if self.value is None or self.expected is None:
            return False
        return abs(self.value - self.expected) <= REL_TOL * max(1.0, abs(self.expected))

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def mbps(self, t: float | None) -> float | None:
        return self.nbytes / 1e6 / t if t else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ok=self.ok, correct=self.correct, best_s=self.best, median_s=self.median,
                 mbps_best=self.mbps(self.best), mbps_median=self.mbps(self.median))
        return d


@dataclass
class Contender:
    """One side of a comparison: its record, one timed run (seconds, answer), and what to
    release at the end. A contender whose set-up failed carries the error in rec."""
    rec: Throughput
    once: Callable[[], tuple[float, float]] | None = None
    close: Callable[[], None] | None = None
    setup_s: float = 0.0     # the untimed first run (compile, load), for run budgets


def timed(fn: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """once() for a function whose wall time is the measurement."""
    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        value = fn()
        return time.perf_counter() - t0, value
    return once


def _rounds(contenders: list[Contender], runs: int, order: list[int]) -> list[Throughput]:
    """`runs` rounds, each running contenders[k] for k in `order`; a record's times[i] is the
    sum of its runs in round i. A contender that fails stops there and keeps its error (and
    no time for that round); a wrong answer becomes its error at the end."""
    try:
        for _ in range(runs):
            got: dict[int, float] = {}
            for k in order:
                c = contenders[k]
                if c.rec.error or c.once is None:
                    continue
                try:
                    t, value = c.once()
                except Exception as e:  # noqa: BLE001 - a failing competitor is reported
                    c.rec.error = f"{type(e).__name__}: {e}".splitlines()[0]
                    continue
                got[k] = got.get(k, 0.0) + t
                c.rec.value = float(value)
            for k, t in got.items():
                if not contenders[k].rec.error:
                    contenders[k].rec.times.append(t)
    finally:
        for c in contenders:
            if c.close is not None:
                c.close()
    for c in contenders:
        rec = c.rec
        if rec.value is not None and not rec.correct and not rec.error:
            rec.error = f"wrong result {rec.value!r}, expected {rec.expected!r}"
    return [c.rec for c in contenders]


def interleave(contenders: list[Contender], runs: int) -> list[Throughput]:
    """Run each contender once per round, `runs` rounds. Round-robin rather than one's runs
    in a row: the shared machine's speed changes within minutes, and a slow spell then hits
    every side of a ratio instead of one. times[i] of each record is from round i."""
    return _rounds(contenders, runs, list(range(len(contenders))))


def balanced(contenders: list[Contender], runs: int) -> list[Throughput]:
    """Tight alternation of a few contenders: each round runs them in order, then in
    reverse (A B C C B A), and a record's times[i] is its two runs of round i added. A
    change of the machine's speed that is linear over a round then weighs on every side
    alike, and the rounds are short (a few of the fastest runs), so per-round ratios are
    far less noisy than those of the round-robin over every competitor."""
    n = len(contenders)
    return _rounds(contenders, runs, list(range(n)) + list(reversed(range(n))))


def round_ratios(ref: Throughput, other: Throughput) -> list[float]:
    """ref time / other time per round of an interleaved run (> 1: other is faster)."""
    return [a / b for a, b in zip(ref.times, other.times, strict=False) if a and b]


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]
