"""Generated sensor CSVs (`id,sensor,value,flag`, value with two decimals) and their exact totals.

The generator keeps the exact sum of the value column in cents, so every competitor's average
is checked against integer arithmetic rather than against another float implementation.
A `.meta.json` beside the CSV records what it holds; an existing file of the same spec is
reused so repeated runs do not regenerate hundreds of megabytes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

HEADER = b"id,sensor,value,flag\n"
VALUE_COLUMN = 2  # 0-based index of `value`
ROWS_PER_BATCH = 50_000


@dataclass(frozen=True)
class Dataset:
    path: str
    size: int          # bytes, header included
    rows: int          # data rows (header excluded)
    sum_cents: int     # exact sum of the value column, in hundredths
    seed: int
    negative: bool     # whether values may be negative

    @property
    def avg(self) -> float:
        return self.sum_cents / 100 / self.rows if self.rows else 0.0

    @property
    def mb(self) -> float:
        return self.size / 1e6


def _format_cents(c: int) -> str:
    sign = "-" if c < 0 else ""
    c = abs(c)
    return f"{sign}{c // 100}.{c % 100:02d}"


def _batch(rng: random.Random, first_id: int, n: int, lo: int, hi: int) -> tuple[bytes, int]:
    cents = [rng.randrange(lo, hi) for _ in range(n)]
    lines = [
        f"{first_id + i},sensor_{rng.randrange(1000):03d},{_format_cents(c)},{rng.randrange(2)}\n"
        for i, c in enumerate(cents)
    ]
    return "".join(lines).encode(), sum(cents)


def generate(path: str | os.PathLike[str], target_bytes: int, *, seed: int = 1,
             negative: bool = True) -> Dataset:
    """Write a CSV of about `target_bytes` (whole rows, never more than one batch over)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # Values in [-50.00, 150.00) like a temperature sensor, or [0.00, 200.00).
    lo, hi = (-5000, 15000) if negative else (0, 20000)
    size, rows, total = len(HEADER), 0, 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(HEADER)
        while size < target_bytes:
            # Shrink the last batch so the file ends close to the target.
            left = target_bytes - size
            n = max(1, min(ROWS_PER_BATCH, left // 28))
            data, s = _batch(rng, rows, n, lo, hi)
            f.write(data)
            size += len(data)
            rows += n
            total += s
    os.replace(tmp, path)
    ds = Dataset(str(path), size, rows, total, seed, negative)
    Path(str(path) + ".meta.json").write_text(json.dumps(asdict(ds)))
    return ds


def ensure(data_dir: str | os.PathLike[str], target_bytes: int, *, seed: int = 1,
           negative: bool = True) -> Dataset:
    """The dataset for this spec, generated only when it is missing or stale."""
    name = f"sensors-{target_bytes}-s{seed}{'-neg' if negative else ''}.csv"
    path = Path(data_dir) / name
    meta = Path(str(path) + ".meta.json")
    if path.exists() and meta.exists():
        ds = Dataset(**json.loads(meta.read_text()))
        if ds.size == path.stat().st_size:
            return ds
    return generate(path, target_bytes, seed=seed, negative=negative)


def warm(path: str, block: int = 1 << 20) -> None:
    """Read the whole file once so every timed run finds it in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(block):
            pass
