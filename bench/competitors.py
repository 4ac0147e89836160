"""What a user would do instead of stord: the C baseline, DuckDB, pandas, Python's csv module."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

from bench.datagen import VALUE_COLUMN, Dataset
from bench.measure import Throughput, time_runs

BASELINE_SRC = Path(__file__).parent / "baseline" / "avg.c"
BUILD_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench"

DUCKDB_COLUMNS = "{'id': 'BIGINT', 'sensor': 'VARCHAR', 'value': 'DECIMAL(18,2)', 'flag': 'INTEGER'}"


class BaselineError(RuntimeError):
    pass


def build_baseline() -> Path:
    """gcc -O2 the baseline into .cache/bench (rebuilt when the source is newer)."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    exe = BUILD_DIR / "avg"
    if not exe.exists() or exe.stat().st_mtime < BASELINE_SRC.stat().st_mtime:
        r = subprocess.run(["gcc", "-O2", "-o", str(exe), str(BASELINE_SRC)],
                           capture_output=True, text=True)
        if r.returncode:
            raise BaselineError(f"gcc failed: {r.stderr.strip().splitlines()[-1:]}")
    return exe


def run_baseline(path: str, column: int = VALUE_COLUMN, header: bool = True,
                 repeat: int = 1) -> list[tuple[int, int, float, float]]:
    """(rows, sum_hundredths, avg, seconds) per repeat, timed inside the C program."""
    exe = build_baseline()
    r = subprocess.run([str(exe), path, str(column), str(int(header)), str(repeat)],
                       capture_output=True, text=True)
    if r.returncode:
        raise BaselineError(f"baseline failed: {r.stderr.strip()}")
    out = []
    for line in r.stdout.splitlines():
        rows, s, avg, t = line.split()
        out.append((int(rows), int(s), float(avg), float(t)))
    return out


def c_baseline(ds: Dataset, runs: int) -> Throughput:
    rec = Throughput("C baseline (gcc -O2, mmap, byte loop)", ds.size, expected=ds.avg)
    try:
        res = run_baseline(ds.path, repeat=runs)
    except BaselineError as e:
        rec.error = str(e)
        return rec
    rec.times = [t for *_, t in res]
    rows, s, avg, _ = res[-1]
    rec.value = avg
    if (rows, s) != (ds.rows, ds.sum_cents):
        rec.error = f"baseline counted {rows} rows / {s} hundredths, expected {ds.rows} / {ds.sum_cents}"
    return rec


def duckdb_avg(ds: Dataset, runs: int, threads: int) -> Throughput:
    import duckdb

    rec = Throughput(f"DuckDB {duckdb.__version__} ({threads} thread{'s' if threads > 1 else ''})",
                     ds.size, expected=ds.avg)
    con = duckdb.connect(config={"threads": threads})
    sql = (f"SELECT avg(value)::DOUBLE FROM read_csv(?, header=true, columns={DUCKDB_COLUMNS})")

    def q() -> float:
        return con.execute(sql, [ds.path]).fetchone()[0]

    try:
        return time_runs(rec, q, runs)
    finally:
        con.close()


def pandas_avg(ds: Dataset, runs: int) -> Throughput:
    import pandas as pd

    rec = Throughput(f"pandas {pd.__version__} read_csv(usecols)", ds.size, expected=ds.avg)
    return time_runs(rec, lambda: pd.read_csv(ds.path, usecols=["value"])["value"].mean(), runs)


def csv_module_sum(path: str, column: int = VALUE_COLUMN) -> float:
    total, n = 0.0, 0
    with open(path, newline="") as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            total += float(row[column])
            n += 1
    return total / n if n else 0.0


def csv_module_avg(ds: Dataset, runs: int) -> Throughput:
    rec = Throughput("Python csv module", ds.size, expected=ds.avg)
    return time_runs(rec, lambda: csv_module_sum(ds.path), runs)


def all_threads() -> int:
    return len(os.sched_getaffinity(0))
