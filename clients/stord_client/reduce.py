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
import re
from collections.abc import Iterable
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
    return _merge([a, b], spec, "")


def merge_all(states: Iterable[Any], spec: Any) -> Any:
    """Merge any number of decoded states; {} when there are none."""
    values = list(states)
    if not values:
        return {}
    if len(values) == 1:
        return values[0]
    return _merge(values, spec, "")


def _merge(values: list[Any], spec: Any, path: str) -> Any:
    if isinstance(spec, dict):
        if set(spec) == {"*"}:
            return _merge_map(values, spec["*"], path)
        if all(isinstance(v, list) for v in values):
            return _merge_arrays(values, spec, path)
        for v in values:
            if not isinstance(v, dict):
                raise ReduceError(f"{path or 'state'}: expected a struct, got "
                                  f"{type(v).__name__}")
            extra = set(v) - set(spec)
            if extra:
                raise ReduceError(f"{path or 'state'}: fields {sorted(extra)} are not in "
                                  "the reduce spec")
        out = {}
        for k, sub in spec.items():
            present = [v[k] for v in values if k in v]
            if len(present) == 1:
                out[k] = present[0]
            elif present:
                out[k] = _merge(present, sub, f"{path}.{k}" if path else str(k))
        return out
    if isinstance(spec, str):
        if all(isinstance(v, list) for v in values):
            return _merge_arrays(values, spec, path)
        return _leaf(values, spec, path)
    raise ReduceError(f"{path or 'state'}: bad reduce spec {spec!r}")


def _merge_map(values: list[Any], spec: Any, path: str) -> dict:
    groups: dict[Any, list[Any]] = {}
    for v in values:
        if not isinstance(v, dict):
            raise ReduceError(f"{path or 'state'}: expected a map, got {type(v).__name__}")
        for k, x in v.items():
            groups.setdefault(k, []).append(x)
    return {k: xs[0] if len(xs) == 1 else _merge(xs, spec, f"{path}[{k!r}]")
            for k, xs in groups.items()}


def _merge_arrays(values: list[list[Any]], spec: Any, path: str) -> list:
    n = len(values[0])
    if any(len(v) != n for v in values):
        raise ReduceError(f"{path or 'state'}: arrays of different lengths "
                          f"{sorted({len(v) for v in values})}")
    return [_merge([v[i] for v in values], spec, f"{path}[{i}]")
            for i in range(n)]


@functools.lru_cache(maxsize=256)
def _parse_leaf(spec: str) -> tuple[str, str, int, bool]:
    """(op, kind, bits, signed): kind is int, float, bool, str or bytes."""
    op, _, typ = spec.partition(":")
    if op not in OPS:
        raise ReduceError(f"unknown reduce op {op!r} in {spec!r}")
    if m := _INT_RE.match(typ):
        bits = int(m.group(2))
        if bits == 0:
            raise ReduceError(f"bad type in reduce spec {spec!r}")
        return op, "int", bits, m.group(1) == "i"
    if typ in ("f32", "f64"):
        kind = "float"
    elif typ in ("bool", "str", "bytes"):
        kind = typ
    else:
        raise ReduceError(f"unknown type {typ!r} in reduce spec {spec!r}")
    bitwise_ok = kind in ("int", "bool")
    if (op in ("or", "and") and not bitwise_ok) or (op == "sum" and kind in ("bool", "str",
                                                                             "bytes")):
        raise ReduceError(f"reduce op {op!r} does not apply to {typ} ({spec!r})")
    return op, kind, 0, False


def _leaf(values: list[Any], spec: str, path: str) -> Any:
    op, kind, bits, signed = _parse_leaf(spec)
    want = {"int": int, "float": (int, float), "bool": (bool, int), "str": str,
            "bytes": (bytes, bytearray)}[kind]
    for v in values:
        if not isinstance(v, want) or kind == "int" and isinstance(v, bool):
            raise ReduceError(f"{path or 'value'}: {v!r} is not a {spec.partition(':')[2]}")
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    if kind == "bool":
        return any(values) if op == "or" else all(values)
    if op == "or":
        return functools.reduce(lambda x, y: x | y, values)
    if op == "and":
        return functools.reduce(lambda x, y: x & y, values)
    total = sum(values)
    if kind == "int":
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if not lo <= total <= hi:
            raise ReduceOverflow(f"{path or 'value'}: the sum {total} does not fit "
                                 f"{spec.partition(':')[2]} [{lo}, {hi}]")
    return total
