"""Verified kernel programs kept for reuse within one process (LRU, bounded).

Verifying a built-in costs the kernel ~100 ms, running it over a small file ~1 ms: so a
loaded program's kernel objects (BTF, maps, program fds) outlive the Instance that made
them. The cache holds only idle entries: acquire() takes an entry out, so an entry is
used by at most one Instance at a time, and release() resets it to the state of a fresh
load before putting it back. A second Instance of a program whose entry is in use loads
its own objects (verifying again) rather than waiting: a caller may hold both instances in
one thread (waiting would deadlock), and the case is rare (a worker runs one query at a
time). Then only one of the two is kept on release.

Entries that cannot be reset, whose reset fails, or whose maps are larger than the byte
bound are closed instead of kept. Eviction, clear() and process exit close the fds; after
fork() the child closes its copies of the parent's idle entries, and an entry in use at
fork() is closed, not kept, when the child gives it back: parent and child never share
maps through the cache.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

MAX_PROGRAMS = 16
MAX_BYTES = 64 << 20   # map memory (keys + values, per-CPU copies) the idle entries may pin


class Entry(Protocol):
    pid: int          # the process that created the kernel objects
    nbytes: int       # map memory the entry pins in the kernel
    resettable: bool

    def reset(self) -> None:
        """Back to the state of a fresh load; raises OSError when that failed."""

    def close(self) -> None: ...


class ProgramCache:
    def __init__(self, max_programs: int = MAX_PROGRAMS, max_bytes: int = MAX_BYTES) -> None:
        self.max_programs = max_programs
        self.max_bytes = max_bytes
        self._idle: OrderedDict[Hashable, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        """Entries inherited through fork() are the parent's: close the child's copies of
        their fds (the parent's stay open). A new lock: another thread may have held it."""
        self._lock = threading.Lock()
        stale, self._idle = list(self._idle.values()), OrderedDict()
        for e in stale:
            e.close()

    def acquire(self, key: Hashable) -> Entry | None:
        """The idle entry for `key`, now owned by the caller, or None."""
        with self._lock:
            return self._idle.pop(key, None)

    def release(self, key: Hashable, entry: Entry) -> None:
        """Give an entry back after use: reset and kept, or closed."""
        keep = (entry.resettable and entry.pid == os.getpid()
                and entry.nbytes <= self.max_bytes and self.max_programs > 0)
        if keep:
            try:
                entry.reset()
            except OSError:
                keep = False
            except BaseException:
                entry.close()
                raise
        evicted: list[Entry] = []
        with self._lock:
            if keep and key not in self._idle:
                self._idle[key] = entry
                total = sum(e.nbytes for e in self._idle.values())
                while len(self._idle) > self.max_programs or total > self.max_bytes:
                    _, old = self._idle.popitem(last=False)
                    total -= old.nbytes
                    evicted.append(old)
            else:
                evicted.append(entry)
        for e in evicted:
            e.close()

    def clear(self) -> None:
        """Close every idle entry. Entries in use stay open with their Instance (and are
        kept when given back)."""
        with self._lock:
            stale, self._idle = list(self._idle.values()), OrderedDict()
        for e in stale:
            e.close()

    def __len__(self) -> int:
        return len(self._idle)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._idle


PROGRAMS = ProgramCache()
atexit.register(PROGRAMS.clear)
os.register_at_fork(after_in_child=PROGRAMS.after_fork_in_child)
