"""A program's state after a range: raw bytes, decoded through BTF, merged by reduce.

decode() names every global variable (.bss, .data) and every BTF-defined map of a program;
reduce_spec() says how two decoded states combine, from `stord:*` decl tags on variables,
members and types (the most specific wins: member, then variable, then struct type):
    __u64 total;                                           -> "sum:u64" (untagged integer)
    __s64 lo __attribute__((btf_decl_tag("stord:min")));   -> "min:i64"
    struct { ... } tmp __attribute__((btf_decl_tag("stord:scratch")));   -> left out
Arrays merge elementwise, maps as {"*": value spec} (keys unioned). Bools default to "or",
char arrays (decoded as str) to "max", other untagged leaves to "sum".
.rodata (the parameters) is not state: it is neither decoded nor merged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stord.errors import LoadError, ResultOverflow
from stord.program import btf as B
from stord.server.checkout import ensure_client_importable

ensure_client_importable()  # the merge lives in the SDK so that clients share it

from stord_client.reduce import ReduceOverflow, merge_all, merger  # noqa: E402

if TYPE_CHECKING:
    from stord.program.btf import Btf
    from stord.program.model import MapDef, Program

TAG_PREFIX = "stord:"
TAG_OPS = ("sum", "min", "max", "or", "and", "scratch")
_PERCPU = (5, 6)          # BPF_MAP_TYPE_PERCPU_HASH / _ARRAY: values are per CPU


@dataclass
class State:
    """Raw contents of global data sections (by section name) and of BTF-defined maps."""

    globals: dict[str, bytes] = field(default_factory=dict)
    maps: dict[str, dict[bytes, bytes]] = field(default_factory=dict)


# -- the spec ----------------------------------------------------------------------------

def reduce_spec(prog: Program) -> dict[str, Any]:
    """{variable or map name: spec} for everything decode() returns."""
    btf = prog.btf
    if btf is None:
        return {}
    spec: dict[str, Any] = {}
    for m in prog.maps:
        if m.is_global_data:
            if m.readonly:
                continue
            for name, var_id, _off, _size in btf.datasec_vars(m.name):
                op = _tag(btf, var_id, -1, name)
                if op != "scratch":
                    spec[name] = _spec(btf, btf.type(var_id).type, op, name, 0)
        else:
            var_id = btf.find(m.name, B.VAR)
            op = _tag(btf, var_id, -1, m.name) if var_id else None
            if op != "scratch":
                spec[m.name] = {"*": _value_spec(btf, m, op)}
    return spec


def _value_spec(btf: Btf, m: MapDef, op: str | None) -> Any:
    if m.value_type_id:
        return _spec(btf, m.value_type_id, op, m.name, 0)
    return f"{op or 'sum'}:u{m.value_size * 8}" if m.value_size in (1, 2, 4, 8) \
        else f"{op or 'max'}:bytes"


def _tag(btf: Btf, type_id: int, component: int, where: str) -> str | None:
    ops = [t[len(TAG_PREFIX):] for t in btf.decl_tags(type_id, component)
           if t.startswith(TAG_PREFIX)]
    for op in ops:
        if op not in TAG_OPS:
            raise LoadError(f"{where}: unknown tag {TAG_PREFIX}{op} (known: "
                            f"{', '.join(TAG_PREFIX + o for o in TAG_OPS)})")
    if len(set(ops)) > 1:
        raise LoadError(f"{where}: conflicting tags {sorted(set(ops))}")
    return ops[0] if ops else None


def _spec(btf: Btf, tid: int, op: str | None, where: str, depth: int) -> Any:
    if depth > 64:
        raise LoadError(f"{where}: type nests too deeply")
    # Tags on typedefs apply when nothing more specific did.
    t = btf.type(tid)
    while t.kind in (B.TYPEDEF, B.CONST, B.VOLATILE, B.RESTRICT, B.TYPE_TAG):
        if op is None and t.kind == B.TYPEDEF:
            op = _tag(btf, t.id, -1, where)
        t = btf.type(t.type)
    k = t.kind
    if k == B.INT:
        if t.encoding & B.INT_BOOL:
            return _leaf(op or "or", "bool", where)
        return _leaf(op or "sum", f"{'i' if t.signed else 'u'}{t.bits}", where)
    if k in (B.ENUM, B.ENUM64):
        return _leaf(op or "sum", f"{'i' if t.signed else 'u'}{t.size * 8}", where)
    if k == B.PTR:
        return _leaf(op or "max", "u64", where)
    if k == B.FLOAT:
        return _leaf(op or "sum", f"f{t.size * 8}", where)
    if k == B.ARRAY:
        if btf.is_char_array(t.id):
            return _leaf(op or "max", "str", where)
        return _spec(btf, t.type, op, f"{where}[]", depth + 1)
    if k in (B.STRUCT, B.UNION):
        inherited = op if op is not None else _tag(btf, t.id, -1, where)
        out: dict[str, Any] = {}
        for i, mem in enumerate(t.members):
            name = mem.name or f"_{i}"
            sub = f"{where}.{name}"
            mop = _tag(btf, t.id, i, sub) or inherited
            if mop == "scratch":
                continue
            if mem.bitfield_size:
                base = btf.resolve(mem.type)
                out[name] = _leaf(mop or "sum",
                                  f"{'i' if base.signed else 'u'}{mem.bitfield_size}", sub)
            else:
                out[name] = _spec(btf, mem.type, mop, sub, depth + 1)
        return out
    raise LoadError(f"{where}: a {t.kind_name} cannot be part of a program's state")


def _leaf(op: str, typ: str, where: str) -> str:
    bitwise_ok = typ == "bool" or typ[0] in "iu"
    if (op in ("or", "and") and not bitwise_ok) or (op == "sum" and typ in ("str", "bool")):
        raise LoadError(f"{where}: {TAG_PREFIX}{op} does not apply to a {typ}")
    return f"{op}:{typ}"


# -- decoding ----------------------------------------------------------------------------

def decode(prog: Program, state: State, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every global variable and map of `state`, by name, as Python values (shaped like
    reduce_spec(prog); `stord:scratch` variables and members are left out)."""
    btf = prog.btf
    if btf is None:
        return {}
    spec = reduce_spec(prog) if spec is None else spec
    out: dict[str, Any] = {}
    for m in prog.maps:
        if m.is_global_data:
            raw = state.globals.get(m.name)
            if raw is None or m.readonly:
                continue
            if len(raw) < m.value_size:
                raise LoadError(f"state of {m.name!r} is {len(raw)} bytes, expected "
                                f"{m.value_size}")
            for name, var_id, off, size in btf.datasec_vars(m.name):
                if name in spec:
                    value = btf.decode(btf.type(var_id).type, raw[off:off + size])
                    out[name] = _prune(value, spec[name])
        elif m.name in spec and m.name in state.maps:
            vspec = spec[m.name]["*"]
            merge_cpus = merger(vspec)
            prune = True       # until the first entry shows there is nothing to leave out
            entries: dict[Any, Any] = {}
            for k, v in state.maps[m.name].items():
                values = []
                for part in _per_cpu(m, v):
                    value = _decode_value(btf, m, m.value_type_id, m.value_size, part)
                    if prune:
                        pruned = _prune(value, vspec)
                        prune = pruned != value
                        value = pruned
                    values.append(value)
                try:
                    merged = merge_cpus(values)
                except ReduceOverflow as e:
                    raise ResultOverflow(str(e)) from None
                entries[_key(_decode_value(btf, m, m.key_type_id, m.key_size, k))] = merged
            out[m.name] = entries
    return out


def _per_cpu(m: MapDef, v: bytes) -> list[bytes]:
    """A per-CPU value comes as one slot per CPU, each rounded up to 8 bytes (as the kernel
    returns it); other values are one slot."""
    if m.type not in _PERCPU or len(v) <= m.value_size:
        return [v]
    stride = (m.value_size + 7) & ~7
    return [v[i:i + m.value_size] for i in range(0, len(v), stride)]


def _decode_value(btf: Btf, m: MapDef, tid: int, size: int, raw: bytes) -> Any:
    if len(raw) < size:
        raise LoadError(f"map {m.name!r}: an entry of {len(raw)} bytes, expected {size}")
    if tid:
        return btf.decode(tid, raw[:size])
    if size in (1, 2, 4, 8):
        return int.from_bytes(raw[:size], "little")
    return bytes(raw[:size])


def _key(value: Any) -> Any:
    """Map keys must be hashable and should survive msgpack/JSON: a struct of one field (like
    `struct { char key[16]; }`) is that field's value; other structs and arrays become tuples
    (which msgpack sends as arrays: a receiver needs use_list=False to use them as keys)."""
    if isinstance(value, dict):
        if len(value) == 1:
            return _key(next(iter(value.values())))
        return tuple(_key(v) for v in value.values())
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    return value


def _prune(value: Any, spec: Any) -> Any:
    """Drop what the spec leaves out (scratch members)."""
    if isinstance(spec, dict) and set(spec) != {"*"}:
        if isinstance(value, list):
            return [_prune(v, spec) for v in value]
        return {k: _prune(value[k], s) for k, s in spec.items() if k in value}
    return value


# -- merging and initial state -------------------------------------------------------------

def merge_decoded(prog: Program, states: Iterable[dict[str, Any]],
                  spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge decoded states of one program; a sum out of its type is a ResultOverflow."""
    try:
        return merge_all(list(states), reduce_spec(prog) if spec is None else spec)
    except ReduceOverflow as e:
        raise ResultOverflow(str(e)) from None


def empty_state(prog: Program) -> State:
    """The state before any chunk: initial global data, empty hash maps, zeroed arrays."""
    st = State()
    for m in prog.maps:
        if m.is_global_data:
            if not m.readonly:
                st.globals[m.name] = m.initial if m.initial is not None else bytes(m.value_size)
        elif m.type in (2, 6):
            st.maps[m.name] = {i.to_bytes(4, "little"): bytes(m.value_size)
                               for i in range(m.max_entries)}
        else:
            st.maps[m.name] = {}
    return st
