"""Benchmark inside the VM: the hook engine against jit and a plain read() of the same file.

    python -m vagrant.harness bench [--mb 32] [--repeat 3]     (from the host)
    python -m vagrant.bench --out result.json                  (inside the VM)

One CSV (id,sensor,value,flag) on a ramfs (its reads go through filemap_read, where the
hook is), page cache warm; the `stats` built-in over column `value`. Measured in the same
run, best of --repeat:
- read:  read() of the whole file into a user buffer, nothing else (the copy-out floor);
- jit:   read() chunks into user space and run the jitted program on each (what the daemon
         does without the hook);
- kernel: the same BPF code JIT-compiled by the same kernel, fed by read() and
         BPF_PROG_TEST_RUN per 3.5 KB (what the hook saves on plumbing, on equal code);
- hook:  one read() through the hook, the program in the kernel, no copy-out;
- hook_skip_only: the hook with a program that returns XDP_DROP at once (the plumbing:
         chunk bounce copy and one program call per page).
Under qemu TCG every figure is emulated: only the ratios mean something, and only within
one run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from stord.engines.base import Engine
from stord.engines.hook.engine import HookEngine
from stord.engines.jit import compile as jit_compile
from stord.engines.jit.engine import JitEngine
from stord.engines.kernel.engine import KernelEngine
from stord.program.asm import assemble
from stord.program.elf import load_object
from stord.program.model import Program
from stord.program.toolchain import builtin_object
from stord.query.state import decode

READ_BUF = 1 << 20


def write_csv(path: Path, mb: int, seed: int = 1) -> int:
    rnd = random.Random(seed)
    target = mb << 20
    with open(path, "w") as f:
        f.write("id,sensor,value,flag\n")
        size, i = 0, 0
        while size < target:
            rows = "".join(f"{i + k},s{rnd.randrange(8)},{rnd.uniform(-50, 150):.2f},"
                           f"{rnd.randrange(2)}\n" for k in range(1000))
            f.write(rows)
            size += len(rows)
            i += 1000
    return path.stat().st_size


def mount_ramfs() -> Path:
    d = Path(tempfile.mkdtemp(prefix="stord-bench-"))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", str(d).encode(), b"ramfs", 0, None) != 0:
        raise SystemExit(f"bench: mount ramfs: {os.strerror(ctypes.get_errno())}")
    return d


def plain_read(path: Path) -> int:
    buf = bytearray(READ_BUF)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def read_and_run(engine: Engine, prog: Program, path: Path, size: int) -> dict:
    """read() into user space, then the engine on each buffer. With the kernel engine this is
    the same BPF code, JIT-compiled by the same kernel, fed by BPF_PROG_TEST_RUN: it separates
    the cost of the kernel's BPF JIT from the cost of the hook's plumbing."""
    buf = bytearray(READ_BUF)
    view = memoryview(buf)
    with engine.load(prog) as inst, open(path, "rb", buffering=0) as f:
        pos = 0
        while True:
            n = f.readinto(buf)
            inst.run_chunk(view[:n], pos, pos + n >= size)
            pos += n
            if pos >= size:
                break
        return decode(prog, inst.read_state())


def hook_run(prog: Program, path: Path, size: int) -> dict:
    with HookEngine().load(prog) as inst, open(path, "rb") as f:
        inst.run_file(f.fileno(), 0, size)
        return decode(prog, inst.read_state())


def hook_plumbing(path: Path, size: int) -> None:
    """The hook with a program that skips at once: what the read path itself costs."""
    prog = Program("skip", "xdp", assemble("mov %r0, 1\nexit"), license="GPL")
    with HookEngine().load(prog) as inst, open(path, "rb") as f:
        inst.run_file(f.fileno(), 0, size)


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=32, help="CSV size in MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the result as JSON here too")
    a = ap.parse_args(argv)
    reason = HookEngine.probe()
    if reason is not None:
        print(f"bench: hook engine unavailable: {reason}", file=sys.stderr)
        return 2
    d = mount_ramfs()
    path = d / "bench.csv"
    size = write_csv(path, a.mb)
    prog = load_object(builtin_object("stats")).with_params(col=2, header=1, scale=2)
    plain_read(path)   # warm (ramfs is always resident; this warms the caches)
    t_read, _ = best(lambda: plain_read(path), a.repeat)
    # The jit's O2 code first, as the daemon has it after a program's first query (the
    # first tier serves until then; under TCG its O2 compile takes seconds).
    JitEngine().load(prog).close()
    jit_compile.wait_for_upgrades(600)
    t_jit, s_jit = best(lambda: read_and_run(JitEngine(), prog, path, size), a.repeat)
    t_kernel, s_kernel = best(lambda: read_and_run(KernelEngine(), prog, path, size), a.repeat)
    t_hook, s_hook = best(lambda: hook_run(prog, path, size), a.repeat)
    t_plumb, _ = best(lambda: hook_plumbing(path, size), a.repeat)
    secs = {"read": t_read, "jit": t_jit, "kernel": t_kernel, "hook": t_hook,
            "hook_skip_only": t_plumb}
    result = {
        "bytes": size, "repeat": a.repeat, "kernel": os.uname().release,
        "seconds": secs,
        "MB_per_s": {k: size / t / 1e6 for k, t in secs.items()},
        "ratio_hook_over_jit": t_jit / t_hook,        # > 1: the hook is faster
        "ratio_hook_over_kernel": t_kernel / t_hook,
        "ratio_hook_over_read": t_read / t_hook,
        "states_equal": s_jit == s_hook == s_kernel,
        "note": "qemu TCG: emulated CPU; compare ratios within this run only",
    }
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    os.remove(path)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(str(d).encode(), 0)
    d.rmdir()
    return 0 if result["states_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
