"""`stord build`: restricted C to a BPF object with clang, cached by content.

Flags: `clang -O2 -g -target bpf -mcpu=v3`.
- `-g` makes clang emit BTF (.BTF), which the loader needs for maps, globals and decl tags.
- `-mcpu=v3` lets clang use 32-bit jumps (JMP32) and 32-bit ALU subregisters, which makes
  parsers (byte compares, counters) shorter and cheaper than v1/v2 code. It needs a kernel
  >= 5.1 for the kernel engine (this machine runs 6.18); our own engines implement all of
  RFC 9669 anyway. v4 (sign-extending loads, bswap, sdiv) would need clang >= 17.
The cache key is the sha256 of the source, the flags, `clang --version` and the headers in
the include directories, so editing bpf/include/stord.h invalidates what depended on it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from stord.errors import CompileError, NotFound

BASE_FLAGS = ("-O2", "-g", "-target", "bpf", "-mcpu=v3")
CLANG_TIMEOUT = 120  # seconds; a 2-core machine shared by many compiles can be slow
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def bpf_dir() -> Path:
    """The built-in programs' directory: $STORD_BPF_DIR, else the repository's bpf/."""
    env = os.environ.get("STORD_BPF_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "bpf"


def cache_dir() -> Path:
    env = os.environ.get("STORD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "stord"


def find_clang() -> str:
    for name in (os.environ.get("STORD_CLANG"), "clang", "clang-14"):
        if name and (path := shutil.which(name)):
            return path
    raise CompileError("clang not found (install clang, or set STORD_CLANG)")


@functools.lru_cache(maxsize=8)
def _clang_version(clang: str) -> str:
    try:
        r = subprocess.run([clang, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"cannot run {clang}: {e}") from None
    return r.stdout


def warm_up() -> None:
    """What the first compile in a process would otherwise pay before its cache lookup:
    clang's version (part of every cache key; `clang --version` measured ~70 ms here).
    Without clang, nothing: a compile reports that."""
    try:
        _clang_version(find_clang())
    except CompileError:
        pass


def _system_includes() -> list[str]:
    """<linux/bpf.h> includes <asm/types.h>, which lives in the host's multiarch directory;
    `-target bpf` does not look there by itself."""
    machine = platform.machine()
    out = []
    for cand in (f"/usr/include/{machine}-linux-gnu", f"/usr/include/{machine}-linux-musl"):
        if Path(cand, "asm").is_dir():
            out.append(cand)
    return out


def _flags(include_dirs: Iterable[str | Path], defines: Mapping[str, object] | None) -> list[str]:
    flags = list(BASE_FLAGS)
    for d in (*include_dirs, bpf_dir() / "include", *_system_includes()):
        flags.append(f"-I{d}")
    for k, v in sorted((defines or {}).items()):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise CompileError(f"bad macro name {k!r}")
        flags.append(f"-D{k}" if v is None else f"-D{k}={v}")
    return flags


def _headers_digest(dirs: Iterable[Path]) -> bytes:
    """Headers that may be included: bpf/include recursively, other directories (which may
    be large, like a home directory) only at their top level."""
    h = hashlib.sha256()
    ours = bpf_dir() / "include"
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*.h") if d == ours else d.glob("*.h")):
            try:
                h.update(str(f).encode() + b"\0" + f.read_bytes())
            except OSError:
                continue
    return h.digest()


def compile_c(source: str | bytes | Path, *, include_dirs: Iterable[str | Path] = (),
              defines: Mapping[str, object] | None = None) -> bytes:
    """Compile C (source text as str/bytes, or a file as Path) to a BPF ELF object."""
    include_dirs = [Path(d) for d in include_dirs]
    if isinstance(source, Path):
        try:
            text = source.read_bytes()
        except OSError as e:
            raise CompileError(f"cannot read {source}: {e.strerror}") from None
        display = str(source)
        include_dirs.insert(0, source.resolve().parent)  # its own "local.h" includes
    else:
        text = source.encode() if isinstance(source, str) else bytes(source)
        display = "program.c"
    clang = find_clang()
    flags = _flags(include_dirs, defines)
    key = hashlib.sha256()
    for part in (text, "\0".join(flags).encode(), _clang_version(clang).encode(),
                 _headers_digest([*include_dirs, bpf_dir() / "include"])):
        key.update(hashlib.sha256(part).digest())
    cached = cache_dir() / "objects" / f"{key.hexdigest()}.o"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    obj = _run_clang(clang, flags, text, display)
    _store(cached, obj)
    return obj


def _run_clang(clang: str, flags: list[str], text: bytes, display: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="stord-build-") as tmp:
        src = Path(tmp, Path(display).name if display.endswith(".c") else "program.c")
        out = Path(tmp, "out.o")
        src.write_bytes(text)
        try:
            r = subprocess.run([clang, *flags, "-c", str(src), "-o", str(out)],
                               capture_output=True, timeout=CLANG_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CompileError(f"clang took longer than {CLANG_TIMEOUT} s") from None
        except OSError as e:
            raise CompileError(f"cannot run {clang}: {e}") from None
        if r.returncode != 0 or not out.exists():
            msg = r.stderr.decode("utf-8", "replace").replace(str(src), display).strip()
            raise CompileError(msg or f"clang failed with status {r.returncode}")
        return out.read_bytes()


def _store(path: Path, obj: bytes) -> None:
    """Write atomically (rename), so concurrent builds never see half an object; a cache that
    cannot be written only costs a recompile."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(obj)
        os.replace(tmp, path)
    except OSError:
        pass


def builtin_object(name: str) -> bytes:
    """The object of built-in program bpf/<name>.c, compiled through the cache."""
    if not _NAME_RE.match(name):
        raise NotFound(f"bad built-in program name {name!r}")
    path = bpf_dir() / f"{name}.c"
    if not path.is_file():
        raise NotFound(f"no built-in program {name!r} (no {path})")
    return compile_c(path)


def main_build(argv: list[str] | None = None) -> int:
    """`stord build prog.c -o prog.o [-I dir] [-D NAME[=VALUE]]`."""
    ap = argparse.ArgumentParser(prog="stord build", description="compile C to a BPF object")
    ap.add_argument("source", type=Path)
    ap.add_argument("-o", "--output", type=Path)
    ap.add_argument("-I", dest="include", action="append", default=[], metavar="DIR")
    ap.add_argument("-D", dest="define", action="append", default=[], metavar="NAME[=VALUE]")
    args = ap.parse_args(argv)
    defines: dict[str, object] = {}
    for d in args.define:
        k, eq, v = d.partition("=")
        defines[k] = v if eq else None
    out = args.output or args.source.with_suffix(".o")
    try:
        obj = compile_c(args.source, include_dirs=args.include, defines=defines)
        out.write_bytes(obj)
    except CompileError as e:
        print(f"stord build: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"stord build: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 1
    return 0
