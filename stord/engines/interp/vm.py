"""The reference eBPF virtual machine (RFC 9669), in pure Python.

Speed comes from translating the program once into Python source (then compiled by
Python and memoised):
- each eBPF function becomes one Python function whose registers are local variables;
  bpf-to-bpf calls are Python calls (r6-r9 are locals, so they survive for free);
- basic blocks are leaves of a binary if-tree on `pc` inside `while True` (innermost loop
  headers are tested first); small blocks reached by forward edges are duplicated inline
  so straight-line paths do not go back to the dispatch;
- stack accesses through r10 with a constant offset are bounds-checked at translation
  time; so are accesses through a register that the block loaded with the address of a
  global (`lddw map_value`), and loads from frozen .rodata fold to constants;
- every other load/store site has an inline cache of the region it touched last (base,
  bound, buffer); a miss takes the slow path, which checks the address against every
  region (bounds, writability, the current stack frame) and raises ProgramFault with the
  address, size and pc.

Registers hold unsigned 64-bit Python ints; 32-bit results are masked, which is exactly
RFC 9669's zero extension. The instruction budget is charged per basic block and checked
at every dispatch and exit, so a run that executes more instructions than its budget
always ends in BudgetExceeded.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from stord.engines.base import MAX_CALL_DEPTH, STACK_TOP
from stord.errors import BudgetExceeded, ProgramFault
from stord.program import isa
from stord.program.isa import Insn
from stord.program.validate import function_starts, jump_target, lddw_second_slots

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
S64 = 1 << 63
S32 = 1 << 31
STACK_BYTES = MAX_CALL_DEPTH * isa.STACK_SIZE
STACK_BASE = STACK_TOP - STACK_BYTES
REGION_SHIFT = 28  # regions are looked up by addr >> 28 (256 MiB granules)
INLINE_CAP = 1500
HOT_HEADERS = 3    # loop headers tested before the dispatch tree  # duplicated (inlined) blocks per function at most
CODE_CACHE_SIZE = 32


class Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a helper to end the whole program with r0 = value (conformance unwind)."""

    def __init__(self, value: int) -> None:
        self.value = value


# --- memory ------------------------------------------------------------------------------

class Region:
    __slots__ = ("name", "base", "buf", "lo", "writable")

    def __init__(self, name: str, base: int, buf: bytes | bytearray, writable: bool) -> None:
        self.name, self.base, self.buf, self.lo, self.writable = name, base, buf, 0, writable


class Memory:
    """The virtual address space: named regions, and checked loads/stores over them.

    Loaders and storers look regions up in dicts keyed by addr >> 28 whose values are
    mutable [buf, base, lo] lists, so that swapping a chunk in (or moving the stack's
    lowest valid byte on a call) needs no re-translation."""

    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}
        self.read_tab: dict[int, list[Any]] = {}
        self.write_tab: dict[int, list[Any]] = {}
        self.cells: dict[str, list[Any]] = {}

    def add(self, name: str, base: int, buf: bytes | bytearray, writable: bool,
            span: int | None = None) -> list[Any]:
        """Register a region; `span` (bytes) reserves lookup keys for a buffer that may grow."""
        r = Region(name, base, buf, writable)
        self.regions[name] = r
        cell = [buf, base, 0]
        self.cells[name] = cell
        end = base + max(span or 0, len(buf), 1)
        for key in range(base >> REGION_SHIFT, ((end - 1) >> REGION_SHIFT) + 1):
            self.read_tab[key] = cell
            if writable:
                self.write_tab[key] = cell
        return cell

    def set_buf(self, name: str, buf: bytes | bytearray) -> None:
        self.regions[name].buf = buf
        self.cells[name][0] = buf

    def describe(self, addr: int, size: int, write: bool, pc: int) -> str:
        what = "write" if write else "read"
        where = f"pc {pc}: {what} of {size} bytes at {addr:#x}"
        for r in self.regions.values():
            cell = self.cells[r.name]
            lo, hi = r.base + cell[2], r.base + len(cell[0])
            if r.base - 4096 <= addr < r.base + len(cell[0]) + 4096 or lo <= addr < hi:
                if lo <= addr and addr + size <= hi:
                    return f"{where}: {r.name} is read-only"
                if addr < lo and r.name == "stack":
                    return f"{where}: below the current stack frame ({lo:#x})"
                return f"{where}: outside {r.name} [{lo:#x}, {hi:#x})"
        return f"{where}: not in any memory region"

    def fault(self, addr: int, size: int, write: bool, pc: int) -> ProgramFault:
        return ProgramFault(self.describe(addr, size, write, pc))

    def loader(self, size: int, signed: bool) -> Callable[[int, int], int]:
        get = self.read_tab.get
        fault = self.fault
        if size == 1 and not signed:
            def load1(addr: int, pc: int) -> int:
                c = get(addr >> REGION_SHIFT)
                if c is not None:
                    off = addr - c[1]
                    if c[2] <= off < len(c[0]):
                        return c[0][off]
                raise fault(addr, 1, False, pc)
            return load1
        fmt = {1: "b", 2: "h", 4: "i"}[size] if signed else {2: "H", 4: "I", 8: "Q"}[size]
        unpack = struct.Struct("<" + fmt).unpack_from

        if signed:
            def load_s(addr: int, pc: int) -> int:
                c = get(addr >> REGION_SHIFT)
                if c is not None:
                    off = addr - c[1]
                    if c[2] <= off <= len(c[0]) - size:
                        return unpack(c[0], off)[0] & M64
                raise fault(addr, size, False, pc)
            return load_s

        def load(addr: int, pc: int) -> int:
            c = get(addr >> REGION_SHIFT)
            if c is not None:
                off = addr - c[1]
                if c[2] <= off <= len(c[0]) - size:
                    return unpack(c[0], off)[0]
            raise fault(addr, size, False, pc)
        return load

    def storer(self, size: int) -> Callable[[int, int, int], None]:
        get = self.write_tab.get
        fault = self.fault
        mask = (1 << (8 * size)) - 1
        if size == 1:
            def store1(addr: int, value: int, pc: int) -> None:
                c = get(addr >> REGION_SHIFT)
                if c is not None:
                    off = addr - c[1]
                    if c[2] <= off < len(c[0]):
                        c[0][off] = value & 0xFF
                        return
                raise fault(addr, 1, True, pc)
            return store1
        pack = struct.Struct("<" + {2: "H", 4: "I", 8: "Q"}[size]).pack_into

        def store(addr: int, value: int, pc: int) -> None:
            c = get(addr >> REGION_SHIFT)
            if c is not None:
                off = addr - c[1]
                if c[2] <= off <= len(c[0]) - size:
                    pack(c[0], off, value & mask)
                    return
            raise fault(addr, size, True, pc)
        return store

    def read(self, addr: int, n: int, pc: int = -1) -> bytes:
        """n bytes at addr (for helpers); faults like a load."""
        c = self.read_tab.get(addr >> REGION_SHIFT)
        if n < 0:
            raise self.fault(addr, n, False, pc)
        if n == 0:
            return b""
        if c is not None:
            off = addr - c[1]
            if c[2] <= off <= len(c[0]) - n:
                return bytes(c[0][off:off + n])
        raise self.fault(addr, n, False, pc)

    def write(self, addr: int, data: bytes, pc: int = -1) -> None:
        n = len(data)
        if n == 0:
            return
        c = self.write_tab.get(addr >> REGION_SHIFT)
        if c is not None:
            off = addr - c[1]
            if c[2] <= off <= len(c[0]) - n:
                c[0][off:off + n] = data
                return
        raise self.fault(addr, n, True, pc)

    def readable(self, addr: int, n: int) -> bool:
        c = self.read_tab.get(addr >> REGION_SHIFT)
        return c is not None and n >= 0 and c[2] <= addr - c[1] <= len(c[0]) - n

    def writable(self, addr: int, n: int) -> bool:
        c = self.write_tab.get(addr >> REGION_SHIFT)
        return c is not None and n >= 0 and c[2] <= addr - c[1] <= len(c[0]) - n


# --- arithmetic with RFC 9669 semantics ----------------------------------------------------

def _s64(x: int) -> int:
    return (x ^ S64) - S64


def _s32(x: int) -> int:
    return ((x & M32) ^ S32) - S32


def _tdiv(a: int, b: int) -> int:
    """Signed division truncating toward zero (C semantics)."""
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def sdiv64(a: int, b: int) -> int:
    if b == 0:
        return 0
    return _tdiv(_s64(a), _s64(b)) & M64  # INT64_MIN / -1 wraps to INT64_MIN


def smod64(a: int, b: int) -> int:
    if b == 0:
        return a
    x, y = _s64(a), _s64(b)
    return (x - y * _tdiv(x, y)) & M64


def sdiv32(a: int, b: int) -> int:
    if b & M32 == 0:
        return 0
    return _tdiv(_s32(a), _s32(b)) & M32


def smod32(a: int, b: int) -> int:
    if b & M32 == 0:
        return a & M32
    x, y = _s32(a), _s32(b)
    return (x - y * _tdiv(x, y)) & M32


def bswap16(x: int) -> int:
    return ((x & 0xFF) << 8) | ((x >> 8) & 0xFF)


def bswap32(x: int) -> int:
    return int.from_bytes((x & M32).to_bytes(4, "little"), "big")


def bswap64(x: int) -> int:
    return int.from_bytes((x & M64).to_bytes(8, "little"), "big")


# --- translation -------------------------------------------------------------------------

class Runtime:
    """What translated code calls: memory, helpers, budget; one per instance."""

    def __init__(self, memory: Memory, helpers: dict[int, Callable[..., int]],
                 callx: Callable[..., int] | None) -> None:
        self.memory = memory
        self.helpers = helpers
        self.callx = callx
        self.budget = [0]
        self.stack = bytearray(STACK_BYTES)
        self.stack_cell = memory.add("stack", STACK_BASE, self.stack, True)
        self.functions: dict[int, Callable[..., int]] = {}
        self.ns: dict[str, Any] = {}
        # Per load/store site: the region cell and access size its inline cache holds.
        self.read_sites: dict[int, tuple[list[Any], int]] = {}
        self.write_sites: dict[int, tuple[list[Any], int]] = {}

    def set_buf(self, name: str, buf: bytes | bytearray) -> None:
        """Swap a region's buffer (a new chunk, conformance memory) and re-point the
        inline caches of the sites that were reading or writing it."""
        self.memory.set_buf(name, buf)
        cell = self.memory.cells[name]
        ns = self.ns
        for prefix, sites in (("R", self.read_sites), ("W", self.write_sites)):
            for pc, (c, size) in sites.items():
                if c is cell:
                    ns[f"{prefix}C{pc}"] = buf
                    ns[f"{prefix}N{pc}"] = len(buf) - size + 1

    def cached_loader(self, size: int, signed: bool) -> Callable[[int, int], int]:
        """The slow path of a load site: a checked load that also fills the site's inline
        cache (base, bound, buffer) so the next access to the same region is inline. The
        stack is never cached: its lowest valid byte moves with the call depth."""
        load = self.memory.loader(size, signed)
        get = self.memory.read_tab.get
        stack, ns, sites = self.stack_cell, self.ns, self.read_sites

        def slow_load(addr: int, pc: int) -> int:
            v = load(addr, pc)
            c = get(addr >> REGION_SHIFT)
            if c is not stack:
                ns[f"RB{pc}"], ns[f"RN{pc}"], ns[f"RC{pc}"] = c[1], len(c[0]) - size + 1, c[0]
                sites[pc] = (c, size)
            return v
        return slow_load

    def cached_storer(self, size: int) -> Callable[[int, int, int], None]:
        store = self.memory.storer(size)
        get = self.memory.write_tab.get
        stack, ns, sites = self.stack_cell, self.ns, self.write_sites

        def slow_store(addr: int, value: int, pc: int) -> None:
            store(addr, value, pc)
            c = get(addr >> REGION_SHIFT)
            if c is not stack:
                ns[f"WB{pc}"], ns[f"WN{pc}"], ns[f"WC{pc}"] = c[1], len(c[0]) - size + 1, c[0]
                sites[pc] = (c, size)
        return slow_store


def _imm64(imm: int) -> int:
    return imm & M64


class _Translator:
    def __init__(self, insns: list[Insn],
                 maps: list[tuple[bytes | bytearray, bool]] | None = None) -> None:
        self.insns = insns
        # Per map index: its value buffer and whether it is read-only (.rodata, frozen
        # before translation: loads from it fold to constants, as the kernel verifier does).
        self.maps = maps or []
        # Registers known (on the path being emitted) to hold map_value(index) + offset.
        self.known: dict[int, tuple[int, int]] = {}
        # Registers known (on the path being emitted) to hold a value below 2^32.
        self.narrow: set[int] = set()
        self.second = lddw_second_slots(insns)
        self.lines: list[str] = []
        self.read_sites: set[int] = set()
        self.write_sites: set[int] = set()

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    # One instruction -> Python statements (without control flow of the block end).
    def insn(self, i: int, ins: Insn) -> list[str]:  # noqa: C901
        op, cls, d, s = ins.op, ins.op & 7, f"r{ins.dst}", f"r{ins.src}"
        off, imm = ins.off, ins.imm
        if op == isa.LDDW:
            nxt = self.insns[i + 1]
            if ins.src == isa.PSEUDO_MAP_FD:
                return [f"{d} = MAPH{ins.imm}"]
            if ins.src == isa.PSEUDO_MAP_VALUE:
                return [f"{d} = MAPV{ins.imm} + {nxt.imm}"]
            if ins.src == isa.PSEUDO_FUNC:
                return [f"{d} = FUNC_BASE + {i + ins.imm + 1}"]
            return [f"{d} = {isa.lddw_value(ins, nxt)}"]
        if cls in (isa.ALU, isa.ALU64):
            return [self.alu(ins, cls == isa.ALU64)]
        if cls == isa.LDX:
            size = isa.SIZE_BYTES[op & 0x18]
            signed = op & 0xE0 == isa.MEMSX
            static = self.static_addr(ins.src, off, size)
            if static is not None:
                idx, at = static
                buf, ro = self.maps[idx]
                if ro:
                    v = int.from_bytes(buf[at:at + size], "little", signed=signed) & M64
                    return [f"{d} = {v}"]
                if size == 1:
                    v = f"MB{idx}[{at}]"
                    return [f"{d} = (({v} ^ 0x80) - 0x80) & M64" if signed else f"{d} = {v}"]
                un = ("S" if signed else "U") + str(size)
                return [f"{d} = {un}(MB{idx}, {at})[0]" + (" & M64" if signed else "")]
            if ins.src == 10 and -isa.STACK_SIZE <= off and off + size <= 0:
                k = off - STACK_BASE
                if size == 1:
                    v = f"STK[r10 + {k}]"
                    return [f"{d} = ((({v}) ^ 0x80) - 0x80) & M64" if signed else f"{d} = {v}"]
                un = ("S" if signed else "U") + str(size)
                tail = " & M64" if signed else ""
                return [f"{d} = {un}(STK, r10 + {k})[0]{tail}"]
            fn = ("LDS" if signed else "LD") + str(size)
            self.read_sites.add(i)
            # Inline cache: the region this site touched last (see Runtime.cached_loader).
            if size == 1:
                fast = f"((RC{i}[o] ^ 0x80) - 0x80) & M64" if signed else f"RC{i}[o]"
            else:
                fast = f"{'S' if signed else 'U'}{size}(RC{i}, o)[0]" + (" & M64" if signed else "")
            at = f"{s} + {off}" if off else s
            return [f"o = {at} - RB{i}", f"if 0 <= o < RN{i}:", f"    {d} = {fast}",
                    "else:", f"    {d} = {fn}({s} + {off}, {i})"]
        if cls in (isa.ST, isa.STX) and op & 0xE0 == isa.MEM:
            size = isa.SIZE_BYTES[op & 0x18]
            val = str(imm & ((1 << (8 * size)) - 1)) if cls == isa.ST else s
            if ins.dst == 10 and -isa.STACK_SIZE <= off and off + size <= 0:
                k = off - STACK_BASE
                if size == 1:
                    return [f"STK[r10 + {k}] = {val} & 0xFF" if cls == isa.STX
                            else f"STK[r10 + {k}] = {val}"]
                mask = "" if cls == isa.ST or size == 8 else f" & {(1 << (8 * size)) - 1}"
                return [f"P{size}(STK, r10 + {k}, {val}{mask})"]
            mask = (1 << (8 * size)) - 1
            v = val if cls == isa.ST else f"{val} & {mask}" if size < 8 else val
            static = self.static_addr(ins.dst, off, size)
            if static is not None and not self.maps[static[0]][1]:
                idx, at = static
                return [f"MB{idx}[{at}] = {v}" if size == 1 else f"P{size}(MB{idx}, {at}, {v})"]
            self.write_sites.add(i)
            fast = f"WC{i}[o] = {v}" if size == 1 else f"P{size}(WC{i}, o, {v})"
            at = f"{d} + {off}" if off else d
            return [f"o = {at} - WB{i}", f"if 0 <= o < WN{i}:", f"    {fast}",
                    "else:", f"    ST{size}({d} + {off}, {val}, {i})"]
        if cls == isa.STX:  # atomic
            size = isa.SIZE_BYTES[op & 0x18]
            call = f"ATOM({i}, {d} + {off}, {size}, {imm}, {s}, r0)"
            if imm == isa.CMPXCHG:
                return [f"r0 = {call}"]
            if imm & isa.FETCH:
                return [f"{s} = {call}"]
            return [call]
        if op == isa.CALL_OP:
            if ins.src == isa.PSEUDO_CALL:
                t = i + imm + 1
                return ["BUD[0] = b",
                        f"r0 = F{t}(r1, r2, r3, r4, r5, r10 - {isa.STACK_SIZE}, depth + 1)",
                        "b = BUD[0]", f"STKC[2] = r10 - {STACK_BASE + isa.STACK_SIZE}"]
            # Helpers get r1-r5 plus where they run (pc, r10, depth) for callbacks/faults.
            return ["BUD[0] = b", f"r0 = H{imm}(r1, r2, r3, r4, r5, {i}, r10, depth)",
                    "b = BUD[0]", f"STKC[2] = r10 - {STACK_BASE + isa.STACK_SIZE}"]
        if op == isa.CALLX_OP:
            return ["BUD[0] = b", f"r0 = CALLX({d}, r1, r2, r3, r4, r5, {i}, r10, depth)",
                    "b = BUD[0]"]
        raise AssertionError(f"insn {i}: {op:#x} is not straight-line")

    def alu(self, ins: Insn, is64: bool) -> str:
        code, x = ins.op & 0xF0, ins.op & isa.X
        d = f"r{ins.dst}"
        if code == isa.END:
            w = ins.imm
            if is64 or x:  # bswap, or be on a little-endian machine
                return f"{d} = BSWAP{w}({d})" if w != 16 else f"{d} = BSWAP16({d} & 0xFFFF)"
            return {16: f"{d} &= 0xFFFF", 32: f"{d} &= M32", 64: "pass"}[w]
        if code == isa.NEG:
            return f"{d} = -{d} & {'M64' if is64 else 'M32'}"
        if x:
            s = f"r{ins.src}"
        else:
            s = str(_imm64(ins.imm) if is64 else ins.imm & M32)
        if code == isa.MOV:
            if ins.off:
                bits = ins.off
                m, sb = (1 << bits) - 1, 1 << (bits - 1)
                return f"{d} = ((({s} & {m}) ^ {sb}) - {sb}) & {'M64' if is64 else 'M32'}"
            narrow_src = not x or ins.src in self.narrow
            return f"{d} = {s}" if is64 or narrow_src else f"{d} = {s} & M32"
        sh64 = f"({s} & 63)" if x else str(int(s) & 63)   # shift amounts are masked
        sh32 = f"({s} & 31)" if x else str(int(s) & 31)
        if is64:
            return {
                isa.ADD: f"{d} = ({d} + {s}) & M64",
                isa.SUB: f"{d} = ({d} - {s}) & M64",
                isa.MUL: f"{d} = ({d} * {s}) & M64",
                isa.OR: f"{d} |= {s}",
                isa.AND: f"{d} &= {s}",
                isa.XOR: f"{d} ^= {s}",
                isa.LSH: f"{d} = ({d} << {sh64}) & M64",
                isa.RSH: f"{d} >>= {sh64}",
                isa.ARSH: f"{d} = ((({d} ^ S64) - S64) >> {sh64}) & M64",
                isa.DIV: (f"{d} = SDIV64({d}, {s})" if ins.off else
                          f"{d} = ({d} // {s} if {s} else 0)"),
                isa.MOD: (f"{d} = SMOD64({d}, {s})" if ins.off else
                          f"{d} = ({d} % {s} if {s} else {d})"),
            }[code]
        # Registers known to be below 2^32 on this path need no masking of their inputs.
        dn = ins.dst in self.narrow
        sn = not x or ins.src in self.narrow
        dm = d if dn else f"({d} & M32)"
        y = s if sn else f"({s} & M32)"
        return {
            isa.ADD: f"{d} = ({d} + {s}) & M32",
            isa.SUB: f"{d} = ({d} - {s}) & M32",
            isa.MUL: f"{d} = ({d} * {s}) & M32",
            isa.OR: f"{d} |= {s}" if dn and sn else f"{d} = ({d} | {s}) & M32",
            isa.AND: f"{d} &= {s}" if dn or sn else f"{d} = {d} & {s} & M32",
            isa.XOR: f"{d} ^= {s}" if dn and sn else f"{d} = ({d} ^ {s}) & M32",
            isa.LSH: f"{d} = ({d} << {sh32}) & M32",
            isa.RSH: f"{d} = {dm} >> {sh32}",
            isa.ARSH: f"{d} = ((({dm} ^ S32) - S32) >> {sh32}) & M32",
            isa.DIV: (f"{d} = SDIV32({d}, {s})" if ins.off else
                      f"{d} = ({dm} // {y} if {y} else 0)"),
            isa.MOD: (f"{d} = SMOD32({d}, {s})" if ins.off else
                      f"{d} = ({dm} % {y} if {y} else {dm})"),
        }[code]

    def cond(self, ins: Insn) -> str:
        code, x, is32 = ins.op & 0xF0, ins.op & isa.X, ins.op & 7 == isa.JMP32
        d = f"r{ins.dst}"
        if is32:
            a = d if ins.dst in self.narrow else f"({d} & M32)"
            b = str(ins.imm & M32) if not x else (
                f"r{ins.src}" if ins.src in self.narrow else f"(r{ins.src} & M32)")
            sa = f"({a} ^ S32)"
            sb = f"({b} ^ S32)" if x else str((ins.imm & M32) ^ S32)
        else:
            a = d
            b = f"r{ins.src}" if x else str(ins.imm & M64)
            sa = f"({d} ^ S64)"
            sb = f"(r{ins.src} ^ S64)" if x else str((ins.imm & M64) ^ S64)
        return {
            isa.JEQ: f"{a} == {b}", isa.JNE: f"{a} != {b}", isa.JGT: f"{a} > {b}",
            isa.JGE: f"{a} >= {b}", isa.JLT: f"{a} < {b}", isa.JLE: f"{a} <= {b}",
            isa.JSET: f"{a} & {b}", isa.JSGT: f"{sa} > {sb}", isa.JSGE: f"{sa} >= {sb}",
            isa.JSLT: f"{sa} < {sb}", isa.JSLE: f"{sa} <= {sb}",
        }[code]

    def function(self, start: int, end: int) -> None:
        insns = self.insns
        leaders = {start}
        for i in range(start, end):
            if i in self.second:
                continue
            ins = insns[i]
            t = jump_target(i, ins)
            if t is not None:
                leaders.add(t)
                leaders.add(i + 1)
            elif ins.op == isa.EXIT_OP:
                leaders.add(i + 1)
        blocks = sorted(x for x in leaders if start <= x < end)
        # Loop headers (targets of backward jumps), innermost loops first: most dispatches
        # go there, so they are tested before the binary tree.
        spans: dict[int, int] = {}
        for i in range(start, end):
            t = jump_target(i, insns[i]) if i not in self.second else None
            if t is not None and t <= i:
                spans[t] = min(spans.get(t, end), i - t)
        hot = sorted(spans, key=lambda t: spans[t])[:HOT_HEADERS]
        self.bounds = {b: (blocks[k + 1] if k + 1 < len(blocks) else end)
                       for k, b in enumerate(blocks)}
        # Cap on duplicated blocks per function: big programs would otherwise spend
        # seconds in Python's compiler for little gain.
        self.inline_left = min(4 * len(blocks) + 64, INLINE_CAP)
        e = self.emit
        e(0, f"def F{start}(r1, r2, r3, r4, r5, r10, depth):")
        e(1, f"if depth >= {MAX_CALL_DEPTH}:")
        e(2, f"DEPTH({start})")
        e(1, f"STKC[2] = r10 - {STACK_BASE + isa.STACK_SIZE}")
        e(1, "r0 = r6 = r7 = r8 = r9 = 0")
        e(1, "b = BUD[0]")
        e(1, f"pc = {start}")
        e(1, "while True:")
        for k, h in enumerate(hot):
            e(2, f"{'if' if k == 0 else 'elif'} pc == {h}:")
            self.block(h, 3, 0)
        rest = [x for x in blocks if x not in hot]
        if rest:
            if hot:
                e(2, "else:")
            self.tree(rest, 0, len(rest), 3 if hot else 2, end)

    def tree(self, blocks: list[int], lo: int, hi: int, depth: int, end: int) -> None:
        if hi - lo == 1:
            self.block(blocks[lo], depth, 0)
            return
        mid = (lo + hi) // 2
        self.emit(depth, f"if pc < {blocks[mid]}:")
        self.tree(blocks, lo, mid, depth + 1, end)
        self.emit(depth, "else:")
        self.tree(blocks, mid, hi, depth + 1, end)

    def static_addr(self, reg: int, off: int, size: int) -> tuple[int, int] | None:
        """(map index, byte offset) when reg + off is a known in-bounds map value address."""
        k = self.known.get(reg)
        if k is None:
            return None
        idx, base = k
        at = base + off
        if 0 <= at and at + size <= len(self.maps[idx][0]):
            return idx, at
        return None

    def track(self, i: int, ins: Insn) -> None:
        """Update `known` and `narrow` after instruction i."""
        self.track_narrow(i, ins)
        known, op, cls = self.known, ins.op, ins.op & 7
        if op == isa.LDDW:
            if ins.src == isa.PSEUDO_MAP_VALUE and 0 <= ins.imm < len(self.maps):
                known[ins.dst] = (ins.imm, self.insns[i + 1].imm)
            else:
                known.pop(ins.dst, None)
        elif cls == isa.ALU64 and op == isa.ALU64 | isa.ADD | isa.K and ins.dst in known:
            idx, base = known[ins.dst]
            known[ins.dst] = (idx, base + ins.imm)
        elif cls == isa.ALU64 and op == isa.ALU64 | isa.MOV | isa.X and ins.off == 0 \
                and ins.src in known:
            known[ins.dst] = known[ins.src]
        elif cls in (isa.ALU, isa.ALU64, isa.LDX):
            known.pop(ins.dst, None)
        elif cls == isa.STX and op & 0xE0 == isa.ATOMIC:
            if ins.imm == isa.CMPXCHG:
                known.pop(0, None)
            elif ins.imm & isa.FETCH:
                known.pop(ins.src, None)
        elif op in (isa.CALL_OP, isa.CALLX_OP):
            for r in range(6):
                known.pop(r, None)

    def track_narrow(self, i: int, ins: Insn) -> None:
        narrow, op, cls, d = self.narrow, ins.op, ins.op & 7, ins.dst
        is_narrow: bool | None = None   # None: dst is not written
        if op == isa.LDDW:
            is_narrow = ins.src == 0 and isa.lddw_value(ins, self.insns[i + 1]) <= M32
        elif cls == isa.ALU:
            # 32-bit results are zero-extended; le64 / be64 do not exist in the 32-bit class
            # except as byte swaps whose width says how much survives.
            is_narrow = not (op & 0xF0 == isa.END and ins.imm == 64)
        elif cls == isa.ALU64:
            code, x = op & 0xF0, op & isa.X
            if code == isa.MOV and ins.off == 0:
                is_narrow = (not x and ins.imm >= 0) or (bool(x) and ins.src in narrow)
            elif code == isa.AND:
                is_narrow = (not x and ins.imm >= 0) or (bool(x) and (ins.src in narrow or d in narrow))
            elif code == isa.RSH and not x:
                is_narrow = (ins.imm & 63) >= 32 or d in narrow
            elif code == isa.END:
                is_narrow = ins.imm != 64
            else:
                is_narrow = False
        elif cls == isa.LDX:
            is_narrow = op & 0xE0 == isa.MEM and op & 0x18 != isa.DW
        elif cls == isa.STX and op & 0xE0 == isa.ATOMIC:
            w = op & 0x18 == isa.W
            if ins.imm == isa.CMPXCHG:
                (narrow.add if w else narrow.discard)(0)
            elif ins.imm & isa.FETCH:
                (narrow.add if w else narrow.discard)(ins.src)
        elif op in (isa.CALL_OP, isa.CALLX_OP):
            for r in range(6):
                narrow.discard(r)
        if is_narrow is not None:
            (narrow.add if is_narrow else narrow.discard)(d)

    def goto(self, src: int, t: int, depth: int, chain: int) -> None:
        """Continue at block t: inline a small block reached by a forward edge (tail
        duplication, so straight-line paths skip the dispatch), else go through `pc`."""
        stop = self.bounds[t]
        if (t > src and chain < 3 and stop - t <= 16 and self.inline_left > 0):
            self.inline_left -= 1
            self.block(t, depth, chain + 1, dict(self.known), set(self.narrow))
        else:
            self.emit(depth, f"pc = {t}")

    def block(self, start: int, depth: int, chain: int,
              known: dict[int, tuple[int, int]] | None = None,
              narrow: set[int] | None = None) -> None:
        """Emit a block; `known`/`narrow`: what the path inlining it knows (else nothing)."""
        self.known = known if known is not None else {}
        self.narrow = narrow if narrow is not None else set()
        stop = self.bounds[start]
        e = self.emit
        slots = [i for i in range(start, stop) if i not in self.second]
        # The budget is charged on every block but checked only where control returns to
        # the dispatch loop (every loop iteration passes there) and at exit: a run that
        # executes more instructions than its budget always fails, only a little later.
        e(depth, f"b -= {len(slots)}")
        if chain == 0:
            e(depth, "if b < 0:")
            e(depth + 1, f"BUDGET({start})")
        for i in slots:
            ins = self.insns[i]
            t = jump_target(i, ins)
            if ins.op == isa.EXIT_OP:
                if chain:
                    e(depth, "if b < 0:")
                    e(depth + 1, f"BUDGET({i})")
                e(depth, "BUD[0] = b")
                e(depth, "return r0")
                return
            if t is not None:
                if ins.op & 0xF0 == isa.JA:
                    self.goto(start, t, depth, chain)
                else:
                    saved, saved_narrow = dict(self.known), set(self.narrow)
                    e(depth, f"if {self.cond(ins)}:")
                    self.goto(start, t, depth + 1, chain)
                    self.known, self.narrow = saved, saved_narrow
                    e(depth, "else:")
                    self.goto(start, i + 1, depth + 1, chain)
                return
            for line in self.insn(i, ins):
                e(depth, line)
            self.track(i, ins)
        # Fell through into the next block (validation forbids falling off a function).
        self.goto(start, stop, depth, chain)

    def source(self) -> tuple[str, list[int]]:
        starts = function_starts(self.insns)
        ends = starts[1:] + [len(self.insns)]
        for s, t in zip(starts, ends, strict=True):
            self.function(s, t)
        return "\n".join(self.lines) + "\n", starts


def translate(insns: list[Insn]) -> tuple[str, list[int]]:
    """Python source of the program (functions F<slot>) and the function start slots."""
    return _Translator(insns).source()


def _site_globals(t: _Translator) -> dict[str, Any]:
    """Empty inline caches (bound 0: the first access takes the slow path)."""
    g: dict[str, Any] = {}
    for prefix, sites in (("R", t.read_sites), ("W", t.write_sites)):
        for pc in sites:
            g[f"{prefix}B{pc}"], g[f"{prefix}N{pc}"], g[f"{prefix}C{pc}"] = 0, 0, b""
    return g


_code_cache: OrderedDict[bytes, tuple[Any, list[int], dict[str, Any]]] = OrderedDict()


def _compiled(insns: list[Insn], maps: list[tuple[bytearray, bool]]
              ) -> tuple[Any, list[int], dict[str, Any]]:
    """Translate and compile, memoised on what the translation depends on: the
    instructions and the maps' sizes, read-only flags and read-only contents."""
    h = hashlib.sha256(isa.encode(insns))
    for buf, ro in maps:
        h.update(repr((len(buf), ro)).encode())
        if ro:
            h.update(bytes(buf))
    key = h.digest()
    hit = _code_cache.get(key)
    if hit is not None:
        _code_cache.move_to_end(key)
        return hit
    tr = _Translator(insns, maps)
    src, starts = tr.source()
    entry = (compile(src, "<ebpf>", "exec"), starts, _site_globals(tr))
    _code_cache[key] = entry
    while len(_code_cache) > CODE_CACHE_SIZE:
        _code_cache.popitem(last=False)
    return entry


def build(insns: list[Insn], rt: Runtime, memory: Memory, map_handles: list[int],
          map_values: list[int], func_base: int,
          maps: list[tuple[bytearray, bool]] | None = None) -> dict[int, Callable[..., int]]:
    """Compile the program against a runtime; returns {start slot: function}.

    `maps`: per map index its value buffer and read-only flag (for static accesses)."""
    code, starts, site_globals = _compiled(insns, maps or [])
    u = {n: struct.Struct("<" + c).unpack_from for n, c in
         (("U2", "H"), ("U4", "I"), ("U8", "Q"), ("S1", "b"), ("S2", "h"), ("S4", "i"))}
    p = {n: struct.Struct("<" + c).pack_into for n, c in (("P2", "H"), ("P4", "I"), ("P8", "Q"))}

    def budget(pc: int) -> None:
        raise BudgetExceeded(f"pc {pc}: instruction budget exhausted (a runaway loop?)")

    def depth(pc: int) -> None:
        raise ProgramFault(f"pc {pc}: call depth exceeds {MAX_CALL_DEPTH} frames")

    def atomic(pc: int, addr: int, size: int, imm: int, val: int, r0: int) -> int:
        old = memory.loader(size, False)(addr, pc)  # noqa: F841 - read checks bounds
        if not memory.writable(addr, size):
            raise memory.fault(addr, size, True, pc)
        mask = (1 << (8 * size)) - 1
        v = val & mask
        op = imm & ~isa.FETCH
        if imm == isa.XCHG:
            new = v
        elif imm == isa.CMPXCHG:
            new = v if (r0 & mask) == old else old
        else:
            new = {isa.ADD: old + v, isa.OR: old | v, isa.AND: old & v, isa.XOR: old ^ v}[op]
        memory.storer(size)(addr, new & mask, pc)
        return old

    ns = rt.ns
    ns.update({
        "M64": M64, "M32": M32, "S64": S64, "S32": S32, "STK": rt.stack,
        "STKC": rt.stack_cell, "BUD": rt.budget, "FUNC_BASE": func_base,
        "BUDGET": budget, "DEPTH": depth, "ATOM": atomic, "CALLX": rt.callx,
        "SDIV64": sdiv64, "SMOD64": smod64, "SDIV32": sdiv32, "SMOD32": smod32,
        "BSWAP16": bswap16, "BSWAP32": bswap32, "BSWAP64": bswap64, **u, **p,
    })
    ns.update(site_globals)
    for size in (1, 2, 4, 8):
        ns[f"LD{size}"] = rt.cached_loader(size, False)
        ns[f"ST{size}"] = rt.cached_storer(size)
        if size < 8:
            ns[f"LDS{size}"] = rt.cached_loader(size, True)
    for i, h in enumerate(map_handles):
        ns[f"MAPH{i}"] = h
    for i, v in enumerate(map_values):
        ns[f"MAPV{i}"] = v
    for i, (buf, _ro) in enumerate(maps or []):
        ns[f"MB{i}"] = buf
    for hid, fn in rt.helpers.items():
        ns[f"H{hid}"] = fn
    exec(code, ns)  # noqa: S102 - our own translation
    return {s: ns[f"F{s}"] for s in starts}
