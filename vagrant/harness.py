"""Boot the stord-patched kernel under qemu (TCG) and run commands or the VM tests inside.

The guest's root file system is this machine's, shared read-only over virtio-9p, so the
guest runs the same Python, venv and repository as the host with no image to build; /tmp
is a tmpfs and a per-run host directory is shared writable at /tmp/work (results, the
script to run, its exit status). vagrant/guest_init.sh is PID 1.

    python -m vagrant.harness test            # selftest + tests/vm inside the VM
    python -m vagrant.harness bench [ARGS]    # vagrant/bench.py inside the VM; JSON result
                                              # also in kernel_patch/out/bench-hook.json
    python -m vagrant.harness run -- CMD...   # any command inside the VM

Why TCG: nested KVM does not work on these machines (see /work/shared/ENVIRONMENT.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL_OUT = Path(os.environ.get("STORD_KERNEL_OUT", REPO / "kernel_patch" / "out"))
GUEST_INIT = REPO / "vagrant" / "guest_init.sh"
EXIT_MARK = "STORD-VM-EXIT"
DEFAULT_TIMEOUT = 1200.0   # seconds for one VM run; TCG runs Python ~10x slower than native
DEFAULT_MEM_MB = 2048
BENCH_RESULT = KERNEL_OUT / "bench-hook.json"   # the last `bench` run's JSON (bench/ reads it)


class HarnessError(Exception):
    """The VM could not be started or did not finish; one line for the user."""


@dataclass
class VmResult:
    rc: int            # the guest script's exit status (125: no work dir, 124: timeout)
    console: str       # everything the guest printed on its serial console
    workdir: Path      # the shared directory (kept when keep=True)


def kernel_image() -> Path:
    image = Path(os.environ.get("STORD_KERNEL", KERNEL_OUT / "bzImage"))
    if not image.exists():
        raise HarnessError(f"no kernel at {image}: run `bash kernel_patch/build.sh` first")
    return image.resolve()


def selftest_binary() -> Path:
    return (KERNEL_OUT / "stord_read_hook").resolve()


def qemu_binary() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise HarnessError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return qemu


def kernel_cmdline(extra: str = "") -> str:
    root = ("root=hostroot rootfstype=9p ro "
            "rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose")
    # stord_repo: where guest_init.sh mounts the "stordrepo" share, so a checkout under a
    # path the guest covers with its own tmpfs (/tmp, /run) stays visible at the same path.
    return (f"console=ttyS0 {root} init={GUEST_INIT} panic=-1 loglevel=4 "
            f"stord_repo={REPO} {extra}").strip()


def qemu_command(kernel: Path, workdir: Path, *, mem_mb: int = DEFAULT_MEM_MB,
                 cpus: int = 1, extra_cmdline: str = "") -> list[str]:
    # one vCPU by default: the host's two cores are shared with other work
    return [
        qemu_binary(), "-accel", "tcg", "-cpu", "max", "-m", str(mem_mb), "-smp", str(cpus),
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-net", "none",
        "-kernel", str(kernel), "-append", kernel_cmdline(extra_cmdline),
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
        "-fsdev", f"local,id=work,path={workdir},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=work,mount_tag=stordwork",
        "-fsdev", f"local,id=repo,path={REPO},security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=repo,mount_tag=stordrepo",
    ]


def run_in_vm(script: str, *, kernel: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
              echo: bool = True, keep: bool = False, mem_mb: int = DEFAULT_MEM_MB,
              cpus: int = 1) -> VmResult:
    """Boot the VM, run `script` (sh) in it from /tmp/work, return its status and console."""
    kernel = kernel or kernel_image()
    workdir = Path(tempfile.mkdtemp(prefix="stord-vm-"))
    (workdir / "run.sh").write_text(script)
    cmd = qemu_command(kernel, workdir, mem_mb=mem_mb, cpus=cpus)
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        timed_out = True
    reader.join(timeout=5)
    console = "".join(lines)
    rc_file = workdir / "rc"
    if timed_out:
        rc = 124
    elif rc_file.exists():
        rc = int(rc_file.read_text().strip() or "125")
    else:
        rc = 125
    if not keep and not timed_out:
        shutil.rmtree(workdir, ignore_errors=True)
    if rc == 125 and EXIT_MARK not in console:
        tail = "\n".join(console.strip().splitlines()[-15:])
        raise HarnessError(f"the VM ended without running the script (qemu rc "
                           f"{proc.returncode}); console tail:\n{tail}")
    return VmResult(rc=rc, console=console, workdir=workdir)


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else Path(sys.executable))


def test_script(pytest_args: list[str]) -> str:
    """Selftest (C, from the patch series) and then the Python VM tests."""
    args = " ".join(shlex.quote(a) for a in pytest_args)
    return f"""set -u
echo "guest kernel: $(uname -r)"
status=0
{shlex.quote(str(selftest_binary()))} || status=1
cd {shlex.quote(str(REPO))}
{_guest_cache()}
export PYTHONDONTWRITEBYTECODE=1 STORD_IN_VM=1 STORD_CACHE_DIR=/tmp/stord-cache
{shlex.quote(_python())} -m pytest -q -p no:cacheprovider --color=no -rs tests/vm {args} || status=1
exit $status
"""


def _guest_cache() -> str:
    """sh: seed the guest's writable program cache with what prepare_host() compiled."""
    host = shlex.quote(str(KERNEL_OUT / "stord-cache"))
    return f"mkdir -p /tmp/stord-cache && cp -r {host}/. /tmp/stord-cache/ 2>/dev/null"


def prepare_host() -> None:
    """Work the guest cannot do on a read-only root: compile the built-in programs into the
    cache that the guest then copies (clang runs ~10x slower under TCG)."""
    env = dict(os.environ, STORD_CACHE_DIR=str(KERNEL_OUT / "stord-cache"))
    subprocess.run([_python(), "-c",
                    "from stord.program.toolchain import builtin_object as b\n"
                    "import pathlib\n"
                    "for p in sorted(pathlib.Path('bpf').glob('*.c')): b(p.stem)"],
                   cwd=REPO, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vagrant.harness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    ap.add_argument("--keep", action="store_true", help="keep the shared work directory")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test", help="selftest and tests/vm in the VM")
    t.add_argument("pytest_args", nargs="*")
    sub.add_parser("bench", help="vagrant/bench.py in the VM; other arguments go to it")
    r = sub.add_parser("run", help="run a shell command in the VM")
    r.add_argument("command", nargs=argparse.REMAINDER)
    a, extra = ap.parse_known_args(argv)
    if extra and a.cmd != "bench":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if a.cmd == "test":
            prepare_host()
            script = test_script(a.pytest_args)
        elif a.cmd == "bench":
            prepare_host()
            args = " ".join(shlex.quote(x) for x in extra)
            script = (f"{_guest_cache()}\ncd {shlex.quote(str(REPO))} && PYTHONDONTWRITEBYTECODE=1 "
                      f"STORD_CACHE_DIR=/tmp/stord-cache {shlex.quote(_python())} "
                      f"-m vagrant.bench --out /tmp/work/bench.json {args}\n")
        else:
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            script = " ".join(shlex.quote(x) for x in cmd) + "\n"
        started = time.monotonic()
        res = run_in_vm(script, timeout=a.timeout, keep=a.keep or a.cmd == "bench")
    except HarnessError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 2
    if a.cmd == "bench":
        result = res.workdir / "bench.json"
        if result.exists():
            BENCH_RESULT.write_bytes(result.read_bytes())
            print(f"harness: bench result in {BENCH_RESULT}", file=sys.stderr)
        if not a.keep:
            shutil.rmtree(res.workdir, ignore_errors=True)
    print(f"harness: guest script exited {res.rc} after {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return res.rc


if __name__ == "__main__":
    sys.exit(main())
