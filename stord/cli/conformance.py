"""stord-conformance: run the bpf_conformance ISA vectors (.data files) on an engine.

    stord-conformance [--engine NAME] PATH...      files or directories of .data files
    stord-conformance --plugin [--engine NAME] MEMHEX   upstream plugin protocol: program
                                                   as base16 on stdin, r0 in hex on stdout

Any engine registered in stord.engines.base runs through the same Engine interface.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from stord.engines.base import get_engine
from stord.errors import EngineUnavailable, StordError
from stord.program import isa
from stord.program.asm import assemble
from stord.program.model import Program

M64 = (1 << 64) - 1
CONFORMANCE_BUDGET = 50_000_000  # instructions; the vectors need a few hundred


@dataclass
class Vector:
    path: Path
    insns: list[isa.Insn]
    mem: bytearray | None
    result: int | None
    expect_error: bool


def parse_vector(path: Path) -> Vector:
    """A .data file -> program (raw wins over asm), memory, expected r0 or error."""
    sections: dict[str, list[str]] = {}
    cur: str | None = None
    for line in path.read_text().replace("\r", "").splitlines():
        if line.startswith("--"):
            cur = line[2:].strip()
            sections.setdefault(cur, [])
            continue
        if cur is not None:
            sections[cur].append(line)

    def body(name: str) -> list[str]:
        return [ln.split("#", 1)[0].strip() for ln in sections.get(name, [])
                if ln.split("#", 1)[0].strip()]

    if "raw" in sections:
        words = body("raw")
        insns = isa.decode(b"".join(int(w, 0).to_bytes(8, "little") for w in words))
    elif "asm" in sections:
        insns = assemble("\n".join(sections["asm"]))
    else:
        raise ValueError("no -- asm or -- raw section")
    mem = None
    if "mem" in sections:
        mem = bytearray(bytes.fromhex(" ".join(body("mem"))))
    result = None
    if body("result"):
        text = body("result")[0]
        result = (int(text, 16) if text.lower().startswith("0x") else int(text)) & M64
    return Vector(path, insns, mem, result, "error" in sections)


def run_vector(engine, vec: Vector) -> tuple[str, str]:
    """('pass' | 'fail' | 'skip', detail)."""
    prog = Program(name="conformance", section="", insns=vec.insns)
    try:
        inst = engine.load(prog, budget=CONFORMANCE_BUDGET, helpers="conformance")
        with inst:
            r0 = inst.call(bytearray(vec.mem) if vec.mem is not None else None) & M64
    except EngineUnavailable as e:
        return "skip", str(e)
    except StordError as e:
        if vec.expect_error:
            return "pass", ""
        return "fail", f"{type(e).__name__}: {e}"
    if vec.expect_error:
        return "fail", f"expected an error, got r0 = {r0:#x}"
    if vec.result is None:
        return "fail", "vector has no -- result"
    if r0 != vec.result:
        return "fail", f"r0 = {r0:#x}, expected {vec.result:#x}"
    return "pass", ""


def one_line(text: str, limit: int = 300) -> str:
    """A multi-line message (a verifier log) as one line: its first and last lines."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    out = lines[0] if len(lines) <= 1 else f"{lines[0]} ... {lines[-1]}"
    return out if len(out) <= limit else out[:limit - 3] + "..."


def collect(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.data"))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    return files


def plugin(engine, memhex: str) -> int:
    """The upstream bpf_conformance plugin protocol."""
    try:
        code = bytes.fromhex(sys.stdin.read().strip())
        mem = bytearray(bytes.fromhex(memhex)) if memhex.strip() else None
        prog = Program(name="conformance", section="", insns=isa.decode(code))
        with engine.load(prog, budget=CONFORMANCE_BUDGET, helpers="conformance") as inst:
            r0 = inst.call(mem) & M64
    except (StordError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{r0:x}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stord-conformance", description=__doc__.split("\n")[0])
    ap.add_argument("--engine", default="interp", help="engine name (default: interp)")
    ap.add_argument("--plugin", action="store_true",
                    help="speak the upstream plugin protocol (first PATH is MEMHEX)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print passes too")
    ap.add_argument("paths", nargs="*", metavar="PATH")
    args = ap.parse_args(argv)
    try:
        engine = get_engine(args.engine)
    except StordError as e:
        print(f"stord-conformance: {e}", file=sys.stderr)
        return 2
    if args.plugin:
        return plugin(engine, args.paths[0] if args.paths else "")
    if not args.paths:
        ap.error("give at least one .data file or directory")
    try:
        files = collect(args.paths)
    except FileNotFoundError as e:
        print(f"stord-conformance: {e}", file=sys.stderr)
        return 2
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for f in files:
        try:
            status, detail = run_vector(engine, parse_vector(f))
        except (StordError, ValueError, UnicodeDecodeError) as e:
            status, detail = "fail", f"cannot read vector: {e}"
        counts[status] += 1
        if status != "pass" or args.verbose:
            print(f"{status.upper()} {f.name}: {one_line(detail)}" if detail
                  else f"{status.upper()} {f.name}")
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
