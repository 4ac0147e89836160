"""The "pushdown" side: send the query to a stord daemon, receive only the aggregate.

`python -m bench.push HOST:PORT PATH [ENGINE]` prints one JSON line: avg, seconds, the
client's CPU seconds and the daemon's own byte counts (for comparison with the link's).
"""

from __future__ import annotations

import json
import resource
import sys
import time

from bench.engines import AVG_PARAMS


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def query(address: str, path: str, engine: str | None = None) -> dict[str, object]:
    from stord_client import Client

    c0, t0 = _cpu(), time.perf_counter()
    with Client(address) as c:
        r = c.query(path, "avg", engine=engine, params=dict(AVG_PARAMS))
    t1 = time.perf_counter()
    return {"avg": r.value, "total_s": t1 - t0, "cpu_s": _cpu() - c0,
            "bytes_scanned": r.stats.get("bytes_scanned"),
            "bytes_returned": r.stats.get("bytes_returned"), "engine": r.stats.get("engine"),
            "ranges": r.stats.get("ranges")}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m bench.push HOST:PORT PATH [ENGINE]", file=sys.stderr)
        return 2
    print(json.dumps(query(argv[0], argv[1], argv[2] if len(argv) == 3 else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
