"""jit figures: compile time of the built-in avg (cold, from the disk cache, from memory) and
the same file split into ranges (executor.plan_ranges) over 1 vs 2 worker processes."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from bench import engines
from bench.datagen import Dataset


@contextmanager
def _jit_cache_dir(path: str):
    old = os.environ.get("STORD_JIT_CACHE")
    os.environ["STORD_JIT_CACHE"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("STORD_JIT_CACHE", None)
        else:
            os.environ["STORD_JIT_CACHE"] = old


def compile_times(prog: Any, n: int) -> dict[str, Any]:
    """Seconds for JitEngine.load (compile + instance) cold, from disk and from memory."""
    from stord.engines.base import get_engine
    from stord.engines.jit import compile as jc

    eng = get_engine("jit")
    out: dict[str, list[float]] = {"cold": [], "disk": [], "memory": []}
    llvm_s: list[float] = []
    jc.target_machine()  # LLVM's one-time initialisation is not the program's compile time
    for _ in range(n):
        with tempfile.TemporaryDirectory(prefix="stordb-jit-") as d, _jit_cache_dir(d):
            jc.clear_memory_cache()
            t0 = time.perf_counter()
            eng.load(prog).close()
            out["cold"].append(time.perf_counter() - t0)
            llvm_s.append(jc.get_compiled(prog, "linux").seconds or 0.0)
            jc.clear_memory_cache()
            t0 = time.perf_counter()
            eng.load(prog).close()
            out["disk"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            eng.load(prog).close()
            out["memory"].append(time.perf_counter() - t0)
    jc.clear_memory_cache()
    return {"compile_cold_s": statistics.median(out["cold"]),
            "compile_cached_s": statistics.median(out["disk"]),
            "compile_memory_s": statistics.median(out["memory"]),
            "compile_runs": n, "compile_samples": out,
            "compile_note": f"median of {n}; translate+optimise+emit "
                            f"{statistics.median(llvm_s) * 1e3:.1f} ms of it"}


# -------------------------------------------------------------- ranges over worker processes

_prog: Any = None
_finish: Any = None


def _init(path: str) -> None:
    global _prog, _finish
    _prog, _finish = engines.avg_program(path)


def _run_range(job: tuple[str, int, int]) -> dict[str, Any]:
    from stord.query.executor import execute

    path, start, end = job
    return execute(_prog, path, engine="jit", start=start, end=end)


def plan(path: str, parts: int) -> list[tuple[int, int]]:
    from stord.query.executor import plan_ranges

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as buf:
        return [tuple(r) for r in plan_ranges(buf, parts)]


def ranges(ds: Dataset, runs: int, parts: int = 2) -> dict[str, Any]:
    from stord.query.builtins import finish as finish_builtin
    from stord.query.executor import merge_ranges

    rs = plan(ds.path, parts)
    jobs = [(ds.path, a, b) for a, b in rs]
    ctx = multiprocessing.get_context("spawn")  # no LLVM state inherited through fork
    times: dict[int, list[float]] = {}
    for workers in (1, 2):
        with ctx.Pool(workers, initializer=_init, initargs=(ds.path,)) as pool:
            pool.map(_run_range, jobs, chunksize=1)  # warm: imports, jit from cache
            times[workers] = []
            for _ in range(runs):
                t0 = time.perf_counter()
                results = pool.map(_run_range, jobs, chunksize=1)
                merged = merge_ranges(results) if len(results) > 1 else results[0]
                value = finish_builtin("avg", merged["state"], engines.AVG_PARAMS)
                times[workers].append(time.perf_counter() - t0)
                if abs(value - ds.avg) > 1e-9 * max(1.0, abs(ds.avg)):
                    raise RuntimeError(f"{workers} workers: avg {value!r}, expected {ds.avg!r}")
    w1, w2 = statistics.median(times[1]), statistics.median(times[2])
    return {"ranges": len(rs), "workers1_s": w1, "workers2_s": w2, "speedup": w1 / w2,
            "mbps1": ds.size / 1e6 / w1, "mbps2": ds.size / 1e6 / w2, "samples": times,
            "bounds": rs}


def run(ds: Dataset, runs: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    out: dict[str, Any] = {"problems": []}
    try:
        prog, _ = engines.avg_program(ds.path)
        out.update(compile_times(prog, max(3, runs)))
        log(f"  compile avg: cold {out['compile_cold_s'] * 1e3:.1f} ms, disk cache "
            f"{out['compile_cached_s'] * 1e3:.2f} ms, memory {out['compile_memory_s'] * 1e3:.3f} ms")
    except Exception as e:  # noqa: BLE001 - reported in the table
        out["problems"].append(f"compile: {type(e).__name__}: {e}".splitlines()[0])
        log(f"  compile FAILED: {e}")
    try:
        r = ranges(ds, runs)
        out["ranges"] = r
        log(f"  {r['ranges']} ranges: 1 worker {r['workers1_s'] * 1e3:.1f} ms, 2 workers "
            f"{r['workers2_s'] * 1e3:.1f} ms, speed-up {r['speedup']:.2f}x")
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"ranges: {type(e).__name__}: {e}".splitlines()[0])
        log(f"  ranges FAILED: {e}")
    return out
