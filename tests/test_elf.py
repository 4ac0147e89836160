"""The ELF loader against libbpf (the reference loader, through ctypes) and llvm-nm.

libbpf opens the same objects without privileges (maps, programs, initial data); loading
them into the kernel (root here) gives its final, linked and relocated instructions, which
must equal ours up to map file descriptors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stord.errors import LoadError
from stord.program import isa
from stord.program.elf import load_object
from stord.program.model import MAP_ARRAY, MAP_HASH, MAP_PERCPU_ARRAY
from stord.program.toolchain import compile_c

DATA = Path(__file__).parent / "data"


def obj(name: str) -> bytes:
    return compile_c(DATA / f"{name}.c")


# -- libbpf through ctypes -------------------------------------------------------------------

class Libbpf:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1",
                               use_errno=True)
        P, S, I = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int  # noqa: E741, N806
        U32, SZ = ctypes.c_uint32, ctypes.c_size_t  # noqa: N806
        for name, res, args in [
            ("bpf_object__open_mem", P, [ctypes.c_char_p, SZ, P]),
            ("bpf_object__close", None, [P]),
            ("bpf_object__load", I, [P]),
            ("bpf_object__next_map", P, [P, P]),
            ("bpf_object__next_program", P, [P, P]),
            ("bpf_map__name", S, [P]), ("bpf_map__type", I, [P]),
            ("bpf_map__key_size", U32, [P]), ("bpf_map__value_size", U32, [P]),
            ("bpf_map__max_entries", U32, [P]), ("bpf_map__map_flags", U32, [P]),
            ("bpf_map__initial_value", P, [P, ctypes.POINTER(SZ)]),
            ("bpf_map__fd", I, [P]),
            ("bpf_program__name", S, [P]), ("bpf_program__section_name", S, [P]),
            ("bpf_program__insn_cnt", SZ, [P]), ("bpf_program__insns", P, [P]),
            ("libbpf_set_print", P, [P]),
        ]:
            f = getattr(self.lib, name)
            f.restype, f.argtypes = res, args
        self.lib.libbpf_set_print(None)  # its warnings are not test output

    def open(self, data: bytes) -> int:
        self._keep = data
        o = self.lib.bpf_object__open_mem(data, len(data), None)
        assert o, f"libbpf could not open the object: errno {ctypes.get_errno()}"
        return o

    def maps(self, o: int) -> list[dict]:
        out, m = [], None
        while m := self.lib.bpf_object__next_map(o, m):
            size = ctypes.c_size_t()
            ptr = self.lib.bpf_map__initial_value(m, ctypes.byref(size))
            out.append({
                "name": self.lib.bpf_map__name(m).decode(), "type": self.lib.bpf_map__type(m),
                "key_size": self.lib.bpf_map__key_size(m),
                "value_size": self.lib.bpf_map__value_size(m),
                "max_entries": self.lib.bpf_map__max_entries(m),
                "flags": self.lib.bpf_map__map_flags(m),
                "initial": ctypes.string_at(ptr, size.value) if ptr else None,
                "fd": self.lib.bpf_map__fd(m), "handle": m,
            })
        return out

    def programs(self, o: int) -> list[dict]:
        out, p = [], None
        while p := self.lib.bpf_object__next_program(o, p):
            n = self.lib.bpf_program__insn_cnt(p)
            out.append({"name": self.lib.bpf_program__name(p).decode(),
                        "section": self.lib.bpf_program__section_name(p).decode(),
                        "insns": isa.decode(ctypes.string_at(
                            self.lib.bpf_program__insns(p), n * 8))})
        return out


@pytest.fixture(scope="module")
def libbpf() -> Libbpf:
    return Libbpf()


def _our_map_name(libbpf_name: str, ours: list[str]) -> str:
    """libbpf prefixes global data maps with (part of) the object name: 'abcd1234.bss'."""
    if libbpf_name in ours:
        return libbpf_name
    matches = [n for n in ours if n.startswith(".") and
               (libbpf_name.endswith(n) or n.startswith(libbpf_name[libbpf_name.index("."):]))]
    assert len(matches) == 1, (libbpf_name, ours)
    return matches[0]


# -- maps, sections, data ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["maps_globals", "calls", "tags"])
def test_maps_match_libbpf(libbpf: Libbpf, name: str) -> None:
    data = obj(name)
    prog = load_object(data)
    o = libbpf.open(data)
    try:
        theirs = libbpf.maps(o)
    finally:
        libbpf.lib.bpf_object__close(o)
    ours = {m.name: m for m in prog.maps}
    assert len(theirs) == len(ours)
    for t in theirs:
        m = ours[_our_map_name(t["name"], list(ours))]
        assert (m.type, m.key_size, m.value_size, m.max_entries) == \
            (t["type"], t["key_size"], t["value_size"], t["max_entries"])
        if m.is_global_data:
            assert m.initial == t["initial"]
            assert m.readonly == m.name.startswith(".rodata")
        else:
            assert m.flags == t["flags"]


def test_maps_globals_details() -> None:
    prog = load_object(obj("maps_globals"))
    by = {m.name: m for m in prog.maps}
    assert by["groups"].type == MAP_HASH and by["groups"].max_entries == 64
    assert by["table"].type == MAP_ARRAY and by["table"].flags == 1 << 7  # BPF_F_RDONLY_PROG
    assert by["percpu"].type == MAP_PERCPU_ARRAY
    assert by[".bss"].initial == bytes(by[".bss"].value_size)
    assert struct.unpack("<I", by[".data"].initial) == (5,)
    assert prog.license == "Dual BSD/GPL"
    assert prog.btf is not None
    assert prog.btf.type(by["groups"].value_type_id).name == "agg"


@pytest.mark.parametrize("name", ["maps_globals", "calls", "tags"])
def test_programs_and_sections_match_libbpf(libbpf: Libbpf, name: str) -> None:
    data = obj(name)
    o = libbpf.open(data)
    try:
        progs = libbpf.programs(o)
    finally:
        libbpf.lib.bpf_object__close(o)
    first = load_object(data)
    assert (first.name, first.section) == (progs[0]["name"], progs[0]["section"])
    for p in progs:
        ours = load_object(data, p["name"])
        assert ours.section == p["section"]
        # Before linking, libbpf's program is the function's own code: ours starts with it.
        n = len(p["insns"])
        assert [i.op for i in ours.insns[:n]] == [i.op for i in p["insns"]]


def test_section_selection() -> None:
    data = obj("calls")
    assert load_object(data, "tc").name == "third"
    assert load_object(data, "xdp").name == "first"
    with pytest.raises(LoadError, match="no program section or function 'kprobe'"):
        load_object(data, "kprobe")


def _kernel_insns(libbpf: Libbpf, data: bytes) -> tuple[dict[str, list], dict[int, str]]:
    if os.geteuid() != 0:
        pytest.skip("loading into the kernel needs root (CAP_BPF)")
    o = libbpf.open(data)
    try:
        err = libbpf.lib.bpf_object__load(o)
        if err:
            pytest.skip(f"the kernel refused the object (error {err}); cannot compare")
        fds = {m["fd"]: m["name"] for m in libbpf.maps(o)}
        return {p["name"]: p["insns"] for p in libbpf.programs(o)}, fds
    finally:
        libbpf.lib.bpf_object__close(o)


@pytest.mark.parametrize("name", ["maps_globals", "calls", "tags"])
def test_linked_insns_equal_libbpf_after_kernel_load(libbpf: Libbpf, name: str) -> None:
    data = obj(name)
    theirs, fds = _kernel_insns(libbpf, data)
    for pname, insns in theirs.items():
        prog = load_object(data, pname)
        names = [m.name for m in prog.maps]
        assert len(prog.insns) == len(insns), pname
        for i, (a, b) in enumerate(zip(prog.insns, insns, strict=True)):
            if b.op == isa.LDDW and b.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
                assert a.src == b.src, (pname, i)
                assert names[a.imm] == _our_map_name(fds[b.imm], names), (pname, i)
            else:
                assert a == b, (pname, i, a, b)


def test_call_and_callback_targets() -> None:
    """Every local call / function address lands on the first slot of a linked function,
    which is a function llvm-objdump shows for the object."""
    data = obj("calls")
    prog = load_object(data, "first")
    targets = set()
    for i, insn in enumerate(prog.insns):
        if insn.op == isa.CALL_OP and insn.src == isa.PSEUDO_CALL or \
                insn.op == isa.LDDW and insn.src == isa.PSEUDO_FUNC:
            t = i + insn.imm + 1
            assert 0 < t < len(prog.insns)
            targets.add(t)
    # first -> middle -> leaf, global_helper; callback cb -> leaf: four subprograms.
    assert len(targets) == 4
    callbacks = [i for i, x in enumerate(prog.insns) if x.op == isa.LDDW and
                 x.src == isa.PSEUDO_FUNC]
    assert len(callbacks) == 1
    # Static data through section symbols: counter (.bss +0) and other (.data +0).
    values = {(prog.maps[x.imm].name, prog.insns[i + 1].imm) for i, x in enumerate(prog.insns)
              if x.op == isa.LDDW and x.src == isa.PSEUDO_MAP_VALUE}
    nm = _nm(data)
    assert (".bss", nm["counter"]) in values and (".data", nm["other"]) in values


def _nm(data: bytes) -> dict[str, int]:
    tool = shutil.which("llvm-nm") or shutil.which("llvm-nm-14")
    if tool is None:
        pytest.skip("llvm-nm is not installed")
    r = subprocess.run([tool, "--defined-only", "/dev/stdin"], input=data,
                       capture_output=True, check=True)
    out = {}
    for line in r.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[2]] = int(parts[0], 16)
    return out


def test_params_offsets_and_values() -> None:
    data = obj("maps_globals")
    prog = load_object(data)
    nm = _nm(data)
    assert set(prog.params) == {"threshold", "delta", "pattern", "table8"}
    for p in prog.params.values():
        assert p.offset == nm[p.name]
        assert prog.maps[p.map_index].name == ".rodata"
    assert prog.params["delta"].signed and prog.params["delta"].size == 4
    assert not prog.params["threshold"].signed and prog.params["threshold"].size == 8
    assert prog.params["pattern"].is_char_array and prog.params["pattern"].size == 16
    ro = prog.maps[prog.params["pattern"].map_index]
    assert ro.initial[nm["pattern"]:nm["pattern"] + 4] == b"abc\0"
    q = prog.with_params(threshold=99, delta=-7, pattern="xyz")
    ro2 = q.maps[prog.params["pattern"].map_index].initial
    assert struct.unpack_from("<Q", ro2, nm["threshold"]) == (99,)
    assert struct.unpack_from("<i", ro2, nm["delta"]) == (-7,)
    assert ro2[nm["pattern"]:nm["pattern"] + 16] == b"xyz".ljust(16, b"\0")
    assert q.digest != prog.digest
    with pytest.raises(LoadError):
        prog.with_params(nope=1)
    t8 = prog.params["table8"]
    assert t8.is_bytes and t8.size == 32 and t8.offset == nm["table8"]
    assert ro.initial[t8.offset:t8.offset + 4] == bytes([1, 2, 3, 0])
    table = bytes(range(100, 132))
    ro3 = prog.with_params(table8=table).maps[t8.map_index].initial
    assert ro3[t8.offset:t8.offset + 32] == table                 # the full size fits
    with pytest.raises(LoadError, match="at most 32 bytes"):
        prog.with_params(table8=bytes(33))


def test_code_hash_follows_the_instructions() -> None:
    """The code hash is kept by with_params (same instructions) and made afresh for a copy
    with other instructions, so a digest never describes code the program does not hold."""
    import dataclasses
    import hashlib

    from stord.program.isa import encode

    prog = load_object(obj("maps_globals"))
    assert prog.code_hash == hashlib.sha256(encode(prog.insns)).digest()
    other = dataclasses.replace(prog, insns=prog.insns[:-2] + prog.insns[-1:])
    assert other.code_hash == hashlib.sha256(encode(other.insns)).digest() != prog.code_hash
    assert other.digest != prog.digest
    assert prog.with_params(threshold=5).code_hash == prog.code_hash


def test_program_is_picklable() -> None:
    import pickle
    prog = load_object(obj("tags"))
    back = pickle.loads(pickle.dumps(prog))
    assert back.digest == prog.digest and back.btf.to_bytes() == prog.btf.to_bytes()


# -- malformed objects -----------------------------------------------------------------------

def test_wrong_machine() -> None:
    clang = shutil.which("clang") or shutil.which("clang-14")
    r = subprocess.run([clang, "-x", "c", "-c", "-O2", "-o", "/dev/stdout", "-"],
                       input=b"int f(int x) { return x + 1; }", capture_output=True, check=True)
    with pytest.raises(LoadError, match="not a BPF object"):
        load_object(r.stdout)


def test_not_elf_and_truncated() -> None:
    with pytest.raises(LoadError, match="not an ELF"):
        load_object(b"hello world" * 10)
    data = obj("calls")
    for n in (0, 10, 64, 200, len(data) // 2, len(data) - 1):
        with pytest.raises(LoadError):
            load_object(data[:n])


@pytest.mark.parametrize("source, message", [
    ("extern int missing(int);\n"
     "SEC(\"xdp\") int p(struct xdp_md *c) { return missing(1); }", "not defined"),
    ("extern __u64 ext_var;\n"
     "SEC(\"xdp\") int p(struct xdp_md *c) { return ext_var; }", "not defined"),
    ("struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } rb SEC(\".maps\");\n"
     "SEC(\"xdp\") int p(struct xdp_md *c) { return bpf_ringbuf_output(&rb, c, 8, 0); }",
     "has type 27"),
    ("struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u64); __type(value, __u64);"
     " __uint(max_entries, 4); } a SEC(\".maps\");\n"
     "SEC(\"xdp\") int p(struct xdp_md *c) { __u64 k = 0; return !!bpf_map_lookup_elem(&a, &k); }",
     "array's key is 4 bytes"),
    ("struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(key_size, 8); __type(key, __u32);"
     " __type(value, __u64); __uint(max_entries, 4); } h SEC(\".maps\");\n"
     "SEC(\"xdp\") int p(struct xdp_md *c) { __u32 k = 0; return !!bpf_map_lookup_elem(&h, &k); }",
     "disagrees"),
    ("struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32);"
     " __type(value, __u64); } h SEC(\".maps\");\n"
     "SEC(\"xdp\") int p(struct xdp_md *c) { __u32 k = 0; return !!bpf_map_lookup_elem(&h, &k); }",
     "max_entries"),
])
def test_rejected_programs(source: str, message: str) -> None:
    head = "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
    with pytest.raises(LoadError, match=message):
        load_object(compile_c(head + source + "\nchar L[] SEC(\"license\") = \"GPL\";\n"))


def test_maps_without_btf() -> None:
    clang = shutil.which("clang") or shutil.which("clang-14")
    src = DATA / "maps_globals.c"
    inc = [f"-I{d}" for d in ("/usr/include/x86_64-linux-gnu",) if Path(d).is_dir()]
    r = subprocess.run([clang, "-O2", "-target", "bpf", *inc, "-c", str(src), "-o",
                        "/dev/stdout"], capture_output=True, check=True)
    with pytest.raises(LoadError, match="need the object's BTF"):
        load_object(r.stdout)


def test_bad_relocation_is_load_error() -> None:
    """Point a map relocation at an ALU instruction: the loader must say so."""
    import io

    from elftools.elf.elffile import ELFFile

    data = bytearray(obj("maps_globals"))
    elf = ELFFile(io.BytesIO(bytes(data)))
    rel = elf.get_section_by_name(".relxdp")
    first = rel.header["sh_offset"]
    r_offset = struct.unpack_from("<Q", data, first)[0]
    struct.pack_into("<Q", data, first, r_offset + 8 if r_offset else 8)
    with pytest.raises(LoadError):
        load_object(bytes(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_flips_and_truncation(d: st.DataObject) -> None:
    """Byte flips and truncation of a real object give a Program or a LoadError, nothing
    else."""
    base = _fuzz_base()
    buf = bytearray(base)
    for _ in range(d.draw(st.integers(1, 8))):
        pos = d.draw(st.integers(0, len(buf) - 1))
        buf[pos] = d.draw(st.integers(0, 255))
    if d.draw(st.booleans()):
        buf = buf[:d.draw(st.integers(0, len(buf)))]
    try:
        prog = load_object(bytes(buf))
    except LoadError as e:
        assert str(e)
    else:
        assert prog.insns and all(isinstance(i, isa.Insn) for i in prog.insns)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_fuzz_header_fields(d: st.DataObject) -> None:
    """Flips concentrated on the ELF header and section headers (where parsers break)."""
    base = _fuzz_base()
    buf = bytearray(base)
    shoff = struct.unpack_from("<Q", base, 0x28)[0]
    region = d.draw(st.sampled_from(["ehdr", "shdr"]))
    lo, hi = (0, 64) if region == "ehdr" else (shoff, len(base))
    for _ in range(d.draw(st.integers(1, 4))):
        pos = d.draw(st.integers(lo, hi - 1))
        buf[pos] = d.draw(st.integers(0, 255))
    try:
        load_object(bytes(buf))
    except LoadError:
        pass


_BASE: list[bytes] = []


def _fuzz_base() -> bytes:
    if not _BASE:
        _BASE.append(obj("maps_globals"))
    return _BASE[0]


def test_function_layout_matches_call_targets() -> None:
    from stord.program.elf import function_layout

    data = obj("calls")
    layout = function_layout(data, "first")
    prog = load_object(data, "first")
    assert layout[0] == ("first", 0)
    # libbpf's depth-first order: middle (first call), leaf and global_helper (its calls),
    # then the bpf_loop callback cb.
    assert [n for n, _ in layout] == ["first", "middle", "leaf", "global_helper", "cb"]
    starts = {s for _, s in layout[1:]}
    targets = {i + x.imm + 1 for i, x in enumerate(prog.insns)
               if (x.op == isa.CALL_OP and x.src == isa.PSEUDO_CALL) or
               (x.op == isa.LDDW and x.src == isa.PSEUDO_FUNC)}
    assert starts == targets
