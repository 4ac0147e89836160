"""Static validation: every class of invalid bytecode is rejected with a clear message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stord.engines.base import get_engine
from stord.engines.interp.engine import InterpEngine
from stord.engines.jit.runtime import LINUX_HELPERS
from stord.errors import ValidationError
from stord.program import isa
from stord.program.asm import assemble
from stord.program.isa import Insn
from stord.program.model import MapDef, Program
from stord.program.validate import validate

LINUX = {1, 2, 3, 5, 6, 7, 8, 181, 189, 190}
ARRAY = MapDef(name="counts", type=2, key_size=4, value_size=8, max_entries=4)
HASH = MapDef(name="h", type=1, key_size=4, value_size=8, max_entries=4)


def prog(insns: list[Insn] | str, maps: list[MapDef] | None = None) -> Program:
    if isinstance(insns, str):
        insns = assemble(insns)
    return Program(name="t", section="xdp", insns=insns, maps=maps or [])


def rejects(p: Program, words: str, **kw: bool) -> None:
    with pytest.raises(ValidationError) as e:
        validate(p, LINUX, **kw)
    assert words in str(e.value), str(e.value)
    # Engines validate before running: interp and jit refuse the same program with the same
    # message. (The jit validates while LLVM compiles the translation: the validator's
    # error must win over whatever the translator or LLVM makes of an invalid program.)
    for engine in (InterpEngine(), get_engine("jit")):
        with pytest.raises(ValidationError) as refused:
            engine.load(p)
        assert str(refused.value) == str(e.value)


EXIT = Insn(isa.EXIT_OP)


def test_accepts_a_valid_program_with_maps_calls_and_callbacks() -> None:
    p = prog("""
        lddw %r1, map[0]
        lddw %r2, map_value[1]+4
        lddw %r3, func cb
        call local f
        mov %r0, 2
        exit
    f:
        mov %r0, 0
        exit
    cb:
        mov %r0, 1
        exit
    """, [HASH, ARRAY])
    validate(p, LINUX)


@pytest.mark.parametrize(("insns", "words"), [
    ([], "no instructions"),
    ([Insn(0x00), EXIT], "LDDW is missing|not supported"),
    ([Insn(0x20), EXIT], "legacy"),                        # LD_ABS
    ([Insn(0x40), EXIT], "legacy"),                        # LD_IND
    ([Insn(0xFF), EXIT], "not a valid"),
    ([Insn(0xE7, 1), EXIT], "not a valid ALU"),            # ALU64 op 0xe0
    ([Insn(0x86), EXIT], "not a valid jump"),              # JMP32 | CALL
    ([Insn(0x99, 0, 1), EXIT], "not a valid load"),        # LDX MEMSX DW
    ([Insn(0x8D, 1), EXIT], "callx"),                      # not in the linux set
])
def test_unknown_opcodes(insns: list[Insn], words: str) -> None:
    with pytest.raises(ValidationError) as e:
        validate(prog(insns), LINUX)
    assert any(w in str(e.value) for w in words.split("|")), str(e.value)


@pytest.mark.parametrize(("ins", "words"), [
    (Insn(0x07, 1, 2, 0, 1), "source register must be 0"),   # add imm with src set
    (Insn(0x0F, 1, 2, 0, 5), "immediate must be 0"),         # add reg with imm set
    (Insn(0x07, 1, 0, 3, 1), "offset 3 is reserved"),
    (Insn(0x3F, 1, 2, 2, 0), "offset 2 is reserved"),        # div: off is 0 or 1 only
    (Insn(0xBC, 1, 2, 32, 0), "offset 32 is reserved"),      # movsx32 from 32 bits
    (Insn(0xB7, 1, 0, 8, 1), "sign-extending mov"),
    (Insn(0x87, 1, 0, 0, 5), "neg takes only"),
    (Insn(0xD4, 1, 0, 0, 24), "byte swap width"),
    (Insn(0xDF, 1, 0, 0, 16), "bswap takes no register"),
    (Insn(0x61, 0, 1, 0, 7), "load immediate must be 0"),
    (Insn(0x62, 1, 3, 0, 7), "source register must be 0"),
    (Insn(0x63, 1, 2, 0, 7), "store immediate must be 0"),
    (Insn(0xC3, 1, 2, 0, 0x10), "atomic operation 0x10"),
    (Insn(0xD3, 1, 2, 0, 0x01), "not a valid store or atomic"),  # atomic on bytes
    (Insn(0x95, 1), "exit takes no operands"),
    (Insn(0x05, 1, 0, 0), "ja takes no registers"),
    (Insn(0x05, 0, 0, 0, 3), "ja immediate must be 0"),
    (Insn(0x85, 0, 2, 0, 1), "kfunc"),
    (Insn(0x15, 1, 2, 0, 1), "source register must be 0"),
])
def test_reserved_fields(ins: Insn, words: str) -> None:
    rejects(prog([Insn(isa.ALU64 | isa.MOV, 0), ins, EXIT]), words)


@pytest.mark.parametrize("ins", [Insn(0xBF, 11, 1), Insn(0xBF, 1, 12), Insn(0x61, 1, 15),
                                 Insn(0x63, 13, 1), Insn(0x1D, 1, 11, 0)])
def test_registers_above_r10(ins: Insn) -> None:
    rejects(prog([ins, EXIT]), "does not exist")


@pytest.mark.parametrize("text", [
    "mov %r10, 1", "add32 %r10, %r1", "ldxdw %r10, [%r1]", "lddw %r10, 5", "neg %r10",
    "le16 %r10", "lock fetch add [%r1], %r10", "lock xchg32 [%r1], %r10",
])
def test_writes_to_r10(text: str) -> None:
    rejects(prog(text + "\nexit"), "read-only")


def test_stores_through_r10_are_fine() -> None:
    validate(prog("stdw [%r10-8], 1\nstxdw [%r10-16], %r1\nlock add [%r10-8], %r1\n"
                  "mov %r0, 0\nexit"), LINUX)


@pytest.mark.parametrize(("insns", "words"), [
    ([Insn(0x05, 0, 0, 5), EXIT], "outside the program"),
    ([Insn(0x05, 0, 0, -3), EXIT], "outside the program"),
    ([Insn(0x15, 1, 0, 1, 0), Insn(isa.LDDW, 0, 0, 0, 1), Insn(0), EXIT], "second half"),
    ([Insn(0x06, 0, 0, 0, 100), EXIT], "outside the program"),
])
def test_bad_jump_targets(insns: list[Insn], words: str) -> None:
    rejects(prog(insns), words)


def test_jump_into_another_function() -> None:
    rejects(prog("call local f\nja g\nexit\nf:\nmov %r0, 0\ng:\nexit"), "another function")


@pytest.mark.parametrize(("insns", "words"), [
    ([Insn(isa.LDDW, 1, 0, 0, 1)], "missing its second slot"),
    ([Insn(isa.LDDW, 1, 0, 0, 1), Insn(0x07, 0, 0, 0, 1), EXIT], "second slot"),
    ([Insn(isa.LDDW, 1, 0, 0, 1), Insn(0, 3), EXIT], "second slot"),
    ([Insn(isa.LDDW, 1, 0, 2, 1), Insn(0), EXIT], "offset must be 0"),
    ([Insn(isa.LDDW, 1, 3, 0, 1), Insn(0), EXIT], "source 3"),
])
def test_incomplete_or_malformed_lddw(insns: list[Insn], words: str) -> None:
    rejects(prog(insns, [ARRAY]), words)


def test_unknown_helper() -> None:
    rejects(prog("call 12345\nexit"), "helper 12345")
    rejects(prog("call 0\nexit"), "helper 0")


@pytest.mark.parametrize("insns", [
    [Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, 10), EXIT],
    [Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, -5), EXIT],
    [Insn(isa.LDDW, 1, isa.PSEUDO_FUNC, 0, 40), Insn(0), EXIT],
])
def test_bad_local_call_and_callback_targets(insns: list[Insn]) -> None:
    rejects(prog(insns), "function target")


@pytest.mark.parametrize(("text", "words"), [
    ("lddw %r1, map[2]\nexit", "map index 2"),
    ("lddw %r1, map[-1]\nexit", "map index -1"),
    ("lddw %r1, map_value[5]+0\nexit", "map index 5"),
    ("lddw %r1, map_value[0]+8\nexit", "offset 8"),    # value_size is 8
    ("lddw %r1, map_value[1]+0\nexit", "offset 0"),    # hash maps have no direct value
])
def test_bad_map_references(text: str, words: str) -> None:
    rejects(prog(text, [ARRAY, HASH]), words)


def test_program_size_limit() -> None:
    big = [Insn(isa.ALU64 | isa.MOV, 0)] * isa.MAX_INSNS + [EXIT]
    with pytest.raises(ValidationError, match="limit"):
        validate(prog(big), LINUX)


@pytest.mark.parametrize("text", [
    "mov %r0, 0",                                  # no exit at all
    "jeq %r1, 0, +1\nexit\nmov %r0, 1",            # last insn falls off
    "call local f\nexit\nf:\nmov %r0, 1",          # a function falls off its end
    "mov %r0, 0\nexit\nlddw %r1, 1",               # ends in an LDDW
])
def test_falling_off_the_end(text: str) -> None:
    rejects(prog(text), "falls off")


def test_callx_only_for_conformance() -> None:
    p = prog("mov %r2, 2\ncall %r2\nexit")
    rejects(p, "callx")
    validate(p, {0, 1, 2, 3, 4, 5}, allow_callx=True)


# Opcodes of every class (and a few that are not opcodes), for programs that are mostly
# nearly valid: the interesting refusals are the ones next to valid code.
_OPS = sorted({*(c | m for c in (isa.ALU, isa.ALU64) for m in range(0, 0xE0, 0x10)
                 for m in (m, m | isa.X)),
               *(c | m for c in (isa.JMP, isa.JMP32) for m in range(0, 0xF0, 0x10)
                 for m in (m, m | isa.X)),
               *(c | s | mode for c in (isa.LDX, isa.ST, isa.STX)
                 for s in (0x00, 0x08, 0x10, 0x18) for mode in (isa.MEM, isa.MEMSX, isa.ATOMIC)),
               isa.LDDW, 0x00, 0x20, 0xFF})


@st.composite
def near_programs(draw: st.DrawFn) -> Program:
    """A valid program (ALU, forward jumps, stack loads and stores, map and function lddw,
    a local call, exit), then one field of one instruction set at random."""
    body: list[Insn] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["alu", "jmp", "ld", "st", "lddw"]))
        r = draw(st.integers(0, 9))
        if kind == "alu":
            op = draw(st.sampled_from([isa.ALU64 | isa.MOV, isa.ALU | isa.ADD,
                                       isa.ALU64 | isa.DIV | isa.X]))
            body.append(Insn(op, r, draw(st.integers(0, 9)), 0, 0) if op & isa.X else
                        Insn(op, r, 0, 0, draw(st.integers(-3, 3))))
        elif kind == "jmp":
            body.append(Insn(isa.JMP | isa.JEQ, r, 0, 0, 1))   # off fixed below
        elif kind == "ld":
            body.append(Insn(isa.LDX | isa.MEM | isa.DW, r, 10, -8, 0))
        elif kind == "st":
            body.append(Insn(isa.STX | isa.MEM | isa.DW, 10, r, -8, 0))
        else:
            body += [Insn(isa.LDDW, r, draw(st.sampled_from([0, isa.PSEUDO_MAP_FD])), 0, 0),
                     Insn(0)]
    n = len(body)
    insns = [ins._replace(off=draw(st.integers(0, n - 1 - i))) if ins.op == isa.JMP | isa.JEQ
             else ins for i, ins in enumerate(body)]
    insns += [Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, 1), EXIT,
              Insn(isa.ALU64 | isa.MOV, 0, 0, 0, 7), EXIT]
    if draw(st.booleans()):   # one field of one instruction, anything
        k = draw(st.integers(0, len(insns) - 1))
        field = draw(st.sampled_from(["op", "dst", "src", "off", "imm"]))
        value = draw(st.sampled_from(_OPS) if field == "op" else
                     st.integers(0, 15) if field in ("dst", "src") else
                     st.integers(-(1 << 15), (1 << 15) - 1) if field == "off" else
                     st.sampled_from([0, 1, 2, 5, -1, -7, 181, 0x7FFF_FFFF, -(1 << 31)]))
        insns[k] = insns[k]._replace(**{field: value})
    return prog(insns, [ARRAY, HASH])


@given(near_programs())
@settings(max_examples=300, deadline=None)
def test_engines_refuse_what_the_validator_refuses(p: Program) -> None:
    """Random near-valid programs: interp and jit refuse exactly the programs the validator
    refuses, with its message (the jit translates and compiles while the checks run: no
    translator or LLVM error may stand in for them), and load the rest."""
    try:
        validate(p, set(LINUX_HELPERS))
        want = None
    except ValidationError as e:
        want = str(e)
    for engine in (InterpEngine(), get_engine("jit")):
        try:
            engine.load(p).close()
            got = None
        except ValidationError as e:
            got = str(e)
        assert got == want, (engine.name, p.insns)
