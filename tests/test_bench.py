"""Smoke tests of the benchmark code on tiny inputs; oracles are DuckDB and Python's csv."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import competitors, datagen, report
from bench.measure import Throughput

REPO = Path(__file__).resolve().parent.parent


def duck_sum_count(path: str) -> tuple[Decimal, int]:
    """DuckDB's own parse (types sniffed, nothing told) of the value column."""
    con = duckdb.connect()
    s, n = con.execute("SELECT sum(value::DECIMAL(18,2)), count(value) FROM read_csv(?)",
                       [path]).fetchone()
    con.close()
    return Decimal(s), n


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), negative=st.booleans(),
       size=st.integers(30, 40_000))
def test_generator_matches_duckdb_and_csv(tmp_path: Path, seed: int, negative: bool,
                                          size: int) -> None:
    ds = datagen.generate(tmp_path / f"g{seed}.csv", size, seed=seed, negative=negative)
    assert os.path.getsize(ds.path) == ds.size
    s, n = duck_sum_count(ds.path)
    assert n == ds.rows
    assert s == Decimal(ds.sum_cents) / 100
    with open(ds.path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "sensor", "value", "flag"]
    assert all(len(r) == 4 for r in rows[1:])
    assert all(len(r[2].split(".")[1]) == 2 for r in rows[1:])
    assert any(Decimal(r[2]) < 0 for r in rows[1:]) or not negative or ds.rows < 50
    assert all(Decimal(r[2]) >= 0 for r in rows[1:]) or negative


def test_ensure_reuses_an_existing_file(tmp_path: Path) -> None:
    a = datagen.ensure(tmp_path, 5000, seed=3)
    mtime = os.path.getmtime(a.path)
    b = datagen.ensure(tmp_path, 5000, seed=3)
    assert a == b and os.path.getmtime(b.path) == mtime


cents = st.integers(-10**9, 10**9)


def fmt_value(c: int, style: int) -> str:
    """Two-decimal values in the spellings a CSV may use: 12.30, 12.3, 12, -0.05."""
    sign = "-" if c < 0 else ""
    c = abs(c)
    whole, frac = divmod(c, 100)
    if style == 1 and frac % 10 == 0:
        return f"{sign}{whole}.{frac // 10}"
    if style == 2 and frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:02d}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cents, st.integers(0, 2), st.text("abcxyz_ ", max_size=8)),
                     min_size=1, max_size=60),
       trailing_newline=st.booleans())
def test_c_baseline_equals_duckdb(tmp_path: Path, rows: list[tuple[int, int, str]],
                                  trailing_newline: bool) -> None:
    text = "id,sensor,value,flag\n" + "\n".join(
        f"{i},{name},{fmt_value(c, style)},{i % 2}" for i, (c, style, name) in enumerate(rows))
    p = tmp_path / "t.csv"
    p.write_text(text + ("\n" if trailing_newline else ""))
    (n, s, avg, _t), = competitors.run_baseline(str(p))
    con = duckdb.connect()
    ds, dn, davg = con.execute(
        "SELECT sum(value), count(*), avg(value)::DOUBLE FROM read_csv(?, header=true, "
        f"columns={competitors.DUCKDB_COLUMNS})", [str(p)]).fetchone()
    con.close()
    assert n == dn == len(rows)
    assert Decimal(s) / 100 == ds
    assert avg == pytest.approx(davg, rel=1e-12, abs=1e-12)


def csv_rows_and_cents(text: str, header: bool) -> tuple[int, int]:
    """Rows and exact hundredths of the value column, from Python's csv module."""
    records = list(csv.reader(io.StringIO(text, newline="")))[1 if header else 0:]
    return len(records), sum(int(Decimal(r[2]) * 100) for r in records)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cents, st.integers(0, 2), st.text("abcxyz_ ", max_size=8)),
                     min_size=1, max_size=40),
       header=st.booleans(), trailing_newline=st.booleans(),
       cuts=st.lists(st.integers(0, 1000), max_size=4), reverse=st.booleans())
def test_c_baseline_over_ranges_equals_whole_file_and_csv(
        tmp_path: Path, rows: list[tuple[int, int, str]], header: bool, trailing_newline: bool,
        cuts: list[int], reverse: bool) -> None:
    lines = ["id,sensor,value,flag"] if header else []
    lines += [f"{i},{name},{fmt_value(c, style)},{i % 2}"
              for i, (c, style, name) in enumerate(rows)]
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    p = tmp_path / "r.csv"
    p.write_bytes(text.encode())
    starts = [0]                        # where each line starts: the line-aligned cut points
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    bounds = sorted({0, len(text), *(starts[c % len(starts)] for c in cuts)})
    ranges = list(zip(bounds, bounds[1:], strict=False)) or [(0, 0)]
    if reverse:
        ranges.reverse()                # the order of the ranges changes nothing
    want = csv_rows_and_cents(text, header)
    (n, s, avg, t), = competitors.run_baseline(str(p), header=header, ranges=ranges)
    assert (n, s) == want
    assert avg == pytest.approx(s / 100 / n, rel=1e-12) and t >= 0
    (wn, ws, _, _), = competitors.run_baseline(str(p), header=header)
    assert (wn, ws) == want
    # one process per range, as the jit bench runs them: the parts add up to the whole
    parts = [competitors.run_baseline(str(p), header=header, ranges=[r])[0] for r in ranges]
    assert (sum(x[0] for x in parts), sum(x[1] for x in parts)) == want


def test_c_baseline_over_ranges_repeats_and_generated_data(tmp_path: Path) -> None:
    from bench import jitbench

    ds = datagen.generate(tmp_path / "g.csv", 50_000, seed=23)
    rs = jitbench.plan(ds.path, 3)
    assert len(rs) == 3
    out = competitors.run_baseline(ds.path, repeat=3, ranges=rs)
    assert [(n, s) for n, s, _, _ in out] == [(ds.rows, ds.sum_cents)] * 3
    assert all(t > 0 for *_, t in out)
    # the header is skipped in the range at 0 only, wherever that range comes in the list
    (n, s, _, _), = competitors.run_baseline(ds.path, ranges=rs[::-1])
    assert (n, s) == (ds.rows, ds.sum_cents)
    with pytest.raises(ValueError):
        competitors.run_baseline(ds.path, ranges=[])


@pytest.mark.parametrize("ranges, message", [
    (["0"], "pairs"),
    (["0", "10", "10"], "pairs"),
    (["10", "5"], "START 10 is after END 5"),
    (["0", "54"], "ends past the end"),
    (["0", "21", "21", "1000"], "range 2 [21, 1000) ends past the end"),
    (["-1", "5"], "byte offsets"),
    (["0", "x"], "byte offsets"),
    (["0", "5junk"], "byte offsets"),
    (["", "5"], "byte offsets"),
])
def test_c_baseline_rejects_bad_ranges(tmp_path: Path, ranges: list[str], message: str) -> None:
    p = tmp_path / "b.csv"
    p.write_text("id,sensor,value,flag\n1,a,1.50,0\n2,b,-2.25,1\n3,c,10,0\n")
    assert p.stat().st_size == 53
    exe = competitors.build_baseline()
    r = subprocess.run([str(exe), str(p), "2", "1", "1", *ranges], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert message in r.stderr
    ok = subprocess.run([str(exe), str(p), "2", "1", "1", "0", "53"], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and ok.stdout.split()[:2] == ["3", "925"]
    if ranges[1:] and ranges[0].isdigit() and ranges[1].isdigit() and len(ranges) % 2 == 0:
        pairs = [(int(a), int(b)) for a, b in zip(ranges[::2], ranges[1::2], strict=True)]
        with pytest.raises(competitors.BaselineError, match="avg.c failed"):
            competitors.run_baseline(str(p), ranges=pairs)


# -- the same-job C baseline (bench/baseline/avg_same.c) against stord and Python's csv ----

STATS = ("rows", "count", "sum", "empty", "skipped", "overflow", "min", "max")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
NUMBER = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")


def same_job(path: Path, col: int, header: bool, scale: int, delim: str) -> tuple[int, ...]:
    (r,) = competitors.run_same_job(str(path), col, header, 1, scale, delim)
    return tuple(getattr(r, k) for k in STATS)


def stord_stats(path: Path, col: int, header: bool, scale: int, delim: str) -> tuple[int, ...]:
    """stord's own answer: the built-in's program on the reference (interp) engine."""
    from stord.engines.base import DEFAULT_BUDGET
    from stord.query.builtins import resolve
    from stord.query.executor import execute

    prog, _ = resolve("stats", {"column": col, "header": header, "scale": scale,
                                "delimiter": delim})
    state = execute(prog, str(path), engine="interp", budget=DEFAULT_BUDGET)["state"]
    return tuple(int(state[k]) for k in STATS)


def oracle_value(field: str, scale: int) -> tuple[str, int]:
    """("ok" | "empty" | "skipped" | "overflow", fixed-point value) of one field."""
    if field == "":
        return "empty", 0
    m = NUMBER.fullmatch(field)
    if not m or not (m[2] or m[3]):
        return "skipped", 0
    frac = (m[3] or "")[:scale]              # digits past the scale are truncated
    digits = int(m[2] + frac or "0")
    if digits * 10 ** (scale - len(frac)) > INT64_MAX:
        return "overflow", 0
    v = digits * 10 ** (scale - len(frac))
    return "ok", -v if m[1] == "-" else v


def csv_oracle(text: str, col: int, header: bool, scale: int, delim: str) -> tuple[int, ...]:
    """rows/count/sum/... from Python's csv module and Decimal-free integer arithmetic."""
    records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delim) if r]
    if header:
        records = records[1:]
    n = {"rows": len(records), "count": 0, "empty": 0, "skipped": 0, "overflow": 0}
    total, lo, hi = 0, INT64_MAX, INT64_MIN
    for r in records:
        status, v = oracle_value(r[col] if col < len(r) else "", scale)
        if status != "ok":
            n[status] += 1
            continue
        n["count"] += 1
        total += v
        if not INT64_MIN <= total <= INT64_MAX:   # a sum that leaves int64: counted, wraps
            n["overflow"] += 1
            total = (total - INT64_MIN) % (1 << 64) + INT64_MIN
        lo, hi = min(lo, v), max(hi, v)
    return (n["rows"], n["count"], total, n["empty"], n["skipped"], n["overflow"], lo, hi)


BOUNDARY = ["9223372036854775807", "9223372036854775799", "92233720368547758.07",
            "92233720368547757.99", "-92233720368547758.07", "4611686018427387904",
            "90000000000000000", "0000000000000000000000001.5", "1.99999999999999999999"]
JUNK = ["1a", "-", "+", ".", "-.", "1.2.3", "--1", "+-1", " 1", "1 ", "1e5", "0x10", "é", "x"]
number = st.builds(lambda sign, whole, frac: sign + whole + ("" if frac is None else "." + frac),
                   st.sampled_from(["", "", "-", "+"]), st.text("0123456789", max_size=21),
                   st.none() | st.text("0123456789", max_size=6))
# Text with delimiters, quotes and newlines: csv.writer quotes it (CR only inside CRLF, which
# csv.writer always quotes; a lone CR outside quotes is covered by the raw test below).
special = st.lists(st.sampled_from([",", ";", "\t", '"', "\r\n", "\n", " ", "a", "1", "."]),
                   max_size=6).map("".join)
field = st.one_of(number, st.sampled_from(BOUNDARY + JUNK), special)
csv_params = dict(col=st.integers(0, 3), header=st.booleans(),
                  scale=st.sampled_from([0, 1, 2, 4, 18]))


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(field, max_size=5), max_size=12),
       delim=st.sampled_from([",", ";", "\t"]), crlf=st.booleans(), quote_all=st.booleans(),
       trailing_newline=st.booleans(), **csv_params)
def test_same_job_equals_stord_and_the_csv_module(tmp_path: Path, rows: list[list[str]],
                                                  delim: str, crlf: bool, quote_all: bool,
                                                  trailing_newline: bool, col: int,
                                                  header: bool, scale: int) -> None:
    buf = io.StringIO()
    lt = "\r\n" if crlf else "\n"
    csv.writer(buf, delimiter=delim, lineterminator=lt,
               quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(rows)
    text = buf.getvalue()   # an empty row is a blank line
    if not trailing_newline and text.endswith(lt):
        text = text[: -len(lt)]
    p = tmp_path / "s.csv"
    p.write_bytes(text.encode())
    got = same_job(p, col, header, scale, delim)
    assert got == stord_stats(p, col, header, scale, delim)
    assert got == csv_oracle(text, col, header, scale, delim)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(["0", "1", "7", "9" * 10, ".", "-", "+", ",", ";", '"',
                                       '""', "\r", "\n", "\r\n", " ", "a", *BOUNDARY]),
                      max_size=40),
       delim=st.sampled_from([",", ";", " "]), **csv_params)
def test_same_job_equals_stord_on_raw_bytes(tmp_path: Path, parts: list[str], delim: str,
                                            col: int, header: bool, scale: int) -> None:
    """Any byte soup (stray quotes, lone CRs, quotes mid-field): the same answer as stord."""
    p = tmp_path / "raw.csv"
    p.write_bytes("".join(parts).encode())
    assert same_job(p, col, header, scale, delim) == stord_stats(p, col, header, scale, delim)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), size=st.integers(30, 40_000))
def test_same_job_on_generated_data_equals_duckdb(tmp_path: Path, seed: int, size: int) -> None:
    ds = datagen.generate(tmp_path / f"d{seed}.csv", size, seed=seed)
    scale = competitors.stord_avg_scale()
    (r,) = competitors.run_same_job(ds.path, scale=scale)
    s, n = duck_sum_count(ds.path)
    assert (r.rows, r.count, r.empty, r.skipped, r.overflow) == (n, n, 0, 0, 0)
    assert Decimal(r.sum).scaleb(-scale) == s
    con = duckdb.connect()
    lo, hi, davg = con.execute("SELECT min(value::DECIMAL(18,2)), max(value::DECIMAL(18,2)), "
                               "avg(value::DECIMAL(18,2))::DOUBLE FROM read_csv(?)",
                               [ds.path]).fetchone()
    con.close()
    assert (Decimal(r.min).scaleb(-scale), Decimal(r.max).scaleb(-scale)) == (lo, hi)
    assert r.avg == pytest.approx(davg, rel=1e-12)
    rec = competitors.c_same_job(ds, 2)
    assert rec.ok, rec.error
    assert len(rec.times) == 2 and all(t > 0 for t in rec.times)


def test_competitors_agree_on_a_generated_file(tmp_path: Path) -> None:
    ds = datagen.generate(tmp_path / "c.csv", 60_000, seed=7)
    recs = [competitors.c_baseline(ds, 2), competitors.c_same_job(ds, 2),
            competitors.duckdb_avg(ds, 1, threads=1),
            competitors.duckdb_avg(ds, 1, threads=2), competitors.pandas_avg(ds, 1),
            competitors.csv_module_avg(ds, 1)]
    for r in recs:
        assert r.ok, (r.name, r.error)
        assert r.times and all(t > 0 for t in r.times)
    # A wrong answer must be reported as an error, not as a throughput.
    bad = datagen.Dataset(ds.path, ds.size, ds.rows, ds.sum_cents + 1, ds.seed, ds.negative)
    assert not competitors.c_baseline(bad, 1).ok
    assert not competitors.c_same_job(bad, 1).ok
    assert not competitors.duckdb_avg(bad, 1, threads=1).ok


def test_report_tables_from_measured_records(tmp_path: Path) -> None:
    ds = datagen.generate(tmp_path / "r.csv", 20_000, seed=2)
    recs = [competitors.c_baseline(ds, 2), competitors.duckdb_avg(ds, 2, threads=1),
            competitors.c_same_job(ds, 2)]
    res = {"machine": {"date_utc": "x", "git_commit": "x", "nproc": 2, "cpu_model": "x",
                       "memory_gib": 1, "kernel": "x", "python": "x", "gcc": "x",
                       "loadavg_start": (0, 0, 0), "packages": {}},
           "config": {"command": "test"}, "dataset": vars(ds),
           "throughput": [r.to_dict() for r in recs], "problems": []}
    md = report.markdown(res)
    c_row = next(line for line in md.splitlines() if line.startswith("| C baseline"))
    assert "1.00×" in c_row
    ratio = recs[0].best / recs[1].best  # same bytes: the ratio of speeds is that of times
    duck_row = next(line for line in md.splitlines() if line.startswith("| DuckDB"))
    cells = [c.strip() for c in duck_row.strip("|").split("|")]
    assert float(cells[7].rstrip("×")) == pytest.approx(ratio, rel=0.01)
    same_row = next(line for line in md.splitlines() if line.startswith("| C same job"))
    cells = [c.strip() for c in same_row.strip("|").split("|")]
    assert cells[9] == "1.00×" and cells[-1] == "exact"
    assert float(cells[7].rstrip("×")) == pytest.approx(recs[0].best / recs[2].best, rel=0.01)
    # A stord jit row gets a line with its ratio to both baselines, each named.
    jit = Throughput("stord jit", ds.size, times=[t / 2 for t in recs[2].times], value=ds.avg,
                     expected=ds.avg)
    line = report.jit_vs_c(dict(res, throughput=res["throughput"] + [jit.to_dict()]))
    assert "2.00× (median 2.00×) the same-job C baseline" in line and "the naive C baseline" in line
    rounds = {"jit_vs_c": [0.5, 2.0, 1.5], "jit_vs_c_same_job": [], "jit_vs_duckdb_1_thread": [3.0]}
    line = report.jit_vs_c(dict(res, throughput=res["throughput"] + [jit.to_dict()],
                                rounds=rounds))
    assert "3 rounds" in line and "naive C 1.50× (range 0.500×-2.00×)" in line
    assert "DuckDB 1 thread 3.00×" in line and "same-job C 1" not in line
    # balanced jit/DuckDB rounds get their own sentence, even without the C ones
    line = report.jit_vs_c(dict(res, throughput=res["throughput"] + [jit.to_dict()],
                                balanced={"jit_vs_duckdb_1_thread": [2.5, 3.5, 3.0, 2.0],
                                          "errors": []}))
    assert "In 4 balanced rounds of the jit and DuckDB 1 thread alone" in line
    assert "DuckDB 1 thread: 2.75×" in line and "balanced rounds of the C loops" not in line
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# title\nkept above\n{report.BEGIN}\nold\n{report.END}\nkept below\n")
    report.update_results_md(out, md)
    text = out.read_text()
    assert "kept above" in text and "kept below" in text and "old" not in text


def test_interleaved_contenders_run_round_robin(tmp_path: Path) -> None:
    from bench import engines
    from bench.measure import interleave, round_ratios

    ds = datagen.generate(tmp_path / "i.csv", 30_000, seed=3)
    order: list[str] = []
    cs = [competitors.c_baseline_contender(ds), engines.stord_contender(ds, "jit"),
          competitors.duckdb_contender(ds, 1)]
    for c in cs:   # note who ran when, around the real run
        c.once = (lambda name, f: lambda: (order.append(name), f())[1])(c.rec.name, c.once)
    c_rec, jit, duck = interleave(cs, 3)
    assert order == [c.rec.name for c in cs] * 3
    assert all(r.ok and len(r.times) == 3 for r in (c_rec, jit, duck))
    want = [a / b for a, b in zip(c_rec.times, jit.times, strict=True)]
    assert round_ratios(c_rec, jit) == pytest.approx(want)
    # a contender that fails keeps its error and stops; the others go on
    bad = datagen.Dataset(**{**vars(ds), "sum_cents": ds.sum_cents + 1})
    broken, fine = interleave([competitors.c_baseline_contender(bad),
                               competitors.c_same_job_contender(ds)], 2)
    assert "baseline counted" in broken.error and not broken.times
    assert fine.ok and len(fine.times) == 2


def test_balanced_rounds_run_forward_then_back(tmp_path: Path) -> None:
    from bench import engines
    from bench.measure import balanced

    ds = datagen.generate(tmp_path / "b.csv", 30_000, seed=4)
    order: list[str] = []
    runs: dict[str, list[float]] = {}
    cs = [competitors.c_baseline_contender(ds), engines.stord_contender(ds, "jit")]
    for c in cs:   # note who ran when, and each run's own time
        def once(name=c.rec.name, f=c.once):
            t, v = f()
            order.append(name)
            runs.setdefault(name, []).append(t)
            return t, v
        c.once = once
    c_rec, jit = balanced(cs, 2)
    names = [c.rec.name for c in cs]
    assert order == (names + names[::-1]) * 2
    # a round's time is the sum of the contender's two runs in it
    for rec in (c_rec, jit):
        r = runs[rec.name]
        assert rec.ok and rec.times == pytest.approx([r[0] + r[1], r[2] + r[3]])
    bad = datagen.Dataset(**{**vars(ds), "sum_cents": ds.sum_cents + 1})
    broken, fine = balanced([competitors.c_baseline_contender(bad),
                             competitors.c_same_job_contender(ds)], 2)
    assert "baseline counted" in broken.error and not broken.times
    assert fine.ok and len(fine.times) == 2


def _can_make_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode:
        return "iproute2 `ip` is missing"
    return None


def test_netns_pull_moves_the_whole_file_over_the_link(tmp_path: Path) -> None:
    reason = _can_make_netns()
    if reason:
        pytest.skip(reason)
    from pyroute2 import netns

    from bench.netns import SERVER_IP, Testbed, wait_port
    ds = datagen.generate(tmp_path / "n.csv", 300_000, seed=5)
    with Testbed("100mbit") as tb:
        names = set(tb.ns.values())
        assert names <= set(netns.listnetns())
        tb.popen("server", [sys.executable, "-m", "bench.pull", "serve", SERVER_IP, "9199"],
                 cwd=REPO)
        wait_port(tb, "client", SERVER_IP, 9199)
        before = tb.counters()
        r = tb.run("client", [sys.executable, "-m", "bench.pull", "fetch", SERVER_IP, "9199",
                              ds.path])
        delta = tb.counters() - before
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["bytes"] == ds.size
        assert out["avg"] == pytest.approx(ds.avg, rel=1e-12)
        # The link carried the file plus TCP/IP framing, and the two ends agree.
        assert ds.size < delta.server_tx < ds.size * 1.2
        assert delta.server_tx == delta.client_rx
        assert 0 < delta.client_tx < ds.size // 10
    assert not names & set(netns.listnetns())


def test_stord_engines_through_the_executor_are_exact(tmp_path: Path) -> None:
    from bench import engines
    from stord.engines.base import available_engines

    ds = datagen.generate(tmp_path / "e.csv", 4_000, seed=11)
    avail = available_engines()
    ran = []
    for name in ("jit", "interp", "kernel"):
        if avail.get(name) is not None:
            print(f"engine {name} not measured here: {avail[name]}")
            continue
        rec = engines.stord_engine(ds, name, 1)
        assert rec.ok, (name, rec.error)
        ran.append(name)
    assert "interp" in ran  # the reference engine runs everywhere


def test_jit_ranges_over_two_processes_give_the_exact_average(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stord.query.executor as executor
    from bench import jitbench
    from stord.engines.base import available_engines

    if available_engines().get("jit") is not None:
        pytest.skip(f"jit unavailable: {available_engines()['jit']}")
    ds = datagen.generate(tmp_path / "j.csv", 200_000, seed=13)
    # who ran when: the jit side merges its ranges once per pool, the C side starts its
    # processes once per 1-process or 2-process run
    order: list[str] = []
    merge, c_processes = executor.merge_ranges, jitbench._c_processes
    monkeypatch.setattr(executor, "merge_ranges",
                        lambda rs: (order.append("jit"), merge(rs))[1])
    monkeypatch.setattr(jitbench, "_c_processes",
                        lambda exe, d, groups: (order.append(f"c{len(groups)}"),
                                                c_processes(exe, d, groups))[1])
    r = jitbench.ranges(ds, 2)  # raises when a merged result differs from the exact one
    assert r["ranges"] == 2
    a, b = r["bounds"]
    assert a[0] == 0 and a[1] == b[0] and b[1] == ds.size
    with open(ds.path, "rb") as f:
        data = f.read()
    assert data[a[1] - 1:a[1]] == b"\n"  # the cut is on a record boundary
    # an untimed C run of each kind, then the rounds: jit first, then C first
    assert order == ["c1", "c2"] + ["jit", "jit", "c1", "c2"] + ["c1", "c2", "jit", "jit"]
    assert r["c_error"] == ""
    for key in ("workers1_s", "workers2_s", "speedup", "speedup_rounds", "c_workers1_s",
                "c_workers2_s", "c_speedup", "c_speedup_rounds"):
        assert r[key] > 0, key
    for samples in (r["samples"], r["c_samples"]):
        assert sorted(samples) == [1, 2] and all(len(v) == 2 and min(v) > 0
                                                 for v in samples.values())
    c = r["c_samples"]
    assert r["c_speedup"] == pytest.approx(
        (c[1][0] + c[1][1]) / (c[2][0] + c[2][1]))  # median of two: their mean
    assert r["c_speedup_rounds"] == pytest.approx((c[1][0] / c[2][0] + c[1][1] / c[2][1]) / 2)
    md = report.jit_table({"jit": {"ranges": json.loads(json.dumps(r)), "problems": []}})
    assert "C baseline (avg.c), same 2 ranges, 1 vs 2 processes" in md


def test_c_processes_check_the_answer(tmp_path: Path) -> None:
    from bench import jitbench

    ds = datagen.generate(tmp_path / "k.csv", 20_000, seed=29)
    exe = competitors.build_baseline()
    rs = jitbench.plan(ds.path, 2)
    assert jitbench._c_processes(exe, ds, [rs]) > 0
    assert jitbench._c_processes(exe, ds, [[r] for r in rs]) > 0
    bad = datagen.Dataset(**{**vars(ds), "rows": ds.rows + 1})
    with pytest.raises(RuntimeError, match="2 process"):
        jitbench._c_processes(exe, bad, [[r] for r in rs])
    with pytest.raises(competitors.BaselineError, match="ends past the end"):
        jitbench._c_processes(exe, ds, [[(0, ds.size + 1)]])


def test_jit_ranges_without_a_c_compiler_still_measure_the_jit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import jitbench
    from stord.engines.base import available_engines

    if available_engines().get("jit") is not None:
        pytest.skip(f"jit unavailable: {available_engines()['jit']}")

    def no_gcc() -> Path:
        raise competitors.BaselineError("gcc failed: no gcc here")

    monkeypatch.setattr(competitors, "build_baseline", no_gcc)
    ds = datagen.generate(tmp_path / "n.csv", 100_000, seed=31)
    r = jitbench.ranges(ds, 1)
    assert "no gcc here" in r["c_error"] and "c_speedup" not in r
    assert r["workers1_s"] > 0 and r["speedup"] > 0
    # run() logs both and files the missing control as a problem
    monkeypatch.setattr(jitbench, "compile_times", lambda path, n: {
        "compile_cold_s": 0.05, "compile_cached_s": 0.001, "compile_memory_s": 0.0001,
        "compile_beside_s": 0.06})
    monkeypatch.setattr(jitbench, "ranges", lambda ds, runs: r)
    logged: list[str] = []
    out = jitbench.run(ds, 1, log=logged.append)
    assert any("C loop not measured" in m and "per round" in m for m in logged)
    assert out["problems"] == [f"ranges, C control: {r['c_error']}"]
    ok = dict(r, c_error="", c_workers1_s=0.2, c_workers2_s=0.125, c_speedup=1.6,
              c_speedup_rounds=1.62)
    monkeypatch.setattr(jitbench, "ranges", lambda ds, runs: ok)
    logged.clear()
    out = jitbench.run(ds, 1, log=logged.append)
    assert not out["problems"]
    assert any("C loop over the same ranges: 1 process 200.0 ms, 2 processes 125.0 ms, "
               "1.60x (per round 1.62x)" in m for m in logged)


def test_jit_compile_probes_time_real_loads(tmp_path: Path) -> None:
    """The compile figures come from loads in fresh processes: the cold one leaves avg's
    template, first-tier and O2 code on disk and the next process loads from them; the
    other probe loads count cold right after avg, and both programs' code lands."""
    from bench import jitbench

    ds = datagen.generate(tmp_path / "p.csv", 20_000, seed=5)
    cache = tmp_path / "cache"
    cold = jitbench._probe_subprocess(ds.path, str(cache))
    assert cold["first_s"] > 0 and cold["o2_ready_s"] >= cold["first_s"]
    assert cold["cache_files"] == 3
    again = jitbench._probe_subprocess(ds.path, str(cache))
    assert again["cache_files"] == 3 and again["first_s"] > 0
    other = tmp_path / "other"
    beside = jitbench._probe_subprocess(ds.path, str(other), "beside")
    assert beside["beside_s"] > 0
    kinds = sorted(p.name.split(".", 1)[1] for p in other.iterdir())
    assert kinds == ["fast.o", "fast.o", "ll", "ll", "o", "o"], kinds
    table = report.jit_table({"jit": {"compile_cold_s": cold["first_s"],
                                      "compile_cached_s": again["first_s"],
                                      "compile_beside_s": beside["beside_s"]}})
    assert "compile `count` cold, while `avg`'s O2 code compiles" in table


def test_jit_table_with_and_without_the_c_control() -> None:
    old = {"ranges": 2, "workers1_s": 0.28, "workers2_s": 0.16, "speedup": 1.75,
           "mbps1": 460.0, "mbps2": 800.0, "samples": {"1": [0.28], "2": [0.16]},
           "bounds": [[0, 10], [10, 20]]}
    table = report.jit_table({"jit": {"ranges": old, "problems": []}})  # results from before
    assert "speed-up 1.75×" in table and "per-round" not in table and "avg.c" not in table
    new = dict(old, speedup_rounds=1.78, c_error="", c_workers1_s=0.15, c_workers2_s=0.1,
               c_speedup=1.5, c_speedup_rounds=1.52)
    table = report.jit_table({"jit": {"ranges": new, "problems": []}})
    assert "speed-up 1.75× (median of the per-round ratios 1.78×)" in table
    c_row = next(line for line in table.splitlines() if "C baseline (avg.c)" in line)
    cells = [c.strip() for c in c_row.strip("|").split("|")]
    assert cells[0] == "C baseline (avg.c), same 2 ranges, 1 vs 2 processes"
    assert cells[1] == "150.00 ms / 100.00 ms"
    assert cells[2].startswith("speed-up 1.50× (median of the per-round ratios 1.52×)")
    assert "same rounds" in cells[2]


def test_netns_stord_pushdown_returns_only_the_aggregate(tmp_path: Path) -> None:
    reason = _can_make_netns()
    if reason:
        pytest.skip(reason)
    from bench import pushdown

    ds = datagen.generate(tmp_path / "p.csv", 400_000, seed=17)
    runs, problems = pushdown.run(ds, ["1gbit"], 1, workers=1, log=lambda m: None)
    assert not problems, problems
    by = {r.method.split()[0]: r for r in runs}
    assert by["pull"].correct and by["stord"].correct
    assert by["pull"].server_to_client > ds.size
    # An aggregate and its stats: a few hundred bytes of frames, far below the file.
    assert 0 < by["stord"].server_to_client < 20_000
    assert by["stord"].server_cpu_s > 0


def test_latency_harness_against_a_loopback_daemon(tmp_path: Path) -> None:
    from bench import latency

    ds = datagen.generate(tmp_path / "l.csv", 5_000, seed=19)
    out = latency.run(ds, warm_n=5, cold_n=1, sweep=[2], seconds=0.5, log=lambda m: None)
    assert out["warm"]["n"] == 5 and out["cold"]["n"] == 1
    assert out["warm"]["p50"] <= out["warm"]["p99"] <= out["warm"]["max"]
    (lv,) = out["concurrency"]
    assert lv["clients"] == 2 and lv["errors"] == 0 and lv["n"] > 0


def test_hook_vm_result_is_shown_as_a_separate_run(tmp_path: Path) -> None:
    from bench import hookvm

    assert hookvm.load(tmp_path / "missing.json") is None
    secs = {"read": 0.25, "jit": 1.0, "kernel": 4.0, "hook": 0.8}
    p = tmp_path / "bench-hook.json"
    p.write_text(json.dumps({"bytes": 8_000_000, "kernel": "k", "states_equal": True,
                             "seconds": secs,
                             "MB_per_s": {k: 8 / t for k, t in secs.items()}}))
    h = hookvm.load(p)
    table = report.hook_vm_table({"hook_vm": h})
    assert "Not this run" in table and "qemu" in table
    hook_row = next(line for line in table.splitlines() if line.startswith("| hook:"))
    assert float(hook_row.strip("|").split("|")[2].strip().rstrip("×")) == pytest.approx(1.25)
