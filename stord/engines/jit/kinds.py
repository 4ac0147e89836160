"""Where registers point: a small forward dataflow over one subprogram, done before translation.

For each instruction it knows, per register, one of
    None            unknown (a scalar, or a pointer of unknown origin)
    ("c", v)        the constant v (u64)
    ("s", off)      r10 + off of the current frame
    ("S",)          somewhere in the stack, offset unknown
    ("m", i, off)   map_base(i) + off
    ("M", i)        somewhere in map i's address window, offset unknown
and, after the registers, what the frame's 8-byte spill slots hold ({r10 offset: kind}): clang
spills a pointer (a bpf_loop callback's context, say) when registers run short, and a pointer
filled back from a slot keeps its kind. A slot is forgotten on any write that may reach it
(a store of another size over it, a store through a pointer that may point into the stack)
and on every call (a callee may write the caller's frame through a pointer it was given).
The translator uses this only to choose code: an access whose target is known statically
(a spill slot r10-8, a global at a constant offset, a .rodata parameter) gets no run-time
check at all, one with a known region gets a single inline range check with the generic
out-of-line lookup as fallback, and the rest go straight to the generic lookup. Every
outcome is the same as the generic lookup's, so a wrong guess costs speed, never safety.
"""

from __future__ import annotations

from stord.engines import base
from stord.program import isa
from stord.program.isa import Insn

Kind = tuple | None
State = list  # 11 kinds, r0..r10, then the spill slots (a dict, replaced, never changed)
SPILLS = 11

M64 = (1 << 64) - 1
MAP_LOOKUP_ELEM = 1


def region(k: Kind) -> Kind:
    """The kind with its offset forgotten."""
    if k is None or k[0] == "c":
        return None
    if k[0] in ("s", "S"):
        return ("S",)
    return ("M", k[1])


def meet(a: Kind, b: Kind) -> Kind:
    if a == b:
        return a
    ra, rb = region(a), region(b)
    return ra if ra is not None and ra == rb else None


def shift(k: Kind, delta: int) -> Kind:
    if k is None:
        return None
    if k[0] == "c":
        return ("c", (k[1] + delta) & M64)
    if k[0] == "s":
        return ("s", k[1] + delta)
    if k[0] == "m":
        return ("m", k[1], k[2] + delta)
    return k


def callee_kind(k: Kind) -> Kind:
    """A caller's register kind as its callee (one frame deeper) sees it: the caller's
    r10 + off is the callee's r10 + STACK_SIZE + off."""
    if k is not None and k[0] == "s":
        return ("s", k[1] + isa.STACK_SIZE)
    return k


def ctx_field(k: Kind, size: int) -> int | None:
    """The xdp_md field (byte offset) that a `size`-byte load at address kind k reads, when
    k is a constant inside the context."""
    if k is None or k[0] != "c" or size != 4:
        return None
    off = k[1] - base.CTX_BASE
    return off if off in (0, 4, 8, 12, 16, 20) else None


# What a chunk run's context holds (stord.engines.jit.engine.JitInstance.run_chunk): loads of
# these fields are constants; data_end (4) depends on the chunk's length.
CTX_CONSTANTS = {0: base.DATA_BASE, 8: base.META_BASE, 12: 0, 16: 0, 20: 0}


def analyse(insns: list[Insn], start: int, end: int, leaders: set[int],
            map_handles: dict[int, int], args: tuple[Kind, ...] = (),
            chunk: bool = False) -> dict[int, State]:
    """State before each load, store and call of [start, end) (only reachable ones: what
    the translator asks about). `args`: what r1, r2... are known to be on entry (see
    callee_kind); `chunk`: the code runs chunks, so the context holds CTX_CONSTANTS."""
    entry: State = [("c", 0), *(list(args) + [None] * 5)[:5], ("c", 0), ("c", 0), ("c", 0),
                    ("c", 0), ("s", 0), {}]
    block_in: dict[int, State] = {start: entry}
    work = [start]
    out: dict[int, State] = {}
    # The transfer function is written out inline, one branch per instruction class: it
    # runs for every slot of every block visit, and a call per slot was half the cost.
    while work:
        pc = work.pop()
        state = list(block_in[pc])
        while pc < end:
            ins = insns[pc]
            op = ins.op
            cls = op & 7
            nxt = pc + 1
            # (the classes in the order of how often clang's code has them)
            if cls == _ALU:
                state[ins.dst] = None
            elif cls == _JMP or cls == _JMP32:
                jop = op & 0xF0
                if jop == _CALL:   # straight-line code
                    if cls == _JMP:
                        out[pc] = list(state)
                        state[0] = _call_r0(ins, state, map_handles)
                        if state[SPILLS]:
                            state[SPILLS] = {}
                elif jop == _EXIT:
                    break
                elif jop == _JA:
                    t = pc + (ins.imm if cls == _JMP32 else ins.off) + 1
                    if t != nxt:
                        _merge(block_in, work, t, state)
                        break
                else:   # conditional: the target, then on to the fall-through
                    t = pc + ins.off + 1
                    if t != nxt:
                        _merge(block_in, work, t, state)
            elif op == _LDDW:
                nxt = pc + 2
                _lddw(state, ins, insns[pc + 1], pc, map_handles)
            elif cls == _LDX:
                out[pc] = list(state)
                k = state[ins.src]
                if chunk and k is not None and k[0] == "c" and op & 0xF8 == _MEM | _W:
                    # ctx_field(shift(k, off), 4): a constant address in the context
                    field = ((k[1] + ins.off) & M64) - base.CTX_BASE
                    state[ins.dst] = ("c", CTX_CONSTANTS[field]) if field in CTX_CONSTANTS \
                        else None
                elif op == _FILL and k is not None and k[0] == "s":
                    state[ins.dst] = state[SPILLS].get(k[1] + ins.off)
                else:
                    state[ins.dst] = None
            elif cls == _ALU64:
                src = state[ins.src] if op & _X else ("c", ins.imm & M64)
                alu = op & 0xF0
                if alu == _MOV:
                    state[ins.dst] = src if ins.off == 0 else None
                elif alu == _ADD:
                    state[ins.dst] = _add(state[ins.dst], src)
                elif alu == _SUB:
                    state[ins.dst] = _sub(state[ins.dst], src)
                else:
                    state[ins.dst] = None
            elif cls == _STX:
                out[pc] = list(state)
                if state[SPILLS] or op == _SPILL:
                    _store(state, ins)
                if op & 0xE0 == _ATOMIC:
                    if ins.imm == _CMPXCHG:
                        state[0] = None
                    elif ins.imm & _FETCH:
                        state[ins.src] = None
            elif cls == _ST:
                out[pc] = list(state)
                if state[SPILLS]:
                    _store(state, ins)
            if nxt >= end:
                break
            if nxt in leaders:
                _merge(block_in, work, nxt, state)
                break
            pc = nxt
    return out


_ALU64, _ALU, _LDX, _ST, _STX, _JMP, _JMP32 = (isa.ALU64, isa.ALU, isa.LDX, isa.ST, isa.STX,
                                               isa.JMP, isa.JMP32)
_X, _MOV, _ADD, _SUB, _MEM, _W, _ATOMIC = isa.X, isa.MOV, isa.ADD, isa.SUB, isa.MEM, isa.W, \
    isa.ATOMIC
_CMPXCHG, _FETCH, _CALL, _EXIT, _JA, _LDDW = (isa.CMPXCHG, isa.FETCH, isa.CALL, isa.EXIT,
                                              isa.JA, isa.LDDW)


_FILL = isa.LDX | isa.MEM | isa.DW
_SPILL = isa.STX | isa.MEM | isa.DW
_STACK_LO = base.STACK_TOP - base.MAX_CALL_DEPTH * isa.STACK_SIZE


def _store(st: State, ins: Insn) -> None:
    """The spill slots after a store (ST or STX, atomics too) at dst + off."""
    a = st[ins.dst]
    size = isa.SIZE_BYTES[ins.op & 0x18]
    if a is not None and a[0] == "s":
        at = a[1] + ins.off
        slots = {o: k for o, k in st[SPILLS].items() if o + 8 <= at or at + size <= o}
        if ins.op == _SPILL and st[ins.src] is not None:
            slots[at] = st[ins.src]
        st[SPILLS] = slots
        return
    if a is not None and a[0] in ("c", "m"):
        # a known address: it reaches the stack only if it is in the stack's window
        at = ((a[1] if a[0] == "c" else base.map_base(a[1]) + a[2]) + ins.off) & M64
        if at + size <= _STACK_LO or at >= base.STACK_TOP:
            return
    st[SPILLS] = {}   # somewhere in the stack, or anywhere


def _meet_spills(a: dict, b: dict) -> dict:
    if a is b or a == b:
        return a
    out = {}
    for o, k in a.items():
        m = meet(k, b.get(o))
        if m is not None:
            out[o] = m
    return out


def _merge(block_in: dict[int, State], work: list[int], t: int, state: State) -> None:
    old = block_in.get(t)
    if old is None:
        block_in[t] = list(state)
        work.append(t)
        return
    if old == state:
        return
    new = [*map(meet, old[:SPILLS], state[:SPILLS]), _meet_spills(old[SPILLS], state[SPILLS])]
    if new != old:
        block_in[t] = new
        work.append(t)


def _lddw(st: State, ins: Insn, second: Insn, pc: int, map_handles: dict[int, int]) -> None:
    d = ins.dst
    if ins.src == isa.PSEUDO_MAP_VALUE:
        st[d] = ("m", ins.imm, second.imm & 0xFFFF_FFFF)
    elif ins.src == isa.PSEUDO_MAP_FD:
        st[d] = ("c", map_handles.get(ins.imm, 0))
    elif ins.src == isa.PSEUDO_FUNC:
        st[d] = ("c", base.FUNC_BASE + pc + ins.imm + 1)
    else:
        st[d] = ("c", isa.lddw_value(ins, second))


def _call_r0(ins: Insn, st: State, map_handles: dict[int, int]) -> Kind:
    """r0 after a call: a map_lookup_elem of a known map points into that map."""
    if ins.op == isa.CALL_OP and ins.src == 0 and ins.imm == MAP_LOOKUP_ELEM:
        h = st[1]
        r0 = None
        if h is not None and h[0] == "c":
            for i, handle in map_handles.items():
                if handle == h[1]:
                    r0 = ("M", i)
        return r0
    return None


def _add(a: Kind, b: Kind) -> Kind:
    if a is None and b is None:
        return None
    if a is not None and b is not None and a[0] == "c" and b[0] == "c":
        return ("c", (a[1] + b[1]) & M64)
    if b is not None and b[0] == "c":
        return shift(a, _signed(b[1]))
    if a is not None and a[0] == "c":
        return shift(b, _signed(a[1]))
    # pointer + unknown: the same region, offset unknown (checked at run time)
    if b is None:
        return region(a)
    if a is None:
        return region(b)
    return None


def _sub(a: Kind, b: Kind) -> Kind:
    if b is not None and b[0] == "c":
        return shift(a, -_signed(b[1]))
    if b is None and a is not None and a[0] != "c":
        return region(a)
    return None


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v
