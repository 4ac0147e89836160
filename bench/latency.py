"""Round-trip latency and a concurrency sweep against a stord daemon on loopback.

warm: the same built-in query again and again (the daemon has the compiled program cached).
cold: each query carries a C program the daemon has not seen (its bytecode differs by a unique
      constant), so every round trip includes clang, loading and jit compilation on the daemon.
sweep: N asyncio clients (one connection each) issue warm queries back to back for a fixed
       time; queries per second and p50/p99 latency per N. The clients share this process,
       and the daemon shares the machine's cores with them.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.datagen import VALUE_COLUMN, Dataset
from bench.engines import AVG_PARAMS
from bench.measure import percentile

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(lat: list[float]) -> dict[str, float]:
    return {"n": len(lat), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "max": max(lat), "min": min(lat)}


class Daemon:
    """`stord serve` on 127.0.0.1 with one export ("data") holding the dataset's directory."""

    def __init__(self, export_dir: str, *, workers: int = 0, engine: str | None = None) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="stordb-lat-")
        cfg = Path(self._tmp.name) / "stord.toml"
        cfg.write_text(f'listen = "{self.address}"\nworkers = {workers}\n'
                       + (f'engine = "{engine}"\n' if engine else "")
                       + f'log_format = "kv"\n[exports]\ndata = "{export_dir}"\n')
        self.log_path = Path(self._tmp.name) / "stord.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "stord.cli.stord", "serve",
                                      "--config", str(cfg)], cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stord exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"stord did not listen on {self.address}: {self.log_tail()}")

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> Daemon:
        self.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cold_source(i: int) -> str:
    """The built-in stats program's C source made into a new program: one extra comparison
    with a unique constant (never equal to a value in the data) changes its bytecode, so the
    daemon runs clang and compiles it in the jit from scratch, as for a user's new program."""
    src = (REPO / "bpf" / "stats.c").read_text()
    nonce = 4 * 10**15 + (time.time_ns() % 10**12) * 100 + i
    anchor, decl = "\tcount++;\n", "static __always_inline void stord_csv_record"
    if anchor not in src or decl not in src:
        raise RuntimeError("bpf/stats.c changed shape: cannot derive the cold-query program")
    src = src.replace(anchor, f"{anchor}\tif (r->num == {nonce}LL)\n\t\tbench_nonce_hits++;\n", 1)
    return src.replace(decl, f"__u64 bench_nonce_hits;\n\n{decl}", 1)


def _check(value: Any, ds: Dataset) -> None:
    if not isinstance(value, int | float) or abs(value - ds.avg) > 1e-9 * max(1, abs(ds.avg)):
        raise RuntimeError(f"stord answered {value!r}, expected avg {ds.avg!r}")


def _cold_check(state: Any, ds: Dataset) -> None:
    if not isinstance(state, dict) or state.get("sum") != ds.sum_cents \
            or state.get("count") != ds.rows:
        raise RuntimeError(f"cold query answered {state!r}, expected sum {ds.sum_cents} "
                           f"count {ds.rows}")


async def _sweep_level(address: str, remote: str, clients: int, seconds: float,
                       ds: Dataset) -> dict[str, Any]:
    from stord_client import AsyncClient

    lat: list[float] = []
    errors = 0
    conns = [AsyncClient(address) for _ in range(clients)]
    for c in conns:
        await c.connect()
    stop_at = time.perf_counter() + seconds

    async def worker(c: AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                r = await c.query(remote, "avg", params=dict(AVG_PARAMS))
                _check(r.value, ds)
            except Exception:  # noqa: BLE001 - counted, the sweep goes on
                errors += 1
                continue
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    out: dict[str, Any] = {"clients": clients, "n": len(lat), "errors": errors,
                           "seconds": elapsed, "qps": len(lat) / elapsed}
    out.update({k: v for k, v in _summary(lat).items() if k != "n"} if lat else
               {"p50": None, "p99": None, "max": None, "min": None})
    return out


def run(ds: Dataset, *, warm_n: int, cold_n: int, sweep: list[int], seconds: float,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from stord_client import Client

    remote = f"data/{Path(ds.path).name}"
    out: dict[str, Any] = {"file_bytes": ds.size}
    with Daemon(str(Path(ds.path).parent)) as d, Client(d.address) as c:
        # First query of a built-in on a fresh daemon (each worker compiles on first use).
        t0 = time.perf_counter()
        _check(c.query(remote, "avg", params=dict(AVG_PARAMS)).value, ds)
        out["first_builtin_s"] = time.perf_counter() - t0
        # Every worker compiles (or loads from the jit's disk cache) on its first query:
        # a concurrent burst reaches them all before anything is timed.
        asyncio.run(_sweep_level(d.address, remote, 8, 1.0, ds))
        lat = []
        for _ in range(warm_n):
            t0 = time.perf_counter()
            r = c.query(remote, "avg", params=dict(AVG_PARAMS))
            lat.append(time.perf_counter() - t0)
            _check(r.value, ds)
        out["warm"] = _summary(lat)
        out["engine"] = r.stats.get("engine")
        log(f"  warm: p50 {out['warm']['p50'] * 1e3:.2f} ms, p99 {out['warm']['p99'] * 1e3:.2f} ms "
            f"({warm_n} queries, engine {out['engine']})")
        lat = []
        for i in range(cold_n):
            src = cold_source(i)
            t0 = time.perf_counter()
            r = c.query(remote, src, col=VALUE_COLUMN, scale=2, header=1)
            lat.append(time.perf_counter() - t0)
            _cold_check(r.value if isinstance(r.value, dict) else r.state, ds)
        if lat:
            out["cold"] = _summary(lat)
            log(f"  cold: p50 {out['cold']['p50'] * 1e3:.2f} ms, p99 "
                f"{out['cold']['p99'] * 1e3:.2f} ms ({cold_n} queries of new C programs)")
        out["concurrency"] = []
        for n in sweep:
            lv = asyncio.run(_sweep_level(d.address, remote, n, seconds, ds))
            out["concurrency"].append(lv)
            p99 = f"{lv['p99'] * 1e3:.2f} ms" if lv["p99"] is not None else "—"
            log(f"  {n:>3} clients: {lv['qps']:8.1f} queries/s, p99 {p99}, "
                f"{lv['errors']} errors")
    return out
