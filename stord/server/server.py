"""The stord daemon: msgpack-RPC over TCP on uvloop, queries run by a worker pool.

The event loop only parses requests, checks access, plans ranges and merges results; every
byte of file data is touched in worker processes (stord.server.workers), which mmap the
file and run the program next to it. Only the aggregate comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import math
import os
import signal
import stat as st_mod
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import psutil

import stord
from stord.engines.base import DEFAULT_ENGINE_ORDER, available_engines
from stord.errors import (
    AccessDenied,
    BadRequest,
    Cancelled,
    EngineUnavailable,
    LimitExceeded,
    NotFound,
    ResultOverflow,
    StordError,
)
from stord.server import rpc
from stord.server.config import Config
from stord.server.csource import check_c_source
from stord.server.log import Log
from stord.server.paths import Resolved, authenticate, regular_file, resolve
from stord.server.workers import Owner, TaskFailed, WorkerPool

HEADER_MAX = 64 << 10     # bytes read to find a CSV header line
LIST_MAX = 10_000         # entries returned by one list call
QUERY_KEYS = {"path", "program", "params", "engine", "range", "token", "progress"}


@dataclass
class Counters:
    queries_served: int = 0
    queries_failed: int = 0
    bytes_scanned: int = 0
    bytes_returned: int = 0
    connections: int = 0
    connections_total: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class Conn:
    id: int
    peer: str
    writer: asyncio.StreamWriter
    queries: dict[int, Owner] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False
    handler: asyncio.Task[Any] | None = None   # the task reading this connection

    def send(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)


class Daemon:
    def __init__(self, config: Config, log: Log | None = None,
                 config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.log = log or Log(config.log_format)
        self.pool = WorkerPool(config.worker_count, config.limits.query_cpu_seconds, self.log,
                               config.limits.max_worker_memory_bytes)
        self.counters = Counters()
        self.engines: dict[str, str | None] = {}
        self.default_engine = "interp"
        self.started = time.time()
        self.active = 0
        self.waiting = 0
        self.sem = asyncio.Semaphore(config.limits.max_concurrent_queries)
        self.conns: set[Conn] = set()
        self.server: asyncio.base_events.Server | None = None
        self.stopping = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self._ids = itertools.count(1)
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # the first calls prime the measurements
        psutil.cpu_percent(None)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.engines = await loop.run_in_executor(None, available_engines)
        if self.config.engine:
            if self.engines.get(self.config.engine, "unknown engine") is not None:
                raise EngineUnavailable(f"configured engine {self.config.engine!r} is not usable: "
                                        f"{self.engines.get(self.config.engine, 'unknown')}")
            self.default_engine = self.config.engine
        else:  # default_engine()'s choice, from the probes just made
            self.default_engine = next((n for n in DEFAULT_ENGINE_ORDER
                                        if self.engines.get(n) is None), "interp")
        await self.pool.start(self.default_engine)
        self.server = await asyncio.start_server(
            self._on_connect, self.config.host, self.config.port,
            limit=64 << 10, reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        host, port = sock[0], sock[1]
        self.log("listening", addr=f"{host}:{port}", pid=os.getpid(),
                 workers=self.pool.pids(), engine=self.default_engine,
                 engines={k: v is None for k, v in self.engines.items()},
                 exports={k: str(v) for k, v in self.config.exports.items()},
                 auth=bool(self.config.tenants), version=stord.__version__)
        if not self.config.tenants and host not in ("127.0.0.1", "::1", "localhost"):
            self.log.warning("no_auth", message="no tenants configured: anyone who can reach "
                             f"{host}:{port} can read every export")
        return host, port

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.stopping.wait()
        await self.shutdown()

    def reload(self) -> None:
        """SIGHUP: re-read the config file. Exports, tenants, limits and the default engine
        change at once (for queries that start from now on); the listen address and the
        number of workers need a restart and are kept."""
        if self.config_path is None:
            self.log.warning("reload_ignored", message="started without --config")
            return
        from dataclasses import replace

        from stord.server.config import load_config
        try:
            new = load_config(self.config_path)
        except StordError as e:  # a broken file must not take a running daemon down
            self.log.error("reload_failed", code=e.code, message=str(e))
            return
        if new.engine and self.engines.get(new.engine, "unknown") is not None:
            self.log.error("reload_failed", code="engine_unavailable",
                           message=f"engine {new.engine!r} is not usable here")
            return
        kept = []
        if (new.host, new.port) != (self.config.host, self.config.port):
            kept.append("listen")
        if new.workers != self.config.workers:
            kept.append("workers")
        new = replace(new, host=self.config.host, port=self.config.port,
                      workers=self.config.workers)
        if new.limits.max_concurrent_queries != self.config.limits.max_concurrent_queries:
            self.sem = asyncio.Semaphore(new.limits.max_concurrent_queries)
        self.pool.cpu_limit = new.limits.query_cpu_seconds
        self.pool.memory_limit = new.limits.max_worker_memory_bytes
        if new.engine:
            self.default_engine = self.pool.engine = new.engine   # (workers started from now)
        self.config = new
        self.log("reloaded", exports=sorted(new.exports), tenants=len(new.tenants),
                 restart_needed_for=kept)

    def request_stop(self, why: str = "request") -> None:
        if not self.stopping.is_set():
            self.log("stopping", reason=why, in_flight=self.active + self.waiting)
            self.stopping.set()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight queries finish within the grace time, cancel the rest."""
        if self.server is not None:
            self.server.close()
        grace = self.config.shutdown_grace_seconds
        try:
            await asyncio.wait_for(self.idle.wait(), grace)
        except TimeoutError:
            n = 0
            for c in list(self.conns):
                for owner in c.queries.values():
                    owner.cancel()
                    n += 1
            self.log.warning("shutdown_cancel", queries=n, grace=grace)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), 5)
        for c in list(self.conns):
            for t in list(c.tasks):
                t.cancel()
        await asyncio.sleep(0)
        handlers = [c.handler for c in self.conns if c.handler is not None]
        for c in list(self.conns):
            with contextlib.suppress(Exception):
                await c.writer.drain()
            c.writer.close()
        if handlers:  # let each connection's reader see the close and finish on its own
            await asyncio.wait(handlers, timeout=5)
        await self.pool.close()
        self.log("stopped", served=self.counters.queries_served,
                 failed=self.counters.queries_failed)

    # ------------------------------------------------------------------ connections

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.conns) >= self.config.limits.max_connections or self.stopping.is_set():
            writer.write(rpc.pack_response(None, LimitExceeded(
                "too many connections" if not self.stopping.is_set()
                else "the daemon is shutting down").to_wire(), None))
            writer.close()
            return
        conn = Conn(next(self._ids), peer_s, writer)
        conn.handler = asyncio.current_task()
        self.conns.add(conn)
        self.counters.connections_total += 1
        unpacker = rpc.make_unpacker(self.config.limits.max_request_bytes)
        try:
            idle = self.config.limits.idle_seconds
            while not conn.closed:
                try:
                    # nothing in flight: a silent (or half-sent) connection is let go
                    data = await asyncio.wait_for(reader.read(1 << 16),
                                                  None if conn.tasks else idle)
                except TimeoutError:
                    self.log("idle_close", peer=conn.peer, idle=idle)
                    break
                if not data:
                    break
                try:
                    unpacker.feed(data)
                except msgpack.BufferFull:
                    self._fatal(conn, rpc.RequestTooLarge(
                        f"request larger than the limit of "
                        f"{self.config.limits.max_request_bytes} bytes"))
                    break
                try:
                    for obj in unpacker:
                        self._on_message(conn, obj)
                except (msgpack.UnpackException, ValueError, TypeError) as e:
                    # FormatError, StackError, bad UTF-8, non-string map keys...
                    self._fatal(conn, rpc.ProtocolError(
                        f"malformed msgpack ({type(e).__name__}{': ' + str(e) if str(e) else ''})"))
                    break
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            conn.closed = True
            for owner in conn.queries.values():  # nobody is left to read the answer
                owner.cancel()
            for t in list(conn.tasks):
                t.cancel()
            self.conns.discard(conn)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    def _fatal(self, conn: Conn, err: StordError, msgid: int | None = None) -> None:
        self.log.warning("protocol_error", peer=conn.peer, code=err.code, message=str(err))
        self._count_error(err.code)
        conn.send(rpc.pack_response(msgid, err.to_wire(), None))
        conn.closed = True

    def _on_message(self, conn: Conn, obj: Any) -> None:
        try:
            msg = rpc.parse(obj)
        except rpc.InvalidMessage as e:
            # Well-formed msgpack, wrong shape: the stream is still in sync, keep serving.
            self._count_error(e.code)
            conn.send(rpc.pack_response(e.msgid, e.to_wire(), None))
            return
        task = asyncio.get_running_loop().create_task(self._handle(conn, msg))
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    async def _handle(self, conn: Conn, msg: rpc.Message) -> None:
        try:
            handler = METHODS.get(msg.method)
            if handler is None:
                raise rpc.UnknownMethod(f"unknown method {msg.method!r} "
                                        f"(methods: {', '.join(sorted(METHODS))})")
            args = rpc.one_map(msg.params, msg.method)
            result = await handler(self, conn, msg.msgid, args)
            if msg.msgid is not None:
                data = result if isinstance(result, bytes) else rpc.pack_response(
                    msg.msgid, None, result)
                conn.send(data)
        except asyncio.CancelledError:
            raise
        except StordError as e:
            self._count_error(e.code)
            if msg.msgid is not None:
                conn.send(rpc.pack_response(msg.msgid, e.to_wire(), None))
        except Exception as e:  # a bug in stord: one line to the client, the trace to the log
            self.log.error("internal_error", method=msg.method, error=repr(e))
            self._count_error("internal_error")
            if msg.msgid is not None:
                conn.send(rpc.pack_response(msg.msgid, {
                    "code": "internal_error", "message": f"internal error: {type(e).__name__}"},
                    None))

    def _count_error(self, code: str) -> None:
        self.counters.errors[code] = self.counters.errors.get(code, 0) + 1

    # ------------------------------------------------------------------ methods

    async def m_ping(self, conn: Conn, msgid: int | None, args: dict[str, Any]) -> Any:
        return {"version": stord.__version__, "engines": self.engines,
                "default_engine": self.default_engine, "workers": self.pool.size,
                "auth": bool(self.config.tenants)}

    async def m_list(self, conn: Conn, msgid: int | None, args: dict[str, Any]) -> Any:
        _only(args, {"path", "token"}, "list")
        tenant = authenticate(self.config, args.get("token"))
        path = args.get("path", "")
        if path in ("", "/") and (self.config.default_export is None
                                  or (tenant is not None
                                      and not tenant.may_read(self.config.default_export))):
            return [{"name": name, "type": "export"} for name in self.config.exports
                    if tenant is None or tenant.may_read(name)]
        r = resolve(self.config, tenant, "" if path == "/" else path)
        if not r.path.is_dir():
            raise BadRequest(f"{r.display} is not a directory")
        return await asyncio.get_running_loop().run_in_executor(
            None, _listdir, r, self.config.exports[r.export])

    async def m_stat(self, conn: Conn, msgid: int | None, args: dict[str, Any]) -> Any:
        _only(args, {"path", "token"}, "stat")
        tenant = authenticate(self.config, args.get("token"))
        r = resolve(self.config, tenant, args.get("path"))
        st = os.stat(r.path)
        return {"path": r.display, "export": r.export, "type": _ftype(st.st_mode),
                "size": st.st_size, "mtime": st.st_mtime}

    async def m_cancel(self, conn: Conn, msgid: int | None, args: dict[str, Any]) -> Any:
        _only(args, {"msgid", "token"}, "cancel")
        authenticate(self.config, args.get("token"))
        target = args.get("msgid")
        if not isinstance(target, int) or isinstance(target, bool):
            raise BadRequest("cancel takes {'msgid': <id of a query on this connection>}")
        owner = conn.queries.get(target)
        if owner is None:
            return False
        owner.cancel()
        return True

    async def m_stats(self, conn: Conn, msgid: int | None, args: dict[str, Any]) -> Any:
        _only(args, {"token"}, "stats")
        authenticate(self.config, args.get("token"))
        mine = self.proc.memory_info().rss
        workers_rss, workers_cpu = 0, 0.0
        detail = []
        for w in list(self.pool.all):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(w.pid)
                rss = p.memory_info().rss
                t = p.cpu_times()
                workers_rss += rss
                workers_cpu += t.user + t.system
                detail.append({"pid": w.pid, "busy": w.busy, "tasks": w.tasks, "rss": rss,
                               "cpu_seconds": t.user + t.system})
        t = self.proc.cpu_times()
        c = self.counters
        return {
            "version": stord.__version__, "uptime": time.time() - self.started,
            "cpu_percent": psutil.cpu_percent(None), "daemon_cpu_percent":
            self.proc.cpu_percent(None), "cpu_count": os.cpu_count(),
            "daemon_cpu_seconds": t.user + t.system, "workers_cpu_seconds": workers_cpu,
            "daemon_rss": mine, "workers_rss": workers_rss, "rss_total": mine + workers_rss,
            "workers": self.pool.size, "workers_busy": self.pool.busy_count(),
            "worker_pids": self.pool.pids(), "busy_pids": self.pool.busy_pids(),
            "worker_detail": sorted(detail, key=lambda d: d["pid"]),
            "worker_restarts": self.pool.restarts,
            "queries_served": c.queries_served, "queries_failed": c.queries_failed,
            "queries_active": self.active, "queries_waiting": self.waiting,
            "bytes_scanned": c.bytes_scanned, "bytes_returned": c.bytes_returned,
            "connections": len(self.conns), "connections_total": c.connections_total,
            "errors": dict(c.errors),
        }

    async def m_query(self, conn: Conn, msgid: int | None, args: dict[str, Any]) -> Any:
        t0 = time.monotonic()
        owner = Owner()
        if msgid is not None:
            conn.queries[msgid] = owner
        info: dict[str, Any] = {"peer": conn.peer}
        try:
            reply = await asyncio.wait_for(self._query(conn, msgid, args, owner, info, t0),
                                           self.config.limits.query_wall_seconds)
        except TimeoutError:
            owner.cancel()
            err: StordError = LimitExceeded(
                f"query took longer than {self.config.limits.query_wall_seconds:g} s")
            self._end_query(info, t0, err)
            raise err from None
        except StordError as e:
            if owner.cancelled and not isinstance(e, Cancelled | LimitExceeded):
                e = Cancelled("query cancelled")
            self._end_query(info, t0, e)
            raise e from None
        except Exception as e:  # a bug: count and log it like any failed query
            if getattr(e, "code", None) == "overflow":  # stord_client.reduce.ReduceOverflow
                err = ResultOverflow(str(e))
            else:
                self.log.error("internal_error", method="query", error=repr(e))
                err = StordError(f"internal error: {type(e).__name__}: {e}")
                err.code = "internal_error"
            self._end_query(info, t0, err)
            raise err from None
        finally:
            if msgid is not None:
                conn.queries.pop(msgid, None)
        self._end_query(info, t0, None)
        return reply

    def _end_query(self, info: dict[str, Any], t0: float, err: StordError | None) -> None:
        info["elapsed"] = round(time.monotonic() - t0, 6)
        if err is None:
            self.counters.queries_served += 1
            self.log("query", status="ok", **info)
        else:
            self.counters.queries_failed += 1
            self.log("query", status="error", code=err.code, message=str(err), **info)

    async def _query(self, conn: Conn, msgid: int | None, args: dict[str, Any], owner: Owner,
                     info: dict[str, Any], t0: float) -> bytes:
        lim = self.config.limits
        unknown = set(args) - QUERY_KEYS
        if unknown:
            raise BadRequest(f"unknown query keys: {', '.join(sorted(unknown))}")
        tenant = authenticate(self.config, args.get("token"))
        info["tenant"] = tenant.name if tenant else None
        r = resolve(self.config, tenant, args.get("path"))
        info["path"] = r.display
        size = regular_file(r).st_size

        params = args.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("params must be a map of name -> value")
        for k, v in params.items():
            if not isinstance(v, int | float | str | bytes | bool) or v is None:
                raise BadRequest(f"parameter {k!r} must be a number, string, bytes or bool")
        kind, obj, name = self._program(args.get("program"))
        info["program"] = name
        engine = args.get("engine") or self.default_engine
        if not isinstance(engine, str):
            raise BadRequest("engine must be a string")
        if engine not in self.engines:
            raise EngineUnavailable(f"unknown engine {engine!r} (known: {', '.join(self.engines)})")
        if self.engines[engine] is not None:
            raise EngineUnavailable(f"engine {engine!r} is not available: {self.engines[engine]}")
        info["engine"] = engine
        rng = args.get("range")
        if rng is not None:
            if (not isinstance(rng, list) or len(rng) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in rng)
                    or not 0 <= rng[0] <= rng[1]):
                raise BadRequest("range must be [start, end] with 0 <= start <= end")
            rng = [rng[0], min(rng[1], size)]
            rng[0] = min(rng[0], rng[1])
        progress = bool(args.get("progress"))
        header = None
        if kind == "builtin":
            header = await asyncio.get_running_loop().run_in_executor(
                None, read_header, r.path, params.get("delimiter", ","))

        if self.waiting >= lim.max_queued_queries:
            raise LimitExceeded(f"the daemon is busy ({self.waiting} queries waiting)")
        self.waiting += 1
        self.idle.clear()
        sem = self.sem  # this one: a reload may put a new semaphore in place meanwhile
        try:
            await sem.acquire()
        except BaseException:
            self.waiting -= 1
            self._maybe_idle()
            raise
        self.waiting -= 1
        self.active += 1
        self.idle.clear()
        try:
            task = {"op": "query", "kind": kind, "object": obj, "params": params,
                    "header": header, "path": str(r.path), "engine": engine,
                    "budget": lim.instruction_budget, "max_insns": lim.max_program_insns,
                    "max_map_bytes": lim.max_map_bytes,
                    "verify_kernel": self.config.require_kernel_verifier}
            ranges = await self._plan(r, size, rng, owner, progress)
            merged, elapsed_w = await self._run_ranges(conn, msgid, task, ranges, owner,
                                                       progress, size)
        finally:
            self.active -= 1
            sem.release()
            self._maybe_idle()

        state = merged.get("state", {})
        skipped = _field(state, "skipped")
        overflow = _field(state, "overflow")
        if overflow:
            raise ResultOverflow(f"{overflow} values did not fit their type: the result would be "
                                 "wrong, so none is returned")
        result: Any = state
        if kind == "builtin":
            from stord.query.builtins import finish
            result = finish(name, state, params)
        stats = {
            "bytes_scanned": int(merged.get("bytes_scanned", 0)),
            "bytes_returned": 0,
            "engine": merged.get("engine", engine),
            "chunks": int(merged.get("chunks", 0)),
            "elapsed": 0.0,
            "worker_elapsed": elapsed_w,
            "skipped": skipped,
            "overflow": overflow,
            "ranges": len(ranges),
            "file_size": size,
        }
        reply = {"result": result, "state": state, "spec": merged.get("spec", {}),
                 "stats": stats}
        stats["elapsed"] = round(time.monotonic() - t0, 6)
        data = _pack_sized(msgid, reply)
        if len(data) > lim.max_result_bytes:
            raise LimitExceeded(f"the result is {len(data)} bytes, the limit is "
                                f"{lim.max_result_bytes}")
        self.counters.bytes_scanned += stats["bytes_scanned"]
        self.counters.bytes_returned += stats["bytes_returned"]
        info.update(bytes_scanned=stats["bytes_scanned"], bytes_returned=stats["bytes_returned"],
                    ranges=len(ranges))
        return data

    def _maybe_idle(self) -> None:
        if self.active == 0 and self.waiting == 0:
            self.idle.set()

    def _program(self, prog: Any) -> tuple[str, str | bytes, str]:
        """(kind, object, display name) of the query's program argument."""
        lim = self.config.limits
        if isinstance(prog, bytes):
            if len(prog) > lim.max_program_bytes:
                raise LimitExceeded(f"program object is {len(prog)} bytes, the limit is "
                                    f"{lim.max_program_bytes}")
            if not prog.startswith(b"\x7fELF"):
                raise BadRequest("a program given as bytes must be an ELF object")
            import hashlib
            return "elf", prog, "elf:" + hashlib.sha256(prog).hexdigest()[:16]
        if not isinstance(prog, str) or not prog:
            raise BadRequest("program must be a built-in name (str), an ELF object (bytes) "
                             "or C source (str)")
        from stord.query.builtins import BUILTINS
        if prog in BUILTINS:
            return "builtin", prog, prog
        if len(prog.encode()) > lim.max_program_bytes:
            raise LimitExceeded(f"program source is {len(prog.encode())} bytes, the limit is "
                                f"{lim.max_program_bytes}")
        if "\n" not in prog and len(prog) < 64:
            raise NotFound(f"no built-in program {prog!r} (built-ins: "
                           f"{', '.join(sorted(BUILTINS))}); C source must be the full text")
        check_c_source(prog)
        import hashlib
        return "c", prog, "c:" + hashlib.sha256(prog.encode()).hexdigest()[:16]

    async def _plan(self, r: Resolved, size: int, rng: list[int] | None,
                    owner: Owner, progress: bool) -> list[tuple[int, int]]:
        if rng is not None:
            return [(rng[0], rng[1])]
        parts = max(self.pool.size, math.ceil(size / self.config.range_bytes))
        if progress:  # finer ranges: a progress bar that moves more than once per worker
            parts = max(parts, 4 * self.pool.size)
        if size <= self.config.split_bytes or parts <= 1:
            return [(0, size)]
        ranges = await self._task({"op": "plan", "path": str(r.path), "parts": parts}, owner)
        return [(int(a), int(b)) for a, b in ranges if b > a] or [(0, size)]

    async def _task(self, task: dict[str, Any], owner: Owner) -> Any:
        try:
            return await self.pool.run(task, owner)
        except TaskFailed as e:
            raise e from None  # the worker's error, without the pool's frames attached

    async def _run_ranges(self, conn: Conn, msgid: int | None, task: dict[str, Any],
                          ranges: list[tuple[int, int]], owner: Owner, progress: bool,
                          size: int) -> tuple[dict[str, Any], float]:
        total = sum(b - a for a, b in ranges)
        done = 0

        async def one(i: int, a: int, b: int) -> dict[str, Any]:
            nonlocal done
            res = await self._task(dict(task, start=a, end=b), owner)
            done += b - a
            if progress and msgid is not None:
                conn.send(rpc.pack_notification("progress", [{
                    "msgid": msgid, "bytes_done": done, "bytes_total": total,
                    "ranges_done": i + 1, "ranges": len(ranges)}]))
            return res

        jobs = [asyncio.ensure_future(one(i, a, b)) for i, (a, b) in enumerate(ranges)]
        try:
            results = await asyncio.gather(*jobs)
        except BaseException:
            for j in jobs:
                j.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
        elapsed = sum(float(x.get("elapsed", 0.0)) for x in results)
        if len(results) == 1:
            return results[0], elapsed
        from stord.query.executor import merge_ranges
        try:
            merged = merge_ranges(list(results))
        except ArithmeticError as e:  # stord_client.reduce.ReduceOverflow (code "overflow")
            if getattr(e, "code", None) == "overflow":
                raise ResultOverflow(str(e)) from None
            raise
        merged.setdefault("bytes_scanned", sum(x.get("bytes_scanned", 0) for x in results))
        merged.setdefault("chunks", sum(x.get("chunks", 0) for x in results))
        merged.setdefault("engine", results[0].get("engine"))
        merged.setdefault("spec", results[0].get("spec"))
        return merged, elapsed


METHODS = {
    "ping": Daemon.m_ping,
    "list": Daemon.m_list,
    "stat": Daemon.m_stat,
    "query": Daemon.m_query,
    "cancel": Daemon.m_cancel,
    "stats": Daemon.m_stats,
}


def _only(args: dict[str, Any], keys: set[str], method: str) -> None:
    unknown = set(args) - keys
    if unknown:
        raise BadRequest(f"{method}: unknown keys {', '.join(sorted(unknown))}")


def _field(state: Any, name: str) -> int:
    v = state.get(name, 0) if isinstance(state, dict) else 0
    return int(v) if isinstance(v, int) else 0


def _pack_sized(msgid: int | None, reply: dict[str, Any]) -> bytes:
    """Pack the response with stats.bytes_returned equal to the packed size itself."""
    data = b""
    for _ in range(4):  # the size field's own width can change the size: iterate to a fixpoint
        data = rpc.pack_response(msgid, None, reply)
        if reply["stats"]["bytes_returned"] == len(data):
            break
        reply["stats"]["bytes_returned"] = len(data)
    return data


def read_header(path: os.PathLike[str] | str, delimiter: Any) -> list[str] | None:
    """The first CSV record's fields (only the header; nothing else of the file leaves here)."""
    if isinstance(delimiter, bytes):
        delimiter = delimiter.decode("latin-1")
    if delimiter in ("tab", "\\t"):  # as stord.query.builtins accepts it
        delimiter = "\t"
    delim = delimiter if isinstance(delimiter, str) and len(delimiter) == 1 else ","
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_MAX)
    except OSError:
        return None
    text = head.decode("utf-8", errors="replace")
    try:
        row = next(csv.reader(io.StringIO(text, newline=""), delimiter=delim), None)
    except csv.Error:
        return None
    return [c.strip() for c in row] if row else None


def _ftype(mode: int) -> str:
    if st_mod.S_ISREG(mode):
        return "file"
    if st_mod.S_ISDIR(mode):
        return "dir"
    return "other"


def _listdir(r: Resolved, export_root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    root = r.path
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        raise AccessDenied(f"cannot list {r.display}: {e.strerror}") from e
    for name in names[:LIST_MAX]:
        p = root / name
        try:
            st = os.stat(p)  # follows symlinks; those leading out of the export are hidden
            real = os.path.realpath(p)
        except OSError:
            continue
        if real != str(export_root) and not real.startswith(str(export_root) + os.sep):
            continue
        out.append({"name": name, "type": _ftype(st.st_mode), "size": st.st_size,
                    "mtime": st.st_mtime})
    return out


async def run_daemon(config: Config, log: Log | None = None,
                     config_path: str | None = None) -> None:
    """Start, serve until SIGTERM/SIGINT (SIGHUP reloads the config), shut down gracefully."""
    daemon = Daemon(config, log, config_path)
    await daemon.start()
    await daemon.serve()


def main_serve(config: Config, config_path: str | None = None) -> int:
    """`stord serve`: run the daemon on uvloop; returns the process exit code."""
    import uvloop
    log = Log(config.log_format)
    try:
        uvloop.run(run_daemon(config, log, config_path))
    except StordError as e:
        log.error("fatal", code=e.code, message=str(e))
        return 1
    except OSError as e:
        log.error("fatal", code="os_error", message=f"cannot listen on {config.address}: "
                  f"{e.strerror or e}")
        return 1
    return 0
