"""The object's BTF as the kernel wants it: raw .BTF fixed up, plus func_info records.

clang leaves every DATASEC with size 0 (libbpf fills sizes and variable offsets in from
the ELF section headers and symbols before BPF_BTF_LOAD); the kernel refuses size 0. So
we re-read the raw .BTF section from Program.elf, patch DATASEC sizes and offsets in
place, and keep the type ids the kernel needs: DATASEC ids for global-data maps, FUNC ids
for func_info. The verifier insists on func_info when a program passes a callback
(`lddw rX, &func` for bpf_loop: "missing btf func_info"), so we rebuild it by matching
each subprogram of the linked program against the object's function symbols. line_info
(.BTF.ext, per ELF section) is moved the same way: with it the verifier's log names the C
source line of each instruction it complains about.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from stord.program.isa import CALL_OP, LDDW, PSEUDO_CALL, PSEUDO_FUNC, Insn, decode

_HDR = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
BTF_MAGIC = 0xEB9F

KIND_FUNC = 12
KIND_VAR = 14
KIND_DATASEC = 15

# Bytes that follow the 12-byte common type header, per kind: (fixed, per vlen item).
_EXTRA = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
          8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
          15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12)}


class BtfFormatError(ValueError):
    pass


@dataclass
class Function:
    section: str       # ELF section holding the function
    start: int         # byte offset of its first instruction in that section
    code: list[Insn]


@dataclass
class KernelBtf:
    raw: bytes
    datasec_ids: dict[str, int] = field(default_factory=dict)   # ".bss" -> DATASEC id
    func_ids: dict[str, int] = field(default_factory=dict)      # function name -> FUNC id
    functions: dict[str, Function] = field(default_factory=dict)
    # ELF section -> line_info records (byte offset, file name, line text, line/col)
    lines: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)


@functools.lru_cache(maxsize=32)
def kernel_btf(elf: bytes) -> KernelBtf | None:
    """Fixed-up BTF of an object, or None when it has no .BTF section. Cached by object:
    parsing the ELF costs tens of milliseconds, more than loading it into the kernel;
    callers must not modify the result."""
    if not elf:
        return None
    f = ELFFile(io.BytesIO(elf))
    sec = f.get_section_by_name(".BTF")
    if sec is None:
        return None
    raw = bytearray(sec.data())
    sizes = {s.name: s["sh_size"] for s in f.iter_sections()}
    symbols: dict[str, int] = {}
    functions: dict[str, Function] = {}
    symtab = f.get_section_by_name(".symtab")
    for sym in symtab.iter_symbols() if symtab is not None else ():
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int):
            continue
        kind = sym["st_info"]["type"]
        if kind == "STT_OBJECT":
            symbols[sym.name] = sym["st_value"]
        elif kind == "STT_FUNC" and sym["st_size"]:
            code_sec = f.get_section(shndx)
            start = sym["st_value"]
            functions[sym.name] = Function(
                code_sec.name, start, decode(code_sec.data()[start:start + sym["st_size"]]))
    out = KernelBtf(raw=b"", functions=functions)
    _fixup(raw, sizes, symbols, out)
    out.raw = bytes(raw)
    ext = f.get_section_by_name(".BTF.ext")
    if ext is not None:
        out.lines = _line_info(ext.data(), out.raw)
    return out


_EXT_HDR = struct.Struct("<HBBIIIII")


def _line_info(ext: bytes, btf: bytes) -> dict[str, list[tuple[int, int, int, int]]]:
    """.BTF.ext line_info, by ELF section name; {} when absent or malformed."""
    try:
        magic, _v, _f, hdr_len, _fo, _fl, line_off, line_len = _EXT_HDR.unpack_from(ext)
        _m, _v2, _f2, bhdr_len, _to, _tl, str_off, str_len = _HDR.unpack_from(btf)
        if magic != BTF_MAGIC or line_len < 4:
            return {}
        strings = btf[bhdr_len + str_off:bhdr_len + str_off + str_len]
        pos = hdr_len + line_off
        end = pos + line_len
        rec_size = struct.unpack_from("<I", ext, pos)[0]
        if rec_size < 16:
            return {}
        pos += 4
        out: dict[str, list[tuple[int, int, int, int]]] = {}
        while pos + 8 <= end:
            name_off, n = struct.unpack_from("<II", ext, pos)
            pos += 8
            sec = strings[name_off:strings.index(b"\0", name_off)].decode()
            recs = out.setdefault(sec, [])
            for _ in range(n):
                recs.append(struct.unpack_from("<IIII", ext, pos))
                pos += rec_size
        return out
    except (struct.error, ValueError, UnicodeDecodeError):
        return {}


def _fixup(raw: bytearray, sizes: dict[str, int], symbols: dict[str, int],
           out: KernelBtf) -> None:
    if len(raw) < _HDR.size:
        raise BtfFormatError("BTF section too short")
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(raw)
    if magic != BTF_MAGIC:
        raise BtfFormatError("bad BTF magic (big-endian object?)")
    strings = bytes(raw[hdr_len + str_off:hdr_len + str_off + str_len])

    def name(off: int) -> str:
        return strings[off:strings.index(b"\0", off)].decode(errors="replace")

    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    var_names: dict[int, str] = {}
    datasecs: list[tuple[int, int, str]] = []   # (type id, byte position, name)
    tid = 0
    while pos < end:
        tid += 1
        name_off, info, _size = _TYPE.unpack_from(raw, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind not in _EXTRA:
            raise BtfFormatError(f"unknown BTF kind {kind} (type {tid})")
        if kind == KIND_VAR:
            var_names[tid] = name(name_off)
        elif kind == KIND_FUNC:
            out.func_ids.setdefault(name(name_off), tid)
        elif kind == KIND_DATASEC:
            datasecs.append((tid, pos, name(name_off)))
        fixed, per = _EXTRA[kind]
        pos += _TYPE.size + fixed + per * vlen
    for tid, pos, sec_name in datasecs:
        out.datasec_ids[sec_name] = tid
        _name_off, info, size = _TYPE.unpack_from(raw, pos)
        vlen = info & 0xFFFF
        if size == 0 and sec_name in sizes:
            struct.pack_into("<I", raw, pos + 8, sizes[sec_name])
        entries = [struct.unpack_from("<III", raw, pos + 12 + 12 * i) for i in range(vlen)]
        fixed = []
        for vtype, off, vsize in entries:
            off = symbols.get(var_names.get(vtype, ""), off)
            fixed.append((vtype, off, vsize))
        # the kernel wants variables in ascending, non-overlapping offset order
        fixed.sort(key=lambda e: e[1])
        for i, entry in enumerate(fixed):
            struct.pack_into("<III", raw, pos + 12 + 12 * i, *entry)


def subprog_starts(insns: list[Insn]) -> list[int]:
    """Slot 0 and every target of a local call or a function address (lddw PSEUDO_FUNC)."""
    starts = {0}
    for i, ins in enumerate(insns):
        if (ins.op == CALL_OP and ins.src == PSEUDO_CALL) or \
                (ins.op == LDDW and ins.src == PSEUDO_FUNC):
            starts.add(i + ins.imm + 1)
    return sorted(starts)


def _same_code(elf_code: list[Insn], linked: list[Insn]) -> bool:
    """Equal up to what relocation changes (LDDW immediates, call targets)."""
    if len(linked) < len(elf_code):
        return False
    second = False
    for a, b in zip(elf_code, linked, strict=False):
        if a.op != b.op or a.dst != b.dst or a.off != b.off:
            return False
        if second:
            second = False
            continue
        if a.op == LDDW:
            second = True
            continue
        if a.op == CALL_OP and b.src == PSEUDO_CALL:
            continue
        if a.src != b.src or a.imm != b.imm:
            return False
    return True


def placed_functions(entry: str, insns: list[Insn], kbtf: KernelBtf) -> dict[int, str] | None:
    """Slot of every subprogram -> its function name, or None when one cannot be matched."""
    placed: dict[int, str] = {}
    for start in subprog_starts(insns):
        name = entry if start == 0 and entry in kbtf.functions else None
        if start:
            for fname, fn in kbtf.functions.items():
                if fname != entry and _same_code(fn.code, insns[start:start + len(fn.code)]):
                    name = fname
                    break
        if name is None:
            return None
        placed[start] = name
    return placed


def func_info(entry: str, insns: list[Insn], kbtf: KernelBtf) -> list[tuple[int, int]] | None:
    """(slot, FUNC type id) for every subprogram, or None when one cannot be matched."""
    placed = placed_functions(entry, insns, kbtf)
    if placed is None or any(name not in kbtf.func_ids for name in placed.values()):
        return None
    return [(slot, kbtf.func_ids[name]) for slot, name in sorted(placed.items())]


def line_info(entry: str, insns: list[Insn],
              kbtf: KernelBtf) -> list[tuple[int, int, int, int]] | None:
    """The object's line_info moved to the linked program's slots (kernel record layout:
    slot, file name offset, line text offset, line << 10 | column), or None."""
    placed = placed_functions(entry, insns, kbtf)
    if placed is None:
        return None
    out: list[tuple[int, int, int, int]] = []
    for slot, name in sorted(placed.items()):
        fn = kbtf.functions[name]
        end = fn.start + 8 * len(fn.code)
        recs = [r for r in kbtf.lines.get(fn.section, ()) if fn.start <= r[0] < end]
        if not recs or recs[0][0] != fn.start:
            return None     # the kernel wants a record at each subprogram's first slot
        for off, fname, line, col in recs:
            out.append((slot + (off - fn.start) // 8, fname, line, col))
    out.sort()
    if any(a[0] >= b[0] for a, b in zip(out, out[1:], strict=False)):
        return None
    return out
