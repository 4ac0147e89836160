"""The uapi of the stord read hook (kernel_patch/, include/uapi/linux/stord_read_hook.h)."""

from __future__ import annotations

import errno
import fcntl
import struct
from dataclasses import dataclass

F_LINUX_SPECIFIC_BASE = 1024
F_STORD_ATTACH = F_LINUX_SPECIFIC_BASE + 64
F_STORD_STATS = F_LINUX_SPECIFIC_BASE + 65
STORD_READ_MAX_CHUNK = 64 * 1024
STORD_READ_TO_EOF = (1 << 64) - 1   # range_end: no end but the file's

_ATTACH = struct.Struct("<iIQ")     # prog_fd, chunk, range_end
_STATS = struct.Struct("<4Q")       # runs, passed, dropped, last_runs


@dataclass(frozen=True)
class HookStats:
    runs: int        # program runs
    passed: int      # bytes copied to the reader (XDP_PASS)
    dropped: int     # bytes whose copy was skipped (XDP_DROP)
    last_runs: int   # runs that carried STORD_LAST


def attach(fd: int, prog_fd: int, *, chunk: int = 0,
           range_end: int = STORD_READ_TO_EOF) -> None:
    """Run prog_fd on every read of this open file description, up to range_end (reads
    stop there); chunk = max bytes per program run (0: PAGE_SIZE); prog_fd = -1 detaches."""
    fcntl.fcntl(fd, F_STORD_ATTACH, _ATTACH.pack(prog_fd, chunk, range_end))


def detach(fd: int) -> None:
    attach(fd, -1)


def stats(fd: int) -> HookStats | None:
    """The attachment's counters, None when nothing is attached to this open file."""
    try:
        raw = fcntl.fcntl(fd, F_STORD_STATS, bytes(_STATS.size))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return HookStats(*_STATS.unpack(raw))


def kernel_has_hook(probe_fd: int) -> bool:
    """A patched kernel answers F_STORD_STATS on a regular file without a hook with ENOENT;
    any other kernel does not know the command (EINVAL)."""
    try:
        stats(probe_fd)
    except OSError:
        return False
    return True
