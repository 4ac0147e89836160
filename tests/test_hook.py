"""Host-side tests of the hook engine's pieces: the kernel patch series, its uapi as the
Python side sees it, the config fragment, the VM harness, the Vagrantfile, and the engine's
probe on this (unpatched) kernel. The hook itself is tested inside the VM (tests/vm/)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stord.engines.hook import fcntl_abi
from stord.engines.hook.engine import HookEngine

REPO = Path(__file__).resolve().parents[1]
KP = REPO / "kernel_patch"
TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")


def series() -> list[Path]:
    names = [ln.strip() for ln in (KP / "patches" / "series").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return [KP / "patches" / n for n in names]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the series modifies, from Debian's linux-source-6.12 tarball (GNU tar: the
    Python tarfile module takes a minute over this 140 MB xz stream)."""
    if not TARBALL.exists():
        pytest.skip(f"{TARBALL} missing (apt-get install linux-source-6.12)")
    out = tmp_path_factory.mktemp("linux")
    # files the series creates come with "--- /dev/null"; the others are in the tarball
    wanted = sorted({f"linux-source-6.12/{f}" for p in series()
                     for f in re.findall(r"^--- a/(\S+)", p.read_text(), re.M)})
    subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(out), *wanted], check=True)
    return out / "linux-source-6.12"


def test_series_applies_and_reverts_cleanly(pristine: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    before = {p.relative_to(tree): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    for patch in series():
        r = subprocess.run(["patch", "-p1", "-f", "--dry-run", "-s", "-i", str(patch)],
                           cwd=tree, capture_output=True, text=True)
        assert r.returncode == 0, f"{patch.name}: {r.stdout}{r.stderr}"
        subprocess.run(["patch", "-p1", "-f", "-s", "-i", str(patch)], cwd=tree, check=True)
    filemap = (tree / "mm" / "filemap.c").read_text()
    # the hook sits in filemap_read, in front of the copy to the reader
    body = filemap[filemap.index("ssize_t filemap_read("):]
    body = body[:body.index("EXPORT_SYMBOL_GPL(filemap_read)")]
    assert body.index("stord_read_hook_folio(") < body.index("copy_folio_to_iter(")
    for patch in reversed(series()):
        subprocess.run(["patch", "-p1", "-R", "-f", "-s", "-i", str(patch)], cwd=tree,
                       check=True)
    after = {p.relative_to(tree): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    assert after == before


def test_uapi_matches_the_python_side(pristine: Path, tmp_path: Path) -> None:
    """Compile a C program against the patch's uapi header: its constants and struct
    layouts must be what stord.engines.hook.fcntl_abi packs."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    inc = tmp_path / "inc" / "linux"
    inc.mkdir(parents=True)
    text = (KP / "patches" / "0001-mm-stord-read-hook.patch").read_text()
    hdr = text.split("+++ b/include/uapi/linux/stord_read_hook.h\n", 1)[1]
    hdr = hdr.split("\ndiff --git", 1)[0]
    lines = [ln[1:] for ln in hdr.splitlines() if ln.startswith("+")]
    (inc / "stord_read_hook.h").write_text("\n".join(lines) + "\n")
    src = tmp_path / "abi.c"
    src.write_text("""#include <stdio.h>
#include <stddef.h>
#include <linux/stord_read_hook.h>
int main(void) {
  printf("%d %d %u %llu\\n", F_STORD_ATTACH, F_STORD_STATS, STORD_READ_MAX_CHUNK,
         (unsigned long long)STORD_READ_TO_EOF);
  printf("%zu %zu %zu %zu\\n", sizeof(struct stord_read_attach),
         offsetof(struct stord_read_attach, prog_fd), offsetof(struct stord_read_attach, chunk),
         offsetof(struct stord_read_attach, range_end));
  printf("%zu %zu\\n", sizeof(struct stord_read_stats), sizeof(struct stord_read_meta));
  return 0;
}
""")
    exe = tmp_path / "abi"
    subprocess.run(["gcc", f"-I{tmp_path / 'inc'}", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out[:4]] == [fcntl_abi.F_STORD_ATTACH, fcntl_abi.F_STORD_STATS,
                                         fcntl_abi.STORD_READ_MAX_CHUNK,
                                         fcntl_abi.STORD_READ_TO_EOF]
    assert int(out[4]) == fcntl_abi._ATTACH.size
    assert [int(x) for x in out[5:8]] == [0, 4, 8]     # "<iIQ"
    assert int(out[8]) == fcntl_abi._STATS.size
    assert int(out[9]) == 16                            # struct stord_meta, architecture.md


def test_probe_refuses_an_unpatched_kernel(tmp_path: Path) -> None:
    """This machine runs a stock kernel: F_STORD_STATS is unknown there (EINVAL), so the
    engine must say so instead of pretending."""
    with open(tmp_path / "f", "wb") as f:
        assert not fcntl_abi.kernel_has_hook(f.fileno())
    reason = HookEngine.probe()
    assert reason is not None and "no stord read hook" in reason


def test_config_fragment_names_the_hook_and_9p() -> None:
    opts = dict(ln.split("=", 1) for ln in (KP / "stord.config").read_text().splitlines()
                if ln.startswith("CONFIG_"))
    for name in ("STORD_READ_HOOK", "BPF_SYSCALL", "DEBUG_INFO_BTF", "IKHEADERS", "NET_9P_VIRTIO",
                 "9P_FS", "VIRTIO_PCI", "SERIAL_8250_CONSOLE"):
        assert opts.get(f"CONFIG_{name}") == "y", name
    patch = (KP / "patches" / "0001-mm-stord-read-hook.patch").read_text()
    assert "+config STORD_READ_HOOK\n" in patch


def test_qemu_command_shares_root_read_only(tmp_path: Path) -> None:
    from vagrant import harness

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    cmd = harness.qemu_command(tmp_path / "bzImage", tmp_path)
    joined = " ".join(cmd)
    assert "path=/,security_model=none,readonly=on" in joined
    assert f"path={tmp_path}," in joined and "mount_tag=stordwork" in joined
    assert "-no-reboot" in cmd and cmd[cmd.index("-accel") + 1] == "tcg"
    append = cmd[cmd.index("-append") + 1]
    assert f"init={harness.GUEST_INIT}" in append and "rootfstype=9p" in append


def test_vm_boots_and_reports_the_exit_status() -> None:
    """A real boot of the built kernel (skipped until kernel_patch/build.sh has run)."""
    from vagrant import harness

    try:
        kernel = harness.kernel_image()
    except harness.HarnessError as e:
        pytest.skip(str(e))
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    res = harness.run_in_vm('echo "release=$(uname -r) hook=$(grep -c '
                            'stord_read_hook_folio /proc/kallsyms)"; exit 7\n',
                            kernel=kernel, timeout=300, echo=False)
    assert res.rc == 7
    assert "STORD-VM-EXIT 7" in res.console
    m = re.search(r"release=(\S+) hook=(\d+)", res.console)
    assert m is not None, res.console[-2000:]
    assert m.group(1).startswith("6.12") and int(m.group(2)) >= 1


def test_vagrantfile_validates(tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant not installed (make kernel-test installs it)")
    r = subprocess.run(["vagrant", "validate"], cwd=REPO / "vagrant", capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                     "HOME": str(tmp_path),
                                                     "VAGRANT_HOME": str(tmp_path / "vh")})
    assert r.returncode == 0, r.stdout + r.stderr
