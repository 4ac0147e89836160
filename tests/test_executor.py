"""The executor: record-aligned range planning, chunking with offsets and LAST, execute() on
files through real engines, and merging range results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stord.engines.base import available_engines, get_engine
from stord.errors import ProgramFault, ResultOverflow
from stord.program.elf import load_object
from stord.program.toolchain import compile_c
from stord.query.builtins import resolve
from stord.query.executor import execute, merge_ranges, plan_ranges, run_range
from stord.query.state import decode, reduce_spec

BUDGET = 1 << 40

# Records what the executor shows a program: chunks, bytes, LAST flags, the offsets seen
# (which must tile the range), and aborts on request.
RECORDER = r"""
#include "stord.h"
STORD_PARAM(__u32, abort_at, 0xffffffff);
__u64 chunks;
__u64 bytes;
__u64 lasts;
__u64 first STORD_MIN = 0xffffffffffffffffULL;
__u64 end STORD_MAX;
__u64 gaps;            /* a chunk that does not start where the previous one ended */
__u64 expect STORD_SCRATCH;
__u64 started STORD_SCRATCH;

SEC("xdp")
int recorder(struct xdp_md *ctx)
{
	struct stord_chunk ch;

	if (stord_chunk(ctx, &ch))
		return STORD_ERROR;
	if (chunks == abort_at)
		return STORD_ERROR;
	if (started && ch.offset != expect)
		gaps++;
	started = 1;
	expect = ch.offset + ch.len;
	chunks++;
	bytes += ch.len;
	if (ch.last) {
		lasts++;
		started = 0;
	}
	if (ch.offset < first)
		first = ch.offset;
	if (ch.offset + ch.len > end)
		end = ch.offset + ch.len;
	return STORD_KEEP;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def recorder() -> Any:
    return load_object(compile_c(RECORDER))


def quotes_before(data: bytes, pos: int) -> int:
    return data[:pos].count(b'"')


CSV_BYTES = st.lists(st.sampled_from([b"a", b",", b"\n", b'"', b"1", b"\r\n", b'""']),
                     max_size=80).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(data=CSV_BYTES, parts=st.integers(1, 9))
def test_plan_ranges_cover_and_cut_outside_quotes(data: bytes, parts: int) -> None:
    ranges = plan_ranges(data, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert len(ranges) <= parts
    for (a, b), (c, _) in zip(ranges, ranges[1:], strict=False):
        assert a < b == c
        # every cut follows a newline with an even number of quotes before it
        assert data[b - 1:b] == b"\n" and quotes_before(data, b) % 2 == 0


@settings(max_examples=100, deadline=None)
@given(data=CSV_BYTES, parts=st.integers(1, 9))
def test_plan_ranges_without_quoting_cuts_at_any_newline(data: bytes, parts: int) -> None:
    ranges = plan_ranges(data, parts, quote=None)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for _, b in ranges[:-1]:
        assert data[b - 1:b] == b"\n"


def test_plan_ranges_on_mmap_equals_bytes(tmp_path: Path) -> None:
    import mmap
    data = b'x,"a\nb"\n' * 500 + b"tail"
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert plan_ranges(m, 7) == plan_ranges(data, 7)


def _record(prog: Any, data: bytes, a: int, b: int, chunk: int, engine: str = "interp"
            ) -> tuple[dict[str, Any], Any]:
    with get_engine(engine).load(prog, budget=BUDGET) as inst:
        rs = run_range(inst, data, a, b, chunk_size=chunk)
        return decode(prog, inst.read_state()), rs


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), chunk=st.integers(1, 64), data=st.data())
def test_run_range_chunks_tile_the_range(recorder: Any, n: int, chunk: int,
                                         data: st.DataObject) -> None:
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, n))
    state, rs = _record(recorder, bytes(n), a, b, chunk)
    want_chunks = max(1, -(-(b - a) // chunk))
    assert (rs.chunks, rs.bytes_scanned) == (want_chunks, b - a)
    assert state["chunks"] == want_chunks and state["bytes"] == b - a
    assert state["lasts"] == 1 and state["gaps"] == 0
    assert (state["first"], state["end"]) == (a, b)


def test_aborted_verdict_is_a_program_fault(recorder: Any) -> None:
    prog = recorder.with_params(abort_at=2)
    with pytest.raises(ProgramFault, match="offset 20"):
        _record(prog, bytes(100), 0, 100, 10)


@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_execute_file_ranges_merge_to_the_whole(tmp_path: Path, engine: str) -> None:
    reason = available_engines().get(engine)
    if reason is not None:
        pytest.skip(f"{engine} engine unavailable: {reason}")
    rows = [f'{i},"k{i % 5}",{i * 1.5:.2f}' for i in range(120)]
    data = ("id,key,value\n" + "\n".join(rows)).encode()
    path = tmp_path / "d.csv"
    path.write_bytes(data)
    prog, fin = resolve("stats", {"column": "value"}, ["id", "key", "value"])
    whole = execute(prog, str(path), engine=engine, budget=BUDGET)
    assert whole["engine"] == engine and whole["bytes_scanned"] == len(data)
    assert whole["spec"] == reduce_spec(prog)
    assert whole["state"]["count"] == 120 and whole["elapsed"] >= 0
    parts = [execute(prog, str(path), engine=engine, budget=BUDGET, start=a, end=b,
                     chunk_size=50) for a, b in plan_ranges(data, 4)]
    assert len(parts) > 1
    merged = merge_ranges(parts)
    assert merged["state"] == whole["state"]
    assert merged["bytes_scanned"] == len(data)
    assert merged["chunks"] == sum(p["chunks"] for p in parts)
    assert fin(merged["state"])["sum"] == pytest.approx(sum(i * 1.5 for i in range(120)))


def test_execute_empty_file_and_empty_range(tmp_path: Path, recorder: Any) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    out = execute(recorder, str(path), engine="interp", budget=BUDGET)
    assert (out["bytes_scanned"], out["chunks"], out["state"]["lasts"]) == (0, 1, 1)
    path.write_bytes(b"abc")
    out = execute(recorder, str(path), engine="interp", budget=BUDGET, start=2, end=2)
    assert (out["chunks"], out["state"]["first"], out["state"]["end"]) == (1, 2, 2)
    out = execute(recorder, str(path), engine="interp", budget=BUDGET, start=1, end=99)
    assert out["bytes_scanned"] == 2   # end is clamped to the file


def test_merge_ranges_overflow_is_result_overflow() -> None:
    spec = {"sum": "sum:i64"}
    r = {"state": {"sum": (1 << 62)}, "spec": spec}
    with pytest.raises(ResultOverflow):
        merge_ranges([r, r])
