"""BTF (the BPF Type Format, linux/Documentation/bpf/btf.rst): parsing, sizes, value decoding.

A program's .BTF section tells us what its maps and global variables are (names, types, the
`stord:*` decl tags), which is how raw state bytes become named values. Everything here is
pure data (picklable), because programs travel to worker processes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from stord.errors import LoadError

# Kinds (BTF_KIND_*).
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

KIND_NAMES = {
    0: "VOID", INT: "INT", PTR: "PTR", ARRAY: "ARRAY", STRUCT: "STRUCT", UNION: "UNION",
    ENUM: "ENUM", FWD: "FWD", TYPEDEF: "TYPEDEF", VOLATILE: "VOLATILE", CONST: "CONST",
    RESTRICT: "RESTRICT", FUNC: "FUNC", FUNC_PROTO: "FUNC_PROTO", VAR: "VAR",
    DATASEC: "DATASEC", FLOAT: "FLOAT", DECL_TAG: "DECL_TAG", TYPE_TAG: "TYPE_TAG",
    ENUM64: "ENUM64",
}

# BTF_INT_* encoding bits.
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4

# Kinds whose size_or_type field is a size, and those whose is a referenced type.
_SIZED = {INT, STRUCT, UNION, ENUM, DATASEC, FLOAT, ENUM64}
_REF = {PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, VAR, DECL_TAG, TYPE_TAG}
# Qualifiers that do not change a value's layout: resolve() looks through them.
_TRANSPARENT = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}

_MAGIC = 0xEB9F
_HDR = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MAX_DEPTH = 64  # type chains deeper than this are treated as cycles


@dataclass(frozen=True)
class Member:
    name: str
    type: int
    bit_offset: int
    bitfield_size: int = 0  # 0: not a bitfield


@dataclass
class BtfType:
    id: int
    kind: int
    name: str
    size: int = 0            # sized kinds
    type: int = 0            # referencing kinds, ARRAY element, FUNC_PROTO return
    kflag: bool = False
    vlen: int = 0
    # INT
    encoding: int = 0
    bits: int = 0
    bit_offset: int = 0
    # ARRAY
    index_type: int = 0
    nelems: int = 0
    # STRUCT / UNION members, FUNC_PROTO params (bit_offset 0)
    members: list[Member] = field(default_factory=list)
    # ENUM / ENUM64
    values: list[tuple[str, int]] = field(default_factory=list)
    # FUNC / VAR linkage, DECL_TAG component index
    linkage: int = 0
    component_idx: int = -1
    # DATASEC: (var type id, offset, size)
    vars: list[tuple[int, int, int]] = field(default_factory=list)
    # where the type record starts in the raw type section (for fix-ups)
    raw_pos: int = 0

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))

    @property
    def signed(self) -> bool:
        if self.kind == INT:
            return bool(self.encoding & INT_SIGNED)
        if self.kind in (ENUM, ENUM64):
            return self.kflag
        return False


class Btf:
    """Parsed BTF. `types[0]` is void; ids index `types`."""

    def __init__(self, types: list[BtfType], raw: bytes, hdr_len: int, type_off: int):
        self.types = types
        self._raw = bytearray(raw)
        self._type_start = hdr_len + type_off
        self._by_name: dict[str, list[int]] = {}
        self._tags: dict[tuple[int, int], list[str]] = {}
        for t in types:
            if t.name:
                self._by_name.setdefault(t.name, []).append(t.id)
            if t.kind == DECL_TAG:
                self._tags.setdefault((t.type, t.component_idx), []).append(t.name)

    # -- parsing -------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> Btf:
        data = bytes(data)
        if len(data) < _HDR.size:
            raise LoadError(f"BTF is truncated: {len(data)} bytes, header needs {_HDR.size}")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            _HDR.unpack_from(data)
        if magic != _MAGIC:
            raise LoadError(f"BTF has bad magic {magic:#06x} (big-endian objects are not "
                            "supported)")
        if version != 1:
            raise LoadError(f"BTF version {version} is not supported")
        if hdr_len < _HDR.size or hdr_len > len(data):
            raise LoadError(f"BTF header length {hdr_len} is invalid")
        for what, off, ln in (("type", type_off, type_len), ("string", str_off, str_len)):
            if hdr_len + off + ln > len(data):
                raise LoadError(f"BTF {what} section [{off}, +{ln}) lies outside the "
                                f"{len(data)} bytes of BTF")
        strs = data[hdr_len + str_off: hdr_len + str_off + str_len]
        if str_len and strs[0] != 0:
            raise LoadError("BTF string section does not start with an empty string")

        def name_at(off: int) -> str:
            if off >= len(strs):
                raise LoadError(f"BTF name offset {off} is outside the string section")
            end = strs.find(b"\0", off)
            if end < 0:
                raise LoadError(f"BTF name at offset {off} is not NUL-terminated")
            return strs[off:end].decode("utf-8", "replace")

        types = [BtfType(0, 0, "")]
        pos = hdr_len + type_off
        end = pos + type_len
        while pos < end:
            if pos + _TYPE.size > end:
                raise LoadError(f"BTF type {len(types)} is truncated")
            name_off, info, size_or_type = _TYPE.unpack_from(data, pos)
            raw_pos = pos - hdr_len - type_off
            pos += _TYPE.size
            vlen = info & 0xFFFF
            kind = (info >> 24) & 0x1F
            kflag = bool(info >> 31)
            t = BtfType(len(types), kind, name_at(name_off), kflag=kflag, vlen=vlen,
                        raw_pos=raw_pos)
            if kind in _SIZED:
                t.size = size_or_type
            elif kind in _REF or kind == FUNC_PROTO:
                t.type = size_or_type

            def take(n: int) -> int:
                nonlocal pos
                if pos + n > end:
                    raise LoadError(f"BTF type {len(types)} is truncated")
                start = pos
                pos += n
                return start

            if kind == INT:
                (v,) = struct.unpack_from("<I", data, take(4))
                t.encoding, t.bit_offset, t.bits = (v >> 24) & 0x0F, (v >> 16) & 0xFF, v & 0xFF
                if t.bits == 0 or t.bits > 128 or t.bit_offset + t.bits > t.size * 8:
                    raise LoadError(f"BTF INT {t.name!r} has invalid bits {t.bits} "
                                    f"at offset {t.bit_offset} for size {t.size}")
            elif kind == ARRAY:
                t.type, t.index_type, t.nelems = struct.unpack_from("<III", data, take(12))
            elif kind in (STRUCT, UNION):
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, take(12))
                    bits = m_off >> 24 if kflag else 0
                    boff = m_off & 0xFFFFFF if kflag else m_off
                    t.members.append(Member(name_at(m_name), m_type, boff, bits))
            elif kind == ENUM:
                for _ in range(vlen):
                    e_name, e_val = struct.unpack_from("<Ii" if kflag else "<II", data, take(8))
                    t.values.append((name_at(e_name), e_val))
            elif kind == ENUM64:
                for _ in range(vlen):
                    e_name, lo, hi = struct.unpack_from("<III", data, take(12))
                    v = lo | (hi << 32)
                    if kflag and v >> 63:
                        v -= 1 << 64
                    t.values.append((name_at(e_name), v))
            elif kind == FUNC_PROTO:
                for _ in range(vlen):
                    p_name, p_type = struct.unpack_from("<II", data, take(8))
                    t.members.append(Member(name_at(p_name), p_type, 0))
            elif kind == FUNC:
                t.linkage = vlen
            elif kind == VAR:
                (t.linkage,) = struct.unpack_from("<I", data, take(4))
            elif kind == DATASEC:
                for _ in range(vlen):
                    t.vars.append(struct.unpack_from("<III", data, take(12)))
            elif kind == DECL_TAG:
                (t.component_idx,) = struct.unpack_from("<i", data, take(4))
            elif kind in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FLOAT, TYPE_TAG):
                pass
            else:
                raise LoadError(f"BTF type {t.id} has unknown kind {kind}")
            types.append(t)
        btf = cls(types, data, hdr_len, type_off)
        btf._check_refs()
        return btf

    def _check_refs(self) -> None:
        n = len(self.types)

        def ok(tid: int, what: str, t: BtfType) -> None:
            if tid >= n:
                raise LoadError(f"BTF type {t.id} ({t.kind_name} {t.name!r}) refers to "
                                f"{what} type {tid}, but there are only {n} types")

        for t in self.types[1:]:
            if t.kind in _REF or t.kind in (ARRAY, FUNC_PROTO):
                ok(t.type, "a", t)
            if t.kind == ARRAY:
                ok(t.index_type, "an index", t)
            for m in t.members:
                ok(m.type, "a member", t)
            for vt, _off, _sz in t.vars:
                ok(vt, "a variable", t)
        # Decl tag components are checked once every reference is known to be valid.
        for t in self.types[1:]:
            if t.kind != DECL_TAG or t.component_idx == -1:
                continue
            target = self.types[t.type]
            if target.kind == FUNC:
                target = self.types[target.type]
            if not 0 <= t.component_idx < len(target.members):
                raise LoadError(f"BTF decl tag {t.name!r} has component index "
                                f"{t.component_idx} out of range")

    # -- queries -------------------------------------------------------------------------

    def type(self, tid: int) -> BtfType:
        if not 0 <= tid < len(self.types):
            raise LoadError(f"BTF type id {tid} does not exist")
        return self.types[tid]

    def resolve(self, tid: int) -> BtfType:
        """The type behind typedefs and qualifiers (const, volatile, restrict, type tags)."""
        t = self.type(tid)
        for _ in range(_MAX_DEPTH):
            if t.kind not in _TRANSPARENT:
                return t
            t = self.type(t.type)
        raise LoadError(f"BTF type {tid} has a qualifier cycle")

    def resolve_id(self, tid: int) -> int:
        return self.resolve(tid).id

    def size(self, tid: int, _depth: int = 0) -> int:
        if _depth > _MAX_DEPTH:
            raise LoadError(f"BTF type {tid} nests too deeply (a cycle?)")
        t = self.resolve(tid)
        if t.kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return t.size
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            return t.nelems * self.size(t.type, _depth + 1)
        if t.kind == VAR:
            return self.size(t.type, _depth + 1)
        raise LoadError(f"BTF type {tid} ({t.kind_name} {t.name!r}) has no size")

    def find(self, name: str, kind: int | None = None) -> int:
        """The id of the first type called `name` (of `kind` if given), 0 when absent."""
        for tid in self._by_name.get(name, ()):
            if kind is None or self.types[tid].kind == kind:
                return tid
        return 0

    def decl_tags(self, type_id: int, component_idx: int = -1) -> list[str]:
        return list(self._tags.get((type_id, component_idx), ()))

    def datasec(self, name: str) -> BtfType | None:
        tid = self.find(name, DATASEC)
        return self.types[tid] if tid else None

    def datasec_vars(self, name: str) -> list[tuple[str, int, int, int]]:
        """(variable name, VAR type id, offset, size) of each variable in a data section."""
        sec = self.datasec(name)
        if sec is None:
            return []
        out = []
        for vt, off, sz in sec.vars:
            v = self.type(vt)
            if v.kind != VAR:
                raise LoadError(f"BTF section {name!r} lists {v.kind_name} {v.name!r}, "
                                "not a variable")
            out.append((v.name, vt, off, sz))
        return out

    def is_char_array(self, tid: int) -> bool:
        t = self.resolve(tid)
        if t.kind != ARRAY:
            return False
        e = self.resolve(t.type)
        # Only plain `char` (clang never sets INT_CHAR): __u8/__s8 arrays stay numbers.
        return e.kind == INT and e.size == 1 and (bool(e.encoding & INT_CHAR) or
                                                 e.name == "char")

    # -- fix-ups (what libbpf does before loading) ---------------------------------------

    def fixup_datasec(self, name: str, size: int, offsets: dict[str, int]) -> None:
        """Set a section's size and its variables' offsets (clang leaves them 0 in objects).

        `offsets` maps variable names to their ELF symbol values; a variable without one is
        an error, as in libbpf."""
        sec = self.datasec(name)
        if sec is None:
            return
        sec.size = size
        self._patch_u32(sec.raw_pos + 8, size)  # name_off, info, size
        new_vars = []
        for vt, _off, _sz in sec.vars:
            v = self.type(vt)
            if v.name not in offsets:
                raise LoadError(f"variable {v.name!r} of section {name!r} has no ELF symbol")
            off, sz = offsets[v.name], self.size(v.type)
            if off + sz > size:
                raise LoadError(f"variable {v.name!r} ({sz} bytes at {off}) lies outside "
                                f"section {name!r} ({size} bytes)")
            new_vars.append((vt, off, sz))
        new_vars.sort(key=lambda v: v[1])  # the kernel wants them in address order
        for i, (vt, off, sz) in enumerate(new_vars):
            rec = sec.raw_pos + _TYPE.size + 12 * i
            self._patch_u32(rec, vt)
            self._patch_u32(rec + 4, off)
            self._patch_u32(rec + 8, sz)
        sec.vars = new_vars

    def _patch_u32(self, pos: int, value: int) -> None:
        struct.pack_into("<I", self._raw, self._type_start + pos, value)

    def to_bytes(self) -> bytes:
        """The raw BTF with fix-ups applied (what BPF_BTF_LOAD wants)."""
        return bytes(self._raw)

    # -- values --------------------------------------------------------------------------

    def decode(self, type_id: int, data: bytes | memoryview) -> object:
        """A value of type `type_id` from its bytes: ints (signed per type), enums as ints,
        bools, structs/unions as dicts, arrays as lists, char arrays as str (up to NUL),
        floats, pointers as ints."""
        data = bytes(data)
        dec, need = self._decoder(type_id, 0)
        if len(data) < need:
            raise LoadError(f"value of BTF type {type_id} needs {need} bytes, got {len(data)}")
        return dec(data, 0)

    # Decoders are compiled once per type (a map of many entries decodes each with the same
    # closure); they are a cache, rebuilt after unpickling.

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_decoders"] = {}
        return state

    def _decoder(self, tid: int, depth: int) -> tuple[_Decoder, int]:
        cache = self.__dict__.setdefault("_decoders", {})
        hit = cache.get(tid)
        if hit is None:
            if depth > _MAX_DEPTH:
                raise LoadError(f"BTF type {tid} nests too deeply (a cycle?)")
            hit = cache[tid] = (self._build(tid, depth), self.size(tid))
        return hit

    def _build(self, tid: int, depth: int) -> _Decoder:
        t = self.resolve(tid)
        k = t.kind
        if k == INT:
            return _int_decoder(t.size, t.bit_offset, t.bits, t.encoding)
        if k in (ENUM, ENUM64):
            return _int_decoder(t.size, 0, t.size * 8, INT_SIGNED if t.kflag else 0)
        if k == PTR:
            return _int_decoder(8, 0, 64, 0)
        if k == FLOAT:
            if t.size in (4, 8):
                unpack = struct.Struct("<f" if t.size == 4 else "<d").unpack_from
                return lambda d, o: unpack(d, o)[0]
            size = t.size
            return lambda d, o: d[o:o + size]
        if k == ARRAY:
            n = t.nelems
            if self.is_char_array(t.id):
                return lambda d, o: _c_string(d[o:o + n])
            elem = self.resolve(t.type)
            if elem.kind == INT and elem.bit_offset == 0 and elem.bits == elem.size * 8 and \
                    elem.size in _INT_FMT and not elem.encoding & INT_BOOL:
                fmt = _INT_FMT[elem.size]
                arr = struct.Struct(f"<{n}{fmt if elem.signed else fmt.upper()}").unpack_from
                return lambda d, o: list(arr(d, o))
            sub, esz = self._decoder(t.type, depth + 1)
            return lambda d, o: [sub(d, o + i * esz) for i in range(n)]
        if k in (STRUCT, UNION):
            fields = []
            for i, m in enumerate(t.members):
                name = m.name or f"_{i}"
                end = (m.bit_offset + m.bitfield_size + 7) // 8 if m.bitfield_size else \
                    m.bit_offset // 8 + self.size(m.type)
                if end > t.size or (not m.bitfield_size and m.bit_offset % 8):
                    raise LoadError(f"member {name!r} of {t.kind_name} {t.name!r} does not fit "
                                    f"its {t.size} bytes")
                if m.bitfield_size:
                    fields.append((name, self._bitfield_decoder(m), 0))
                else:
                    fields.append((name, self._decoder(m.type, depth + 1)[0], m.bit_offset // 8))
            return lambda d, o: {name: f(d, o + at) for name, f, at in fields}
        if k == VAR:
            return self._decoder(t.type, depth + 1)[0]
        raise LoadError(f"cannot decode a value of BTF type {tid} ({t.kind_name})")

    def _bitfield_decoder(self, m: Member) -> _Decoder:
        signed = self.resolve(m.type).signed
        start, shift, bits = m.bit_offset // 8, m.bit_offset % 8, m.bitfield_size
        nbytes, mask, top = (shift + bits + 7) // 8, (1 << bits) - 1, 1 << (bits - 1)

        def dec(d: bytes, o: int) -> int:
            v = (int.from_bytes(d[o + start:o + start + nbytes], "little") >> shift) & mask
            return v - (mask + 1) if signed and v & top else v
        return dec


_Decoder = Callable[[bytes, int], object]
_INT_FMT = {1: "b", 2: "h", 4: "i", 8: "q"}


def _int_decoder(size: int, bit_offset: int, bits: int, encoding: int) -> _Decoder:
    signed = bool(encoding & INT_SIGNED)
    if encoding & INT_BOOL:
        return lambda d, o: d[o] != 0 if size == 1 else int.from_bytes(d[o:o + size],
                                                                        "little") != 0
    if bit_offset == 0 and bits == size * 8 and size in _INT_FMT:
        fmt = _INT_FMT[size]
        unpack = struct.Struct("<" + (fmt if signed else fmt.upper())).unpack_from
        return lambda d, o: unpack(d, o)[0]
    mask, top = (1 << bits) - 1, 1 << (bits - 1)

    def dec(d: bytes, o: int) -> int:
        v = (int.from_bytes(d[o:o + size], "little") >> bit_offset) & mask
        return v - (mask + 1) if signed and v & top else v
    return dec


def _c_string(raw: bytes) -> str | bytes:
    """A char array up to its first NUL: str when it is UTF-8, else the bytes themselves.
    Never a lossy decode: two different keys (say Latin-1 "Zürich" and "Zörich") must not
    become one string with replacement characters and merge."""
    raw = raw.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw)
