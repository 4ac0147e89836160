"""The clang wrapper: real compiles, the content cache, errors, built-ins, `stord build`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from stord.errors import CompileError, NotFound
from stord.program import isa
from stord.program.elf import load_object
from stord.program.toolchain import (
    BASE_FLAGS,
    bpf_dir,
    builtin_object,
    compile_c,
    main_build,
)
from stord.query.state import reduce_spec

HEAD = "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
RET = HEAD + "SEC(\"xdp\") int p(struct xdp_md *c) { return VALUE; }\n"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("STORD_CACHE_DIR", str(d))
    return d


def returned(obj: bytes) -> int:
    """The constant a one-line `return VALUE;` program returns (mov r0/w0, imm)."""
    insns = load_object(obj).insns
    movs = [i for i in insns if i.op in (isa.ALU | isa.MOV | isa.K, isa.ALU64 | isa.MOV | isa.K)
            and i.dst == 0]
    assert len(movs) == 1
    return movs[0].imm


def test_compiles_to_a_bpf_object_with_btf() -> None:
    obj = compile_c(RET.replace("VALUE", "2"))
    elf = ELFFile(io.BytesIO(obj))
    assert elf["e_machine"] == "EM_BPF" and elf["e_type"] == "ET_REL"
    assert elf.get_section_by_name(".BTF") is not None      # -g
    assert returned(obj) == 2
    assert "-mcpu=v3" in BASE_FLAGS


def test_mcpu_v3_emits_jmp32() -> None:
    src = HEAD + ("SEC(\"xdp\") int p(struct xdp_md *c) {\n"
                  "  __u32 n = c->data_end - c->data; return n > 100 ? 1 : 2; }\n")
    insns = load_object(compile_c(src)).insns
    assert any(i.cls == isa.JMP32 for i in insns)


def test_cache_hit_returns_the_stored_object(cache: Path) -> None:
    src = RET.replace("VALUE", "1")
    first = compile_c(src)
    files = list((cache / "objects").glob("*.o"))
    assert len(files) == 1 and files[0].read_bytes() == first
    # Replace the cached object with another valid one: a hit must return it unchanged.
    other = compile_c(RET.replace("VALUE", "2"))
    files[0].write_bytes(other)
    assert compile_c(src) == other
    assert not list((cache / "objects").glob("*.tmp"))


def test_key_covers_defines_and_headers(tmp_path: Path, cache: Path) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "val.h").write_text("#define VALUE 3\n")
    src = "#include \"val.h\"\n" + RET
    assert returned(compile_c(src, include_dirs=[inc])) == 3
    (inc / "val.h").write_text("#define VALUE 4\n")           # edited header: recompiled
    assert returned(compile_c(src, include_dirs=[inc])) == 4
    assert returned(compile_c(RET, defines={"VALUE": 5})) == 5
    assert returned(compile_c(RET, defines={"VALUE": 6})) == 6
    assert len(list((cache / "objects").glob("*.o"))) == 4


def test_path_source_finds_its_local_headers(tmp_path: Path) -> None:
    (tmp_path / "local.h").write_text("#define VALUE 7\n")
    f = tmp_path / "prog.c"
    f.write_text("#include \"local.h\"\n" + RET)
    assert returned(compile_c(f)) == 7


def test_compile_error_carries_clangs_message(tmp_path: Path) -> None:
    with pytest.raises(CompileError) as e:
        compile_c(HEAD + "int broken( { }\n")
    msg = str(e.value)
    assert "program.c:3" in msg and "error:" in msg and "stord-build-" not in msg
    f = tmp_path / "mine.c"
    f.write_text("int x = ;\n")
    with pytest.raises(CompileError, match=r"mine\.c:1:9: error"):
        compile_c(f)
    with pytest.raises(CompileError, match="cannot read"):
        compile_c(tmp_path / "missing.c")


def test_clang_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("STORD_CLANG", raising=False)
    with pytest.raises(CompileError, match="clang not found"):
        compile_c(RET.replace("VALUE", "1"))


def test_unwritable_cache_still_compiles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("STORD_CACHE_DIR", str(blocker))
    assert returned(compile_c(RET.replace("VALUE", "9"))) == 9


def test_builtin_object_from_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "mine.h").write_text("#define VALUE 11\n")
    (tmp_path / "eleven.c").write_text("#include <mine.h>\n" + RET)
    monkeypatch.setenv("STORD_BPF_DIR", str(tmp_path))
    assert bpf_dir() == tmp_path
    assert returned(builtin_object("eleven")) == 11
    with pytest.raises(NotFound, match="no built-in program 'twelve'"):
        builtin_object("twelve")
    with pytest.raises(NotFound, match="bad built-in program name"):
        builtin_object("../eleven")


def test_repository_builtins_compile_and_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bpf/*.c of the repository compiles, loads and has a reduce spec."""
    monkeypatch.delenv("STORD_BPF_DIR", raising=False)
    names = sorted(p.stem for p in bpf_dir().glob("*.c"))
    if not names:
        pytest.skip(f"no built-in programs in {bpf_dir()} yet")
    for name in names:
        prog = load_object(builtin_object(name))
        assert prog.insns and prog.license, name
        assert isinstance(reduce_spec(prog), dict), name


def test_main_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "p.c"
    src.write_text(RET)
    out = tmp_path / "p.o"
    assert main_build([str(src), "-o", str(out), "-D", "VALUE=12"]) == 0
    assert returned(out.read_bytes()) == 12
    bad = tmp_path / "bad.c"
    bad.write_text("nope\n")
    assert main_build([str(bad), "-o", str(tmp_path / "bad.o")]) == 1
    assert "bad.c:1" in capsys.readouterr().err
    assert not (tmp_path / "bad.o").exists()
