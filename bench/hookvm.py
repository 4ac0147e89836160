"""The hook engine's figures, which only a VM running our patched kernel can produce.

`python -m vagrant.harness bench` runs vagrant/bench.py inside qemu (TCG: an emulated CPU)
and leaves its JSON in kernel_patch/out/bench-hook.json. This module reads that file (or,
with --hook-vm, runs the harness first) so the report can show it next to the host figures,
labelled as a separate run whose only meaningful numbers are its ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "kernel_patch" / "out" / "bench-hook.json"


def run_vm(mb: int = 32, repeat: int = 3, timeout: float = 1800) -> str | None:
    """Run the VM bench; None on success, else why it failed (one line)."""
    try:
        r = subprocess.run([sys.executable, "-m", "vagrant.harness", "bench", "--mb", str(mb),
                            "--repeat", str(repeat)], cwd=REPO, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the VM bench did not finish in {timeout:.0f} s"
    if r.returncode:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the VM bench failed ({r.returncode}): {tail}"
    return None


def load(path: Path = RESULT) -> dict[str, Any] | None:
    """The last VM result with the file's time, or None when there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "seconds" not in data:
        return None
    data["file"] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    data["file_time_utc"] = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime(
        "%Y-%m-%d %H:%M:%S")
    return data
