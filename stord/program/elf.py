"""ELF object loader: an object from `clang -target bpf` to a linked, relocated Program.

The ELF container is parsed with pyelftools (a well-kept pure-Python ELF library that handles
sections, symbols and relocations); what the sections mean follows libbpf, so that an object
libbpf loads is loaded here the same way:
- the entry function comes first, then every subprogram it reaches (by call, or by an lddw of
  a function address for bpf_loop callbacks) in libbpf's depth-first order;
- R_BPF_64_64 on an lddw names a map (SEC(".maps")), a global variable (.bss/.data/.rodata,
  as a symbol or as a section symbol plus an addend in the immediate) or a function;
- R_BPF_64_32 on a call names a subprogram (a symbol, or a section symbol plus the call's
  immediate);
- BTF-defined maps are decoded from the .maps DATASEC as libbpf does (`__uint(type, ...)` is a
  pointer to an array whose length is the value, `__type(key, T)` a pointer to T);
- DATASEC sizes and variable offsets, which clang leaves 0, are fixed up from the symbols.
Immediates are rewritten to the contracts of docs/architecture.md (map indices, slot offsets).
Anything malformed is a LoadError, never another exception.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from stord.errors import LoadError
from stord.program import btf as B
from stord.program.btf import Btf
from stord.program.isa import (
    CALL_OP,
    LDDW,
    MAX_INSNS,
    PSEUDO_CALL,
    PSEUDO_FUNC,
    PSEUDO_MAP_FD,
    PSEUDO_MAP_VALUE,
    DecodeError,
    Insn,
    decode,
)
from stord.program.model import (
    MAP_ARRAY,
    MAP_HASH,
    MAP_PERCPU_ARRAY,
    MAP_PERCPU_HASH,
    MapDef,
    Param,
    Program,
)

EM_BPF = 247
R_BPF_NONE, R_BPF_64_64, R_BPF_64_ABS64, R_BPF_64_ABS32, R_BPF_64_NODYLD32 = 0, 1, 2, 3, 4
R_BPF_64_32 = 10
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4

SUPPORTED_MAP_TYPES = {MAP_HASH: "hash", MAP_ARRAY: "array", MAP_PERCPU_HASH: "percpu hash",
                       MAP_PERCPU_ARRAY: "percpu array"}
# The kernel's own limits: an array value is one kmalloc (KMALLOC_MAX_SIZE, 4 MiB on x86-64)
# and a hash key must fit on the BPF stack. Checking here keeps a hostile object from making
# us allocate gigabytes for a .bss it claims to have.
MAX_VALUE_SIZE = 4 << 20
MAX_KEY_SIZE = 512

# BTF map definition fields that are integers (encoded as `int (*name)[value]`).
_INT_FIELDS = {"type", "max_entries", "map_flags", "key_size", "value_size", "numa_node",
               "map_extra", "pinning"}


@dataclass(frozen=True)
class _Sym:
    name: str
    shndx: int          # -1: undefined / absolute / common
    value: int
    type: str           # STT_FUNC, STT_OBJECT, STT_SECTION, STT_NOTYPE...


@dataclass(frozen=True)
class _Func:
    name: str
    sec: int
    start: int          # slot index in its section
    end: int


def load_object(data: bytes, section: str | None = None) -> Program:
    """Load a BPF ELF object. `section` picks the program by section (or function) name;
    by default the first function of the first executable section other than .text."""
    try:
        return _Loader(bytes(data)).load(section)
    except LoadError:
        raise
    except Exception as e:  # noqa: BLE001 - pyelftools raises many kinds on malformed input
        raise LoadError(f"malformed BPF object: {type(e).__name__}: {e}") from None


def function_layout(data: bytes, section: str | None = None) -> list[tuple[str, int]]:
    """(function name, first slot) of every function in the linked program, entry first:
    what the kernel's func_info needs (BTF FUNC ids are found by these names)."""
    try:
        loader = _Loader(bytes(data))
        loader.load(section)
    except LoadError:
        raise
    except Exception as e:  # noqa: BLE001 - as in load_object
        raise LoadError(f"malformed BPF object: {type(e).__name__}: {e}") from None
    return loader.layout


class _Loader:
    def __init__(self, data: bytes):
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise LoadError("not an ELF object (bad magic)")
        if data[4] != 2:
            raise LoadError("not a 64-bit ELF object")
        if data[5] != 1:
            raise LoadError("not a little-endian ELF object (big-endian BPF is not supported)")
        self.data = data
        self.elf = ELFFile(io.BytesIO(data))
        machine = self.elf["e_machine"]
        if machine not in ("EM_BPF", EM_BPF):
            raise LoadError(f"not a BPF object: machine is {machine} (compile with "
                            "clang -target bpf)")
        if self.elf["e_type"] != "ET_REL":
            raise LoadError(f"not a relocatable object: type is {self.elf['e_type']}")
        self.secs = [self.elf.get_section(i) for i in range(self.elf.num_sections())]
        self.sec_by_name = {}
        for i, s in enumerate(self.secs):
            self.sec_by_name.setdefault(s.name, i)
        self.syms = self._symbols()
        self.btf = self._btf()

    # -- raw ELF ----------------------------------------------------------------------

    def _symbols(self) -> list[_Sym]:
        tabs = [s for s in self.secs if isinstance(s, SymbolTableSection)
                and s["sh_type"] == "SHT_SYMTAB"]
        if not tabs:
            raise LoadError("object has no symbol table")
        out = []
        for s in tabs[0].iter_symbols():
            shndx = s["st_shndx"]
            out.append(_Sym(s.name, shndx if isinstance(shndx, int) else -1,
                            s["st_value"], s["st_info"]["type"]))
        return out

    def _btf(self) -> Btf | None:
        i = self.sec_by_name.get(".BTF")
        if i is None:
            return None
        return Btf.parse(self._sec_data(i))

    def _sec_data(self, i: int) -> bytes:
        s = self.secs[i]
        if s["sh_type"] == "SHT_NOBITS":
            return bytes(s["sh_size"])
        data = s.data()
        if len(data) != s["sh_size"]:
            raise LoadError(f"section {s.name!r} is truncated ({len(data)} of "
                            f"{s['sh_size']} bytes)")
        return data

    def _flags(self, i: int) -> int:
        return self.secs[i]["sh_flags"]

    # -- loading ----------------------------------------------------------------------

    def load(self, section: str | None) -> Program:
        self._fixup_btf()
        self.maps: list[MapDef] = []
        self.map_at: dict[tuple[int, int], int] = {}     # (section, offset) -> map index
        self.data_map: dict[int, int] = {}               # data section -> map index
        self._btf_maps()
        self._data_maps()
        self._code()
        entry = self._entry(section)
        insns = self._link(entry)
        prog = Program(
            name=entry.name,
            section=self.secs[entry.sec].name,
            insns=insns,
            maps=self.maps,
            btf=self.btf,
            license=self._license(),
            params=self._params(),
            elf=self.data,
        )
        prog.code_hash   # noqa: B018 - hashed once here; every parameter set's copy shares it
        return prog

    def _fixup_btf(self) -> None:
        """DATASEC sizes and variable offsets from the ELF, as libbpf does before loading."""
        if self.btf is None:
            return
        for t in self.btf.types:
            if t.kind != B.DATASEC:
                continue
            i = self.sec_by_name.get(t.name)
            if i is None:
                continue  # .kconfig/.ksyms externs: rejected when a relocation uses them
            offsets = {s.name: s.value for s in self.syms
                       if s.shndx == i and s.type in ("STT_OBJECT", "STT_NOTYPE", "STT_TLS")}
            self.btf.fixup_datasec(t.name, self.secs[i]["sh_size"], offsets)

    def _btf_maps(self) -> None:
        legacy = self.sec_by_name.get("maps")
        if legacy is not None and self.secs[legacy]["sh_size"]:
            raise LoadError("legacy SEC(\"maps\") map definitions are not supported; "
                            "define maps in SEC(\".maps\") with __uint/__type")
        i = self.sec_by_name.get(".maps")
        if i is None or not self.secs[i]["sh_size"]:
            return
        if self.btf is None or self.btf.datasec(".maps") is None:
            raise LoadError("maps in SEC(\".maps\") need the object's BTF (compile with -g)")
        for name, var_id, off, _size in self.btf.datasec_vars(".maps"):
            self.map_at[(i, off)] = len(self.maps)
            self.maps.append(_map_def(self.btf, name, self.btf.type(var_id).type))

    def _data_maps(self) -> None:
        for i, s in enumerate(self.secs):
            name = s.name
            if not (name in (".bss", ".data", ".rodata") or
                    name.startswith((".data.", ".rodata."))):
                continue
            if not self._flags(i) & SHF_ALLOC or self._flags(i) & SHF_EXECINSTR:
                continue
            size = s["sh_size"]
            if size == 0:
                continue
            if size > MAX_VALUE_SIZE:
                raise LoadError(f"section {name!r} is {size} bytes; the limit for global data "
                                f"is {MAX_VALUE_SIZE} bytes")
            type_id = self.btf.find(name, B.DATASEC) if self.btf else 0
            self.data_map[i] = len(self.maps)
            self.maps.append(MapDef(name=name, type=MAP_ARRAY, key_size=4, value_size=size,
                                    max_entries=1, initial=self._sec_data(i),
                                    readonly=name.startswith(".rodata"),
                                    value_type_id=type_id))

    def _code(self) -> None:
        """Instructions, functions and relocations of every executable section."""
        self.code: dict[int, list[Insn]] = {}
        for i, s in enumerate(self.secs):
            if s["sh_type"] == "SHT_PROGBITS" and self._flags(i) & SHF_EXECINSTR:
                try:
                    self.code[i] = decode(self._sec_data(i))
                except DecodeError as e:
                    raise LoadError(f"section {s.name!r}: {e}") from None
        self.funcs: dict[int, list[_Func]] = {i: [] for i in self.code}
        starts: dict[int, list[tuple[int, str, int]]] = {i: [] for i in self.code}
        for sym in self.syms:
            if sym.type == "STT_FUNC" and sym.shndx in self.code:
                if sym.value % 8:
                    raise LoadError(f"function {sym.name!r} is not 8-byte aligned")
                starts[sym.shndx].append((sym.value // 8, sym.name, sym.value))
        for i, lst in starts.items():
            lst.sort()
            n = len(self.code[i])
            for k, (start, name, _v) in enumerate(lst):
                end = lst[k + 1][0] if k + 1 < len(lst) else n
                if start >= n:
                    raise LoadError(f"function {name!r} starts past the end of its section")
                self.funcs[i].append(_Func(name, i, start, end))
        self.relocs: dict[int, dict[int, tuple[int, _Sym]]] = {i: {} for i in self.code}
        for s in self.secs:
            if s["sh_type"] == "SHT_RELA" and s["sh_info"] in self.code:
                raise LoadError(f"RELA relocations ({s.name!r}) are not used by BPF; "
                                "expected REL")
            if not isinstance(s, RelocationSection) or s["sh_info"] not in self.code:
                continue
            target = s["sh_info"]
            n = len(self.code[target])
            for r in s.iter_relocations():
                off, typ, symi = r["r_offset"], r["r_info_type"], r["r_info_sym"]
                if typ == R_BPF_NONE:
                    continue
                if off % 8 or off // 8 >= n:
                    raise LoadError(f"relocation at {self.secs[target].name}+{off:#x} is not "
                                    "on an instruction")
                if symi >= len(self.syms):
                    raise LoadError(f"relocation at {self.secs[target].name}+{off:#x} names "
                                    f"symbol {symi}, which does not exist")
                self.relocs[target][off // 8] = (typ, self.syms[symi])

    def _entry(self, section: str | None) -> _Func:
        if section is None:
            cands = [i for i in self.code if self.secs[i].name != ".text"] or \
                [i for i in self.code]
            for i in cands:
                if self.code[i]:
                    return self._first_func(i)
            raise LoadError("object has no program (no executable section with code)")
        i = self.sec_by_name.get(section)
        if i in self.code and self.code[i]:
            return self._first_func(i)
        for lst in self.funcs.values():
            for f in lst:
                if f.name == section:
                    return f
        names = ", ".join(self.secs[i].name for i in self.code) or "none"
        raise LoadError(f"object has no program section or function {section!r} "
                        f"(program sections: {names})")

    def _first_func(self, i: int) -> _Func:
        if self.funcs[i]:
            return self.funcs[i][0]
        return _Func(self.secs[i].name, i, 0, len(self.code[i]))

    def _func_at(self, sec: int, slot: int, what: str) -> _Func:
        if sec not in self.code or not 0 <= slot < len(self.code[sec]):
            raise LoadError(f"{what} targets {self.secs[sec].name}+{slot * 8:#x}, "
                            "outside the code")
        lst = self.funcs[sec]
        nxt = len(self.code[sec])
        for f in lst:
            if f.start == slot:
                return f
            if f.start < slot < f.end:
                raise LoadError(f"{what} jumps into the middle of function {f.name!r}")
            if f.start > slot:
                nxt = min(nxt, f.start)
        # No symbol (a hand-written or stripped object): the code up to the next function.
        return _Func(f"{self.secs[sec].name}+{slot * 8:#x}", sec, slot, nxt)

    # -- linking ----------------------------------------------------------------------

    def _link(self, entry: _Func) -> list[Insn]:
        out: list[Insn] = []
        placed: dict[tuple[int, int], int] = {}
        fixups: list[tuple[int, int, tuple[int, int]]] = []   # (linked slot, src, target)

        self.layout: list[tuple[str, int]] = []

        def place(f: _Func) -> None:
            placed[(f.sec, f.start)] = len(out)
            self.layout.append((f.name, len(out)))
            out.extend(self.code[f.sec][f.start:f.end])
            if len(out) > MAX_INSNS:
                raise LoadError(f"program has more than {MAX_INSNS} instructions")

        # libbpf's order: a subprogram is appended when first referenced, then its own
        # references are followed before the rest of its caller (depth-first pre-order).
        place(entry)
        stack = [(entry, entry.start)]
        while stack:
            f, k = stack.pop()
            if k >= f.end:
                continue
            stack.append((f, k + 1))
            target = self._reloc_insn(f, k, placed[(f.sec, f.start)] + k - f.start, out,
                                      fixups)
            if target is not None and (target.sec, target.start) not in placed:
                place(target)
                stack.append((target, target.start))
        for i, src, key in fixups:
            out[i] = out[i]._replace(src=src, imm=placed[key] - i - 1)
        return out

    def _reloc_insn(self, f: _Func, k: int, i: int, out: list[Insn],
                    fixups: list[tuple[int, int, tuple[int, int]]]) -> _Func | None:
        """Relocate the instruction at slot k of f (linked slot i); returns a subprogram it
        refers to."""
        insn = out[i]
        rel = self.relocs[f.sec].get(k)
        where = f"{self.secs[f.sec].name}+{k * 8:#x}"
        if insn.op == LDDW:
            if k + 1 >= f.end:
                raise LoadError(f"lddw at {where} is missing its second slot")
            if rel is None:
                if insn.src:
                    raise LoadError(f"lddw at {where} has pseudo source {insn.src} but no "
                                    "relocation")
                return None
            typ, sym = rel
            if typ != R_BPF_64_64:
                raise LoadError(f"lddw at {where} has relocation type {typ}, expected "
                                "R_BPF_64_64")
            self._check_defined(sym, where)
            if sym.shndx in self.code:
                byte = sym.value + insn.imm
                if byte % 8:
                    raise LoadError(f"function address at {where} is not 8-byte aligned")
                target = self._func_at(sym.shndx, byte // 8, f"function address at {where}")
                fixups.append((i, PSEUDO_FUNC, (target.sec, target.start)))
                out[i + 1] = out[i + 1]._replace(imm=0)
                return target
            key = (sym.shndx, sym.value + insn.imm)
            if key in self.map_at:
                out[i] = insn._replace(src=PSEUDO_MAP_FD, imm=self.map_at[key])
                out[i + 1] = out[i + 1]._replace(imm=0)
                return None
            if sym.shndx in self.data_map:
                idx = self.data_map[sym.shndx]
                off = sym.value + insn.imm
                if not 0 <= off <= self.maps[idx].value_size:
                    raise LoadError(f"lddw at {where} points {off} bytes into "
                                    f"{self.secs[sym.shndx].name!r}, outside its "
                                    f"{self.maps[idx].value_size} bytes")
                out[i] = insn._replace(src=PSEUDO_MAP_VALUE, imm=idx)
                out[i + 1] = out[i + 1]._replace(imm=off)
                return None
            sec = self.secs[sym.shndx].name if 0 <= sym.shndx < len(self.secs) else "?"
            raise LoadError(f"lddw at {where} refers to {sym.name or sec!r} in section "
                            f"{sec!r}, which is neither a map, global data nor code")
        if insn.op == CALL_OP:
            if rel is not None:
                typ, sym = rel
                if typ != R_BPF_64_32:
                    raise LoadError(f"call at {where} has relocation type {typ}, expected "
                                    "R_BPF_64_32")
                self._check_defined(sym, where)
                if sym.shndx not in self.code:
                    raise LoadError(f"call at {where} targets {sym.name!r}, which is not code")
                if insn.src != PSEUDO_CALL:
                    raise LoadError(f"call at {where} has a relocation but source "
                                    f"{insn.src}, not a local call")
                if sym.value % 8:
                    raise LoadError(f"call at {where} targets an unaligned address")
                target = self._func_at(sym.shndx, sym.value // 8 + insn.imm + 1,
                                       f"call at {where}")
            elif insn.src == PSEUDO_CALL:
                # A call within the section that the compiler resolved itself.
                target = self._func_at(f.sec, k + insn.imm + 1, f"call at {where}")
            elif insn.src == 0:
                return None  # a helper
            else:
                raise LoadError(f"call at {where} has source {insn.src}: kernel function "
                                "calls (kfuncs) are not supported")
            fixups.append((i, PSEUDO_CALL, (target.sec, target.start)))
            return target
        if rel is not None:
            raise LoadError(f"relocation (type {rel[0]}) at {where} is on an instruction "
                            f"with opcode {insn.op:#04x}, not lddw or call")
        return None

    def _check_defined(self, sym: _Sym, where: str) -> None:
        if sym.shndx <= 0 or sym.shndx >= len(self.secs):
            raise LoadError(f"instruction at {where} uses {sym.name!r}, which is not defined "
                            "in this object (externs, kconfig and ksyms are not supported)")

    # -- metadata ---------------------------------------------------------------------

    def _license(self) -> str:
        i = self.sec_by_name.get("license")
        if i is None:
            return ""
        return self._sec_data(i).split(b"\0", 1)[0].decode("ascii", "replace")

    def _params(self) -> dict[str, Param]:
        """`const volatile` variables of .rodata: what a caller may set before loading."""
        i = self.sec_by_name.get(".rodata")
        if self.btf is None or i not in self.data_map:
            return {}
        out = {}
        for name, var_id, off, size in self.btf.datasec_vars(".rodata"):
            vtype = self.btf.type(var_id).type
            base = self.btf.resolve(vtype)
            if base.kind == B.ARRAY:
                if not _volatile(self.btf, base.type):
                    continue
                elem = self.btf.resolve(base.type)
                if self.btf.is_char_array(base.id):
                    out[name] = Param(name, self.data_map[i], off, size, False, True)
                elif elem.kind == B.INT and elem.size == 1:   # a byte table (__u8 t[N])
                    out[name] = Param(name, self.data_map[i], off, size, False, is_bytes=True)
            elif base.kind in (B.INT, B.ENUM, B.ENUM64) and _volatile(self.btf, vtype):
                if size not in (1, 2, 4, 8):
                    continue
                out[name] = Param(name, self.data_map[i], off, size, base.signed)
        return out


def _volatile(btf: Btf, tid: int) -> bool:
    for _ in range(64):
        t = btf.type(tid)
        if t.kind == B.VOLATILE:
            return True
        if t.kind not in (B.TYPEDEF, B.CONST, B.RESTRICT, B.TYPE_TAG):
            return False
        tid = t.type
    return False


def _map_def(btf: Btf, name: str, def_type: int) -> MapDef:
    """A BTF map definition (`struct { __uint(type, ...); __type(key, ...); ... }`)."""
    st = btf.resolve(def_type)
    if st.kind != B.STRUCT:
        raise LoadError(f"map {name!r}: definition is a {st.kind_name}, not a struct")
    ints: dict[str, int] = {}
    key_type = value_type = 0
    for m in st.members:
        ptr = btf.resolve(m.type)
        if m.name in _INT_FIELDS:
            arr = btf.resolve(ptr.type) if ptr.kind == B.PTR else ptr
            if ptr.kind != B.PTR or arr.kind != B.ARRAY:
                raise LoadError(f"map {name!r}: field {m.name!r} is not declared with __uint")
            ints[m.name] = arr.nelems
        elif m.name in ("key", "value"):
            if ptr.kind != B.PTR:
                raise LoadError(f"map {name!r}: field {m.name!r} is not declared with __type")
            if m.name == "key":
                key_type = ptr.type
            else:
                value_type = ptr.type
        elif m.name == "values":
            raise LoadError(f"map {name!r}: maps of maps and program arrays are not supported")
        else:
            raise LoadError(f"map {name!r}: unknown field {m.name!r}")
    if "type" not in ints:
        raise LoadError(f"map {name!r} has no type")
    mtype = ints["type"]
    if mtype not in SUPPORTED_MAP_TYPES:
        known = ", ".join(f"{v} ({k})" for k, v in SUPPORTED_MAP_TYPES.items())
        raise LoadError(f"map {name!r} has type {mtype}; stord supports {known}")
    sizes = {}
    for what, tid in (("key", key_type), ("value", value_type)):
        explicit = ints.get(f"{what}_size")
        size = btf.size(tid) if tid else explicit
        if size is None:
            raise LoadError(f"map {name!r} has no {what} type or {what}_size")
        if explicit is not None and tid and explicit != size:
            raise LoadError(f"map {name!r}: {what}_size {explicit} disagrees with its "
                            f"{what} type ({size} bytes)")
        sizes[what] = size
    if not 0 < sizes["key"] <= MAX_KEY_SIZE:
        raise LoadError(f"map {name!r}: key size {sizes['key']} is not in [1, {MAX_KEY_SIZE}]")
    if not 0 < sizes["value"] <= MAX_VALUE_SIZE:
        raise LoadError(f"map {name!r}: value size {sizes['value']} is not in "
                        f"[1, {MAX_VALUE_SIZE}]")
    if mtype in (MAP_ARRAY, MAP_PERCPU_ARRAY) and sizes["key"] != 4:
        raise LoadError(f"map {name!r}: an array's key is 4 bytes, not {sizes['key']}")
    if not ints.get("max_entries"):
        raise LoadError(f"map {name!r} needs max_entries > 0")
    return MapDef(name=name, type=mtype, key_size=sizes["key"], value_size=sizes["value"],
                  max_entries=ints["max_entries"], flags=ints.get("map_flags", 0),
                  key_type_id=key_type, value_type_id=value_type)
