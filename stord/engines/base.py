"""What every engine provides, and the registry that finds engines by name.

An engine turns a loaded `Program` into an `Instance`: a program with its own maps and
global data that can be called once per chunk and then asked for its state. The executor
(stord.query.executor) drives instances; it never knows which engine it holds.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from stord.errors import EngineUnavailable

if TYPE_CHECKING:
    from stord.program.model import Program
    from stord.query.state import State

# Helper sets: "linux" uses the Linux helper ids (map_lookup_elem = 1, ...); "conformance"
# is the bpf_conformance/ubpf set used only by the ISA test vectors (helper 5 = unwind).
HELPER_SETS = ("linux", "conformance")

DEFAULT_BUDGET = 1 << 32  # instructions (interp) or back-edges (jit) per call

# Userspace virtual address layout shared by interp and jit (see docs/architecture.md).
# ctx->data/data_end/data_meta are u32 fields of struct xdp_md, so everything a program
# reaches through its context lives below 4 GiB; map values live above it.
CTX_BASE = 0x1000_0000
STACK_TOP = 0x3000_0000            # r10 of the entry frame; frame k has r10 = TOP - k*512
MAX_CALL_DEPTH = 8
META_BASE = 0x4000_0000            # struct stord_meta (data_meta), then the chunk (data)
META_SIZE = 16
DATA_BASE = META_BASE + META_SIZE
MEM_BASE = 0x5000_0000             # conformance: the -- mem buffer (r1)
FUNC_BASE = 0x6000_0000            # lddw PSEUDO_FUNC: FUNC_BASE + slot of the subprogram
MAP_STRIDE = 1 << 36               # map i's values start at (i + 1) * MAP_STRIDE


def map_base(index: int) -> int:
    return (index + 1) * MAP_STRIDE


class Instance(ABC):
    """A loaded program with its maps; not thread-safe; close() releases it."""

    @abstractmethod
    def run_chunk(self, data: bytes | memoryview, offset: int, last: bool) -> int:
        """Run the program once on a chunk of a file (XDP context). Returns r0 (the verdict).

        `offset` is the file offset of data[0]; `last` tells the program its range ends
        with this chunk (it may be empty)."""

    @abstractmethod
    def call(self, mem: bytearray | None) -> int:
        """Conformance calling convention: r1 = mem (or 0), r2 = len(mem). Returns r0."""

    @abstractmethod
    def read_state(self) -> State:
        """Global data sections and map contents, as raw bytes."""

    def close(self) -> None:  # noqa: B027 - engines without kernel objects need nothing
        pass

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine(ABC):
    name: ClassVar[str]

    @classmethod
    def probe(cls) -> str | None:
        """None when the engine works on this machine, else the reason it does not."""
        return None

    @abstractmethod
    def load(self, prog: Program, *, budget: int = DEFAULT_BUDGET,
             helpers: str = "linux") -> Instance:
        """Validate/compile/verify `prog` and return a fresh instance."""


# name -> "module:Class"; imported lazily so that a missing llvmlite or bcc only disables
# the engine that needs it.
ENGINES: dict[str, str] = {
    "interp": "stord.engines.interp.engine:InterpEngine",
    "jit": "stord.engines.jit.engine:JitEngine",
    "kernel": "stord.engines.kernel.engine:KernelEngine",
    "hook": "stord.engines.hook.engine:HookEngine",
}
DEFAULT_ENGINE_ORDER = ("jit", "interp")


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise EngineUnavailable(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
    module, _, cls = ENGINES[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise EngineUnavailable(f"engine {name!r} cannot be imported here: {e}") from e


def get_engine(name: str) -> Engine:
    cls = engine_class(name)
    reason = cls.probe()
    if reason is not None:
        raise EngineUnavailable(f"engine {name!r} is not available here: {reason}")
    return cls()


def available_engines() -> dict[str, str | None]:
    """Every known engine -> None if usable, else why not."""
    out: dict[str, str | None] = {}
    for name in ENGINES:
        try:
            out[name] = engine_class(name).probe()
        except EngineUnavailable as e:
            out[name] = str(e)
    return out


def default_engine() -> str:
    avail = available_engines()
    for name in DEFAULT_ENGINE_ORDER:
        if avail.get(name) is None:
            return name
    return "interp"
