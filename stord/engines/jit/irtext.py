"""A small LLVM IR builder that writes the module text directly.

The translator used llvmlite.ir, whose objects cost more Python time to build and then to
print (str(module)) than LLVM takes to parse the text: about half of a cold compile. This
module keeps the subset of that API the translator needs (IRBuilder methods of the same
names), but each instruction becomes one line of text at once, and instructions on
constants fold here (add of two constants, a zext of a constant...) so LLVM gets less to
parse and optimise. Types are their IR spelling ("i64", "ptr"); values carry their type
and their reference ("%{12}", a placeholder for the value's number, or "42"), and
`constant` (an int) when they are one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

Type = str


def IntType(bits: int) -> Type:  # noqa: N802 - the llvmlite.ir names the translator uses
    return f"i{bits}"


def PointerType() -> Type:  # noqa: N802
    return "ptr"


def VoidType() -> Type:  # noqa: N802
    return "void"


def DoubleType() -> Type:  # noqa: N802
    return "double"


def ArrayType(elem: Type, count: int) -> Type:  # noqa: N802
    return f"[{count} x {elem}]"


_BITS = {"i1": 1, "i8": 8, "i16": 16, "i32": 32, "i64": 64}


class FunctionType:
    def __init__(self, ret: Type, args: Sequence[Type]) -> None:
        self.ret = ret
        self.args = list(args)

    def as_pointer(self) -> FunctionType:
        return self   # opaque pointers: a function pointer is a ptr; calls need the type


class Value:
    __slots__ = ("type", "ref", "constant", "narrow")

    def __init__(self, type_: Type, ref: str, constant: int | None = None) -> None:
        self.type = type_
        self.ref = ref
        self.constant = constant
        self.narrow: Value | None = None   # a zext's operand (see IRBuilder.trunc)


interned: dict[tuple[Type, int], Value] = {}   # integer constants (values are immutable)
_new = object.__new__

# The placeholder references "%{n}" (see Function.__str__), made once per process: every
# value and block needs one, and formatting an int costs more than the rest of a line.
_refs: list[str] = []
_names: list[str] = []   # "{n}", a block's name
_numbers: list[str] = []   # str(n), for Function.__str__
_grow = threading.Lock()   # (the background O2 compiles translate in other threads)


def ref_of(n: int) -> str:
    """"%{n}", the placeholder reference of value or block n."""
    if n >= len(_refs):
        with _grow:
            _names.extend([f"{{{i}}}" for i in range(len(_names), n + 256)])
            _refs.extend([f"%{{{i}}}" for i in range(len(_refs), n + 256)])
    return _refs[n]


def Constant(ty: Type, value: int | bytes | bytearray | None) -> Value:  # noqa: N802
    """An integer constant (masked to its width), null (ptr, None), zeroinitializer
    (array, None) or an i8 array's bytes."""
    if value.__class__ is int:
        hit = interned.get((ty, value))
        if hit is None:
            hit = _int_constant(ty, value)
            if len(interned) < 1 << 16:
                interned[ty, value] = hit
        return hit
    if ty == "ptr":
        return Value(ty, "null")
    bits = _BITS.get(ty)
    if bits is None:   # an array
        if value is None:
            return Value(ty, "zeroinitializer")
        return Value(ty, byte_string(bytes(value)))
    return _int_constant(ty, int(value))


def _int_constant(ty: Type, value: int) -> Value:
    bits = _BITS[ty]
    v = value & ((1 << bits) - 1)
    if bits == 1:
        return Value(ty, "true" if v else "false", v)
    return Value(ty, str(v), v)


def byte_string(data: bytes) -> str:
    return 'c"' + "".join(chr(c) if 32 <= c < 127 and c not in (34, 92) else f"\\{c:02X}"
                          for c in data) + '"'


class Phi(Value):
    __slots__ = ("incoming",)

    def __init__(self, type_: Type, ref: str) -> None:
        super().__init__(type_, ref)
        self.incoming: list[tuple[Value, Block]] = []

    def add_incoming(self, v: Value, block: Block) -> None:
        self.incoming.append((v, block))

    def __str__(self) -> str:
        arms = ", ".join(f"[{v.ref}, %{b.name}]" for v, b in self.incoming)
        return f"  {self.ref} = phi {self.type} {arms}"


class Switch:
    def __init__(self, value: Value, default: Block) -> None:
        self.value, self.default = value, default
        self.cases: list[tuple[Value, Block]] = []

    def add_case(self, v: Value, block: Block) -> None:
        self.cases.append((v, block))

    def __str__(self) -> str:
        cases = " ".join(f"{v.type} {v.ref}, label %{b.name}" for v, b in self.cases)
        return f"  switch {self.value.type} {self.value.ref}, label %{self.default.name} " \
               f"[{cases}]"


class Block:
    __slots__ = ("fn", "id", "name", "lines", "defs", "deferred", "is_terminated", "objects")

    def __init__(self, fn: Function, id_: int, name: str) -> None:
        self.fn = fn
        self.id = id_
        self.name = name   # "{id}", numbered like the values (see Function.__str__)
        self.lines: list[str | Phi | Switch] = []
        self.defs: list[int] = []   # ids of the values its lines define, in line order
        # IRBuilder.store_at_end: slot -> (value, slot, the slot's type)
        self.deferred: dict[str, tuple[Value, Value, Type]] | None = None
        self.is_terminated = False
        self.objects = False   # lines holds a Phi or Switch (else only str)


class Argument(Value):
    __slots__ = ("attrs",)

    def __init__(self, type_: Type, ref: str) -> None:
        super().__init__(type_, ref)
        self.attrs: list[str] = []

    def add_attribute(self, attr: str) -> None:
        self.attrs.append(attr)


class Function(Value):
    """A definition once a block is appended, else a declaration."""

    def __init__(self, module: Module, fnty: FunctionType, name: str) -> None:
        super().__init__("ptr", f"@{name}")
        self.name = name
        self.ftype = fnty
        self.args = [Argument(t, f"%a{i}") for i, t in enumerate(fnty.args)]
        self.linkage = ""
        self.attributes: set[str] = set()
        self.blocks: list[Block] = []
        self.values = 0    # ids of values and blocks
        self.module = module
        module.add(self)

    def fresh(self) -> tuple[int, str]:
        """A new value or block: its id and its reference, a placeholder that __str__
        turns into its number (see __str__). (IRBuilder._value does the same inline: it
        runs for every instruction.)"""
        n = self.values
        self.values = n + 1
        return n, ref_of(n)

    def append_basic_block(self, name: str = "") -> Block:
        """A new block (unnamed, like the values: `name` is not kept)."""
        n = self.values
        self.values = n + 1
        try:
            name = _names[n]
        except IndexError:
            ref_of(n)
            name = _names[n]
        blk = Block(self, n, name)
        self.blocks.append(blk)
        return blk

    def __str__(self) -> str:
        ret = self.ftype.ret
        if not self.blocks:
            return f"declare {ret} {self.ref}({', '.join(self.ftype.args)})"
        params = ", ".join(" ".join([a.type, *a.attrs, a.ref]) for a in self.args)
        head = f"define {self.linkage + ' ' if self.linkage else ''}{ret} {self.ref}" \
               f"({params}) {' '.join(sorted(self.attributes))} {{"
        # Values and blocks are unnamed (%0, %1...): LLVM parses and optimises such a module
        # in about 3/4 of the time it takes with names (measured 29 vs 37 ms for stats's
        # first tier). Their numbers must follow the text's order, which is not the order
        # they were made in (hoisting into the entry block), so lines hold "%{id}" and the
        # numbers are filled in here, in one str.format.
        # (the numbers as strings from _numbers: str.format then only copies them)
        numbers = [""] * self.values
        if self.values > len(_numbers):
            with _grow:
                _numbers.extend([str(i) for i in range(len(_numbers), self.values)])
        n = 0
        body = []
        for blk in self.blocks:
            numbers[blk.id] = _numbers[n]
            n += 1
            for i in blk.defs:
                numbers[i] = _numbers[n]
                n += 1
            body.append(f"{blk.name}:")
            body.extend(map(str, blk.lines) if blk.objects else blk.lines)
        return f"{head}\n" + "\n".join(body).format(*numbers) + "\n}"


class GlobalVariable(Value):
    def __init__(self, module: Module, ty: Type, name: str) -> None:
        super().__init__("ptr", f"@{name}")
        self.value_type = ty
        self.initializer: Value | None = None
        self.global_constant = False
        self.linkage = ""
        module.add(self)

    def __str__(self) -> str:
        kind = "constant" if self.global_constant else "global"
        init = self.initializer.ref if self.initializer is not None else "zeroinitializer"
        link = self.linkage + " " if self.linkage else ""
        return f"{self.ref} = {link}{kind} {self.value_type} {init}"


class Module:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.globals: dict[str, Value] = {}
        self.items: list[Function | GlobalVariable] = []
        self.metadata = ["!{}"]   # !0: the empty node that invariant.load refers to
        self._weights: dict[tuple[int, int], str] = {}

    def weights(self, taken: int, other: int) -> str:
        """The metadata reference of branch weights taken:other."""
        ref = self._weights.get((taken, other))
        if ref is None:
            node = f'!{{!"branch_weights", i32 {taken}, i32 {other}}}'
            if node not in self.metadata:
                self.metadata.append(node)
            ref = self._weights[taken, other] = f"!{self.metadata.index(node)}"
        return ref

    def add(self, item: Function | GlobalVariable) -> None:
        name = item.ref[1:]
        if name in self.globals:
            raise ValueError(f"duplicate global {name!r}")
        self.globals[name] = item
        self.items.append(item)

    def __str__(self) -> str:
        parts = [str(i) for i in self.items]
        parts.extend(f"!{i} = {node}" for i, node in enumerate(self.metadata))
        parts.append("")
        return "\n".join(parts)


M64 = (1 << 64) - 1


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


_ICMP = {"==": "eq", "!=": "ne", ">": "gt", ">=": "ge", "<": "lt", "<=": "le"}
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": int.__eq__, "!=": int.__ne__, ">": int.__gt__, ">=": int.__ge__,
    "<": int.__lt__, "<=": int.__le__}


_ALIGN = {0: "", 1: ", align 1"}   # the usual alignments' text (the others are formatted)


class IRBuilder:
    """Appends instruction lines to a block (or inserts them before its terminator)."""

    def __init__(self, block: Block) -> None:
        self.position_at_end(block)

    # -- positioning ---------------------------------------------------------------------

    def position_at_end(self, block: Block) -> None:
        self.block = block
        self.fn = block.fn
        self._at: int | None = None   # insertion index, None = the end

    def position_before_terminator(self, block: Block) -> None:
        if not block.is_terminated:   # (Block.defs relies on it)
            raise ValueError(f"block {block.name} has no terminator to insert before")
        self.position_at_end(block)
        self._at = len(block.lines) - 1

    def _line(self, text: str | Phi | Switch) -> None:
        if self._at is None:
            self.block.lines.append(text)
        else:
            self.block.lines.insert(self._at, text)
            self._at += 1

    def _value(self, ty: Type, text: str) -> Value:
        fn = self.fn
        n = fn.values
        fn.values = n + 1
        try:
            ref = _refs[n]
        except IndexError:
            ref = ref_of(n)
        # an insertion (self._at) is before the block's terminator, after every other
        # line that defines a value: defs stays in line order
        blk = self.block
        blk.defs.append(n)
        if self._at is None:
            blk.lines.append(f"  {ref} = {text}")
        else:
            self._line(f"  {ref} = {text}")
        v = _new(Value)   # (Value(ty, ref) without the call to __init__: one per line)
        v.type = ty
        v.ref = ref
        v.constant = v.narrow = None
        return v

    def _terminate(self, text: str) -> None:
        blk = self.block
        if blk.deferred:
            self._flush()
        if self._at is None:
            blk.lines.append(text)
        else:
            self._line(text)
        blk.is_terminated = True

    def _flush(self) -> None:
        blk = self.block
        if blk.deferred:
            stores = blk.deferred.values()
            blk.deferred = None
            for v, p, ty in stores:
                if v.type != ty:   # a narrower value, widened only now that it is stored
                    v = self.zext(v, ty)
                blk.lines.append(f"  store {ty} {v.ref}, ptr {p.ref}")

    # -- arithmetic (folded on constants) ------------------------------------------------

    def _binop(self, op: str, a: Value, b: Value, fold: Callable[[int, int], int | None],
               ident: int | None = None) -> Value:
        ca, cb = a.constant, b.constant
        if ca is not None and cb is not None:
            r = fold(ca, cb)
            if r is not None:
                return Constant(a.type, r)
        if ident is not None and cb == ident:
            return a
        return self._value(a.type, f"{op} {a.type} {a.ref}, {b.ref}")

    # add, sub, mul, and_, or_ and xor are _binop written out: they are most of the
    # instructions, and the call and the fold function cost as much as the line

    def add(self, a: Value, b: Value) -> Value:
        ca, cb = a.constant, b.constant
        if ca == 0:
            return b
        if cb is not None:
            if ca is not None:
                return Constant(a.type, ca + cb)
            if cb == 0:
                return a
        return self._value(a.type, f"add {a.type} {a.ref}, {b.ref}")

    def sub(self, a: Value, b: Value) -> Value:
        ca, cb = a.constant, b.constant
        if cb is not None:
            if ca is not None:
                return Constant(a.type, ca - cb)
            if cb == 0:
                return a
        return self._value(a.type, f"sub {a.type} {a.ref}, {b.ref}")

    def mul(self, a: Value, b: Value) -> Value:
        ca, cb = a.constant, b.constant
        if cb is not None:
            if ca is not None:
                return Constant(a.type, ca * cb)
            if cb == 1:
                return a
        return self._value(a.type, f"mul {a.type} {a.ref}, {b.ref}")

    def and_(self, a: Value, b: Value) -> Value:
        ca, cb = a.constant, b.constant
        if ca is not None and cb is None:
            a, b, ca, cb = b, a, cb, ca
        if cb is not None:
            if cb == (1 << _BITS[a.type]) - 1:
                return a
            if ca is not None:
                return Constant(a.type, ca & cb)
        return self._value(a.type, f"and {a.type} {a.ref}, {b.ref}")

    def or_(self, a: Value, b: Value) -> Value:
        ca, cb = a.constant, b.constant
        if cb is not None:
            if ca is not None:
                return Constant(a.type, ca | cb)
            if cb == 0:
                return a
        return self._value(a.type, f"or {a.type} {a.ref}, {b.ref}")

    def xor(self, a: Value, b: Value) -> Value:
        ca, cb = a.constant, b.constant
        if cb is not None:
            if ca is not None:
                return Constant(a.type, ca ^ cb)
            if cb == 0:
                return a
        return self._value(a.type, f"xor {a.type} {a.ref}, {b.ref}")

    def _shift(self, op: str, a: Value, b: Value, fold: Callable[[int, int, int], int]) -> Value:
        bits = _BITS[a.type]
        return self._binop(op, a, b, lambda x, y: fold(x, y, bits) if y < bits else None, 0)

    def shl(self, a: Value, b: Value) -> Value:
        return self._shift("shl", a, b, lambda x, y, _bits: x << y)

    def lshr(self, a: Value, b: Value) -> Value:
        return self._shift("lshr", a, b, lambda x, y, _bits: x >> y)

    def ashr(self, a: Value, b: Value) -> Value:
        return self._shift("ashr", a, b, lambda x, y, bits: _signed(x, bits) >> y)

    def udiv(self, a: Value, b: Value) -> Value:
        return self._value(a.type, f"udiv {a.type} {a.ref}, {b.ref}")

    def sdiv(self, a: Value, b: Value) -> Value:
        return self._value(a.type, f"sdiv {a.type} {a.ref}, {b.ref}")

    def urem(self, a: Value, b: Value) -> Value:
        return self._value(a.type, f"urem {a.type} {a.ref}, {b.ref}")

    def srem(self, a: Value, b: Value) -> Value:
        return self._value(a.type, f"srem {a.type} {a.ref}, {b.ref}")

    def _icmp(self, signed: bool, pred: str, a: Value, b: Value) -> Value:
        ca, cb = a.constant, b.constant
        if ca is not None and cb is not None:
            if signed:
                bits = _BITS[a.type]
                ca, cb = _signed(ca, bits), _signed(cb, bits)
            return Constant("i1", _COMPARE[pred](ca, cb))
        p = _ICMP[pred]
        if pred not in ("==", "!="):
            p = ("s" if signed else "u") + p
        return self._value("i1", f"icmp {p} {a.type} {a.ref}, {b.ref}")

    def icmp_unsigned(self, pred: str, a: Value, b: Value) -> Value:
        return self._icmp(False, pred, a, b)

    def icmp_signed(self, pred: str, a: Value, b: Value) -> Value:
        return self._icmp(True, pred, a, b)

    def select(self, cond: Value, a: Value, b: Value) -> Value:
        if cond.constant is not None:
            return a if cond.constant else b
        return self._value(a.type, f"select i1 {cond.ref}, {a.type} {a.ref}, {b.type} {b.ref}")

    def _cast(self, op: str, v: Value, ty: Type, fold: Callable[[int], int]) -> Value:
        if v.type == ty:
            return v
        if v.constant is not None:
            return Constant(ty, fold(v.constant))
        return self._value(ty, f"{op} {v.type} {v.ref} to {ty}")

    def zext(self, v: Value, ty: Type) -> Value:
        if v.type == ty:
            return v
        if v.constant is not None:
            return Constant(ty, v.constant)
        r = self._value(ty, f"zext {v.type} {v.ref} to {ty}")
        r.narrow = v
        return r

    def sext(self, v: Value, ty: Type) -> Value:
        return self._cast("sext", v, ty, lambda x: _signed(x, _BITS[v.type]))

    def trunc(self, v: Value, ty: Type) -> Value:
        """trunc(zext x) to x's type is x (a register set from 32 bits, stored as 32 bits)."""
        n = v.narrow
        if n is not None and n.type == ty:
            return n
        if v.type == ty:
            return v
        if v.constant is not None:
            return Constant(ty, v.constant)
        return self._value(ty, f"trunc {v.type} {v.ref} to {ty}")

    def uitofp(self, v: Value, ty: Type) -> Value:
        return self._value(ty, f"uitofp {v.type} {v.ref} to {ty}")

    def fptoui(self, v: Value, ty: Type) -> Value:
        return self._value(ty, f"fptoui {v.type} {v.ref} to {ty}")

    # -- memory --------------------------------------------------------------------------

    def alloca(self, ty: Type, count: int | None = None, name: str = "",
               align: int = 0) -> Value:
        n = f", i64 {count}" if count is not None else ""
        a = f", align {align}" if align else ""
        return self._value("ptr", f"alloca {ty}{n}{a}")

    def load(self, p: Value, typ: Type, align: int = 0, invariant: bool = False) -> Value:
        a = _ALIGN[align] if align in _ALIGN else f", align {align}"
        md = ", !invariant.load !0" if invariant else ""
        return self._value(typ, f"load {typ}, ptr {p.ref}{a}{md}")

    def store(self, v: Value, p: Value, align: int = 0) -> None:
        a = _ALIGN[align] if align in _ALIGN else f", align {align}"
        self._line(f"  store {v.type} {v.ref}, ptr {p.ref}{a}")

    def store_at_end(self, v: Value, p: Value, ty: Type | None = None) -> None:
        """A store written just before the block's terminator, replacing any earlier one
        to p in this block. Only for memory nothing reads in between (the translator's
        register slots: it keeps their current values itself), so a register set twice
        in a block costs one store, which LLVM then has less to parse and promote. `ty`:
        the slot's type, when v is a narrower integer: it is zero-extended at the store, so
        a value overwritten in the block is never widened."""
        blk = self.block
        if blk.deferred is None:
            blk.deferred = {}
        blk.deferred[p.ref] = (v, p, ty or v.type)

    def gep(self, p: Value, indices: list[Value], source_etype: Type = "i8") -> Value:
        (i,) = indices
        if i.constant == 0:
            return p
        return self._value("ptr", f"getelementptr {source_etype}, ptr {p.ref}, "
                                  f"{i.type} {i.ref}")

    # -- calls and control flow ----------------------------------------------------------

    def call(self, fn: Value, args: list[Value], attrs: tuple[str, ...] = (),
             ftype: FunctionType | None = None) -> Value | None:
        ftype = ftype or fn.ftype
        argl = ", ".join([f"{a.type} {a.ref}" for a in args])
        tail = " " + " ".join(attrs) if attrs else ""
        text = f"call {ftype.ret} {fn.ref}({argl}){tail}"
        if ftype.ret == "void":
            self._line("  " + text)
            return None
        return self._value(ftype.ret, text)

    def ret(self, v: Value) -> None:
        self._terminate(f"  ret {v.type} {v.ref}")

    def ret_void(self) -> None:
        self._terminate("  ret void")

    def branch(self, target: Block) -> None:
        self._terminate(f"  br label %{target.name}")

    def cbranch(self, cond: Value, then: Block, other: Block,
                weights: tuple[int, int] | None = None) -> None:
        md = f", !prof {self.fn.module.weights(*weights)}" if weights else ""
        self._terminate(f"  br i1 {cond.ref}, label %{then.name}, label %{other.name}{md}")

    def switch(self, v: Value, default: Block) -> Switch:
        sw = Switch(v, default)
        self._flush()
        self._line(sw)
        self.block.objects = True
        self.block.is_terminated = True
        return sw

    def phi(self, ty: Type, name: str = "") -> Phi:
        n, ref = self.fn.fresh()
        p = Phi(ty, ref)
        self.block.defs.append(n)
        self._line(p)
        self.block.objects = True
        return p

    def unreachable(self) -> None:
        self._terminate("  unreachable")

    @contextmanager
    def if_then(self, cond: Value, likely: bool | None = None) -> Iterator[None]:
        then = self.fn.append_basic_block("if")
        end = self.fn.append_basic_block("endif")
        # (llvmlite's weights for likely / unlikely)
        self.cbranch(cond, then, end, None if likely is None else (99, 1) if likely else (1, 99))
        self.position_at_end(then)
        yield
        if not self.block.is_terminated:
            self.branch(end)
        self.position_at_end(end)

    @contextmanager
    def if_else(self, cond: Value) -> Iterator[tuple[object, object]]:
        then = self.fn.append_basic_block("if")
        other = self.fn.append_basic_block("else")
        end = self.fn.append_basic_block("endif")
        self.cbranch(cond, then, other)

        @contextmanager
        def arm(block: Block) -> Iterator[None]:
            self.position_at_end(block)
            yield
            if not self.block.is_terminated:
                self.branch(end)

        yield arm(then), arm(other)
        self.position_at_end(end)
