"""Tests that run INSIDE the qemu VM booted on the stord-patched kernel (make kernel-test).

Outside that VM they are skipped with the probe's reason; inside it (STORD_IN_VM=1, set by
vagrant/harness.py) an unavailable hook engine is a failure, not a skip. Test files live on
a ramfs: tmpfs (shmem) has its own read path, ramfs reads through filemap_read().
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

IN_VM = os.environ.get("STORD_IN_VM") == "1"

if IN_VM:   # the guest's root (this repository) is read-only: no example database
    settings.register_profile("stord-vm", database=None, deadline=None)
    settings.load_profile("stord-vm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from stord.engines.hook.engine import HookEngine

    reason = HookEngine.probe()
    if reason is None:
        return
    if IN_VM:
        return   # in the VM the tests run and fail with the engine's own error
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.skip(reason=f"needs the patched kernel: {reason}"))


@pytest.fixture(scope="session")
def ramfs() -> Iterator[Path]:
    """A ramfs mount: its files are read through filemap_read(), where the hook lives."""
    d = Path(tempfile.mkdtemp(prefix="stord-ramfs-"))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", str(d).encode(), b"ramfs", 0, None) != 0:
        err = ctypes.get_errno()
        pytest.fail(f"mount ramfs on {d}: {os.strerror(err)}")
    yield d
    libc.umount2(str(d).encode(), 0)
    d.rmdir()
