"""The jit engine's own contract: buffers it accepts without copying, its code cache, and
the sandbox (every escape attempt faults, exactly where the interp engine faults too)."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

import pytest

from stord.engines.base import MAP_STRIDE, get_engine, map_base
from stord.engines.jit import compile as jit_compile
from stord.engines.jit.engine import JitInstance
from stord.errors import (
    BudgetExceeded,
    CompileError,
    LoadError,
    ProgramFault,
    StordError,
    ValidationError,
)
from stord.program import isa
from stord.program.elf import load_object
from stord.program.isa import Insn
from stord.program.model import Program
from stord.program.toolchain import builtin_object, compile_c
from stord.query.state import decode

jit = get_engine("jit")
interp = get_engine("interp")

CSV = b"id,sensor,value,flag\n" + b"".join(
    f"{i},s{i % 3},{(i * 37) % 1000 - 500}.{i % 100:02d},{i % 2}\n".encode() for i in range(500))


def stats(**params) -> Program:
    return load_object(builtin_object("stats")).with_params(**params)


def run(engine, prog: Program, data, chunk: int = 1 << 20) -> dict:
    inst = engine.load(prog)
    n = len(data)
    for off in range(0, n, chunk):
        end = min(n, off + chunk)
        inst.run_chunk(data[off:end] if not isinstance(data, mmap.mmap)
                       else memoryview(data)[off:end], off, end == n)
    return decode(prog, inst.read_state())


# -- buffers ----------------------------------------------------------------------------

def test_chunk_size_is_exposed() -> None:
    assert JitInstance.chunk_size >= 1 << 16
    assert type(jit).chunk_size == JitInstance.chunk_size


def test_every_buffer_kind_gives_the_interp_result(tmp_path: Path) -> None:
    prog = stats(col=2, header=1)
    want = run(interp, prog, CSV)
    assert want["rows"] == 500
    path = tmp_path / "d.csv"
    path.write_bytes(CSV)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as ro:
        assert run(jit, prog, ro, chunk=777) == want          # read-only mmap, no copy
    assert run(jit, prog, CSV) == want                        # bytes
    assert run(jit, prog, bytearray(CSV), chunk=1000) == want  # writable buffer
    assert run(jit, prog, memoryview(CSV), chunk=4097) == want  # memoryview slices


def test_non_contiguous_buffer_is_refused() -> None:
    inst = jit.load(stats(col=2))
    with pytest.raises(LoadError):
        inst.run_chunk(memoryview(CSV)[::2], 0, True)


def test_chunk_is_never_written() -> None:
    src = r"""
    #include <linux/bpf.h>
    #include <bpf/bpf_helpers.h>
    SEC("xdp") int prog(struct xdp_md *ctx) {
        char *d = (void *)(long)ctx->data, *e = (void *)(long)ctx->data_end;
        if (d + 1 <= e) *(volatile char *)d = 'X';
        return 2;
    }
    char LICENSE[] SEC("license") = "GPL";
    """
    prog = load_object(compile_c(src))
    data = bytearray(b"abc")
    with pytest.raises(ProgramFault, match="write"):
        jit.load(prog).run_chunk(data, 0, True)
    assert data == b"abc"


# -- code cache ---------------------------------------------------------------------------

def test_memory_and_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))
    prog = stats(col=2, header=1, scale=3)
    jit_compile.clear_memory_cache()
    first = jit.load(prog)
    assert first.compiled.source == "compiled"
    jit_compile.wait_for_upgrades()   # cache files are written by a background thread
    assert list(tmp_path.glob("*.o"))
    assert jit.load(prog).compiled.source == "memory"
    jit_compile.clear_memory_cache()
    again = jit.load(prog)
    assert again.compiled.source == "disk"
    assert run(jit, prog, CSV) == run(interp, prog, CSV)


def test_parameters_are_part_of_the_cache_key() -> None:
    by_col = {c: run(jit, stats(col=c, header=1), CSV) for c in (0, 2)}
    assert by_col[0] != by_col[2]
    for c, got in by_col.items():
        assert got == run(interp, stats(col=c, header=1), CSV)


def test_damaged_disk_cache_entry_is_recompiled(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    jit_compile.wait_for_upgrades()   # an earlier test's O2 code could land in tmp_path
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))
    prog = stats(col=2, header=1, scale=4)
    jit_compile.clear_memory_cache()
    jit.load(prog)
    jit_compile.wait_for_upgrades()   # its O2 code too is on disk, to be damaged
    for f in [*tmp_path.glob("*.o"), *tmp_path.glob("*.ll")]:
        f.write_bytes(b"not an object file")
    jit_compile.clear_memory_cache()
    inst = jit.load(prog)
    assert inst.compiled.source == "compiled"
    assert run(jit, prog, CSV) == run(interp, prog, CSV)


def test_validation_runs_beside_llvm_and_its_error_wins(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks run while LLVM compiles the translation: a program they refuse gets their
    error whatever LLVM does with it, and no code of it is kept."""
    jit_compile.wait_for_upgrades()
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))   # nothing compiled before counts
    bad = Program("bad", "xdp", [Insn(isa.ALU64 | isa.MOV | isa.K, 0, 1, 0, 7),   # src set
                                 Insn(isa.EXIT_OP)])
    good = Program("good", "xdp", [Insn(isa.ALU64 | isa.MOV | isa.K, 0, 0, 0, 7),
                                   Insn(isa.EXIT_OP)])
    jit_compile.clear_memory_cache()
    with pytest.raises(ValidationError, match="source register must be 0"):
        jit.load(bad)                       # LLVM compiled it; the checks refused it

    def llvm_refuses(*_args: object, **_kw: object) -> None:
        raise CompileError("jit: LLVM rejected the translated program: (test)")

    optimise = jit_compile.optimise
    monkeypatch.setattr(jit_compile, "optimise", llvm_refuses)
    with pytest.raises(ValidationError, match="source register must be 0"):
        jit.load(bad)
    with pytest.raises(CompileError, match="LLVM rejected"):
        jit.load(good)                      # a valid program gets LLVM's error
    monkeypatch.setattr(jit_compile, "optimise", optimise)
    with pytest.raises(ValidationError):
        jit.load(bad)                       # nothing of it was kept
    inst = jit.load(good)
    assert inst.compiled.source == "compiled"


def test_a_slow_cache_directory_does_not_delay_a_load(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache files are written by the background thread: a load returns while the writes
    wait, wait_for_upgrades reports the wait, and the files land once the writer may go."""
    jit_compile.wait_for_upgrades()
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))
    go = threading.Event()
    write = jit_compile._write_file

    def slow_write(path: Path, data: bytes) -> None:
        assert go.wait(30), "the test never let the writer go"
        write(path, data)

    monkeypatch.setattr(jit_compile, "_write_file", slow_write)
    jit_compile.clear_memory_cache()
    prog = stats(col=1, header=1, scale=2)
    try:
        inst = jit.load(prog)
        assert inst.compiled.source == "compiled"
        assert not list(tmp_path.iterdir())                   # nothing written yet
        assert jit_compile.wait_for_upgrades(0.05) is False   # the writer is held
        assert run(jit, prog, CSV) == run(interp, prog, CSV)  # the code runs meanwhile
    finally:
        go.set()
    assert jit_compile.wait_for_upgrades(60) is True
    names = sorted(p.name.split(".", 1)[1] for p in tmp_path.iterdir())
    assert names == ["fast.o", "ll", "o"], names              # template, first tier, O2
    jit_compile.clear_memory_cache()
    assert jit.load(prog).compiled.source == "disk"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_compiles_and_writes_its_cache(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The background thread does not survive fork: the child starts its own, and its
    loads, O2 code and cache files work."""
    jit_compile.wait_for_upgrades()   # the parent's thread idle: no lock held at fork
    jit.load(stats(col=2, header=1))  # the parent has a JIT and a background thread
    jit_compile.wait_for_upgrades()
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))
    prog = stats(col=0, header=0, scale=3)
    want = run(interp, prog, CSV)
    pid = os.fork()
    if pid == 0:   # the child: report through the exit status only
        ok = False
        try:
            inst = jit.load(prog)
            ok = inst.compiled.tier == "fast" and decode_run(inst, prog) == want
            ok = ok and jit_compile.wait_for_upgrades(60)
            ok = ok and jit.load(prog).compiled.tier == "o2"
            ok = ok and len(list(tmp_path.glob("*.o"))) == 2
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def decode_run(inst: JitInstance, prog: Program) -> dict:
    inst.run_chunk(CSV, 0, True)
    return decode(prog, inst.read_state())


# -- the sandbox ----------------------------------------------------------------------------

def asm(*insns: Insn) -> Program:
    return Program(name="t", section="", insns=list(insns) + [Insn(isa.EXIT_OP)])


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def lddw(dst: int, value: int) -> list[Insn]:
    return [Insn(isa.LDDW, dst, 0, 0, s32(value)), Insn(0, 0, 0, 0, s32(value >> 32))]


def fault_both(prog: Program, mem: bytes | None = None, helpers: str = "conformance",
               cls: type[StordError] = ProgramFault) -> str:
    messages = []
    for engine in (interp, jit):
        with pytest.raises(cls) as e:
            engine.load(prog, budget=100_000, helpers=helpers).call(
                bytearray(mem) if mem is not None else None)
        messages.append(str(e.value))
    return messages[1]


@pytest.mark.parametrize("addr", [0, 8, 0x7FFF_0000_0000, 0xFFFF_FFFF_FFFF_FFF8,
                                  0x1000_0000 - 8, 0x5000_0000 + 32, map_base(0),
                                  map_base(0) + MAP_STRIDE // 2])
def test_loads_from_anywhere_else_fault(addr: int) -> None:
    prog = asm(*lddw(2, addr), Insn(isa.LDX | isa.MEM | isa.DW, 0, 2, 0))
    msg = fault_both(prog, mem=bytes(32))
    assert f"{addr:#x}" in msg and "pc 2" in msg


def test_stack_below_the_frame_and_above_the_top_fault() -> None:
    fault_both(asm(Insn(isa.LDX | isa.MEM | isa.DW, 0, 10, -520)))
    fault_both(asm(Insn(isa.STX | isa.MEM | isa.DW, 10, 1, 0)))
    fault_both(asm(Insn(isa.STX | isa.MEM | isa.W, 10, 1, -2)))   # straddles the top


def test_conformance_memory_bounds() -> None:
    ok = asm(Insn(isa.LDX | isa.MEM | isa.W, 0, 1, 28))
    assert jit.load(ok, helpers="conformance").call(bytearray(range(32))) == \
        int.from_bytes(bytes(range(28, 32)), "little")
    fault_both(asm(Insn(isa.LDX | isa.MEM | isa.W, 0, 1, 29)), mem=bytes(32))
    fault_both(asm(Insn(isa.ST | isa.MEM | isa.B, 1, 0, -1, 7)), mem=bytes(32))


def test_call_depth_is_limited() -> None:
    # f calls itself: depth 8 is the limit, so the ninth frame faults
    prog = Program(name="t", section="", insns=[
        Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, 1), Insn(isa.EXIT_OP),
        Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, -1), Insn(isa.EXIT_OP)])
    assert "depth" in fault_both(prog)


def test_runaway_loop_stops() -> None:
    prog = Program(name="t", section="", insns=[Insn(isa.JMP | isa.JA, 0, 0, -1),
                                                 Insn(isa.EXIT_OP)])
    with pytest.raises(BudgetExceeded):
        jit.load(prog, budget=1000, helpers="conformance").call(None)


# A backward jump into shared tail code (clang emits these) is not a loop: budget 0 runs it.
# The loop counts down r1 from 5, with a backward jump to the shared tail on its way out.
TAIL_ASM = """
    mov %r0, 0
    mov %r1, 5
    ja body
tail:
    add %r0, 100
    exit
body:
    jeq %r1, 0, tail
    add %r0, 1
    sub %r1, 1
    ja body
"""


@pytest.mark.parametrize("budget, ok", [(5, True), (4, False)])
def test_only_jumps_that_close_a_loop_are_charged(budget: int, ok: bool) -> None:
    from stord.program.asm import assemble

    prog = Program(name="t", section="", insns=assemble(TAIL_ASM))
    inst = jit.load(prog, budget=budget, helpers="conformance")
    if ok:   # 5 iterations: 5 charged back-edges; the jump to `tail` is free
        assert inst.call(None) == 105
    else:
        with pytest.raises(BudgetExceeded):
            inst.call(None)


# A callee reads and writes its caller's frame through a pointer argument: inlined (called
# once or twice; the jit knows the depth and the pointer) or a real function (it may call
# itself, so it is not inlined, and knows nothing): the same result, and the same faults
# one byte past the caller's frame (the top of the stack) or below the callee's own frame.
CALLER_FRAME_ASM = """
    mov %r1, 0x1234
    stxdw [%r10-8], %r1
    mov %r1, %r10
    add %r1, -8
    call local f
    {second}
    ldxdw %r0, [%r10-8]
    exit
f:
    ldxdw %r2, [%r1{read:+d}]
    add %r2, 1
    stxdw [%r1+0], %r2
    jne %r2, 0, out
    call local f
out:
    mov %r0, 0
    exit
"""


@pytest.mark.parametrize("shape", ["once", "twice", "recursive"])
@pytest.mark.parametrize("read, ok", [(0, True), (-1024 + 8, True), (1, False), (8, False),
                                      (-1024 + 7, False)])
def test_callee_uses_its_callers_frame(shape: str, read: int, ok: bool) -> None:
    from stord.program.asm import assemble

    text = CALLER_FRAME_ASM.format(read=read,
                                   second="call local f" if shape == "twice" else "mov %r0, 0")
    if shape != "recursive":   # no self-call: f is inlined
        text = text.replace("    call local f\nout:", "out:")
    prog = Program(name="t", section="", insns=assemble(text))
    if not ok:
        fault_both(prog)
        return
    want = interp.load(prog, helpers="conformance").call(None)
    assert jit.load(prog, helpers="conformance").call(None) == want
    if read == 0:
        assert want == 0x1234 + (2 if shape == "twice" else 1)


# A stack pointer spilled to r10-8 and filled back (kinds.py keeps the kind of what a slot
# holds), with the slot overwritten in between in ways that must make the fill unknown:
# then the store through the filled pointer writes fp-32 (7) instead of fp-16 (70).
SPILL_ASM = """
    mov %r6, 0
    stxdw [%r10-16], %r6
    stxdw [%r10-32], %r6
    mov %r1, %r10
    add %r1, -16
    stxdw [%r10-8], %r1
    mov %r2, %r10
    add %r2, -32
    {between}
    ldxdw %r3, [%r10-8]
    mov %r4, 7
    stxdw [%r3+0], %r4
    ldxdw %r0, [%r10-16]
    mul %r0, 10
    ldxdw %r5, [%r10-32]
    add %r0, %r5
    exit
g:
    mov %r2, %r1
    add %r2, -24
    stxdw [%r1+0], %r2
    mov %r0, 0
    exit
"""
SPILL_CASES = {
    "kept": ("", 70),
    # a pointer kinds.py cannot follow (an AND) that points at the slot
    "through an unknown pointer": ("mov %r9, %r10\n    and %r9, -1\n    add %r9, -8\n"
                                   "    stxdw [%r9+0], %r2", 7),
    # the low half of the slot: fp-32 and fp-16 differ only there
    "by a narrower store": ("stxw [%r10-8], %r2", 7),
    # a callee given the slot's address
    "by a callee": ("mov %r1, %r10\n    add %r1, -8\n    call local g", 7),
    # two paths that spill different pointers (the analysis takes both)
    "on one of two paths": ("mov %r7, 1\n    jeq %r7, 0, +1\n    stxdw [%r10-8], %r2", 7),
    # a spill of the other pointer over it
    "by another spill": ("stxdw [%r10-8], %r2", 7),
}


@pytest.mark.parametrize("case", SPILL_CASES)
def test_a_filled_pointer_is_the_last_one_spilled(case: str) -> None:
    from stord.program.asm import assemble

    between, want = SPILL_CASES[case]
    prog = Program(name="t", section="", insns=assemble(SPILL_ASM.format(between=between)))
    assert interp.load(prog, helpers="conformance").call(None) == want
    assert jit.load(prog, helpers="conformance").call(None) == want


def test_kinds_follow_a_pointer_through_a_spill_slot() -> None:
    """What makes the jit's code for a bpf_loop callback keep its loop state in registers
    when clang spills the context pointer: the filled pointer is known to be r10-16."""
    from stord.engines.jit import kinds
    from stord.program.asm import assemble

    insns = assemble(SPILL_ASM.format(between=""))
    end = next(i for i, ins in enumerate(insns) if ins.op == isa.EXIT_OP) + 1
    states = kinds.analyse(insns, 0, end, set(), {})
    store = next(pc for pc in sorted(states) if insns[pc].op == isa.STX | isa.MEM | isa.DW
                 and insns[pc].dst == 3)
    assert states[store][3] == ("s", -16)


def test_block_sccs_put_only_loops_together() -> None:
    from bisect import bisect_right

    from stord.engines.jit.translate import block_sccs
    from stord.program.asm import assemble

    insns = assemble(TAIL_ASM)
    order, comps = block_sccs(insns, 0, len(insns))
    scc = [comps[bisect_right(order, pc) - 1] for pc in range(len(insns))]
    body, tail = 5, 3   # slots of the labels
    assert scc[body] == scc[len(insns) - 1] == scc[body + 1]   # the loop's slots
    assert scc[tail] != scc[body] and scc[0] != scc[body]


MAPS_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, __u64); __type(value, __u32); } h SEC(".maps");
const volatile __u32 seed = 1;
__s64 sum_rc;
__u32 hits;
static long step(__u32 i, void *ctx) {
    __u32 *x = ctx;
    *x = *x * 1103515245 + 12345;
    __u64 k = (*x >> 8) % 100;
    __u32 v = i;
    switch ((*x >> 4) % 4) {
    case 0: case 1: sum_rc += bpf_map_update_elem(&h, &k, &v, (*x >> 20) % 3); break;
    case 2: sum_rc += bpf_map_delete_elem(&h, &k); break;
    default: { __u32 *p = bpf_map_lookup_elem(&h, &k); if (p) { hits++; *p += 1000; } }
    }
    return 0;
}
SEC("xdp") int prog(struct xdp_md *ctx) {
    __u32 x = seed;
    bpf_loop(3000, step, &x, 0);
    return 2;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hash_map_churn_matches_interp(seed: int) -> None:
    """Inserts, updates with every flag, deletes (tombstones) and a full map (-E2BIG)."""
    prog = load_object(compile_c(MAPS_C)).with_params(seed=seed)
    states = []
    for engine in (interp, jit):
        inst = engine.load(prog)
        inst.run_chunk(b"", 0, True)
        states.append(inst.read_state())
    assert states[0] == states[1]
    assert 0 < len(states[1].maps["h"]) <= 64


def fan_out(levels: int, calls: int) -> Program:
    """Function L calls function L+1 `calls` times; the last one counts in r6."""
    insns: list[Insn] = []
    per = calls + 2
    for lvl in range(levels):
        for k in range(calls):
            i = lvl * per + k
            if lvl < levels - 1:
                insns.append(Insn(isa.CALL_OP, 0, isa.PSEUDO_CALL, 0, (lvl + 1) * per - i - 1))
            else:
                insns.append(Insn(isa.ALU64 | isa.ADD | isa.K, 6, 0, 0, 1))
        insns += [Insn(isa.ALU64 | isa.MOV | isa.K, 0, 0, 0, lvl + 1), Insn(isa.EXIT_OP)]
    return Program(name="fanout", section="", insns=insns)


def test_nested_calls_do_not_multiply_the_code() -> None:
    from stord.engines.jit.translate import INLINE_SMALL, inline_set, subprogram_starts
    prog = fan_out(7, 6)   # 6^6 copies of the leaf if everything were inlined
    starts = subprogram_starts(prog.insns)
    chosen = inline_set(prog.insns, starts, [])
    ends = dict(zip(starts, starts[1:] + [len(prog.insns)], strict=True))

    def emitted(f: int) -> int:   # a function's code with the callees inlined into it
        callees = [i + ins.imm + 1 for i, ins in enumerate(prog.insns[f:ends[f]], f)
                   if ins.op == isa.CALL_OP and ins.src == isa.PSEUDO_CALL]
        return ends[f] - f + sum(emitted(c) for c in callees if c in chosen)

    total = sum(emitted(f) for f in starts if f == 0 or f not in chosen)
    assert total <= len(prog.insns) + INLINE_SMALL * len(starts)
    assert starts[-1] in chosen               # the small leaf is inlined
    assert outcome_r0(jit, prog) == outcome_r0(interp, prog) == 1


def outcome_r0(engine, prog: Program) -> int:
    return engine.load(prog, helpers="conformance").call(None)


@pytest.mark.parametrize("off,size", [(8, 8), (12, 8), (15, 2), (14, 4), (16, 8), (0, 8),
                                      (20, 8), (12, 16)])
def test_reads_across_meta_and_chunk_match_interp(off: int, size: int) -> None:
    """meta (16 bytes) and the chunk are one read-only region, as in the interp."""
    from stord.engines.base import META_BASE
    src = r"""
    #include <linux/bpf.h>
    #include <bpf/bpf_helpers.h>
    struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4);
             __type(key, __u8[16]); __type(value, __u64); } h SEC(".maps");
    SEC("xdp") int prog(struct xdp_md *ctx) { return 2; }
    char LICENSE[] SEC("license") = "GPL";
    """
    maps = load_object(compile_c(src)).maps
    if size == 16:   # a helper reading a 16-byte key that starts in meta
        body = [*lddw(2, META_BASE + off), Insn(isa.LDDW, 1, isa.PSEUDO_MAP_FD, 0, 0),
                Insn(0), Insn(isa.CALL_OP, 0, 0, 0, 1)]
    else:
        sz = {1: isa.B, 2: isa.H, 4: isa.W, 8: isa.DW}[size]
        body = [*lddw(2, META_BASE + off), Insn(isa.LDX | isa.MEM | sz, 0, 2, 0)]
    prog = Program(name="t", section="", insns=body + [Insn(isa.EXIT_OP)], maps=maps)
    got = []
    for engine in (interp, jit):
        try:
            got.append(engine.load(prog).run_chunk(bytes(range(1, 9)), 0x0102030405060708,
                                                   True))
        except ProgramFault:
            got.append("fault")
    assert got[0] == got[1]


def test_new_parameters_reuse_the_translation_but_not_the_code() -> None:
    """A second parameter set skips translation (template) yet gets its own constants."""
    jit_compile.clear_memory_cache()
    base_prog = load_object(builtin_object("hist"))
    results = {}
    for lo in (-100000, 0, 50000):
        prog = base_prog.with_params(col=2, header=1, lo=lo, width=5000, nbuckets=8)
        results[lo] = run(jit, prog, CSV)
        assert results[lo] == run(interp, prog, CSV)
    assert len({repr(r) for r in results.values()}) == 3


CTX_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
__u64 out[12];
SEC("xdp") int prog(struct xdp_md *ctx) {
    out[0] = ctx->data; out[1] = ctx->data_end; out[2] = ctx->data_meta;
    out[3] = ctx->ingress_ifindex; out[4] = ctx->rx_queue_index;
    out[5] = *(volatile __u64 *)ctx;                 /* two fields at once */
    out[6] = *(volatile __u8 *)((char *)ctx + 1);
    out[7] = *(volatile __s16 *)((char *)ctx + 6);
    out[8] = *(volatile __u32 *)((char *)ctx + 20);
    char *d = (void *)(long)ctx->data, *e = (void *)(long)ctx->data_end;
    char *m = (void *)(long)ctx->data_meta;
    out[9] = e - d;
    if (m + 16 <= d) out[10] = *(__u64 *)m;
    if (d + 3 <= e) out[11] = d[2];
    return 2;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.parametrize("size", [0, 3, 100])
def test_context_reads_of_a_chunk_run_match_interp(size: int) -> None:
    """jit code for chunks folds the context's known fields; every read still agrees."""
    prog = load_object(compile_c(CTX_C))
    states = []
    for engine in (interp, jit):
        inst = engine.load(prog)
        inst.run_chunk(bytes(range(size)), 12345, False)
        states.append(inst.read_state())
    assert states[0] == states[1]
    # the same program can still be called with the conformance convention (r1 = mem)
    calls = []
    for engine in (interp, jit):
        try:
            calls.append(engine.load(prog).call(bytearray(range(40))))
        except ProgramFault:
            calls.append("fault")
    assert calls[0] == calls[1]


def test_tiered_code_switches_between_chunks(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast code runs first; the background O2 code takes over between chunks."""
    if jit_compile.PIPELINE != "tiered":
        pytest.skip(f"STORD_JIT_PIPELINE={jit_compile.PIPELINE}: no tiers to switch")
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))
    jit_compile.clear_memory_cache()
    prog = stats(col=2, header=1, scale=5)
    inst = jit.load(prog)
    assert inst.compiled.tier == "fast"
    half = len(CSV) // 2
    inst.run_chunk(CSV[:half], 0, False)
    jit_compile.wait_for_upgrades()
    inst.run_chunk(CSV[half:], half, True)
    assert inst.compiled.tier == "o2"
    assert decode(prog, inst.read_state()) == run(interp, prog, CSV)
    assert jit.load(prog).compiled.tier == "o2"          # the cache now holds O2 code
    assert list(tmp_path.glob("*.fast.o")) and [p for p in tmp_path.glob("*.o")
                                                 if not p.name.endswith(".fast.o")]


def test_first_tier_code_serves_every_parameter_set(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The first tier reads .rodata from the instance's memory: one object serves every
    parameter set of a program, and each instance still sees its own parameters."""
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))
    monkeypatch.setattr(jit_compile, "PIPELINE", "fast")   # no O2 code to switch to
    jit_compile.clear_memory_cache()
    progs = [stats(col=2, header=1, scale=5), stats(col=0, header=0),
             stats(col=2, header=1, scale=1)]
    insts = [jit.load(p) for p in progs]
    assert [i.compiled.tier for i in insts] == ["fast"] * 3
    assert [i.compiled.source for i in insts] == ["compiled", "memory", "memory"]
    assert len({ctypes.cast(i.compiled.entry, ctypes.c_void_p).value for i in insts}) == 1
    results = []
    for prog, inst in zip(progs, insts, strict=True):
        inst.run_chunk(CSV, 0, True)
        results.append(decode(prog, inst.read_state()))
        assert results[-1] == run(interp, prog, CSV)
    assert results[0] != results[1] and results[0] != results[2]
    jit_compile.wait_for_upgrades()   # the .fast.o is on disk
    jit_compile.clear_memory_cache()
    assert jit.load(progs[1]).compiled.source == "disk"    # the shared .fast.o


def test_code_runs_wherever_the_address_space_puts_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects use the small code model (32-bit offsets within an object) and JITLink puts
    each in one allocation. A daemon maps multi-GiB files between compiles, so its objects
    land gigabytes apart: both tiers of every built-in must still link and agree with
    interp."""
    monkeypatch.setenv("STORD_JIT_CACHE", str(tmp_path))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    gap = 6 << 30   # address space only (PROT_NONE, MAP_NORESERVE): no memory is used
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000   # MAP_NORESERVE
    holes = []
    jit_compile.clear_memory_cache()
    progs = [stats(col=2, header=1, scale=s) for s in (1, 2, 3)] + [
        load_object(builtin_object(name)).with_params(**params)
        for name, params in (("hist", {"col": 2, "header": 1, "lo": -500, "width": 100}),
                             ("count", {"col": 3, "header": 1, "op": 0}),
                             ("groupby", {"key_col": 1, "col": 2, "header": 1}))]
    try:
        for prog in progs:
            p = libc.mmap(None, gap, 0, flags, -1, 0)   # PROT_NONE
            assert p not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
            holes.append(p)
            fast = run(jit, prog, CSV)
            jit_compile.wait_for_upgrades()
            assert jit.load(prog).compiled.tier in ("o2", jit_compile.PIPELINE)
            assert fast == run(jit, prog, CSV) == run(interp, prog, CSV)
    finally:
        for p in holes:
            libc.munmap(p, gap)
