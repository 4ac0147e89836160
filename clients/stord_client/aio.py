"""asyncio stord client: many calls in flight over one connection (msgpack-RPC msgids).

    async with AsyncClient("127.0.0.1:7411") as c:
        a, b = await asyncio.gather(c.query("x.csv", "avg", column=2),
                                    c.query("y.csv", "count"))
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgpack

from stord_client.client import (
    DEFAULT_ADDRESS,
    MAX_REPLY_BYTES,
    ProgressFn,
    Result,
    error_from_wire,
    parse_address,
    prepare_program,
    program_name,
    query_args,
    to_result,
)


class AsyncClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None,
                 timeout: float | None = None) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.token = token
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._progress: dict[int, ProgressFn] = {}
        self._msgid = 0
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None

    async def connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20)
            self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):
                pass
        self._writer = self._reader = self._reader_task = None
        self._fail_all(ConnectionError("client closed"))

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail_all(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        self._progress.clear()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                    max_buffer_size=MAX_REPLY_BYTES)
        err: BaseException = ConnectionError(f"stord at {self.address} closed the connection")
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                unpacker.feed(data)
                for msg in unpacker:
                    self._dispatch(msg)
        except (ConnectionError, OSError, msgpack.UnpackException, ValueError) as e:
            err = e
        finally:
            self._writer = None
            self._fail_all(err)

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, list) or not msg:
            return
        if msg[0] == 2 and len(msg) == 3:
            info = msg[2][0] if msg[2] else {}
            cb = self._progress.get(info.get("msgid")) if isinstance(info, dict) else None
            if cb is not None:
                cb(info)
        elif msg[0] == 1 and len(msg) == 4:
            if msg[1] is None:  # connection-level error: the daemon closes the stream
                self._fail_all(error_from_wire(msg[2]))
                return
            fut = self._pending.pop(msg[1], None)
            self._progress.pop(msg[1], None)
            if fut is not None and not fut.done():
                if msg[2] is not None:
                    fut.set_exception(error_from_wire(msg[2]))
                else:
                    fut.set_result(msg[3])

    async def call(self, method: str, *params: Any, on_progress: ProgressFn | None = None) -> Any:
        await self.connect()
        assert self._writer is not None
        self._msgid = (self._msgid + 1) & 0xFFFFFFFF
        msgid = self._msgid
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msgid] = fut
        if on_progress is not None:
            self._progress[msgid] = on_progress
        self._writer.write(msgpack.packb([0, msgid, method, list(params)], use_bin_type=True))
        try:
            await self._writer.drain()
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except (asyncio.CancelledError, TimeoutError):
            # Tell the daemon to stop working on it; the connection stays usable.
            self._pending.pop(msgid, None)
            self._progress.pop(msgid, None)
            if method == "query" and self._writer is not None:
                cancel = [2, "cancel", [self._args(msgid=msgid)]]
                self._writer.write(msgpack.packb(cancel, use_bin_type=True))
            raise

    def _args(self, **kw: Any) -> dict[str, Any]:
        if self.token is not None:
            kw["token"] = self.token
        return kw

    async def ping(self) -> dict[str, Any]:
        return await self.call("ping")

    async def list(self, path: str = "") -> list[dict[str, Any]]:
        return await self.call("list", self._args(path=path))

    async def stat(self, path: str) -> dict[str, Any]:
        return await self.call("stat", self._args(path=path))

    async def stats(self) -> dict[str, Any]:
        return await self.call("stats", self._args())

    async def query(self, path: str, program: str | bytes | os.PathLike[str], *,
                    engine: str | None = None, byte_range: tuple[int, int] | None = None,
                    params: dict[str, Any] | None = None,
                    on_progress: ProgressFn | None = None, **kw_params: Any) -> Result:
        p = dict(params or {}, **kw_params)
        args = query_args(path, program, p, engine, byte_range, self.token,
                          on_progress is not None)
        return to_result(await self.call("query", args, on_progress=on_progress))


def split_target(target: Any) -> tuple[str, str]:
    """"host:port/path" or (address, path) -> (address, path)."""
    if isinstance(target, tuple | list) and len(target) == 2:
        return str(target[0]), str(target[1])
    if isinstance(target, str) and "/" in target:
        addr, _, path = target.partition("/")
        return addr or DEFAULT_ADDRESS, path
    raise ValueError(f"target must be 'host:port/path' or (address, path), not {target!r}")


async def query_many_async(targets: list[Any], program: str | bytes | os.PathLike[str], *,
                           token: str | None = None, engine: str | None = None,
                           params: dict[str, Any] | None = None, **kw_params: Any) -> Result:
    """Fan one query out to every target concurrently, merge states, finish once.

    Raises stord_client.reduce.ReduceOverflow (code "overflow") when a merged sum leaves
    its type."""
    from stord_client.reduce import merge_all

    if not targets:
        raise ValueError("query_many needs at least one target")
    p = dict(params or {}, **kw_params)
    wire_prog = prepare_program(program)   # compile once, send the same object everywhere
    pairs = [split_target(t) for t in targets]
    clients = {addr: AsyncClient(addr, token=token) for addr in {a for a, _ in pairs}}
    t0 = time.monotonic()
    try:
        results = await asyncio.gather(*(clients[a].query(path, wire_prog, engine=engine,
                                                          params=p) for a, path in pairs))
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))
    spec = results[0].spec or {}
    # merge_all sums everything before range-checking: the outcome cannot depend on order.
    state = merge_all([r.state for r in results], spec) if len(results) > 1 else results[0].state
    name = program_name(program)
    value: Any = state
    if name is not None:
        from stord.query.builtins import finish
        value = finish(name, state, p)
    stats = {
        "bytes_scanned": sum(int(r.stats.get("bytes_scanned", 0)) for r in results),
        "bytes_returned": sum(int(r.stats.get("bytes_returned", 0)) for r in results),
        "skipped": sum(int(r.stats.get("skipped", 0) or 0) for r in results),
        "targets": len(results),
        "elapsed": time.monotonic() - t0,
        "per_target": [dict(r.stats, target=f"{a}/{path}") for r, (a, path) in
                       zip(results, pairs, strict=True)],
    }
    return Result(value, stats, state, spec)
