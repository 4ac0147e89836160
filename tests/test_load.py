"""Load: 50 concurrent clients x 20 queries each against one daemon on loopback, no errors.

Each client has its own TCP connection (a thread with the sync SDK); the file is tiny so
that the test measures the daemon's plumbing (accept, decode, queue, workers, reply), not
the interpreter. Bounded in time by a generous per-client timeout, not by a speed claim.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ALICE, csv_rows
from stord_client import Client

CLIENTS = 50
QUERIES = 20


@pytest.fixture(scope="module")
def tiny(data_root: Path) -> str:
    p = data_root / "data" / "tiny.csv"
    if not p.exists():
        p.write_text("id,sensor,value,flag\n1,s0,1.50,0\n2,s1,-2.25,1\n3,s0,10.00,1\n")
    return "data/tiny.csv"


def test_fifty_clients_twenty_queries_each(daemon, fast_engine, tiny, data_root) -> None:
    expected_rows = len(csv_rows(data_root / tiny))

    def client(i: int) -> list[int]:
        out = []
        # timeout: a stuck daemon fails the test instead of hanging it
        with Client(daemon.address, token=ALICE, timeout=300) as c:
            for _ in range(QUERIES):
                r = c.query(tiny, "count", engine=fast_engine, header=True)
                out.append(r.stats["bytes_scanned"])
                assert _rows(r.value) == expected_rows
        return out

    with Client(daemon.address, token=ALICE) as c:
        before = c.stats()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    size = (data_root / tiny).stat().st_size
    assert [len(r) for r in results] == [QUERIES] * CLIENTS
    assert all(b == size for r in results for b in r)
    with Client(daemon.address, token=ALICE) as c:
        after = c.stats()
    assert after["queries_served"] - before["queries_served"] == CLIENTS * QUERIES
    assert after["queries_failed"] == before["queries_failed"]
    assert after["worker_restarts"] == before["worker_restarts"]
    assert after["bytes_scanned"] - before["bytes_scanned"] == CLIENTS * QUERIES * size


def _rows(value: object) -> int:
    """count's finished value: a number, or a map holding it."""
    if isinstance(value, dict):
        for k in ("count", "rows", "matched"):
            if k in value:
                return int(value[k])
    return int(value)  # type: ignore[call-overload]
