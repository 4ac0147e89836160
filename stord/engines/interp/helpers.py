"""BPF helper functions: the specification of each helper's meaning and return codes.

Every engine gives these helpers the same meaning (the jit engine follows this file).
Helpers are called with the argument registers r1-r5 (unsigned 64-bit) plus where the call
happens (pc, the caller's r10 and call depth, which bpf_loop needs to run its callback in a
fresh stack frame) and return r0 as an unsigned 64-bit value; negative errno values are
returned two's-complement, as the kernel does. A bad pointer argument faults
(ProgramFault), where the kernel's verifier would have refused the program.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

from stord.engines.base import CTX_BASE, FUNC_BASE, MAP_STRIDE, map_base
from stord.engines.interp.maps import E2BIG, EFAULT, EINVAL, Map
from stord.engines.interp.vm import M64, Memory, Stop
from stord.errors import ProgramFault
from stord.program.isa import STACK_SIZE

log = logging.getLogger("stord.trace_printk")

# Linux helper ids (include/uapi/linux/bpf.h).
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
KTIME_GET_NS = 5
TRACE_PRINTK = 6
GET_PRANDOM_U32 = 7
GET_SMP_PROCESSOR_ID = 8
LOOP = 181
XDP_LOAD_BYTES = 189
XDP_STORE_BYTES = 190

BPF_MAX_LOOPS = 1 << 23      # the kernel's cap on bpf_loop's nr_loops
TRACE_LOG_LINES = 1000       # trace_printk lines kept per instance (the rest are counted)
TRACE_MAX_LEN = 1024


def map_handle(index: int) -> int:
    """The value `lddw rX, map` (PSEUDO_MAP_FD) puts in a register in userspace engines.

    It lies inside map `index`'s address window but far above its values, so it is a
    token the helpers recognise and never a readable address."""
    return map_base(index) + MAP_STRIDE // 2


Helper = Callable[[int, int, int, int, int, int, int, int], int]


class HelperEnv:
    """What helpers reach: memory, maps, the running chunk, callbacks and the trace log."""

    def __init__(self, memory: Memory, maps: list[Map]) -> None:
        self.memory = memory
        self.maps = maps
        self.by_handle = {map_handle(m.index): m for m in maps}
        self.functions: dict[int, Callable[..., int]] = {}   # slot -> translated function
        self.data_len = 0                                    # bytes of the current chunk
        self.data: bytes | memoryview = b""
        self.trace: list[str] = []
        self.trace_dropped = 0
        self.rng = random.Random()

    def map_of(self, handle: int, helper: str, pc: int) -> Map:
        m = self.by_handle.get(handle)
        if m is None:
            raise ProgramFault(f"pc {pc}: {helper}: r1 = {handle:#x} is not a map")
        return m


def linux_helpers(env: HelperEnv) -> dict[int, Helper]:
    mem = env.memory

    def map_lookup_elem(r1, r2, r3, r4, r5, pc, r10, depth):
        """(map, key) -> pointer to the value, or 0 (NULL) if the key is absent."""
        m = env.map_of(r1, "map_lookup_elem", pc)
        slot = m.lookup(mem.read(r2, m.key_size, pc))
        return 0 if slot is None else map_base(m.index) + slot * m.value_size

    def map_update_elem(r1, r2, r3, r4, r5, pc, r10, depth):
        """(map, key, value, flags) -> 0, or -E2BIG (full hash map / index past the array),
        -EEXIST (BPF_NOEXIST and present), -ENOENT (BPF_EXIST and absent), -EINVAL (flags),
        -EPERM (read-only .rodata)."""
        m = env.map_of(r1, "map_update_elem", pc)
        key = mem.read(r2, m.key_size, pc)
        value = mem.read(r3, m.value_size, pc)
        return m.update(key, value, r4) & M64

    def map_delete_elem(r1, r2, r3, r4, r5, pc, r10, depth):
        """(map, key) -> 0, -ENOENT (absent), -EINVAL (array maps cannot delete)."""
        m = env.map_of(r1, "map_delete_elem", pc)
        return m.delete(mem.read(r2, m.key_size, pc)) & M64

    def ktime_get_ns(r1, r2, r3, r4, r5, pc, r10, depth):
        """Monotonic clock in nanoseconds."""
        return time.monotonic_ns() & M64

    def trace_printk(r1, r2, r3, r4, r5, pc, r10, depth):
        """(fmt, fmt_size, a, b, c) -> bytes written; -EINVAL if fmt is not NUL-terminated
        within fmt_size. The line goes to the instance's trace log (bounded) and logging."""
        size = r2 & 0xFFFFFFFF
        if size == 0 or size > TRACE_MAX_LEN:
            return EINVAL & M64
        fmt = mem.read(r1, size, pc)
        if b"\0" not in fmt:
            return EINVAL & M64
        text = format_printk(fmt[:fmt.index(b"\0")], [r3, r4, r5], mem)
        if len(env.trace) < TRACE_LOG_LINES:
            env.trace.append(text)
        else:
            env.trace_dropped += 1
        log.debug("bpf_trace_printk: %s", text.rstrip("\n"))
        return len(text.encode())

    def get_prandom_u32(r1, r2, r3, r4, r5, pc, r10, depth):
        return env.rng.getrandbits(32)

    def get_smp_processor_id(r1, r2, r3, r4, r5, pc, r10, depth):
        return 0  # one CPU: per-CPU maps have a single copy

    def loop(r1, r2, r3, r4, r5, pc, r10, depth):
        """bpf_loop(nr_loops, callback, ctx, flags): call callback(i, ctx) for i = 0.. until
        it returns non-zero; returns the number of iterations done (i + 1 when stopped).
        flags != 0 -> -EINVAL; nr_loops > 1 << 23 -> -E2BIG. The callback runs in a new
        stack frame one call level deeper; its instructions count against the budget."""
        if r4:
            return EINVAL & M64
        nr = r1 & 0xFFFFFFFF
        if nr > BPF_MAX_LOOPS:
            return E2BIG & M64
        fn = env.functions.get(r2 - FUNC_BASE)
        if fn is None:
            raise ProgramFault(f"pc {pc}: bpf_loop: r2 = {r2:#x} is not a callback function")
        frame = r10 - STACK_SIZE
        d = depth + 1
        for i in range(nr):
            if fn(i, r3, 0, 0, 0, frame, d):
                return i + 1
        return nr

    def xdp_load_bytes(r1, r2, r3, r4, r5, pc, r10, depth):
        """(ctx, offset, buf, len) copies chunk bytes [offset, offset+len) to buf: 0, or
        -EINVAL when the range passes the chunk's end (the kernel's code). The kernel also
        answers -EFAULT for offset or len > 0xffff; userspace chunks are larger than a
        packet, so that cap is not applied here."""
        if r1 != CTX_BASE:
            raise ProgramFault(f"pc {pc}: xdp_load_bytes: r1 = {r1:#x} is not the context")
        off, n = r2 & 0xFFFFFFFF, r4 & 0xFFFFFFFF
        if off + n > env.data_len:
            return EINVAL & M64
        mem.write(r3, bytes(env.data[off:off + n]), pc)
        return 0

    def xdp_store_bytes(r1, r2, r3, r4, r5, pc, r10, depth):
        raise ProgramFault(f"pc {pc}: xdp_store_bytes: the chunk is read-only")

    return {
        MAP_LOOKUP_ELEM: map_lookup_elem, MAP_UPDATE_ELEM: map_update_elem,
        MAP_DELETE_ELEM: map_delete_elem, KTIME_GET_NS: ktime_get_ns,
        TRACE_PRINTK: trace_printk, GET_PRANDOM_U32: get_prandom_u32,
        GET_SMP_PROCESSOR_ID: get_smp_processor_id, LOOP: loop,
        XDP_LOAD_BYTES: xdp_load_bytes, XDP_STORE_BYTES: xdp_store_bytes,
    }


def conformance_helpers(env: HelperEnv) -> dict[int, Helper]:
    """The bpf_conformance plugin's helpers (ids 0-5), only for the ISA test vectors."""
    mem = env.memory

    def gather_bytes(r1, r2, r3, r4, r5, pc, r10, depth):
        return ((r1 & 0xFF) << 32 | (r2 & 0xFF) << 24 | (r3 & 0xFF) << 16
                | (r4 & 0xFF) << 8 | (r5 & 0xFF))

    def memfrob(r1, r2, r3, r4, r5, pc, r10, depth):
        data = mem.read(r1, r2, pc)
        mem.write(r1, bytes(b ^ 42 for b in data), pc)
        return 0

    def no_op(r1, r2, r3, r4, r5, pc, r10, depth):
        return 0

    def sqrti(r1, r2, r3, r4, r5, pc, r10, depth):
        return math.isqrt(r1)

    def strcmp_ext(r1, r2, r3, r4, r5, pc, r10, depth):
        a, b = read_cstring(mem, r1, pc), read_cstring(mem, r2, pc)
        return 0 if a == b else (1 if a > b else M64)  # sign of the difference

    def unwind(r1, r2, r3, r4, r5, pc, r10, depth):
        """Returns its argument; when that is 0 the whole program stops with r0 = 0."""
        if r1 == 0:
            raise Stop(0)
        return r1

    return {0: gather_bytes, 1: memfrob, 2: no_op, 3: sqrti, 4: strcmp_ext, 5: unwind}


def read_cstring(mem: Memory, addr: int, pc: int, limit: int = TRACE_MAX_LEN) -> bytes:
    out = bytearray()
    while len(out) < limit:
        c = mem.read(addr + len(out), 1, pc)
        if c == b"\0":
            break
        out += c
    return bytes(out)


def format_printk(fmt: bytes, args: list[int], mem: Memory) -> str:
    """The subset of printf that bpf_trace_printk accepts: %d %i %u %x %X %p %s %c %%
    with l/ll length modifiers; at most three arguments."""
    out, i, argi = [], 0, 0
    text = fmt.decode("utf-8", "replace")
    while i < len(text):
        ch = text[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while j < len(text) and text[j] in "-+ #0123456789":
            j += 1
        longs = 0
        while j < len(text) and text[j] == "l":
            longs += 1
            j += 1
        if j >= len(text):
            out.append(text[i:])
            break
        conv = text[j]
        if conv == "%":
            out.append("%")
        elif argi >= len(args):
            out.append(text[i:j + 1])
        else:
            v = args[argi]
            argi += 1
            bits = 64 if longs else 32
            v &= (1 << bits) - 1
            if conv in "di":
                out.append(str(v - (1 << bits) if v >> (bits - 1) else v))
            elif conv == "u":
                out.append(str(v))
            elif conv in "xX":
                out.append(format(v, conv))
            elif conv == "p":
                out.append(f"{args[argi - 1]:#x}")
            elif conv == "c":
                out.append(chr(v & 0xFF))
            elif conv == "s":
                try:
                    out.append(read_cstring(mem, args[argi - 1], -1, 256).decode("utf-8", "replace"))
                except ProgramFault:
                    out.append("(efault)")
            else:
                out.append(text[i:j + 1])
        i = j + 1
    return "".join(out)


__all__ = ["EFAULT", "HelperEnv", "conformance_helpers", "linux_helpers", "map_handle"]
