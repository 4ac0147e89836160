"""Synchronous stord client: one TCP connection, msgpack-RPC, one call at a time.

    from stord_client import Client
    with Client("10.0.0.5:7411", token="...") as c:
        r = c.query("data/x.csv", "avg", column=2)
        print(r.value, r.stats["bytes_scanned"], r.stats["bytes_returned"])
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

DEFAULT_PORT = 7411
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
MAX_REPLY_BYTES = 256 << 20

ProgressFn = Callable[[dict[str, Any]], None]


class RemoteError(Exception):
    """An error the daemon reported; `code` is the wire code (see docs/protocol.md).

    When stord is importable the SDK raises the matching stord.errors class instead, which
    has the same `code` attribute; catch RemoteError only if stord is not installed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_from_wire(err: Any) -> Exception:
    """The exception for a response's error object: a stord.errors class when it exists."""
    if isinstance(err, dict):
        code, message = str(err.get("code", "error")), str(err.get("message", err))
    else:
        code, message = "error", str(err)
    try:
        from stord import errors
    except ImportError:
        return RemoteError(code, message)
    classes = [errors.StordError]
    i = 0
    while i < len(classes):  # every subclass, breadth first
        classes.extend(classes[i].__subclasses__())
        i += 1
    for cls in classes:
        if cls.__dict__.get("code") == code and cls.__module__ == errors.__name__:
            try:
                return cls(message)
            except TypeError:
                break
    e = errors.StordError(message)
    e.code = code  # type: ignore[misc]  # keep the daemon's code for codes stord lacks
    return e


@dataclass
class Result:
    """A query's answer: the finished value, and how much was scanned vs returned."""

    value: Any
    stats: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    spec: Any = None

    def __repr__(self) -> str:
        s = self.stats
        return (f"Result(value={self.value!r}, bytes_scanned={s.get('bytes_scanned')}, "
                f"bytes_returned={s.get('bytes_returned')}, engine={s.get('engine')!r})")


def parse_address(addr: str) -> tuple[str, int]:
    """"host:port", "host", ":port", "[v6]:port" -> (host, port)."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
    if addr.count(":") == 1:
        host, port = addr.split(":")
        return host or "127.0.0.1", int(port)
    return addr or "127.0.0.1", DEFAULT_PORT


def prepare_program(program: str | bytes | os.PathLike[str]) -> str | bytes:
    """What goes on the wire for a program.

    bytes: an ELF object as is; a path ending in .o: that file's bytes; a path ending in .c:
    compiled here when clang is installed (errors show up locally, the daemon is spared the
    work), else its source is sent for the daemon to compile; a string with a newline: C
    source; anything else: a built-in program's name."""
    if isinstance(program, bytes | bytearray | memoryview):
        return bytes(program)
    if isinstance(program, os.PathLike) or program.endswith((".o", ".c")):
        p = Path(program)
        if p.suffix == ".o":
            return p.read_bytes()
        if p.suffix == ".c":
            if shutil.which("clang") or shutil.which("clang-14"):
                try:
                    from stord.program.toolchain import compile_c
                except ImportError:
                    return p.read_text()
                return compile_c(p)
            return p.read_text()
        return p.read_bytes()
    return program


def query_args(path: str, program: str | bytes | os.PathLike[str], params: dict[str, Any],
               engine: str | None, byte_range: tuple[int, int] | None, token: str | None,
               progress: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"path": path, "program": prepare_program(program),
                            "params": params}
    if engine:
        args["engine"] = engine
    if byte_range is not None:
        args["range"] = [int(byte_range[0]), int(byte_range[1])]
    if token is not None:
        args["token"] = token
    if progress:
        args["progress"] = True
    return args


def to_result(reply: dict[str, Any]) -> Result:
    return Result(reply.get("result"), reply.get("stats", {}), reply.get("state"),
                  reply.get("spec"))


def program_name(program: Any) -> str | None:
    """The built-in name when `program` names one (what query_many re-finishes with)."""
    if isinstance(program, str) and "\n" not in program and not program.endswith((".c", ".o")):
        return program
    return None


class Client:
    """A blocking connection to one stord daemon. Not shared between threads mid-call."""

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None,
                 timeout: float | None = None, connect_timeout: float = 10.0) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._unpacker: msgpack.Unpacker | None = None
        self._msgid = 0
        self._lock = threading.Lock()

    # -- connection

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            s.settimeout(self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = s
            self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                              max_buffer_size=MAX_REPLY_BYTES)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._unpacker = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls

    def call(self, method: str, *params: Any, on_progress: ProgressFn | None = None) -> Any:
        """One msgpack-RPC call; raises the daemon's error as an exception."""
        with self._lock:
            try:
                return self._call(method, list(params), on_progress)
            except BaseException:
                # A broken, timed-out or interrupted call leaves the stream unusable.
                self.close()
                raise

    def _call(self, method: str, params: list[Any], on_progress: ProgressFn | None) -> Any:
        sock = self._connect()
        self._msgid = (self._msgid + 1) & 0xFFFFFFFF
        msgid = self._msgid
        sock.sendall(msgpack.packb([0, msgid, method, params], use_bin_type=True))
        assert self._unpacker is not None
        while True:
            for msg in self._unpacker:
                if not isinstance(msg, list) or not msg:
                    continue
                if msg[0] == 2 and len(msg) == 3:
                    if on_progress is not None and msg[1] == "progress" and msg[2]:
                        on_progress(msg[2][0])
                    continue
                if msg[0] == 1 and len(msg) == 4 and msg[1] in (msgid, None):
                    if msg[2] is not None:
                        raise error_from_wire(msg[2])
                    return msg[3]
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(f"stord at {self.address} closed the connection")
            self._unpacker.feed(data)

    def _args(self, **kw: Any) -> dict[str, Any]:
        if self.token is not None:
            kw["token"] = self.token
        return kw

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def list(self, path: str = "") -> list[dict[str, Any]]:
        return self.call("list", self._args(path=path))

    def stat(self, path: str) -> dict[str, Any]:
        return self.call("stat", self._args(path=path))

    def stats(self) -> dict[str, Any]:
        return self.call("stats", self._args())

    def query(self, path: str, program: str | bytes | os.PathLike[str], *,
              engine: str | None = None, byte_range: tuple[int, int] | None = None,
              params: dict[str, Any] | None = None, on_progress: ProgressFn | None = None,
              **kw_params: Any) -> Result:
        """Run `program` over the file at `path` on the daemon; params as keywords.

        `program`: a built-in name ("avg", "count", ...), a .c or .o path, ELF bytes, or
        C source text. Parameters of the program go as keyword arguments (column=2) or
        in `params` when a name clashes with an argument here."""
        p = dict(params or {}, **kw_params)
        args = query_args(path, program, p, engine, byte_range, self.token,
                          on_progress is not None)
        return to_result(self.call("query", args, on_progress=on_progress))


def query_many(targets: list[Any], program: str | bytes | os.PathLike[str], *,
               token: str | None = None, engine: str | None = None,
               params: dict[str, Any] | None = None, **kw_params: Any) -> Result:
    """Run one program over several files on several daemons and merge the answers.

    targets: "host:port/path/in/export" strings or (address, path) pairs. The decoded
    states are merged with stord_client.reduce.merge by the program's reduce spec, then a
    built-in's finishing step runs on the merged state (avg = total sum / total count)."""
    import asyncio

    from stord_client.aio import query_many_async
    return asyncio.run(query_many_async(targets, program, token=token, engine=engine,
                                        params=params, **kw_params))
