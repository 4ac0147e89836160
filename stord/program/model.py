"""What a loaded program is: linked instructions, its maps, its BTF and its parameters."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from stord.errors import LoadError
from stord.program.isa import Insn, encode

if TYPE_CHECKING:
    from stord.program.btf import Btf

# BPF_MAP_TYPE_* values that stord understands (the kernel's numbers).
MAP_HASH = 1
MAP_ARRAY = 2
MAP_PERCPU_HASH = 5
MAP_PERCPU_ARRAY = 6

GLOBAL_SECTIONS = (".bss", ".data", ".rodata")


@dataclass(frozen=True)
class MapDef:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    initial: bytes | None = None
    readonly: bool = False
    key_type_id: int = 0
    value_type_id: int = 0

    @property
    def is_global_data(self) -> bool:
        return self.name in GLOBAL_SECTIONS or self.name.startswith((".data.", ".rodata."))


@dataclass(frozen=True)
class Param:
    """A `const volatile` variable in .rodata that the caller sets before load."""

    name: str
    map_index: int
    offset: int
    size: int
    signed: bool
    is_char_array: bool = False  # char name[N]: set from str/bytes, NUL padded
    is_bytes: bool = False       # __u8 table[N]: set from bytes (at most N), zero padded


@dataclass(frozen=True)
class Program:
    name: str
    section: str
    insns: list[Insn]
    maps: list[MapDef] = field(default_factory=list)
    btf: Btf | None = None
    license: str = ""
    params: dict[str, Param] = field(default_factory=dict)
    elf: bytes = b""
    # sha256 of the encoded instructions, once computed. Not an __init__ field, so a copy
    # made with dataclasses.replace computes its own; with_params, which keeps the
    # instructions, keeps it.
    _code_hash: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def code_hash(self) -> bytes:
        h = self._code_hash
        if h is None:
            h = hashlib.sha256(encode(self.insns)).digest()
            object.__setattr__(self, "_code_hash", h)
        return h

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.code_hash)
        for m in self.maps:
            h.update(repr((m.name, m.type, m.key_size, m.value_size, m.max_entries,
                           m.flags)).encode())
            h.update(m.initial or b"")
        return h.hexdigest()

    def with_params(self, **values: int | str | bytes) -> Program:
        """A copy with .rodata parameters set; unknown names and bad values are errors."""
        if not values:
            return self
        maps = list(self.maps)
        for name, value in values.items():
            p = self.params.get(name)
            if p is None:
                known = ", ".join(sorted(self.params)) or "none"
                raise LoadError(f"program {self.name!r} has no parameter {name!r} "
                                f"(parameters: {known})")
            m = maps[p.map_index]
            buf = bytearray(m.initial or bytes(m.value_size))
            buf[p.offset:p.offset + p.size] = _encode_param(p, value)
            maps[p.map_index] = replace(m, initial=bytes(buf))
        out = replace(self, maps=maps)
        object.__setattr__(out, "_code_hash", self._code_hash)   # the same instructions
        return out


def _encode_param(p: Param, value: int | str | bytes) -> bytes:
    if p.is_bytes:
        if not isinstance(value, bytes | bytearray):
            raise LoadError(f"parameter {p.name!r} takes bytes, not {type(value).__name__}")
        if len(value) > p.size:
            raise LoadError(f"parameter {p.name!r} is at most {p.size} bytes long")
        return bytes(value).ljust(p.size, b"\0")
    if p.is_char_array:
        raw = value.encode() if isinstance(value, str) else value
        if not isinstance(raw, bytes):
            raise LoadError(f"parameter {p.name!r} takes a string, not {value!r}")
        if len(raw) >= p.size:
            raise LoadError(f"parameter {p.name!r} is at most {p.size - 1} bytes long")
        return raw.ljust(p.size, b"\0")
    if isinstance(value, bool) or not isinstance(value, int):
        raise LoadError(f"parameter {p.name!r} takes an integer, not {value!r}")
    bits = p.size * 8
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if p.signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise LoadError(f"parameter {p.name!r} = {value} is out of range [{lo}, {hi}]")
    fmt = {1: "b", 2: "h", 4: "i", 8: "q"}.get(p.size)
    if fmt is None:
        raise LoadError(f"parameter {p.name!r} has unsupported size {p.size}")
    return struct.pack("<" + (fmt if p.signed else fmt.upper()), value)
