"""The eBPF instruction set (RFC 9669): encoding, decoding and opcode names.

One 8-byte slot per instruction; LDDW takes two slots and the second one is kept in the
instruction list (as a pseudo instruction with opcode 0) so that jump offsets, which count
slots, index the list directly.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# Instruction classes (low 3 bits of the opcode).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)

# Source operand (bit 3) for ALU/JMP.
K, X = 0x00, 0x08

# ALU operations (high 4 bits).
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0,
)

# Jump operations (high 4 bits).
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE, JSLT, JSLE = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0,
)

# Load/store size (bits 3-4) and mode (bits 5-7).
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
IMM, ABS, IND, MEM, MEMSX, ATOMIC = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0

SIZE_BYTES = {W: 4, H: 2, B: 1, DW: 8}

# Atomic operations (in imm).
FETCH = 0x01
XCHG = 0xE0 | FETCH
CMPXCHG = 0xF0 | FETCH

# Pseudo source registers of LDDW and CALL (the kernel's uapi values).
PSEUDO_MAP_FD = 1      # lddw: imm = map index (after loading: fd in the kernel)
PSEUDO_MAP_VALUE = 2   # lddw: imm = map index, next slot's imm = offset into its value
PSEUDO_FUNC = 4        # lddw: imm = slot offset of a subprogram (callback), relative to next slot
PSEUDO_CALL = 1        # call: imm = slot offset of a local function, relative to next slot

LDDW = LD | IMM | DW   # 0x18
CALL_OP = JMP | CALL   # 0x85
CALLX_OP = JMP | CALL | X  # 0x8d
EXIT_OP = JMP | EXIT   # 0x95

MAX_INSNS = 1_000_000  # the kernel's limit for privileged programs
STACK_SIZE = 512


class Insn(NamedTuple):
    op: int
    dst: int = 0
    src: int = 0
    off: int = 0   # signed 16-bit
    imm: int = 0   # signed 32-bit

    @property
    def cls(self) -> int:
        return self.op & 0x07

    def encode(self) -> bytes:
        return _FMT.pack(self.op, (self.src << 4) | self.dst, self.off, self.imm)


_FMT = struct.Struct("<BBhi")


class DecodeError(ValueError):
    pass


def decode(code: bytes | memoryview) -> list[Insn]:
    """Bytes to instructions, one per 8-byte slot."""
    if len(code) % 8:
        raise DecodeError(f"program size {len(code)} is not a multiple of 8 bytes")
    out = []
    for op, regs, off, imm in _FMT.iter_unpack(bytes(code)):
        out.append(Insn(op, regs & 0x0F, regs >> 4, off, imm))
    return out


def encode(insns: list[Insn]) -> bytes:
    pack = _FMT.pack   # unrolled Insn.encode: the jit's cache key encodes every program
    return b"".join([pack(op, src << 4 | dst, off, imm) for op, dst, src, off, imm in insns])


def lddw_value(first: Insn, second: Insn) -> int:
    """The 64-bit immediate of an LDDW pair."""
    return (first.imm & 0xFFFFFFFF) | ((second.imm & 0xFFFFFFFF) << 32)
