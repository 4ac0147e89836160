"""Shared fixtures: real stord daemons on 127.0.0.1 (free ports), sample CSV files.

Daemons are separate processes started with `python -m stord.cli.stord serve` exactly as a
user would; tests talk to them over TCP. Keep files small: the interp engine is pure Python.
"""

from __future__ import annotations

import csv
import random
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "clients")):
    if p not in sys.path:
        sys.path.insert(0, p)

from stord.server.launch import Daemon, start_daemon  # noqa: E402

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
TEST_BUDGET = 5_000_000      # instructions per call: small files need far fewer
HUGE_BUDGET = 1 << 40        # so large that only the CPU-time limit can stop a runaway
SENSORS_ROWS = 60


def write_sensors(path: Path, rows: int, seed: int = 1) -> None:
    """id,sensor,value,flag with a header, the demo's shape (values with 2 decimals)."""
    rnd = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "sensor", "value", "flag"])
        for i in range(rows):
            w.writerow([i, f"s{rnd.randrange(4)}", f"{rnd.uniform(-50, 150):.2f}",
                        rnd.randrange(2)])


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """exports: data/ (sensors.csv, sub/, links), other/ (secret.csv), outside/ (not exported)."""
    root = tmp_path_factory.mktemp("stord-data")
    data, other, outside = root / "data", root / "other", root / "outside"
    for d in (data, other, outside, data / "sub"):
        d.mkdir()
    write_sensors(data / "sensors.csv", SENSORS_ROWS)
    write_sensors(data / "sub" / "more.csv", 25, seed=2)
    write_sensors(other / "secret.csv", 10, seed=3)
    (outside / "passwd.csv").write_text("a,b\n1,2\n")
    (data / "empty.csv").write_text("")
    (data / "link_out.csv").symlink_to(outside / "passwd.csv")
    (data / "link_dir_out").symlink_to(outside)
    (data / "link_in.csv").symlink_to(data / "sensors.csv")
    return root


def write_config(path: Path, root: Path, *, tenants: bool = True, limits: str = "",
                 extra: str = "", budget: int = TEST_BUDGET, grace: float = 5) -> Path:
    text = f'''listen = "127.0.0.1:0"
workers = 2
shutdown_grace_seconds = {grace}
{extra}
[exports]
data = "{root / 'data'}"
other = "{root / 'other'}"
'''
    if tenants:
        text += f'''
[tenants.alice]
token = "{ALICE}"
exports = ["data"]
[tenants.bob]
token = "{BOB}"
exports = ["other"]
'''
    text += f"\n[limits]\ninstruction_budget = {budget}\n{limits}\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def daemon_factory(tmp_path_factory: pytest.TempPathFactory,
                   data_root: Path) -> Iterator[Callable[..., Daemon]]:
    """start(name, tenants=True, limits="", extra="", budget=N) -> a running Daemon (stopped
    at the end of the session). `limits` and `extra` are TOML lines for [limits] / the top."""
    started: list[Daemon] = []

    def start(name: str, **kw: object) -> Daemon:
        d = tmp_path_factory.mktemp(f"stord-{name}")
        cfg = write_config(d / "stord.toml", data_root, **kw)  # type: ignore[arg-type]
        daemon = start_daemon(cfg, d / "stord.log")
        started.append(daemon)
        return daemon

    yield start
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """The shared daemon: tenants alice (export data) and bob (export other)."""
    return daemon_factory("main")


@pytest.fixture(scope="session")
def engine() -> str:
    """Tests run on the reference interpreter: exact and available wherever Python is."""
    from stord.engines.base import available_engines
    reason = available_engines().get("interp")
    if reason is not None:
        pytest.skip(f"interp engine not available: {reason}")
    return "interp"


# ------------------------------------------------------------------ oracle (Python csv module)

def csv_rows(path: Path, header: bool = True, delimiter: str = ",") -> list[list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    return rows[1:] if header else rows


def csv_numbers(path: Path, column: int, header: bool = True) -> list[Decimal]:
    """The column's values that parse as decimals (the rest is what stord calls skipped)."""
    out = []
    for row in csv_rows(path, header):
        try:
            out.append(Decimal(row[column].strip()))
        except (IndexError, InvalidOperation):
            pass
    return out


@pytest.fixture(scope="session")
def fast_engine() -> str:
    """jit when it works here (load tests need cached loads in milliseconds), else interp."""
    from stord.engines.base import available_engines
    avail = available_engines()
    if avail.get("jit") is None:
        return "jit"
    if avail.get("interp") is None:
        print(f"jit unavailable ({avail.get('jit')}): load test runs on interp (slow)")
        return "interp"
    pytest.skip(f"no userspace engine: jit: {avail.get('jit')}; interp: {avail.get('interp')}")
