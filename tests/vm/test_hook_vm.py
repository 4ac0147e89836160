"""The hook engine on the patched kernel, against the interp engine as the oracle.

Runs inside the VM (see conftest.py). The interp engine gets the same bytes in chunks cut
at the same page boundaries as the kernel's, so even per-chunk verdicts must agree.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stord.engines.hook import fcntl_abi
from stord.engines.hook.engine import HookEngine
from stord.engines.interp.engine import InterpEngine
from stord.errors import EngineUnavailable, ProgramFault
from stord.program.elf import load_object
from stord.program.model import Program
from stord.program.toolchain import builtin_object
from stord.query.state import decode

PAGE = 4096
XDP_DROP, XDP_PASS = 1, 2


def kmp_dfa(needle: bytes, states: int = 64) -> bytes:
    """grep's automaton, written from the KMP definition: dfa[s*256 + c]; state len(needle)
    means matched and stays there."""
    m = len(needle)
    table = bytearray(states * 256)
    for s in range(m + 1):
        for c in range(256):
            if s == m:
                table[s * 256 + c] = m
                continue
            text = needle[:s] + bytes([c])
            k = min(len(text), m)
            while k and not text.endswith(needle[:k]):
                k -= 1
            table[s * 256 + c] = k
    return bytes(table)


CSV = {"col": 2, "header": 1, "scale": 2}
BUILTINS: dict[str, dict[str, Any]] = {
    "count": dict(CSV),
    "count_gt": dict(CSV, op=5, value=5000),
    "stats": dict(CSV),
    "hist": dict(CSV, lo=-5000, width=2000, nbuckets=10),
    "groupby": dict(CSV, key_col=1),
    "grep": {"needle_len": 4, "dfa": kmp_dfa(b"999,")},   # only the row with id 999
}


def with_rodata(prog: Program, name: str, value: bytes) -> Program:
    """Set a .rodata array that is not a scalar/char Param (grep's dfa) from its BTF offset."""
    assert prog.btf is not None
    (off, size), = [(o, n) for v, _, o, n in prog.btf.datasec_vars(".rodata") if v == name]
    i = next(k for k, m in enumerate(prog.maps) if m.name == ".rodata")
    m = prog.maps[i]
    raw = bytearray(m.initial or bytes(m.value_size))
    raw[off:off + size] = value.ljust(size, b"\0")
    maps = list(prog.maps)
    maps[i] = replace(m, initial=bytes(raw))
    return replace(prog, maps=maps)


def program(name: str) -> Program:
    params = dict(BUILTINS[name])
    prog = load_object(builtin_object("count" if name == "count_gt" else name))
    for key in [k for k, v in params.items() if isinstance(v, bytes)]:
        prog = with_rodata(prog, key, params.pop(key))
    return prog.with_params(**params)


def csv_bytes(rows: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = ["id,sensor,value,flag"]
    for i in range(rows):
        r = rnd.random()
        value = "" if r < 0.05 else "n/a" if r < 0.08 else f"{rnd.uniform(-50, 150):.2f}"
        sensor = f'"s{rnd.randrange(5)}"' if rnd.random() < 0.1 else f"s{rnd.randrange(5)}"
        out.append(f"{i},{sensor},{value},{rnd.randrange(2)}")
    return ("\n".join(out) + ("\n" if seed % 2 else "")).encode()


def interp_run(prog: Program, data: bytes, start: int, end: int) -> tuple[dict, bytes]:
    """Decoded state and the bytes of kept chunks, chunks cut at page boundaries."""
    inst = InterpEngine().load(prog)
    kept = bytearray()
    pos = start
    while True:
        stop = min(end, (pos // PAGE + 1) * PAGE)
        chunk = data[pos:stop]
        verdict = inst.run_chunk(chunk, pos, stop >= end)
        if verdict == XDP_PASS:
            kept += chunk
        pos = stop
        if pos >= end:
            break
    return decode(prog, inst.read_state()), bytes(kept)


def hook_run(prog: Program, path: Path, start: int, end: int) -> tuple[dict, bytes, Any]:
    kept = bytearray()
    with HookEngine().load(prog) as inst, open(path, "rb") as f:
        run = inst.run_file(f.fileno(), start, end, on_data=kept.extend)
        return decode(prog, inst.read_state()), bytes(kept), run


@pytest.fixture(scope="module")
def sample(ramfs: Path) -> tuple[Path, bytes]:
    data = csv_bytes(1000, seed=3)         # ~15 KB: three pages and a partial one
    path = ramfs / "sample.csv"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_matches_interp(name: str, sample: tuple[Path, bytes]) -> None:
    path, data = sample
    prog = program(name)
    want_state, want_kept = interp_run(prog, data, 0, len(data))
    got_state, got_kept, run = hook_run(prog, path, 0, len(data))
    assert got_state == want_state
    assert got_kept == want_kept
    assert run.passed + run.dropped == len(data)
    assert run.delivered == len(got_kept)


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(0, 300), seed=st.integers(0, 1 << 30), cut=st.tuples(
    st.floats(0, 1), st.floats(0, 1)), name=st.sampled_from(["stats", "grep", "groupby"]))
def test_ranges_match_interp(ramfs: Path, rows: int, seed: int, cut: tuple[float, float],
                             name: str) -> None:
    data = csv_bytes(rows, seed)
    path = ramfs / "ranges.csv"
    path.write_bytes(data)
    a, b = sorted(int(x * len(data)) for x in cut)
    prog = program(name)
    want_state, want_kept = interp_run(prog, data, a, b)
    got_state, got_kept, _ = hook_run(prog, path, a, b)
    assert got_state == want_state
    assert got_kept == want_kept


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_empty_range_runs_last_once(sample: tuple[Path, bytes], where: float) -> None:
    path, data = sample
    at = int(where * len(data))
    prog = program("grep")
    want_state, _ = interp_run(prog, data, at, at)
    got_state, kept, run = hook_run(prog, path, at, at)
    assert got_state == want_state and kept == b""
    assert (run.runs, run.passed, run.dropped) == (1, 0, 0)


def test_skipped_chunks_never_reach_the_reader(sample: tuple[Path, bytes]) -> None:
    """A program that skips every chunk: read() returns 0 and the buffer is untouched,
    while the program still saw every byte (its row count equals csv's)."""
    path, data = sample
    prog = program("stats")
    with HookEngine().load(prog) as inst, open(path, "rb", buffering=0) as f:
        fcntl_abi.attach(f.fileno(), inst._fd, range_end=len(data))
        buf = bytearray(b"\xaa" * (len(data) + PAGE))
        n = f.readinto(buf)
        assert n == 0
        assert buf == bytearray(b"\xaa" * len(buf))
        stats = fcntl_abi.stats(f.fileno())
        assert stats is not None
        assert (stats.dropped, stats.passed, stats.last_runs) == (len(data), 0, 1)
        state = decode(prog, inst.read_state())
    assert state["rows"] == data.count(b"\n") - 1 + (not data.endswith(b"\n"))


def test_other_readers_of_the_file_are_unaffected(sample: tuple[Path, bytes]) -> None:
    path, data = sample
    prog = program("stats")
    with HookEngine().load(prog) as inst, open(path, "rb", buffering=0) as hooked, \
            open(path, "rb", buffering=0) as other:
        fcntl_abi.attach(hooked.fileno(), inst._fd, range_end=len(data))
        first = other.read(PAGE + 100)          # before, in the middle and after the
        assert hooked.read(len(data)) == b""    # hooked read, the other reader
        rest = other.read()                     # sees the plain file
        assert first + rest == data
        assert fcntl_abi.stats(other.fileno()) is None
        assert fcntl_abi.stats(hooked.fileno()).dropped == len(data)
        dup = os.dup(hooked.fileno())           # the same open file shares the hook
        try:
            assert fcntl_abi.stats(dup) is not None
        finally:
            os.close(dup)


def test_file_outside_the_page_cache_is_an_error(tmp_path: Path) -> None:
    """tmpfs (shmem) does not read through filemap_read: a clear error, not an empty
    answer."""
    path = tmp_path / "shm.csv"
    path.write_bytes(csv_bytes(50, seed=1))
    with HookEngine().load(program("count")) as inst, open(path, "rb") as f, \
            pytest.raises(EngineUnavailable, match="filemap_read"):
        inst.run_file(f.fileno(), 0, path.stat().st_size)


def test_executor_runs_the_hook_engine(sample: tuple[Path, bytes]) -> None:
    """The daemon's path: execute() over record-aligned ranges, merged, equals interp."""
    from stord.query.executor import execute, merge_ranges, plan_ranges

    path, data = sample
    prog = program("groupby")
    ranges = plan_ranges(data, 3)
    assert len(ranges) > 1
    budget = 1 << 40
    hook = merge_ranges([execute(prog, str(path), engine="hook", start=a, end=b, budget=budget)
                         for a, b in ranges])
    want = execute(prog, str(path), engine="interp", budget=budget)
    assert hook["state"] == want["state"]


def test_daemon_answers_through_the_hook(ramfs: Path, sample: tuple[Path, bytes],
                                         tmp_path: Path) -> None:
    """stord serve with the hook engine, split ranges, queried over TCP like a user: the
    same answers as the interp engine on the same daemon."""
    from stord_client import Client

    from stord.server.launch import start_daemon

    cfg = tmp_path / "stord.toml"
    cfg.write_text(f'listen = "127.0.0.1:0"\nworkers = 1\nsplit_bytes = 4096\n'
                   f'range_bytes = 8192\n[exports]\ndata = "{ramfs}"\n')
    daemon = start_daemon(cfg, tmp_path / "stord.log")
    try:
        with Client(daemon.address) as c:
            for prog, params in (("avg", {"column": "value"}), ("count", {}),
                                 ("grep", {"pattern": "999,"})):
                got = c.query(f"data/{sample[0].name}", prog, engine="hook", **params)
                want = c.query(f"data/{sample[0].name}", prog, engine="interp", **params)
                assert got.value == want.value, prog
                assert got.stats["engine"] == "hook" and got.stats["ranges"] > 1
    finally:
        daemon.stop()


def test_program_error_fails_the_run(sample: tuple[Path, bytes]) -> None:
    """STORD_ERROR (XDP_ABORTED) from the program is a ProgramFault, not a short answer."""
    from stord.program.asm import assemble

    path, data = sample
    prog = Program("abort", "xdp", assemble("mov %r0, 0\nexit"), license="GPL")
    with HookEngine().load(prog) as inst, open(path, "rb") as f, \
            pytest.raises(ProgramFault, match="STORD_ERROR"):
        inst.run_file(f.fileno(), 0, len(data))
