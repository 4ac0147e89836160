"""Static validation of bytecode: what every engine checks before it runs a program.

This is not the kernel verifier (no value tracking); it rejects what no engine could run
safely or meaningfully: unknown opcodes and reserved fields, bad registers, writes to the
frame pointer, jumps out of range / between functions / into the middle of an LDDW,
broken LDDW pairs, unknown helpers, bad call targets and map indexes, programs whose
functions fall off their end. Run-time properties (memory bounds, call depth, loop
termination) are the engine's job.
"""

from __future__ import annotations

from stord.errors import ValidationError
from stord.program import isa
from stord.program.asm import disassemble_one
from stord.program.isa import Insn
from stord.program.model import Program

_ALU_CODES = {isa.ADD, isa.SUB, isa.MUL, isa.DIV, isa.OR, isa.AND, isa.LSH, isa.RSH,
              isa.NEG, isa.MOD, isa.XOR, isa.MOV, isa.ARSH, isa.END}
_COND_JUMPS = {isa.JEQ, isa.JGT, isa.JGE, isa.JSET, isa.JNE, isa.JSGT, isa.JSGE, isa.JLT,
               isa.JLE, isa.JSLT, isa.JSLE}
_ATOMIC_IMMS = {isa.ADD, isa.OR, isa.AND, isa.XOR, isa.ADD | isa.FETCH, isa.OR | isa.FETCH,
                isa.AND | isa.FETCH, isa.XOR | isa.FETCH, isa.XCHG, isa.CMPXCHG}
_LDDW_SRCS = {0, isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE, isa.PSEUDO_FUNC}


def function_starts(insns: list[Insn]) -> list[int]:
    """Slots where functions begin: 0, local call targets and PSEUDO_FUNC targets (sorted).

    Targets out of range are left out (validate reports them)."""
    starts = {0}
    n = len(insns)
    for i, ins in enumerate(insns):
        if (ins.op == isa.CALL_OP and ins.src == isa.PSEUDO_CALL) or (
                ins.op == isa.LDDW and ins.src == isa.PSEUDO_FUNC):
            t = i + ins.imm + 1
            if 0 <= t < n:
                starts.add(t)
    return sorted(starts)


def lddw_second_slots(insns: list[Insn]) -> set[int]:
    out = set()
    i = 0
    while i < len(insns):
        if insns[i].op == isa.LDDW:
            out.add(i + 1)
            i += 2
        else:
            i += 1
    return out


def jump_target(i: int, ins: Insn) -> int | None:
    """Where a jump at slot i goes, or None if it is not a jump."""
    cls = ins.op & 7
    if cls not in (isa.JMP, isa.JMP32):
        return None
    code = ins.op & 0xF0
    if code == isa.JA:
        return i + 1 + (ins.imm if cls == isa.JMP32 else ins.off)
    if code in _COND_JUMPS:
        return i + 1 + ins.off
    return None


def validate(prog: Program, helpers: set[int], *, allow_callx: bool = False) -> None:
    """Raise ValidationError naming the first problem (slot and instruction), else None.

    `helpers`: the helper ids the engine offers. `allow_callx`: accept `call %rN`
    (only the conformance helper set, where the register holds a helper id)."""
    insns = prog.insns
    n = len(insns)
    if n == 0:
        raise ValidationError("program has no instructions")
    if n > isa.MAX_INSNS:
        raise ValidationError(f"program has {n} instructions (limit {isa.MAX_INSNS})")
    second = lddw_second_slots(insns)
    starts = function_starts(insns)
    func_of = _function_index(n, starts)
    for i, ins in enumerate(insns):
        if i in second:
            continue

        def bad(why: str, i: int = i, ins: Insn = ins) -> ValidationError:
            nxt = insns[i + 1] if ins.op == isa.LDDW and i + 1 < n else None
            return ValidationError(f"insn {i} ({disassemble_one(ins, nxt)}): {why}")

        _check_insn(i, ins, insns, prog, helpers, allow_callx, bad)
        t = jump_target(i, ins)
        if t is not None:
            if not 0 <= t < n:
                raise bad(f"jump target {t} is outside the program (0..{n - 1})")
            if t in second:
                raise bad(f"jump target {t} is the second half of an LDDW")
            if func_of[t] != func_of[i]:
                raise bad(f"jump target {t} is in another function")
        if ins.op == isa.CALL_OP and ins.src == isa.PSEUDO_CALL or (
                ins.op == isa.LDDW and ins.src == isa.PSEUDO_FUNC):
            t = i + ins.imm + 1
            if not 0 <= t < n or t in second:
                raise bad(f"function target {t} is not an instruction of the program")
    # Each function must end in exit or an unconditional jump (no falling off the end).
    ends = starts[1:] + [n]
    for start, end in zip(starts, ends, strict=True):
        last = end - 1
        if last in second:
            last -= 1
        ins = insns[last]
        if not (ins.op == isa.EXIT_OP or ins.op in (isa.JMP | isa.JA, isa.JMP32 | isa.JA)):
            where = "program" if start == 0 and end == n else f"function at insn {start}"
            raise ValidationError(f"{where} falls off its end: insn {last} "
                                  f"({disassemble_one(ins)}) is not exit or ja")


def _function_index(n: int, starts: list[int]) -> list[int]:
    out = [0] * n
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else n
        out[s:e] = [k] * (e - s)
    return out


def _check_insn(i, ins, insns, prog, helpers, allow_callx, bad) -> None:  # noqa: C901
    op, cls, dst, src, off, imm = ins.op, ins.op & 7, ins.dst, ins.src, ins.off, ins.imm
    if dst > 10 or src > 10:
        raise bad(f"register r{max(dst, src)} does not exist (r0..r10)")

    def no_write_r10(reg: int = dst) -> None:
        if reg == 10:
            raise bad("r10 (the frame pointer) is read-only")

    if cls == isa.LD:
        if op != isa.LDDW:
            raise bad(f"opcode {op:#04x} is not supported (legacy LD_ABS/LD_IND or reserved)")
        if off != 0:
            raise bad("LDDW offset must be 0")
        no_write_r10()
        if i + 1 >= len(insns):
            raise bad("LDDW is missing its second slot")
        nxt = insns[i + 1]
        if nxt.op or nxt.dst or nxt.src or nxt.off:
            raise bad("the second slot of LDDW must have opcode, registers and offset 0")
        if src not in _LDDW_SRCS:
            raise bad(f"LDDW source {src} is not supported")
        if src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
            if not 0 <= imm < len(prog.maps):
                raise bad(f"map index {imm} does not exist ({len(prog.maps)} maps)")
            if src == isa.PSEUDO_MAP_FD and nxt.imm:
                raise bad("LDDW of a map takes no offset")
            if src == isa.PSEUDO_MAP_VALUE:
                m = prog.maps[imm]
                if (m.type != 2 and not m.is_global_data) or not 0 <= nxt.imm < m.value_size:
                    raise bad(f"offset {nxt.imm} into map {m.name!r} is invalid")
        elif src == isa.PSEUDO_FUNC and nxt.imm:
            raise bad("LDDW of a function takes no second immediate")
        return
    if cls == isa.LDX:
        mode, size = op & 0xE0, op & 0x18
        if mode not in (isa.MEM, isa.MEMSX) or (mode == isa.MEMSX and size == isa.DW):
            raise bad(f"opcode {op:#04x} is not a valid load")
        if imm != 0:
            raise bad("load immediate must be 0")
        no_write_r10()
        return
    if cls == isa.ST:
        if op & 0xE0 != isa.MEM:
            raise bad(f"opcode {op:#04x} is not a valid store")
        if src != 0:
            raise bad("store-immediate source register must be 0")
        return
    if cls == isa.STX:
        mode, size = op & 0xE0, op & 0x18
        if mode == isa.MEM:
            if imm != 0:
                raise bad("store immediate must be 0")
            return
        if mode != isa.ATOMIC or size not in (isa.W, isa.DW):
            raise bad(f"opcode {op:#04x} is not a valid store or atomic")
        if imm not in _ATOMIC_IMMS:
            raise bad(f"atomic operation {imm:#x} is not supported")
        if imm & isa.FETCH:
            no_write_r10(src)
        return
    if cls in (isa.ALU, isa.ALU64):
        code = op & 0xF0
        if code not in _ALU_CODES:
            raise bad(f"opcode {op:#04x} is not a valid ALU operation")
        no_write_r10()
        x = op & isa.X
        if code == isa.END:
            if cls == isa.ALU64 and x:
                raise bad("bswap takes no register source")
            if imm not in (16, 32, 64) or src or off:
                raise bad("byte swap width must be 16, 32 or 64 with src and offset 0")
            return
        if code == isa.NEG:
            if x or src or imm or off:
                raise bad("neg takes only a destination register")
            return
        if x and imm:
            raise bad("immediate must be 0 with a register source")
        if not x and src:
            raise bad("source register must be 0 with an immediate")
        if code in (isa.DIV, isa.MOD):
            ok_off = (0, 1)
        elif code == isa.MOV:
            ok_off = (0, 8, 16, 32) if cls == isa.ALU64 else (0, 8, 16)
            if off and not x:
                raise bad("sign-extending mov takes a register source")
        else:
            ok_off = (0,)
        if off not in ok_off:
            raise bad(f"offset {off} is reserved for this operation")
        return
    # JMP / JMP32
    code = op & 0xF0
    if cls == isa.JMP and op == isa.EXIT_OP:
        if dst or src or off or imm:
            raise bad("exit takes no operands")
        return
    if cls == isa.JMP and op == isa.CALL_OP:
        if dst or off:
            raise bad("call has dst and offset 0")
        if src == isa.PSEUDO_CALL:
            return  # target checked by the caller
        if src != 0:
            raise bad(f"call source {src} (kfunc or unknown) is not supported")
        if imm not in helpers:
            raise bad(f"helper {imm} is not available")
        return
    if cls == isa.JMP and op == isa.CALLX_OP:
        if not allow_callx:
            raise bad("indirect calls (callx) are not supported")
        if src or off or imm:
            raise bad("callx has src, offset and immediate 0")
        return
    if code == isa.JA:
        if op & isa.X or dst or src:
            raise bad("ja takes no registers")
        if cls == isa.JMP and imm:
            raise bad("ja immediate must be 0 (use ja32 for 32-bit offsets)")
        if cls == isa.JMP32 and off:
            raise bad("ja32 offset field must be 0")
        return
    if code not in _COND_JUMPS:
        raise bad(f"opcode {op:#04x} is not a valid jump")
    if op & isa.X and imm:
        raise bad("immediate must be 0 with a register source")
    if not op & isa.X and src:
        raise bad("source register must be 0 with an immediate")
