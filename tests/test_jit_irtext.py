"""irtext folds instructions on constants in Python: LLVM, running the same instruction on
the same values at run time, is the oracle for every fold."""

from __future__ import annotations

import ctypes
import itertools
import random
import re

import llvmlite.binding as llvm

from stord.engines.jit import compile as jit_compile
from stord.engines.jit import irtext as ir

WIDTHS = ("i8", "i16", "i32", "i64")
BINOPS = ("add", "sub", "mul", "and_", "or_", "xor", "shl", "lshr", "ashr")
PREDS = ("==", "!=", "<", "<=", ">", ">=")
_names = itertools.count()


def interesting(bits: int, rnd: random.Random) -> int:
    edge = [0, 1, 2, (1 << bits) - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1, bits - 1]
    return rnd.choice(edge) if rnd.random() < 0.5 else rnd.getrandbits(bits)


def cases(rnd: random.Random) -> list[tuple[str, str, str | None, int, int]]:
    """(operation, operand type, result type, a, b)."""
    out = []
    for ty in WIDTHS:
        bits = int(ty[1:])
        for _ in range(12):
            a, b = interesting(bits, rnd), interesting(bits, rnd)
            for op in BINOPS:
                out.append((op, ty, None, a, b % bits if op in ("shl", "lshr", "ashr") else b))
            for pred in PREDS:
                out.append(("icmp_unsigned " + pred, ty, None, a, b))
                out.append(("icmp_signed " + pred, ty, None, a, b))
            out.append(("select", ty, None, a, b))
            for to in WIDTHS:
                if int(to[1:]) > bits:
                    out.append(("zext", ty, to, a, 0))
                    out.append(("sext", ty, to, a, 0))
                elif int(to[1:]) < bits:
                    out.append(("trunc", ty, to, a, 0))
    return out


def emit(b: ir.IRBuilder, op: str, ty: str, to: str | None, x: ir.Value, y: ir.Value,
         cond: ir.Value) -> ir.Value:
    if op.startswith("icmp"):
        method, pred = op.split()
        return getattr(b, method)(pred, x, y)
    if op == "select":
        return b.select(cond, x, y)
    if op in ("zext", "sext", "trunc"):
        return getattr(b, op)(x, to)
    return getattr(b, op)(x, y)


def test_folds_agree_with_llvm() -> None:
    """Each case as a function of (a, b, cond) arguments (computed by LLVM at run time)
    against the constant irtext folded the same instruction to."""
    rnd = random.Random(9669)
    module = ir.Module("folds")
    expected: list[tuple[str, int, int, int, int]] = []   # name, folded value, arguments
    for k, (op, ty, to, a, bv) in enumerate(cases(rnd)):
        cond = bool(a & 1)
        folded = emit(ir.IRBuilder(ir.Function(ir.Module(), ir.FunctionType("i64", []), "f")
                                   .append_basic_block()),
                      op, ty, to, ir.Constant(ty, a), ir.Constant(ty, bv),
                      ir.Constant("i1", cond))
        assert folded.constant is not None, (op, ty)
        fn = ir.Function(module, ir.FunctionType("i64", ["i64", "i64", "i64"]), f"case{k}")
        b = ir.IRBuilder(fn.append_basic_block())
        x, y = (b.trunc(arg, ty) for arg in fn.args[:2])
        r = emit(b, op, ty, to, x, y, b.trunc(fn.args[2], "i1"))
        b.ret(b.zext(r, "i64"))
        expected.append((fn.name, folded.constant, a, bv, int(cond)))
    lib = llvm.JITLibraryBuilder().add_ir(str(module))
    for name, *_ in expected:
        lib.export_symbol(name)
    jit_compile.fast_target_machine()
    tracker = lib.link(jit_compile._jit(), f"irtext_folds{next(_names)}")
    fty = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)
    bad = []
    for name, want, a, bv, cond in expected:
        got = fty(tracker[name])(a, bv, cond)
        if got != want:
            bad.append((name, a, bv, cond, got, want))
    assert not bad, bad[:5]
    assert len(expected) > 1000


def test_values_are_numbered_in_text_order() -> None:
    """Values and blocks are unnamed, and LLVM wants their numbers in text order; values
    hoisted into the entry block after later blocks were written, and a phi, still get
    numbers LLVM accepts, and the code computes what was built."""
    module = ir.Module("order")
    fn = ir.Function(module, ir.FunctionType("i64", ["i64", "i64"]), "f")
    entry, loop, done = (fn.append_basic_block() for _ in range(3))
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)   # sum = x + 3 * y, y times, in a loop
    i = b.phi("i64")
    acc = b.phi("i64")
    b.position_before_terminator(entry)
    step = b.mul(fn.args[0], ir.Constant("i64", 3))   # hoisted after the loop's phis
    b.position_at_end(loop)
    acc2 = b.add(acc, step)
    i2 = b.add(i, ir.Constant("i64", 1))
    b.cbranch(b.icmp_unsigned("<", i2, fn.args[1]), loop, done)
    for phi, start, nxt in ((i, 0, i2), (acc, 0, acc2)):
        phi.add_incoming(ir.Constant("i64", start), entry)
        phi.add_incoming(nxt, loop)
    b.position_at_end(done)
    b.ret(b.add(acc2, fn.args[0]))
    text = str(module)
    assert re.search(r"\{\d", text) is None and "%v" not in text   # every id filled in
    jit_compile.fast_target_machine()
    tracker = llvm.JITLibraryBuilder().add_ir(text).export_symbol("f").link(
        jit_compile._jit(), f"irtext_order{next(_names)}")
    f = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)(tracker["f"])
    assert [f(x, n) for x, n in ((5, 1), (5, 4), (7, 10))] == [5 + 15, 5 + 60, 7 + 210]
