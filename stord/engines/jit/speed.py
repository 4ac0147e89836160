"""`python -m stord.engines.jit.speed`: compile times and throughput of the built-ins on jit.

Generates (or takes) a CSV of `id,sensor,value,flag` rows, then for each built-in program
reports the cold compile time (translate + optimise + emit + link of the first-tier code,
no cache, in a process whose engine was probed as get_engine does), the compile time of
the same program with other parameters (the first-tier code is shared), the load time from
the disk cache and from the in-process cache, and MB/s over the file in page cache (once the
background O2 code is ready)
(process CPU time, best of --repeat runs, so other load on the machine distorts it less).
Speed claims belong to bench/; this is the jit engineer's quick check.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import tempfile
import time
from pathlib import Path

from stord.engines.jit import compile as jit_compile
from stord.engines.jit.engine import JitEngine, JitInstance
from stord.program.elf import load_object
from stord.program.model import Program
from stord.program.toolchain import builtin_object

CASES: list[tuple[str, dict[str, int]]] = [
    ("stats", {"col": 2, "header": 1}),
    ("count", {"op": 5, "value": 0, "col": 2, "header": 1}),
    ("hist", {"col": 2, "header": 1, "lo": -100000, "width": 20000, "nbuckets": 10}),
    ("groupby", {"col": 2, "key_col": 1, "header": 1}),
]


def write_csv(path: Path, rows: int) -> None:
    rnd = random.Random(1)
    with open(path, "w") as f:
        f.write("id,sensor,value,flag\n")
        for i in range(rows):
            f.write(f"{i},s{rnd.randrange(100)},{rnd.uniform(-1000, 1000):.2f},"
                    f"{rnd.randrange(2)}\n")


def throughput(inst: JitInstance, mm: mmap.mmap) -> float:
    n, cs = len(mm), inst.chunk_size
    view = memoryview(mm)
    t = time.process_time()
    off = 0
    while off < n:
        end = min(n, off + cs)
        inst.run_chunk(view[off:end], off, end == n)
        off = end
    dt = time.process_time() - t
    view.release()
    return n / dt / 1e6 if dt else float("inf")


def timed_load(prog: Program) -> tuple[float, str]:
    t = time.perf_counter()
    inst = JitEngine().load(prog)
    return (time.perf_counter() - t) * 1e3, inst.compiled.source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stord.engines.jit.speed")
    ap.add_argument("--file", type=Path, help="CSV to scan (default: a generated one)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    JitEngine.probe()   # once-per-process set-up, as get_engine() does before any load
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or Path(tmp) / "speed.csv"
        if args.file is None:
            write_csv(path, args.rows)
        os.environ["STORD_JIT_CACHE"] = str(Path(tmp) / "cache")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            print(f"{path}: {len(mm) / 1e6:.1f} MB, chunk {JitInstance.chunk_size} bytes")
            for name, params in CASES:
                prog = load_object(builtin_object(name)).with_params(**params)
                # each measurement waits for the background O2 compile of the one before,
                # so that they do not compete for the CPU
                jit_compile.clear_memory_cache()
                cold, _ = timed_load(prog)
                jit_compile.wait_for_upgrades()
                warm, _ = timed_load(prog)
                jit_compile.clear_memory_cache()
                disk, _ = timed_load(prog)
                # another parameter set: the first-tier code is reused
                other = prog.with_params(scale=3)
                retune, _ = timed_load(other)
                jit_compile.wait_for_upgrades()
                inst = JitEngine().load(prog)
                o2 = inst.compiled.slot.best
                best = max(throughput(inst, mm) for _ in range(args.repeat))
                print(f"{name:8} compile cold {cold:6.1f} ms, new params {retune:6.1f} ms, "
                      f"disk cache {disk:5.1f} ms, memory cache {warm:5.2f} ms, "
                      f"{best:7.1f} MB/s ({inst.compiled.tier} code"
                      + (f", O2 compiled in the background in {o2.seconds * 1e3:.0f} ms)"
                         if o2 is not None and o2.seconds else ")"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
