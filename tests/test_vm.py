"""The interp engine: ISA semantics against a small independent oracle, memory safety of
every region, budget, calls, maps and helpers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stord.engines.base import CTX_BASE, DATA_BASE, META_BASE, STACK_TOP, get_engine
from stord.engines.interp.engine import InterpEngine
from stord.engines.interp.maps import HashMap
from stord.errors import BudgetExceeded, ProgramFault
from stord.program.asm import assemble
from stord.program.isa import Insn
from stord.program.model import MapDef, Program

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
ARRAY = MapDef(name="arr", type=2, key_size=4, value_size=16, max_entries=4)
HASH = MapDef(name="h", type=1, key_size=4, value_size=8, max_entries=3)
RODATA = MapDef(name=".rodata", type=2, key_size=4, value_size=8, max_entries=1,
                initial=struct.pack("<Q", 42), readonly=True)
DATA = MapDef(name=".data", type=2, key_size=4, value_size=8, max_entries=1,
              initial=struct.pack("<Q", 7))
BSS = MapDef(name=".bss", type=2, key_size=4, value_size=8, max_entries=1)
ENOENT, E2BIG, EEXIST, EINVAL = 2, 7, 17, 22


def load(text: str, maps: list[MapDef] | None = None, budget: int = 1_000_000,
         helpers: str = "linux"):
    prog = Program(name="t", section="xdp", insns=assemble(text), maps=maps or [])
    return InterpEngine().load(prog, budget=budget, helpers=helpers)


def run(text: str, mem: bytes | None = None, **kw) -> int:
    return load(text, helpers="conformance", **kw).call(
        bytearray(mem) if mem is not None else None)


def test_registry_finds_interp() -> None:
    assert isinstance(get_engine("interp"), InterpEngine)


# --- an independent oracle of RFC 9669 ALU semantics ----------------------------------------

def signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def oracle(op: str, bits: int, dst: int, src: int) -> int:
    """dst OP src on `bits`-wide operands; the result zero-extended to 64 bits."""
    m = (1 << bits) - 1
    a, b = dst & m, src & m
    if op == "add":
        r = a + b
    elif op == "sub":
        r = a - b
    elif op == "mul":
        r = a * b
    elif op == "div":
        r = 0 if b == 0 else a // b
    elif op == "mod":
        r = a if b == 0 else a % b
    elif op == "sdiv":
        r = 0 if b == 0 else trunc_div(signed(a, bits), signed(b, bits))
    elif op == "smod":
        if b == 0:
            r = a
        else:
            x, y = signed(a, bits), signed(b, bits)
            r = x - y * trunc_div(x, y)
    elif op == "or":
        r = a | b
    elif op == "and":
        r = a & b
    elif op == "xor":
        r = a ^ b
    elif op == "lsh":
        r = a << (b % bits)
    elif op == "rsh":
        r = a >> (b % bits)
    elif op == "arsh":
        r = signed(a, bits) >> (b % bits)
    elif op == "mov":
        r = b
    elif op == "neg":
        r = -a
    else:
        raise AssertionError(op)
    return r & m


BINARY = ["add", "sub", "mul", "div", "mod", "sdiv", "smod", "or", "and", "xor", "lsh",
          "rsh", "arsh", "mov"]
EDGE = [0, 1, 2, 3, 7, U64, U64 - 1, 1 << 63, (1 << 63) - 1, U32, 1 << 31, (1 << 31) - 1,
        0x8000_0000_0000_0001, 0xFFFF_FFFF_8000_0000, 0x1_0000_0000, 0xDEAD_BEEF_CAFE_F00D]


def run_binary(op: str, bits: int, a: int, b: int, imm: int | None = None) -> int:
    sfx = "32" if bits == 32 else ""
    src = "%r2" if imm is None else str(imm)
    return run(f"lddw %r0, {a:#x}\nlddw %r2, {b:#x}\n{op}{sfx} %r0, {src}\nexit")


@pytest.mark.parametrize("op", ["div", "mod", "sdiv", "smod"])
@pytest.mark.parametrize("bits", [32, 64])
def test_division_edge_cases(op: str, bits: int) -> None:
    """x/0 = 0, x%0 = x, INT_MIN/-1 = INT_MIN, INT_MIN%-1 = 0, signs of C truncation."""
    for a in EDGE:
        for b in [0, 1, U64, U32, 1 << 31, 1 << 63, 3, U64 - 2, 0xFFFF_FFFF_FFFF_FFFD]:
            assert run_binary(op, bits, a, b) == oracle(op, bits, a, b), (op, bits, a, b)
    int_min = 1 << (bits - 1)
    if op == "sdiv":
        assert run_binary(op, bits, int_min, U64) == int_min
    if op == "smod":
        assert run_binary(op, bits, int_min, U64) == 0
        assert run_binary(op, bits, U64 - 6, 3) == ((-1) & ((1 << bits) - 1))  # -7 % 3 = -1
    if op == "mod":
        assert run_binary(op, bits, 0x1_0000_0007, 0) == (0x1_0000_0007 & ((1 << bits) - 1))


def test_division_by_zero_immediate_never_faults() -> None:
    # Only the register form can divide by zero at run time (validation allows imm 0 too).
    assert run("mov %r0, 9\ndiv %r0, 0\nexit") == 0
    assert run("mov %r0, 9\nmod32 %r0, 0\nexit") == 9


reg_values = st.one_of(st.sampled_from(EDGE), st.integers(0, U64))


@st.composite
def alu_programs(draw: st.DrawFn) -> tuple[list[int], list[tuple]]:
    """Initial r0, r2..r9 and a list of ALU operations on them (r1 points at memory)."""
    regs = [draw(reg_values) for _ in range(9)]
    ops = []
    names = [0, 2, 3, 4, 5, 6, 7, 8, 9]
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(BINARY + ["neg", "end", "movsx"]))
        bits = draw(st.sampled_from([32, 64]))
        d = draw(st.sampled_from(names))
        if kind in BINARY:
            if draw(st.booleans()):
                ops.append((kind, bits, d, ("reg", draw(st.sampled_from(names)))))
            else:
                ops.append((kind, bits, d, ("imm", draw(st.integers(-(1 << 31), (1 << 31) - 1)))))
        elif kind == "neg":
            ops.append(("neg", bits, d, None))
        elif kind == "end":
            ops.append((draw(st.sampled_from(["le", "be", "bswap"])), draw(st.sampled_from([16, 32, 64])), d, None))
        else:
            width = draw(st.sampled_from([8, 16] + ([32] if bits == 64 else [])))
            ops.append(("movsx", bits, d, ("reg", draw(st.sampled_from(names))), width))
    return regs, ops


def swap(v: int, width: int) -> int:
    return int.from_bytes((v & ((1 << width) - 1)).to_bytes(width // 8, "little"), "big")


def emulate(regs: list[int], ops: list[tuple]) -> dict[int, int]:
    r = dict(zip([0, 2, 3, 4, 5, 6, 7, 8, 9], regs, strict=True))
    for o in ops:
        kind, bits, d = o[0], o[1], o[2]
        if kind in BINARY:
            src = r[o[3][1]] if o[3][0] == "reg" else (o[3][1] & U64 if bits == 64 else o[3][1] & U32)
            r[d] = oracle(kind, bits, r[d], src)
        elif kind == "neg":
            r[d] = oracle("neg", bits, r[d], 0)
        elif kind == "le":
            r[d] = r[d] & ((1 << bits) - 1)
        elif kind in ("be", "bswap"):
            r[d] = swap(r[d], bits)
        elif kind == "movsx":
            width = o[4]
            r[d] = signed(r[o[3][1]], width) & ((1 << bits) - 1)
    return r


def to_asm(regs: list[int], ops: list[tuple]) -> str:
    names = [0, 2, 3, 4, 5, 6, 7, 8, 9]
    lines = [f"lddw %r{n}, {v:#x}" for n, v in zip(names, regs, strict=True)]
    for o in ops:
        kind, bits, d = o[0], o[1], o[2]
        sfx = "32" if bits == 32 else ""
        if kind in BINARY:
            src = f"%r{o[3][1]}" if o[3][0] == "reg" else str(o[3][1])
            lines.append(f"{kind}{sfx} %r{d}, {src}")
        elif kind == "neg":
            lines.append(f"neg{sfx} %r{d}")
        elif kind in ("le", "be", "bswap"):
            lines.append(f"{kind}{bits} %r{d}")
        else:
            lines.append(f"movsx{o[4]}{bits} %r{d}, %r{o[3][1]}")
    for k, n in enumerate(names):
        lines.append(f"stxdw [%r1+{8 * k}], %r{n}")
    lines += ["mov %r0, 0", "exit"]
    return "\n".join(lines)


@settings(max_examples=150, deadline=None)
@given(alu_programs())
def test_alu_programs_match_the_oracle(prog: tuple[list[int], list[tuple]]) -> None:
    regs, ops = prog
    mem = bytearray(8 * 9)
    load(to_asm(regs, ops), helpers="conformance").call(mem)
    got = struct.unpack("<9Q", mem)
    want = emulate(regs, ops)
    assert list(got) == [want[n] for n in [0, 2, 3, 4, 5, 6, 7, 8, 9]]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["jeq", "jne", "jgt", "jge", "jlt", "jle", "jsgt", "jsge", "jslt",
                        "jsle", "jset"]),
       st.sampled_from([32, 64]), reg_values, reg_values, st.booleans())
def test_conditional_jumps_match_the_oracle(op: str, bits: int, a: int, b: int,
                                            use_imm: bool) -> None:
    if use_imm:
        imm = signed(b, 32)
        b = imm & (U64 if bits == 64 else U32)   # imm is sign-extended to the width
        src = str(imm)
    else:
        src = "%r2"
    m = (1 << bits) - 1
    x, y = a & m, b & m
    sx, sy = signed(x, bits), signed(y, bits)
    want = {"jeq": x == y, "jne": x != y, "jgt": x > y, "jge": x >= y, "jlt": x < y,
            "jle": x <= y, "jsgt": sx > sy, "jsge": sx >= sy, "jslt": sx < sy,
            "jsle": sx <= sy, "jset": bool(x & y)}[op]
    sfx = "32" if bits == 32 else ""
    got = run(f"lddw %r1, {a:#x}\nlddw %r2, {b:#x}\nmov %r0, 1\n{op}{sfx} %r1, {src}, +1\n"
              "mov %r0, 0\nexit")
    assert got == int(want)


def test_shift_amounts_are_masked() -> None:
    assert run("mov %r0, 1\nmov %r2, 65\nlsh %r0, %r2\nexit") == 2
    assert run("mov32 %r0, 1\nmov %r2, 33\nlsh32 %r0, %r2\nexit") == 2
    assert run("lddw %r0, 0x8000000000000000\nmov %r2, 127\narsh %r0, %r2\nexit") == U64


def test_sign_extending_loads_and_32bit_zero_extension() -> None:
    mem = bytes([0x80, 0xFF, 0x00, 0x80])
    assert run("ldxsb %r0, [%r1]\nexit", mem) == 0xFFFF_FFFF_FFFF_FF80
    assert run("ldxsh %r0, [%r1+2]\nexit", mem) == 0xFFFF_FFFF_FFFF_8000
    assert run("ldxsw %r0, [%r1]\nexit", mem) == 0xFFFF_FFFF_8000_FF80
    assert run("lddw %r0, 0xffffffffffffffff\nadd32 %r0, 1\nexit") == 0


# --- memory regions -------------------------------------------------------------------------

CHUNK = b"0123456789abcdef"


def chunk_run(text: str, maps: list[MapDef] | None = None, data: bytes = CHUNK,
              offset: int = 0, last: bool = False) -> int:
    return load(text, maps).run_chunk(data, offset, last)


def faults(words: str, text: str, maps: list[MapDef] | None = None, data: bytes = CHUNK) -> str:
    with pytest.raises(ProgramFault) as e:
        chunk_run(text, maps, data)
    msg = str(e.value)
    assert words in msg and "pc " in msg, msg
    return msg


DATA_PTRS = "ldxw %r2, [%r1+0]\nldxw %r3, [%r1+4]\nldxw %r4, [%r1+8]\n"


def test_context_and_metadata() -> None:
    """ctx->data/data_end/data_meta and struct stord_meta {offset, flags}."""
    prog = DATA_PTRS + """
        mov %r0, %r3
        sub %r0, %r2          # data_end - data
        ldxdw %r5, [%r4+0]    # meta->offset
        add %r0, %r5
        ldxw %r5, [%r4+8]     # meta->flags
        lsh %r5, 32
        add %r0, %r5
        ldxb %r5, [%r2+15]    # last byte of the chunk
        lsh %r5, 40
        add %r0, %r5
        exit"""
    inst = load(prog)
    assert inst.run_chunk(CHUNK, 1000, True) == 16 + 1000 + (1 << 32) + (ord("f") << 40)
    assert load(DATA_PTRS + "mov %r0, %r4\nexit").run_chunk(b"", 0, True) == META_BASE
    assert load("mov %r0, %r1\nexit").run_chunk(b"", 0, True) == CTX_BASE
    assert load(DATA_PTRS + "mov %r0, %r2\nexit").run_chunk(b"ab", 0, True) == DATA_BASE


def test_reads_past_data_end_fault() -> None:
    assert chunk_run(DATA_PTRS + "ldxb %r0, [%r2+15]\nexit") == ord("f")
    faults("outside chunk", DATA_PTRS + "ldxb %r0, [%r2+16]\nexit")
    faults("outside chunk", DATA_PTRS + "ldxw %r0, [%r2+13]\nexit")
    faults("outside chunk", DATA_PTRS + "ldxb %r0, [%r4-1]\nexit")      # below data_meta
    faults("outside chunk", DATA_PTRS + "ldxb %r0, [%r2+0]\nexit", data=b"")


def test_bounds_follow_each_new_chunk_and_memory() -> None:
    """An access that was in bounds for one chunk faults for a shorter one (the inline
    caches of load sites must follow the chunk), and the reverse."""
    inst = load(DATA_PTRS + "ldxb %r0, [%r2+100]\nexit")
    assert inst.run_chunk(bytes(range(200)), 0, True) == 100
    with pytest.raises(ProgramFault, match="outside chunk"):
        inst.run_chunk(bytes(50), 0, True)
    assert inst.run_chunk(bytes(range(101)), 0, True) == 100
    conf = load("ldxw %r0, [%r1+12]\nstw [%r1+12], 7\nexit", helpers="conformance")
    assert conf.call(bytearray(range(16))) == 0x0F0E0D0C
    with pytest.raises(ProgramFault, match="outside mem"):
        conf.call(bytearray(12))
    mem = bytearray(16)
    conf.call(mem)
    assert mem[12] == 7


def test_writes_to_data_and_meta_fault() -> None:
    faults("chunk is read-only", DATA_PTRS + "stb [%r2+0], 1\nmov %r0, 0\nexit")
    faults("chunk is read-only", DATA_PTRS + "stxdw [%r4+0], %r2\nmov %r0, 0\nexit")
    faults("chunk is read-only", DATA_PTRS + "lock add [%r4+0], %r2\nmov %r0, 0\nexit")


def test_context_bounds_and_read_only() -> None:
    assert chunk_run("ldxw %r0, [%r1+20]\nexit") == 0
    faults("outside ctx", "ldxw %r0, [%r1+24]\nexit")
    faults("outside ctx", "ldxdw %r0, [%r1+20]\nexit")
    faults("ctx is read-only", "stw [%r1+0], 0\nmov %r0, 0\nexit")


def test_stack_bounds() -> None:
    assert chunk_run("stdw [%r10-512], 5\nldxdw %r0, [%r10-512]\nexit") == 5
    faults("below the current stack frame", "ldxdw %r0, [%r10-520]\nexit")
    faults("below the current stack frame", "stb [%r10-513], 1\nmov %r0, 0\nexit")
    faults("outside stack", "ldxb %r0, [%r10+0]\nexit")
    # through a pointer register (not the r10 fast path)
    faults("below the current stack frame",
           "mov %r2, %r10\nadd %r2, -516\nldxw %r0, [%r2+0]\nexit")


def test_callee_frames() -> None:
    """A callee may use the caller's frame through a pointer, not below its own."""
    ok = """
        stdw [%r10-8], 11
        mov %r1, %r10
        add %r1, -8
        call local f
        ldxdw %r0, [%r10-8]
        exit
    f:
        stdw [%r10-8], 99      # the callee's own frame: does not touch the caller's
        ldxdw %r2, [%r1+0]     # the caller's variable through a pointer
        add %r2, 1
        stxdw [%r1+0], %r2
        exit"""
    assert chunk_run(ok) == 12
    faults("below the current stack frame", """
        call local f
        ldxdw %r0, [%r0+0]      # the callee's frame is gone after the return
        exit
    f:
        mov %r0, %r10
        add %r0, -8
        stdw [%r0+0], 1
        exit""")


def test_null_and_wild_pointers_fault() -> None:
    faults("not in any memory region", "mov %r2, 0\nldxb %r0, [%r2+0]\nexit")
    faults("not in any memory region", "lddw %r2, 0x7777777777\nstb [%r2+0], 1\nexit")


def test_map_value_bounds() -> None:
    prog = """
        stw [%r10-4], 3
        lddw %r1, map[0]
        mov %r2, %r10
        add %r2, -4
        call 1
        jne %r0, 0, +2
        mov %r0, 1
        exit
        {access}
        mov %r0, 0
        exit"""
    assert chunk_run(prog.format(access="stdw [%r0+8], 5"), [ARRAY]) == 0
    faults("outside map 'arr'", prog.format(access="ldxdw %r1, [%r0+16]"), [ARRAY])
    # element 3 is the last: a read past its end leaves the map
    faults("outside map 'arr'", prog.format(access="ldxdw %r1, [%r0+12]"), [ARRAY])


def test_global_data_sections() -> None:
    prog = """
        lddw %r1, map_value[0]+0     # .rodata
        ldxdw %r0, [%r1+0]
        lddw %r2, map_value[1]+0     # .data
        ldxdw %r3, [%r2+0]
        add %r0, %r3
        stxdw [%r2+0], %r0
        lddw %r2, map_value[2]+0     # .bss
        stdw [%r2+0], 9
        exit"""
    inst = load(prog, [RODATA, DATA, BSS])
    assert inst.run_chunk(b"", 0, True) == 49
    assert inst.run_chunk(b"", 0, True) == 42 + 49   # .data persists across chunks
    st = inst.read_state()
    assert st.globals == {".data": struct.pack("<Q", 91), ".bss": struct.pack("<Q", 9)}
    faults(".rodata' is read-only", "lddw %r1, map_value[0]+0\nstdw [%r1+0], 1\nexit",
           [RODATA])
    # Addresses known at translation time are still bounds-checked.
    faults("outside map '.rodata'", "lddw %r1, map_value[0]+0\nldxdw %r0, [%r1+4]\nexit",
           [RODATA])
    faults("outside map '.data'", "lddw %r1, map_value[0]+0\nadd %r1, 8\nstb [%r1+0], 1\n"
           "mov %r0, 0\nexit", [DATA])
    faults("outside map '.data'", "lddw %r1, map_value[0]+0\nldxb %r0, [%r1-1]\nexit",
           [DATA])


def test_conformance_memory_bounds() -> None:
    assert run("ldxdw %r0, [%r1+0]\nexit", bytes(8)) == 0
    with pytest.raises(ProgramFault, match="outside mem"):
        run("ldxdw %r0, [%r1+1]\nexit", bytes(8))
    with pytest.raises(ProgramFault):
        run("ldxb %r0, [%r1+0]\nexit")          # no memory: r1 = 0


# --- budget and calls -----------------------------------------------------------------------

def test_budget_exhaustion_on_endless_loop() -> None:
    with pytest.raises(BudgetExceeded, match="budget"):
        load("mov %r0, 0\nja -1\nexit", budget=10_000).run_chunk(b"", 0, True)


def test_budget_counts_instructions_exactly() -> None:
    text = "mov %r0, 0\nmov %r1, 5\nL: add %r0, 1\nsub %r1, 1\njne %r1, 0, L\nexit"
    executed = 2 + 5 * 3 + 1
    assert load(text, budget=executed).run_chunk(b"", 0, True) == 5
    with pytest.raises(BudgetExceeded):
        load(text, budget=executed - 1).run_chunk(b"", 0, True)


def test_budget_is_per_call() -> None:
    inst = load("mov %r0, 1\nexit", budget=2)
    for _ in range(3):
        assert inst.run_chunk(b"", 0, False) == 1


def nested_calls(n: int) -> str:
    """Entry calls f1, f1 calls f2, ... f(n) returns: n + 1 frames in use."""
    lines = ["mov %r6, 77", "call local f1", "add %r0, %r6", "exit"]
    for k in range(1, n + 1):
        nxt = [f"call local f{k + 1}"] if k < n else ["mov %r0, 0"]
        lines += [f"f{k}:", f"mov %r6, {k}", f"stdw [%r10-8], {k}", *nxt,
                  "ldxdw %r1, [%r10-8]", f"jne %r1, {k}, +1", "add %r0, 1", "exit"]
    return "\n".join(lines)


def test_call_depth_limit() -> None:
    # 8 frames (the entry and 7 nested calls) is the limit; r6 and frames survive calls.
    assert chunk_run(nested_calls(7)) == 7 + 77
    faults("call depth exceeds 8", nested_calls(8))
    faults("call depth exceeds 8", "call local f\nexit\nf:\ncall local f\nexit")


def test_callee_saved_registers_and_frames_in_callbacks() -> None:
    """bpf_loop runs its callback in a fresh frame; the loop stops when it returns 1."""
    prog = """
        mov %r6, 5
        stdw [%r10-8], 0
        mov %r1, 10              # nr_loops
        lddw %r2, func cb
        mov %r3, %r10
        add %r3, -8              # ctx: pointer to the counter
        mov %r4, 0
        call 181
        ldxdw %r1, [%r10-8]
        lsh %r0, 8
        add %r0, %r1
        add %r0, %r6
        exit
    cb:
        stdw [%r10-8], 1000      # the callback's own frame
        ldxdw %r3, [%r2+0]
        add %r3, %r1             # counter += index
        stxdw [%r2+0], %r3
        mov %r0, 0
        jne %r1, 6, +1
        mov %r0, 1               # stop after index 6
        exit"""
    # 7 iterations (0..6), sum of indexes 21, r6 preserved.
    assert chunk_run(prog) == (7 << 8) + 21 + 5


def test_bpf_loop_errors() -> None:
    base = "mov %r1, {n}\nlddw %r2, func cb\nmov %r3, 0\nmov %r4, {flags}\ncall 181\nexit\n" \
           "cb:\nmov %r0, 0\nexit"
    assert chunk_run(base.format(n=3, flags=0)) == 3
    assert chunk_run(base.format(n=0, flags=0)) == 0
    assert chunk_run(base.format(n=3, flags=1)) == (-EINVAL) & U64
    assert chunk_run(base.format(n=(1 << 23) + 1, flags=0)) == (-E2BIG) & U64


def test_bpf_loop_counts_against_the_budget() -> None:
    prog = "mov %r1, 1000\nlddw %r2, func cb\nmov %r3, 0\nmov %r4, 0\ncall 181\nexit\n" \
           "cb:\nmov %r0, 0\nexit"
    with pytest.raises(BudgetExceeded):
        load(prog, budget=500).run_chunk(b"", 0, True)


# --- maps through the helpers ----------------------------------------------------------------

def map_op_program() -> str:
    """mem: [op u32, key u32, value u64, flags u64]; op 1 lookup, 2 update, 3 delete.
    Returns the helper's r0, or for a found lookup 1 << 32 | the value's low 32 bits."""
    return """
        mov %r6, %r1
        ldxw %r7, [%r6+0]
        lddw %r1, map[0]
        mov %r2, %r6
        add %r2, 4
        jne %r7, 1, upd
        call 1
        jeq %r0, 0, +4
        ldxw %r0, [%r0+0]
        lddw %r1, 0x100000000
        or %r0, %r1
        exit
    upd:
        jne %r7, 2, del
        mov %r3, %r6
        add %r3, 8
        ldxdw %r4, [%r6+16]
        call 2
        exit
    del:
        call 3
        exit"""


class KernelHashOracle:
    """The kernel's hash map contract, written as a dict with capacity."""

    def __init__(self, cap: int) -> None:
        self.d: dict[int, int] = {}
        self.cap = cap

    def update(self, k: int, v: int, flags: int) -> int:
        if flags > 2:
            return -EINVAL
        if k in self.d:
            if flags == 1:
                return -EEXIST
        else:
            if flags == 2:
                return -ENOENT
            if len(self.d) >= self.cap:
                return -E2BIG
        self.d[k] = v
        return 0

    def delete(self, k: int) -> int:
        return 0 if self.d.pop(k, None) is not None else -ENOENT


ops = st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 5),
                         st.integers(0, U32), st.sampled_from([0, 0, 1, 2, 3])),
               max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_hash_map_matches_dict_oracle(seq: list[tuple[int, int, int, int]]) -> None:
    inst = InterpEngine().load(Program(name="t", section="xdp", insns=assemble(map_op_program()),
                                       maps=[HASH]), helpers="linux")
    oracle = KernelHashOracle(HASH.max_entries)
    for op, k, v, flags in seq:
        mem = bytearray(struct.pack("<IIQQ", op, k, v, flags))
        # The linux helper set has no conformance memory: give it as the chunk via call().
        got = inst.call(mem)
        if op == 1:
            want = (1 << 32 | oracle.d[k]) if k in oracle.d else 0
        elif op == 2:
            want = oracle.update(k, v, flags) & U64
        else:
            want = oracle.delete(k) & U64
        assert got == want, (op, k, v, flags)
    st_ = inst.read_state()
    assert st_.maps["h"] == {struct.pack("<I", k): struct.pack("<Q", v)
                             for k, v in oracle.d.items()}


def test_hash_slots_are_stable() -> None:
    m = HashMap(0, HASH)
    assert m.update(b"aaaa", bytes(8), 0) == 0
    slot = m.lookup(b"aaaa")
    for key in (b"bbbb", b"cccc"):
        m.update(key, b"\1" * 8, 0)
    m.delete(b"bbbb")
    m.update(b"dddd", b"\2" * 8, 0)
    m.update(b"aaaa", b"\3" * 8, 2)
    assert m.lookup(b"aaaa") == slot
    assert m.values[slot * 8:(slot + 1) * 8] == b"\3" * 8


def test_array_map_semantics_and_state() -> None:
    prog = """
        stdw [%r10-24], 5          # value: 16 bytes at r10-24
        stdw [%r10-16], 0
        stw [%r10-4], {key}
        lddw %r1, map[0]
        mov %r2, %r10
        add %r2, -4
        mov %r3, %r10
        add %r3, -24
        mov %r4, {flags}
        call {helper}
        exit"""

    def go(key: int, flags: int = 0, helper: int = 2) -> int:
        return chunk_run(prog.format(key=key, flags=flags, helper=helper), [ARRAY])

    assert go(3) == 0
    assert go(4) == (-E2BIG) & U64
    assert go(1, flags=1) == (-EEXIST) & U64
    assert go(1, flags=2) == 0
    assert go(1, flags=7) == (-EINVAL) & U64
    assert go(1, helper=3) == (-EINVAL) & U64     # array elements cannot be deleted
    inst = load(prog.format(key=2, flags=0, helper=2), [ARRAY])
    inst.run_chunk(b"", 0, True)
    maps = inst.read_state().maps["arr"]
    assert len(maps) == 4
    assert maps[struct.pack("<I", 2)] == struct.pack("<Q", 5) + bytes(8)
    assert maps[struct.pack("<I", 0)] == bytes(16)


def test_map_helpers_reject_non_maps() -> None:
    faults("is not a map", "mov %r1, 0\nmov %r2, %r10\nadd %r2, -4\ncall 1\nexit", [ARRAY])


# --- other helpers --------------------------------------------------------------------------

def test_xdp_load_bytes() -> None:
    prog = """
        mov %r2, {off}
        mov %r3, %r10
        add %r3, -8
        mov %r4, {n}
        call 189
        jne %r0, 0, +1
        ldxdw %r0, [%r10-8]
        exit"""
    assert chunk_run(prog.format(off=2, n=8)) == int.from_bytes(CHUNK[2:10], "little")
    assert chunk_run(prog.format(off=9, n=8)) == (-EINVAL) & U64
    # 8 bytes into a buffer 4 bytes below the stack top: the copy leaves the stack
    faults("outside stack", prog.format(off=0, n=8).replace("add %r3, -8", "add %r3, -4"))


def test_trace_printk_and_misc_helpers() -> None:
    prog = """
        stdw [%r10-16], 0
        lddw %r1, 0x0a64252078
        stxdw [%r10-16], %r1       # "x %d\\n\\0"
        mov %r1, %r10
        add %r1, -16
        mov %r2, 6
        mov %r3, -5
        call 6
        mov %r6, %r0
        call 8
        add %r0, %r6
        exit"""
    inst = load(prog)
    assert inst.run_chunk(b"", 0, True) == len("x -5\n")
    assert inst.trace == ["x -5\n"]
    t = load("call 5\nmov %r6, %r0\ncall 5\nsub %r0, %r6\nexit").run_chunk(b"", 0, True)
    assert 0 <= t < 10**10
    assert load("call 7\nrsh %r0, 32\nexit").run_chunk(b"", 0, True) == 0


def test_store_bytes_faults() -> None:
    faults("read-only", "mov %r2, 0\nmov %r3, %r10\nadd %r3, -8\nmov %r4, 1\ncall 190\nexit")


def test_conformance_unwind_stops_on_zero() -> None:
    assert run("mov %r1, 0\ncall 5\nmov %r0, 2\nexit") == 0
    assert run("mov %r1, 9\ncall 5\nexit") == 9
    with pytest.raises(ProgramFault, match="no such helper"):
        run("mov %r2, 77\ncall %r2\nexit")


def test_stack_top_constant() -> None:
    assert run("mov %r0, %r10\nexit") == STACK_TOP


def test_program_with_lddw_second_slot_stays_intact() -> None:
    prog = Program(name="t", section="", insns=[Insn(0x18, 0, 0, 0, 1), Insn(0, 0, 0, 0, 2),
                                                Insn(0x95)])
    assert InterpEngine().load(prog).run_chunk(b"", 0, True) == (2 << 32) | 1
