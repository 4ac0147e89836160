"""The assembler against the upstream vectors' encodings and RFC 9669's opcode table."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stord.program import isa
from stord.program.asm import AsmError, assemble, disassemble
from stord.program.isa import Insn

VECTORS = Path("/work/shared/conformance/tests")


def asm_section(path: Path) -> str:
    out, on = [], False
    for line in path.read_text().splitlines():
        if line.startswith("--"):
            on = line[2:].strip() == "asm"
            continue
        if on:
            out.append(line)
    return "\n".join(out)


def test_vector_files_exist() -> None:
    assert len(list(VECTORS.glob("*.data"))) == 313


@pytest.mark.parametrize("path", sorted(VECTORS.glob("*.data")), ids=lambda p: p.stem)
def test_round_trip_every_vector(path: Path) -> None:
    """asm -> encode -> decode -> disassemble -> asm gives the same instructions."""
    insns = assemble(asm_section(path))
    decoded = isa.decode(isa.encode(insns))
    assert decoded == insns
    assert assemble(disassemble(decoded)) == insns


def test_raw_section_matches_upstream_encoding() -> None:
    """lddw.data carries both forms: our assembly must equal the upstream raw words."""
    path = VECTORS / "lddw.data"
    raw, on = [], False
    for line in path.read_text().splitlines():
        if line.startswith("--"):
            on = line[2:].strip() == "raw"
            continue
        if on and line.strip():
            raw.append(int(line.split("#")[0].strip(), 16).to_bytes(8, "little"))
    assert isa.encode(assemble(asm_section(path))) == b"".join(raw)


# Opcode bytes from RFC 9669's appendix table (written out independently of isa.py).
RFC_OPCODES = [
    ("add %r1, 2", 0x07), ("add %r1, %r2", 0x0F), ("add32 %r1, 2", 0x04),
    ("add32 %r1, %r2", 0x0C), ("sub %r1, %r2", 0x1F), ("mul32 %r1, 3", 0x24),
    ("div %r1, %r2", 0x3F), ("or %r1, 1", 0x47), ("and32 %r1, %r2", 0x5C),
    ("lsh %r1, 3", 0x67), ("rsh32 %r1, %r2", 0x7C), ("neg %r1", 0x87), ("neg32 %r1", 0x84),
    ("mod %r1, 3", 0x97), ("xor %r1, %r2", 0xAF), ("mov %r1, %r2", 0xBF),
    ("mov32 %r1, 5", 0xB4), ("arsh %r1, 1", 0xC7), ("arsh32 %r1, %r2", 0xCC),
    ("le16 %r1", 0xD4), ("be32 %r1", 0xDC), ("bswap64 %r1", 0xD7),
    ("ja +1", 0x05), ("jeq %r1, 1, +1", 0x15), ("jeq %r1, %r2, +1", 0x1D),
    ("jgt32 %r1, 1, +1", 0x26), ("jsge %r1, %r2, +1", 0x7D), ("jslt32 %r1, %r2, +1", 0xCE),
    ("jsle %r1, 1, +1", 0xD5), ("jset %r1, 1, +1", 0x45), ("jne32 %r1, 1, +1", 0x56),
    ("call 1", 0x85), ("exit", 0x95), ("ja32 +1", 0x06),
    ("ldxw %r0, [%r1+4]", 0x61), ("ldxh %r0, [%r1]", 0x69), ("ldxb %r0, [%r1]", 0x71),
    ("ldxdw %r0, [%r1]", 0x79), ("ldxsb %r0, [%r1]", 0x91), ("ldxsh %r0, [%r1]", 0x89),
    ("ldxsw %r0, [%r1]", 0x81), ("stw [%r1], 1", 0x62), ("sth [%r1], 1", 0x6A),
    ("stb [%r1], 1", 0x72), ("stdw [%r1], 1", 0x7A), ("stxw [%r1], %r2", 0x63),
    ("stxh [%r1], %r2", 0x6B), ("stxb [%r1], %r2", 0x73), ("stxdw [%r1], %r2", 0x7B),
    ("lock add32 [%r1], %r2", 0xC3), ("lock add [%r1], %r2", 0xDB),
]


@pytest.mark.parametrize(("text", "opcode"), RFC_OPCODES)
def test_opcode_bytes(text: str, opcode: int) -> None:
    assert isa.encode(assemble(text))[0] == opcode


def test_field_encodings() -> None:
    sdiv, smod = assemble("sdiv %r1, %r2\nsmod32 %r1, 7")
    assert (sdiv.op, sdiv.off) == (0x3F, 1) and (smod.op, smod.off, smod.imm) == (0x94, 1, 7)
    mv = assemble("movsx1664 %r1, %r2")[0]
    assert (mv.op, mv.dst, mv.src, mv.off) == (0xBF, 1, 2, 16)
    fetch = assemble("lock fetch xor32 [%r10-4], %r3")[0]
    assert (fetch.op, fetch.dst, fetch.src, fetch.off, fetch.imm) == (0xC3, 10, 3, -4, 0xA1)
    assert assemble("lock xchg [%r1+8], %r2")[0].imm == 0xE1
    assert assemble("lock cmpxchg32 [%r1], %r2")[0].imm == 0xF1
    assert assemble("call %r2")[0] == Insn(0x8D, 2)
    lo, hi = assemble("lddw %r3, 0x1122334455667788")
    assert (lo.op, lo.dst, lo.imm & 0xFFFFFFFF, hi.op, hi.imm) == (0x18, 3, 0x55667788, 0, 0x11223344)
    assert assemble("mov %r1, -1")[0].imm == -1
    assert assemble("mov32 %r1, 0xffffffff")[0].imm == -1


def test_labels_and_default_exit_label() -> None:
    insns = assemble("""
        jeq %r1, 0, exit    # upstream: `exit` is the first exit instruction
        ja out
        call local f
        out: exit
        f:
        mov %r0, 1
        exit
    """)
    assert insns[0].off == 2      # slot 3 (the first exit) from slot 0
    assert insns[1].off == 1
    assert insns[2].imm == 1 and insns[2].src == isa.PSEUDO_CALL
    ja32 = assemble("ja32 L\nmov %r0, 0\nL:\nexit")[0]
    assert ja32.imm == 1 and ja32.off == 0


def test_pseudo_lddw_forms() -> None:
    m, _, v, vo, f, _, _, _ = assemble("lddw %r1, map[2]\nlddw %r2, map_value[1]+16\n"
                                 "lddw %r3, func +1\nexit\nexit")
    assert (m.src, m.imm) == (isa.PSEUDO_MAP_FD, 2)
    assert (v.src, v.imm, vo.imm) == (isa.PSEUDO_MAP_VALUE, 1, 16)
    assert (f.src, f.imm) == (isa.PSEUDO_FUNC, 1)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("mov %r0, 1\nfrob %r1, 2\nexit", 2, "unknown mnemonic"),
    ("exit\nmov %r16, 1", 2, "bad register"),
    ("mov %r0\nexit", 1, "operand"),
    ("ja nowhere\nexit", 1, "undefined label"),
    ("a:\na:\nexit", 2, "duplicate label"),
    ("ldxw %r0, %r1\nexit", 1, "memory operand"),
    ("mov %r0, 0x1ffffffff\nexit", 1, "32 bits"),
    ("lock nand [%r1], %r2", 1, "atomic"),
    ("\n\njeq %r1, 0x12, +70000", 3, "16 bits"),
])
def test_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(AsmError) as e:
        assemble(text)
    assert f"line {line}" in str(e.value) and words in str(e.value)


regs = st.integers(0, 10)


@st.composite
def instructions(draw: st.DrawFn) -> list[Insn]:
    """Random straight-line instructions of every encodable kind (decode/disasm input)."""
    kind = draw(st.sampled_from(["alu", "jmp", "mem", "lddw", "atomic"]))
    d, s = draw(regs), draw(regs)
    imm = draw(st.integers(-(1 << 31), (1 << 31) - 1))
    off = draw(st.integers(-(1 << 15), (1 << 15) - 1))
    if kind == "alu":
        cls = draw(st.sampled_from([isa.ALU, isa.ALU64]))
        code = draw(st.sampled_from([isa.ADD, isa.SUB, isa.MUL, isa.DIV, isa.OR, isa.AND,
                                     isa.LSH, isa.RSH, isa.MOD, isa.XOR, isa.MOV, isa.ARSH]))
        if draw(st.booleans()):
            return [Insn(cls | code | isa.X, d, s)]
        return [Insn(cls | code, d, 0, 0, imm)]
    if kind == "jmp":
        cls = draw(st.sampled_from([isa.JMP, isa.JMP32]))
        code = draw(st.sampled_from([isa.JEQ, isa.JGT, isa.JGE, isa.JSET, isa.JNE, isa.JSGT,
                                     isa.JSGE, isa.JLT, isa.JLE, isa.JSLT, isa.JSLE]))
        return [Insn(cls | code | isa.X, d, s, off) if draw(st.booleans())
                else Insn(cls | code, d, 0, off, imm)]
    if kind == "mem":
        size = draw(st.sampled_from([isa.B, isa.H, isa.W, isa.DW]))
        form = draw(st.sampled_from(["ldx", "st", "stx"]))
        if form == "ldx":
            return [Insn(isa.LDX | isa.MEM | size, d, s, off)]
        if form == "st":
            return [Insn(isa.ST | isa.MEM | size, d, 0, off, imm)]
        return [Insn(isa.STX | isa.MEM | size, d, s, off)]
    if kind == "lddw":
        hi = draw(st.integers(-(1 << 31), (1 << 31) - 1))
        return [Insn(isa.LDDW, d, 0, 0, imm), Insn(0, 0, 0, 0, hi)]
    size = draw(st.sampled_from([isa.W, isa.DW]))
    aimm = draw(st.sampled_from([0x00, 0x01, 0x40, 0x41, 0x50, 0x51, 0xA0, 0xA1, 0xE1, 0xF1]))
    return [Insn(isa.STX | isa.ATOMIC | size, d, s, off, aimm)]


@settings(max_examples=300, deadline=None)
@given(st.lists(instructions(), min_size=1, max_size=20))
def test_disassemble_assemble_round_trip(chunks: list[list[Insn]]) -> None:
    insns = [i for c in chunks for i in c] + [Insn(isa.EXIT_OP)]
    assert assemble(disassemble(insns)) == insns
