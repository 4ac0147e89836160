"""jit figures: compile time of the built-in avg (cold, from the disk cache, from memory) and
the same file split into ranges (executor.plan_ranges) over 1 vs 2 worker processes, with the
naive C loop (bench/baseline/avg.c) over the same ranges in 1 vs 2 processes as a control: what
the shared host gave to any code for that split at the time."""

from __future__ import annotations

import json
import mmap
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import competitors, engines
from bench.datagen import Dataset

REPO = Path(__file__).resolve().parent.parent


def _probe(path: str) -> dict[str, float | str]:
    """In a fresh process: JitEngine.load of the built-in avg twice (the cache directory
    comes from STORD_JIT_CACHE). LLVM's one-time set-up is done before timing."""
    from stord.engines.base import get_engine
    from stord.engines.jit import compile as jc

    prog, _ = engines.avg_program(path)
    eng = get_engine("jit")
    jc.target_machine()
    t0 = time.perf_counter()
    eng.load(prog).close()
    first = time.perf_counter() - t0
    # Tiered jit: the load returns with quickly optimised code; LLVM O2 code follows from a
    # background thread. How long after the load it is ready:
    upgrades = getattr(jc, "wait_for_upgrades", None)
    o2_after = 0.0
    if upgrades is not None:
        upgrades(120)
        o2_after = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng.load(prog).close()
    second = time.perf_counter() - t0
    return {"first_s": first, "second_s": second, "o2_ready_s": o2_after,
            "cache_files": len(os.listdir(os.environ["STORD_JIT_CACHE"]))}


def _probe_beside(path: str) -> dict[str, float]:
    """In a fresh process with an empty cache: a cold load of avg, then at once a cold load
    of another built-in (count), timed: a worker that gets a new query while the previous
    one's O2 code compiles in the background."""
    from stord.engines.base import get_engine
    from stord.engines.jit import compile as jc
    from stord.query.builtins import resolve

    prog, _ = engines.avg_program(path)
    other, _ = resolve("count", {"header": True}, engines.header_fields(path))
    eng = get_engine("jit")
    jc.target_machine()
    eng.load(prog).close()
    t0 = time.perf_counter()
    eng.load(other).close()
    beside = time.perf_counter() - t0
    jc.wait_for_upgrades(120)
    return {"beside_s": beside}


def _probe_subprocess(path: str, cache: str, mode: str = "probe") -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "bench.jitbench", mode, path],
                       capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "STORD_JIT_CACHE": cache})
    if r.returncode:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"jit probe failed: {tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def compile_times(path: str, n: int) -> dict[str, Any]:
    """Seconds for JitEngine.load of the built-in avg: cold (empty cache, compiled now), from
    the disk cache (a new process), and from the in-process cache. Each sample runs in a
    fresh process (the jit's in-memory cache cannot be emptied safely from outside)."""
    cold, disk, memory, o2, beside = [], [], [], [], []
    for _ in range(n):
        with tempfile.TemporaryDirectory(prefix="stordb-jit-") as d:
            a = _probe_subprocess(path, d)
            b = _probe_subprocess(path, d)
            cold.append(a["first_s"])
            o2.append(a["o2_ready_s"])
            disk.append(b["first_s"])
            memory += [a["second_s"], b["second_s"]]
        with tempfile.TemporaryDirectory(prefix="stordb-jit-") as d:
            beside.append(_probe_subprocess(path, d, "beside")["beside_s"])
    return {"compile_cold_s": statistics.median(cold),
            "compile_cached_s": statistics.median(disk),
            "compile_memory_s": statistics.median(memory),
            "compile_runs": n,
            "compile_o2_ready_s": statistics.median(o2),
            "compile_beside_s": statistics.median(beside),
            "compile_samples": {"cold": cold, "disk": disk, "memory": memory, "o2": o2,
                                "beside": beside},
            "compile_note": f"median of {n}, each in a fresh process; JitEngine.load"
                            + (f"; O2 code (background) ready {statistics.median(o2) * 1e3:,.0f}"
                               " ms after the cold load began" if any(o2) else "")}


# -------------------------------------------------------------- ranges over worker processes

_prog: Any = None
_finish: Any = None


def _init(path: str) -> None:
    global _prog, _finish
    _prog, _finish = engines.avg_program(path)


def _warm_range(job: tuple[str, int, int]) -> dict[str, Any]:
    """A first run in a worker; returns once the jit's background O2 code is in place."""
    out = _run_range(job)
    from stord.engines.jit import compile as jc

    if hasattr(jc, "wait_for_upgrades"):
        jc.wait_for_upgrades(120)
    return out


def _run_range(job: tuple[str, int, int]) -> dict[str, Any]:
    from stord.engines.base import DEFAULT_BUDGET
    from stord.query.executor import execute

    path, start, end = job
    return execute(_prog, path, engine="jit", start=start, end=end, budget=DEFAULT_BUDGET)


def plan(path: str, parts: int) -> list[tuple[int, int]]:
    from stord.query.executor import plan_ranges

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as buf:
        return [tuple(r) for r in plan_ranges(buf, parts)]


def _c_processes(exe: Path, ds: Dataset, groups: list[list[tuple[int, int]]]) -> float:
    """Start one avg.c process per group of ranges, all at once; the wall seconds from the
    first start until every one has exited (process start included). Raises unless their
    rows and hundredths, added up, are the dataset's."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([str(exe), *competitors.baseline_args(ds.path, ranges=g)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for g in groups]
    outs = [p.communicate() for p in procs]
    t = time.perf_counter() - t0
    rows = cents = 0
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode:
            raise competitors.BaselineError(f"avg.c exited with {p.returncode}: {err.strip()}")
        (n, c, _avg, _t), = competitors.parse_baseline(out)
        rows, cents = rows + n, cents + c
    if (rows, cents) != (ds.rows, ds.sum_cents):
        raise RuntimeError(f"C baseline in {len(groups)} process(es): {rows} rows / {cents} "
                           f"hundredths, expected {ds.rows} / {ds.sum_cents}")
    return t


def _medians(times: dict[int, list[float]]) -> tuple[float, float, float, float]:
    """(median 1-side time, median 2-side time, their ratio, median of per-round ratios)."""
    a, b = statistics.median(times[1]), statistics.median(times[2])
    per_round = statistics.median([x / y for x, y in zip(times[1], times[2], strict=True)])
    return a, b, a / b, per_round


def ranges(ds: Dataset, runs: int, parts: int = 2) -> dict[str, Any]:
    """The built-in avg over `parts` line-aligned ranges in a pool of 1 vs 2 worker processes,
    and the naive C loop over the same ranges in 1 process (given them all) vs one process
    per range (started together). Each round runs the jit's pools (1, then 2), and the C
    loop's (1, then 2); which of the jit and the C goes first alternates between rounds.
    Raises when an answer is wrong; a C baseline that cannot be built is noted in c_error
    and the jit is measured alone."""
    from stord.query.builtins import finish as finish_builtin
    from stord.query.executor import merge_ranges

    rs = plan(ds.path, parts)
    jobs = [(ds.path, a, b) for a, b in rs]
    exe: Path | None = None
    c_error = ""
    try:
        exe = competitors.build_baseline()
    except (competitors.BaselineError, OSError) as e:
        c_error = f"C baseline not built: {e}"
    c_groups = {1: [rs], 2: [[r] for r in rs]}
    ctx = multiprocessing.get_context("spawn")  # no LLVM state inherited through fork
    times: dict[int, list[float]] = {1: [], 2: []}
    c_times: dict[int, list[float]] = {1: [], 2: []}
    # Both pools live at once and their runs alternate, so a slow spell of this shared
    # machine hits both sides of the ratio rather than one.
    with ctx.Pool(1, initializer=_init, initargs=(ds.path,)) as one, \
            ctx.Pool(2, initializer=_init, initargs=(ds.path,)) as two:
        pools = {1: one, 2: two}
        for pool in pools.values():
            pool.map(_warm_range, jobs, chunksize=1)  # imports, jit compile or cache

        def jit_round() -> None:
            for workers, pool in pools.items():
                t0 = time.perf_counter()
                results = pool.map(_run_range, jobs, chunksize=1)
                merged = merge_ranges(results) if len(results) > 1 else results[0]
                value = finish_builtin("avg", merged["state"], engines.AVG_PARAMS)
                times[workers].append(time.perf_counter() - t0)
                if abs(value - ds.avg) > 1e-9 * max(1.0, abs(ds.avg)):
                    raise RuntimeError(f"{workers} workers: avg {value!r}, expected {ds.avg!r}")

        def c_round() -> None:
            assert exe is not None
            for procs, groups in c_groups.items():
                c_times[procs].append(_c_processes(exe, ds, groups))

        sides = [jit_round]
        if exe is not None:
            for groups in c_groups.values():
                _c_processes(exe, ds, groups)  # untimed: checks, and the binary is paged in
            sides.append(c_round)
        for i in range(runs):
            for side in sides if i % 2 == 0 else sides[::-1]:
                side()
    w1, w2, speedup, speedup_rounds = _medians(times)
    out: dict[str, Any] = {
        "ranges": len(rs), "workers1_s": w1, "workers2_s": w2, "speedup": speedup,
        "speedup_rounds": speedup_rounds, "mbps1": ds.size / 1e6 / w1,
        "mbps2": ds.size / 1e6 / w2, "samples": times, "bounds": rs, "c_error": c_error}
    if exe is not None:
        c1, c2, c_speedup, c_rounds = _medians(c_times)
        out.update(c_workers1_s=c1, c_workers2_s=c2, c_speedup=c_speedup,
                   c_speedup_rounds=c_rounds, c_samples=c_times)
    return out


def run(ds: Dataset, runs: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    out: dict[str, Any] = {"problems": []}
    try:
        out.update(compile_times(ds.path, max(3, runs)))
        log(f"  compile avg: cold {out['compile_cold_s'] * 1e3:.1f} ms, disk cache "
            f"{out['compile_cached_s'] * 1e3:.2f} ms, memory {out['compile_memory_s'] * 1e3:.3f} ms"
            f"; count cold while avg's O2 compiles {out['compile_beside_s'] * 1e3:.1f} ms")
    except Exception as e:  # noqa: BLE001 - reported in the table
        out["problems"].append(f"compile: {type(e).__name__}: {e}".splitlines()[0])
        log(f"  compile FAILED: {e}")
    try:
        r = ranges(ds, runs)
        out["ranges"] = r
        line = (f"  {r['ranges']} ranges: 1 worker {r['workers1_s'] * 1e3:.1f} ms, 2 workers "
                f"{r['workers2_s'] * 1e3:.1f} ms, speed-up {r['speedup']:.2f}x (per round "
                f"{r['speedup_rounds']:.2f}x)")
        if r["c_error"]:
            out["problems"].append(f"ranges, C control: {r['c_error']}".splitlines()[0])
            line += f"; C loop not measured: {r['c_error']}"
        else:
            line += (f"; C loop over the same ranges: 1 process {r['c_workers1_s'] * 1e3:.1f} "
                     f"ms, 2 processes {r['c_workers2_s'] * 1e3:.1f} ms, "
                     f"{r['c_speedup']:.2f}x (per round {r['c_speedup_rounds']:.2f}x)")
        log(line)
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"ranges: {type(e).__name__}: {e}".splitlines()[0])
        log(f"  ranges FAILED: {e}")
    return out


if __name__ == "__main__":
    probes = {"probe": _probe, "beside": _probe_beside}
    if len(sys.argv) == 3 and sys.argv[1] in probes:
        print(json.dumps(probes[sys.argv[1]](sys.argv[2])))
    else:
        print("usage: python -m bench.jitbench probe|beside CSV", file=sys.stderr)
        sys.exit(2)
