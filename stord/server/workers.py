"""A pool of worker processes that run queries, so that no program can hurt the daemon.

Each worker is a separate Python process (spawned, not forked from the event loop) that
takes one task at a time over a pipe. A worker that dies (segfault, kill -9, out of memory)
fails only the task it held and is replaced. CPU time is bounded twice: a watchdog in the
daemon kills a worker whose task used more than the limit (it also catches native jit code
that never returns to Python), and RLIMIT_CPU in the worker is the backstop should the
daemon itself stall. Cancelling a task kills its worker: a running program cannot be
interrupted any other way, and a fresh process leaves no half-done state behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import multiprocessing
import os
import resource
import signal
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil

from stord.errors import (
    BadRequest,
    Cancelled,
    EngineUnavailable,
    LimitExceeded,
    StordError,
    WorkerCrashed,
)
from stord.server.log import Log

WATCHDOG_PERIOD = 0.1  # seconds between CPU checks of busy workers
RECENT_KEYS = 64       # programs a worker is known to have loaded (ProgramCache's size)


class TaskFailed(StordError):
    """An error raised in a worker, carried back by code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- inside a worker process

class ProgramCache:
    """Loaded programs by content hash of what the client sent (plus parameters)."""

    def __init__(self, size: int = RECENT_KEYS) -> None:
        self.size = size
        self.progs: OrderedDict[str, Any] = OrderedDict()
        self.verified: set[str] = set()

    def get(self, task: dict[str, Any]) -> Any:
        key = task_key(task)
        prog = self.progs.get(key)
        if prog is None:
            prog = build_program(task)
            self.progs[key] = prog
            if len(self.progs) > self.size:
                self.progs.popitem(last=False)
        else:
            self.progs.move_to_end(key)
        return prog

    def verify(self, prog: Any) -> None:
        if prog.digest in self.verified:
            return
        try:
            from stord.engines.kernel.engine import verify_program
        except ImportError as e:
            raise EngineUnavailable(
                f"require_kernel_verifier is set but the kernel engine cannot be imported: {e}"
            ) from e
        verify_program(prog)
        self.verified.add(prog.digest)


def task_key(task: dict[str, Any]) -> str:
    """Content hash of a query's program as sent, its parameters and the header it sees."""
    h = hashlib.sha256()
    h.update(task["kind"].encode())
    obj = task["object"]
    h.update(obj.encode() if isinstance(obj, str) else obj)
    h.update(repr(sorted(task["params"].items())).encode())
    h.update(repr(task.get("header")).encode())
    return h.hexdigest()


def build_program(task: dict[str, Any]) -> Any:
    """The Program a task names: a built-in, an ELF object, or C source compiled here."""
    kind, obj, params = task["kind"], task["object"], task["params"]
    if kind == "builtin":
        from stord.query.builtins import resolve
        prog, _finish = resolve(obj, dict(params), task.get("header"))
    else:
        from stord.program.elf import load_object
        if kind == "c":
            from stord.program.toolchain import compile_c
            obj = compile_c(obj)
        prog = load_object(obj)
        prog = prog.with_params(**params)
    max_insns = task.get("max_insns")
    if max_insns is not None and len(prog.insns) > max_insns:
        raise LimitExceeded(f"program has {len(prog.insns)} instructions, "
                            f"the limit is {max_insns}")
    max_map = task.get("max_map_bytes")
    if max_map is not None:
        # Checked before any engine allocates: a map of 2^31 entries must not OOM the node.
        total = sum((m.key_size + m.value_size) * m.max_entries for m in prog.maps)
        if total > max_map:
            raise LimitExceeded(f"program maps need {total} bytes, the limit is {max_map}")
    return prog


def run_task(task: dict[str, Any], cache: ProgramCache) -> Any:
    op = task["op"]
    if op == "warm":   # (worker_main warmed up before it took the first task)
        return os.getpid()
    if op == "plan":
        import mmap

        from stord.query.executor import plan_ranges
        with open(task["path"], "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return [(0, 0)]
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as buf:
                return [tuple(r) for r in plan_ranges(buf, task["parts"], task.get("quote", 0x22))]
    if op == "query":
        prog = cache.get(task)
        if task.get("verify_kernel"):
            cache.verify(prog)
        from stord.query.executor import execute
        return execute(prog, task["path"], engine=task["engine"], start=task["start"],
                       end=task["end"], budget=task["budget"])
    raise BadRequest(f"unknown worker operation {op!r}")


def worker_main(conn: Connection, cpu_limit: float, engine: str | None = None) -> None:
    """Entry point of a worker process: serve tasks until the pipe closes. `cpu_limit`: the
    RLIMIT_CPU backstop per task unless the task carries its own; `engine`: the daemon's
    default engine, set up before the first task."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # ^C goes to the daemon, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from stord.server.checkout import ensure_client_importable
    ensure_client_importable()
    _warm_up(engine)
    cache = ProgramCache()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        _arm_cpu_limit(task.get("cpu_limit", cpu_limit))
        try:
            reply: tuple[Any, ...] = ("ok", run_task(task, cache))
        except StordError as e:
            reply = ("err", e.code, str(e))
        except MemoryError:
            reply = ("err", LimitExceeded.code, "the query ran out of memory")
        except RecursionError:
            reply = ("err", LimitExceeded.code, "the query nested too deeply")
        except Exception as e:  # a bug in stord: report it on one line, keep the worker
            reply = ("err", "internal_error", f"internal error: {type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except (OSError, ValueError) as e:
            conn.send(("err", "internal_error", f"result cannot be sent: {e}"))


def _warm_up(engine: str | None) -> None:
    """What queries need, done while the worker waits for its first one (at the daemon's
    start, or after a worker was replaced): the imports of the query modules and of the ELF
    loader (pyelftools: ~60-80 ms), clang's version (toolchain.warm_up), and the default
    engine's set-up (for the jit: LLVM's target machines, its JIT and threads: a fresh
    daemon's first avg query took 228 ms before, 133-149 ms since)."""
    import stord.program.elf  # noqa: F401
    import stord.query.builtins  # noqa: F401
    import stord.query.executor  # noqa: F401
    from stord.program import toolchain
    toolchain.warm_up()
    if engine:
        from stord.engines.base import get_engine
        try:
            get_engine(engine)
        except StordError:
            pass   # not usable here: the queries that ask for it get the reason


def _arm_cpu_limit(limit: float) -> None:
    # Soft RLIMIT_CPU counts the whole process's CPU time: move it forward for each task.
    # SIGXCPU's default action ends the process; the daemon then reports the limit.
    ru = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(ru.ru_utime + ru.ru_stime + limit) + 2  # the watchdog acts first
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


# ---------------------------------------------------------------- in the daemon

@dataclass(eq=False)
class Worker:
    proc: Any                         # multiprocessing.Process
    conn: Connection
    ps: psutil.Process | None
    busy: bool = False
    cpu_start: float = 0.0
    kill_reason: str | None = None    # "cpu", "memory", "cancel", "shutdown": the daemon killed it
    tasks: int = 0
    limited: bool = False             # the watchdog's limits apply to the current task
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)  # programs it has

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_time(self) -> float:
        if self.ps is None:
            return 0.0
        try:
            t = self.ps.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def remember(self, key: str) -> None:
        self.recent[key] = None
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT_KEYS:
            self.recent.popitem(last=False)

    def kill(self, reason: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(eq=False)
class Owner:
    """Who holds workers: a query; cancel() kills every worker running its tasks."""

    workers: set[Worker] = field(default_factory=set)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        for w in list(self.workers):
            w.kill("cancel")


class WorkerPool:
    def __init__(self, size: int, cpu_limit: float, log: Log,
                 memory_limit: int = 0) -> None:
        self.engine: str | None = None   # the default engine, which new workers set up
        self.size = size
        self.cpu_limit = cpu_limit
        self.memory_limit = memory_limit
        self.log = log
        self.ctx = multiprocessing.get_context("spawn")
        self.all: set[Worker] = set()
        self.idle: list[Worker] = []
        self.waiters: deque[asyncio.Future[Worker]] = deque()
        self.threads = ThreadPoolExecutor(max_workers=size + 4, thread_name_prefix="worker-io")
        self.restarts = 0
        self.closing = False
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self, engine: str | None = None) -> None:
        """Start the workers, and wait until each has warmed up (imports done, `engine`
        set up: worker_main), so that the daemon says it is listening only then."""
        self.engine = engine
        for _ in range(self.size):
            self._release(self._spawn())
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        warm = await asyncio.gather(*(self.run({"op": "warm"}) for _ in range(self.size)),
                                    return_exceptions=True)
        for r in warm:
            if isinstance(r, BaseException):  # a replacement is already in the pool
                self.log.warning("worker_warmup_failed", error=str(r))

    def _spawn(self) -> Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=worker_main, args=(child, self.cpu_limit, self.engine),
                                name="stord-worker", daemon=True)
        proc.start()
        child.close()  # so that recv() sees EOF when the worker dies
        try:
            ps: psutil.Process | None = psutil.Process(proc.pid)
        except psutil.Error:
            ps = None
        w = Worker(proc, parent, ps)
        self.all.add(w)
        return w

    def _retire(self, w: Worker) -> None:
        self.all.discard(w)
        w.conn.close()
        w.proc.join(timeout=1)
        if not self.closing:
            self.restarts += 1
            self._release(self._spawn())

    async def run(self, task: dict[str, Any], owner: Owner | None = None) -> Any:
        """Run one task on an idle worker; raise the task's error or the worker's death."""
        loop = asyncio.get_running_loop()
        key = task_key(task) if task.get("op") == "query" else None
        w = await self._acquire(key)
        if owner is not None:
            if owner.cancelled:
                self._release(w)
                raise Cancelled("query cancelled")
            owner.workers.add(w)
        task = dict(task, cpu_limit=self.cpu_limit)  # current limit (SIGHUP may change it)
        w.busy, w.kill_reason, w.cpu_start = True, None, w.cpu_time()
        w.limited = task.get("op") == "query"  # limits apply to programs, not to housekeeping
        w.tasks += 1
        fut = loop.run_in_executor(self.threads, _roundtrip, w.conn, task)
        try:
            reply = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The caller gave up (cancel, deadline, disconnect): the worker may be mid-program.
            w.kill("cancel")
            await asyncio.wait([fut])
            w.busy = False
            if owner is not None:
                owner.workers.discard(w)
            self._retire(w)
            raise
        except (EOFError, OSError, BrokenPipeError):
            w.busy = False
            if owner is not None:
                owner.workers.discard(w)
            w.proc.join(timeout=2)
            err = self._death(w)
            self.log.warning("worker_died", pid=w.pid, exitcode=w.proc.exitcode,
                             reason=w.kill_reason or "crash")
            self._retire(w)
            raise err from None
        w.busy = False
        if owner is not None:
            owner.workers.discard(w)
        if key is not None:
            w.remember(key)
        self._release(w)
        if reply[0] == "ok":
            return reply[1]
        raise TaskFailed(reply[1], reply[2])

    async def _acquire(self, key: str | None) -> Worker:
        """An idle live worker, preferably one that ran this program before (it has it
        loaded and compiled); else wait in line for the next one to come free."""
        while True:
            if self.idle:
                w = next((x for x in self.idle if key is not None and key in x.recent),
                         self.idle[0])
                self.idle.remove(w)
            else:
                fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
                self.waiters.append(fut)
                try:
                    w = await fut
                except asyncio.CancelledError:
                    if fut.done() and not fut.cancelled():
                        self._release(fut.result())  # handed over just as we gave up
                    raise
            if w.proc.is_alive():
                return w
            self._retire(w)

    def _release(self, w: Worker) -> None:
        while self.waiters:  # first come, first served when there is a queue
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(w)
                return
        self.idle.append(w)

    def _death(self, w: Worker) -> StordError:
        code = w.proc.exitcode
        if w.kill_reason == "cpu" or code == -signal.SIGXCPU:
            return LimitExceeded(f"the query used more than its CPU time limit of "
                                 f"{self.cpu_limit:g} s and was stopped")
        if w.kill_reason == "memory":
            return LimitExceeded(f"the query used more than {self.memory_limit} bytes of "
                                 "memory and was stopped")
        if w.kill_reason == "cancel":
            return Cancelled("query cancelled")
        if w.kill_reason == "shutdown":
            return Cancelled("the daemon is shutting down")
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        return WorkerCrashed(f"worker process {w.pid} died ({how}) while running this query; "
                             f"it has been replaced")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD)
            for w in list(self.idle):
                if not w.proc.is_alive():   # died idle (the OOM killer, an operator): the
                    self.idle.remove(w)     # pool is back to full size at once, warmed up
                    self.log.warning("worker_died", pid=w.pid, exitcode=w.proc.exitcode,
                                     reason="idle")
                    self._retire(w)
            for w in list(self.all):
                if w.busy and w.limited and w.kill_reason is None:
                    if w.cpu_time() - w.cpu_start > self.cpu_limit:
                        self.log.warning("cpu_limit", pid=w.pid, limit=self.cpu_limit)
                        w.kill("cpu")
                    elif self.memory_limit and anon_rss(w.pid) > self.memory_limit:
                        self.log.warning("memory_limit", pid=w.pid, limit=self.memory_limit)
                        w.kill("memory")

    def pids(self) -> list[int]:
        return [w.pid for w in self.all]

    def busy_pids(self) -> list[int]:
        return [w.pid for w in self.all if w.busy]

    def busy_count(self) -> int:
        return sum(w.busy for w in self.all)

    async def close(self) -> None:
        self.closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for w in list(self.all):
            if w.busy:
                w.kill("shutdown")
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    w.kill("shutdown")
        deadline = time.monotonic() + 3
        for w in list(self.all):
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.kill("shutdown")
                w.proc.join(timeout=1)
            w.conn.close()
        self.threads.shutdown(wait=False, cancel_futures=True)


def anon_rss(pid: int) -> int:
    """Anonymous resident memory of a process: what it allocated, not the file it mmaps
    (file pages are shared page cache and would make a big scan look like a leak)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _roundtrip(conn: Connection, task: dict[str, Any]) -> Any:
    conn.send(task)
    return conn.recv()
