"""The daemon: config, paths that cannot escape, tenants, list/stat/stats, limits, hostile
programs, dead workers and graceful shutdown, all through a real daemon on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import ALICE, BOB, HUGE_BUDGET, SENSORS_ROWS
from stord_client import Client

from stord.errors import AccessDenied, StordError
from stord.server.config import ConfigError, hash_token, parse_config
from stord.server.paths import resolve

ENDLESS = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
volatile __u64 spins;
SEC("xdp") int endless(struct xdp_md *ctx)
{
    for (;;)
        spins++;
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

# A runaway that no compiler can fold away (the helper call is opaque to LLVM): with a
# huge budget only the CPU-time limit stops it, also as native jit code.
RUNAWAY = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
__u64 acc;
SEC("xdp") int runaway(struct xdp_md *ctx)
{
    for (;;)
        acc += bpf_ktime_get_ns();
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

OUT_OF_BOUNDS = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
__u64 total;
SEC("xdp") int peek(struct xdp_md *ctx)
{
    /* no bounds check: reads 1 MiB past the chunk's start */
    volatile __u8 *p = (volatile __u8 *)(long)ctx->data;
    total += p[1 << 20];
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

WILD_POINTER = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
__u64 total;
SEC("xdp") int wild(struct xdp_md *ctx)
{
    /* a pointer made up from an integer: the daemon's own memory would be here */
    volatile __u64 *p = (volatile __u64 *)(long)0x400000;
    *p = 42;
    total += 1;
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def code_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return getattr(excinfo.value, "code", "")


# ------------------------------------------------------------------ config (unit)


def wait_until_busy(d, timeout: float = 60) -> None:
    """Until a worker runs a query (the daemon's stats list its pid), at most `timeout` s."""
    with Client(d.address, token=ALICE) as c:
        deadline = time.monotonic() + timeout
        while not c.stats()["busy_pids"] and time.monotonic() < deadline:
            time.sleep(0.02)

def test_config_defaults_and_errors(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    cfg = parse_config({"listen": "0.0.0.0:9000", "exports": {"d": "d"},
                        "tenants": {"t": {"token": "s3cret", "exports": ["d"]}},
                        "limits": {"query_cpu_seconds": 3}}, base=tmp_path)
    assert (cfg.host, cfg.port) == ("0.0.0.0", 9000)
    assert cfg.exports["d"] == (tmp_path / "d").resolve()
    assert cfg.default_export == "d"           # a single export is the default one
    assert cfg.limits.query_cpu_seconds == 3.0
    # only a hash of the token is kept
    assert cfg.tenants[0].token_sha256 == hash_token("s3cret")
    assert cfg.tenant_for("s3cret") is cfg.tenants[0] and cfg.tenant_for("x") is None
    bad = [
        {"exports": {"d": "nope"}},
        {"exports": {"../x": "d"}},
        {"exports": {"d": "d"}, "bogus": 1},
        {"exports": {"d": "d"}, "limits": {"query_cpu_seconds": -1}},
        {"exports": {"d": "d"}, "limits": {"cpu": 1}},
        {"exports": {"d": "d"}, "tenants": {"t": {"exports": ["d"]}}},
        {"exports": {"d": "d"}, "tenants": {"t": {"token": "a", "exports": ["zz"]}}},
        {"exports": {"d": "d"}, "listen": "host:notaport"},
        {"exports": {"d": "d"}, "workers": "two"},
    ]
    for raw in bad:
        with pytest.raises(ConfigError):
            parse_config(raw, base=tmp_path)


def test_paths_cannot_escape(data_root: Path) -> None:
    cfg = parse_config({"exports": {"data": str(data_root / "data"),
                                    "other": str(data_root / "other")}})
    assert resolve(cfg, None, "data/sensors.csv").path == data_root / "data" / "sensors.csv"
    assert resolve(cfg, None, "data/./sub//more.csv").rel == "sub/more.csv"
    # a symlink that stays inside is fine and resolves to its target
    assert resolve(cfg, None, "data/link_in.csv").path.name == "sensors.csv"
    for bad in ("data/../outside/passwd.csv", "/etc/passwd", "data/link_out.csv",
                "data/link_dir_out/passwd.csv", "data/sub/../../other/secret.csv"):
        with pytest.raises(AccessDenied):
            resolve(cfg, None, bad)


# ------------------------------------------------------------------ through the daemon

def test_list_stat_and_tenants(daemon, data_root: Path) -> None:
    with Client(daemon.address, token=ALICE) as c:
        names = {e["name"] for e in c.list("data")}
        assert {"sensors.csv", "sub", "empty.csv", "link_in.csv"} <= names
        # symlinks that lead out of the export are not even listed
        assert "link_out.csv" not in names and "link_dir_out" not in names
        st = c.stat("data/sensors.csv")
        assert st["size"] == (data_root / "data" / "sensors.csv").stat().st_size
        assert st["type"] == "file"
        # alice may not read bob's export
        with pytest.raises(StordError) as e:
            c.stat("other/secret.csv")
        assert code_of(e) == "access_denied"
        roots = {e["name"] for e in c.list("")}
        assert roots == {"data"}
    with Client(daemon.address, token=BOB) as c:
        assert {e["name"] for e in c.list("other")} == {"secret.csv"}


@pytest.mark.parametrize("token, code", [(None, "access_denied"), ("wrong", "access_denied"),
                                         (BOB, "access_denied")])
def test_bad_tokens_refused(daemon, token, code) -> None:
    with Client(daemon.address, token=token) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", "count")
        assert code_of(e) == code
        assert c.ping()["version"]  # ping needs no token and the daemon is fine


@pytest.mark.parametrize("path", ["data/../outside/passwd.csv", "/etc/passwd",
                                  "data/link_out.csv", "data/link_dir_out/passwd.csv",
                                  "../../etc/passwd"])
def test_query_path_escape_refused(daemon, path) -> None:
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query(path, "count")
        assert code_of(e) == "access_denied"
        with pytest.raises(StordError) as e:
            c.stat(path)
        assert code_of(e) == "access_denied"


def test_missing_and_non_regular_files(daemon) -> None:
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/nope.csv", "count")
        assert code_of(e) == "not_found"
        with pytest.raises(StordError) as e:
            c.query("data/sub", "count")
        assert code_of(e) == "bad_request"
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", "no_such_builtin")
        assert code_of(e) == "not_found"
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", "count", engine="warp-drive")
        assert code_of(e) == "engine_unavailable"


def test_default_config_serves_cwd_read_only(tmp_path: Path, data_root: Path) -> None:
    from stord.server.launch import start_daemon
    d = start_daemon(None, tmp_path / "log", cwd=data_root / "data",
                     args=("--listen", "127.0.0.1:0", "--workers", "1"))
    try:
        with Client(d.address) as c:
            assert "sensors.csv" in {e["name"] for e in c.list("")}
            assert c.stat("sensors.csv")["type"] == "file"
            with pytest.raises(StordError) as e:
                c.stat("../other/secret.csv")
            assert code_of(e) == "access_denied"
        listening = [r for r in d.log_lines() if r["event"] == "listening"][0]
        assert listening["exports"] == {".": str((data_root / "data").resolve())}
    finally:
        assert d.stop() == 0


# ------------------------------------------------------------------ programs and limits

def test_program_over_limits(daemon_factory, engine) -> None:
    d = daemon_factory("limits", limits="max_program_bytes = 2048\nmax_program_insns = 8\n"
                       "max_result_bytes = 200\n")
    with Client(d.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", "x" * 3000 + "\n", engine=engine)
        assert code_of(e) == "limit_exceeded" and "2048" in str(e.value)
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", b"\x7fELF" + b"\0" * 4000, engine=engine)
        assert code_of(e) == "limit_exceeded"
        with pytest.raises(StordError) as e:  # a built-in has more than 8 instructions
            c.query("data/sensors.csv", "count", engine=engine)
        assert code_of(e) == "limit_exceeded" and "instructions" in str(e.value)
        assert c.ping()["version"]


def test_endless_loop_stopped_by_budget(daemon, sandbox_engine) -> None:
    engine = sandbox_engine
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", ENDLESS, engine=engine)
        assert code_of(e) == "budget_exceeded"
        assert c.query("data/sensors.csv", "count", engine=engine).value is not None


@pytest.mark.parametrize("src", [OUT_OF_BOUNDS, WILD_POINTER], ids=["oob", "wild"])
def test_hostile_memory_access_faults(daemon, sandbox_engine, src) -> None:
    engine = sandbox_engine
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", src, engine=engine)
        assert code_of(e) == "program_fault"
        assert "\n" not in str(e.value)
        assert c.query("data/sensors.csv", "count", engine=engine).value is not None


@pytest.mark.parametrize("src", ['#include "/etc/passwd"\n', '%:include </etc/passwd>\n',
                                 '#define F "/etc/passwd"\n#include F\n',
                                 '#include <linux/../../../etc/passwd>\n'])
def test_c_source_cannot_include_host_files(daemon, src) -> None:
    # clang would echo the included file's lines in its error message to the client
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", src)
        assert code_of(e) == "access_denied" and "root:" not in str(e.value)


def test_bad_c_source_and_bad_elf(daemon, engine) -> None:
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", "int main(void) { return nope; }\n", engine=engine)
        assert code_of(e) == "compile_error"
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", b"\x7fELF" + b"\x02" * 100, engine=engine)
        assert code_of(e) == "load_error"


def test_cpu_limit_kills_runaway_worker(daemon_factory, sandbox_engine) -> None:
    # A budget too large to matter: only the CPU-time watchdog can stop this program
    # (in the jit it is native code that never returns to Python).
    engine = sandbox_engine
    d = daemon_factory(f"cpu-{engine}", limits="query_cpu_seconds = 1.5", budget=HUGE_BUDGET)
    with Client(d.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", RUNAWAY, engine=engine)
        assert code_of(e) == "limit_exceeded" and "CPU time" in str(e.value)
        assert c.query("data/sensors.csv", "count", engine=engine).value is not None
        assert c.stats()["worker_restarts"] == 1


def test_worker_killed_mid_query_fails_only_that_query(daemon_factory, engine) -> None:
    d = daemon_factory("kill", limits="query_cpu_seconds = 120", budget=HUGE_BUDGET)
    with Client(d.address, token=ALICE) as c:
        before = c.stats()
        box: dict[str, BaseException | None] = {}

        def victim() -> None:
            try:
                with Client(d.address, token=ALICE) as v:
                    v.query("data/sensors.csv", RUNAWAY, engine=engine)
                box["err"] = None
            except BaseException as e:  # noqa: BLE001 - the test inspects it
                box["err"] = e

        t = threading.Thread(target=victim)
        t.start()
        busy: list[int] = []
        deadline = time.monotonic() + 60
        while not busy and time.monotonic() < deadline:
            time.sleep(0.1)
            busy = c.stats()["busy_pids"]
        assert busy, "the query never reached a worker"
        os.kill(busy[0], signal.SIGKILL)
        t.join(60)
        err = box["err"]
        assert err is not None and getattr(err, "code", "") == "worker_crashed"
        assert str(busy[0]) in str(err)
        # the daemon still serves, the pool is back to full size with a new process
        assert c.query("data/sensors.csv", "count", engine=engine).value is not None
        after = c.stats()
        assert after["worker_restarts"] == before["worker_restarts"] + 1
        assert busy[0] not in after["worker_pids"] and len(after["worker_pids"]) == 2


def test_sigterm_is_graceful(daemon_factory, engine) -> None:
    d = daemon_factory("term")
    with Client(d.address, token=ALICE) as c:
        assert c.query("data/sensors.csv", "count", engine=engine).value is not None
    assert d.stop() == 0
    events = [r["event"] for r in d.log_lines()]
    assert events.index("listening") < events.index("stopping") < events.index("stopped")
    stopped = [r for r in d.log_lines() if r["event"] == "stopped"][0]
    assert stopped["served"] >= 1
    assert "raw" not in events  # nothing but structured log lines on stderr


def test_sigterm_cancels_runaway_after_grace(daemon_factory, engine) -> None:
    d = daemon_factory("term2", limits="query_cpu_seconds = 120", budget=HUGE_BUDGET,
                       grace=1)
    box: dict[str, BaseException | None] = {}

    def victim() -> None:
        try:
            with Client(d.address, token=ALICE) as v:
                v.query("data/sensors.csv", RUNAWAY, engine=engine)
            box["err"] = None
        except BaseException as e:  # noqa: BLE001
            box["err"] = e

    t = threading.Thread(target=victim)
    t.start()
    wait_until_busy(d)
    assert d.stop(timeout=60) == 0
    t.join(30)
    assert getattr(box["err"], "code", "") == "cancelled"
    assert "shutdown_cancel" in [r["event"] for r in d.log_lines()]


def test_stats_count_queries_and_bytes(daemon, engine, data_root) -> None:
    with Client(daemon.address, token=ALICE) as c:
        s0 = c.stats()
        r = c.query("data/sensors.csv", "count", engine=engine)
        s1 = c.stats()
    size = (data_root / "data" / "sensors.csv").stat().st_size
    assert r.stats["bytes_scanned"] == size
    assert s1["queries_served"] == s0["queries_served"] + 1
    assert s1["bytes_scanned"] - s0["bytes_scanned"] == size
    assert s1["bytes_returned"] - s0["bytes_returned"] == r.stats["bytes_returned"]
    assert 0 < r.stats["bytes_returned"] < 2000
    assert SENSORS_ROWS > 0


def test_require_kernel_verifier(daemon_factory, engine) -> None:
    from stord.engines.base import available_engines
    reason = available_engines().get("kernel")
    if reason is not None:
        pytest.skip(f"kernel engine unavailable: {reason}")
    from test_client import REPORTS_OVERFLOW
    d = daemon_factory("verifier", extra="require_kernel_verifier = true")
    ok = REPORTS_OVERFLOW.replace("overflow = 1", "overflow = 0")
    with Client(d.address, token=ALICE) as c:
        # the verifier refuses the unchecked read before the interpreter ever runs it
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", OUT_OF_BOUNDS, engine=engine)
        assert code_of(e) == "verifier_rejected"
        assert c.query("data/sensors.csv", ok, engine=engine).value == {"overflow": 0}


HUGE_MAP = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 30);
    __type(key, __u64);
    __type(value, __u64);
} huge SEC(".maps");
SEC("xdp") int hog(struct xdp_md *ctx)
{
    __u64 k = 1, v = 1;
    bpf_map_update_elem(&huge, &k, &v, BPF_ANY);
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_map_size_limit(daemon, engine) -> None:
    # 2^30 entries x 16 bytes: refused before any engine allocates a byte of it
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", HUGE_MAP, engine=engine)
        assert code_of(e) == "limit_exceeded" and "maps" in str(e.value)
        assert c.ping()["version"]


def test_memory_limit_kills_worker(daemon_factory, engine) -> None:
    # 1 MiB is less than any Python process: the watchdog must stop the running query
    d = daemon_factory("mem", limits="max_worker_memory_bytes = 1048576\n"
                       "query_cpu_seconds = 120", budget=HUGE_BUDGET)
    with Client(d.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", RUNAWAY, engine=engine)
        assert code_of(e) == "limit_exceeded" and "memory" in str(e.value)
        assert c.ping()["version"]


@pytest.mark.parametrize("src", [ENDLESS, RUNAWAY, OUT_OF_BOUNDS, WILD_POINTER])
def test_kernel_engine_refuses_hostile_programs(daemon, src) -> None:
    from stord.engines.base import available_engines
    reason = available_engines().get("kernel")
    if reason is not None:
        pytest.skip(f"kernel engine unavailable: {reason}")
    with Client(daemon.address, token=ALICE) as c:
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", src, engine="kernel")
        assert code_of(e) == "verifier_rejected"
        fine = "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n__u64 n;\n" \
               "SEC(\"xdp\") int ok(struct xdp_md *ctx) { n++; return XDP_PASS; }\n" \
               "char LICENSE[] SEC(\"license\") = \"GPL\";\n"
        assert c.query("data/sensors.csv", fine, engine="kernel").value == {"n": 1}


def test_log_formats() -> None:
    import io
    import json

    from stord.server.log import Log
    buf = io.StringIO()
    Log("json", buf)("query", path="data/a b.csv", bytes_scanned=10)
    rec = json.loads(buf.getvalue())
    assert rec["event"] == "query" and rec["path"] == "data/a b.csv" and rec["level"] == "info"
    buf = io.StringIO()
    Log("kv", buf).warning("cpu_limit", pid=12, message='say "hi"')
    line = buf.getvalue().strip()
    assert " level=warning event=cpu_limit pid=12 " in line
    assert line.endswith('message="say \\"hi\\""')


def test_sighup_reloads_tenants_and_limits(daemon_factory, data_root) -> None:
    d = daemon_factory("reload")
    cfg = d.log_path.parent / "stord.toml"
    text = cfg.read_text()
    assert ALICE in text
    # alice's token is replaced by carol's; a broken file first must change nothing
    cfg.write_text("this is = not [toml")
    os.kill(d.pid, signal.SIGHUP)
    _wait_event(d, "reload_failed")
    with Client(d.address, token=ALICE) as c:
        assert c.stat("data/sensors.csv")["type"] == "file"
    cfg.write_text(text.replace(ALICE, "carol-token-000").replace(
        "[limits]", "[limits]\nmax_program_bytes = 100"))
    os.kill(d.pid, signal.SIGHUP)
    _wait_event(d, "reloaded")
    with Client(d.address, token=ALICE) as c:
        with pytest.raises(AccessDenied):
            c.stat("data/sensors.csv")
    with Client(d.address, token="carol-token-000") as c:
        assert c.stat("data/sensors.csv")["type"] == "file"
        with pytest.raises(StordError) as e:
            c.query("data/sensors.csv", ENDLESS)
        assert code_of(e) == "limit_exceeded" and "100" in str(e.value)


def _wait_event(d, event: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(r.get("event") == event for r in d.log_lines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {event} in the daemon log")


SLOW = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
const volatile __u64 rounds = 1;
__u64 done;
SEC("xdp") int slow(struct xdp_md *ctx)
{
    __u64 acc = 0;
    for (__u64 i = 0; i < rounds; i++)
        acc += bpf_ktime_get_ns() & 1;
    done += 1 + (acc > rounds);
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_sigterm_lets_in_flight_query_finish(daemon_factory, engine) -> None:
    d = daemon_factory("term3", limits="query_cpu_seconds = 120", budget=HUGE_BUDGET, grace=60)
    box: dict[str, object] = {}

    def client() -> None:
        try:
            with Client(d.address, token=ALICE) as v:
                box["value"] = v.query("data/sensors.csv", SLOW, engine=engine,
                                       rounds=300_000).value
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box["err"] = e

    t = threading.Thread(target=client)
    t.start()
    wait_until_busy(d)
    assert d.stop(timeout=120) == 0
    t.join(60)
    assert "err" not in box, box.get("err")
    assert box["value"] == {"done": 1}
    events = [r["event"] for r in d.log_lines()]
    assert "shutdown_cancel" not in events and events[-1] == "stopped"
    assert "raw" not in events  # no traceback from tearing connections down


@pytest.mark.parametrize("engine", ["jit", "interp"])
def test_workers_set_up_the_default_engine_before_the_first_query(daemon_factory,
                                                                   engine: str) -> None:
    """A worker sets up the daemon's default engine while the daemon starts (for the jit:
    LLVM's target machines, its JIT and threads), not in its first query: before any query,
    every worker has LLVM loaded when the default is the jit, and not otherwise; the first
    query then gives the interp's answer. So does a worker that replaces a dead one."""
    d = daemon_factory(f"warm-{engine}", extra=f'engine = "{engine}"')
    with Client(d.address, token=ALICE) as c:
        pids = c.stats()["worker_pids"]
        assert len(pids) == 2
        for pid in pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert ("libllvmlite" in maps) == (engine == "jit"), (engine, pid)
        got = c.query("data/sensors.csv", "count", engine=engine).value
        want = c.query("data/sensors.csv", "count", engine="interp").value
        assert got == want == SENSORS_ROWS + 1   # every record (no header parameter)
        if engine != "jit":
            return
        # a worker that replaces a dead one sets the engine up too, before any query
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        new: list[int] = []
        while not new and time.monotonic() < deadline:
            time.sleep(0.05)
            new = [p for p in c.stats()["worker_pids"] if p not in pids]
        assert new, "the dead worker was not replaced"
        while "libllvmlite" not in Path(f"/proc/{new[0]}/maps").read_text():
            assert time.monotonic() < deadline, "the new worker never set up the jit"
            time.sleep(0.05)
