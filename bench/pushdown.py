"""Pushdown vs pull over a shaped veth link between two network namespaces.

pull:  the client fetches the whole CSV over TCP (bench.pull) and runs DuckDB on it.
stord: the client sends the query to a stord daemon in the server namespace and gets the
       aggregate back (bench.push, through the stord_client SDK).
Per run: end-to-end seconds (measured in the client), bytes each way read from the veth
interfaces' counters before/after, the client's CPU seconds (getrusage in the client) and
the server's CPU seconds (psutil over the server process tree, before/after).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.datagen import Dataset
from bench.netns import SERVER_IP, Testbed, wait_port

PULL_PORT = 9100
STORD_PORT = 7411


@dataclass
class LinkRun:
    method: str          # "pull (TCP + DuckDB)" or "stord pushdown (<engine>)"
    rate: str
    total_s: float
    server_to_client: int   # bytes on the wire, from the server veth's tx counter
    client_to_server: int   # bytes on the wire, from the client veth's tx counter
    client_cpu_s: float
    server_cpu_s: float
    avg: float
    correct: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (every thread's schedstat run time,
    nanosecond resolution) plus what the children it already reaped used (clock ticks)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            for task in Path(f"/proc/{p.pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0]) / 1e9
            t = p.cpu_times()
            total += t.children_user + t.children_system
        except (OSError, psutil.NoSuchProcess):
            continue
    return total


def _client(tb: Testbed, argv: list[str], server_pid: int, ds: Dataset, method: str,
            rate: str) -> LinkRun:
    c0, s0 = tb.counters(), tree_cpu(server_pid)
    r = tb.run("client", argv)
    c1, s1 = tb.counters(), tree_cpu(server_pid)
    if r.returncode:
        msg = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{method} client failed: {msg}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    d = c1 - c0
    avg = float(out["avg"])
    return LinkRun(method, rate, out["total_s"], d.server_tx, d.client_tx, out["cpu_s"],
                   s1 - s0, avg, abs(avg - ds.avg) <= 1e-9 * max(1.0, abs(ds.avg)))


def stord_config(path: Path, export_dir: str, engine: str, workers: int) -> Path:
    path.write_text(
        f'listen = "{SERVER_IP}:{STORD_PORT}"\n'
        f'workers = {workers}\n'
        f'engine = "{engine}"\n'
        f'log_format = "kv"\n'
        f'[exports]\n'
        f'data = "{export_dir}"\n'
    )
    return path


def run(ds: Dataset, rates: list[str], runs: int, engine: str = "jit", workers: int = 0,
        log: Callable[[str], None] = print) -> tuple[list[LinkRun], list[str]]:
    """All runs for every rate; returns the runs and the problems met (never raises for a
    failing method, so the rest of the benchmark still reports)."""
    py = sys.executable
    results: list[LinkRun] = []
    problems: list[str] = []
    with Testbed(rates[0]) as tb, tempfile.TemporaryDirectory(prefix="stordb-") as tmp:
        pull_srv = tb.popen("server", [py, "-m", "bench.pull", "serve", SERVER_IP,
                                       str(PULL_PORT)])
        cfg = stord_config(Path(tmp) / "stord.toml", str(Path(ds.path).parent), engine,
                           workers)
        stord_log = open(Path(tmp) / "stord.log", "wb")  # noqa: SIM115 - closed with tmp
        daemon = tb.popen("server", [py, "-m", "stord.cli.stord", "serve", "--config",
                                     str(cfg)], stdout=stord_log, stderr=stord_log)
        wait_port(tb, "client", SERVER_IP, PULL_PORT)
        stord_ok = True
        try:
            wait_port(tb, "client", SERVER_IP, STORD_PORT)
        except TimeoutError as e:
            stord_ok = False
            tail = (Path(tmp) / "stord.log").read_text(errors="replace").strip().splitlines()
            problems.append(f"stord daemon did not start: {e}; {tail[-1] if tail else ''}")
        remote = f"data/{Path(ds.path).name}"
        for rate in rates:
            tb.set_rate(rate)
            time.sleep(0.2)
            methods = [("pull (TCP + DuckDB)", [py, "-m", "bench.pull", "fetch", SERVER_IP,
                                                str(PULL_PORT), ds.path], pull_srv.pid)]
            if stord_ok:
                methods.append((f"stord pushdown ({engine})",
                                [py, "-m", "bench.push", f"{SERVER_IP}:{STORD_PORT}", remote],
                                daemon.pid))
            for method, argv, pid in methods:
                # Untimed runs first: DuckDB warms up; every daemon worker compiles or loads
                # the program (concurrent clients reach them all).
                try:
                    warm = [tb.popen("client", argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                            for _ in range(1 if method.startswith("pull") else 2 * os.cpu_count())]
                    for p in warm:
                        p.wait(600)
                    for _ in range(runs):
                        lr = _client(tb, argv, pid, ds, method, rate)
                        results.append(lr)
                        log(f"  {rate:>8} {method:<28} {lr.total_s:8.3f} s  "
                            f"down {lr.server_to_client:>11,} B  up {lr.client_to_server:>9,} B")
                except Exception as e:  # noqa: BLE001 - report and go on with the others
                    problems.append(f"{method} at {rate}: {e}")
                    log(f"  {rate:>8} {method:<28} FAILED: {e}")
        stord_log.close()
    return results, problems
