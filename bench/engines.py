"""stord's engines through stord's own code path: builtins.resolve + executor.execute."""

from __future__ import annotations

import csv
import time
from typing import Any

from bench.datagen import VALUE_COLUMN, Dataset
from bench.measure import Contender, Throughput, interleave, timed

# Engines measured here, in the order of the table; hook needs our patched kernel (a VM),
# elsewhere its row says why it did not run.
BENCH_ENGINES = ("jit", "kernel", "hook", "interp")


def engine_names() -> list[str]:
    """Every engine of BENCH_ENGINES this stord knows about (unavailable ones are reported
    as rows with the reason, not dropped)."""
    try:
        from stord.engines.base import ENGINES
    except ImportError:
        return []
    return [e for e in BENCH_ENGINES if e in ENGINES]


# What a client sends for "avg of the value column" (the brief's names; see builtins.py).
AVG_PARAMS: dict[str, Any] = {"column": VALUE_COLUMN, "header": True}


def header_fields(path: str) -> list[str] | None:
    """The header record's fields, as the daemon reads them (server.read_header)."""
    try:
        from stord.server.server import read_header
    except ImportError:
        with open(path, newline="") as f:
            row = next(csv.reader(f), None)
        return [c.strip() for c in row] if row else None
    return read_header(path, ",")


def avg_program(path: str) -> tuple[Any, Any]:
    """(Program, finish) of the built-in avg over the value column, as the daemon builds it."""
    from stord.query.builtins import resolve

    return resolve("avg", dict(AVG_PARAMS), header_fields(path))


def run_avg(prog: Any, path: str, engine: str, start: int = 0, end: int | None = None) -> float:
    """One execute() over [start, end) and the built-in's finishing step, as a worker and the
    daemon do for a one-range query."""
    from stord.engines.base import DEFAULT_BUDGET
    from stord.query.builtins import finish
    from stord.query.executor import execute

    kw: dict[str, Any] = {"engine": engine, "start": start, "budget": DEFAULT_BUDGET}
    if end is not None:
        kw["end"] = end
    out = execute(prog, path, **kw)
    return float(finish("avg", out["state"], dict(AVG_PARAMS)))


def stord_contender(ds: Dataset, engine: str) -> Contender:
    """The built-in avg on `engine`, set up for timed runs."""
    rec = Throughput(f"stord {engine}", ds.size, expected=ds.avg)
    try:
        from stord.engines.base import get_engine

        get_engine(engine)
        prog, _ = avg_program(ds.path)
    except Exception as e:  # noqa: BLE001 - unavailable engine: a row with the reason
        rec.error = f"{type(e).__name__}: {e}".splitlines()[0]
        return Contender(rec)
    # One untimed run: compiles (jit) or loads (kernel) the program and fills caches, so the
    # timed runs measure scanning, as a daemon with a warm cache does.
    t0 = time.perf_counter()
    try:
        run_avg(prog, ds.path, engine)
    except Exception as e:  # noqa: BLE001
        rec.error = f"{type(e).__name__}: {e}".splitlines()[0]
        return Contender(rec)
    first = time.perf_counter() - t0
    if engine == "jit":
        # The jit runs a quickly compiled tier first and swaps in LLVM O2 code compiled in a
        # background thread; measure the steady state a busy daemon runs at.
        from stord.engines.jit.compile import wait_for_upgrades

        wait_for_upgrades(60)
    if ds.size < 10e6:
        rec.note = f"own {ds.mb:.2f} MB file"
    return Contender(rec, timed(lambda: run_avg(prog, ds.path, engine)), setup_s=first)


def stord_engine(ds: Dataset, engine: str, runs: int, *, budget_s: float = 30) -> Throughput:
    """stord_contender's runs in a row; slow engines get as many as fit the budget (>= 1)."""
    c = stord_contender(ds, engine)
    n = max(1, min(runs, int(budget_s / max(c.setup_s, 1e-9))))
    if n < runs and not c.rec.error:
        c.rec.note = "; ".join(x for x in (f"{n} run(s) within the {budget_s:.0f} s budget",
                                            c.rec.note) if x)
    return interleave([c], n)[0]
