"""bpf_loop in the jit: iterations charged to the budget up front, break refunds, nesting.

The oracle is the interp engine (same program, same state) and the budget rule of
stord.engines.base (the jit counts back-edges and calls: one per bpf_loop iteration).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stord.engines.base import get_engine
from stord.errors import BudgetExceeded
from stord.program.elf import load_object
from stord.program.model import Program
from stord.program.toolchain import compile_c
from stord.query.state import State

LOOP_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
const volatile __u32 nr = 10;
const volatile __u32 stop = 0xffffffff;  /* the callback breaks at this index */
const volatile __u32 inner = 0;          /* > 0: each iteration runs a nested bpf_loop */
__u64 calls, inner_calls;
__s64 ret, ret2;
static long in_cb(__u32 i, void *ctx) { inner_calls += i + 1; return 0; }
static long cb(__u32 i, void *ctx)
{
    calls++;
    if (inner)
        ret2 += bpf_loop(inner, in_cb, ctx, 0);
    return i == stop;
}
SEC("xdp") int prog(struct xdp_md *ctx)
{
    ret = bpf_loop(nr, cb, ctx, 0);
    ret += bpf_loop(nr, cb, ctx, 0);   /* the budget a break refunded is usable again */
    return 2;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def prog() -> Program:
    return load_object(compile_c(LOOP_C))


def run(engine: str, prog: Program, budget: int, **params: int) -> State:
    inst = get_engine(engine).load(prog.with_params(**params), budget=budget)
    inst.run_chunk(b"", 0, True)
    state = inst.read_state()
    assert any(state.globals[".bss"]), "the callbacks ran"
    return state


@settings(max_examples=25, deadline=None)
@given(nr=st.integers(1, 300), stop=st.integers(0, 400), inner=st.integers(0, 5))
def test_loops_match_interp(prog: Program, nr: int, stop: int, inner: int) -> None:
    big = 1 << 40
    assert run("jit", prog, big, nr=nr, stop=stop, inner=inner) == \
        run("interp", prog, big, nr=nr, stop=stop, inner=inner)


def test_budget_smaller_than_the_loop_is_exceeded(prog: Program) -> None:
    # 1000 iterations, each one charge: a budget of 500 cannot run them
    with pytest.raises(BudgetExceeded):
        run("jit", prog, 500, nr=1000)


def test_break_refunds_the_skipped_iterations(prog: Program) -> None:
    # two loops of 100000 that each break at index 9: 20 calls, far under the budget; the
    # first one takes 100000 up front, so the second one has its 10 only once the first
    # refunded the 99990 it skipped
    out = run("jit", prog, 100_005, nr=100_000, stop=9)
    assert out == run("interp", prog, 1 << 40, nr=100_000, stop=9)
