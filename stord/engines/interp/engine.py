"""The interp engine: validate, translate to Python (vm.py), run with userspace maps."""

from __future__ import annotations

import struct

from stord.engines.base import (
    CTX_BASE,
    DATA_BASE,
    DEFAULT_BUDGET,
    FUNC_BASE,
    HELPER_SETS,
    MEM_BASE,
    META_BASE,
    STACK_TOP,
    Engine,
    Instance,
    map_base,
)
from stord.engines.interp import vm
from stord.engines.interp.helpers import (
    HelperEnv,
    conformance_helpers,
    linux_helpers,
    map_handle,
)
from stord.engines.interp.maps import Map, make_map
from stord.errors import LoadError, ProgramFault
from stord.program.model import Program
from stord.program.validate import validate
from stord.query.state import State

CTX_SIZE = 24           # struct xdp_md: data, data_end, data_meta, ifindex, rxq, egress
STORD_LAST = 1
_CTX = struct.Struct("<6I")
_META = struct.Struct("<QII")


class InterpInstance(Instance):
    def __init__(self, prog: Program, budget: int, helper_set: str) -> None:
        self.prog = prog
        self.budget = budget
        self.memory = mem = vm.Memory()
        self.maps: list[Map] = [make_map(i, m) for i, m in enumerate(prog.maps)]
        for m in self.maps:
            mem.add(f"map {m.mdef.name!r}", map_base(m.index), m.values, not m.readonly)
        mem.add("ctx", CTX_BASE, bytes(CTX_SIZE), False)
        # meta (16 bytes) and the chunk are one read-only region starting at META_BASE;
        # reserve lookup keys up to MEM_BASE so any chunk fits without re-registering.
        mem.add("chunk", META_BASE, bytes(16), False, span=MEM_BASE - META_BASE)
        mem.add("mem", MEM_BASE, bytearray(), True, span=1 << 28)
        self.env = env = HelperEnv(mem, self.maps)
        if helper_set == "linux":
            helpers = linux_helpers(env)
            callx = None
        else:
            helpers = conformance_helpers(env)

            def callx(reg, r1, r2, r3, r4, r5, pc, r10, depth):
                h = helpers.get(reg)
                if h is None:
                    raise ProgramFault(f"pc {pc}: callx to {reg:#x}: no such helper")
                return h(r1, r2, r3, r4, r5, pc, r10, depth)
        self.rt = vm.Runtime(mem, helpers, callx)
        handles = [map_handle(i) for i in range(len(self.maps))]
        values = [map_base(i) for i in range(len(self.maps))]
        self.functions = vm.build(prog.insns, self.rt, mem, handles, values, FUNC_BASE,
                                  [(m.values, m.readonly) for m in self.maps])
        env.functions = self.functions
        self.entry = self.functions[0]

    @property
    def trace(self) -> list[str]:
        """trace_printk output of this instance (bounded)."""
        return self.env.trace

    def _run(self, r1: int, r2: int) -> int:
        self.rt.budget[0] = self.budget
        self.rt.stack[:] = bytes(len(self.rt.stack))
        try:
            return self.entry(r1, r2, 0, 0, 0, STACK_TOP, 0)
        except vm.Stop as s:
            return s.value
        except RecursionError:
            raise ProgramFault("program recursed too deeply") from None

    def run_chunk(self, data: bytes | memoryview, offset: int, last: bool) -> int:
        n = len(data)
        if DATA_BASE + n > MEM_BASE:
            raise LoadError(f"chunk of {n} bytes is larger than {MEM_BASE - DATA_BASE}")
        self.rt.set_buf("ctx", _CTX.pack(DATA_BASE, DATA_BASE + n, META_BASE, 0, 0, 0))
        self.rt.set_buf("chunk", _META.pack(offset, STORD_LAST if last else 0, 0) + bytes(data))
        self.env.data = data
        self.env.data_len = n
        return self._run(CTX_BASE, 0)

    def call(self, mem: bytearray | None) -> int:
        buf = mem if mem is not None else bytearray()
        self.rt.set_buf("mem", buf)
        return self._run(MEM_BASE if mem is not None else 0, len(buf))

    def read_state(self) -> State:
        st = State()
        for m in self.maps:
            name = m.mdef.name
            if m.mdef.is_global_data:
                if not m.readonly:
                    st.globals[name] = bytes(m.values[:m.mdef.value_size])
            else:
                st.maps[name] = m.items()
        return st


class InterpEngine(Engine):
    name = "interp"

    def load(self, prog: Program, *, budget: int = DEFAULT_BUDGET,
             helpers: str = "linux") -> InterpInstance:
        if helpers not in HELPER_SETS:
            raise LoadError(f"unknown helper set {helpers!r} (known: {', '.join(HELPER_SETS)})")
        ids = set(conformance_helpers(HelperEnv(vm.Memory(), [])) if helpers == "conformance"
                  else linux_helpers(HelperEnv(vm.Memory(), [])))
        validate(prog, ids, allow_callx=helpers == "conformance")
        return InterpInstance(prog, budget, helpers)
