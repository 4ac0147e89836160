"""`stor`: ask a stord daemon for an aggregate of a file it holds.

    stor avg data/x.csv --column value          (likewise sum, min, max, describe)
    stor count data/x.csv [--column 3 --op gt --value 10]
    stor hist data/x.csv --column 2 --lo 0 --width 10 --buckets 20
    stor grep data/x.log ERROR
    stor groupby data/x.csv --key sensor --column value
    stor query prog.c|prog.o data/x.csv -p name=value
    stor ping | stor stats | stor ls [PATH] | stor stat PATH

Columns count from 0 or are named by the header row. --json prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from stord.server.checkout import ensure_client_importable

ensure_client_importable()

from stord_client.client import DEFAULT_ADDRESS, Client, Result  # noqa: E402

AGGREGATES = ("avg", "sum", "min", "max", "describe")
# `stor stats` is the daemon's statistics; the built-in "stats" (all of rows, count, sum,
# avg, min, max of a column) is `stor describe`.
PROGRAM_OF = {"describe": "stats"}


def parse_value(v: str) -> Any:
    """-p values: integers stay integers, true/false are booleans, the rest are strings
    (decimals as strings: the daemon converts them to fixed point without float rounding)."""
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v, 0)
    except ValueError:
        return v


def parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"parameter {item!r} must be NAME=VALUE")
        out[name] = parse_value(value)
    return out


def parse_column(v: str) -> int | str:
    return int(v) if v.isdigit() else v


class UsageError(Exception):
    pass


def _common(p: argparse.ArgumentParser, file: bool = True) -> None:
    p.add_argument("--host", default=os.environ.get("STORD_HOST", DEFAULT_ADDRESS),
                   help="daemon address HOST:PORT (default $STORD_HOST or %(default)s)")
    p.add_argument("--token", default=os.environ.get("STORD_TOKEN"),
                   help="tenant token (default $STORD_TOKEN)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer")
    if file:
        p.add_argument("--engine", help="jit, interp, kernel, hook (default: the daemon's)")
        p.add_argument("--range", dest="byte_range", metavar="START:END",
                       help="only this byte range of the file")
        p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                       help="program parameter (repeatable)")


def _csv(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--header", dest="header", action="store_true", default=None,
                   help="the first row is a header (column names)")
    g.add_argument("--no-header", dest="header", action="store_false")
    p.add_argument("--delimiter", "-d", help="field delimiter (default ,)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stor", description="query files on a stord daemon")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in AGGREGATES:
        p = sub.add_parser(name, help=f"{name} of a numeric column" if name != "describe"
                           else "rows, count, sum, avg, min and max of a numeric column")
        p.add_argument("file")
        p.add_argument("--column", "-c", required=True, type=parse_column)
        _csv(p)
        _common(p)
    p = sub.add_parser("count", help="count rows (optionally where COLUMN OP VALUE)")
    p.add_argument("file")
    p.add_argument("--column", "-c", type=parse_column)
    p.add_argument("--op", choices=("eq", "ne", "lt", "le", "gt", "ge"))
    p.add_argument("--value")
    _csv(p)
    _common(p)
    p = sub.add_parser("hist", help="histogram of a column in fixed-width buckets")
    p.add_argument("file")
    p.add_argument("--column", "-c", required=True, type=parse_column)
    p.add_argument("--lo", required=True)
    p.add_argument("--width", required=True)
    p.add_argument("--buckets", type=int, default=None)
    _csv(p)
    _common(p)
    p = sub.add_parser("grep", help="count lines containing a string")
    p.add_argument("file")
    p.add_argument("pattern")
    _common(p)
    p = sub.add_parser("groupby", help="count and sum of a column per key")
    p.add_argument("file")
    p.add_argument("--key", "-k", required=True, type=parse_column)
    p.add_argument("--column", "-c", type=parse_column)
    _csv(p)
    _common(p)
    p = sub.add_parser("query", help="run a program (.c, .o or built-in name) on a file")
    p.add_argument("program")
    p.add_argument("file")
    _common(p)
    for name, hlp in (("ping", "daemon version and engines"), ("stats", "daemon statistics")):
        _common(sub.add_parser(name, help=hlp), file=False)
    p = sub.add_parser("ls", help="list a directory of an export")
    p.add_argument("path", nargs="?", default="")
    _common(p, file=False)
    p = sub.add_parser("stat", help="size and type of a file")
    p.add_argument("path")
    _common(p, file=False)
    return ap


def program_and_params(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The built-in name and its parameters for a subcommand (resolved by the daemon)."""
    params: dict[str, Any] = {}
    cmd = args.cmd
    if cmd == "query":
        return args.program, parse_params(args.param)
    if getattr(args, "header", None) is not None:
        params["header"] = args.header
    if getattr(args, "delimiter", None):
        params["delimiter"] = args.delimiter
    if cmd in AGGREGATES or cmd == "hist":
        params["column"] = args.column
    if cmd == "count":
        given = [x is not None for x in (args.column, args.op, args.value)]
        if any(given) and not all(given):
            raise UsageError("count: --column, --op and --value go together")
        if all(given):
            params.update(column=args.column, op=args.op, value=args.value)
    if cmd == "hist":
        params.update(lo=args.lo, width=args.width)
        if args.buckets is not None:
            params["nbuckets"] = args.buckets
    if cmd == "grep":
        params["pattern"] = args.pattern
    if cmd == "groupby":
        params["key"] = args.key
        if args.column is not None:
            params["column"] = args.column
    if "header" not in params and any(isinstance(params.get(k), str) for k in ("column", "key")):
        params["header"] = True  # a column named by its header implies there is a header
    params.update(parse_params(args.param))
    return PROGRAM_OF.get(cmd, cmd), params


class Progress:
    """A one-line progress bar on stderr, shown only for queries that take a while."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.shown = False

    def __call__(self, info: dict[str, Any]) -> None:
        if time.monotonic() - self.t0 < 0.5:
            return
        done, total = int(info.get("bytes_done", 0)), max(1, int(info.get("bytes_total", 1)))
        frac = min(1.0, done / total)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {human_bytes(done)} / "
                         f"{human_bytes(total)}")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_value(v: Any, indent: str = "") -> str:
    if isinstance(v, dict):
        return "\n".join(
            f"{indent}{k}:\n{format_value(x, indent + '  ')}" if isinstance(x, dict | list)
            and x else f"{indent}{k}: {_scalar(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "\n".join(f"{indent}{_scalar(x)}" for x in v)
    return f"{indent}{_scalar(v)}"


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


def format_hist(v: dict[str, Any]) -> str:
    counts, edges = v.get("counts", []), v.get("edges", [])
    top = max([*counts, v.get("below", 0), v.get("above", 0), 1])
    rows = [("below " + _scalar(edges[0]) if edges else "below", v.get("below", 0))]
    rows += [(f"[{_scalar(edges[i])}, {_scalar(edges[i + 1])})", c) for i, c in enumerate(counts)
             if i + 1 < len(edges)]
    rows.append(("from " + _scalar(edges[-1]) if edges else "above", v.get("above", 0)))
    w = max(len(label) for label, _ in rows)
    lines = [f"{label:>{w}}  {c:>10}  {'#' * round(40 * c / top)}" for label, c in rows]
    return "\n".join(lines)


def text_key(k: Any) -> str:
    """A group key for display: keys that are not UTF-8 arrive as bytes; their other bytes
    show as \\xNN escapes."""
    return k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k)


def format_groups(v: dict[Any, Any]) -> str:
    cols = ("rows", "count", "sum", "avg", "min", "max")
    table = [["key", *cols]] + [[text_key(k), *(_scalar(g.get(c)) for c in cols)]
                                for k, g in sorted(v.items(), key=lambda kv: text_key(kv[0]))]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)) for row in table)


def print_result(cmd: str, r: Result, as_json: bool) -> None:
    if as_json:
        v = r.value
        if isinstance(v, dict) and any(isinstance(k, bytes) for k in v):
            v = {text_key(k): g for k, g in v.items()}   # JSON keys must be strings
        print(json.dumps({"result": v, "stats": r.stats}, default=_json_default))
        return
    v = r.value
    if cmd == "hist" and isinstance(v, dict) and "counts" in v:
        print(format_hist(v))
    elif cmd == "groupby" and isinstance(v, dict) and all(isinstance(g, dict) for g in v.values()):
        print(format_groups(v))
    else:
        print(format_value(v))
    s = r.stats
    scanned, returned = int(s.get("bytes_scanned", 0)), int(s.get("bytes_returned", 0))
    extra = f", {s['skipped']} values skipped (not numbers)" if s.get("skipped") else ""
    print(f"[{cmd}: scanned {human_bytes(scanned)}, returned {returned} B, engine "
          f"{s.get('engine')}, {s.get('ranges', 1)} range(s), {s.get('elapsed', 0):.3f} s{extra}]",
          file=sys.stderr)


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def parse_range(v: str | None) -> tuple[int, int] | None:
    if v is None:
        return None
    a, sep, b = v.partition(":")
    if not sep or not a.isdigit() or not b.isdigit():
        raise UsageError("--range must be START:END (byte offsets)")
    return int(a), int(b)


def run(args: argparse.Namespace) -> int:
    with Client(args.host, token=args.token, timeout=args.timeout) as c:
        if args.cmd in ("ping", "stats", "ls", "stat"):
            out: Any = (c.ping() if args.cmd == "ping" else c.stats() if args.cmd == "stats"
                        else c.list(args.path) if args.cmd == "ls" else c.stat(args.path))
            if args.json:
                print(json.dumps(out, default=_json_default))
            elif args.cmd == "ls":
                for e in out:
                    print(f"{e.get('type', ''):6} {e.get('size', ''):>12} {e['name']}")
            else:
                print(format_value(out))
            return 0
        prog, params = program_and_params(args)
        progress = Progress() if sys.stderr.isatty() and not args.json else None
        try:
            r = c.query(args.file, prog, engine=args.engine, byte_range=parse_range(
                args.byte_range), params=params, on_progress=progress)
        finally:
            if progress is not None:
                progress.clear()
        print_result(args.cmd, r, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"stor: {e}", file=sys.stderr)
        return 2
    except ConnectionRefusedError:
        print(f"stor: cannot connect to {args.host}: connection refused (is stord running?)",
              file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"stor: no answer from {args.host} within {args.timeout} s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stor: interrupted (the query is cancelled)", file=sys.stderr)
        return 130
    except Exception as e:
        code = getattr(e, "code", None)
        if code is not None:
            print(f"stor: {code}: {e}", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"stor: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}",
                  file=sys.stderr)
        else:
            print(f"stor: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
