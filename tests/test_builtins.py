"""The built-in programs (bpf/*.c) on the interp engine against independent oracles
(tests/oracle.py: Python's csv module, Decimal, DuckDB), over generated CSVs in every
chunking and every split into record-aligned ranges merged by reduce."""

from __future__ import annotations

import csv
import io
import random
from typing import Any

import duckdb
import oracle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stord.engines.base import get_engine
from stord.errors import BadRequest, LimitExceeded, ResultOverflow
from stord.query.builtins import BUILTINS, finish, grep_dfa, program_params, resolve
from stord.query.executor import execute, merge_ranges, plan_ranges, run_range
from stord.query.state import decode, reduce_spec

BUDGET = 1 << 40
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENGINE = get_engine("interp")


def run(prog: Any, data: bytes, *, chunk: int = 4096, parts: int = 1) -> dict[str, Any]:
    """Decoded state of prog over data, split into `parts` ranges (each in a fresh instance,
    in chunks of `chunk` bytes) and merged by the reduce spec."""
    results = []
    spec = reduce_spec(prog)
    for a, b in plan_ranges(data, parts):
        with ENGINE.load(prog, budget=BUDGET) as inst:
            rs = run_range(inst, data, a, b, chunk_size=chunk)
            results.append({"state": decode(prog, inst.read_state(), spec), "spec": spec,
                            "bytes_scanned": rs.bytes_scanned, "chunks": rs.chunks})
    merged = merge_ranges(results)
    assert merged["bytes_scanned"] == len(data)
    return merged["state"]


def run_split(prog: Any, data: bytes, cut: int) -> dict[str, Any]:
    """Two chunks, data[:cut] and data[cut:] (LAST), in one instance."""
    with ENGINE.load(prog, budget=BUDGET) as inst:
        inst.run_chunk(data[:cut], 0, False)
        inst.run_chunk(data[cut:], cut, True)
        return decode(prog, inst.read_state())


# -- generated CSV ---------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.decimals(min_value=-10**5, max_value=10**5, places=3, allow_nan=False,
                allow_infinity=False).map(str),
    st.sampled_from(["+7", "-0", ".5", "-.25", "3.", "007", "1.23456", "-9.99"]),
)
JUNK = st.sampled_from(["", "", "abc", "1e5", "-", ".", "1.2.3", " 4", "x\ny", 'say "hi"',
                        "a,b", "a;b", "tab\there", "12\r\n3", "--1", "1-", "NaN", "|"])
FIELD = st.one_of(NUMBERS, NUMBERS, JUNK)


# Long fields of every byte the scanner treats specially, crossing window and chunk ends.
LONG = st.text(alphabet='ab ,;\t|"\r\n.-7', max_size=40)


@st.composite
def csv_files(draw: st.DrawFn, field: st.SearchStrategy[str] = FIELD,
              max_rows: int = 12) -> dict[str, Any]:
    delim = draw(st.sampled_from([",", ";", "\t", "|"]))
    ncols = draw(st.integers(1, 4))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    header = draw(st.booleans())
    rows = draw(st.lists(st.lists(field, min_size=0, max_size=ncols + 1), max_size=max_rows))
    out = io.StringIO()
    if header:
        out.write(delim.join(f"c{i}" for i in range(ncols)) + eol)
    for row in rows:
        if draw(st.integers(0, 9)) == 0:
            out.write(eol)   # a blank line: not a record
        cells = []
        for f in row:
            must = any(ch in f for ch in (delim, '"', "\n", "\r")) or f.startswith(" ")
            if must or draw(st.integers(0, 5)) == 0:
                f = '"' + f.replace('"', '""') + '"'
            cells.append(f)
        out.write(delim.join(cells) + eol)
    text = out.getvalue()
    if text and draw(st.booleans()):
        text = text[:-len(eol)]   # no newline after the last record
    return {"data": text.encode(), "delim": delim, "header": header, "ncols": ncols,
            "scale": draw(st.integers(0, 3))}


def csv_params(f: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return dict(extra, delimiter=f["delim"], header=f["header"], scale=f["scale"])


def oracle_kw(f: dict[str, Any]) -> dict[str, Any]:
    return {"scale": f["scale"], "delimiter": f["delim"], "header": f["header"]}


# -- the built-ins against the oracles ---------------------------------------------------------

# Fields of sign, digit and dot bytes only, up to 9 long: the scanner feeds a number's first
# 7 bytes as one word when they are an optional sign, digits and at most one dot, and byte
# by byte otherwise; both must agree with the oracle on every such string.
NUMBERISH = st.text(alphabet="+-.0123456789", max_size=9)


@SETTINGS
@given(fields=st.lists(NUMBERISH, max_size=30), scale=st.integers(0, 3),
       chunk=st.sampled_from([3, 64, 4096]))
def test_numbers_of_sign_digit_and_dot_bytes_match_oracle(fields: list[str], scale: int,
                                                          chunk: int) -> None:
    data = "".join(f"{f},x\n" for f in fields).encode()
    prog, _ = resolve("stats", {"column": 0, "scale": scale})
    want = oracle.stats(data, 0, scale=scale, delimiter=",", header=False)
    got = run(prog, data, chunk=chunk)
    for k in ("rows", "count", "sum", "skipped", "empty", "overflow"):
        assert got[k] == want[k], k
    if want["count"]:
        assert (got["min"], got["max"]) == (want["min"], want["max"])


@SETTINGS
@given(f=csv_files(), col=st.integers(0, 3), chunk=st.integers(1, 70), parts=st.integers(1, 3))
def test_stats_matches_oracle(f: dict[str, Any], col: int, chunk: int, parts: int) -> None:
    prog, fin = resolve("stats", csv_params(f, column=col))
    want = oracle.stats(f["data"], col, **oracle_kw(f))
    got = run(prog, f["data"], chunk=chunk, parts=parts)
    assert got["overflow"] == want["overflow"] == 0
    for k in ("rows", "count", "sum", "skipped", "empty"):
        assert got[k] == want[k], k
    res = fin(got)
    if want["count"]:
        assert (got["min"], got["max"]) == (want["min"], want["max"])
        assert res["avg"] == pytest.approx(want["sum"] / want["count"] / 10 ** f["scale"])
    else:
        assert res["avg"] is None and res["min"] is None


@SETTINGS
@given(f=csv_files(field=st.one_of(NUMBERS, LONG, LONG), max_rows=30), col=st.integers(0, 3),
       key=st.integers(0, 3), copies=st.integers(1, 40),
       chunk=st.sampled_from([1, 7, 4095, 4096, 4097, 10_000, 1 << 20]))
def test_long_fields_across_windows_and_chunks(f: dict[str, Any], col: int, key: int,
                                              copies: int, chunk: int) -> None:
    # copies: files past one 4096-byte window, so records straddle window and chunk ends
    data = f["data"] if f["data"].endswith(b"\n") else f["data"] + b"\n"
    data *= copies
    f = dict(f, header=False)   # a header line repeated by `copies` would be data
    kw = oracle_kw(f)
    prog, _ = resolve("stats", csv_params(f, column=col))
    want = oracle.stats(data, col, **kw)
    got = run(prog, data, chunk=chunk)
    for k in ("rows", "count", "sum", "skipped", "empty", "overflow"):
        assert got[k] == want[k], k
    if want["overflow"]:
        return   # a value past the s64 range fails a groupby query as a whole
    prog, _ = resolve("groupby", csv_params(f, key=key, column=col))
    want = oracle.groupby(data, key, col, **kw)
    assert_groups(run(prog, data, chunk=chunk), want)


@SETTINGS
@given(f=csv_files(), col=st.integers(0, 3), op=st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]),
       value=st.sampled_from(["0", "7", "-0.25", "3", "100.5"]), chunk=st.integers(1, 50))
def test_count_where_matches_oracle(f: dict[str, Any], col: int, op: str, value: str,
                                    chunk: int) -> None:
    if f["scale"] < 2 and "." in value:
        value = value.split(".")[0] or "0"
    prog, fin = resolve("count", csv_params(f, column=col, op=op, value=value))
    fixed = program_params("count", csv_params(f, column=col, op=op, value=value))["value"]
    want = oracle.count(f["data"], col, op, fixed, **oracle_kw(f))
    got = run(prog, f["data"], chunk=chunk)
    assert fin(got) == want["count"]
    assert (got["rows"], got["skipped"], got["empty"]) == (want["rows"], want["skipped"],
                                                           want["empty"])


@SETTINGS
@given(f=csv_files(), chunk=st.integers(1, 50), parts=st.integers(1, 3))
def test_count_rows_matches_oracle(f: dict[str, Any], chunk: int, parts: int) -> None:
    prog, fin = resolve("count", csv_params(f))
    got = run(prog, f["data"], chunk=chunk, parts=parts)
    assert fin(got) == oracle.count(f["data"], None, None, None, **oracle_kw(f))["count"]


@SETTINGS
@given(f=csv_files(), col=st.integers(0, 3), lo=st.integers(-50, 5), width=st.integers(1, 40),
       nb=st.integers(1, 12), chunk=st.integers(1, 50))
def test_hist_matches_oracle(f: dict[str, Any], col: int, lo: int, width: int, nb: int,
                             chunk: int) -> None:
    params = csv_params(f, column=col, lo=lo, width=width, nbuckets=nb)
    prog, fin = resolve("hist", params)
    rp = program_params("hist", params)
    want = oracle.hist(f["data"], col, rp["lo"], rp["width"], nb, **oracle_kw(f))
    res = fin(run(prog, f["data"], chunk=chunk))
    assert (res["below"], res["above"], res["counts"]) == (want["below"], want["above"],
                                                          want["counts"])
    assert res["edges"][0] == pytest.approx(lo) and len(res["edges"]) == nb + 1


@SETTINGS
@given(f=csv_files(), key=st.integers(0, 3), col=st.one_of(st.none(), st.integers(0, 3)),
       chunk=st.integers(1, 50), parts=st.integers(1, 3))
def test_groupby_matches_oracle(f: dict[str, Any], key: int, col: int | None, chunk: int,
                                parts: int) -> None:
    params = csv_params(f, key=key)
    if col is not None:
        params["column"] = col
    prog, fin = resolve("groupby", params)
    want = oracle.groupby(f["data"], key, col, **oracle_kw(f))
    got = run(prog, f["data"], chunk=chunk, parts=parts)
    assert_groups(got, want)
    assert set(fin(got)) == set(want)


def assert_groups(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["dropped"] == 0
    groups = {k["key"] if isinstance(k, dict) else k: v for k, v in got["groups"].items()}
    assert set(groups) == set(want)
    for k, w in want.items():
        g = groups[k]
        assert (g["rows"], g["count"], g["sum"]) == (w["rows"], w["count"], w["sum"]), k
        if w["count"]:
            assert (g["min"], g["max"]) == (w["min"], w["max"])


@SETTINGS
@given(lines=st.lists(st.text(alphabet="ab\r,x", max_size=12), max_size=10),
       needle=st.text(alphabet="abx", min_size=1, max_size=4), trailing=st.booleans(),
       chunk=st.integers(1, 30), parts=st.integers(1, 3))
def test_grep_matches_oracle(lines: list[str], needle: str, trailing: bool, chunk: int,
                             parts: int) -> None:
    data = "\n".join(lines).encode() + (b"\n" if trailing and lines else b"")
    prog, fin = resolve("grep", {"pattern": needle})
    assert fin(run(prog, data, chunk=chunk, parts=parts)) == oracle.grep(data, needle.encode())


def test_grep_dfa_is_a_substring_matcher() -> None:
    """The KMP automaton, walked in Python, agrees with `in` on every short string."""
    import itertools
    for needle in (b"aab", b"abab", b"aaa", b"abcabd"):
        dfa = grep_dfa(needle)
        for n in range(8):
            for s in itertools.product(b"abcd", repeat=n):
                state = 0
                for c in s:
                    state = dfa[state * 256 + c]
                assert (state == len(needle)) == (needle in bytes(s))


# -- chunking: a record split at any byte ---------------------------------------------------------

# Short and long fields with quotes, delimiters, CR and LF inside, blank lines, and a last
# record without a newline.
TRICKY = (b'id;name;value\r\n1;"a;b";"1.5"\r\n\r\n2;"multi\nline ""q""";-2.25\r\n'
          b'3;;\r\n4;x;+.5\r\n"5";"";junk\r\n7;"a long; quoted ""field"" with\nan LF";12.5\r\n'
          b'12345678901234567;an unquoted name longer than eight;3\n6;z;"-0"')


@pytest.mark.parametrize("name,params", [
    ("stats", {"column": "value"}),
    ("groupby", {"key": 1, "column": 2, "header": True}),
    ("count", {"column": 2, "op": "lt", "value": "0", "header": True}),
])
def test_every_split_point_gives_the_same_state(name: str, params: dict[str, Any]) -> None:
    hdr = next(csv.reader(io.StringIO(TRICKY.decode(), newline=""), delimiter=";"))
    prog, _ = resolve(name, dict(params, delimiter=";", scale=2), hdr)
    whole = run(prog, TRICKY)
    want = oracle.stats(TRICKY, 2, scale=2, delimiter=";", header=True)
    if name == "stats":
        assert {k: whole[k] for k in want} == want
    for cut in range(len(TRICKY) + 1):
        assert run_split(prog, TRICKY, cut) == whole, cut


def test_short_last_windows_never_read_stale_bytes() -> None:
    # A chunk of 4096 + r bytes ends in a window of r bytes; the buffer past it still holds
    # the previous window, which the scanner must never read (fields of random lengths put
    # every kind of byte at that boundary).
    rnd = random.Random(7)
    rows = [f"{rnd.randrange(10**rnd.randrange(1, 12))};{'x' * rnd.randrange(0, 23)};"
            f"{rnd.randrange(-999, 999) / 100};{'y' * rnd.randrange(0, 9)}\n" for _ in range(700)]
    data = "".join(rows).encode()
    prog, _ = resolve("stats", {"column": 2, "delimiter": ";", "scale": 2})
    want = oracle.stats(data, 2, scale=2, delimiter=";", header=False)
    for chunk in range(4097, 4097 + 24):
        got = run(prog, data, chunk=chunk)
        assert {k: got[k] for k in want} == want, chunk


def test_grep_every_split_point() -> None:
    data = b"abab\nxxabaab\nab\n\naabab"
    prog, _ = resolve("grep", {"pattern": "abab"})
    want = oracle.grep(data, b"abab")
    for cut in range(len(data) + 1):
        st_ = run_split(prog, data, cut)
        assert {"lines": st_["lines"], "matches": st_["matches"]} == want, cut


# -- edge cases -------------------------------------------------------------------------------

def test_empty_file(tmp_path: Any) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    for name, params in (("avg", {"column": 0}), ("count", {}), ("grep", {"pattern": "a"}),
                         ("groupby", {"key": 0})):
        prog, fin = resolve(name, params)
        out = execute(prog, str(path), engine="interp", budget=BUDGET)
        assert out["bytes_scanned"] == 0 and out["chunks"] == 1
        value = fin(out["state"])
        assert value in (None, 0, {}, {"lines": 0, "matches": 0}), (name, value)


def test_header_is_skipped_only_at_file_start() -> None:
    data = b"value\n1\n2\n3\n"
    prog, fin = resolve("sum", {"column": "value"}, ["value"])
    assert fin(run(prog, data)) == 6
    for parts in (2, 3):
        assert fin(run(prog, data, parts=parts)) == 6
    prog, fin = resolve("sum", {"column": 0, "header": False})
    assert fin(run(prog, data)) == 6 and run(prog, data)["skipped"] == 1


def test_sum_overflow_fails_the_query() -> None:
    big = "50000000000000000"   # 5e18 at scale 2 fits an __s64, twice that does not
    data = f"{big}\n{big}\n".encode()
    prog, fin = resolve("sum", {"column": 0, "scale": 2})
    state = run(prog, data)
    assert state["overflow"] == 1
    with pytest.raises(ResultOverflow):
        fin(state)
    with pytest.raises(ResultOverflow):   # each range alone fits; the merge does not
        merge_ranges([{"state": run(prog, f"{big}\n".encode()), "spec": reduce_spec(prog)}] * 2)


def test_value_too_large_for_the_scale_is_overflow_not_skipped() -> None:
    prog, fin = resolve("stats", {"column": 0, "scale": 6})
    state = run(prog, b"1\n99999999999999999\n2\n")
    assert (state["overflow"], state["skipped"], state["count"]) == (1, 0, 2)
    with pytest.raises(ResultOverflow):
        fin(state)


def assert_values_like_the_oracle(fields: list[str], scale: int, chunk: int = 4096) -> None:
    """Each field alone in a file (a sum of several could overflow on its own): stats's
    count, sum, skipped, overflow and empty equal the oracle's."""
    prog, _ = resolve("stats", {"column": 0, "scale": scale})
    for field in fields:
        data = f"{field}\n".encode()
        want = oracle.stats(data, 0, scale=scale)
        got = run(prog, data, chunk=chunk)
        for k in ("count", "sum", "skipped", "overflow", "empty"):
            assert got[k] == want[k], (field[:40], scale, k)


@pytest.mark.parametrize("scale", [0, 1, 2, 18])
def test_values_at_the_int64_bound(scale: int) -> None:
    # |value * 10^scale| <= S64_MAX fits, one more does not (the oracle decides which is which)
    fields = ["9223372036854775807", "-9223372036854775807", "9223372036854775808",
              "9223372036854775800", "922337203685477580.7", "922337203685477580.8",
              "92233720368547758.07", "-92233720368547758.08", "18446744073709551615",
              "18446744073709551616", "0000000000000000000000000000042", "9.223372036854775807",
              "0.9223372036854775807", "1844674407370955160", "18446744073709551609"]
    assert_values_like_the_oracle(fields, scale)


# Numbers of up to ~70 characters: past the 19 digits the scanner takes without a test, with
# leading zeros, long fractions (truncated past the scale), signs, at every scale.
LONG_NUMBER = st.builds(
    lambda sign, zeros, digits, dot, frac: sign + "0" * zeros + digits + ("." + frac if dot else ""),
    st.sampled_from(["", "-", "+"]), st.integers(0, 25), st.text("0123456789", max_size=22),
    st.booleans(), st.text("0123456789", max_size=25))


@SETTINGS
@given(fields=st.lists(LONG_NUMBER, min_size=1, max_size=4), scale=st.integers(0, 18),
       chunk=st.integers(1, 9))
def test_long_numbers_match_the_oracle(fields: list[str], scale: int, chunk: int) -> None:
    assert_values_like_the_oracle(fields, scale, chunk)


def test_thousands_of_leading_zeros() -> None:
    # more zeros than the scanner's digit counter could count: they must count for nothing
    fields = ["0" * 5000 + "12.5", "-" + "0" * 4100 + "7", "0." + "0" * 5000 + "1",
              "0" * 4095 + "." + "0" * 4095 + "9", "+" + "0" * 9000]
    for scale in (0, 4, 18):
        assert_values_like_the_oracle(fields, scale, chunk=1000)


def test_sum_and_avg_do_not_keep_min_max() -> None:
    # sum and avg run stats with minmax=0: the same rows, count and sum, min/max untouched
    data = b"1.5\n-2\n3.25\nx\n\n7\n"
    prog, fin = resolve("stats", {"column": 0})
    full = run(prog, data)
    for name in ("sum", "avg"):
        p, f = resolve(name, {"column": 0})
        got = run(p, data)
        assert (got["min"], got["max"]) == (2**63 - 1, -2**63)
        for k in ("rows", "count", "sum", "skipped", "empty"):
            assert got[k] == full[k], (name, k)
        assert f(got) == fin(full)[name]


def test_groupby_full_map_is_reported() -> None:
    prog, fin = resolve("groupby", {"key": 0})
    n = 4096 + 3
    data = b"".join(b"%d\n" % i for i in range(n))
    with ENGINE.load(prog, budget=BUDGET) as inst:
        run_range(inst, data, 0, len(data), chunk_size=1 << 20)
        state = decode(prog, inst.read_state())
    assert state["dropped"] == 3 and len(state["groups"]) == 4096
    with pytest.raises(LimitExceeded):
        fin(state)


def test_long_keys_are_skipped_not_truncated() -> None:
    prog, fin = resolve("groupby", {"key": 0})
    state = run(prog, b"short\n" + b"k" * 33 + b"\n" + b"k" * 32 + b"\n")
    assert state["skipped"] == 1 and set(fin(state)) == {"short", "k" * 32}


@SETTINGS
@given(keys=st.lists(st.binary(min_size=0, max_size=6).filter(
           lambda b: not any(c in b for c in b',"\r\n')), min_size=1, max_size=30),
       chunk=st.integers(1, 40))
def test_groupby_keys_of_any_bytes_stay_distinct(keys: list[bytes], chunk: int) -> None:
    # Latin-1 or binary keys must neither merge (a lossy decode) nor be cut at a NUL.
    data = b"".join(k + b",1\n" for k in keys)
    prog, fin = resolve("groupby", {"key": 0, "column": 1, "scale": 0})
    state = run(prog, data, chunk=chunk)
    want: dict[bytes, int] = {}
    for row in csv.reader(io.StringIO(data.decode("latin-1"), newline="")):
        k = row[0].encode("latin-1")
        if b"\0" not in k:
            want[k] = want.get(k, 0) + 1
    got = fin(state)
    as_bytes = {k.encode() if isinstance(k, str) else k: g["rows"] for k, g in got.items()}
    assert as_bytes == want
    for k in got:   # str exactly when the key is UTF-8
        raw = k.encode() if isinstance(k, str) else k
        assert isinstance(k, str) == _is_utf8(raw)
    assert state["skipped"] == sum(1 for k in keys if b"\0" in k)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_avg_matches_duckdb_read_csv(tmp_path: Any) -> None:
    """DuckDB parsing the file itself (its own CSV reader), not our oracle's parse."""
    path = tmp_path / "s.csv"
    rows = [f'{i},"s{i % 3}",{(i * 37) % 200 - 100}.{i % 100:02d},{i % 2}' for i in range(40)]
    path.write_text("id,sensor,value,flag\r\n" + "\r\n".join(rows))
    want = duckdb.connect().execute(f"SELECT avg(value::DECIMAL(18,2))::DOUBLE, count(*), "
                      f"sum(value::DECIMAL(18,2))::DOUBLE FROM read_csv('{path}', header=true, "
                      f"all_varchar=true)").fetchone()
    prog, fin = resolve("stats", {"column": "value"}, ["id", "sensor", "value", "flag"])
    out = execute(prog, str(path), engine="interp", budget=BUDGET, chunk_size=97)
    res = fin(out["state"])
    assert res["avg"] == pytest.approx(want[0]) and res["count"] == want[1]
    assert res["sum"] == pytest.approx(want[2])


# -- parameters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params,msg", [
    ("avg", {}, "required"),
    ("avg", {"column": "nope"}, "no column"),
    ("avg", {"column": "value", "header": False}, "header=false"),
    ("avg", {"column": 1, "delimiter": ",,"}, "delimiter"),
    ("avg", {"column": 1, "scale": 19}, "scale"),
    ("avg", {"column": 1, "colour": 2}, "unknown parameters"),
    ("count", {"column": 1, "op": "gt"}, "go together"),
    ("count", {"column": 1, "op": "approx", "value": 1}, "op must be"),
    ("count", {"column": 1, "op": "gt", "value": "1.23456"}, "more decimals"),
    ("count", {"column": 1, "op": "gt", "value": "ten"}, "not a number"),
    ("hist", {"column": 1, "lo": 0, "width": 0}, "width"),
    ("hist", {"column": 1, "lo": 0, "width": 1, "nbuckets": 65}, "nbuckets"),
    ("grep", {"pattern": ""}, "pattern"),
    ("grep", {"pattern": "a\nb"}, "newline"),
    ("nosuch", {}, "no built-in"),
])
def test_bad_parameters_are_bad_requests(name: str, params: dict[str, Any], msg: str) -> None:
    with pytest.raises(BadRequest, match=msg):
        resolve(name, params, ["id", "value"])


def test_finish_is_importable_for_merged_states() -> None:
    """What the SDK does: merge states of two files, then finish by name."""
    prog, _ = resolve("avg", {"column": 0})
    a, b = run(prog, b"1\n2\n"), run(prog, b"3.5\n")
    from stord_client.reduce import merge
    merged = merge(a, b, reduce_spec(prog))
    assert finish("avg", merged, {"column": 0}) == pytest.approx((1 + 2 + 3.5) / 3)
    assert finish("count", merged, {}) == 3
    assert set(BUILTINS) >= {"count", "sum", "avg", "min", "max", "hist", "grep", "groupby"}


# -- the real kernel verifier -----------------------------------------------------------------

@pytest.mark.parametrize("name,params", [
    ("avg", {"column": 2}),
    ("count", {}),
    ("count", {"column": 0, "op": "ge", "value": "-1.5", "delimiter": ";"}),
    ("hist", {"column": 1, "lo": -10, "width": "0.5", "nbuckets": 64, "header": True}),
    ("grep", {"pattern": "needle"}),
    ("groupby", {"key": 1, "column": 2}),
    ("groupby", {"key": 0}),
])
def test_builtin_passes_the_kernel_verifier(name: str, params: dict[str, Any]) -> None:
    """Unmodified, as an XDP program, with its parameters frozen in .rodata (what the
    kernel engine loads); the kernel then runs it and agrees with interp."""
    from stord.engines.base import available_engines
    reason = available_engines().get("kernel")
    if reason is not None:
        pytest.skip(f"kernel engine unavailable: {reason}")
    from stord.engines.kernel.engine import verify_program
    prog, fin = resolve(name, params)
    log = verify_program(prog)
    assert "processed" in log
    data = TRICKY.replace(b";", b",") if params.get("delimiter") != ";" else TRICKY
    with get_engine("kernel").load(prog, budget=BUDGET) as inst:
        run_range(inst, data, 0, len(data), chunk_size=7)
        kstate = decode(prog, inst.read_state())
    assert kstate == run(prog, data, chunk=7)
