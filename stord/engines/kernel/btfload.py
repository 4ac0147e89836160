"""The object's BTF as the kernel wants it: raw .BTF fixed up, plus func_info records.

clang leaves every DATASEC with size 0 (libbpf fills sizes and variable offsets in from
the ELF section headers and symbols before BPF_BTF_LOAD); the kernel refuses size 0. So
we re-read the raw .BTF section from Program.elf, patch DATASEC sizes and offsets in
place, and keep the type ids the kernel needs: DATASEC ids for global-data maps, FUNC ids
for func_info. The verifier insists on func_info when a program passes a callback
(`lddw rX, &func` for bpf_loop: "missing btf func_info"), so we rebuild it by matching
each subprogram of the linked program against the object's function symbols.
"""

from __future__ import annotations

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
class KernelBtf:
    raw: bytes
    datasec_ids: dict[str, int] = field(default_factory=dict)   # ".bss" -> DATASEC id
    func_ids: dict[str, int] = field(default_factory=dict)      # function name -> FUNC id
    functions: dict[str, list[Insn]] = field(default_factory=dict)  # name -> ELF code


def kernel_btf(elf: bytes) -> KernelBtf | None:
    """Fixed-up BTF of an object, or None when it has no .BTF section."""
    if not elf:
        return None
    f = ELFFile(io.BytesIO(elf))
    sec = f.get_section_by_name(".BTF")
    if sec is None:
        return None
    raw = bytearray(sec.data())
    sizes = {s.name: s["sh_size"] for s in f.iter_sections()}
    symbols: dict[str, int] = {}
    functions: dict[str, list[Insn]] = {}
    symtab = f.get_section_by_name(".symtab")
    for sym in symtab.iter_symbols() if symtab is not None else ():
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int):
            continue
        kind = sym["st_info"]["type"]
        if kind == "STT_OBJECT":
            symbols[sym.name] = sym["st_value"]
        elif kind == "STT_FUNC" and sym["st_size"]:
            code = f.get_section(shndx).data()
            functions[sym.name] = decode(code[sym["st_value"]:sym["st_value"] + sym["st_size"]])
    out = KernelBtf(raw=b"", functions=functions)
    _fixup(raw, sizes, symbols, out)
    out.raw = bytes(raw)
    return out


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


def func_info(entry: str, insns: list[Insn], kbtf: KernelBtf) -> list[tuple[int, int]] | None:
    """(slot, FUNC type id) for every subprogram, or None when one cannot be matched."""
    records = []
    for start in subprog_starts(insns):
        if start == 0:
            tid = kbtf.func_ids.get(entry)
        else:
            tid = None
            for fname, code in kbtf.functions.items():
                if fname != entry and fname in kbtf.func_ids and \
                        _same_code(code, insns[start:start + len(code)]):
                    tid = kbtf.func_ids[fname]
                    break
        if tid is None:
            return None
        records.append((start, tid))
    return records
