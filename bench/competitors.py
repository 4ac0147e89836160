"""What a user would do instead of stord: the C baselines (naive, and the same job as stord's
avg), DuckDB, pandas, Python's csv module."""

from __future__ import annotations

import csv
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.datagen import VALUE_COLUMN, Dataset
from bench.measure import Contender, Throughput, interleave, timed

BASELINE_DIR = Path(__file__).parent / "baseline"
BASELINE_SRC = BASELINE_DIR / "avg.c"          # naive: no quoting, no validation
SAME_JOB_SRC = BASELINE_DIR / "avg_same.c"     # exactly stord's `stats` (see its comment)
BUILD_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench"

C_NAME = "C baseline (gcc -O2, mmap, byte loop)"
SAME_JOB_NAME = "C same job (gcc -O2, mmap, RFC 4180 + validation)"

DUCKDB_COLUMNS = "{'id': 'BIGINT', 'sensor': 'VARCHAR', 'value': 'DECIMAL(18,2)', 'flag': 'INTEGER'}"


class BaselineError(RuntimeError):
    pass


def build_c(src: Path) -> Path:
    """gcc -O2 a baseline into .cache/bench/<stem> (rebuilt when the source is newer)."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    exe = BUILD_DIR / src.stem
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        r = subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)],
                           capture_output=True, text=True)
        if r.returncode:
            raise BaselineError(f"gcc failed: {r.stderr.strip().splitlines()[-1:]}")
    return exe


def build_baseline() -> Path:
    return build_c(BASELINE_SRC)


def _run_c(src: Path, args: list[str]) -> str:
    """Build and run a baseline; its output (one line per repeat)."""
    exe = build_c(src)
    r = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if r.returncode:
        raise BaselineError(f"{src.name} failed: {r.stderr.strip()}")
    return r.stdout


def baseline_args(path: str, column: int = VALUE_COLUMN, header: bool = True,
                  repeat: int = 1, ranges: list[tuple[int, int]] | None = None) -> list[str]:
    """avg.c's arguments: FILE COLUMN HEADER REPEAT, then START END per byte range (None:
    the whole file; each range line-aligned, see avg.c)."""
    if ranges is not None and not ranges:
        raise ValueError("ranges: give at least one (start, end), or None for the whole file")
    args = [path, str(column), str(int(header)), str(repeat)]
    for start, end in ranges or ():
        args += [str(start), str(end)]
    return args


def parse_baseline(out: str) -> list[tuple[int, int, float, float]]:
    """avg.c's output: (rows, sum_hundredths, avg, seconds) per line (one per repeat)."""
    return [(int(rows), int(s), float(avg), float(t)) for rows, s, avg, t in
            (line.split() for line in out.splitlines())]


def run_baseline(path: str, column: int = VALUE_COLUMN, header: bool = True,
                 repeat: int = 1, ranges: list[tuple[int, int]] | None = None,
                 ) -> list[tuple[int, int, float, float]]:
    """(rows, sum_hundredths, avg, seconds) per repeat, timed inside the C program; with
    ranges, rows and hundredths are summed over those byte ranges of the file."""
    return parse_baseline(_run_c(BASELINE_SRC,
                                 baseline_args(path, column, header, repeat, ranges)))


@dataclass(frozen=True)
class SameJob:
    """One repeat of avg_same: stord `stats`'s state (sum/min/max in 10^-scale units)."""
    rows: int
    count: int
    sum: int
    empty: int
    skipped: int
    overflow: int
    min: int
    max: int
    avg: float       # nan when count is 0
    seconds: float


def run_same_job(path: str, column: int = VALUE_COLUMN, header: bool = True,
                 repeat: int = 1, scale: int = 4, delimiter: str = ",") -> list[SameJob]:
    args = [path, str(column), str(int(header)), str(repeat), str(scale), delimiter]
    return [SameJob(*(int(x) for x in f[:8]), float(f[8]), float(f[9]))
            for f in map(str.split, _run_c(SAME_JOB_SRC, args).splitlines())]


def stord_avg_scale() -> int:
    """The scale stord's avg runs at in this bench (the built-in's default: AVG_PARAMS
    gives none), so the same-job baseline truncates and overflows where stord does."""
    from bench.engines import AVG_PARAMS
    from stord.query.builtins import scale_of

    return scale_of(AVG_PARAMS)


def c_baseline_contender(ds: Dataset) -> Contender:
    """The naive C loop; each run checks its row count and exact sum."""
    rec = Throughput(C_NAME, ds.size, expected=ds.avg)
    try:
        build_c(BASELINE_SRC)
    except BaselineError as e:
        rec.error = str(e)
        return Contender(rec)

    def once() -> tuple[float, float]:
        (rows, s, avg, t), = run_baseline(ds.path)
        if (rows, s) != (ds.rows, ds.sum_cents):
            raise BaselineError(f"baseline counted {rows} rows / {s} hundredths, "
                                f"expected {ds.rows} / {ds.sum_cents}")
        return t, avg

    return Contender(rec, once)


def c_same_job_contender(ds: Dataset) -> Contender:
    """avg_same.c at stord's scale; each run checks rows, count, exact sum and no
    empty/skipped/overflow."""
    rec = Throughput(SAME_JOB_NAME, ds.size, expected=ds.avg)
    try:
        scale = stord_avg_scale()
        build_c(SAME_JOB_SRC)
    except (BaselineError, ImportError) as e:
        rec.error = str(e)
        return Contender(rec)
    if scale < 2:  # the dataset's exact sum is in hundredths
        rec.error = f"stord's avg runs at scale {scale}: cannot check it against hundredths"
        return Contender(rec)
    want = (ds.rows, ds.rows, ds.sum_cents * 10 ** (scale - 2), 0, 0, 0)

    def once() -> tuple[float, float]:
        r, = run_same_job(ds.path, scale=scale)
        got = (r.rows, r.count, r.sum, r.empty, r.skipped, r.overflow)
        if got != want:
            raise BaselineError(f"same-job baseline: (rows, count, sum, empty, skipped, "
                                f"overflow) = {got}, expected {want}")
        return r.seconds, r.avg

    return Contender(rec, once)


def duckdb_contender(ds: Dataset, threads: int) -> Contender:
    import duckdb

    rec = Throughput(f"DuckDB {duckdb.__version__} ({threads} thread{'s' if threads > 1 else ''})",
                     ds.size, expected=ds.avg)
    con = duckdb.connect(config={"threads": threads})
    sql = (f"SELECT avg(value)::DOUBLE FROM read_csv(?, header=true, columns={DUCKDB_COLUMNS})")
    return Contender(rec, timed(lambda: con.execute(sql, [ds.path]).fetchone()[0]), con.close)


def pandas_contender(ds: Dataset) -> Contender:
    import pandas as pd

    rec = Throughput(f"pandas {pd.__version__} read_csv(usecols)", ds.size, expected=ds.avg)
    return Contender(rec, timed(
        lambda: pd.read_csv(ds.path, usecols=["value"])["value"].mean()))


# One competitor alone, its runs in a row (tests, and sections that compare with nothing).
def c_baseline(ds: Dataset, runs: int) -> Throughput:
    return interleave([c_baseline_contender(ds)], runs)[0]


def c_same_job(ds: Dataset, runs: int) -> Throughput:
    return interleave([c_same_job_contender(ds)], runs)[0]


def duckdb_avg(ds: Dataset, runs: int, threads: int) -> Throughput:
    return interleave([duckdb_contender(ds, threads)], runs)[0]


def pandas_avg(ds: Dataset, runs: int) -> Throughput:
    return interleave([pandas_contender(ds)], runs)[0]


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
    return interleave([Contender(rec, timed(lambda: csv_module_sum(ds.path)))], runs)[0]


def all_threads() -> int:
    return len(os.sched_getaffinity(0))
