"""Merging decoded program states (pure Python: no stord imports, so clients can merge the
results of several nodes without a daemon).

A spec mirrors the shape of a decoded state (see stord.query.state.reduce_spec):
- a dict whose only key is "*" describes a map: keys are unioned, the values of a key present
  on several sides are merged by spec["*"];
- any other dict describes a struct (or the top level): each named field merged by its spec;
- a string "op:type" is a leaf: op one of sum, min, max, or, and; type iN/uN (N bits),
  f32/f64, bool, str or bytes. A list value under a leaf or struct spec is an array: merged
  elementwise.
Sums are exact and then range-checked: a sum that leaves its type raises ReduceOverflow,
never a wrapped number. merge_all() sums all inputs before checking, so the outcome does not
depend on the order in which results arrive.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

OPS = ("sum", "min", "max", "or", "and")
_INT_RE = re.compile(r"^([iu])(\d+)$")


class ReduceError(ValueError):
    """States that do not fit the spec (shape or type mismatch, unknown op)."""

    code = "bad_request"


class ReduceOverflow(ArithmeticError):
    """A merged sum does not fit its type."""

    code = "overflow"


def merge(a: Any, b: Any, spec: Any) -> Any:
    """Merge two decoded states (or sub-values) by `spec`."""
    return _run(_compile(spec), [a, b])


def merge_all(states: Iterable[Any], spec: Any) -> Any:
    """Merge any number of decoded states; {} when there are none."""
    values = list(states)
    if not values:
        return {}
    merger = _compile(spec)
    if len(values) == 1:
        return values[0]
    return _run(merger, values)


def merger(spec: Any) -> Callable[[list[Any]], Any]:
    """A function merging a list of values by `spec`, compiled once for many merges."""
    compiled = _compile(spec)
    return lambda values: values[0] if len(values) == 1 else _run(compiled, values)


# A spec is compiled once into nested closures (a group-by map merges thousands of entries
# by one value spec). Errors carry the path to the value, added while they propagate, so
# the common case pays nothing for it.

_Merger = Callable[[list[Any]], Any]


class _PathError(Exception):
    def __init__(self, kind: type[Exception], message: str):
        super().__init__(message)
        self.kind, self.message, self.path = kind, message, []


def _run(merger: _Merger, values: list[Any]) -> Any:
    try:
        return merger(values)
    except _PathError as e:
        where = "".join(reversed(e.path)).lstrip(".") or "value"
        raise e.kind(f"{where}: {e.message}") from None


def _at(part: str, merger: _Merger, values: list[Any]) -> Any:
    try:
        return merger(values)
    except _PathError as e:
        e.path.append(part)
        raise


def _compile(spec: Any) -> _Merger:
    if isinstance(spec, str):
        return _elementwise(_compile_leaf(spec))
    if isinstance(spec, dict):
        if set(spec) == {"*"}:
            return _compile_map(_compile(spec["*"]))
        return _elementwise(_compile_struct({k: _compile(v) for k, v in spec.items()}))
    raise ReduceError(f"bad reduce spec {spec!r}")


def _elementwise(merger: _Merger) -> _Merger:
    """Lists (arrays, also of structs) merge position by position with the same merger."""
    def merge_any(values: list[Any]) -> Any:
        if type(values[0]) is not list:
            return merger(values)
        n = len(values[0])
        for v in values:
            if type(v) is not list or len(v) != n:
                raise _PathError(ReduceError, "arrays of different shapes")
        return [_at(f"[{i}]", merge_any, [v[i] for v in values]) for i in range(n)]
    return merge_any


def _compile_struct(fields: dict[str, _Merger]) -> _Merger:
    items = list(fields.items())
    known = set(fields)

    def merge_struct(values: list[Any]) -> Any:
        for v in values:
            if type(v) is not dict:
                raise _PathError(ReduceError, f"expected a struct, got {type(v).__name__}")
            if not v.keys() <= known:
                raise _PathError(ReduceError, f"fields {sorted(set(v) - known)} are not in "
                                              "the reduce spec")
        out = {}
        for k, sub in items:
            present = [v[k] for v in values if k in v]
            if len(present) == 1:
                out[k] = present[0]
            elif present:
                out[k] = _at(f".{k}", sub, present)
        return out
    return merge_struct


def _compile_map(value: _Merger) -> _Merger:
    def merge_map(values: list[Any]) -> Any:
        groups: dict[Any, list[Any]] = {}
        for v in values:
            if type(v) is not dict:
                raise _PathError(ReduceError, f"expected a map, got {type(v).__name__}")
            for k, x in v.items():
                g = groups.get(k)
                if g is None:
                    groups[k] = [x]
                else:
                    g.append(x)
        return {k: xs[0] if len(xs) == 1 else _at(f"[{k!r}]", value, xs)
                for k, xs in groups.items()}
    return merge_map


@functools.lru_cache(maxsize=256)
def _compile_leaf(spec: str) -> _Merger:
    op, _, typ = spec.partition(":")
    if op not in OPS:
        raise ReduceError(f"unknown reduce op {op!r} in {spec!r}")
    if m := _INT_RE.match(typ):
        bits, signed = int(m.group(2)), m.group(1) == "i"
        if bits == 0:
            raise ReduceError(f"bad type in reduce spec {spec!r}")
        kind = "int"
    elif typ in ("f32", "f64", "bool", "str", "bytes"):
        kind, bits, signed = ("float" if typ[0] == "f" else typ), 0, False
    else:
        raise ReduceError(f"unknown type {typ!r} in reduce spec {spec!r}")
    if (op in ("or", "and") and kind not in ("int", "bool")) or \
            (op == "sum" and kind in ("bool", "str", "bytes")):
        raise ReduceError(f"reduce op {op!r} does not apply to {typ} ({spec!r})")
    want = _TYPES[kind]

    def check(values: list[Any]) -> None:
        for v in values:
            if not isinstance(v, want) or (kind == "int" and type(v) is bool):
                raise _PathError(ReduceError, f"{v!r} is not a {typ}")

    if op in ("min", "max"):
        pick = min if op == "min" else max

        def merge_pick(values: list[Any]) -> Any:
            check(values)
            return pick(values)
        return merge_pick
    if kind == "bool":
        agg = any if op == "or" else all

        def merge_bool(values: list[Any]) -> Any:
            check(values)
            return agg(values)
        return merge_bool
    if op in ("or", "and"):
        bitop = operator.or_ if op == "or" else operator.and_

        def merge_bits(values: list[Any]) -> Any:
            check(values)
            return functools.reduce(bitop, values)
        return merge_bits
    lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)) \
        if kind == "int" else (None, None)

    def merge_sum(values: list[Any]) -> Any:
        check(values)
        total = sum(values)
        if lo is not None and not lo <= total <= hi:
            raise _PathError(ReduceOverflow, f"the sum {total} does not fit {typ} [{lo}, {hi}]")
        return total
    return merge_sum


_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int, "float": (int, float), "bool": (bool, int), "str": str,
    "bytes": (bytes, bytearray)}
