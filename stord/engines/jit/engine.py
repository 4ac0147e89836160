"""The jit engine: programs compiled to native code through LLVM, sandboxed like the interp.

Zero-copy chunks: run_chunk takes a pointer to the caller's buffer with
PyObject_GetBuffer(PyBUF_SIMPLE) through ctypes.pythonapi, which works for bytes,
bytearray, memoryview and read-only mmap objects alike (ctypes' from_buffer refuses read-only
buffers), and releases it after the call. The jitted code never writes to the chunk: every
store is checked against the writable regions only.

Two variants of a program's code: linux-helper programs are compiled for chunks (the
context's fields are known, see ModuleTranslator), and call() (the conformance convention,
r1 = memory) uses the general variant, compiled on first use.

Same results and the same failures as the interp (tests/test_jit_diff.py), except where
the engines are specified to differ: the budget counts loop back-edges (backward jumps
that close a cycle), calls and bpf_loop iterations instead of instructions, and
ktime/prandom values.
"""

from __future__ import annotations

import ctypes
import os
from typing import ClassVar

from stord.engines import base
from stord.engines.jit import layout as L
from stord.engines.jit.compile import Compiled, get_compiled
from stord.engines.jit.runtime import CONFORMANCE_HELPERS, LINUX_HELPERS
from stord.engines.jit.translate import STACK_LO, ModuleTranslator
from stord.errors import BudgetExceeded, CompileError, LoadError, ProgramFault
from stord.program.isa import STACK_SIZE
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


M64 = (1 << 64) - 1


class _Memory:
    """Checked reads over an instance's regions from Python (trace_printk's format and %s
    arguments), with the interp's Memory.read signature."""

    def __init__(self, inst: JitInstance, stack_p: int, depth: int) -> None:
        self.inst, self.stack_p, self.depth = inst, stack_p, depth

    def read(self, addr: int, n: int, pc: int = -1) -> bytes:
        inst, env = self.inst, self.inst.env
        if n <= 0:
            if n == 0:
                return b""
        else:
            lo = base.STACK_TOP - (self.depth + 1) * STACK_SIZE
            if lo <= addr and addr + n <= base.STACK_TOP:
                return ctypes.string_at(self.stack_p + addr - STACK_LO, n)
            for i, s in enumerate(inst.stores):
                off = addr - base.map_base(i)
                if 0 <= off and off + n <= s.m.value_size * s.m.max_entries:
                    return ctypes.string_at(ctypes.addressof(s.values) + off, n)
            off = addr - base.META_BASE
            if 0 <= off and off + n <= base.META_SIZE + env.data_len:
                chunk = bytes(inst.meta) + (ctypes.string_at(env.data, env.data_len)
                                            if env.data_len else b"")
                return chunk[off:off + n]
            off = addr - base.CTX_BASE
            if 0 <= off and off + n <= 24:
                return bytes(inst.ctx)[off:off + n]
            off = addr - base.MEM_BASE
            if 0 <= off and off + n <= env.mem_len:
                return ctypes.string_at(env.mem + off, n)
        raise ProgramFault(f"pc {pc}: read of {n} bytes at {addr:#x}: not in any memory region")


class JitInstance(base.Instance):
    chunk_size: ClassVar[int] = 1 << 20

    def __init__(self, prog: Program, compiled: Compiled, budget: int, helpers: str) -> None:
        self.prog = prog
        self.compiled = compiled   # runs chunks; call() may need the general variant
        self.budget = budget
        self.helpers = helpers
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
        self.trace: list[str] = []        # bpf_trace_printk lines (bounded, as the interp)
        self.trace_dropped = 0
        self._trace_cb = L.TRACE_FN_TYPE(self._trace_printk)
        env.trace_fn = ctypes.cast(self._trace_cb, ctypes.c_void_p).value
        self._fault_message: str | None = None
        self._env_addr = ctypes.addressof(env)
        self._entry = compiled.entry
        self._general: Compiled | None = None if helpers == "linux" else compiled

    def _run(self, r1: int, r2: int, entry=None) -> int:
        env = self.env
        env.status = 0
        env.budget = self.budget
        r0 = (entry or self._entry)(self._env_addr, r1, r2)
        if env.status:
            self._raise()
        return r0

    def _raise(self) -> None:
        env = self.env
        st, pc, addr, info = env.status, env.pc, env.addr, env.info
        if self._fault_message is not None:
            msg, self._fault_message = self._fault_message, None
            raise ProgramFault(msg)
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

    def _trace_printk(self, env_p: int, stack_p: int, depth: int, r1: int, r2: int, r3: int,
                      r4: int, r5: int, pc: int) -> int:
        """bpf_trace_printk(fmt, fmt_size, a, b, c), exactly as the interp's helper."""
        from stord.engines.interp import helpers as ih
        try:
            size = r2 & 0xFFFF_FFFF
            if size == 0 or size > ih.TRACE_MAX_LEN:
                return ih.EINVAL & M64
            mem = _Memory(self, stack_p, depth)
            fmt = mem.read(r1, size, pc)
            if b"\0" not in fmt:
                return ih.EINVAL & M64
            text = ih.format_printk(fmt[:fmt.index(b"\0")], [r3, r4, r5], mem)
            if len(self.trace) < ih.TRACE_LOG_LINES:
                self.trace.append(text)
            else:
                self.trace_dropped += 1
            ih.log.debug("bpf_trace_printk: %s", text.rstrip("\n"))
            return len(text.encode())
        except Exception as e:  # noqa: BLE001 - nothing may unwind through native code
            self._fault_message = str(e) if isinstance(e, ProgramFault) else \
                f"pc {pc}: bpf_trace_printk failed: {e}"
            self.env.status = L.ST_ACCESS
            self.env.pc = pc
            return 0

    def run_chunk(self, data: bytes | memoryview, offset: int, last: bool) -> int:
        best = self.compiled.slot.best
        if best is not None and best is not self.compiled:
            # the background O2 code is ready: same program, same state, faster code
            self.compiled = best
            self._entry = best.entry
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
            return self._run(0, 0, self._general_entry())
        buf = (ctypes.c_char * len(mem)).from_buffer(mem)
        try:
            env.mem, env.mem_len = ctypes.addressof(buf), len(mem)
            return self._run(base.MEM_BASE, len(mem), self._general_entry())
        finally:
            env.mem, env.mem_len = None, 0
            del buf

    def _general_entry(self):
        """The code that makes no assumption about r1 (conformance calls)."""
        if self._general is None:
            self._general = get_compiled(self.prog, self.helpers)
        return self._general.entry

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

    _probe_result: ClassVar[tuple[str | None] | None] = None

    @classmethod
    def probe(cls) -> str | None:
        """None when LLVM's native target and JIT work here (and then they are set up, so
        the first compile does not pay for it), else why not."""
        if cls._probe_result is None:
            try:
                from stord.engines.jit.compile import warm_up
                warm_up()
                cls._probe_result = (None,)
            except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
                cls._probe_result = (f"LLVM native target unavailable: {e}",)
        return cls._probe_result[0]

    def load(self, prog: Program, *, budget: int = base.DEFAULT_BUDGET,
             helpers: str = "linux") -> JitInstance:
        if helpers not in base.HELPER_SETS:
            raise LoadError(f"unknown helper set {helpers!r} "
                            f"(known: {', '.join(base.HELPER_SETS)})")
        try:
            # linux programs run chunks: compile the variant that knows the context
            compiled = get_compiled(prog, helpers, lambda: _validate(prog, helpers),
                                    chunk=helpers == "linux")
        except CompileError:
            raise
        except RuntimeError as e:
            raise CompileError(f"jit: {e}") from e
        return JitInstance(prog, compiled, budget, helpers)


def _validate(prog: Program, helpers: str) -> None:
    ids = set(LINUX_HELPERS if helpers == "linux" else CONFORMANCE_HELPERS)
    validate(prog, ids, allow_callx=helpers == "conformance")
