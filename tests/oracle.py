"""Independent answers for the built-ins: CSV parsed by Python's csv module, numbers by
decimal.Decimal, aggregates computed by DuckDB (exact DECIMAL/HUGEINT arithmetic).

The dialect both sides agree on (bpf/README.md): RFC 4180 quoting with '"', any one-byte
delimiter, LF or CRLF line ends, blank lines are not records, the header is the first
record; a number is [+-]digits[.digits] (one side may be empty, not both), kept at `scale`
decimals truncated toward zero; an empty field is NULL, anything else that is not a number
is skipped.
"""

from __future__ import annotations

import csv
import io
import re
from decimal import ROUND_DOWN, Decimal, localcontext
from typing import Any

import duckdb

NUM_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
S64_MAX = (1 << 63) - 1


def records(data: bytes, delimiter: str = ",", header: bool = False) -> list[list[str]]:
    text = data.decode("latin-1")   # one char per byte: field bytes survive as they are
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
    return rows[1:] if header else rows


def number(field: str | None, scale: int) -> tuple[str, int | None]:
    """("ok", fixed) | ("empty", None) | ("skipped", None) | ("overflow", None)."""
    if field is None or field == "":
        return "empty", None
    if not NUM_RE.match(field):
        return "skipped", None
    with localcontext() as ctx:
        ctx.prec = 100   # the default 28 digits cannot hold a 19-digit value at scale 18
        q = Decimal(field).scaleb(scale).quantize(Decimal(1), rounding=ROUND_DOWN)
    if abs(q) > S64_MAX:
        return "overflow", None
    return "ok", int(q)


def column(rows: list[list[str]], col: int, scale: int) -> list[tuple[str, int | None]]:
    return [number(r[col] if col < len(r) else None, scale) for r in rows]


def _db(values: list[int | None], keys: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (k VARCHAR, v HUGEINT)")
    ks = keys if keys is not None else [""] * len(values)
    if values:
        con.executemany("INSERT INTO t VALUES (?, ?)", list(zip(ks, values, strict=True)))
    return con


def stats(data: bytes, col: int, *, scale: int, delimiter: str = ",",
          header: bool = False) -> dict[str, Any]:
    rows = records(data, delimiter, header)
    parsed = column(rows, col, scale)
    tally = {s: sum(1 for st, _ in parsed if st == s) for s in ("empty", "skipped", "overflow")}
    con = _db([v for st, v in parsed if st == "ok"])
    n, total, lo, hi = con.execute("SELECT count(v), sum(v), min(v), max(v) FROM t").fetchone()
    return {"rows": len(rows), "count": n, "sum": int(total or 0), "min": lo, "max": hi,
            **tally}


def count(data: bytes, col: int | None, op: str | None, value: int | None, *, scale: int,
          delimiter: str = ",", header: bool = False) -> dict[str, Any]:
    rows = records(data, delimiter, header)
    if col is None:
        return {"rows": len(rows), "count": len(rows)}
    parsed = column(rows, col, scale)
    sql = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[op or "eq"]
    con = _db([v for st, v in parsed if st == "ok"])
    (n,) = con.execute(f"SELECT count(*) FROM t WHERE v {sql} ?", [value]).fetchone()
    return {"rows": len(rows), "count": n,
            "skipped": sum(1 for st, _ in parsed if st == "skipped"),
            "empty": sum(1 for st, _ in parsed if st == "empty")}


def hist(data: bytes, col: int, lo: int, width: int, nbuckets: int, *, scale: int,
         delimiter: str = ",", header: bool = False) -> dict[str, Any]:
    rows = records(data, delimiter, header)
    con = _db([v for st, v in column(rows, col, scale) if st == "ok"])
    below, above = con.execute(
        "SELECT count(*) FILTER (WHERE v < $lo), "
        "count(*) FILTER (WHERE v >= $lo + $w * $n) FROM t",
        {"lo": lo, "w": width, "n": nbuckets}).fetchone()
    got = dict(con.execute(
        "SELECT (v - $lo) // $w AS b, count(*) FROM t WHERE v >= $lo AND v < $lo + $w * $n "
        "GROUP BY b", {"lo": lo, "w": width, "n": nbuckets}).fetchall())
    return {"below": below, "above": above,
            "counts": [int(got.get(i, 0)) for i in range(nbuckets)]}


def groupby(data: bytes, key: int, col: int | None, *, scale: int, delimiter: str = ",",
            header: bool = False) -> dict[str, dict[str, Any]]:
    rows = records(data, delimiter, header)
    keys = [r[key] if key < len(r) else "" for r in rows]
    vals: list[int | None] = [None] * len(rows)
    if col is not None:
        vals = [v if st == "ok" else None for st, v in column(rows, col, scale)]
    con = _db(vals, keys)
    out = {}
    for k, n_rows, n, total, lo, hi in con.execute(
            "SELECT k, count(*), count(v), sum(v), min(v), max(v) FROM t GROUP BY k").fetchall():
        out[k] = {"rows": n_rows, "count": n, "sum": int(total or 0), "min": lo, "max": hi}
    return out


def grep(data: bytes, needle: bytes) -> dict[str, int]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()   # the newline ends the last line; nothing follows it
    return {"lines": len(lines), "matches": sum(1 for ln in lines if needle in ln)}
