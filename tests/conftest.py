"""Shared fixtures: real stord daemons on 127.0.0.1 (free ports), sample CSV files.

Daemons are separate processes started with `python -m stord.cli.stord serve` exactly as a
user would; tests talk to them over TCP. Keep files small: the interp engine is pure Python.
"""

from __future__ import annotations

import csv
import random
import re
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "clients")):
    if p not in sys.path:
        sys.path.insert(0, p)

from stord.server.launch import Daemon, start_daemon  # noqa: E402

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
TEST_BUDGET = 5_000_000      # instructions per call: small files need far fewer
HUGE_BUDGET = 1 << 40        # so large that only the CPU-time limit can stop a runaway
SENSORS_ROWS = 60


def write_sensors(path: Path, rows: int, seed: int = 1) -> None:
    """id,sensor,value,flag with a header, the demo's shape (values with 2 decimals)."""
    rnd = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "sensor", "value", "flag"])
        for i in range(rows):
            w.writerow([i, f"s{rnd.randrange(4)}", f"{rnd.uniform(-50, 150):.2f}",
                        rnd.randrange(2)])


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """exports: data/ (sensors.csv, sub/, links), other/ (secret.csv), outside/ (not exported)."""
    root = tmp_path_factory.mktemp("stord-data")
    data, other, outside = root / "data", root / "other", root / "outside"
    for d in (data, other, outside, data / "sub"):
        d.mkdir()
    write_sensors(data / "sensors.csv", SENSORS_ROWS)
    write_sensors(data / "sub" / "more.csv", 25, seed=2)
    write_sensors(other / "secret.csv", 10, seed=3)
    (outside / "passwd.csv").write_text("a,b\n1,2\n")
    (data / "empty.csv").write_text("")
    (data / "link_out.csv").symlink_to(outside / "passwd.csv")
    (data / "link_dir_out").symlink_to(outside)
    (data / "link_in.csv").symlink_to(data / "sensors.csv")
    return root


def write_config(path: Path, root: Path, *, tenants: bool = True, limits: str = "",
                 extra: str = "", budget: int = TEST_BUDGET, grace: float = 5) -> Path:
    text = f'''listen = "127.0.0.1:0"
workers = 2
shutdown_grace_seconds = {grace}
{extra}
[exports]
data = "{root / 'data'}"
other = "{root / 'other'}"
'''
    if tenants:
        text += f'''
[tenants.alice]
token = "{ALICE}"
exports = ["data"]
[tenants.bob]
token = "{BOB}"
exports = ["other"]
'''
    text += f"\n[limits]\ninstruction_budget = {budget}\n{limits}\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def daemon_factory(tmp_path_factory: pytest.TempPathFactory,
                   data_root: Path) -> Iterator[Callable[..., Daemon]]:
    """start(name, tenants=True, limits="", extra="", budget=N) -> a running Daemon (stopped
    at the end of the session). `limits` and `extra` are TOML lines for [limits] / the top."""
    started: list[Daemon] = []

    def start(name: str, **kw: object) -> Daemon:
        d = tmp_path_factory.mktemp(f"stord-{name}")
        cfg = write_config(d / "stord.toml", data_root, **kw)  # type: ignore[arg-type]
        daemon = start_daemon(cfg, d / "stord.log")
        started.append(daemon)
        return daemon

    yield start
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """The shared daemon: tenants alice (export data) and bob (export other)."""
    return daemon_factory("main")


@pytest.fixture(scope="session")
def engine() -> str:
    """Tests run on the reference interpreter: exact and available wherever Python is."""
    from stord.engines.base import available_engines
    reason = available_engines().get("interp")
    if reason is not None:
        pytest.skip(f"interp engine not available: {reason}")
    return "interp"


# ------------------------------------------------------------------ oracle (Python csv module)

def csv_rows(path: Path, header: bool = True, delimiter: str = ",") -> list[list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    return rows[1:] if header else rows


# What stord calls a number (bpf/README.md): [+-]digits[.digits], one digit run may be
# empty; no exponent, no spaces. Everything else is skipped (or empty), never folded in.
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def number(field: str) -> Decimal | None:
    return Decimal(field) if NUMBER.fullmatch(field) else None


def csv_numbers(path: Path, column: int, header: bool = True) -> list[Decimal]:
    """The column's values that are numbers (the rest is what stord calls skipped)."""
    out = []
    for row in csv_rows(path, header):
        v = number(row[column]) if column < len(row) else None
        if v is not None:
            out.append(v)
    return out


@pytest.fixture(scope="session")
def fast_engine() -> str:
    """jit when it works here (load tests need cached loads in milliseconds), else interp."""
    from stord.engines.base import available_engines
    avail = available_engines()
    if avail.get("jit") is None:
        return "jit"
    if avail.get("interp") is None:
        print(f"jit unavailable ({avail.get('jit')}): load test runs on interp (slow)")
        return "interp"
    pytest.skip(f"no userspace engine: jit: {avail.get('jit')}; interp: {avail.get('interp')}")


MESSY_ROWS = [
    ["name", "value", "group"],
    ["plain", "1.5", "a"],
    ["with, comma", "-2.25", "b"],
    ['with "quotes"', "10", "a"],
    ["multi\nline", "0.0001", "c"],
    ["neg", "-0.5", "b"],
    ["empty value", "", "a"],
    ["not a number", "n/a", "c"],
    ["big", "12345.6789", "a"],
    ["last", "7", "b"],
]


@pytest.fixture(scope="session")
def messy(data_root: Path) -> Path:
    """RFC 4180 quoting (delimiters, quotes and a newline inside fields), CRLF, negatives,
    an empty and an unparseable value, and no newline after the last record."""
    p = data_root / "data" / "messy.csv"
    import io
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(MESSY_ROWS)
    p.write_bytes(buf.getvalue().encode().rstrip(b"\r\n"))
    return p


def oracle(name: str, path: Path, params: dict) -> object:
    """What built-in `name` must answer, computed with the csv module and Decimal."""
    header = bool(params.get("header", False))
    rows = csv_rows(path, header)
    col = params.get("column")
    if name == "grep":
        lines = path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        pat = params["pattern"].encode()
        return {"lines": len(lines), "matches": sum(pat in ln for ln in lines)}
    if name == "count" and col is None:
        return len(rows)
    vals = csv_numbers(path, col, header)
    if name == "count":
        limit = Decimal(str(params["value"]))
        op = {"eq": "__eq__", "ne": "__ne__", "lt": "__lt__", "le": "__le__", "gt": "__gt__",
              "ge": "__ge__"}[params["op"]]
        return sum(1 for v in vals if getattr(v, op)(limit))
    if name == "sum":
        return float(sum(vals))
    if name == "avg":
        return float(sum(vals) / len(vals)) if vals else None
    if name in ("min", "max"):
        return float((min if name == "min" else max)(vals)) if vals else None
    if name == "hist":
        lo, width, n = Decimal(str(params["lo"])), Decimal(str(params["width"])), params["nbuckets"]
        counts, below, above = [0] * n, 0, 0
        for v in vals:
            i = int((v - lo) // width) if v >= lo else -1
            if i < 0:
                below += 1
            elif i >= n:
                above += 1
            else:
                counts[i] += 1
        return {"counts": counts, "below": below, "above": above}
    if name == "groupby":
        key = params["key"]
        groups: dict[str, list[Decimal]] = {}
        for row in rows:
            k = row[key]
            groups.setdefault(k, [])
            v = number(row[col]) if col < len(row) else None
            if v is not None:
                groups[k].append(v)
        return {k: {"count": len(v), "sum": float(sum(v))} for k, v in groups.items()}
    raise AssertionError(f"no oracle for {name}")


def same_answer(name: str, got: object, want: object) -> None:
    """Compare a built-in's finished value with the oracle's (floats to 1e-12 relative)."""
    if name == "hist":
        assert isinstance(got, dict) and isinstance(want, dict)
        assert {k: got[k] for k in ("counts", "below", "above")} == want
    elif name == "groupby":
        assert isinstance(got, dict) and isinstance(want, dict)
        assert set(got) == set(want)
        for k, w in want.items():
            assert got[k]["count"] == w["count"]
            assert got[k]["sum"] == pytest.approx(w["sum"], rel=1e-12, abs=1e-9)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-9)
    else:
        assert got == want


# (name, file fixture, params) for every built-in: columns by index and by header name
BUILTIN_CASES = [
    ("count", "sensors", {"header": True}),
    ("count", "messy", {"header": True}),
    ("count", "sensors", {"header": True, "column": 2, "op": "gt", "value": "10.5"}),
    ("count", "messy", {"header": True, "column": 1, "op": "le", "value": 0}),
    ("sum", "sensors", {"header": True, "column": "value"}),
    ("sum", "messy", {"header": True, "column": 1}),
    ("avg", "sensors", {"header": True, "column": 2}),
    ("avg", "messy", {"header": True, "column": "value"}),
    ("min", "sensors", {"header": True, "column": "value"}),
    ("min", "messy", {"header": True, "column": 1}),
    ("max", "sensors", {"header": True, "column": 2}),
    ("max", "messy", {"header": True, "column": 1}),
    ("hist", "sensors", {"header": True, "column": 2, "lo": -25, "width": "12.5",
                         "nbuckets": 10}),
    ("hist", "messy", {"header": True, "column": 1, "lo": 0, "width": 1, "nbuckets": 8}),
    ("grep", "sensors", {"pattern": "s1"}),
    ("grep", "messy", {"pattern": "line"}),
    ("groupby", "sensors", {"header": True, "key": 1, "column": 2}),
    ("groupby", "messy", {"header": True, "key": "group", "column": "value"}),
]


def resolve_names(params: dict, path: Path) -> dict:
    """The oracle works with indexes: header names -> positions."""
    out = dict(params)
    with open(path, newline="") as f:
        names = next(csv.reader(f))
    for k in ("column", "key"):
        if isinstance(out.get(k), str):
            out[k] = names.index(out[k])
    return out


@pytest.fixture(scope="session", params=["interp", "jit"])
def sandbox_engine(request: pytest.FixtureRequest) -> str:
    """Userspace engines that must contain hostile programs: each one in turn."""
    from stord.engines.base import available_engines
    reason = available_engines().get(request.param)
    if reason is not None:
        pytest.skip(f"{request.param} engine not available: {reason}")
    return request.param
