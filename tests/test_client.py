"""The SDK against real daemons: program forms, ranges split over workers, progress,
AsyncClient concurrency and cancellation, query_many over two nodes, error mapping."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import pytest
from conftest import (
    ALICE,
    BUILTIN_CASES,
    HUGE_BUDGET,
    csv_numbers,
    csv_rows,
    oracle,
    resolve_names,
    same_answer,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stord_client import AsyncClient, Client, query_many
from stord_client.client import prepare_program

from stord.errors import AccessDenied, StordError
from stord.program.toolchain import compile_c

NEWLINES = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
const volatile __u8 ch = '\n';   /* the byte to count: a parameter */
__u64 hits;
SEC("xdp") int count_byte(struct xdp_md *ctx)
{
    __u8 *p = (__u8 *)(long)ctx->data, *end = (__u8 *)(long)ctx->data_end;
    for (int i = 0; i < (1 << 20); i++) {
        if (p + i + 1 > end)
            break;
        if (p[i] == ch)
            hits++;
    }
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

# Every range that ends adds 0x7000000000000000 to a signed 64-bit sum: one range fits,
# two overflow when the daemon merges them; stord must say so, not wrap.
BIG_SUM = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct meta { __u64 offset; __u32 flags; __u32 pad; };
__s64 big;
SEC("xdp") int big_sum(struct xdp_md *ctx)
{
    struct meta *m = (struct meta *)(long)ctx->data_meta;
    if ((void *)(m + 1) > (void *)(long)ctx->data)
        return XDP_ABORTED;
    if (m->flags & 1)
        big += 0x7000000000000000LL;
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

REPORTS_OVERFLOW = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
__u64 overflow;
SEC("xdp") int says_overflow(struct xdp_md *ctx) { overflow = 1; return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def split_daemon(daemon_factory):
    """Files over 256 bytes are split into ranges of at most 256 bytes over 2 workers."""
    return daemon_factory("split", extra="split_bytes = 256\nrange_bytes = 256")


@pytest.fixture(scope="module")
def prog_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("progs")
    c = d / "newlines.c"
    c.write_text(NEWLINES)
    o = d / "newlines.o"
    o.write_bytes(compile_c(c))
    return {"c": c, "o": o}


def sensors(data_root: Path) -> Path:
    return data_root / "data" / "sensors.csv"


@pytest.mark.parametrize("form", ["c_path", "o_path", "source", "elf_bytes"])
def test_program_forms(daemon, engine, data_root, prog_files, form) -> None:
    program = {"c_path": str(prog_files["c"]), "o_path": str(prog_files["o"]),
               "source": NEWLINES, "elf_bytes": prog_files["o"].read_bytes()}[form]
    data = sensors(data_root).read_bytes()
    with Client(daemon.address, token=ALICE) as c:
        r = c.query("data/sensors.csv", program, engine=engine)
        assert r.value == {"hits": data.count(b"\n")}
        assert r.state == r.value and r.spec == {"hits": "sum:u64"}
        # the same program with a parameter: count commas instead
        r = c.query("data/sensors.csv", program, engine=engine, ch=ord(","))
        assert r.value["hits"] == data.count(b",")
        assert r.stats["bytes_scanned"] == len(data)
        assert r.stats["engine"] == engine


def test_c_path_compiled_locally(prog_files) -> None:
    # with clang here the SDK ships an object, not source
    assert prepare_program(str(prog_files["c"]))[:4] == b"\x7fELF"
    assert prepare_program(str(prog_files["o"])) == prog_files["o"].read_bytes()
    assert prepare_program("avg") == "avg"


def test_unknown_program_parameter(daemon, engine) -> None:
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", NEWLINES, engine=engine, nope=1)
        assert e.value.code == "load_error" and "nope" in str(e.value)


def test_split_ranges_match_whole_file(split_daemon, daemon, engine, data_root) -> None:
    data = sensors(data_root).read_bytes()
    assert len(data) > 3 * 256
    seen: list[dict] = []
    with Client(split_daemon.address, token=ALICE) as c:
        r = c.query("data/sensors.csv", NEWLINES, engine=engine, on_progress=seen.append)
    assert r.value == {"hits": data.count(b"\n")}
    assert r.stats["ranges"] >= 3 and r.stats["bytes_scanned"] == len(data)
    # progress: one notification per range, bytes_done rising to the total
    assert len(seen) == r.stats["ranges"]
    done = [p["bytes_done"] for p in seen]
    assert done == sorted(done) and done[-1] == seen[-1]["bytes_total"] == len(data)


def test_byte_range(daemon, engine, data_root) -> None:
    data = sensors(data_root).read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    with Client(daemon.address, token=ALICE) as c:
        a = c.query("data/sensors.csv", NEWLINES, engine=engine, byte_range=(0, cut))
        b = c.query("data/sensors.csv", NEWLINES, engine=engine, byte_range=(cut, 10**9))
    assert a.value["hits"] == data[:cut].count(b"\n")
    assert b.value["hits"] == data[cut:].count(b"\n")
    assert a.stats["bytes_scanned"] == cut and b.stats["bytes_scanned"] == len(data) - cut


def test_overflow_is_an_error_never_a_wrapped_number(split_daemon, daemon, engine) -> None:
    with Client(daemon.address, token=ALICE) as c:
        r = c.query("data/sensors.csv", BIG_SUM, engine=engine)   # one range: fits
        assert r.value == {"big": 0x7000000000000000}
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", REPORTS_OVERFLOW, engine=engine)
        assert e.value.code == "overflow"
    with Client(split_daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:  # several ranges: the merged sum leaves s64
            c.query("data/sensors.csv", BIG_SUM, engine=engine)
        assert e.value.code == "overflow"


def test_query_many_two_nodes(daemon, split_daemon, engine, data_root) -> None:
    files = [data_root / "data" / "sensors.csv", data_root / "data" / "sub" / "more.csv"]
    r = query_many([f"{daemon.address}/data/sensors.csv",
                    (split_daemon.address, "data/sub/more.csv")],
                   NEWLINES, token=ALICE, engine=engine)
    assert r.value == {"hits": sum(f.read_bytes().count(b"\n") for f in files)}
    assert r.stats["bytes_scanned"] == sum(f.stat().st_size for f in files)
    assert r.stats["targets"] == 2 and len(r.stats["per_target"]) == 2


def test_query_many_avg_refinishes(daemon, split_daemon, engine, data_root) -> None:
    files = [data_root / "data" / "sensors.csv", data_root / "data" / "sub" / "more.csv"]
    vals = [v for f in files for v in csv_numbers(f, 2)]
    r = query_many([(daemon.address, "data/sensors.csv"),
                    (split_daemon.address, "data/sub/more.csv")],
                   "avg", token=ALICE, engine=engine, column="value", header=True)
    assert _num(r.value, "avg") == pytest.approx(float(sum(vals) / len(vals)), rel=1e-12)


def test_avg_by_index_and_by_name(daemon, engine, data_root) -> None:
    vals = csv_numbers(sensors(data_root), 2)
    want = float(sum(vals) / len(vals))
    with Client(daemon.address, token=ALICE) as c:
        by_index = c.query("data/sensors.csv", "avg", engine=engine, column=2, header=True)
        by_name = c.query("data/sensors.csv", "avg", engine=engine, column="value",
                          header=True)
    assert _num(by_index.value, "avg") == pytest.approx(want, rel=1e-12)
    assert by_name.value == by_index.value
    assert len(csv_rows(sensors(data_root))) == len(vals)


def _num(value: object, key: str) -> float:
    return float(value[key]) if isinstance(value, dict) else float(value)  # type: ignore[index, arg-type]


def test_async_client_concurrent_queries(daemon, engine, data_root) -> None:
    data = sensors(data_root).read_bytes()

    async def main() -> list:
        async with AsyncClient(daemon.address, token=ALICE) as c:
            assert (await c.ping())["version"]
            return await asyncio.gather(*(c.query("data/sensors.csv", NEWLINES, engine=engine,
                                                  ch=ch) for ch in b"\n,0123456789"))
    results = asyncio.run(main())
    assert [r.value["hits"] for r in results] == [data.count(bytes([ch]))
                                                   for ch in b"\n,0123456789"]


def test_async_cancel_kills_the_query(daemon_factory, engine) -> None:
    from test_server import RUNAWAY
    d = daemon_factory("cancel", limits="query_cpu_seconds = 120", budget=HUGE_BUDGET)

    async def main() -> dict:
        async with AsyncClient(d.address, token=ALICE) as c:
            task = asyncio.create_task(c.query("data/sensors.csv", RUNAWAY, engine=engine))
            deadline = time.monotonic() + 60
            while not (await c.stats())["busy_pids"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the same connection keeps working while the daemon replaces the worker
            while (await c.stats())["busy_pids"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return await c.stats()
    s = asyncio.run(main())
    assert s["worker_restarts"] == 1 and s["busy_pids"] == []
    assert s["errors"].get("cancelled") == 1


def test_errors_are_stord_error_classes(daemon) -> None:
    with Client(daemon.address, token="nope") as c:
        with pytest.raises(AccessDenied):
            c.stat("data/sensors.csv")


def test_connection_refused_is_clear() -> None:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError):
        Client(f"127.0.0.1:{port}").ping()


@pytest.mark.parametrize("name, file, params", BUILTIN_CASES,
                         ids=[f"{n}-{f}-{i}" for i, (n, f, _) in enumerate(BUILTIN_CASES)])
def test_builtin_matches_oracle(daemon, engine, data_root, messy, name, file, params) -> None:
    path = messy if file == "messy" else sensors(data_root)
    with Client(daemon.address, token=ALICE) as c:
        r = c.query(f"data/{path.name}", name, engine=engine, params=params)
    same_answer(name, r.value, oracle(name, path, resolve_names(params, path)))
    assert r.stats["bytes_scanned"] == path.stat().st_size
    assert r.stats["engine"] == engine


@pytest.mark.parametrize("name, file, params", BUILTIN_CASES[::3])
def test_builtin_split_over_workers_matches_oracle(split_daemon, engine, data_root, messy,
                                                   name, file, params) -> None:
    # ranges of at most 256 bytes, record-aligned (quotes respected), merged by reduce
    path = messy if file == "messy" else sensors(data_root)
    with Client(split_daemon.address, token=ALICE) as c:
        r = c.query(f"data/{path.name}", name, engine=engine, params=params)
    assert r.stats["ranges"] >= 1 + (path.stat().st_size > 512)
    same_answer(name, r.value, oracle(name, path, resolve_names(params, path)))


_cell = (st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False,
                     allow_infinity=False).map(lambda d: f"{d:.2f}")
         | st.integers(-10**9, 10**9).map(str)
         | st.sampled_from(["", "x", "-", "1e3", " 4", "+5", "5.", ".5", "1.2.3"]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["a", "b,c", 'q"q', "l\nl"]), _cell),
                     max_size=40),
       trailing_newline=st.booleans(), crlf=st.booleans())
def test_generated_csv_through_daemon(daemon, fast_engine, data_root, rows, trailing_newline,
                                      crlf) -> None:
    """Random CSVs (quoting, newlines in fields, junk values) written into the export and
    queried through the daemon: count/sum/min/max/avg agree with the csv-module oracle."""
    import io
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows([("k", "v"), *rows])
    data = buf.getvalue().encode()
    if not trailing_newline:
        data = data.rstrip(b"\r\n")
    path = data_root / "data" / "generated.csv"
    path.write_bytes(data)
    with Client(daemon.address, token=ALICE) as c:
        for name, params in (("count", {"header": True}), ("sum", {"column": "v"}),
                             ("min", {"column": 1, "header": True}),
                             ("max", {"column": 1, "header": True}),
                             ("avg", {"column": "v"})):
            r = c.query("data/generated.csv", name, engine=fast_engine, params=params)
            p = resolve_names(dict(params, header=True), path)
            same_answer(name, r.value, oracle(name, path, p))


def test_same_program_goes_to_the_worker_that_has_it(daemon_factory, engine) -> None:
    # one client, one query at a time: the worker that loaded the program keeps getting it
    d = daemon_factory("affinity")
    with Client(d.address, token=ALICE) as c:
        c.query("data/sensors.csv", "count", engine=engine)
        before = {w["pid"]: w["tasks"] for w in c.stats()["worker_detail"]}
        for _ in range(4):
            c.query("data/sensors.csv", "count", engine=engine)
        after = {w["pid"]: w["tasks"] for w in c.stats()["worker_detail"]}
    grew = sorted(after[p] - before[p] for p in before)
    assert grew == [0, 4]
