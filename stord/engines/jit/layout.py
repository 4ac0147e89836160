"""The memory shared between Python and jitted code: the run environment and map descriptors.

Native code never sees a Python object. Everything it may touch is reached through one
`Env` block (pointers to the chunk, meta, ctx, conformance memory and map storage) whose
offsets are fixed here and mirrored by the ctypes structures below, so that translate.py
(which emits loads at these offsets) and engine.py (which fills them) cannot drift apart.
"""

from __future__ import annotations

import ctypes

# Env field offsets (bytes); every field is 8 bytes wide.
STATUS = 0      # 0 = ok, else one of the ST_* codes below
PC = 8          # slot of the faulting instruction
ADDR = 16       # virtual address (or helper id / value) that caused the fault
BUDGET = 24     # back-edges + calls + bpf_loop iterations still allowed
DATA = 32       # host pointer: first byte of the chunk
DATA_LEN = 40
META = 48       # host pointer: struct stord_meta (16 bytes)
CTX = 56        # host pointer: struct xdp_md (24 bytes)
MEM = 64        # host pointer: conformance memory (writable)
MEM_LEN = 72
RNG = 80        # xorshift state of bpf_get_prandom_u32
MAPS = 88       # host pointer: array of MapDesc, one per Program.maps entry
INFO = 96       # access size / helper detail for the fault message
SCRATCH = 104   # 80 bytes: a read that straddles meta and data is assembled here
SCRATCH_SIZE = 80
TRACE_FN = 184  # host pointer: the instance's bpf_trace_printk (a Python callback)
ENV_SIZE = 192

# MapDesc field offsets; one 64-byte descriptor per map.
M_VALUES = 0    # host pointer: max_entries * value_size bytes (the map's virtual region)
M_KEYS = 8      # hash: max_entries * key_size bytes
M_USED = 16     # hash: one byte per slot, 1 = occupied
M_INDEX = 24    # hash: open-addressing table of u32 (0 empty, 0xffffffff deleted, else slot+1)
M_COUNT = 32    # hash: occupied slots
M_NEXT = 40     # hash: slots below this have been handed out at least once
M_FREE = 48     # hash: host pointer: stack of u32 freed slots
M_NFREE = 56
MAPDESC_SIZE = 64

# Status codes written by native code.
ST_OK = 0
ST_ACCESS = 1      # load/store outside every region (ADDR; INFO = size | WRITE_BIT)
ST_BUDGET = 2
ST_DEPTH = 3       # call depth above MAX_CALL_DEPTH
ST_BADCALL = 4     # bad map handle, callback or helper id (ADDR = the value)
ST_UNWIND = 5      # conformance helper 5 returned 0: stop with r0 = 0 (not an error)
ST_STORE_BYTES = 6  # bpf_xdp_store_bytes: the chunk is read-only
ST_FALLTHROUGH = 7  # ran past the end of a subprogram
WRITE_BIT = 1 << 63


class Env(ctypes.Structure):
    _fields_ = [
        ("status", ctypes.c_uint64), ("pc", ctypes.c_uint64), ("addr", ctypes.c_uint64),
        ("budget", ctypes.c_uint64), ("data", ctypes.c_void_p), ("data_len", ctypes.c_uint64),
        ("meta", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("mem", ctypes.c_void_p),
        ("mem_len", ctypes.c_uint64), ("rng", ctypes.c_uint64), ("maps", ctypes.c_void_p),
        ("info", ctypes.c_uint64), ("scratch", ctypes.c_uint8 * SCRATCH_SIZE),
        ("trace_fn", ctypes.c_void_p),
    ]


# u64 trace_fn(env, host stack, depth, r1, r2, r3, r4, r5, pc): r0, or a fault recorded in
# the env (status, pc, addr, info) for the caller to pick up.
TRACE_FN_TYPE = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p,
                                 *([ctypes.c_uint64] * 7))


class MapDesc(ctypes.Structure):
    _fields_ = [
        ("values", ctypes.c_void_p), ("keys", ctypes.c_void_p), ("used", ctypes.c_void_p),
        ("index", ctypes.c_void_p), ("count", ctypes.c_uint64), ("next", ctypes.c_uint64),
        ("free", ctypes.c_void_p), ("nfree", ctypes.c_uint64),
    ]


def _check() -> None:
    named = {"status": STATUS, "pc": PC, "addr": ADDR, "budget": BUDGET, "data": DATA,
             "data_len": DATA_LEN, "meta": META, "ctx": CTX, "mem": MEM, "mem_len": MEM_LEN,
             "rng": RNG, "maps": MAPS, "info": INFO, "scratch": SCRATCH,
             "trace_fn": TRACE_FN}
    for name, off in named.items():
        assert getattr(Env, name).offset == off, name
    assert ctypes.sizeof(Env) == ENV_SIZE
    assert ctypes.sizeof(MapDesc) == MAPDESC_SIZE
    assert MapDesc.free.offset == M_FREE and MapDesc.nfree.offset == M_NFREE


_check()


def index_capacity(max_entries: int) -> int:
    """Open-addressing table size of a hash map: a power of two >= 2 * max_entries."""
    cap = 8
    while cap < 2 * max_entries:
        cap *= 2
    return cap
