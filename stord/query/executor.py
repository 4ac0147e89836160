"""Running a program over a byte range of a file: chunks, ranges, and merging range results.

The contract with programs (bpf/README.md): a program sees the bytes of a record-aligned
range in file order, in chunks that may split a record anywhere, each with its file offset,
and the last chunk flagged LAST (an empty range still gets one empty LAST chunk). A range
runs in one fresh instance; ranges are merged afterwards by the reduce spec.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import Any

from stord.engines.base import Engine, Instance, get_engine
from stord.errors import BadRequest, NotFound, ProgramFault, ResultOverflow
from stord.program.model import Program
from stord.query.state import decode, reduce_spec

XDP_ABORTED = 0
NEWLINE = 0x0A
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 1 << 23   # bpf_loop's iteration limit: stord.h programs walk a chunk byte by byte


@dataclass
class RangeStats:
    bytes_scanned: int = 0
    chunks: int = 0


def plan_ranges(buf: Any, parts: int, quote: int | None = 0x22) -> list[tuple[int, int]]:
    """Split buf into at most `parts` record-aligned ranges that cover it exactly.

    Each cut is just after a newline that is outside quotes: with RFC 4180 quoting a
    newline is inside a quoted field iff an odd number of quote characters precede it in
    the file (a doubled quote counts twice), so the parity of quotes before the cut
    decides. quote=None: every newline ends a record. Ranges may come out fewer than
    `parts` (small buffers, long records); never empty unless the buffer is."""
    size = len(buf)
    if parts < 1:
        raise BadRequest(f"parts must be >= 1, not {parts}")
    if size == 0 or parts == 1:
        return [(0, size)]
    view = buf if isinstance(buf, bytes | bytearray | mmap.mmap) else memoryview(buf).cast("B")
    cuts = [0]
    parity = 0       # parity of the quotes in [0, pos)
    pos = 0
    for k in range(1, parts):
        target = max(size * k // parts, pos)
        if quote is not None:
            parity ^= _count(view, quote, pos, target) & 1
        pos = target
        while True:       # the first newline at or after pos that is outside quotes
            nl = _find(view, NEWLINE, pos)
            if nl < 0:
                break
            if quote is not None:
                parity ^= _count(view, quote, pos, nl) & 1
            pos = nl + 1
            if parity == 0:
                break
        if nl < 0:
            break
        if cuts[-1] < pos < size:
            cuts.append(pos)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a] or [(0, size)]


_BLOCK = 1 << 22   # bytes copied at a time from an mmap/memoryview to search or count


def _find(buf: Any, byte: int, start: int) -> int:
    if isinstance(buf, bytes | bytearray | mmap.mmap):
        return buf.find(bytes([byte]), start)
    size = len(buf)
    while start < size:
        i = bytes(buf[start:start + _BLOCK]).find(bytes([byte]))
        if i >= 0:
            return start + i
        start += _BLOCK
    return -1


def _count(buf: Any, byte: int, start: int, end: int) -> int:
    if isinstance(buf, bytes | bytearray):
        return buf.count(bytes([byte]), start, end) if end > start else 0
    n = 0
    for a in range(start, end, _BLOCK):
        n += bytes(buf[a:min(a + _BLOCK, end)]).count(bytes([byte]))
    return n


def run_range(inst: Instance, buf: Any, start: int, end: int, *, chunk_size: int,
              offset_base: int = 0) -> RangeStats:
    """Run `inst` over buf[start:end] in chunks of chunk_size; the file offset of buf[0] is
    offset_base. The final chunk carries LAST (one empty LAST chunk for an empty range)."""
    if chunk_size < 1:
        raise BadRequest(f"chunk size must be >= 1, not {chunk_size}")
    if not 0 <= start <= end <= len(buf):
        raise BadRequest(f"range [{start}, {end}) is outside the buffer of {len(buf)} bytes")
    view = memoryview(buf)
    stats = RangeStats()
    pos = start
    try:
        while True:
            nxt = min(pos + chunk_size, end)
            last = nxt >= end
            with view[pos:nxt] as chunk:   # released at once: the mmap can close after
                verdict = inst.run_chunk(chunk, offset_base + pos, last)
            stats.chunks += 1
            stats.bytes_scanned += nxt - pos
            if verdict == XDP_ABORTED:
                raise ProgramFault(f"the program aborted (XDP_ABORTED) on the chunk at file "
                                   f"offset {offset_base + pos}")
            pos = nxt
            if last:
                return stats
    finally:
        view.release()


def execute(prog: Program, path: str, *, engine: str, start: int = 0, end: int | None = None,
            budget: int, chunk_size: int | None = None) -> dict[str, Any]:
    """Run `prog` over [start, end) of the file at `path` (one range, this process)."""
    t0 = time.perf_counter()
    eng: Engine = get_engine(engine)
    size_chunk = min(chunk_size or getattr(eng, "chunk_size", DEFAULT_CHUNK), MAX_CHUNK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except OSError as e:
        raise NotFound(f"cannot open {path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        stop = size if end is None else min(end, size)
        if not 0 <= start <= stop:
            raise BadRequest(f"range [{start}, {end}) does not fit the file of {size} bytes")
        # mmap cannot map an empty file; an empty range needs no bytes anyway
        buf: Any = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if size else b""
        try:
            with eng.load(prog, budget=budget) as inst:
                if getattr(eng, "reads_files", False):   # the hook engine reads the file itself
                    run = inst.run_file(fd, start, stop)
                    rs = RangeStats(bytes_scanned=stop - start, chunks=run.runs)
                else:
                    rs = run_range(inst, buf, start, stop, chunk_size=size_chunk)
                raw = inst.read_state()
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
    finally:
        os.close(fd)
    spec = reduce_spec(prog)
    return {"state": decode(prog, raw, spec), "spec": spec,
            "bytes_scanned": rs.bytes_scanned, "chunks": rs.chunks, "engine": eng.name,
            "elapsed": time.perf_counter() - t0}


def merge_ranges(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge execute() results of ranges of one program (states by their reduce spec)."""
    from stord_client.reduce import ReduceOverflow, merge_all

    if not results:
        raise BadRequest("no range results to merge")
    spec = results[0]["spec"]
    try:
        state = merge_all([r["state"] for r in results], spec)
    except ReduceOverflow as e:
        raise ResultOverflow(str(e)) from None
    return {"state": state, "spec": spec,
            "bytes_scanned": sum(int(r.get("bytes_scanned", 0)) for r in results),
            "chunks": sum(int(r.get("chunks", 0)) for r in results),
            "engine": results[0].get("engine"),
            "elapsed": sum(float(r.get("elapsed", 0.0)) for r in results)}
