"""State decoding, reduce specs from decl tags, and merging (stord_client.reduce).

Oracles: raw bytes written here with struct.pack at offsets from llvm-nm and C layout rules,
specs written by hand from the C sources in tests/data, Python arithmetic for merges, and
the interp engine running a real program over data that Python also counts.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stord_client.reduce import ReduceError, ReduceOverflow, merge, merge_all

from stord.errors import LoadError, ResultOverflow
from stord.program.elf import load_object
from stord.program.toolchain import compile_c
from stord.query.state import State, decode, empty_state, merge_decoded, reduce_spec

DATA = Path(__file__).parent / "data"
_CACHE: dict[str, object] = {}


def prog(name: str):
    if name not in _CACHE:
        _CACHE[name] = load_object(compile_c(DATA / f"{name}.c"))
    return _CACHE[name]


def nm(name: str) -> dict[str, int]:
    tool = shutil.which("llvm-nm") or shutil.which("llvm-nm-14")
    if tool is None:
        pytest.skip("llvm-nm is not installed")
    r = subprocess.run([tool, "--defined-only", "/dev/stdin"], capture_output=True, check=True,
                       input=compile_c(DATA / f"{name}.c"))
    return {p[2]: int(p[0], 16) for p in (ln.split() for ln in r.stdout.decode().splitlines())
            if len(p) == 3}


# -- the spec ------------------------------------------------------------------------------

ROW_SUM = {"n": "sum:u64", "lo": "min:i32", "hi": "max:i32", "mask": "or:u8", "all": "and:u8",
           "seen": "or:bool", "label": "max:str", "c": "max:u32",
           "b": {"low": "sum:u3", "mid": "sum:i5", "high": "sum:u24"}, "hist": "sum:i16",
           "peak": "max:u32"}


def test_spec_from_tags() -> None:
    """Written by reading tags.c: member tags win, then the variable's, then the type's;
    typedef tags apply; scratch variables, members and maps disappear."""
    spec = reduce_spec(prog("tags"))
    r2 = {"n": "max:u64", "lo": "min:i32", "hi": "max:i32", "mask": "or:u8", "all": "and:u8",
          "seen": "max:bool", "label": "max:str", "c": "max:u32",
          "b": {"low": "max:u3", "mid": "max:i5", "high": "max:u24"}, "hist": "max:i16",
          "peak": "max:u32"}
    assert spec == {
        "r1": ROW_SUM, "r2": r2, "total": "sum:i64",
        "grid": {"a": "sum:u32", "b": "sum:u32"}, "pm": {"a": "min:u32", "b": "min:u32"},
        "skipped": "sum:u64", "overflow": "sum:u64",
        "bykey": {"*": {"a": "sum:u32", "b": "sum:u32"}}, "mins": {"*": "min:i64"},
    }


def test_unknown_tag_is_refused() -> None:
    with pytest.raises(LoadError, match="unknown tag stord:avg"):
        reduce_spec(prog("badtag"))


def test_tag_that_does_not_apply() -> None:
    src = ("#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
           "char name[8] __attribute__((btf_decl_tag(\"stord:sum\")));\n"
           "SEC(\"xdp\") int p(struct xdp_md *c) { name[1]++; return 2; }\n")
    with pytest.raises(LoadError, match="stord:sum does not apply to a str"):
        reduce_spec(load_object(compile_c(src)))


# -- decoding ------------------------------------------------------------------------------

def _row(n: int, lo: int, hi: int, mask: int, all_: int, seen: bool, label: bytes, tmp: int,
         c: int, bits: tuple[int, int, int], hist: list[int], peak: int) -> bytes:
    """struct row by C layout rules: u64 @0, s32 @8, s32 @12, u8 @16, u8 @17, bool @18,
    char[6] @19, u64 tmp @32 (aligned), enum @40, bitfields u32 @44, s16[4] @48, u32 @56,
    size 64."""
    low, mid, high = bits
    word = low | ((mid & 0x1F) << 3) | (high << 8)
    return struct.pack("<QiiBB?6s7xQII4hI4x", n, lo, hi, mask, all_, seen, label, tmp, c,
                       word, *hist, peak)


def test_decode_globals_and_maps_from_raw_bytes() -> None:
    p = prog("tags")
    off = nm("tags")
    bss = next(m for m in p.maps if m.name == ".bss")
    raw = bytearray(bss.value_size)
    r1 = _row(7, -3, 9, 0x81, 0x0F, True, b"ab", 99, 5, (5, -3, 1000), [1, -2, 3, -4], 77)
    raw[off["r1"]:off["r1"] + 64] = r1
    raw[off["scratchpad"]:off["scratchpad"] + 32] = struct.pack("<4Q", 1, 2, 3, 4)
    raw[off["grid"]:off["grid"] + 48] = struct.pack("<12I", *range(12))
    raw[off["skipped"]:off["skipped"] + 8] = struct.pack("<Q", 3)
    state = State(globals={".bss": bytes(raw),
                           ".data": struct.pack("<q", -12)},   # total (= 1 initially)
                  maps={"bykey": {struct.pack("<I4s", 4, b"abc"): struct.pack("<II", 1, 2)},
                        "mins": {struct.pack("<Q", 9): struct.pack("<q", -5)},
                        "work": {struct.pack("<I", 0): struct.pack("<Q", 42)}})
    d = decode(p, state)
    assert d["r1"] == {"n": 7, "lo": -3, "hi": 9, "mask": 0x81, "all": 0x0F, "seen": True,
                       "label": "ab", "c": 5, "b": {"low": 5, "mid": -3, "high": 1000},
                       "hist": [1, -2, 3, -4], "peak": 77}      # tmp (scratch) left out
    assert "scratchpad" not in d and "work" not in d
    assert d["grid"] == [[{"a": 0, "b": 1}, {"a": 2, "b": 3}, {"a": 4, "b": 5}],
                         [{"a": 6, "b": 7}, {"a": 8, "b": 9}, {"a": 10, "b": 11}]]
    assert d["total"] == -12 and d["skipped"] == 3
    assert d["bykey"] == {(4, "abc"): {"a": 1, "b": 2}}        # struct keys become tuples
    assert d["mins"] == {9: -5}
    assert set(d) == set(reduce_spec(p))


def test_empty_state_decodes_to_initial_values() -> None:
    p = prog("counter")
    d = decode(p, empty_state(p))
    assert d == {"st": {"bytes": 0, "lines": 0, "lo": 255, "hi": 0, "seen_bits": 0,
                        "last_offset": 0}, "skipped": 0, "freq": {}}


def test_percpu_values_are_merged() -> None:
    p = prog("maps_globals")
    per_cpu = struct.pack("<QQQ", 5, 7, 11)          # three CPUs
    d = decode(p, State(maps={"percpu": {struct.pack("<I", 1): per_cpu}}))
    assert d["percpu"] == {1: 23}


def test_short_state_is_an_error() -> None:
    p = prog("counter")
    with pytest.raises(LoadError, match="expected"):
        decode(p, State(globals={".data": b"\0" * 3}))


# -- merging -------------------------------------------------------------------------------

def test_merge_ops() -> None:
    spec = {"s": "sum:u8", "lo": "min:i32", "hi": "max:i32", "o": "or:u8", "a": "and:u8",
            "b": "or:bool", "t": "max:str", "arr": "sum:u16",
            "m": {"*": {"n": "sum:u64", "lo": "min:i8"}}}
    a = {"s": 100, "lo": -5, "hi": 3, "o": 0x01, "a": 0x0F, "b": False, "t": "abc",
         "arr": [1, 2, 3], "m": {1: {"n": 1, "lo": 4}, "x": {"n": 2, "lo": -1}}}
    b = {"s": 155, "lo": 2, "hi": 30, "o": 0x80, "a": 0x3C, "b": True, "t": "abd",
         "arr": [10, 20, 30], "m": {1: {"n": 5, "lo": -9}, "y": {"n": 7, "lo": 0}}}
    assert merge(a, b, spec) == {
        "s": 255, "lo": -5, "hi": 30, "o": 0x81, "a": 0x0C, "b": True, "t": "abd",
        "arr": [11, 22, 33],
        "m": {1: {"n": 6, "lo": -9}, "x": {"n": 2, "lo": -1}, "y": {"n": 7, "lo": 0}}}


def test_merge_overflow_and_errors() -> None:
    with pytest.raises(ReduceOverflow) as e:
        merge({"s": 200}, {"s": 56}, {"s": "sum:u8"})
    assert e.value.code == "overflow" and "s" in str(e.value)
    with pytest.raises(ReduceOverflow):
        merge({"m": {1: -2**63}}, {"m": {1: -1}}, {"m": {"*": "sum:i64"}})
    with pytest.raises(ReduceOverflow):
        merge([2**31 - 1, 0], [1, 0], "sum:i32")
    assert merge({"s": 200}, {"s": 55}, {"s": "sum:u8"}) == {"s": 255}
    with pytest.raises(ReduceError):
        merge({"s": [1, 2]}, {"s": [1]}, {"s": "sum:u8"})
    with pytest.raises(ReduceError):
        merge({"s": 1, "extra": 2}, {"s": 1}, {"s": "sum:u8"})
    with pytest.raises(ReduceError):
        merge({"s": "a"}, {"s": "b"}, {"s": "sum:str"})
    with pytest.raises(ReduceError):
        merge({"s": 1}, {"s": 2}, {"s": "avg:u8"})
    with pytest.raises(ResultOverflow):
        merge_decoded(prog("counter"), [{"skipped": 2**64 - 1}, {"skipped": 1}])


def test_merge_all_checks_the_total_not_the_order() -> None:
    spec = {"v": "sum:i8"}
    states = [{"v": 100}, {"v": 100}, {"v": -100}]
    assert merge_all(states, spec) == {"v": 100}       # 100 + 100 alone would overflow
    assert merge_all([], spec) == {}
    assert merge_all([{"v": 3}], spec) == {"v": 3}


# Random decoded states shaped like counter.c's, so that every op and a map appear.
_U64 = st.integers(0, 2**64 - 1)


def _counter_state(bound: int = 2**62) -> st.SearchStrategy[dict]:
    small = st.integers(0, bound)
    return st.fixed_dictionaries({
        "st": st.fixed_dictionaries({
            "bytes": small, "lines": small, "lo": st.integers(0, 255),
            "hi": st.integers(0, 255), "seen_bits": st.integers(0, 255),
            "last_offset": _U64}),
        "skipped": small,
        "freq": st.dictionaries(st.integers(0, 255), small, max_size=6)})


def _oracle(states: list[dict]) -> dict:
    freq: Counter[int] = Counter()
    for s in states:
        freq.update(s["freq"])
    return {"st": {"bytes": sum(s["st"]["bytes"] for s in states),
                   "lines": sum(s["st"]["lines"] for s in states),
                   "lo": min(s["st"]["lo"] for s in states),
                   "hi": max(s["st"]["hi"] for s in states),
                   "seen_bits": _or(s["st"]["seen_bits"] for s in states),
                   "last_offset": max(s["st"]["last_offset"] for s in states)},
            "skipped": sum(s["skipped"] for s in states),
            "freq": {k: v for k, v in freq.items()}}


def _or(values) -> int:
    out = 0
    for v in values:
        out |= v
    return out


@settings(max_examples=150, deadline=None)
@given(a=_counter_state(), b=_counter_state(), c=_counter_state())
def test_merge_is_commutative_associative_and_right(a: dict, b: dict, c: dict) -> None:
    spec = reduce_spec(prog("counter"))
    ab = merge(a, b, spec)
    assert ab == merge(b, a, spec)
    assert merge(ab, c, spec) == merge(a, merge(b, c, spec), spec) == merge_all([c, a, b], spec)
    assert merge(ab, c, spec) == _oracle([a, b, c])


@settings(max_examples=150, deadline=None)
@given(states=st.lists(_counter_state(bound=2**64 - 1), min_size=1, max_size=4))
def test_overflow_detected_exactly_when_a_total_leaves_u64(states: list[dict]) -> None:
    spec = reduce_spec(prog("counter"))
    truth = _oracle(states)
    fits = all(v < 2**64 for v in (truth["st"]["bytes"], truth["st"]["lines"],
                                   truth["skipped"], *truth["freq"].values()))
    if fits:
        assert merge_all(states, spec) == truth
    else:
        with pytest.raises(ReduceOverflow):
            merge_all(states, spec)


# -- through a real engine ---------------------------------------------------------------------

def _interp():
    from stord.engines.base import get_engine
    return get_engine("interp")


@settings(max_examples=15, deadline=None)
@given(data=st.binary(min_size=0, max_size=600), cut=st.integers(0, 600))
def test_split_run_merges_to_the_whole(data: bytes, cut: int) -> None:
    """Two instances over two halves, decoded and merged, equal one instance over the whole
    and Python's own count."""
    p = prog("counter")
    cut = min(cut, len(data))
    parts = []
    for chunk, offset in ((data[:cut], 0), (data[cut:], cut)):
        with _interp().load(p) as inst:
            inst.run_chunk(chunk, offset, True)
            parts.append(decode(p, inst.read_state()))
    with _interp().load(p) as inst:
        inst.run_chunk(data[:cut], 0, False)
        inst.run_chunk(data[cut:], cut, True)
        whole = decode(p, inst.read_state())
    merged = merge_decoded(p, parts)
    assert merged == whole
    assert whole["st"]["bytes"] == len(data)
    assert whole["st"]["lines"] == data.count(b"\n")
    assert whole["st"]["lo"] == min(data, default=255)
    assert whole["st"]["hi"] == max(data, default=0)
    assert whole["st"]["seen_bits"] == _or(1 << (c & 7) for c in data)
    assert whole["st"]["last_offset"] == cut          # max of the chunks' file offsets
    assert whole["freq"] == dict(Counter(data))


@pytest.mark.parametrize("engine", ["jit", "kernel"])
@pytest.mark.parametrize("name", ["counter", "maps_globals"])
def test_every_engine_decodes_the_same_state(engine: str, name: str) -> None:
    """The same program and chunks on another engine decode to interp's values (the state
    layouts of all engines go through the same BTF)."""
    import random

    from stord.engines.base import get_engine
    from stord.errors import EngineUnavailable

    try:
        other = get_engine(engine)
    except EngineUnavailable as e:
        pytest.skip(str(e))
    p = prog(name)
    rnd = random.Random(7)
    chunks = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 900))) for _ in range(3)]
    results = []
    for eng in (_interp(), other):
        with eng.load(p) as inst:
            off = 0
            for i, c in enumerate(chunks):
                inst.run_chunk(c, off, i == len(chunks) - 1)
                off += len(c)
            results.append(decode(p, inst.read_state()))
    assert results[0] == results[1]
    if name == "counter":
        assert results[0]["st"]["bytes"] == sum(map(len, chunks))


def test_single_field_struct_keys_are_scalars() -> None:
    """groupby-style `struct { char key[N]; }` keys decode to plain strings (msgpack and
    JSON can carry those as map keys)."""
    src = ("#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
           "struct k { char key[8]; };\n"
           "struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, struct k);"
           " __type(value, __u64); __uint(max_entries, 4); } g SEC(\".maps\");\n"
           "SEC(\"xdp\") int p(struct xdp_md *c) { struct k k = {}; __u64 one = 1;"
           " bpf_map_update_elem(&g, &k, &one, 0); return 2; }\n")
    p = load_object(compile_c(src))
    d = decode(p, State(maps={"g": {b"abc".ljust(8, b"\0"): struct.pack("<Q", 3)}}))
    assert d == {"g": {"abc": 3}}
