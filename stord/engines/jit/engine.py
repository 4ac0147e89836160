"""The jit engine: programs compiled to native code through LLVM, sandboxed like the interp.

Zero-copy chunks: run_chunk takes a pointer to the caller's buffer with
PyObject_GetBuffer(PyBUF_SIMPLE) through ctypes.pythonapi, which works for bytes,
bytearray, memoryview and read-only mmap objects alike (ctypes' from_buffer refuses read-only
buffers), and releases it after the call. The jitted code never writes to the chunk: every
store is checked against the writable regions only.
"""

from __future__ import annotations

import ctypes
import os
from typing import ClassVar

from stord.engines import base
from stord.engines.jit import layout as L
from stord.engines.jit.compile import Compiled, get_compiled
from stord.engines.jit.runtime import CONFORMANCE_HELPERS, LINUX_HELPERS
from stord.engines.jit.translate import ModuleTranslator
from stord.errors import BudgetExceeded, CompileError, LoadError, ProgramFault
from stord.program.model import Program
from stord.program.validate import validate
from stord.query.state import State


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
PYBUF_SIMPLE = 0   # contiguous bytes, read-only allowed


class _MapStore:
    """Host buffers of one map; kept alive by the instance, addressed by its MapDesc."""

    def __init__(self, m, desc: L.MapDesc) -> None:
        self.m = m
        size = m.value_size * m.max_entries
        self.values = (ctypes.c_char * max(size, 1))()
        if m.initial:
            ctypes.memmove(self.values, m.initial, min(len(m.initial), size))
        desc.values = ctypes.addressof(self.values)
        self.hash = ModuleTranslator.is_hash(m)
        if self.hash:
            cap = L.index_capacity(m.max_entries)
            self.keys = (ctypes.c_char * max(m.key_size * m.max_entries, 1))()
            self.used = (ctypes.c_uint8 * max(m.max_entries, 1))()
            self.index = (ctypes.c_uint32 * cap)()
            self.free = (ctypes.c_uint32 * max(m.max_entries, 1))()
            desc.keys = ctypes.addressof(self.keys)
            desc.used = ctypes.addressof(self.used)
            desc.index = ctypes.addressof(self.index)
            desc.free = ctypes.addressof(self.free)

    def contents(self) -> dict[bytes, bytes]:
        m = self.m
        raw = bytes(self.values)
        vs = m.value_size
        if not self.hash:
            return {i.to_bytes(4, "little"): raw[i * vs:(i + 1) * vs]
                    for i in range(m.max_entries)}
        keys = bytes(self.keys)
        ks = m.key_size
        return {keys[s * ks:(s + 1) * ks]: raw[s * vs:(s + 1) * vs]
                for s in range(m.max_entries) if self.used[s]}


class JitInstance(base.Instance):
    chunk_size: ClassVar[int] = 1 << 20

    def __init__(self, prog: Program, compiled: Compiled, budget: int) -> None:
        self.prog = prog
        self.compiled = compiled
        self.budget = budget
        self.env = L.Env()
        self.descs = (L.MapDesc * max(len(prog.maps), 1))()
        self.stores = [_MapStore(m, self.descs[i]) for i, m in enumerate(prog.maps)]
        self.ctx = (ctypes.c_uint32 * 6)()
        self.meta = (ctypes.c_uint64 * 2)()
        env = self.env
        env.maps = ctypes.addressof(self.descs)
        env.ctx = ctypes.addressof(self.ctx)
        env.meta = ctypes.addressof(self.meta)
        env.rng = int.from_bytes(os.urandom(8), "little") | 1
        self._env_addr = ctypes.addressof(env)
        self._entry = compiled.entry

    def _run(self, r1: int, r2: int) -> int:
        env = self.env
        env.status = 0
        env.budget = self.budget
        r0 = self._entry(self._env_addr, r1, r2)
        if env.status:
            self._raise()
        return r0

    def _raise(self) -> None:
        env = self.env
        st, pc, addr, info = env.status, env.pc, env.addr, env.info
        if st == L.ST_BUDGET:
            raise BudgetExceeded(f"budget of {self.budget} back-edges and calls exhausted "
                                 f"at pc {pc}")
        if st == L.ST_ACCESS:
            kind = "write" if info & L.WRITE_BIT else "read"
            size = info & ~L.WRITE_BIT
            raise ProgramFault(f"out-of-bounds {kind} of {size} bytes at {addr:#x} (pc {pc})")
        if st == L.ST_DEPTH:
            raise ProgramFault(f"call depth above {base.MAX_CALL_DEPTH} frames at pc {pc}")
        if st == L.ST_BADCALL:
            raise ProgramFault(f"bad helper argument (map handle, callback or helper id "
                               f"{addr:#x}) at pc {pc}")
        if st == L.ST_STORE_BYTES:
            raise ProgramFault(f"bpf_xdp_store_bytes at pc {pc}: the data is read-only")
        if st == L.ST_FALLTHROUGH:
            raise ProgramFault(f"execution ran past the end of a function at pc {pc}")
        raise ProgramFault(f"jit: unknown status {st} at pc {pc}")

    def run_chunk(self, data: bytes | memoryview, offset: int, last: bool) -> int:
        view = _PyBuffer()
        try:
            _get_buffer(data, ctypes.byref(view), PYBUF_SIMPLE)
        except (BufferError, TypeError) as e:
            raise LoadError(f"a chunk must be one contiguous buffer: {e}") from None
        try:
            n = view.len
            if base.DATA_BASE + n > base.MEM_BASE:
                raise LoadError(f"chunk of {n} bytes is larger than "
                                f"{base.MEM_BASE - base.DATA_BASE}")
            env = self.env
            env.data = view.buf
            env.data_len = n
            self.meta[0] = offset
            self.meta[1] = 1 if last else 0
            ctx = self.ctx
            ctx[0] = base.DATA_BASE
            ctx[1] = base.DATA_BASE + n
            ctx[2] = base.META_BASE
            return self._run(base.CTX_BASE, 0)
        finally:
            self.env.data = None
            self.env.data_len = 0
            _release_buffer(ctypes.byref(view))

    def call(self, mem: bytearray | None) -> int:
        env = self.env
        if mem is None:
            env.mem, env.mem_len = None, 0
            return self._run(0, 0)
        buf = (ctypes.c_char * len(mem)).from_buffer(mem)
        try:
            env.mem, env.mem_len = ctypes.addressof(buf), len(mem)
            return self._run(base.MEM_BASE, len(mem))
        finally:
            env.mem, env.mem_len = None, 0
            del buf

    def read_state(self) -> State:
        st = State()
        for s in self.stores:
            m = s.m
            if m.is_global_data:
                if not ModuleTranslator.is_readonly(m):
                    st.globals[m.name] = bytes(s.values)[:m.value_size]
            else:
                st.maps[m.name] = s.contents()
        return st


class JitEngine(base.Engine):
    name = "jit"
    chunk_size: ClassVar[int] = JitInstance.chunk_size

    @classmethod
    def probe(cls) -> str | None:
        try:
            from stord.engines.jit.compile import target_machine
            target_machine()
        except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
            return f"LLVM native target unavailable: {e}"
        return None

    def load(self, prog: Program, *, budget: int = base.DEFAULT_BUDGET,
             helpers: str = "linux") -> JitInstance:
        if helpers not in base.HELPER_SETS:
            raise LoadError(f"unknown helper set {helpers!r} "
                            f"(known: {', '.join(base.HELPER_SETS)})")
        try:
            compiled = get_compiled(prog, helpers, lambda: _validate(prog, helpers))
        except CompileError:
            raise
        except RuntimeError as e:
            raise CompileError(f"jit: {e}") from e
        return JitInstance(prog, compiled, budget)


def _validate(prog: Program, helpers: str) -> None:
    ids = set(LINUX_HELPERS if helpers == "linux" else CONFORMANCE_HELPERS)
    validate(prog, ids, allow_callx=helpers == "conformance")
