"""`stord`: run the daemon, build programs, check them against the kernel verifier.

    stord serve [--config stord.toml] [--listen HOST:PORT]
    stord build prog.c -o prog.o
    stord verify prog.o|prog.c
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from stord.errors import StordError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stord", description="storage-side compute daemon")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", "-c", help="TOML config (default: serve the current directory "
                   "read-only on 127.0.0.1:7411)")
    s.add_argument("--listen", help="HOST:PORT, overrides the config")
    s.add_argument("--workers", type=int, help="worker processes, overrides the config")
    b = sub.add_parser("build", help="compile restricted C to a BPF object")
    b.add_argument("source")
    b.add_argument("-o", "--output", help="output object (default: SOURCE with .o)")
    b.add_argument("-I", dest="include", action="append", default=[], help="include directory")
    v = sub.add_parser("verify", help="load a program into the kernel verifier, print its log")
    v.add_argument("program", help="ELF object (.o) or C source (.c)")
    v.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a program parameter before verifying")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "serve":
            return serve(args)
        if args.cmd == "build":
            return build(args)
        return verify(args)
    except StordError as e:
        print(f"stord: {e.code}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"stord: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def serve(args: argparse.Namespace) -> int:
    from stord.server.checkout import ensure_client_importable
    from stord.server.config import load_config, parse_address
    from stord.server.server import main_serve
    ensure_client_importable()
    cfg = load_config(args.config)
    if args.listen:
        host, port = parse_address(args.listen)
        cfg = replace(cfg, host=host, port=port)
    if args.workers is not None:
        cfg = replace(cfg, workers=args.workers)
    return main_serve(cfg, args.config)


def build(args: argparse.Namespace) -> int:
    from stord.program.toolchain import compile_c
    src = Path(args.source)
    out = Path(args.output) if args.output else src.with_suffix(".o")
    obj = compile_c(src, include_dirs=tuple(args.include))
    out.write_bytes(obj)
    print(f"{out}: {len(obj)} bytes", file=sys.stderr)
    return 0


def load_program_file(path: str) -> bytes:
    """An object file's bytes; a .c file is compiled first."""
    p = Path(path)
    if p.suffix == ".c":
        from stord.program.toolchain import compile_c
        return compile_c(p)
    return p.read_bytes()


def verify(args: argparse.Namespace) -> int:
    from stord.program.elf import load_object
    try:
        from stord.engines.kernel.engine import verify_program
    except ImportError as e:
        print(f"stord: engine_unavailable: the kernel engine cannot be imported: {e}",
              file=sys.stderr)
        return 1
    prog = load_object(load_program_file(args.program))
    if args.param:
        from stord.cli.stor import parse_params
        prog = prog.with_params(**parse_params(args.param))
    log = verify_program(prog)
    if log:
        print(log.rstrip())
    print(f"{args.program}: accepted by the kernel verifier ({len(prog.insns)} instructions)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
