"""Assembler and disassembler for the ubpf / bpf_conformance eBPF assembly syntax.

    mov %r0, 1              ldxdw %r0, [%r1+8]        jeq %r1, 0, +2 / jeq %r1, 0, label
    lddw %r0, 0x1122334455667788                       call 5 / call local f / call %r2
    lock fetch add32 [%r10-4], %r1                     lock cmpxchg [%r10-8], %r1

Besides the upstream forms, three LDDW forms name the kernel's pseudo sources so that
relocated programs survive a disassemble/assemble round trip:
`lddw %r1, map[3]`, `lddw %r1, map_value[3]+16`, `lddw %r1, func +5` (or a label).
As upstream, the label `exit` means the first `exit` instruction unless defined.
"""

from __future__ import annotations

import re

from stord.errors import ValidationError
from stord.program import isa
from stord.program.isa import Insn


class AsmError(ValidationError):
    """Assembly text that does not assemble; the message names the line."""


_ALU_OPS = {
    "add": isa.ADD, "sub": isa.SUB, "mul": isa.MUL, "div": isa.DIV, "sdiv": isa.DIV,
    "or": isa.OR, "and": isa.AND, "lsh": isa.LSH, "rsh": isa.RSH, "neg": isa.NEG,
    "mod": isa.MOD, "smod": isa.MOD, "xor": isa.XOR, "mov": isa.MOV, "arsh": isa.ARSH,
}
_JMP_OPS = {
    "jeq": isa.JEQ, "jgt": isa.JGT, "jge": isa.JGE, "jset": isa.JSET, "jne": isa.JNE,
    "jsgt": isa.JSGT, "jsge": isa.JSGE, "jlt": isa.JLT, "jle": isa.JLE, "jslt": isa.JSLT,
    "jsle": isa.JSLE,
}
_SIZES = {"b": isa.B, "h": isa.H, "w": isa.W, "dw": isa.DW}
_ATOMIC_OPS = {"add": isa.ADD, "or": isa.OR, "and": isa.AND, "xor": isa.XOR}
_MOVSX = {"movsx832": (isa.ALU, 8), "movsx1632": (isa.ALU, 16), "movsx864": (isa.ALU64, 8),
          "movsx1664": (isa.ALU64, 16), "movsx3264": (isa.ALU64, 32)}

_REG_RE = re.compile(r"%r(\d+)$")
_MEM_RE = re.compile(r"\[\s*(%r\d+)\s*(?:([+-])\s*(\w+))?\s*\]$")
_PSEUDO_RE = re.compile(r"(map|map_value)\[(-?\w+)\](?:\s*\+\s*(\w+))?$")


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"bad number {text!r}") from None


def _imm32(text: str) -> int:
    """A 32-bit immediate: accepts -2^31 .. 2^32-1, stored as signed like the encoding."""
    v = _int(text)
    if not -(1 << 31) <= v < (1 << 32):
        raise ValueError(f"immediate {text} does not fit in 32 bits")
    return v - (1 << 32) if v >= (1 << 31) else v


def _off16(v: int) -> int:
    if not -(1 << 15) <= v < (1 << 16):
        raise ValueError(f"offset {v} does not fit in 16 bits")
    return v - (1 << 16) if v >= (1 << 15) else v


def _reg(text: str) -> int:
    m = _REG_RE.match(text)
    if not m or int(m.group(1)) > 15:
        raise ValueError(f"bad register {text!r}")
    return int(m.group(1))


def _mem(text: str) -> tuple[int, int]:
    m = _MEM_RE.match(text)
    if not m:
        raise ValueError(f"bad memory operand {text!r} (expected [%rN+off])")
    off = 0
    if m.group(2):
        off = _int(m.group(3)) * (-1 if m.group(2) == "-" else 1)
    return _reg(m.group(1)), _off16(off)


class _Assembler:
    def __init__(self) -> None:
        self.out: list[Insn] = []
        self.labels: dict[str, int] = {}
        # (slot, label, field, line number): jumps to resolve once all labels are known
        self.fixups: list[tuple[int, str, str, int]] = []
        self.first_exit: int | None = None

    def target(self, text: str, field: str, lineno: int) -> int:
        if text[:1] in "+-" or text[:1].isdigit():
            return _int(text)
        if not re.match(r"[A-Za-z_.$][\w.$]*$", text):
            raise ValueError(f"bad jump target {text!r}")
        self.fixups.append((len(self.out), text, field, lineno))
        return 0

    def emit(self, mnem: str, ops: list[str], lineno: int) -> None:
        def need(n: int) -> None:
            if len(ops) != n:
                raise ValueError(f"{mnem} takes {n} operand(s), got {len(ops)}")

        out = self.out
        if mnem == "exit":
            need(0)
            if self.first_exit is None:
                self.first_exit = len(out)
            out.append(Insn(isa.EXIT_OP))
        elif mnem == "lddw":
            need(2)
            dst = _reg(ops[0])
            pm = _PSEUDO_RE.match(ops[1])
            if pm:
                kind, idx, off = pm.group(1), _int(pm.group(2)), _int(pm.group(3) or "0")
                if kind == "map" and pm.group(3):
                    raise ValueError("map[N] takes no offset (use map_value[N]+off)")
                src = isa.PSEUDO_MAP_FD if kind == "map" else isa.PSEUDO_MAP_VALUE
                out += [Insn(isa.LDDW, dst, src, 0, _imm32(str(idx))), Insn(0, 0, 0, 0, _imm32(str(off)))]
            elif ops[1].startswith("func "):
                imm = self.target(ops[1][5:].strip(), "imm", lineno)
                out += [Insn(isa.LDDW, dst, isa.PSEUDO_FUNC, 0, imm), Insn(0)]
            else:
                v = _int(ops[1])
                if not -(1 << 63) <= v < (1 << 64):
                    raise ValueError(f"immediate {ops[1]} does not fit in 64 bits")
                v &= (1 << 64) - 1
                lo, hi = v & 0xFFFFFFFF, v >> 32
                out += [Insn(isa.LDDW, dst, 0, 0, _imm32(str(lo))), Insn(0, 0, 0, 0, _imm32(str(hi)))]
        elif mnem == "call":
            ops = " ".join(ops).split()  # "call local f": words, not comma operands
            if len(ops) == 1 and ops[0].startswith("%"):
                out.append(Insn(isa.CALLX_OP, _reg(ops[0])))
            elif len(ops) == 1:
                out.append(Insn(isa.CALL_OP, 0, 0, 0, _imm32(ops[0])))
            else:
                need(2)
                if ops[0] == "local":
                    imm = self.target(ops[1], "imm", lineno)
                    out.append(Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, imm))
                elif ops[0] == "helper":
                    out.append(Insn(isa.CALL_OP, 0, 0, 0, _imm32(ops[1])))
                else:
                    raise ValueError(f"bad call mode {ops[0]!r} (helper or local)")
        elif mnem in ("ja", "ja32"):
            need(1)
            if mnem == "ja":
                out.append(Insn(isa.JMP | isa.JA, 0, 0, _off16(self.target(ops[0], "off", lineno))))
            else:
                out.append(Insn(isa.JMP32 | isa.JA, 0, 0, 0, self.target(ops[0], "imm", lineno)))
        elif mnem.rstrip("32") in _JMP_OPS and mnem[len(mnem.rstrip("32")):] in ("", "32"):
            need(3)
            base = mnem.rstrip("32")
            cls = isa.JMP32 if mnem.endswith("32") else isa.JMP
            dst = _reg(ops[0])
            off = _off16(self.target(ops[2], "off", lineno))
            if ops[1].startswith("%"):
                out.append(Insn(cls | _JMP_OPS[base] | isa.X, dst, _reg(ops[1]), off))
            else:
                out.append(Insn(cls | _JMP_OPS[base] | isa.K, dst, 0, off, _imm32(ops[1])))
        elif mnem in _MOVSX:
            need(2)
            cls, bits = _MOVSX[mnem]
            out.append(Insn(cls | isa.MOV | isa.X, _reg(ops[0]), _reg(ops[1]), bits))
        elif m := re.match(r"(be|le|bswap|swap)(16|32|64)$", mnem):
            need(1)
            op = {"le": isa.ALU | isa.END | isa.K, "be": isa.ALU | isa.END | isa.X}.get(
                m.group(1), isa.ALU64 | isa.END | isa.K)
            out.append(Insn(op, _reg(ops[0]), 0, 0, int(m.group(2))))
        elif m := re.match(r"(ldx|ldxs|st|stx)(b|h|w|dw)$", mnem):
            need(2)
            kind, size = m.group(1), _SIZES[m.group(2)]
            if kind in ("ldx", "ldxs"):
                mode = isa.MEMSX if kind == "ldxs" else isa.MEM
                if kind == "ldxs" and size == isa.DW:
                    raise ValueError("there is no sign-extending 64-bit load")
                src, off = _mem(ops[1])
                out.append(Insn(isa.LDX | mode | size, _reg(ops[0]), src, off))
            elif kind == "st":
                dst, off = _mem(ops[0])
                out.append(Insn(isa.ST | isa.MEM | size, dst, 0, off, _imm32(ops[1])))
            else:
                dst, off = _mem(ops[0])
                out.append(Insn(isa.STX | isa.MEM | size, dst, _reg(ops[1]), off))
        elif mnem == "lock":
            self.atomic(ops)
        else:
            base = mnem[:-2] if mnem.endswith("32") else mnem
            if base not in _ALU_OPS:
                raise ValueError(f"unknown mnemonic {mnem!r}")
            cls = isa.ALU if mnem.endswith("32") else isa.ALU64
            off = 1 if base in ("sdiv", "smod") else 0
            op = cls | _ALU_OPS[base]
            if base == "neg":
                need(1)
                out.append(Insn(op, _reg(ops[0])))
                return
            need(2)
            if ops[1].startswith("%"):
                out.append(Insn(op | isa.X, _reg(ops[0]), _reg(ops[1]), off))
            else:
                out.append(Insn(op | isa.K, _reg(ops[0]), 0, off, _imm32(ops[1])))

    def atomic(self, ops: list[str]) -> None:
        # "lock [fetch] op[32] [%rD+off], %rS": the first operand holds the words.
        words = ops[0].split() if ops else []
        if len(ops) != 2 or not words:
            raise ValueError("lock takes: lock [fetch] OP [%rD+off], %rS")
        fetch = words[0] == "fetch"
        if fetch:
            words = words[1:]
        if len(words) != 2:
            raise ValueError("lock takes: lock [fetch] OP [%rD+off], %rS")
        name, mem = words
        size = isa.W if name.endswith("32") else isa.DW
        base = name[:-2] if name.endswith("32") else name
        if base in _ATOMIC_OPS:
            imm = _ATOMIC_OPS[base] | (isa.FETCH if fetch else 0)
        elif base in ("xchg", "cmpxchg"):
            imm = isa.XCHG if base == "xchg" else isa.CMPXCHG  # both always fetch
        else:
            raise ValueError(f"unknown atomic operation {name!r}")
        dst, off = _mem(mem)
        self.out.append(Insn(isa.STX | isa.ATOMIC | size, dst, _reg(ops[1]), off, imm))

    def resolve(self) -> None:
        for slot, label, field, lineno in self.fixups:
            target = self.labels.get(label)
            if target is None and label == "exit":
                target = self.first_exit
            if target is None:
                raise AsmError(f"line {lineno}: undefined label {label!r}")
            rel = target - slot - 1
            ins = self.out[slot]
            if field == "off":
                try:
                    self.out[slot] = ins._replace(off=_off16(rel))
                except ValueError as e:
                    raise AsmError(f"line {lineno}: jump to {label!r}: {e}") from None
            else:
                self.out[slot] = ins._replace(imm=rel)


def _split_operands(rest: str) -> list[str]:
    """Split on commas that are not inside [...]; 'lock' keeps its words in operand 0."""
    ops, depth, cur = [], 0, ""
    for ch in rest:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            ops.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        ops.append(cur.strip())
    return ops


def assemble(text: str) -> list[Insn]:
    """Assembly text -> instructions (LDDW takes two slots). Raises AsmError with the line."""
    a = _Assembler()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split("//", 1)[0].strip()
        while (m := re.match(r"([A-Za-z_.$][\w.$]*)\s*:(.*)$", line)):
            label, line = m.group(1), m.group(2).strip()
            if label in a.labels:
                raise AsmError(f"line {lineno}: duplicate label {label!r}")
            a.labels[label] = len(a.out)
        if not line:
            continue
        mnem, _, rest = line.partition(" ")
        mnem = mnem.lower()
        ops = _split_operands(rest)
        try:
            a.emit(mnem, ops, lineno)
        except ValueError as e:
            raise AsmError(f"line {lineno}: {e}: {raw.strip()!r}") from None
    a.resolve()
    return a.out


# --- disassembler -------------------------------------------------------------------------

_ALU_NAMES = {v: k for k, v in _ALU_OPS.items() if k not in ("sdiv", "smod")}
_JMP_NAMES = {v: k for k, v in _JMP_OPS.items()}
_SIZE_NAMES = {v: k for k, v in _SIZES.items()}
_ATOMIC_NAMES = {v: k for k, v in _ATOMIC_OPS.items()}


def _rel(n: int) -> str:
    return f"+{n}" if n >= 0 else str(n)


def _memop(reg: int, off: int) -> str:
    return f"[%r{reg}{'+' if off >= 0 else '-'}{abs(off)}]"


def disassemble_one(ins: Insn, nxt: Insn | None = None) -> str:
    """One instruction (and for LDDW its second slot) as assembly text."""
    op, cls = ins.op, ins.op & 7
    if op == isa.LDDW:
        if ins.src == isa.PSEUDO_MAP_FD:
            return f"lddw %r{ins.dst}, map[{ins.imm}]"
        if ins.src == isa.PSEUDO_MAP_VALUE:
            return f"lddw %r{ins.dst}, map_value[{ins.imm}]+{nxt.imm if nxt else 0}"
        if ins.src == isa.PSEUDO_FUNC:
            return f"lddw %r{ins.dst}, func {_rel(ins.imm)}"
        if nxt is None:
            return f"lddw %r{ins.dst}, <missing second slot>"
        return f"lddw %r{ins.dst}, {isa.lddw_value(ins, nxt):#x}"
    if cls in (isa.ALU, isa.ALU64):
        sfx = "32" if cls == isa.ALU else ""
        code = op & 0xF0
        if code == isa.END:
            if cls == isa.ALU64:
                return f"bswap{ins.imm} %r{ins.dst}"
            return f"{'be' if op & isa.X else 'le'}{ins.imm} %r{ins.dst}"
        if code == isa.MOV and op & isa.X and ins.off in (8, 16, 32):
            return f"movsx{ins.off}{'32' if cls == isa.ALU else '64'} %r{ins.dst}, %r{ins.src}"
        name = _ALU_NAMES.get(code, f"alu{code:#x}")
        if code in (isa.DIV, isa.MOD) and ins.off == 1:
            name = "s" + name
        if code == isa.NEG:
            return f"{name}{sfx} %r{ins.dst}"
        src = f"%r{ins.src}" if op & isa.X else str(ins.imm)
        return f"{name}{sfx} %r{ins.dst}, {src}"
    if cls in (isa.JMP, isa.JMP32):
        code = op & 0xF0
        if op == isa.EXIT_OP:
            return "exit"
        if op == isa.CALL_OP:
            if ins.src == isa.PSEUDO_CALL:
                return f"call local {_rel(ins.imm)}"
            return f"call {ins.imm}"
        if op == isa.CALLX_OP:
            return f"call %r{ins.dst}"
        if code == isa.JA:
            return f"ja32 {_rel(ins.imm)}" if cls == isa.JMP32 else f"ja {_rel(ins.off)}"
        name = _JMP_NAMES.get(code, f"jmp{code:#x}") + ("32" if cls == isa.JMP32 else "")
        src = f"%r{ins.src}" if op & isa.X else str(ins.imm)
        return f"{name} %r{ins.dst}, {src}, {_rel(ins.off)}"
    size = _SIZE_NAMES.get(op & 0x18, "?")
    mode = op & 0xE0
    if cls == isa.LDX:
        s = "s" if mode == isa.MEMSX else ""
        return f"ldx{s}{size} %r{ins.dst}, {_memop(ins.src, ins.off)}"
    if cls == isa.ST:
        return f"st{size} {_memop(ins.dst, ins.off)}, {ins.imm}"
    if cls == isa.STX and mode == isa.ATOMIC:
        sfx = "32" if (op & 0x18) == isa.W else ""
        if ins.imm == isa.XCHG:
            name = "xchg"
        elif ins.imm == isa.CMPXCHG:
            name = "cmpxchg"
        else:
            base = _ATOMIC_NAMES.get(ins.imm & ~isa.FETCH, f"atomic{ins.imm:#x}")
            name = ("fetch " if ins.imm & isa.FETCH else "") + base
        return f"lock {name}{sfx} {_memop(ins.dst, ins.off)}, %r{ins.src}"
    if cls == isa.STX:
        return f"stx{size} {_memop(ins.dst, ins.off)}, %r{ins.src}"
    return f".insn {op:#04x} dst={ins.dst} src={ins.src} off={ins.off} imm={ins.imm}"


def disassemble(insns: list[Insn]) -> str:
    """Instructions -> assembly text, one line per instruction (LDDW pairs on one line)."""
    lines = []
    i = 0
    while i < len(insns):
        ins = insns[i]
        if ins.op == isa.LDDW:
            lines.append(disassemble_one(ins, insns[i + 1] if i + 1 < len(insns) else None))
            i += 2
        else:
            lines.append(disassemble_one(ins))
            i += 1
    return "\n".join(lines) + "\n"
