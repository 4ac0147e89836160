"""Start a stord daemon as a child process and learn its address (demo, tests, bench).

The daemon logs one JSON line per event to stderr; we send that to a file and wait for the
"listening" event, which carries the real address (port 0 in the config = a free port).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path
    pid: int

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "line": line})
        return out

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child stord/stor process run from this checkout."""
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "clients")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def start_daemon(config: Path | None, log_path: Path, *, cwd: Path | None = None,
                 args: tuple[str, ...] = (), timeout: float = 60.0) -> Daemon:
    cmd = [sys.executable, "-m", "stord.cli.stord", "serve"]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += list(args)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=cwd,
                                env=child_env(), start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "listening":
                return Daemon(proc, rec["addr"], log_path, proc.pid)
        if proc.poll() is not None:
            raise RuntimeError(f"stord exited with {proc.returncode}: "
                               f"{log_path.read_text().strip()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"stord did not start within {timeout} s: {log_path.read_text()[-2000:]}")
