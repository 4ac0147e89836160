"""eBPF -> LLVM IR text (irtext.py): subprograms inlined into stord_entry where inline_set
allows (else one LLVM function each), registers as allocas, every access checked.

Registers hold the same *virtual* addresses as in the interp engine (stord.engines.base), so
pointer values, comparisons and faults agree between the engines. A load or store turns a
virtual address into a host pointer: kinds.py knows statically where most pointers point,
so a spill slot (r10 - 8) or a global at a constant offset needs no check at all, a pointer
into a known map or the stack gets one inline range check, and anything else goes through
runtime.xlate, which tries every region. A failed check calls a cold `fault` function that
records pc and address in the Env block (layout.py), sets the status and returns, so errors
come back through memory, never by crashing. The budget and status live in a local of
stord_entry (`ctl`) so that, with the subprograms inlined, they are registers.
.rodata is reached through one small accessor per map (rodata_items): in the module text
as translated (the first tier's code, shared by every parameter set) it loads the instance's
copy like any other map; compile.build_ir swaps in the accessor that returns a constant
global holding the parameter values, so after inlining (O2) reading a parameter folds. One
translation serves both tiers.

Arithmetic follows RFC 9669 with no LLVM undefined behaviour: divisors are replaced before
udiv/sdiv (x/0 = 0, x%0 = x, INT_MIN/-1 = INT_MIN, INT_MIN%-1 = 0), shift amounts are
masked, and no nsw/nuw flags are emitted.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter

from stord.engines import base
from stord.engines.jit import irtext as ir
from stord.engines.jit import kinds
from stord.engines.jit import layout as L
from stord.errors import CompileError
from stord.program import isa
from stord.program.model import MAP_HASH, MAP_PERCPU_HASH, MapDef, Program

I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
SIZE_TYPES = {1: I8, 2: I16, 4: I32, 8: I64}   # an access's integer type by its bytes
PTR = ir.PointerType()
VOID = ir.VoidType()
RET = I64   # a subprogram returns r0

STACK_SPAN = base.MAX_CALL_DEPTH * isa.STACK_SIZE
STACK_LO = base.STACK_TOP - STACK_SPAN   # virtual address of host stack byte 0
MAP_SHIFT = base.MAP_STRIDE.bit_length() - 1
# env, host stack, ctl (budget and status: a local of stord_entry, so that after inlining
# they live in registers instead of memory), call depth, r1..r5
SUB_ARGS = [PTR, PTR, PTR, I64] + [I64] * 5
CTL_BUDGET, CTL_STATUS = 0, 8

ENTRY_NAME = "stord_entry"


def _constants(ty: ir.IntType, mask: int) -> Callable[[int], ir.Value]:
    """A maker of ty's constants that keeps them by value (ir.interned's, found faster)."""
    cache: dict[int, ir.Value] = {}

    def make(v: int) -> ir.Value:
        c = cache.get(v)
        if c is None:
            c = ir.Constant(ty, v & mask)
            if len(cache) < 1 << 16:
                cache[v] = c
        return c
    return make


c64 = _constants(I64, 0xFFFF_FFFF_FFFF_FFFF)
c32 = _constants(I32, 0xFFFF_FFFF)


def map_handle(index: int) -> int:
    """The value `lddw rX, map` puts in a register (as stord.engines.interp.helpers): inside
    the map's address window, far above its values, so never a readable address."""
    return base.map_base(index) + base.MAP_STRIDE // 2


@dataclass
class Subprogram:
    start: int
    end: int                       # exclusive
    fn: ir.Function | None = None  # its LLVM function, made when a real call needs one


@dataclass
class Frame:
    """One LLVM function being built: allocas and loop-invariant loads go to the end of
    its entry block (which branches to the body), shared by the subprograms inlined in it."""
    fn: ir.Function
    b: ir.IRBuilder
    entry: ir.Block
    env: ir.Value
    stack: ir.Value
    ctl: ir.Value
    hoist: dict = field(default_factory=dict)
    hoisting: bool = False

    @classmethod
    def start(cls, fn: ir.Function, env: ir.Value, stack: ir.Value | None = None,
              ctl: ir.Value | None = None) -> Frame:
        entry = fn.append_basic_block("entry")
        b = ir.IRBuilder(entry)
        body = fn.append_basic_block("body")
        b.branch(body)
        b.position_at_end(body)
        return cls(fn, b, entry, env, stack, ctl)


# Opcode sets and constants for the walks over every slot (a membership test instead of
# masks and module attribute look-ups: these walks are a good part of a translation).
# _BRANCHES: jumps with a target (not call or exit); _JA32: the ones whose offset is imm.
_BRANCHES = frozenset(op for op in range(256) if op & 7 in (isa.JMP, isa.JMP32)
                      and op & 0xF0 not in (isa.CALL, isa.EXIT))
_JA32 = frozenset((isa.JMP32 | isa.JA, isa.JMP32 | isa.JA | isa.X))
_CALL_OP, _CALLX_OP, _LDDW = isa.CALL_OP, isa.CALLX_OP, isa.LDDW
_ALU, _ALU64, _JMP, _JMP32 = isa.ALU, isa.ALU64, isa.JMP, isa.JMP32
_PSEUDO_CALL, _PSEUDO_FUNC = isa.PSEUDO_CALL, isa.PSEUDO_FUNC
BPF_LOOP = 181   # the helper id of bpf_loop


def marked_slots(insns: list[isa.Insn]) -> list[int]:
    """The slots the walks below look at (jumps, exits, calls and lddw: a third of clang's
    code), in order: they go through this list, made once per program, instead of every
    slot. (itemgetter(0) is Insn.op.)"""
    return list(compress(range(len(insns)), map(_MARKED.__contains__,
                                                map(itemgetter(0), insns))))


def _marked_in(marked: list[int], start: int, end: int) -> list[int]:
    return marked[bisect_left(marked, start):bisect_left(marked, end)]


def jump_targets(insns: list[isa.Insn], start: int, end: int,
                 marked: list[int] | None = None) -> set[int]:
    """Targets of the jumps in [start, end) (which may lie outside it)."""
    out: set[int] = set()
    for pc in _marked_in(marked if marked is not None else marked_slots(insns), start, end):
        ins = insns[pc]
        if ins.op in _BRANCHES:
            out.add(pc + (ins.imm if ins.op in _JA32 else ins.off) + 1)
    return out


def subprogram_starts(insns: list[isa.Insn], marked: list[int] | None = None) -> list[int]:
    starts = {0}
    n = len(insns)
    for i in marked if marked is not None else marked_slots(insns):
        ins = insns[i]
        op = ins.op
        if op != _CALL_OP and op != _LDDW:
            continue
        target = None
        if op == _CALL_OP and ins.src == _PSEUDO_CALL:
            target = i + ins.imm + 1
        elif op == _LDDW and ins.src == _PSEUDO_FUNC:
            target = i + ins.imm + 1
        if target is not None:
            if not 0 <= target < n:
                raise CompileError(f"call target {target} of slot {i} is outside the program")
            starts.add(target)
    return sorted(starts)


MAX_JIT_INSNS = 100_000      # larger programs take too long to compile: CompileError
INLINE_SMALL = 256           # a function called from several sites is copied into each
                             # only while (expanded size x call sites) stays this small


_EXITS = frozenset((isa.JMP | isa.EXIT, isa.JMP | isa.EXIT | isa.X, isa.JMP32 | isa.EXIT,
                    isa.JMP32 | isa.EXIT | isa.X))
_MARKED = _BRANCHES | _EXITS | {_CALL_OP, _CALLX_OP, _LDDW}   # see marked_slots
# loop_callbacks: the opcodes that write their dst (ALU, ALU64, LD, LDX classes) and the
# atomics (some write their src)
_SETS_DST = frozenset(op for op in range(256) if op & 7 in (isa.ALU, isa.ALU64, isa.LD, isa.LDX))
_ATOMICS = frozenset(op for op in range(256) if op & 7 == isa.STX and op & 0xE0 == isa.ATOMIC)


def block_sccs(insns: list[isa.Insn], start: int, end: int,
               marked: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Strongly connected components of the slots [start, end), by block: the first slots
    of the blocks, in order, and the component of each (named by a block's first slot; the
    translator looks a slot's block up with bisect). Computed on the straight-line blocks (a
    cycle enters a block only at its first slot and leaves it only at its last, so a block's
    slots are all in one component or none is in a cycle) with Tarjan's algorithm,
    iterative (programs have up to MAX_JIT_INSNS slots). A block outside every cycle is a
    component of its own. `marked`: marked_slots(insns), if known."""
    firsts = {start}
    for pc in _marked_in(marked if marked is not None else marked_slots(insns), start, end):
        ins = insns[pc]
        op = ins.op
        if op in _BRANCHES:
            t = pc + (ins.imm if op in _JA32 else ins.off) + 1
            if start <= t < end:
                firsts.add(t)
        elif op not in _EXITS:
            continue
        if pc + 1 < end:
            firsts.add(pc + 1)
    order = sorted(firsts)
    block_of = {f: k for k, f in enumerate(order)}
    bounds = order[1:] + [end]
    # where each block's last slot goes (calls return, exit nowhere); a jump into an lddw's
    # second half, which block_at refuses, has no block: skipped
    block = block_of.get
    succ: list[list[int]] = []
    for last in bounds:
        pc = last - 1
        ins = insns[pc]
        op = ins.op
        if op in _BRANCHES:
            if op & 0xF0 == isa.JA:
                t = block(pc + (ins.imm if op in _JA32 else ins.off) + 1)
                succ.append([] if t is None else [t])
                continue
            t = block(pc + ins.off + 1)
            f = block(last)
            if t is None or f is None:
                succ.append([] if t is None and f is None else [f if t is None else t])
            else:
                succ.append([t, f])
        elif op in _EXITS:
            succ.append([])
        else:
            t = block(pc + 2 if op == _LDDW else last)
            succ.append([] if t is None else [t])
    n = len(order)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    comp = [0] * n
    counter = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, iter(succ[root]))]
        while work:
            v, it = work[-1]
            for w in it:
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, iter(succ[w])))
                    break
                if on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
            else:
                work.pop()
                if work and low[v] < low[work[-1][0]]:
                    low[work[-1][0]] = low[v]
                if low[v] == index[v]:
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        comp[w] = v
                        if w == v:
                            break
    return order, [order[c] for c in comp]


def loop_callbacks(insns: list[isa.Insn], start: int, end: int,
                   marked: list[int] | None = None,
                   targets: set[int] | None = None) -> dict[int, int]:
    """bpf_loop call sites in [start, end) whose callback is known: r2 was set by an lddw of
    a function in the same straight-line run (no jump target or call in between), as
    clang emits it. The translator then emits only that callback's loop (runtime._loop
    sees the same constant), so inlining can count the sites exactly. `marked`,
    `targets`: marked_slots(insns) and jump_targets of the range, if known.

    Slots are walked from `start`, an lddw taking two; only the runs after an `lddw r2,
    function` are read slot by slot (the lddw are found in `marked`)."""
    if marked is None:
        marked = marked_slots(insns)
    if targets is None:
        targets = jump_targets(insns, start, end, marked)
    known: dict[int, int] = {}
    second = -1   # the second slot of the last lddw the walk reaches
    for p in _marked_in(marked, start, end):
        ins = insns[p]
        if ins.op != _LDDW or p == second:
            continue
        second = p + 1
        if ins.dst != 2 or ins.src != _PSEUDO_FUNC:
            continue
        cur = p + ins.imm + 1
        pc = p + 2
        while pc < end:   # until r2 is set again or may differ
            ins = insns[pc]
            op = ins.op
            if pc in targets:
                break
            if op == _LDDW:
                if ins.dst == 2:
                    break   # (a walk of its own starts there)
                pc += 2
                continue
            if op == _CALL_OP or op == _CALLX_OP:
                if op == _CALL_OP and ins.src == 0 and ins.imm == BPF_LOOP:
                    known[pc] = cur
                break   # calls clobber r1-r5
            if (op in _SETS_DST and ins.dst == 2) or (op in _ATOMICS and ins.src == 2):
                break   # (atomic fetch / xchg write their source register)
            pc += 1
    return known


def inline_set(insns: list[isa.Insn], starts: list[int], callbacks: list[int],
               marked: list[int] | None = None,
               targets: dict[tuple[int, int], set[int]] | None = None) -> set[int]:
    """Subprograms to inline. A function with one call site is always inlined (no copy is
    made); one with several only when all its copies together stay under INLINE_SMALL
    instructions, so nested calls cannot multiply the code (the emitted total is at most
    the program plus INLINE_SMALL per function). Recursive functions are never inlined.
    `marked`: marked_slots(insns), if known; `targets`: jump_targets by (start, end) of
    each subprogram, filled in where missing."""
    if marked is None:
        marked = marked_slots(insns)
    if targets is None:
        targets = {}
    ends = dict(zip(starts, starts[1:] + [len(insns)], strict=True))
    known: dict[int, int] = {}
    for f, e in ends.items():
        t = targets.get((f, e))
        if t is None:
            t = targets[f, e] = jump_targets(insns, f, e, marked)
        known.update(loop_callbacks(insns, f, e, marked, t))
    calls: dict[int, list[int]] = {s: [] for s in starts}
    in_order = sorted(ends)
    for i in marked:
        ins = insns[i]
        if ins.op != _CALL_OP:
            continue
        k = bisect_right(in_order, i)
        owner = in_order[k - 1] if k else 0   # the subprogram holding slot i
        if ins.src == _PSEUDO_CALL:
            calls[owner].append(i + ins.imm + 1)
        elif ins.src == 0 and ins.imm == BPF_LOOP:
            # a bpf_loop site calls its known callback, else may call every callback
            calls[owner].extend([known[i]] if i in known else callbacks)
    sites = {s: 0 for s in starts}
    for callees in calls.values():
        for c in callees:
            sites[c] = sites.get(c, 0) + 1
    size: dict[int, int] = {}
    inline: set[int] = set()
    visiting: set[int] = set()

    def expanded(f: int) -> int | None:
        """Size of f with its inlined callees, None if f is part of a cycle."""
        if f in size:
            return size[f]
        if f in visiting:
            return None
        visiting.add(f)
        total = ends[f] - f
        for c in calls[f]:
            sub = expanded(c)
            if sub is not None and c in inline:
                total += sub
        visiting.discard(f)
        size[f] = total
        if f and sites[f] and (sites[f] == 1 or total * sites[f] <= INLINE_SMALL) and \
                f not in _reaches(f, calls):
            inline.add(f)
        return total

    for f in starts:
        expanded(f)
    inline.add(0)   # called once, from stord_entry
    return inline


def _reaches(f: int, calls: dict[int, list[int]]) -> set[int]:
    seen: set[int] = set()
    stack = list(calls[f])
    while stack:
        g = stack.pop()
        if g not in seen:
            seen.add(g)
            stack.extend(calls[g])
    return seen


_PREDS = {isa.JEQ: ("u", "=="), isa.JNE: ("u", "!="), isa.JGT: ("u", ">"),
          isa.JGE: ("u", ">="), isa.JLT: ("u", "<"), isa.JLE: ("u", "<="),
          isa.JSGT: ("s", ">"), isa.JSGE: ("s", ">="), isa.JSLT: ("s", "<"),
          isa.JSLE: ("s", "<=")}   # conditional jumps: (signedness, predicate)


class ModuleTranslator:
    """Builds the LLVM module of one program for one helper set."""

    def __init__(self, prog: Program, helpers: str = "linux", chunk: bool = False) -> None:
        """`chunk`: the code will only run chunks (run_chunk), so r1 of the entry is the
        context and the context's fields are known (DATA_BASE, META_BASE...): loads of them
        fold and the program's pointers to meta and data become constants."""
        if helpers not in base.HELPER_SETS:
            raise CompileError(f"unknown helper set {helpers!r}")
        self.prog = prog
        self.chunk = chunk
        self.insns = prog.insns
        self.helpers = helpers
        if len(self.insns) > MAX_JIT_INSNS:
            raise CompileError(f"program of {len(self.insns)} instructions is too large for "
                               f"the jit engine (at most {MAX_JIT_INSNS})")
        self.module = ir.Module(name=prog.name or "prog")
        self.marked = marked_slots(self.insns)
        starts = subprogram_starts(self.insns, self.marked)
        self.subs: dict[int, Subprogram] = {}
        for k, s in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(self.insns)
            self.subs[s] = Subprogram(s, end)
        self._pending: list[Subprogram] = []   # functions called for real, to translate
        # bpf_loop callbacks: every subprogram whose address a program takes
        # the entry's r1 is the context only if nothing else calls slot 0 (or takes its
        # address)
        self.entry_reentered = False
        callbacks: set[int] = set()
        for i in self.marked:
            ins = self.insns[i]
            op = ins.op
            if op == _LDDW and ins.src == _PSEUDO_FUNC:
                callbacks.add(i + ins.imm + 1)
            elif not (op == _CALL_OP and ins.src == _PSEUDO_CALL):
                continue
            if i + ins.imm + 1 == 0:
                self.entry_reentered = True
        self.callbacks = sorted(callbacks)
        # jump targets by subprogram (start, end): inline_set's and FunctionTranslator's
        self.leaders: dict[tuple[int, int], set[int]] = {}
        self.inlined = inline_set(self.insns, starts, self.callbacks, self.marked, self.leaders)
        # .rodata (the parameters): the accessor of each map's bytes. The rest of the
        # translation does not depend on their values: see rodata_items.
        self.rodata: dict[int, ir.Function] = {
            i: rodata_items(self.module, prog, i, constant=False)
            for i, m in enumerate(prog.maps) if self.is_readonly(m)}
        self._intrinsics: dict[str, ir.Function] = {}
        # per subprogram, once: block_sccs
        self.sccs: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        self.fault_fn = self._fault_fn()
        from stord.engines.jit import runtime  # noqa: PLC0415 - runtime builds on this module
        self.runtime = runtime.Runtime(self)

    # -- module-level pieces -------------------------------------------------------------

    def _fault_fn(self) -> ir.Function:
        """void fault(env, pc, addr, info): cold and out of line, so that the many fault
        exits of a program cost one call each and no merging phis. (The status goes to the
        ctl slot, which must stay local to stay in a register.)"""
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR] + [I64] * 3), "fault")
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("cold")
        env, pc, addr, info = fn.args
        b = ir.IRBuilder(fn.append_basic_block())
        for v, off in ((pc, L.PC), (addr, L.ADDR), (info, L.INFO)):
            b.store(v, b.gep(env, [c64(off)], source_etype=I8))
        b.ret_void()
        return fn

    def intrinsic(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = self._intrinsics.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name=name)
            self._intrinsics[name] = fn
        return fn

    @staticmethod
    def is_hash(m: MapDef) -> bool:
        """Global data sections are arrays whatever type the loader gave them."""
        return not m.is_global_data and m.type in (MAP_HASH, MAP_PERCPU_HASH)

    @staticmethod
    def is_readonly(m: MapDef) -> bool:
        return m.readonly or m.name.startswith(".rodata")

    def region_size(self, index: int) -> int:
        m = self.prog.maps[index]
        return m.value_size * m.max_entries

    def build(self) -> ir.Module:
        self._entry()
        while self._pending:
            sub = self._pending.pop()
            fn = sub.fn
            frame = Frame.start(fn, fn.args[0], fn.args[1], fn.args[2])
            FunctionTranslator(self, sub, frame, fn.args[3], fn.args[4:9]).translate()
        return self.module

    def function_of(self, sub: Subprogram) -> ir.Function:
        """The LLVM function of a subprogram called for real (not inlined): recursion, or
        a function too large to copy into its several call sites."""
        if sub.fn is None:
            fn = ir.Function(self.module, ir.FunctionType(RET, SUB_ARGS), name=f"sub_{sub.start}")
            fn.linkage = "internal"
            fn.args[0].add_attribute("noalias")
            fn.args[2].add_attribute("noalias")
            sub.fn = fn
            self._pending.append(sub)
        return sub.fn

    def _entry(self) -> None:
        """i64 stord_entry(env, r1, r2): a zeroed host stack, then subprogram 0 at depth 0."""
        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR, I64, I64]), name=ENTRY_NAME)
        fn.args[0].add_attribute("noalias")
        env = fn.args[0]
        frame = Frame.start(fn, env)
        b = frame.b
        b.position_before_terminator(frame.entry)
        frame.stack = stack = b.alloca(ir.ArrayType(I8, STACK_SPAN), name="stack", align=16)
        memset = self.intrinsic("llvm.memset.p0.i64", VOID, [PTR, I8, I64, I1])
        b.call(memset, [stack, ir.Constant(I8, 0), c64(STACK_SPAN), ir.Constant(I1, 0)])
        zero = c64(0)
        frame.ctl = ctl = b.alloca(I64, 2, name="ctl")
        budget_p = b.gep(env, [c64(L.BUDGET)], source_etype=I8)
        b.store(b.load(budget_p, typ=I64), ctl)
        b.store(zero, b.gep(ctl, [c64(CTL_STATUS)], source_etype=I8))
        b.position_at_end(fn.blocks[1])
        r1 = c64(base.CTX_BASE) if self.chunk else fn.args[1]
        # subprogram 0, inlined here, so that the host stack and ctl are this function's
        # allocas (SROA keeps them in registers)
        r0 = FunctionTranslator(self, self.subs[0], frame, zero,
                                [r1, fn.args[2], zero, zero, zero], inline=True).translate()
        b.store(b.load(ctl, typ=I64), budget_p)
        status = b.load(b.gep(ctl, [c64(CTL_STATUS)], source_etype=I8), typ=I64)
        unwound = b.icmp_unsigned("==", status, c64(L.ST_UNWIND))
        b.store(b.select(unwound, zero, status), b.gep(env, [c64(L.STATUS)], source_etype=I8))
        b.ret(b.select(unwound, zero, r0))


def rodata_items(module: ir.Module, prog: Program, index: int, constant: bool) -> ir.Function:
    """Adds `ptr rodata_ptr_<index>(env)`, the host address of read-only map `index`'s
    bytes, and the global `rodata_<index>`. constant=False: the accessor loads the values
    pointer of the instance's map (any parameter set; the global is a zeroed placeholder);
    True: it returns the global, which holds this program's bytes, so that code inlining it
    folds its parameters. Callers hoist the call into their function's entry block, so the
    first tier (no inliner) pays one call per chunk."""
    m = prog.maps[index]
    size = m.value_size * m.max_entries
    ty = ir.ArrayType(I8, size)
    g = ir.GlobalVariable(module, ty, f"rodata_{index}")
    g.initializer = ir.Constant(ty, (m.initial or b"").ljust(size, b"\0")[:size]
                                if constant else None)
    g.global_constant = True
    g.linkage = "internal"
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR]), f"rodata_ptr_{index}")
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    b = ir.IRBuilder(fn.append_basic_block())
    if constant:
        b.ret(g)
    else:
        maps = b.load(b.gep(fn.args[0], [c64(L.MAPS)], source_etype=I8), typ=PTR,
                      invariant=True)
        desc = b.gep(maps, [c64(index * L.MAPDESC_SIZE + L.M_VALUES)], source_etype=I8)
        b.ret(b.load(desc, typ=PTR, invariant=True))
    return fn


def rodata_text(prog: Program, index: int) -> tuple[str, str]:
    """(as translated, with this program's bytes): the text of map `index`'s rodata_items."""
    def text(constant: bool) -> str:
        module = ir.Module()
        rodata_items(module, prog, index, constant)
        return "\n".join(map(str, module.items))
    return text(False), text(True)


class FunctionTranslator:
    """Translates the slots [start, end) of one subprogram into the function of `frame`:
    its own LLVM function, or (inline=True) inlined at the builder's position, where
    returning is a branch to a continuation block. Inlining here rather than with LLVM's
    always-inliner saves that pass (~10 ms of a cold compile) and lets constants (the call
    depth, callbacks, map handles) fold while the text is written."""

    def __init__(self, mt: ModuleTranslator, sub: Subprogram, frame: Frame, depth: ir.Value,
                 args: list[ir.Value], inline: bool = False,
                 chain: tuple[int, ...] = (), arg_kinds: tuple[kinds.Kind, ...] = ()) -> None:
        """`arg_kinds`: what r1-r5 are known to point to (kinds.py), in this frame's terms."""
        self.mt = mt
        self.arg_kinds = arg_kinds
        self.sub = sub
        self.frame = frame
        self.fn = frame.fn
        self.insns = mt.insns
        self.env, self.stack, self.ctl, self.depth = frame.env, frame.stack, frame.ctl, depth
        self.inline = inline
        self.chain = chain + (sub.start,)   # subprograms inlined around this one
        b = self.b = frame.b
        here = b.block
        b.position_before_terminator(frame.entry)
        self.regs = [b.alloca(I64, name=f"r{i}") for i in range(11)]
        b.position_at_end(here)
        # as in the interp: r1-r5 are the arguments, r0 and r6-r9 start at 0
        for i in range(10):
            b.store(args[i - 1] if 1 <= i <= 5 else c64(0), self.regs[i])
        r10 = b.sub(c64(base.STACK_TOP), b.mul(self.depth, c64(isa.STACK_SIZE)))
        b.store(r10, self.regs[10])
        self.exits: list[tuple[ir.Value, ir.Block]] = []
        self.exit_block = self.fn.append_basic_block("return") if inline else None
        # after a callee faulted (status already stored): return at once
        self.propagate_block = self.fn.append_basic_block("propagate")
        b.position_at_end(self.propagate_block)
        self.leave(c64(0))
        b.position_at_end(here)
        self.blocks: dict[int, ir.Block] = {}
        self._cache: dict[int, ir.Value] = {}
        self._cache_block: ir.Block | None = None

    def leave(self, r0: ir.Value) -> None:
        """Return r0 from this subprogram (ends the current block)."""
        if self.inline:
            self.exits.append((r0, self.b.block))
            self.b.branch(self.exit_block)
        else:
            self.b.ret(r0)

    # -- small helpers -------------------------------------------------------------------

    # Registers live in allocas (mem2reg makes them SSA); within a block the last value
    # read or written is reused, which keeps the IR (and so LLVM's work) small.

    def _cached(self) -> dict[int, ir.Value]:
        if self.b.block is not self._cache_block:
            self._cache = {}
            self._cache_block = self.b.block
        return self._cache

    def carry_cache(self, cache: dict[int, ir.Value]) -> None:
        """The current block is dominated by the block `cache` was valid in: keep it."""
        self._cache = dict(cache)
        self._cache_block = self.b.block

    def reg(self, i: int) -> ir.Value:
        cache = self._cache if self.b.block is self._cache_block else self._cached()
        v = cache.get(i)
        if v is None:
            narrow = cache.get(i + 16)
            if narrow is None:
                v = cache[i] = self.b.load(self.regs[i], typ=I64)
            else:   # set from 32 bits in this block (set_reg): widened at its first use
                v = cache[i] = self.b.zext(narrow, I64)
                self.b.store_at_end(v, self.regs[i])
        return v

    def reg32(self, i: int) -> ir.Value:
        cache = self._cache if self.b.block is self._cache_block else self._cached()
        v = cache.get(i + 16)
        if v is None:
            v = cache[i + 16] = self.b.trunc(self.reg(i), I32)
        return v

    def set_reg(self, i: int, v: ir.Value) -> None:
        cache = self._cache if self.b.block is self._cache_block else self._cached()
        if v.type == I32:   # kept narrow: many uses are 32-bit (reg32), and the register
            cache[i + 16] = v   # may be set again in the block before any 64-bit use
            cache.pop(i, None)
            self.b.store_at_end(v, self.regs[i], I64)
            return
        cache.pop(i + 16, None)
        if v.type != I64:
            v = self.b.zext(v, I64)
        self.b.store_at_end(v, self.regs[i])   # reg() reads the cache until the block ends
        cache[i] = v

    def hoisted(self, key: object, make: callable) -> ir.Value:
        """A loop-invariant value computed once in the function's entry block (from the
        env argument, so it is valid in every subprogram inlined in the function)."""
        frame = self.frame
        v = frame.hoist.get(key)
        if v is None:
            if frame.hoisting:
                v = frame.hoist[key] = make()
                return v
            here = self.b.block
            frame.hoisting = True
            self.b.position_before_terminator(frame.entry)
            try:
                v = frame.hoist[key] = make()
            finally:
                frame.hoisting = False
                self.b.position_at_end(here)
        return v

    def env_field(self, off: int, typ: ir.Type = I64, invariant: bool = False) -> ir.Value:
        if invariant:
            return self.hoisted(("env", off), lambda: self.load_inv(
                self.b.gep(self.env, [c64(off)], source_etype=I8), typ))
        return self.b.load(self.b.gep(self.env, [c64(off)], source_etype=I8), typ=typ)

    def ctl_status(self) -> ir.Value:
        """Pointer to the status word of ctl (one per function: every fault stores it)."""
        return self.hoisted(("ctl_status",), lambda: self.b.gep(
            self.ctl, [c64(CTL_STATUS)], source_etype=I8))

    def env_ptr(self, off: int) -> ir.Value:
        return self.b.gep(self.env, [c64(off)], source_etype=I8)

    def fail(self, status: int, pc: int, addr: ir.Value | int = 0,
             info: ir.Value | int = 0) -> None:
        """Record the fault (one cold call) and return from the current block."""
        vals = [self.env, c64(pc),
                addr if isinstance(addr, ir.Value) else c64(addr),
                info if isinstance(info, ir.Value) else c64(info)]
        self.b.call(self.mt.fault_fn, vals)
        self.b.store(c64(status), self.ctl_status())
        self.leave(c64(0))

    def check(self, ok: ir.Value, status: int, pc: int, addr: ir.Value | int = 0,
              info: ir.Value | int = 0) -> None:
        """Continue when `ok`, else fault; leaves the builder in the continuation."""
        cache = self._cached()
        cont = self.fn.append_basic_block("ok")
        bad = self.fn.append_basic_block("bad")
        self.b.cbranch(ok, cont, bad)
        self.b.position_at_end(bad)
        self.fail(status, pc, addr, info)
        self.b.position_at_end(cont)
        self.carry_cache(cache)

    def check_status(self) -> None:
        """After a call that may fault: leave when the status is set."""
        cache = self._cached()
        st = self.b.load(self.ctl_status(), typ=I64)
        cont = self.fn.append_basic_block("called")
        self.b.cbranch(self.b.icmp_unsigned("==", st, c64(0)), cont, self.propagate_block)
        self.b.position_at_end(cont)
        self.carry_cache(cache)

    def charge(self, pc: int, n: ir.Value | None = None) -> None:
        """Take `n` (default 1) from the budget; BudgetExceeded when it runs out."""
        n = n if n is not None else c64(1)
        p = self.ctl
        left = self.b.load(p, typ=I64)
        self.check(self.b.icmp_unsigned(">=", left, n), L.ST_BUDGET, pc)
        self.b.store(self.b.sub(left, n), p)

    def block_at(self, pc: int) -> ir.Block:
        blk = self.blocks.get(pc)
        if blk is not None:   # (pc passed the checks below when it was made)
            return blk
        if not self.sub.start <= pc < self.sub.end:
            raise CompileError(f"jump to slot {pc} leaves the subprogram at slot {self.sub.start}")
        if pc > 0 and self.insns[pc - 1].op == isa.LDDW:
            raise CompileError(f"jump to slot {pc}, the second half of an lddw")
        blk = self.blocks[pc] = self.fn.append_basic_block("pc")
        return blk

    def jump(self, pc: int, target: int) -> None:
        """Unconditional branch; loop back-edges are charged to the budget."""
        if target <= pc and self.scc(pc) == self.scc(target):
            self.charge(pc)
        self.b.branch(self.block_at(target))

    def scc(self, pc: int) -> int:
        """The strongly connected component of slot pc in this subprogram's jump graph.
        A backward jump closes a loop only when its target can reach it again; clang also
        jumps backward to shared tail code (a CSV record's end), which runs once per pass
        and needs no budget test. Every cycle has a backward jump inside one component, so
        charging just those still stops every runaway loop."""
        key = (self.sub.start, self.sub.end)
        found = self.mt.sccs.get(key)
        if found is None:   # an inlined subprogram is translated once per call site
            found = self.mt.sccs[key] = block_sccs(self.insns, *key, self.mt.marked)
        if not key[0] <= pc < key[1]:
            return -1
        firsts, comps = found
        return comps[bisect_right(firsts, pc) - 1]

    # -- memory --------------------------------------------------------------------------

    def fits(self, d: ir.Value, span: ir.Value, size: ir.Value) -> ir.Value:
        """[d, d + size) lies inside [0, span) (unsigned; folds when the values are constant)."""
        b = self.b
        return b.and_(b.icmp_unsigned("<=", size, span),
                      b.icmp_unsigned("<=", d, b.sub(span, size)))

    def kind(self, pc: int, reg: int, off: int = 0) -> kinds.Kind:
        state = self.kinds.get(pc)
        return kinds.shift(state[reg], off) if state is not None else None

    def reg_ptr(self, pc: int, reg: int, off: int, size: int | ir.Value,
                write: bool) -> ir.Value:
        """Host pointer for [reg + off, + size): the address kind picks the cheapest check."""
        return self.host_ptr(lambda: self.b.add(self.reg(reg), c64(off)), size, write, pc,
                             self.kind(pc, reg, off))

    def map_host_base(self, i: int) -> ir.Value:
        if i in self.mt.rodata:
            return self.hoisted(("rodata", i),
                                lambda: self.b.call(self.mt.rodata[i], [self.env]))
        return self.hoisted(("values", i), lambda: self.load_inv(
            self.b.gep(self.map_desc(i), [c64(L.M_VALUES)], source_etype=I8), PTR))

    def host_ptr(self, addr: ir.Value | Callable[[], ir.Value], size: int | ir.Value,
                 write: bool, pc: int, kind: kinds.Kind = None) -> ir.Value:
        """Host pointer for `size` bytes at virtual `addr`, or a fault (never returns null).
        `addr` may be a function that emits it: a statically known target does not need it.

        Statically known targets get no check (and the same place in a block, one pointer);
        a known region gets one inline range check with the generic lookup (runtime.xlate)
        as fallback; the rest use xlate only."""
        b = self.b
        maps = self.mt.prog.maps
        if kind is not None and kind[0] == "c" and (kind[1] >> MAP_SHIFT) - 1 < len(maps) \
                and kind[1] >> MAP_SHIFT:
            kind = ("m", (kind[1] >> MAP_SHIFT) - 1, kind[1] & (base.MAP_STRIDE - 1))
        if isinstance(size, int) and kind is not None and kind[0] == "s":
            # r10 + off: this frame, or (code inlined at a known depth d) a caller's frame,
            # all of them below STACK_TOP: [r10 - STACK_SIZE, r10 + d * STACK_SIZE)
            d = self.depth.constant
            if -isa.STACK_SIZE <= kind[1] and kind[1] + size <= (d or 0) * isa.STACK_SIZE:
                if d is not None:   # a constant place, which SROA can keep in registers
                    at = base.STACK_TOP - d * isa.STACK_SIZE + kind[1] - STACK_LO
                    return self._static_ptr(("s", at), lambda: self.stack)
                if callable(addr):
                    addr = addr()
                return b.gep(self.stack, [b.sub(addr, c64(STACK_LO))], source_etype=I8)
        if isinstance(size, int) and kind is not None and kind[0] == "m":
            i, o = kind[1], kind[2]
            if 0 <= o and o + size <= self.mt.region_size(i) and \
                    not (write and self.mt.is_readonly(maps[i])):
                return self._static_ptr(("m", i, o), lambda: self.map_host_base(i))
        if callable(addr):
            addr = addr()
        nbytes = c64(size) if isinstance(size, int) else size
        cache = self._cached()
        done = self.fn.append_basic_block("addr")
        incoming: list[tuple[ir.Value, ir.Block]] = []
        slow = self.fn.append_basic_block("xlate")

        def inline_check(ok: ir.Value, host: callable, other: ir.Block | None = None) -> None:
            fast = self.fn.append_basic_block("inrange")
            other = other or self.fn.append_basic_block("notin")
            b.cbranch(ok, fast, other)
            b.position_at_end(fast)
            incoming.append((host(), b.block))
            b.branch(done)
            b.position_at_end(other)

        if kind is not None and kind[0] in ("m", "M") and \
                not (write and self.mt.is_readonly(maps[kind[1]])):
            i = kind[1]
            off = b.sub(addr, c64(base.map_base(i)))
            inline_check(self.fits(off, c64(self.mt.region_size(i)), nbytes),
                         lambda: b.gep(self.map_host_base(i), [off], source_etype=I8))
        # The stack is always checked inline: its host memory (an alloca of stord_entry)
        # must never escape into a call, or LLVM could not keep stack slots in registers.
        lo = b.sub(c64(base.STACK_TOP), b.mul(b.add(self.depth, c64(1)), c64(isa.STACK_SIZE)))
        inline_check(self.fits(b.sub(addr, lo), b.sub(c64(base.STACK_TOP), lo), nbytes),
                     lambda: b.gep(self.stack, [b.sub(addr, c64(STACK_LO))], source_etype=I8),
                     other=slow)
        p = b.call(self.mt.runtime.xlate, [self.env, addr, nbytes, c64(int(write))])
        info = b.or_(nbytes, c64(L.WRITE_BIT if write else 0))
        incoming.append((p, b.block))
        bad = self.fn.append_basic_block("bad")
        b.cbranch(b.icmp_unsigned("!=", p, ir.Constant(PTR, None)), done, bad)
        b.position_at_end(bad)
        self.fail(L.ST_ACCESS, pc, addr, info)
        b.position_at_end(done)
        self.carry_cache(cache)
        if len(incoming) == 1:
            return incoming[0][0]
        phi = b.phi(PTR)
        for v, blk in incoming:
            phi.add_incoming(v, blk)
        return phi

    def _static_ptr(self, key: tuple, base_ptr: Callable[[], ir.Value]) -> ir.Value:
        """base_ptr() + key[-1], made once per block (the block cache also holds registers)."""
        cache = self._cached()
        p = cache.get(key)
        if p is None:
            p = cache[key] = self.b.gep(base_ptr(), [c64(key[-1])], source_etype=I8)
        return p

    def load_inv(self, p: ir.Value, typ: ir.Type) -> ir.Value:
        return self.b.load(p, typ=typ, invariant=True)

    def map_desc(self, index: int) -> ir.Value:
        maps = self.env_field(L.MAPS, PTR, invariant=True)
        return self.hoisted(("desc", index), lambda: self.b.gep(
            maps, [c64(index * L.MAPDESC_SIZE)], source_etype=I8))

    def load_mem(self, addr: ir.Value | Callable[[], ir.Value], size: int, pc: int,
                 signed: bool = False, kind: kinds.Kind = None) -> ir.Value:
        """The value, widened to i64; a 4-byte unsigned load stays i32 (set_reg widens it
        and keeps the i32 for 32-bit uses, which are common after a 32-bit load)."""
        ty = SIZE_TYPES[size]
        v = self.b.load(self.host_ptr(addr, size, False, pc, kind), typ=ty, align=1)
        if size == 8 or (size == 4 and not signed):
            return v
        return self.b.sext(v, I64) if signed else self.b.zext(v, I64)

    def store_mem(self, addr: ir.Value | Callable[[], ir.Value], size: int, value: ir.Value,
                  pc: int, kind: kinds.Kind = None) -> None:
        ty = SIZE_TYPES[size]
        p = self.host_ptr(addr, size, True, pc, kind)
        if value.type != ty:
            value = self.b.trunc(value, ty)
        self.b.store(value, p, align=1)

    # -- translation ---------------------------------------------------------------------

    def translate(self) -> ir.Value | None:
        """Emit the subprogram; inlined, returns its r0 with the builder after it."""
        b = self.b
        b.branch(self.block_at(self.sub.start))
        pc = self.sub.start
        leaders = self._leaders()
        for t in leaders:
            self.block_at(t)
        handles = {i: map_handle(i) for i in range(len(self.mt.prog.maps))}
        entry_ctx = self.mt.chunk and self.sub.start == 0 and not self.mt.entry_reentered
        self.kinds = kinds.analyse(self.insns, self.sub.start, self.sub.end, leaders, handles,
                                   args=(("c", base.CTX_BASE),) if entry_ctx else
                                   self.arg_kinds, chunk=self.mt.chunk)
        b.position_at_end(self.blocks[self.sub.start])
        blocks = self.blocks
        while pc < self.sub.end:
            blk = blocks.get(pc)
            if blk is not None and b.block is not blk:
                if not b.block.is_terminated:
                    b.branch(blk)
                b.position_at_end(blk)
            elif b.block.is_terminated:
                b.position_at_end(self.fn.append_basic_block("dead"))
            pc = self._insn(pc, self.insns[pc])
        if not b.block.is_terminated:
            self.fail(L.ST_FALLTHROUGH, self.sub.end - 1)
        if not self.inline:
            return None
        b.position_at_end(self.exit_block)
        if len(self.exits) == 1:
            return self.exits[0][0]
        phi = b.phi(I64)
        for v, blk in self.exits:
            phi.add_incoming(v, blk)
        return phi

    def _leaders(self) -> set[int]:
        """Jump targets of the subprogram (once per subprogram: an inlined one is
        translated at each call site)."""
        key = (self.sub.start, self.sub.end)
        out = self.mt.leaders.get(key)
        if out is None:
            out = self.mt.leaders[key] = jump_targets(self.insns, *key, self.mt.marked)
        return out

    def _insn(self, pc: int, ins: isa.Insn) -> int:
        """Emit one instruction; returns the next slot."""
        cls = ins.op & 7
        if cls == _ALU or cls == _ALU64:
            self._alu(pc, ins, cls == _ALU64)
        elif cls == _JMP or cls == _JMP32:
            self._jmp(pc, ins, cls == _JMP32)
        elif ins.op == _LDDW:
            if pc + 1 >= self.sub.end:
                raise CompileError(f"lddw at slot {pc} has no second slot")
            self._lddw(pc, ins, self.insns[pc + 1])
            return pc + 2
        elif cls == isa.LDX:
            self._ldx(pc, ins)
        elif cls in (isa.ST, isa.STX):
            self._store(pc, ins)
        else:
            raise CompileError(f"unsupported opcode {ins.op:#04x} at slot {pc}")
        return pc + 1

    def _lddw(self, pc: int, first: isa.Insn, second: isa.Insn) -> None:
        if first.src == 0:
            v = isa.lddw_value(first, second)
        elif first.src == isa.PSEUDO_MAP_FD:
            self._check_map_index(pc, first.imm)
            v = map_handle(first.imm)
        elif first.src == isa.PSEUDO_MAP_VALUE:
            self._check_map_index(pc, first.imm)
            v = base.map_base(first.imm) + (second.imm & 0xFFFF_FFFF)
        elif first.src == isa.PSEUDO_FUNC:
            v = base.FUNC_BASE + pc + first.imm + 1
        else:
            raise CompileError(f"lddw at slot {pc} has unknown source {first.src}")
        self.set_reg(first.dst, c64(v))

    def _check_map_index(self, pc: int, index: int) -> None:
        if not 0 <= index < len(self.mt.prog.maps):
            raise CompileError(f"lddw at slot {pc} names map {index}, which does not exist")

    def _ldx(self, pc: int, ins: isa.Insn) -> None:
        mode, size = ins.op & 0xE0, isa.SIZE_BYTES[ins.op & 0x18]
        if mode not in (isa.MEM, isa.MEMSX):
            raise CompileError(f"unsupported load mode {ins.op:#04x} at slot {pc}")
        kind = self.kind(pc, ins.src, ins.off)
        field = kinds.ctx_field(kind, size) if self.mt.chunk and mode == isa.MEM else None
        if field is not None:   # a chunk run's context: known contents, read-only
            if field in kinds.CTX_CONSTANTS:
                self.set_reg(ins.dst, c64(kinds.CTX_CONSTANTS[field]))
            else:
                end = self.b.add(c64(base.DATA_BASE), self.env_field(L.DATA_LEN, invariant=True))
                self.set_reg(ins.dst, self.b.and_(end, c64(0xFFFF_FFFF)))
            return
        src, off = ins.src, ins.off
        self.set_reg(ins.dst, self.load_mem(lambda: self.b.add(self.reg(src), c64(off)), size,
                                            pc, signed=mode == isa.MEMSX, kind=kind))

    def _store(self, pc: int, ins: isa.Insn) -> None:
        mode, size = ins.op & 0xE0, isa.SIZE_BYTES[ins.op & 0x18]
        dst, off = ins.dst, ins.off

        def addr() -> ir.Value:
            return self.b.add(self.reg(dst), c64(off))

        if mode == isa.MEM:
            value = c64(ins.imm) if ins.cls == isa.ST else self.reg(ins.src)
            self.store_mem(addr, size, value, pc, self.kind(pc, ins.dst, ins.off))
        elif mode == isa.ATOMIC and ins.cls == isa.STX and size in (4, 8):
            self._atomic(pc, ins, addr, size)
        else:
            raise CompileError(f"unsupported store {ins.op:#04x} at slot {pc}")

    def _atomic(self, pc: int, ins: isa.Insn, addr: Callable[[], ir.Value],
                size: int) -> None:
        """One thread runs an instance, so atomics are plain read-modify-write."""
        b = self.b
        ty = SIZE_TYPES[size]
        p = self.host_ptr(addr, size, True, pc, self.kind(pc, ins.dst, ins.off))
        old = b.load(p, typ=ty, align=1)
        src = self.reg32(ins.src) if size == 4 else self.reg(ins.src)
        op = ins.imm
        if op == isa.CMPXCHG:
            r0 = self.reg(0)
            expect = b.trunc(r0, ty) if size == 4 else r0
            new = b.select(b.icmp_unsigned("==", old, expect), src, old)
            b.store(new, p, align=1)
            self.set_reg(0, old)
            return
        if op == isa.XCHG:
            b.store(src, p, align=1)
            self.set_reg(ins.src, old)
            return
        fns = {isa.ADD: b.add, isa.OR: b.or_, isa.AND: b.and_, isa.XOR: b.xor}
        fn = fns.get(op & ~isa.FETCH)
        if fn is None or op & ~(0xF0 | isa.FETCH):
            raise CompileError(f"unsupported atomic operation {op:#x} at slot {pc}")
        b.store(fn(old, src), p, align=1)
        if op & isa.FETCH:
            self.set_reg(ins.src, old)

    def _alu(self, pc: int, ins: isa.Insn, is64: bool) -> None:
        b = self.b
        op = ins.op & 0xF0
        ty = I64 if is64 else I32
        bits = 64 if is64 else 32
        if op == isa.END:
            self._end(pc, ins, is64)
            return
        if op == isa.MOV:
            dst = None
        else:
            dst = self.reg(ins.dst) if is64 else self.reg32(ins.dst)
        if ins.op & isa.X:
            src_full = self.reg(ins.src)
            src = src_full if is64 else self.reg32(ins.src)
        else:
            src_full = c64(ins.imm if ins.imm >= 0 else ins.imm + (1 << 64))
            src = src_full if is64 else c32(ins.imm)
        if op == isa.MOV:
            if ins.off and ins.op & isa.X:
                if ins.off not in ((8, 16, 32) if is64 else (8, 16)):
                    raise CompileError(f"movsx with offset {ins.off} at slot {pc}")
                r = b.sext(b.trunc(src_full, ir.IntType(ins.off)), ty)
            else:
                r = src
        elif op == isa.ADD:
            r = b.add(dst, src)
        elif op == isa.SUB:
            r = b.sub(dst, src)
        elif op == isa.MUL:
            r = b.mul(dst, src)
        elif op == isa.OR:
            r = b.or_(dst, src)
        elif op == isa.AND:
            r = b.and_(dst, src)
        elif op == isa.XOR:
            r = b.xor(dst, src)
        elif op in (isa.LSH, isa.RSH, isa.ARSH):
            amt = b.and_(src, ir.Constant(ty, bits - 1))
            r = {isa.LSH: b.shl, isa.RSH: b.lshr, isa.ARSH: b.ashr}[op](dst, amt)
        elif op == isa.NEG:
            r = b.sub(ir.Constant(ty, 0), dst)
        elif op in (isa.DIV, isa.MOD):
            zero, one = ir.Constant(ty, 0), ir.Constant(ty, 1)
            is_zero = b.icmp_unsigned("==", src, zero)
            if ins.off == 1:
                int_min = ir.Constant(ty, 1 << (bits - 1))
                minus1 = ir.Constant(ty, (1 << bits) - 1)
                overflow = b.and_(b.icmp_unsigned("==", dst, int_min),
                                  b.icmp_unsigned("==", src, minus1))
                safe = b.select(b.or_(is_zero, overflow), one, src)
                if op == isa.DIV:
                    q = b.sdiv(dst, safe)          # INT_MIN / 1 = INT_MIN, as specified
                    r = b.select(is_zero, zero, q)
                else:
                    m = b.srem(dst, safe)          # INT_MIN % 1 = 0, as specified
                    r = b.select(is_zero, dst, m)
            elif ins.off == 0:
                safe = b.select(is_zero, one, src)
                if op == isa.DIV:
                    r = b.select(is_zero, zero, b.udiv(dst, safe))
                else:
                    r = b.select(is_zero, dst, b.urem(dst, safe))
            else:
                raise CompileError(f"division with offset {ins.off} at slot {pc}")
        else:
            raise CompileError(f"unsupported ALU opcode {ins.op:#04x} at slot {pc}")
        self.set_reg(ins.dst, r)

    def _end(self, pc: int, ins: isa.Insn, is64: bool) -> None:
        b = self.b
        width = ins.imm
        if width not in (16, 32, 64):
            raise CompileError(f"byte swap of width {width} at slot {pc}")
        v = b.trunc(self.reg(ins.dst), ir.IntType(width)) if width < 64 else self.reg(ins.dst)
        swap = is64 or bool(ins.op & isa.X)   # ALU64 END: bswap; ALU END|X: to big-endian
        if swap and width > 8:
            bswap = self.mt.intrinsic(f"llvm.bswap.{v.type}", v.type, [v.type])
            v = b.call(bswap, [v])
        self.set_reg(ins.dst, v)

    def _jmp(self, pc: int, ins: isa.Insn, is32: bool) -> None:
        b = self.b
        op = ins.op & 0xF0
        if op == isa.EXIT:
            self.leave(self.reg(0))
            return
        if op == isa.CALL:
            self._call(pc, ins, is32)
            return
        if op == isa.JA:
            self.jump(pc, pc + (ins.imm if is32 else ins.off) + 1)
            return
        target = pc + ins.off + 1
        if is32:
            dst = self.reg32(ins.dst)
            src = self.reg32(ins.src) if ins.op & isa.X else c32(ins.imm)
        else:
            dst = self.reg(ins.dst)
            src = self.reg(ins.src) if ins.op & isa.X else c64(ins.imm)
        if op == isa.JSET:
            cond = b.icmp_unsigned("!=", b.and_(dst, src), ir.Constant(dst.type, 0))
        elif op in _PREDS:
            kind, pred = _PREDS[op]
            cmp = b.icmp_unsigned if kind == "u" else b.icmp_signed
            cond = cmp(pred, dst, src)
        else:
            raise CompileError(f"unsupported jump opcode {ins.op:#04x} at slot {pc}")
        fall = self.block_at(pc + 1) if pc + 1 < self.sub.end else None
        if fall is None:
            fall = self.fn.append_basic_block("end")
        if target <= pc:
            taken = self.fn.append_basic_block("back")
            b.cbranch(cond, taken, fall)
            b.position_at_end(taken)
            self.jump(pc, target)
        else:
            # clang lays out the likely successor of a forward branch as the fall-through
            # (and __builtin_expect says so in the C): tell LLVM's block placement, so the
            # hot path of a per-byte callback stays one straight run (measured +15% on stats)
            b.cbranch(cond, self.block_at(target), fall, weights=(1, 4))
        if pc + 1 >= self.sub.end:
            b.position_at_end(fall)
            self.fail(L.ST_FALLTHROUGH, pc)

    def _call(self, pc: int, ins: isa.Insn, is32: bool) -> None:
        if is32:
            raise CompileError(f"call in the 32-bit jump class at slot {pc}")
        if ins.op == isa.CALLX_OP:
            self.mt.runtime.helper_dynamic(self, pc, self.reg(ins.dst))
        elif ins.src == isa.PSEUDO_CALL:
            self.set_reg(0, self.call_sub(pc, pc + ins.imm + 1,
                                          [self.reg(i) for i in range(1, 6)],
                                          arg_kinds=tuple(self.kind(pc, i) for i in range(1, 6))))
        elif ins.src == 0:
            self.mt.runtime.helper(self, pc, ins.imm)
        else:
            raise CompileError(f"call with source {ins.src} at slot {pc}")

    def call_sub(self, pc: int, target: int, regs: list[ir.Value], charge: bool = True,
                 arg_kinds: tuple[kinds.Kind, ...] = ()) -> ir.Value:
        """Call subprogram `target` one frame deeper (r1..r5 = regs, whose kinds in this
        frame are arg_kinds); returns its r0. The caller's r1-r5 stay as they were (as in
        the interp)."""
        sub = self.mt.subs.get(target)
        if sub is None:
            raise CompileError(f"call at slot {pc} to slot {target}, not a subprogram start")
        b = self.b
        depth = b.add(self.depth, c64(1))
        self.check(b.icmp_unsigned("<", depth, c64(base.MAX_CALL_DEPTH)), L.ST_DEPTH, pc)
        if charge:   # (bpf_loop charges its calls up front)
            self.charge(pc)
        if target not in self.mt.inlined or target in self.chain:
            # a real call: hand the callee a copy of ctl, so that ctl itself never escapes
            # and stays in registers here
            tmp = self.hoisted(("ctl_copy",), lambda: b.alloca(I64, 2, name="ctl_copy"))
            ctl_status = self.ctl_status()
            tmp_status = b.gep(tmp, [c64(CTL_STATUS)], source_etype=I8)
            b.store(b.load(self.ctl, typ=I64), tmp)
            b.store(b.load(ctl_status, typ=I64), tmp_status)
            res = b.call(self.mt.function_of(sub), [self.env, self.stack, tmp, depth] + regs)
            b.store(b.load(tmp, typ=I64), self.ctl)
            b.store(b.load(tmp_status, typ=I64), ctl_status)
        else:
            # inlined: a copy per call site, so what this site knows about the arguments
            # holds in it (a real function serves every site and knows nothing)
            res = FunctionTranslator(self.mt, sub, self.frame, depth, regs, inline=True,
                                     chain=self.chain,
                                     arg_kinds=tuple(map(kinds.callee_kind, arg_kinds))
                                     ).translate()
        self.check_status()
        return res
