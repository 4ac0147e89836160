"""The "pull" side of pushdown-vs-pull: fetch the whole file over TCP, then compute locally.

`python -m bench.pull serve HOST PORT` serves files: a request is one line holding a path,
the answer is the file's bytes (sendfile), then the connection closes.
`python -m bench.pull fetch HOST PORT PATH` downloads into /dev/shm, runs DuckDB's avg over
it with all threads, and prints one JSON line: avg, bytes, seconds (fetch, compute, total)
and the client's CPU seconds.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import tempfile
import time

from bench.competitors import DUCKDB_COLUMNS

BUF = 1 << 20


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def serve(host: str, port: int) -> None:
    srv = socket.create_server((host, port), reuse_port=True)
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as rf:
            path = rf.readline().decode().strip()
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    conn.sendall(size.to_bytes(8, "little"))
                    sent = 0
                    while sent < size:
                        sent += os.sendfile(conn.fileno(), f.fileno(), sent, size - sent)
            except OSError:
                conn.sendall((0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection early")
        buf += chunk
    return bytes(buf)


def fetch(host: str, port: int, path: str) -> dict[str, float]:
    import duckdb

    con = duckdb.connect()  # all threads: the best a client can do with the data it pulled
    c0, t0 = _cpu(), time.perf_counter()
    fd, local = tempfile.mkstemp(suffix=".csv", dir="/dev/shm")
    try:
        with socket.create_connection((host, port)) as s, os.fdopen(fd, "wb") as out:
            s.sendall(path.encode() + b"\n")
            size = int.from_bytes(_recv_exact(s, 8), "little")
            if size == 0xFFFFFFFFFFFFFFFF:
                raise FileNotFoundError(path)
            buf = bytearray(BUF)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = s.recv_into(view)
                if not n:
                    raise ConnectionError("server closed the connection early")
                out.write(view[:n])
                got += n
        t1 = time.perf_counter()
        avg = con.execute(f"SELECT avg(value)::DOUBLE FROM read_csv(?, header=true, "
                          f"columns={DUCKDB_COLUMNS})", [local]).fetchone()[0]
        t2 = time.perf_counter()
    finally:
        os.unlink(local)
    return {"avg": avg, "bytes": got, "fetch_s": t1 - t0, "compute_s": t2 - t1,
            "total_s": t2 - t0, "cpu_s": _cpu() - c0}


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) == 4 and argv[0] == "fetch":
        print(json.dumps(fetch(argv[1], int(argv[2]), argv[3])))
        return 0
    print("usage: python -m bench.pull serve HOST PORT | fetch HOST PORT PATH", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
