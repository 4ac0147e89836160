"""The kernel engine: programs verified by the running kernel and run with BPF_PROG_TEST_RUN.

Oracles: the interp engine (same program, same chunks: decoded states must be equal),
Python over the same bytes, the upstream bpf_conformance vectors, and the kernel verifier's
own messages. Skipped, with the probe's reason, where bpf(2) cannot load and run XDP.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stord.engines.base import DEFAULT_BUDGET, get_engine
from stord.engines.kernel import bpf
from stord.engines.kernel.cache import PROGRAMS
from stord.engines.kernel.engine import KernelEngine, _Key, clear_cache, verify_program
from stord.errors import LoadError, ValidationError, VerifierError
from stord.program import isa
from stord.program.asm import assemble
from stord.program.elf import load_object
from stord.program.isa import Insn
from stord.program.model import MAP_ARRAY, MAP_HASH, MapDef, Program
from stord.program.toolchain import builtin_object, compile_c
from stord.query.builtins import OPS, grep_dfa
from stord.query.executor import execute
from stord.query.state import decode

REASON = KernelEngine.probe()
pytestmark = pytest.mark.skipif(REASON is not None,
                                reason=f"kernel engine unavailable here: {REASON}")

VECTORS = Path("/work/shared/conformance/tests")

# A chunk scanner the kernel verifier accepts: a bpf_loop callback per byte (it needs BTF
# func_info), direct packet access bounded by data_end, .rodata parameter, .bss/.data
# globals, hash, array and per-CPU array maps, and the stord_meta in front of the data.
LINESTATS_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct meta { __u64 offset; __u32 flags; __u32 pad; };

const volatile __u32 mult = 1;
__u64 lines, digit_sum, bytes_seen, offset_ok, last_seen;
__u64 max_len __attribute__((btf_decl_tag("stord:max")));
__u64 cur_len __attribute__((btf_decl_tag("stord:scratch")));
__u64 calls = 100;

struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 256);
         __type(key, __u8); __type(value, __u64); } firsts SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 10);
         __type(key, __u32); __type(value, __u64); } digits SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } percpu SEC(".maps");

struct scan { struct xdp_md *ctx; };

static long byte_cb(__u32 i, void *arg)
{
	struct scan *s = arg;
	void *data = (void *)(long)s->ctx->data;
	void *end = (void *)(long)s->ctx->data_end;
	__u8 *p, c;

	if (i >= 4096)
		return 1;
	p = data + i;
	if ((void *)(p + 1) > end)
		return 1;
	c = *p;
	if (cur_len == 0) {
		__u64 one = 1, *v = bpf_map_lookup_elem(&firsts, &c);
		if (v)
			*v += 1;
		else
			bpf_map_update_elem(&firsts, &c, &one, BPF_ANY);
	}
	if (c == '\n') {
		lines++;
		if (cur_len > max_len)
			max_len = cur_len;
		cur_len = 0;
	} else {
		cur_len++;
		if (c >= '0' && c <= '9') {
			__u32 k = c - '0';
			__u64 *d = bpf_map_lookup_elem(&digits, &k);
			digit_sum += k * mult;
			if (d)
				*d += 1;
		}
	}
	return 0;
}

SEC("xdp") int linestats(struct xdp_md *ctx)
{
	struct meta *m = (void *)(long)ctx->data_meta;
	struct scan s = { .ctx = ctx };
	__u32 len, k = 0;
	__u64 *pc;

	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return XDP_ABORTED;
	len = ctx->data_end - ctx->data;
	if (m->offset == bytes_seen)
		offset_ok++;
	bytes_seen += len;
	calls++;
	pc = bpf_map_lookup_elem(&percpu, &k);
	if (pc)
		*pc += len;
	bpf_loop(len, byte_cb, &s, 0);
	if (m->flags & 1) {
		last_seen++;
		if (cur_len > max_len)
			max_len = cur_len;
	}
	return (m->flags & 1) ? XDP_PASS : XDP_DROP;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def kernel() -> KernelEngine:
    return KernelEngine()


@pytest.fixture(scope="module")
def linestats() -> Program:
    return load_object(compile_c(LINESTATS_C))


def open_fds() -> int:
    """The process's BPF object fds (programs, maps, BTF): only these, because other threads
    open files at any time (the jit's background compiles write its cache)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:   # closed meanwhile (the listing's own fd among them)
            continue
        n += target.startswith(("anon_inode:bpf-", "anon_inode:btf"))
    return n


def run(engine, prog: Program, chunks: list[bytes]) -> tuple[list[int], dict]:
    """Run chunks in file order, the last one flagged; (verdicts, decoded state)."""
    verdicts, off = [], 0
    with engine.load(prog) as inst:
        for i, c in enumerate(chunks):
            verdicts.append(inst.run_chunk(c, off, i == len(chunks) - 1))
            off += len(c)
        state = inst.read_state()
    return verdicts, decode(prog, state)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def python_linestats(data: bytes, mult: int) -> dict:
    lines = data.split(b"\n")
    firsts = Counter(ln[:1] or b"\n" for ln in lines[:-1])
    if lines[-1]:
        firsts[lines[-1][:1]] += 1
    digits = Counter(chr(b) for b in data if 48 <= b <= 57)
    return {
        "lines": data.count(b"\n"),
        "digit_sum": sum(int(d) * n for d, n in digits.items()) * mult,
        "max_len": max((len(ln) for ln in lines), default=0),
        "bytes_seen": len(data),
        "firsts": {f[0]: n for f, n in firsts.items()},
        "digits": {i: digits.get(str(i), 0) for i in range(10)},
    }


# -- differential: kernel vs interp vs Python on the same chunks --------------------------

text = st.text(alphabet="0123456789ab,x\n", max_size=3000).map(str.encode)
cut_lists = st.lists(st.integers(min_value=0, max_value=3000), max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=text, cuts=cut_lists, mult=st.integers(min_value=0, max_value=1000))
def test_linestats_matches_interp_and_python(kernel, linestats, data, cuts, mult) -> None:
    prog = linestats.with_params(mult=mult)
    chunks = split(data, cuts)
    k_verdicts, k_state = run(kernel, prog, chunks)
    i_verdicts, i_state = run(get_engine("interp"), prog, chunks)
    assert k_verdicts == i_verdicts == [1] * (len(chunks) - 1) + [2]
    assert k_state == i_state
    want = python_linestats(data, mult)
    for name in ("lines", "digit_sum", "max_len", "bytes_seen", "firsts", "digits"):
        assert k_state[name] == want[name], name
    assert k_state["calls"] == 100 + len(chunks)
    assert k_state["offset_ok"] == len(chunks)      # meta.offset arrived for every chunk
    assert k_state["last_seen"] == 1                 # meta.flags LAST only on the last one
    assert k_state["percpu"] == {0: len(data)}       # all runs on the instance's CPU
    assert "cur_len" not in k_state                  # scratch stays out of the result


def test_long_chunk_runs_in_pieces_the_kernel_can_take(kernel, linestats) -> None:
    data = (b"12,ab\n" * 1500)[:9000]
    assert len(data) > 2 * kernel.chunk_size
    _, state = run(kernel, linestats, [data])
    want = python_linestats(data, 1)
    assert state["bytes_seen"] == want["bytes_seen"] and state["lines"] == want["lines"]
    assert state["digit_sum"] == want["digit_sum"]
    pieces = -(-len(data) // kernel.chunk_size)
    assert state["calls"] == 100 + pieces and state["offset_ok"] == pieces
    assert state["last_seen"] == 1


# -- built-in programs: kernel vs interp on generated CSV ----------------------------------

BUILTIN_PARAMS = {
    "count": {"col": 2, "header": 1, "op": OPS["gt"], "value": 1234},
    "grep": {"needle_len": 2, "dfa": grep_dfa(b"s1")},
    "stats": {"col": 2, "header": 1},
    "hist": {"col": 2, "header": 1, "lo": -5000, "width": 2500, "nbuckets": 8},
    "groupby": {"col": 2, "key_col": 1, "header": 1},
}


@pytest.fixture(scope="module")
def builtins() -> dict[str, Program | VerifierError]:
    """Every built-in with parameters, or the VerifierError the kernel gave it. Verified
    two at a time: a program that hits the 1 M instruction limit takes ~10 s of kernel
    time, and bpf(2) through ctypes releases the GIL."""
    def verified(name: str) -> Program | VerifierError:
        prog = load_object(builtin_object(name)).with_params(**BUILTIN_PARAMS[name])
        try:
            verify_program(prog)
        except VerifierError as e:
            return e
        return prog
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(BUILTIN_PARAMS, pool.map(verified, BUILTIN_PARAMS), strict=True))


def builtin_for_kernel(builtins: dict[str, Program | VerifierError], name: str) -> Program:
    """xfail (with the verifier's words) if the kernel refuses the built-in: that is a
    property of the program, reported, not hidden."""
    got = builtins[name]
    if isinstance(got, VerifierError):
        pytest.xfail(f"kernel verifier rejects built-in {name!r}: {str(got).splitlines()[0]}")
    return got


values = st.one_of(
    st.decimals(min_value=-99999, max_value=99999, places=2).map(str),
    st.integers(min_value=-1000, max_value=1000).map(str),
    st.sampled_from(["", "x", "1.5.2", "-", " 3", "1e3"]))
csv_rows = st.lists(st.tuples(st.sampled_from(["s0", "s1", "s2", "\"q,x\""]), values),
                    max_size=40)


@pytest.mark.parametrize("name", sorted(BUILTIN_PARAMS))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(rows=csv_rows, chunk=st.integers(min_value=100, max_value=3520), final_lf=st.booleans())
def test_builtin_matches_interp(builtins, tmp_path, name, rows, chunk, final_lf) -> None:
    """The executor over a file, chunk by chunk, on both engines: equal decoded states.
    (chunk >= 100: the interp engine is slow per chunk; short chunks are tested above.)"""
    prog = builtin_for_kernel(builtins, name)
    lines = ["id,sensor,value,flag"] + [f"{i},{k},{v},{i % 2}" for i, (k, v) in enumerate(rows)]
    path = tmp_path / f"{name}.csv"
    path.write_bytes(("\n".join(lines) + ("\n" if final_lf else "")).encode())
    k = execute(prog, str(path), engine="kernel", budget=DEFAULT_BUDGET, chunk_size=chunk)
    i = execute(prog, str(path), engine="interp", budget=DEFAULT_BUDGET, chunk_size=chunk)
    assert k["engine"] == "kernel" and k["chunks"] == i["chunks"]
    assert k["state"] == i["state"]


def test_executor_runs_kernel_chunks_of_the_engines_size(kernel, linestats, tmp_path) -> None:
    data = b"".join(b"%d,%d\n" % (i, i * 7 % 13) for i in range(2000))
    path = tmp_path / "lines.csv"
    path.write_bytes(data)
    k = execute(linestats, str(path), engine="kernel", budget=DEFAULT_BUDGET)
    i = execute(linestats, str(path), engine="interp", budget=DEFAULT_BUDGET,
                chunk_size=kernel.chunk_size)
    assert k["chunks"] == -(-len(data) // kernel.chunk_size)
    assert k["state"] == i["state"]
    assert k["state"]["lines"] == 2000 and k["state"]["bytes_seen"] == len(data)


HANDMADE = """
    ldxw %r2, [%r1+0]
    ldxw %r3, [%r1+4]
    mov %r4, %r2
    add %r4, 1
    jgt %r4, %r3, out
    ldxb %r5, [%r2+0]
    stxw [%r10-4], %r5
    sub %r3, %r2
    stxdw [%r10-16], %r3
    lddw %r1, map[0]
    mov %r2, %r10
    add %r2, -4
    mov %r3, %r10
    add %r3, -16
    mov %r4, 0
    call 2
out:
    mov %r1, 0
    stxw [%r10-20], %r1
    lddw %r1, map[1]
    mov %r2, %r10
    add %r2, -20
    call 1
    jeq %r0, 0, done
    ldxdw %r1, [%r0+0]
    add %r1, 1
    stxdw [%r0+0], %r1
    lddw %r1, map_value[2]+8
    ldxdw %r2, [%r1+0]
    add %r2, 3
    stxdw [%r1+0], %r2
done:
    mov %r0, 2
    exit
"""


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.binary(max_size=60), max_size=8))
def test_handmade_program_without_btf_matches_interp(kernel, chunks) -> None:
    """Maps without BTF: hash keyed by a chunk's first byte -> its length (map_update),
    an array counter (map_lookup), and a .bss counter through a map-value address."""
    prog = Program(name="handmade", section="xdp", license="GPL", insns=assemble(HANDMADE),
                   maps=[MapDef("lens", MAP_HASH, 4, 8, 64), MapDef("calls", MAP_ARRAY, 4, 8, 2),
                         MapDef(".bss", MAP_ARRAY, 4, 16, 1, initial=bytes(16))])
    states = []
    for engine in (kernel, get_engine("interp")):
        with engine.load(prog) as inst:
            for c in chunks:
                assert inst.run_chunk(c, 0, False) == 2
            states.append(inst.read_state())
    k, i = states
    assert k == i
    want = {bytes([c[0]]) + bytes(3): len(c).to_bytes(8, "little") for c in chunks if c}
    assert k.maps["lens"] == want
    assert k.maps["calls"][bytes(4)] == len(chunks).to_bytes(8, "little")
    assert k.globals[".bss"] == bytes(8) + (3 * len(chunks)).to_bytes(8, "little")


def length_program() -> Program:
    """r0 = ctx->data_end - ctx->data: what the program sees of the chunk."""
    return Program(name="len", section="xdp", license="GPL", insns=[
        Insn(0x61, 2, 1, 0), Insn(0x61, 0, 1, 4), Insn(0x1F, 0, 2), Insn(0x95)])


def meta_program(field_off: int) -> Program:
    """r0 = the u32 at data_meta + field_off, after the bounds check the verifier wants."""
    return Program(name="meta", section="xdp", license="GPL", insns=[
        Insn(0x61, 2, 1, 8),               # r2 = data_meta
        Insn(0x61, 3, 1, 0),               # r3 = data
        Insn(0xBF, 4, 2), Insn(0x07, 4, 0, 0, 16),
        Insn(0xB7, 0, 0, 0, 0),
        Insn(0x2D, 4, 3, 1),               # if r4 > r3 goto exit
        Insn(0x61, 0, 2, field_off),       # r0 = *(u32 *)(r2 + off)
        Insn(0x95)])


@pytest.mark.parametrize("n", [0, 1, 13, 14, 15, 100, 3519, 3520])
def test_program_sees_the_whole_chunk_including_short_ones(kernel, n) -> None:
    with kernel.load(length_program()) as inst:
        assert inst.run_chunk((bytes(range(256)) * 14)[:n], 0, True) == n
    assert kernel.chunk_size == 3520


def test_one_instance_takes_chunks_of_any_size_in_any_order(kernel) -> None:
    sizes = [1, 100, 0, 3520, 14, 2000, 3520, 13]
    with kernel.load(length_program()) as inst:
        assert [inst.run_chunk(b"z" * n, 0, False) for n in sizes] == sizes


@given(offset=st.integers(min_value=0, max_value=(1 << 64) - 1), last=st.booleans(),
       n=st.integers(min_value=0, max_value=40))
@settings(max_examples=30, deadline=None)
def test_metadata_carries_offset_and_last_flag(kernel, offset, last, n) -> None:
    with kernel.load(meta_program(0)) as lo, kernel.load(meta_program(4)) as hi, \
            kernel.load(meta_program(8)) as flags:
        assert lo.run_chunk(b"x" * n, offset, last) == offset & 0xFFFFFFFF
        assert hi.run_chunk(b"x" * n, offset, last) == offset >> 32
        assert flags.run_chunk(b"x" * n, offset, last) == int(last)


# -- the verifier ---------------------------------------------------------------------------

def test_unchecked_packet_access_is_rejected_with_the_verifier_message(kernel) -> None:
    prog = Program(name="unchecked", section="xdp", license="GPL", insns=[
        Insn(0x61, 2, 1, 0),               # r2 = ctx->data
        Insn(0x71, 0, 2, 0),               # r0 = *(u8 *)(r2 + 0): no data_end check
        Insn(0x95)])
    with pytest.raises(VerifierError) as e:
        kernel.load(prog)
    assert e.value.code == "verifier_rejected"
    assert "invalid access to packet" in str(e.value)
    assert "outside of the packet" in str(e.value).splitlines()[0]
    with pytest.raises(VerifierError):
        verify_program(prog)


def test_c_program_the_verifier_rejects() -> None:
    src = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int peek(struct xdp_md *ctx)
{
	unsigned char *p = (void *)(long)ctx->data;
	return p[ctx->rx_queue_index];   /* unbounded index, no data_end check */
}
char LICENSE[] SEC("license") = "GPL";
"""
    prog = load_object(compile_c(src))
    with pytest.raises(VerifierError) as e:
        verify_program(prog)
    first = str(e.value).splitlines()[0]
    assert "peek" in first and ("packet" in first or "unbounded" in first), first
    assert "processed" not in str(e.value).splitlines()[-1]   # statistics are not the error


def test_rejection_names_the_c_source_line(linestats) -> None:
    """line_info from .BTF.ext, moved to the linked slots, puts C lines into the log."""
    bad = LINESTATS_C.replace("if ((void *)(p + 1) > end)\n\t\treturn 1;", "")
    assert bad != LINESTATS_C
    with pytest.raises(VerifierError) as e:
        verify_program(load_object(compile_c(bad)))
    msg = str(e.value)
    assert "outside of the packet" in msg.splitlines()[0]
    assert "c = *p; @ program.c:" in msg


def test_log_buffer_grows_to_the_size_the_kernel_reports() -> None:
    insns = isa.encode([Insn(0x61, 2, 1, 0), Insn(0xB7, 3, 0, 0, 5), Insn(0x0F, 2, 3),
                        Insn(0x71, 0, 2, 0), Insn(0x95)])
    with pytest.raises(bpf.LoadFailed) as small:
        bpf.prog_load(insns, "GPL", log_level=bpf.LOG_LEVEL1, log_size=64)
    with pytest.raises(bpf.LoadFailed) as big:
        bpf.prog_load(insns, "GPL", log_level=bpf.LOG_LEVEL1, log_size=1 << 20)
    assert small.value.errno == big.value.errno == errno.EACCES   # not ENOSPC
    assert small.value.log == big.value.log
    assert len(big.value.log) > 64 and "invalid access to packet" in big.value.log


def test_gpl_only_helper_needs_a_gpl_license(kernel) -> None:
    """The license reaches the kernel: bpf_trace_printk (6) is GPL-only."""
    def printk(license: str) -> Program:
        return Program(name="p", section="xdp", license=license, insns=[
            Insn(0xB7, 1, 0, 0, 0), Insn(0x7B, 10, 1, -8), Insn(0xBF, 1, 10),
            Insn(0x07, 1, 0, 0, -8), Insn(0xB7, 2, 0, 0, 1), Insn(0x85, 0, 0, 0, 6),
            Insn(0xB7, 0, 0, 0, 2), Insn(0x95)])
    with kernel.load(printk("GPL")) as inst:
        assert inst.run_chunk(b"", 0, True) == 2
    with pytest.raises(VerifierError, match="GPL"):
        kernel.load(printk("Proprietary"))


def test_too_complex_program_reports_the_instruction_limit() -> None:
    """A counted loop of 3 M iterations: the verifier walks it until its 1 M limit."""
    prog = Program(name="spin", section="xdp", license="GPL", insns=[
        Insn(0xB7, 1, 0, 0, 0),                 # r1 = 0
        Insn(0x07, 1, 0, 0, 1),                 # loop: r1 += 1
        Insn(0xA5, 1, 0, -2, 3_000_000),        # if r1 < 3000000 goto loop
        Insn(0xB7, 0, 0, 0, 2), Insn(0x95)])
    with pytest.raises(VerifierError) as e:
        verify_program(prog)
    assert "(E2BIG): BPF program is too large" in str(e.value).splitlines()[0]


def test_store_into_frozen_rodata_is_rejected(kernel) -> None:
    rodata = MapDef(name=".rodata", type=MAP_ARRAY, key_size=4, value_size=8, max_entries=1,
                    initial=bytes(8), readonly=True)
    prog = Program(name="wr", section="xdp", license="GPL", maps=[rodata], insns=[
        Insn(isa.LDDW, 1, isa.PSEUDO_MAP_VALUE, 0, 0), Insn(0, 0, 0, 0, 0),
        Insn(0x7A, 1, 0, 0, 7),            # *(u64 *)(r1 + 0) = 7
        Insn(0xB7, 0, 0, 0, 2), Insn(0x95)])
    with pytest.raises(VerifierError) as e:
        kernel.load(prog)
    assert "write into map forbidden" in str(e.value)


def test_rodata_parameter_is_a_constant_for_the_verifier(linestats) -> None:
    """With mult = 0 the verifier knows digit_sum += k * 0 is dead: fewer instructions."""
    def processed(log: str) -> int:
        line = next(ln for ln in log.splitlines() if ln.startswith("processed "))
        return int(line.split()[1])
    assert processed(verify_program(linestats.with_params(mult=0))) <= \
        processed(verify_program(linestats.with_params(mult=3)))
    assert "processed" in verify_program(linestats)


def test_kernel_objects_are_released(kernel, linestats) -> None:
    """Every fd a load makes is closed: at once when the load fails, on clear_cache() for
    the programs kept for reuse."""
    clear_cache()
    before = open_fds()
    for _ in range(3):
        with kernel.load(linestats) as inst:
            inst.run_chunk(b"1\n2\n", 0, True)
            inst.read_state()
        verify_program(linestats)
        with pytest.raises(VerifierError):
            kernel.load(Program(name="bad", section="xdp", license="GPL",
                                insns=[Insn(0x61, 2, 1, 0), Insn(0x71, 0, 2, 0), Insn(0x95)]))
        with pytest.raises(LoadError):     # second map is refused: the first must be closed
            kernel.load(Program(name="badmap", section="xdp", license="GPL", insns=[
                Insn(0xB7, 0, 0, 0, 2), Insn(0x95)], maps=[
                MapDef(name="ok", type=MAP_HASH, key_size=4, value_size=8, max_entries=4),
                MapDef(name="bad", type=MAP_HASH, key_size=0, value_size=8, max_entries=4)]))
    assert len(PROGRAMS) == 1     # linestats, kept once
    clear_cache()
    assert open_fds() == before


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_probe_names_the_missing_capability() -> None:
    """Without CAP_BPF/CAP_SYS_ADMIN the probe says why, and get_engine refuses cleanly."""
    code = ("from stord.engines.base import DEFAULT_BUDGET, get_engine\n"
            "from stord.engines.kernel.engine import KernelEngine\n"
            "from stord.errors import EngineUnavailable\n"
            "print(KernelEngine.probe())\n"
            "try:\n    get_engine('kernel')\nexcept EngineUnavailable as e:\n    print(e.code)\n")
    out = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all",
                          sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    reason, code_line = out.stdout.strip().splitlines()
    assert "EPERM" in reason
    assert code_line == "engine_unavailable"


# -- conformance vectors ----------------------------------------------------------------------

# Vectors the kernel refuses by its own rules, with the verifier's words.
KERNEL_REFUSES = {
    **{f"{op}{bits}-imm-{kind}": "invalid shift" for op in ("lsh", "rsh", "arsh")
       for bits in (32, 64) for kind in ("high", "neg")},
    "callx": "unknown opcode 8d",              # call by register: not in the kernel ISA
}


def test_conformance_vectors_that_fit_the_kernel(kernel) -> None:
    from stord.cli.conformance import parse_vector, run_vector
    files = sorted(VECTORS.glob("*.data"))
    assert len(files) == 313
    outcome: Counter[str] = Counter()
    for path in files:
        vec = parse_vector(path)
        prog = Program(name="conformance", section="", insns=vec.insns)
        if path.stem in KERNEL_REFUSES:
            with pytest.raises(VerifierError, match=KERNEL_REFUSES[path.stem]):
                kernel.load(prog, helpers="conformance")
            outcome["refused by the verifier"] += 1
            continue
        if any(i.op == isa.CALL_OP and i.src == 0 for i in vec.insns):
            with pytest.raises(ValidationError, match="conformance set"):
                kernel.load(prog, helpers="conformance")
            outcome["conformance helper"] += 1
            continue
        status, detail = run_vector(kernel, vec)
        assert status == "pass", f"{path.stem}: {detail}"
        outcome["passed"] += 1
    print(f"kernel conformance: {dict(outcome)}")
    assert outcome["passed"] >= 290


def test_conformance_r0_keeps_its_high_half(kernel) -> None:
    prog = Program(name="c", section="", insns=assemble(
        "lddw %r0, 0x123456789abcdef0\nldxb %r3, [%r1+1]\nadd %r0, %r3\nadd %r0, %r2\nexit"))
    with kernel.load(prog, helpers="conformance") as inst:
        assert inst.call(bytearray(b"\x01\x05\x09")) == 0x123456789ABCDEF0 + 5 + 3


def test_per_cpu_value_layout_matches_interp(kernel, linestats) -> None:
    """Per-CPU maps read back as the value of the CPU the runs were pinned to."""
    data = b"a1\n" * 50
    _, k = run(kernel, linestats, [data[:70], data[70:]])
    _, i = run(get_engine("interp"), linestats, [data[:70], data[70:]])
    assert k["percpu"] == i["percpu"] == {0: len(data)}


# -- the cache of verified programs -----------------------------------------------------------

def test_every_instance_starts_from_the_initial_state(kernel, linestats) -> None:
    """A reused program's maps are as a fresh load leaves them: .bss zero, .data at its
    initial bytes, hash empty, array and per-CPU array zero (interp: a fresh VM)."""
    prog = linestats.with_params(mult=5)
    with get_engine("interp").load(prog) as fresh:
        initial = fresh.read_state()
    for data in (b"12\n345\nab\n", b"9\n" * 700, b""):
        with kernel.load(prog) as inst:
            assert inst.read_state() == initial
            inst.run_chunk(data, 0, True)
            dirty = inst.read_state()
        assert _Key(prog, "linux") in PROGRAMS
        assert data == b"" or dirty != initial


def test_repeated_and_interleaved_queries_match_interp(kernel, linestats, tmp_path) -> None:
    """The same program twice, interleaved with other parameters and other files: each
    result equals interp's on the same file (no state leaks from one query to the next)."""
    files = []
    for n, rows in enumerate((50, 3, 900)):
        path = tmp_path / f"f{n}.csv"
        path.write_bytes(b"".join(b"%d,%d\n" % (i * (n + 3), i % 7) for i in range(rows)))
        files.append(str(path))
    progs = [linestats.with_params(mult=m) for m in (1, 9)]
    order = [(0, 0), (0, 0), (1, 1), (0, 2), (1, 0), (0, 1), (1, 1), (0, 0)]
    for p, f in order:
        k = execute(progs[p], files[f], engine="kernel", budget=DEFAULT_BUDGET)
        i = execute(progs[p], files[f], engine="interp", budget=DEFAULT_BUDGET,
                    chunk_size=kernel.chunk_size)
        assert k["state"] == i["state"], (p, f)
        assert k["state"]["calls"] == 100 + k["chunks"]
        assert _Key(progs[p], "linux") in PROGRAMS


BUILTIN_VARIANTS = {
    "count": {"value": -20000},
    "grep": {"needle_len": 2, "dfa": grep_dfa(b"s2")},
    "stats": {"col": 0},
    "hist": {"lo": 0, "width": 700},
    "groupby": {"col": 0, "key_col": 3},
}


def test_builtins_repeated_and_interleaved_match_interp(builtins, tmp_path) -> None:
    """Every built-in the kernel accepts, with two parameter sets, over three files in an
    interleaved order, each query compared with interp's answer on the same file."""
    progs = []
    for name in sorted(BUILTIN_PARAMS):
        got = builtins[name]
        if isinstance(got, VerifierError):
            continue
        progs += [got, got.with_params(**BUILTIN_VARIANTS[name])]
    if not progs:
        pytest.xfail("the kernel verifier rejects every built-in here")
    files = []
    for n, rows in enumerate((30, 1, 120)):
        lines = ["id,sensor,value,flag"] + [f"{i},s{(i * (n + 1)) % 4},{(i * 997 - 5000) * (n + 1)},"
                                            f"{i % 2}" for i in range(rows)]
        path = tmp_path / f"f{n}.csv"
        path.write_bytes(("\n".join(lines) + "\n").encode())
        files.append(str(path))
    order = [(p, f) for rnd in range(2) for p in range(len(progs))
             for f in ((rnd + p) % 3, (rnd + p + 1) % 3)]
    ran: Counter[int] = Counter()
    for p, f in order:
        try:
            k = execute(progs[p], files[f], engine="kernel", budget=DEFAULT_BUDGET)
        except VerifierError:   # a variant may be refused where the base is not
            assert p % 2 == 1, progs[p].name
            continue
        i = execute(progs[p], files[f], engine="interp", budget=DEFAULT_BUDGET,
                    chunk_size=KernelEngine.chunk_size)
        assert k["state"] == i["state"], (progs[p].name, p, f)
        assert _Key(progs[p], "linux") in PROGRAMS
        ran[p] += 1
    assert all(ran[p] == 4 for p in range(0, len(progs), 2))   # every accepted base, 4 times


def test_two_open_instances_of_one_program_are_independent(kernel, linestats) -> None:
    """While one instance holds the cached program, a second load gets its own objects;
    on close only one of the two is kept."""
    prog = linestats.with_params(mult=3)
    with kernel.load(prog):
        pass                          # now cached
    clear_before = len(PROGRAMS)
    a_data, b_data = b"1\n22\n333\n" * 40, b"9,x\n" * 25 + b"abc"
    interp = get_engine("interp")
    with kernel.load(prog) as a, kernel.load(prog) as b, interp.load(prog) as ia, \
            interp.load(prog) as ib:
        assert a._fd != b._fd and len(PROGRAMS) == clear_before - 1
        runs = [(inst, oracle, data[n:n + 100], n, n + 100 >= len(data))
                for inst, oracle, data in ((a, ia, a_data), (b, ib, b_data))
                for n in range(0, len(data), 100)]
        runs.sort(key=lambda r: r[3])    # a and b alternate
        for inst, oracle, piece, n, last in runs:
            assert inst.run_chunk(piece, n, last) == oracle.run_chunk(piece, n, last)
        assert a.read_state() == ia.read_state()
        assert b.read_state() == ib.read_state()
        assert decode(prog, a.read_state())["lines"] == 120
        assert decode(prog, b.read_state())["lines"] == 25
    assert len(PROGRAMS) == clear_before
    fds = open_fds()
    with kernel.load(prog) as c:       # the kept one, reset: as fresh
        assert open_fds() == fds
        with interp.load(prog) as ic:
            assert c.read_state() == ic.read_state()


def test_full_hash_map_is_empty_and_full_size_again(kernel) -> None:
    """A hash map filled to max_entries (updates then fail with -E2BIG) takes max_entries
    new keys in the next query, as in a fresh load (interp is the oracle)."""
    prog = Program(name="handmade", section="xdp", license="GPL", insns=assemble(HANDMADE),
                   maps=[MapDef("lens", MAP_HASH, 4, 8, 4), MapDef("calls", MAP_ARRAY, 4, 8, 2),
                         MapDef(".bss", MAP_ARRAY, 4, 16, 1, initial=bytes(16))])
    for first in (b"abcdef", b"uvwxyz", b"abcdef"):
        chunks = [bytes([c]) * (n + 1) for n, c in enumerate(first)]
        states = []
        for engine in (kernel, get_engine("interp")):
            with engine.load(prog) as inst:
                for c in chunks:
                    inst.run_chunk(c, 0, False)
                states.append(inst.read_state())
        assert states[0] == states[1]
        assert len(states[0].maps["lens"]) == 4
        assert states[0].maps["calls"][bytes(4)] == (6).to_bytes(8, "little")
    assert _Key(prog, "linux") in PROGRAMS


def test_eviction_and_clear_cache_release_fds(kernel, linestats, monkeypatch) -> None:
    monkeypatch.setattr(PROGRAMS, "max_programs", 3)
    clear_cache()
    before = open_fds()
    with kernel.load(linestats.with_params(mult=100)):
        per_program = open_fds() - before
    assert per_program >= 8            # BTF, 6 maps, the program
    assert open_fds() == before + per_program
    for m in range(101, 107):
        with kernel.load(linestats.with_params(mult=m)):
            pass
        assert len(PROGRAMS) == min(3, m - 99)
        assert open_fds() == before + len(PROGRAMS) * per_program
    assert _Key(linestats.with_params(mult=100), "linux") not in PROGRAMS   # LRU out
    assert _Key(linestats.with_params(mult=106), "linux") in PROGRAMS
    clear_cache()
    assert len(PROGRAMS) == 0 and open_fds() == before
    monkeypatch.setattr(PROGRAMS, "max_bytes", 1000)   # a program over the byte bound
    with kernel.load(linestats):
        pass
    assert len(PROGRAMS) == 0 and open_fds() == before


def test_verifier_rejected_program_is_never_cached(kernel) -> None:
    """Rejected every time with the verifier's words; and a program with the same digest
    but another license is not served from the cache of the accepted one."""
    bad = Program(name="unchecked", section="xdp", license="GPL", insns=[
        Insn(0x61, 2, 1, 0), Insn(0x71, 0, 2, 0), Insn(0x95)])
    clear_cache()
    before = open_fds()
    for _ in range(3):
        with pytest.raises(VerifierError, match="invalid access to packet"):
            kernel.load(bad)
        assert len(PROGRAMS) == 0 and open_fds() == before
    insns = [Insn(0xB7, 1, 0, 0, 0), Insn(0x7B, 10, 1, -8), Insn(0xBF, 1, 10),
             Insn(0x07, 1, 0, 0, -8), Insn(0xB7, 2, 0, 0, 1), Insn(0x85, 0, 0, 0, 6),
             Insn(0xB7, 0, 0, 0, 2), Insn(0x95)]
    gpl = Program(name="p", section="xdp", license="GPL", insns=insns)
    other = Program(name="p", section="xdp", license="Proprietary", insns=insns)
    assert gpl.digest == other.digest
    with kernel.load(gpl):
        pass
    assert len(PROGRAMS) == 1
    for _ in range(2):
        with pytest.raises(VerifierError, match="GPL"):
            kernel.load(other)
    assert len(PROGRAMS) == 1
    clear_cache()


@pytest.mark.parametrize("batches", [True, False])
def test_reset_of_large_maps_batched_or_one_by_one(kernel, batches) -> None:
    """Maps larger than one reset batch, filled (from user space, as a program could), come
    back zero / empty, with the kernel's batch commands and without them (older kernels)."""
    n = 9000
    prog = Program(name="big", section="xdp", license="GPL",
                   insns=[Insn(0xB7, 0, 0, 0, 2), Insn(0x95)], maps=[
                       MapDef("arr", MAP_ARRAY, 4, 8, n), MapDef("h", MAP_HASH, 4, 4, n),
                       MapDef(".data", MAP_ARRAY, 4, 8, 1, initial=b"\x07" * 8)])
    clear_cache()
    with kernel.load(prog) as inst:
        fresh = inst.read_state()
        inst._loader.batches = batches
        arr, h, data = inst._loader.objs.map_fds
        for i in range(0, n, 7):
            bpf.map_update(arr, i.to_bytes(4, "little"), (i + 1).to_bytes(8, "little"))
            bpf.map_update(h, i.to_bytes(4, "little"), b"abcd")
        bpf.map_update(data, bytes(4), bytes(8))
        assert inst.read_state() != fresh
        first_fd = inst._fd
    with kernel.load(prog) as inst:
        assert inst._fd == first_fd                   # the same, reset, kernel objects
        major, minor = re.match(r"(\d+)\.(\d+)", os.uname().release).groups()
        assert inst._loader.batches == (batches and (int(major), int(minor)) >= (5, 6))
        assert inst.read_state() == fresh
    assert fresh.globals[".data"] == b"\x07" * 8 and fresh.maps["h"] == {}
    assert fresh.maps["arr"] == {i.to_bytes(4, "little"): bytes(8) for i in range(n)}
    clear_cache()


def test_forked_child_does_not_share_cached_maps(kernel, linestats) -> None:
    """After fork() the child has no cached programs (it loads its own), and its runs do
    not show up in the parent's cached maps."""
    prog = linestats.with_params(mult=11)
    with kernel.load(prog):
        pass
    assert _Key(prog, "linux") in PROGRAMS
    pid = os.fork()
    if pid == 0:   # the child: report through the exit status only
        code = 1
        try:
            empty = len(PROGRAMS) == 0
            with kernel.load(prog) as inst:
                inst.run_chunk(b"1\n2\n3\n", 0, True)
                state = decode(prog, inst.read_state())
            code = 0 if empty and state["lines"] == 3 and state["calls"] == 101 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with kernel.load(prog) as inst, get_engine("interp").load(prog) as fresh:
        assert inst.read_state() == fresh.read_state()
