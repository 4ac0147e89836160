"""BTF parsing against bpftool's JSON dump, value decoding against ctypes' C layout, the
fixed-up BTF against the kernel (BPF_BTF_LOAD), and malformed input."""

from __future__ import annotations

import ctypes
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from stord.errors import LoadError
from stord.program import btf as B
from stord.program.btf import Btf
from stord.program.elf import load_object
from stord.program.toolchain import compile_c

DATA = Path(__file__).parent / "data"
OBJECTS = ["maps_globals", "calls", "tags", "kinds"]


def obj(name: str) -> bytes:
    return compile_c(DATA / f"{name}.c")


def raw_btf(data: bytes) -> bytes:
    return ELFFile(io.BytesIO(data)).get_section_by_name(".BTF").data()


def bpftool_types(data: bytes, tmp_path: Path) -> list[dict]:
    tool = shutil.which("bpftool")
    if tool is None:
        pytest.skip("bpftool is not installed")
    f = tmp_path / "x.o"
    f.write_bytes(data)
    r = subprocess.run([tool, "-j", "btf", "dump", "file", str(f)], capture_output=True,
                       check=True)
    return json.loads(r.stdout)["types"]


@pytest.mark.parametrize("name", OBJECTS)
def test_every_type_matches_bpftool(name: str, tmp_path: Path) -> None:
    data = obj(name)
    btf = Btf.parse(raw_btf(data))
    theirs = bpftool_types(data, tmp_path)
    assert len(btf.types) == len(theirs) + 1
    for t in theirs:
        ours = btf.type(t["id"])
        assert ours.kind_name == t["kind"], t
        assert (ours.name or "(anon)") == t["name"], t
        k = ours.kind
        if k in (B.INT, B.STRUCT, B.UNION, B.ENUM, B.ENUM64, B.FLOAT):
            assert ours.size == t["size"], t
        if k == B.INT:
            assert (ours.bits, ours.bit_offset) == (t["nr_bits"], t["bits_offset"])
            enc = {"SIGNED": B.INT_SIGNED, "CHAR": B.INT_CHAR, "BOOL": B.INT_BOOL,
                   "(none)": 0}[t["encoding"]]
            assert ours.encoding == enc
        if k in (B.PTR, B.TYPEDEF, B.VOLATILE, B.CONST, B.RESTRICT, B.FUNC, B.VAR,
                 B.DECL_TAG, B.TYPE_TAG, B.ARRAY):
            assert ours.type == t["type_id"], t
        if k == B.ARRAY:
            assert (ours.index_type, ours.nelems) == (t["index_type_id"], t["nr_elems"])
        if k in (B.STRUCT, B.UNION):
            assert [(m.name or "(anon)", m.type, m.bit_offset, m.bitfield_size)
                    for m in ours.members] == \
                [(m["name"], m["type_id"], m["bits_offset"], m.get("bitfield_size", 0))
                 for m in t["members"]]
        if k in (B.ENUM, B.ENUM64):
            # bpftool's JSON sign-extends 32-bit values to u64; compare within the width.
            mask = (1 << (ours.size * 8)) - 1
            assert [(n, v & mask) for n, v in ours.values] == \
                [(v["name"], v["val"] & mask) for v in t["values"]]
        if k == B.FUNC_PROTO:
            assert ours.type == t["ret_type_id"]
            assert [(m.name or "(anon)", m.type) for m in ours.members] == \
                [(p["name"], p["type_id"]) for p in t["params"]]
        if k == B.DATASEC:
            assert ours.vars == [(v["type_id"], v["offset"], v["size"]) for v in t["vars"]]
        if k == B.DECL_TAG:
            assert ours.component_idx == t["component_idx"]
        if k in (B.VAR, B.FUNC):
            assert {0: "static", 1: "global", 2: "extern"}[ours.linkage] == t["linkage"]


def test_queries_on_a_real_object() -> None:
    btf = load_object(obj("kinds")).btf
    nest = btf.find("nest", B.STRUCT)
    assert nest and btf.type(nest).kind == B.STRUCT
    assert btf.find("nest", B.UNION) == 0 and btf.find("no_such_type") == 0
    fl = btf.find("fl", B.STRUCT)
    ptr_member = btf.type(fl).members[2]
    # int __tag("user") *p: the pointer's target is a TYPE_TAG that resolve() looks through.
    target = btf.type(btf.type(ptr_member.type).type)
    assert target.kind == B.TYPE_TAG and target.name == "user"
    assert btf.resolve(target.id).name == "int"
    assert btf.type(btf.find("float", B.FLOAT)).size == 4
    with pytest.raises(LoadError):
        btf.type(10_000)


def test_decl_tags() -> None:
    btf = load_object(obj("tags")).btf
    row = btf.find("row", B.STRUCT)
    members = [m.name for m in btf.type(row).members]
    assert btf.decl_tags(row, members.index("lo")) == ["stord:min"]
    assert btf.decl_tags(row, members.index("tmp")) == ["stord:scratch"]
    assert btf.decl_tags(row, members.index("n")) == []
    assert btf.decl_tags(btf.find("r2", B.VAR)) == ["stord:max"]
    assert btf.decl_tags(btf.find("maxed_t", B.TYPEDEF)) == ["stord:max"]
    assert btf.decl_tags(btf.find("pair_m", B.STRUCT)) == ["stord:min"]


@pytest.mark.parametrize("name", OBJECTS)
def test_kernel_accepts_fixed_up_btf(name: str) -> None:
    """clang leaves DATASEC sizes/offsets 0 (the kernel refuses that); after the loader's
    fix-up the kernel's BTF checker accepts the BTF."""
    if os.geteuid() != 0:
        pytest.skip("BPF_BTF_LOAD needs root (CAP_BPF)")
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_btf_load.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
    data = obj(name)
    raw = raw_btf(data)
    assert lib.bpf_btf_load(raw, len(raw), None) < 0
    fixed = load_object(data).btf.to_bytes()
    fd = lib.bpf_btf_load(fixed, len(fixed), None)
    assert fd >= 0, f"kernel refused the fixed-up BTF: errno {ctypes.get_errno()}"
    os.close(fd)
    again = Btf.parse(fixed)
    for t in again.types:
        if t.kind == B.DATASEC:
            offs = [o for _v, o, _s in t.vars]
            assert offs == sorted(offs) and t.size > 0


# -- decoding, with the host C compiler's layout as the oracle --------------------------------

_BITS = ("low", "mid", "high", "sc", "wide", "flag")


@pytest.fixture(scope="module")
def packer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kinds_pack.c built for the host: it lays out struct nest as a C compiler does."""
    cc = shutil.which("clang") or shutil.which("clang-14") or shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler")
    exe = tmp_path_factory.mktemp("pack") / "kinds_pack"
    subprocess.run([cc, "-O1", "-o", str(exe), str(DATA / "kinds_pack.c")], check=True)
    return exe


def _bits_strategy() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "low": st.integers(0, 7), "mid": st.integers(-16, 15), "high": st.integers(0, 2**24 - 1),
        "sc": st.integers(-8, 7), "wide": st.integers(0, 2**40 - 1), "flag": st.booleans()})


@settings(max_examples=40, deadline=None)
@given(bits=st.lists(_bits_strategy(), min_size=2, max_size=2),
       s=st.sampled_from([3, 0xFFFFFFFE]), g=st.integers(0, 2**32 - 1),
       name=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=5),
       raw=st.lists(st.integers(-128, 127), min_size=3, max_size=3),
       un=st.integers(0, 2**32 - 1))
def test_decode_matches_c_layout(packer: Path, bits: list[dict], s: int, g: int, name: str,
                                 raw: list[int], un: int) -> None:
    args = [str(int(b[k])) for b in bits for k in _BITS] + [str(s), str(g), name or ""] + \
        [str(v) for v in raw] + [str(un)]
    data = subprocess.run([str(packer), *args], capture_output=True, check=True).stdout
    btf = _kinds_btf()
    nest = btf.find("nest", B.STRUCT)
    assert len(data) == btf.size(nest)
    value = btf.decode(nest, data)
    assert value["b"] == bits
    assert value["s"] == s and value["g"] == g           # clang 14: enums are unsigned in BTF
    assert value["name"] == name
    assert value["raw"] == raw                            # __s8 arrays stay numbers
    assert value["un"] == {"a": un, "b": list(un.to_bytes(4, "little"))}


def test_decode_floats_and_pointers() -> None:
    btf = _kinds_btf()
    data = struct.pack("<f4xdQ", 1.5, -2.25, 0xDEADBEEF)
    assert btf.decode(btf.find("fl", B.STRUCT), data) == {"f": 1.5, "d": -2.25, "p": 0xDEADBEEF}
    with pytest.raises(LoadError, match="needs 24 bytes"):
        btf.decode(btf.find("fl", B.STRUCT), data[:10])


_KINDS: list[Btf] = []


def _kinds_btf() -> Btf:
    if not _KINDS:
        _KINDS.append(load_object(obj("kinds")).btf)
    return _KINDS[0]


# -- hand-built BTF: kinds clang 14 does not emit, and malformed input -----------------------

class Builder:
    """A minimal BTF encoder written from linux/Documentation/bpf/btf.rst."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, kind: int, name: str = "", vlen: int = 0, kflag: int = 0,
            size_or_type: int = 0, extra: bytes = b"") -> None:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + extra

    def bytes(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types),
                          len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


def test_enum64_signed_enum_and_struct() -> None:
    b = Builder()
    b.add(B.INT, "long", size_or_type=8, extra=struct.pack("<I", (B.INT_SIGNED << 24) | 64))  # 1
    b.add(B.ENUM64, "e64", vlen=2, kflag=1, size_or_type=8,
          extra=struct.pack("<III", b.s("NEG"), 0xFFFFFFFF, 0xFFFFFFFF) +
          struct.pack("<III", b.s("BIG"), 0, 0x40000000))                                    # 2
    b.add(B.ENUM, "e32", vlen=1, kflag=1, size_or_type=4,
          extra=struct.pack("<Ii", b.s("M"), -5))                                              # 3
    b.add(B.STRUCT, "s", vlen=3, size_or_type=24,
          extra=struct.pack("<III", b.s("x"), 2, 0) + struct.pack("<III", b.s("y"), 3, 64) +
          struct.pack("<III", b.s("z"), 1, 128))                                               # 4
    b.add(B.DECL_TAG, "stord:max", size_or_type=4, extra=struct.pack("<i", 1))                # 5
    btf = Btf.parse(b.bytes())
    assert btf.type(2).values == [("NEG", -1), ("BIG", 1 << 62)]
    assert btf.type(3).values == [("M", -5)]
    data = struct.pack("<qi4xq", -7, -5, 123)
    assert btf.decode(4, data) == {"x": -7, "y": -5, "z": 123}
    assert btf.decl_tags(4, 1) == ["stord:max"]
    assert pickle.loads(pickle.dumps(btf)).decode(4, data) == btf.decode(4, data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:10], "truncated"),
    (lambda d: b"\xeb\x9f" + d[2:], "bad magic"),
    (lambda d: d[:2] + b"\x02" + d[3:], "version 2"),
    (lambda d: d[:-3], "outside"),
])
def test_malformed_headers(mutate, message: str) -> None:
    b = Builder()
    b.add(B.INT, "int", size_or_type=4, extra=struct.pack("<I", (1 << 24) | 32))
    with pytest.raises(LoadError, match=message):
        Btf.parse(mutate(b.bytes()))


def test_malformed_types() -> None:
    b = Builder()
    b.add(B.PTR, size_or_type=7)                       # to a type that does not exist
    with pytest.raises(LoadError, match="only 2 types"):
        Btf.parse(b.bytes())
    b = Builder()
    b.add(B.TYPEDEF, "a", size_or_type=2)
    b.add(B.TYPEDEF, "b", size_or_type=1)              # a cycle
    btf = Btf.parse(b.bytes())
    with pytest.raises(LoadError, match="cycle"):
        btf.resolve(1)
    b = Builder()
    b.add(B.INT, "int", size_or_type=4, extra=struct.pack("<I", 0))   # 0 bits
    with pytest.raises(LoadError, match="invalid bits"):
        Btf.parse(b.bytes())
    b = Builder()
    b.add(25, "what")
    with pytest.raises(LoadError, match="unknown kind 25"):
        Btf.parse(b.bytes())
    b = Builder()
    b.add(B.STRUCT, "s", vlen=1, size_or_type=4, extra=b"\0" * 6)    # member cut short
    with pytest.raises(LoadError, match="truncated"):
        Btf.parse(b.bytes())
    b = Builder()
    b.add(B.STRUCT, "s", vlen=1, size_or_type=4, extra=struct.pack("<III", 0, 0, 0))
    b.add(B.DECL_TAG, "t", size_or_type=1, extra=struct.pack("<i", 3))
    with pytest.raises(LoadError, match="component index 3"):
        Btf.parse(b.bytes())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzzed_btf_is_btf_or_load_error(d: st.DataObject) -> None:
    raw = bytearray(raw_btf(_fuzz_obj()))
    for _ in range(d.draw(st.integers(1, 6))):
        raw[d.draw(st.integers(0, len(raw) - 1))] = d.draw(st.integers(0, 255))
    try:
        btf = Btf.parse(bytes(raw))
    except LoadError:
        return
    for t in btf.types:  # every query on what parsed must also be clean
        try:
            btf.size(t.id)
            btf.decode(t.id, bytes(min(btf.size(t.id), 1 << 16)))
        except LoadError:
            pass


_FUZZ: list[bytes] = []


def _fuzz_obj() -> bytes:
    if not _FUZZ:
        _FUZZ.append(obj("tags"))
    return _FUZZ[0]
