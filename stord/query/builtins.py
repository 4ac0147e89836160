"""Built-in programs: which bpf/*.c each name runs, its parameters, and its finishing step.

User parameters (what `stor` and the SDK send) become the programs' .rodata parameters:
- `column` (and groupby's `key`): a 0-based index or a header name (names need the header
  row; a name implies header=true unless header=false was given, which is an error);
- `header` (bool), `delimiter` (one character), `scale` (decimals kept, 0..18; digits past
  it are truncated);
- numbers (`value`, `lo`, `width`): int, float or decimal string, converted to fixed point
  at `scale` exactly (more decimals than the scale is an error, not a silent rounding).
finish(name, merged_state, params) turns a (merged) decoded state into the answer; it is
importable on its own so that the SDK can finish states merged across nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from stord.errors import BadRequest, LimitExceeded, ResultOverflow
from stord.program.model import Program

DEFAULT_SCALE = 4
MAX_SCALE = 18
HIST_MAX = 64            # bpf/hist.c HIST_MAX
GREP_MAX_NEEDLE = 63     # bpf/grep.c GREP_MAX_NEEDLE
GREP_STATES = GREP_MAX_NEEDLE + 1
GROUPS_MAX = 4096        # bpf/groupby.c GROUPS_MAX
OPS = {"eq": 1, "ne": 2, "lt": 3, "le": 4, "gt": 5, "ge": 6,
       "==": 1, "=": 1, "!=": 2, "<": 3, "<=": 4, ">": 5, ">=": 6}
CSV_KEYS = {"column", "header", "delimiter", "scale"}


@dataclass(frozen=True)
class Builtin:
    source: str                 # bpf/<source>.c
    keys: frozenset[str]        # user parameters it accepts
    params: Callable[[dict[str, Any], list[str] | None], dict[str, Any]]
    finish: Callable[[dict[str, Any], dict[str, Any]], Any]
    help: str


# -- parameter conversion -------------------------------------------------------------------

def _bool(params: dict[str, Any], name: str, default: bool) -> bool:
    v = params.get(name, default)
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.lower() in ("true", "1", "yes")
    if not isinstance(v, bool | int) or v not in (0, 1):
        raise BadRequest(f"parameter {name!r} must be true or false, not {v!r}")
    return bool(v)


def scale_of(params: dict[str, Any]) -> int:
    v = params.get("scale", DEFAULT_SCALE)
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SCALE:
        raise BadRequest(f"scale must be an integer 0..{MAX_SCALE}, not {v!r}")
    return v


def fixed(value: Any, scale: int, name: str) -> int:
    """A decimal number (int, float or string) as an integer times 10**scale, exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f"parameter {name!r} must be a number, not {value!r}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise BadRequest(f"parameter {name!r} is not a number: {value!r}") from None
    if not d.is_finite():
        raise BadRequest(f"parameter {name!r} must be finite, not {value!r}")
    q = d.scaleb(scale)
    if q != q.to_integral_value():
        raise BadRequest(f"parameter {name!r} = {value} has more decimals than scale {scale}")
    n = int(q)
    if not -(1 << 63) <= n < (1 << 63):
        raise BadRequest(f"parameter {name!r} = {value} does not fit a 64-bit fixed-point "
                         f"number at scale {scale}")
    return n


def _delimiter(params: dict[str, Any]) -> int:
    d = params.get("delimiter", ",")
    if d in ("tab", "\\t"):
        d = "\t"
    if isinstance(d, bytes):
        d = d.decode("latin-1")
    if not isinstance(d, str) or len(d) != 1 or ord(d) > 0x7F or d in "\"\r\n":
        raise BadRequest(f"delimiter must be one ASCII character other than quote, CR and "
                         f"LF, not {d!r}")
    return ord(d)


def _column(params: dict[str, Any], name: str, header: list[str] | None,
            *, required: bool) -> int:
    v = params.get(name)
    if v is None:
        if required:
            raise BadRequest(f"parameter {name!r} (a column index or name) is required")
        return -1
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool):
        raise BadRequest(f"parameter {name!r} must be a column index or name, not {v!r}")
    if isinstance(v, int):
        if not 0 <= v < (1 << 31):
            raise BadRequest(f"parameter {name!r}: column index {v} is out of range")
        return v
    if not isinstance(v, str):
        raise BadRequest(f"parameter {name!r} must be a column index or name, not {v!r}")
    if params.get("header") is not None and not _bool(params, "header", False):
        raise BadRequest(f"column {v!r} is a name, but header=false: give an index")
    if not header:
        raise BadRequest(f"column {v!r} is a name, but the file has no header row to find "
                         "it in")
    names = [h.strip() for h in header]
    if v.strip() not in names:
        shown = ", ".join(repr(h) for h in names[:20])
        raise BadRequest(f"no column {v!r} in the header (columns: {shown})")
    return names.index(v.strip())


def _uses_names(params: dict[str, Any], *names: str) -> bool:
    return any(isinstance(params.get(n), str) and not params[n].strip().isdigit()
               for n in names)


def _csv(params: dict[str, Any], header: list[str] | None, *, column: bool,
         names: tuple[str, ...] = ("column",)) -> dict[str, Any]:
    """The CSV parameters of stord.h: delim, header, scale and the number column `col`."""
    hdr = _bool(params, "header", _uses_names(params, *names))
    out: dict[str, Any] = {"delim": _delimiter(params), "header": int(hdr),
                           "scale": scale_of(params)}
    if column:
        out["col"] = _column(params, "column", header, required=True)
    return out


# -- the built-ins ---------------------------------------------------------------------------

def _stats_params(p: dict[str, Any], header: list[str] | None) -> dict[str, Any]:
    return _csv(p, header, column=True)


def _sum_params(p: dict[str, Any], header: list[str] | None) -> dict[str, Any]:
    """sum and avg: stats without min and max (two compares per record fewer)."""
    return dict(_stats_params(p, header), minmax=0)


def _count_params(p: dict[str, Any], header: list[str] | None) -> dict[str, Any]:
    given = [p.get(k) is not None for k in ("column", "op", "value")]
    if any(given) and not all(given):
        raise BadRequest("count: column, op and value go together (or none of them)")
    out = _csv(p, header, column=all(given))
    if all(given):
        op = p["op"]
        if op not in OPS:
            raise BadRequest(f"op must be one of eq, ne, lt, le, gt, ge, not {op!r}")
        out["op"] = OPS[op]
        out["value"] = fixed(p["value"], out["scale"], "value")
    return out


def _hist_params(p: dict[str, Any], header: list[str] | None) -> dict[str, Any]:
    out = _csv(p, header, column=True)
    for k in ("lo", "width"):
        if p.get(k) is None:
            raise BadRequest(f"hist: parameter {k!r} is required")
    out["lo"] = fixed(p["lo"], out["scale"], "lo")
    out["width"] = fixed(p["width"], out["scale"], "width")
    if out["width"] <= 0:
        raise BadRequest(f"hist: width must be > 0, not {p['width']!r}")
    n = p.get("nbuckets", 10)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= HIST_MAX:
        raise BadRequest(f"hist: nbuckets must be an integer 1..{HIST_MAX}, not {n!r}")
    out["nbuckets"] = n
    return out


def _groupby_params(p: dict[str, Any], header: list[str] | None) -> dict[str, Any]:
    out = _csv(p, header, column=False, names=("key", "column"))
    out["key_col"] = _column(p, "key", header, required=True)
    out["col"] = _column(p, "column", header, required=False)
    return out


def grep_dfa(needle: bytes) -> bytes:
    """The Knuth-Morris-Pratt automaton of `needle` as bpf/grep.c wants it: row s (256
    bytes) gives the next state after each byte; state len(needle) (matched) is absorbing."""
    m = len(needle)
    rows = [[0] * 256 for _ in range(m + 1)]
    rows[0][needle[0]] = 1
    x = 0       # the state the automaton would be in after needle[1:j]
    for j in range(1, m):
        rows[j] = list(rows[x])
        rows[j][needle[j]] = j + 1
        x = rows[x][needle[j]]
    rows[m] = [m] * 256
    return b"".join(bytes(r) for r in rows)


def _grep_params(p: dict[str, Any], header: list[str] | None) -> dict[str, Any]:
    pat = p.get("pattern")
    if isinstance(pat, str):
        pat = pat.encode()
    if not isinstance(pat, bytes) or not 1 <= len(pat) <= GREP_MAX_NEEDLE:
        raise BadRequest(f"grep: pattern must be 1..{GREP_MAX_NEEDLE} bytes, not {pat!r}")
    if b"\n" in pat:
        raise BadRequest("grep: pattern cannot contain a newline (lines are matched)")
    return {"needle_len": len(pat), "dfa": grep_dfa(pat)}


def _check(state: dict[str, Any]) -> None:
    if state.get("overflow"):
        raise ResultOverflow(f"{state['overflow']} values or sums did not fit a 64-bit "
                             "fixed-point number (try a smaller scale): no result")


def _num(v: int, scale: int) -> float | int:
    return v if scale == 0 else v / 10 ** scale


def _counts(state: dict[str, Any]) -> dict[str, int]:
    return {k: int(state.get(k, 0)) for k in ("rows", "count", "skipped", "empty")}


def _finish_stats(state: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    _check(state)
    s, n = scale_of(p), int(state.get("count", 0))
    return dict(_counts(state),
                sum=_num(int(state.get("sum", 0)), s),
                avg=int(state["sum"]) / (n * 10 ** s) if n else None,
                min=_num(int(state["min"]), s) if n else None,
                max=_num(int(state["max"]), s) if n else None)


def _one(field: str) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
    def finish(state: dict[str, Any], p: dict[str, Any]) -> Any:
        return _finish_stats(state, p)[field]
    return finish


def _finish_count(state: dict[str, Any], p: dict[str, Any]) -> int:
    _check(state)
    return int(state.get("count", 0))


def _finish_hist(state: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    _check(state)
    s = scale_of(p)
    lo, width = fixed(p["lo"], s, "lo"), fixed(p["width"], s, "width")
    n = int(p.get("nbuckets", 10))
    counts = [int(c) for c in state.get("buckets", [])[:n]]
    return dict(_counts(state), below=int(state.get("below", 0)),
                above=int(state.get("above", 0)), counts=counts,
                edges=[_num(lo + i * width, s) for i in range(n + 1)])


def _finish_grep(state: dict[str, Any], p: dict[str, Any]) -> dict[str, int]:
    return {"lines": int(state.get("lines", 0)), "matches": int(state.get("matches", 0))}


def _finish_groupby(state: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    _check(state)
    if state.get("dropped"):
        raise LimitExceeded(f"groupby: more than {GROUPS_MAX} distinct keys per range "
                            f"({state['dropped']} records did not fit): no result")
    s = scale_of(p)
    out: dict[str, Any] = {}
    for key, g in (state.get("groups") or {}).items():
        # str, or bytes when the key is not UTF-8 (msgpack carries both as map keys)
        k = key.get("key") if isinstance(key, dict) else key
        n = int(g["count"])
        out[k] = {"rows": int(g["rows"]), "count": n, "sum": _num(int(g["sum"]), s),
                  "avg": int(g["sum"]) / (n * 10 ** s) if n else None,
                  "min": _num(int(g["min"]), s) if n else None,
                  "max": _num(int(g["max"]), s) if n else None}
    return out


_STATS_KEYS = frozenset(CSV_KEYS)
BUILTINS: dict[str, Builtin] = {
    "count": Builtin("count", frozenset(CSV_KEYS | {"op", "value"}), _count_params,
                     _finish_count, "records, or records where column OP value"),
    "sum": Builtin("stats", _STATS_KEYS, _sum_params, _one("sum"), "sum of a column"),
    "avg": Builtin("stats", _STATS_KEYS, _sum_params, _one("avg"), "average of a column"),
    "min": Builtin("stats", _STATS_KEYS, _stats_params, _one("min"), "minimum of a column"),
    "max": Builtin("stats", _STATS_KEYS, _stats_params, _one("max"), "maximum of a column"),
    "stats": Builtin("stats", _STATS_KEYS, _stats_params, _finish_stats,
                     "rows, count, sum, avg, min, max of a column"),
    "hist": Builtin("hist", frozenset(CSV_KEYS | {"lo", "width", "nbuckets"}), _hist_params,
                    _finish_hist, "fixed-width histogram of a column"),
    "grep": Builtin("grep", frozenset({"pattern"}), _grep_params, _finish_grep,
                    "lines, and lines containing a byte string"),
    "groupby": Builtin("groupby", frozenset(CSV_KEYS | {"key"}), _groupby_params,
                       _finish_groupby, "per key: rows, count, sum, avg, min, max"),
}

_objects: dict[str, Program] = {}


def _builtin(name: str) -> Builtin:
    b = BUILTINS.get(name)
    if b is None:
        raise BadRequest(f"no built-in {name!r} (built-ins: {', '.join(sorted(BUILTINS))})")
    return b


def program_params(name: str, params: dict[str, Any],
                   header: list[str] | None = None) -> dict[str, Any]:
    """The .rodata parameters of built-in `name` for these user parameters."""
    b = _builtin(name)
    unknown = set(params) - b.keys
    if unknown:
        raise BadRequest(f"{name}: unknown parameters {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(b.keys))})")
    return b.params(params, header)


def resolve(name: str, params: dict[str, Any],
            header: list[str] | None = None) -> tuple[Program, Callable[[dict], Any]]:
    """(Program with its parameters set, finishing function) of built-in `name`."""
    from stord.program.elf import load_object
    from stord.program.toolchain import builtin_object

    b = _builtin(name)
    rodata = program_params(name, params, header)
    prog = _objects.get(b.source)
    if prog is None:
        prog = _objects[b.source] = load_object(builtin_object(b.source))
    p = dict(params)
    return prog.with_params(**rodata), lambda state: b.finish(state, p)


def finish(name: str, state: dict[str, Any], params: dict[str, Any]) -> Any:
    """The answer of built-in `name` from its (merged) decoded state."""
    return _builtin(name).finish(state, params)
