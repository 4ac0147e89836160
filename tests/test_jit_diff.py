"""Differential tests: the jit engine against the interp engine (the reference).

Same results and the same failures on: every bpf_conformance vector, every built-in program
over generated CSV files cut into chunks, hand-written C programs that use the map helpers
and bpf_loop, and random straight-line ALU/JMP/load/store programs from hypothesis.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stord.cli.conformance import CONFORMANCE_BUDGET, collect, parse_vector
from stord.engines.base import get_engine
from stord.errors import BudgetExceeded, ProgramFault, StordError
from stord.program import isa
from stord.program.elf import load_object
from stord.program.isa import Insn
from stord.program.model import Program
from stord.program.toolchain import builtin_object, compile_c

CONFORMANCE = Path("/work/shared/conformance/tests")
M64 = (1 << 64) - 1

interp = get_engine("interp")
jit = get_engine("jit")


def outcome(engine, prog: Program, *, mem: bytes | None = None, helpers: str = "conformance",
            budget: int = CONFORMANCE_BUDGET) -> tuple:
    """('ok', r0, memory after) or ('error', error class) for one call."""
    try:
        inst = engine.load(prog, budget=budget, helpers=helpers)
        buf = bytearray(mem) if mem is not None else None
        r0 = inst.call(buf) & M64
    except BudgetExceeded:
        return ("error", "BudgetExceeded")
    except ProgramFault:
        return ("error", "ProgramFault")
    except StordError as e:
        return ("error", type(e).__name__)
    return ("ok", r0, bytes(buf) if buf is not None else None)


# -- the conformance vectors -------------------------------------------------------------

VECTORS = collect([str(CONFORMANCE)]) if CONFORMANCE.is_dir() else []


def test_conformance_vectors_present() -> None:
    assert len(VECTORS) == 313, f"expected the 313 vectors in {CONFORMANCE}"


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_conformance_vector_same_as_interp(path: Path) -> None:
    vec = parse_vector(path)
    prog = Program(name="conformance", section="", insns=vec.insns)
    want = outcome(interp, prog, mem=vec.mem)
    got = outcome(jit, prog, mem=vec.mem)
    assert got == want
    if not vec.expect_error:
        assert got[0] == "ok" and got[1] == vec.result


# -- built-in programs on generated CSV files ------------------------------------------------

def gen_csv(seed: int, rows: int, *, messy: bool) -> bytes:
    """id,sensor,value,flag; messy files add quotes, CRLF, blanks, bad and huge numbers."""
    rnd = random.Random(seed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n" if messy and seed % 2 else "\n")
    w.writerow(["id", "sensor", "value", "flag"])
    for i in range(rows):
        value = f"{rnd.uniform(-500, 500):.{rnd.choice([0, 1, 2, 3])}f}"
        sensor = f"s{rnd.randrange(6)}"
        if messy:
            r = rnd.random()
            if r < 0.05:
                value = ""
            elif r < 0.08:
                value = rnd.choice(["abc", "1.2.3", "-", "+5", "9" * 25, ".5", "7."])
            elif r < 0.12:
                sensor = f'quoted "{sensor}", with comma'
            elif r < 0.14:
                sensor = "k" * 40   # longer than STORD_KEY_LEN
        w.writerow([i, sensor, value, rnd.randrange(2)])
        if messy and rnd.random() < 0.03:
            out.write("\n")   # a blank line
    data = out.getvalue().encode()
    if messy and seed % 3 == 0:
        data = data.rstrip(b"\r\n")   # a last record without a newline
    return data


def run_chunks(engine, prog: Program, data: bytes, chunk: int) -> tuple[list[int], object]:
    inst = engine.load(prog, budget=1 << 40)
    verdicts = []
    off = 0
    while True:
        end = min(len(data), off + chunk)
        verdicts.append(inst.run_chunk(memoryview(data)[off:end], off, end == len(data)))
        off = end
        if off >= len(data):
            break
    return verdicts, inst.read_state()


def kmp_dfa(needle: bytes) -> bytes:
    """grep.c's table: dfa[s * 256 + c], state len(needle) = matched (absorbing)."""
    n = len(needle)
    table = bytearray(64 * 256)
    fail = [0] * (n + 1)
    k = 0
    for i in range(1, n):
        while k and needle[i] != needle[k]:
            k = fail[k]
        if needle[i] == needle[k]:
            k += 1
        fail[i + 1] = k
    for s in range(n + 1):
        for c in range(256):
            if s == n:
                nxt = n
            else:
                t = s
                while t and needle[t] != c:
                    t = fail[t]
                nxt = t + 1 if needle[t] == c else 0
            table[s * 256 + c] = nxt
    return bytes(table)


def with_rodata(prog: Program, var: str, value: bytes) -> Program:
    """Set a .rodata array that the loader does not expose as a parameter (grep's dfa)."""
    for i, m in enumerate(prog.maps):
        if m.name == ".rodata":
            for name, _tid, off, size in prog.btf.datasec_vars(".rodata"):
                if name == var:
                    buf = bytearray(m.initial or bytes(m.value_size))
                    buf[off:off + size] = value.ljust(size, b"\0")
                    maps = list(prog.maps)
                    maps[i] = replace(m, initial=bytes(buf))
                    return replace(prog, maps=maps)
    raise AssertionError(f"no .rodata variable {var}")


BUILTIN_CASES = [
    ("stats", {"col": 2, "header": 1}),
    ("stats", {"col": 2, "header": 1, "scale": 0}),
    ("count", {}),
    ("count", {"op": 5, "value": 10000, "col": 2, "header": 1}),
    ("hist", {"col": 2, "header": 1, "lo": -50000, "width": 10000, "nbuckets": 10}),
    ("groupby", {"col": 2, "key_col": 1, "header": 1}),
    ("grep", {"needle_len": 2}),
]


def builtin(name: str, params: dict) -> Program:
    prog = load_object(builtin_object(name)).with_params(**params)
    if name == "grep":
        prog = with_rodata(prog, "dfa", kmp_dfa(b"s3"))
    return prog


@pytest.mark.parametrize("name,params", BUILTIN_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(BUILTIN_CASES)])
@pytest.mark.parametrize("seed,messy,chunk", [(1, False, 1 << 20), (2, True, 997),
                                               (3, True, 4096 + 17)])
def test_builtin_same_state_as_interp(name: str, params: dict, seed: int, messy: bool,
                                      chunk: int) -> None:
    prog = builtin(name, params)
    data = gen_csv(seed, 300, messy=messy)
    want = run_chunks(interp, prog, data, chunk)
    got = run_chunks(jit, prog, data, chunk)
    assert got[0] == want[0]
    assert got[1] == want[1]


def test_builtins_loaded_back_to_back_same_state_as_interp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With no cache, each load compiles its first tier on this thread while the O2 code of
    the programs before it compiles on the background thread: LLVM runs in both at once
    (compile._unserialise_llvmlite). Every program's state, on the code it had then and on
    its O2 code after, is the interp's."""
    from stord.engines.jit import compile as jit_compile

    monkeypatch.setenv("STORD_JIT_CACHE", "off")
    jit_compile.wait_for_upgrades()
    jit_compile.clear_memory_cache()
    data = gen_csv(4, 300, messy=True)
    progs = [builtin(name, params) for name, params in BUILTIN_CASES]
    want = [run_chunks(interp, prog, data, 4096 + 17) for prog in progs]
    got = [run_chunks(jit, prog, data, 4096 + 17) for prog in progs]
    assert got == want
    assert jit_compile.wait_for_upgrades(120)
    assert all(jit.load(prog).compiled.tier == "o2" for prog in progs)
    assert [run_chunks(jit, prog, data, 4096 + 17) for prog in progs] == want


# -- map helpers, bpf_loop and faults from C ----------------------------------------------------

MAPS_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 8);
         __type(key, __u32); __type(value, __u64); } h SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4);
         __type(key, __u32); __type(value, __u64); } a SEC(".maps");
__s64 rc[64];
__u32 n;
static long cb(__u32 i, void *ctx) {
    __u32 k = (i * 7) % 13; __u64 v = i;
    __u32 *cnt = ctx;
    rc[i % 64] += bpf_map_update_elem(&h, &k, &v, i % 3);
    if (i % 5 == 0) rc[(i + 1) % 64] += bpf_map_delete_elem(&h, &k);
    __u64 *p = bpf_map_lookup_elem(&h, &k);
    if (p) *p += 100;
    __u32 ai = i % 6;
    rc[(i + 2) % 64] += bpf_map_update_elem(&a, &ai, &v, i % 4);
    rc[(i + 3) % 64] += bpf_map_delete_elem(&a, &ai);
    *cnt += 1;
    return i == 40;
}
SEC("xdp") int prog(struct xdp_md *ctx) {
    __u32 cnt = 0;
    long r = bpf_loop(60, cb, &cnt, 0);
    rc[63] = r + bpf_loop(5, cb, &cnt, 1) + bpf_loop(1 << 24, cb, &cnt, 0);
    n = cnt;
    return 2;
}
char LICENSE[] SEC("license") = "GPL";
"""

FAULT_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
const volatile __u32 mode = 0;
__u64 out;
SEC("xdp") int prog(struct xdp_md *ctx) {
    __u8 *data = (void *)(long)ctx->data;
    __u8 *end = (void *)(long)ctx->data_end;
    volatile __u64 x = 0;
    if (mode == 0) out = *(volatile __u64 *)(data + 4096);      /* past the chunk */
    if (mode == 1) *(volatile __u8 *)data = 1;                   /* the chunk is read-only */
    if (mode == 2) out = bpf_xdp_store_bytes(ctx, 0, (void *)&x, 1);
    if (mode == 3) for (;;) out += *(volatile __u64 *)&x;         /* runaway */
    if (mode == 4 && data + 8 <= end) out = *(__u64 *)data;       /* fine */
    if (mode == 5) { char buf[8]; out = bpf_xdp_load_bytes(ctx, 100, buf, 8); } /* -EINVAL */
    return 2;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_map_helpers_and_bpf_loop_same_as_interp() -> None:
    prog = load_object(compile_c(MAPS_C))
    data = b"x" * 64
    want = run_chunks(interp, prog, data, 64)
    got = run_chunks(jit, prog, data, 64)
    assert got == want
    assert want[1].maps["h"]  # the test exercised the hash map


@pytest.mark.parametrize("mode,expect", [(0, "ProgramFault"), (1, "ProgramFault"),
                                         (2, "ProgramFault"), (3, "BudgetExceeded"),
                                         (4, "ok"), (5, "ok")])
def test_faults_same_as_interp(mode: int, expect: str) -> None:
    prog = load_object(compile_c(FAULT_C)).with_params(mode=mode)
    results = []
    for engine in (interp, jit):
        try:
            inst = engine.load(prog, budget=100_000)
            r0 = inst.run_chunk(bytes(range(64)), 0, True)
            results.append(("ok", r0, inst.read_state()))
        except StordError as e:
            results.append((type(e).__name__,))
    assert results[0] == results[1]
    assert results[0][0] == expect


# -- random straight-line programs ------------------------------------------------------------

MEM_SIZE = 32
EDGE_IMMS = [0, 1, -1, 2, 31, 32, 33, 63, 64, 65, 0x7FFFFFFF, -0x80000000, 0x12345678, -7]

reg = st.integers(0, 9)
imm = st.one_of(st.sampled_from(EDGE_IMMS), st.integers(-(1 << 31), (1 << 31) - 1))
ALU_OPS = [isa.ADD, isa.SUB, isa.MUL, isa.DIV, isa.OR, isa.AND, isa.LSH, isa.RSH, isa.NEG,
           isa.MOD, isa.XOR, isa.MOV, isa.ARSH]
JMP_OPS = [isa.JEQ, isa.JGT, isa.JGE, isa.JSET, isa.JNE, isa.JSGT, isa.JSGE, isa.JLT,
           isa.JLE, isa.JSLT, isa.JSLE]


@st.composite
def alu(draw) -> list[Insn]:
    cls = draw(st.sampled_from([isa.ALU, isa.ALU64]))
    op = draw(st.sampled_from(ALU_OPS))
    src_x = draw(st.booleans())
    off = draw(st.sampled_from([0, 1])) if op in (isa.DIV, isa.MOD) else 0
    if op == isa.MOV and src_x and draw(st.booleans()):
        off = draw(st.sampled_from([8, 16, 32] if cls == isa.ALU64 else [8, 16]))
    dst = draw(st.integers(0, 9))
    if op == isa.NEG:
        return [Insn(cls | op, dst)]
    if src_x:
        return [Insn(cls | op | isa.X, dst, draw(reg), off, 0)]
    return [Insn(cls | op | isa.K, dst, 0, off, draw(imm))]


@st.composite
def endian(draw) -> list[Insn]:
    kind = draw(st.sampled_from([isa.ALU | isa.END | isa.K, isa.ALU | isa.END | isa.X,
                                 isa.ALU64 | isa.END]))
    return [Insn(kind, draw(reg), 0, 0, draw(st.sampled_from([16, 32, 64])))]


@st.composite
def memop(draw) -> list[Insn]:
    size = draw(st.sampled_from([isa.B, isa.H, isa.W, isa.DW]))
    off = draw(st.integers(-4, MEM_SIZE + 2))  # sometimes out of bounds
    kind = draw(st.sampled_from(["ldx", "ldxs", "st", "stx", "stack", "atomic"]))
    base = 1
    if kind == "stack":
        return [Insn(isa.STX | isa.MEM | isa.DW, 10, draw(reg), -8 * draw(st.integers(1, 4))),
                Insn(isa.LDX | isa.MEM | size, draw(reg), 10, -8 * draw(st.integers(1, 4)))]
    if kind == "ldx":
        return [Insn(isa.LDX | isa.MEM | size, draw(reg), base, off)]
    if kind == "ldxs" and size != isa.DW:
        return [Insn(isa.LDX | isa.MEMSX | size, draw(reg), base, off)]
    if kind == "st":
        return [Insn(isa.ST | isa.MEM | size, base, 0, off, draw(imm))]
    if kind == "atomic":
        op = draw(st.sampled_from([isa.ADD, isa.OR, isa.AND, isa.XOR, isa.ADD | isa.FETCH,
                                   isa.XCHG, isa.CMPXCHG]))
        return [Insn(isa.STX | isa.ATOMIC | draw(st.sampled_from([isa.W, isa.DW])), base,
                     draw(st.integers(2, 9)), off, op)]
    return [Insn(isa.STX | isa.MEM | size, base, draw(reg), off)]


@st.composite
def program(draw) -> list[Insn]:
    body: list[Insn] = [Insn(isa.ALU64 | isa.MOV | isa.K, r, 0, 0, draw(imm))
                        for r in (0, 2, 3, 4, 5, 6, 7, 8, 9)]
    pieces = draw(st.lists(st.one_of(alu(), alu(), endian(), memop()), min_size=1,
                           max_size=25))
    for p in pieces:
        body += p
        if draw(st.integers(0, 5)) == 0:   # a forward conditional jump over 1-3 slots
            op = draw(st.sampled_from(JMP_OPS))
            cls = draw(st.sampled_from([isa.JMP, isa.JMP32]))
            x = draw(st.booleans())
            body.append(Insn(cls | op | (isa.X if x else isa.K), draw(reg),
                             draw(reg) if x else 0, draw(st.integers(0, 2)),
                             0 if x else draw(imm)))
            body += [Insn(isa.ALU64 | isa.ADD | isa.K, 0, 0, 0, 1)] * 3
    # keep r1 pointing at the memory for the stores above it, then fold everything into r0
    body = [Insn(isa.ALU64 | isa.MOV | isa.X, 9, 1)] + body
    fixed = []
    for ins in body:
        fixed.append(ins)
        if ins.cls in (isa.ALU, isa.ALU64, isa.LDX) and ins.dst == 1:
            fixed.append(Insn(isa.ALU64 | isa.MOV | isa.X, 1, 9))   # restore the pointer
    for r in range(2, 10):
        fixed.append(Insn(isa.ALU64 | isa.XOR | isa.X, 0, r))
    fixed.append(Insn(isa.EXIT_OP))
    return fixed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program(), st.binary(min_size=MEM_SIZE, max_size=MEM_SIZE))
def test_random_programs_same_as_interp(insns: list[Insn], mem: bytes) -> None:
    prog = Program(name="random", section="", insns=insns)
    assert outcome(jit, prog, mem=mem) == outcome(interp, prog, mem=mem)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 5))
def test_runaway_loops_exceed_budget_on_both(pad: int) -> None:
    insns = [Insn(isa.ALU64 | isa.MOV | isa.K, 0, 0, 0, 0)]
    insns += [Insn(isa.ALU64 | isa.ADD | isa.K, 0, 0, 0, 1)] * pad
    insns += [Insn(isa.JMP | isa.JA, 0, 0, -(pad + 1))]   # back to slot 1 (or itself)
    insns += [Insn(isa.EXIT_OP)]
    prog = Program(name="loop", section="", insns=insns)
    assert outcome(jit, prog, budget=10_000) == outcome(interp, prog, budget=10_000) \
        == ("error", "BudgetExceeded")


CSV_BYTES = st.lists(st.sampled_from([b"0", b"1", b"7", b"9", b".", b"-", b"+", b",", b'"',
                                      b"\n", b"\r\n", b"a", b" ", b"123456789012345678901"]),
                     max_size=120).map(b"".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0, 1, 2, 3, 5]), CSV_BYTES, st.integers(1, 64))
def test_builtins_on_random_bytes_same_as_interp(case: int, data: bytes, chunk: int) -> None:
    name, params = BUILTIN_CASES[case]
    prog = builtin(name, params)
    assert run_chunks(jit, prog, data, chunk) == run_chunks(interp, prog, data, chunk)


PRINTK_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
__s64 rc[6];
char name[8] = "sensor";
SEC("xdp") int prog(struct xdp_md *ctx) {
    char fmt1[] = "value %d of %s (%x)\n";
    char fmt2[] = "no conversions";
    char fmt3[4] = {'a', 'b', 'c', 'd'};          /* no NUL: -EINVAL */
    char fmt4[] = "bad %s";
    char *d = (void *)(long)ctx->data;
    rc[0] = bpf_trace_printk(fmt1, sizeof(fmt1), -42, (long)name, 255);
    rc[1] = bpf_trace_printk(fmt2, sizeof(fmt2));
    rc[2] = bpf_trace_printk(fmt3, sizeof(fmt3));
    rc[3] = bpf_trace_printk(fmt4, sizeof(fmt4), 12345);   /* %s of a bad pointer */
    rc[4] = bpf_trace_printk(fmt2, 0);
    rc[5] = bpf_trace_printk(fmt4, sizeof(fmt4), (long)d); /* %s of chunk bytes */
    return 2;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_trace_printk_same_as_interp() -> None:
    prog = load_object(compile_c(PRINTK_C))
    out = []
    for engine in (interp, jit):
        inst = engine.load(prog)
        inst.run_chunk(b"chunk\0", 0, True)
        out.append((inst.read_state(), inst.trace))
    assert out[0] == out[1]
    assert "value -42 of sensor (ff)\n" in out[1][1]


@st.composite
def looping_program(draw) -> list[Insn]:
    """A counted loop (r6) around random code, calling a random subprogram each time;
    the subprogram gets r1 (memory) and a random r2 and may fault or divide by zero."""
    def body(n_min: int) -> list[Insn]:
        out: list[Insn] = []
        for piece in draw(st.lists(st.one_of(alu(), memop()), min_size=n_min, max_size=8)):
            for ins in piece:
                # keep r1 (memory), r6 (loop counter) and r9 (saved r1) intact
                if ins.cls in (isa.ALU, isa.ALU64, isa.LDX) and ins.dst in (1, 6, 9):
                    ins = ins._replace(dst=7)
                if ins.cls == isa.STX and ins.op & 0xE0 == isa.ATOMIC and \
                        ins.src in (1, 6, 9):
                    ins = ins._replace(src=8)
                out.append(ins)
        return out

    main = body(0)
    sub = body(1)
    count = draw(st.integers(1, 5))
    prog = [Insn(isa.ALU64 | isa.MOV | isa.X, 9, 1),
            Insn(isa.ALU64 | isa.MOV | isa.K, 6, 0, 0, count)]
    loop_start = len(prog)
    prog += main
    prog += [Insn(isa.ALU64 | isa.MOV | isa.X, 1, 9),
             Insn(isa.ALU64 | isa.MOV | isa.K, 2, 0, 0, draw(imm))]
    call_at = len(prog)
    prog.append(Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, 0))   # patched below
    prog += [Insn(isa.ALU64 | isa.ADD | isa.X, 8, 0),
             Insn(isa.ALU64 | isa.SUB | isa.K, 6, 0, 0, 1)]
    back = len(prog)
    prog.append(Insn(isa.JMP | isa.JNE | isa.K, 6, 0, loop_start - back - 1, 0))
    prog += [Insn(isa.ALU64 | isa.MOV | isa.X, 0, 8), Insn(isa.EXIT_OP)]
    sub_start = len(prog)
    prog[call_at] = Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, sub_start - call_at - 1)
    prog += sub + [Insn(isa.ALU64 | isa.XOR | isa.X, 0, 2), Insn(isa.EXIT_OP)]
    return prog


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(looping_program(), st.binary(min_size=MEM_SIZE, max_size=MEM_SIZE))
def test_random_loops_and_calls_same_as_interp(insns: list[Insn], mem: bytes) -> None:
    prog = Program(name="random", section="", insns=insns)
    assert outcome(jit, prog, mem=mem) == outcome(interp, prog, mem=mem)
