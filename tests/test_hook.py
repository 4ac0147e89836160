"""Host-side tests of the hook engine's pieces: the kernel patch series, its uapi as the
Python side sees it, the config fragment, the VM harness, the Vagrantfile, and the engine's
probe on this (unpatched) kernel. The hook itself is tested inside the VM (tests/vm/)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stord.engines.hook import fcntl_abi
from stord.engines.hook.engine import HookEngine
from stord.engines.interp.engine import InterpEngine
from stord.engines.kernel.engine import KernelEngine
from stord.program.elf import load_object
from stord.program.toolchain import builtin_object, compile_c
from stord.query.state import decode

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
        pytest.skip("vagrant not installed (apt-get install vagrant)")
    r = subprocess.run(["vagrant", "validate"], cwd=REPO / "vagrant", capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                     "HOME": str(tmp_path),
                                                     "VAGRANT_HOME": str(tmp_path / "vh")})
    assert r.returncode == 0, r.stdout + r.stderr


# -- bcc (python3-bpfcc), which issue #6 asked the hook engine to load programs with ---------
# These tests pin down, on every run, why the hook engine does not (see the docstring of
# stord/engines/hook/engine.py): what bcc does with the stord sources, against the interp
# engine and the stord loader as oracles. bcc is run by the distro interpreter it is
# packaged for, in a subprocess; a bcc that starts to relocate global data or callbacks
# fails these tests, which is the signal to revisit the engine.

BCC_PYTHON = Path("/usr/bin/python3")
DEBUG_LLVM_IR = 0x1          # bcc's debug flag: print the optimised module on stdout
LDDW = 0x18

# <bpf/bpf_helpers.h> for bcc: libbpf's macros only, since bcc force-includes its own
# helpers.h and libbpf's helper declarations clash with it ("redefinition of
# 'bpf_map_lookup_elem' with a different type").
BCC_HELPERS_STANDIN = """\
#ifndef SEC
#define SEC(name) __attribute__((section(name), used))
#endif
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
"""

# Runs in BCC_PYTHON: compiles each request with bcc, records its entry's lddw
# instructions, the functions bcc kept and whether bcc's BPF.load_func(XDP) loads it. With
# DEBUG_LLVM_IR the optimised modules go to stdout, in request order.
BCC_RUNNER = r"""
import json, struct, sys
from bcc import BPF
reqs, out = json.load(open(sys.argv[1])), []
for r in reqs:
    b = BPF(src_file=r["src"].encode(), cflags=r["cflags"], debug=r["debug"])
    raw = b.dump_func(r["entry"].encode())
    lddw = [[i // 8, raw[i + 1] >> 4, *struct.unpack_from("<i", raw, i + 4),
             *struct.unpack_from("<i", raw, i + 12)]
            for i in range(0, len(raw) - 8, 8) if raw[i] == 0x18]
    lib = __import__("bcc.libbcc", fromlist=["lib"]).lib
    kept = [lib.bpf_function_name(b.module, i).decode()
            for i in range(lib.bpf_num_functions(b.module))]
    sys.stderr.write("@@ %s\n" % r["entry"]); sys.stderr.flush()
    try:
        b.load_func(r["entry"].encode(), BPF.XDP)
        error = None
    except Exception as e:
        error = str(e)
    sys.stderr.flush()
    out.append({"lddw": lddw, "kept": kept, "error": error})
json.dump(out, open(sys.argv[2], "w"))
"""


@dataclass
class BccResult:
    lddw: list[list[int]]     # [slot, src_reg, imm, next imm] of the entry's lddw insns
    kept: list[str]           # functions bcc compiled into loadable sections
    error: str | None         # BPF.load_func's exception, None if it loaded
    log: str                  # what libbcc printed while loading (the verifier log)
    ir: str                   # the optimised LLVM module (with DEBUG_LLVM_IR)


def _kernel_headers(tmp: Path) -> dict[str, str]:
    """Environment for bcc: it compiles against the running kernel's headers. Where there are
    none (this host), Debian's linux-headers `-common` and arch trees merged into one
    directory stand in; XDP programs only need them to get through bcc's own includes."""
    release = os.uname().release
    if Path(f"/lib/modules/{release}/build/include/linux/kconfig.h").exists() or \
            Path("/sys/kernel/kheaders.tar.xz").exists():
        return {}
    for common in sorted(Path("/usr/src").glob("linux-headers-*-common"), reverse=True):
        arch = Path(str(common).removesuffix("-common") + "-amd64")
        if os.uname().machine != "x86_64" or not (arch / "include" / "generated").is_dir():
            continue
        tree = tmp / "kernel-headers"
        for sub in ("include", "arch/x86/include"):
            (tree / sub).mkdir(parents=True)
            for entry in sorted((common / sub).iterdir()):
                (tree / sub / entry.name).symlink_to(entry)
        for entry in sorted((arch / "include").iterdir()):      # config, generated
            (tree / "include" / entry.name).symlink_to(entry)
        (tree / "arch/x86/include/generated").symlink_to(arch / "arch/x86/include/generated")
        return {"BCC_KERNEL_SOURCE": str(tree)}
    pytest.skip("no kernel headers for bcc (apt-get install linux-headers-amd64)")


@pytest.fixture(scope="module")
def bcc(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[BccResult]]:
    """run(requests) -> one BccResult per {"src", "entry", "cflags", "debug"} request."""
    if not BCC_PYTHON.exists() or subprocess.run(
            [str(BCC_PYTHON), "-c", "import bcc"], capture_output=True).returncode != 0:
        pytest.skip("bcc not installed (apt-get install python3-bpfcc)")
    if KernelEngine.probe() is not None:
        pytest.skip(f"kernel engine unavailable: {KernelEngine.probe()}")
    tmp = tmp_path_factory.mktemp("bcc")
    env = dict(os.environ, **_kernel_headers(tmp))
    standin = tmp / "standin"
    (standin / "bpf").mkdir(parents=True)
    (standin / "bpf" / "bpf_helpers.h").write_text(BCC_HELPERS_STANDIN)
    (tmp / "runner.py").write_text(BCC_RUNNER)
    runs = 0

    def run(requests: list[dict[str, Any]]) -> list[BccResult]:
        nonlocal runs
        runs += 1
        req, res = tmp / f"req{runs}.json", tmp / f"res{runs}.json"
        for r in requests:
            r.setdefault("debug", 0)
            r["cflags"] = [*r.get("cflags", []), f"-I{standin}"]
        req.write_text(json.dumps(requests))
        p = subprocess.run([str(BCC_PYTHON), str(tmp / "runner.py"), str(req), str(res)],
                           capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        logs = p.stderr.split("@@ ")[1:]
        irs = [m for m in p.stdout.split("; ModuleID = ") if m.startswith("'/virtual/main.c'")]
        out = []
        for i, r in enumerate(json.loads(res.read_text())):
            ir = "; ModuleID = " + irs.pop(0) if requests[i]["debug"] & DEBUG_LLVM_IR else ""
            out.append(BccResult(r["lddw"], r["kept"], r["error"], logs[i], ir))
        return out

    return run


GLOBAL_COUNTER = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
__u64 runs;
SEC("xdp") int count_runs(struct xdp_md *ctx) { runs++; return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""

LOOP_CALLBACK = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
static long add(__u32 i, void *acc) { *(__u64 *)acc += i; return 0; }
SEC("xdp") int sum_loop(struct xdp_md *ctx)
{
	__u64 acc = 0;
	bpf_loop(10, add, &acc, 0);
	return acc == 45 ? XDP_PASS : XDP_DROP;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def bcc_samples(bcc: Callable[..., list[BccResult]],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, BccResult]:
    tmp = tmp_path_factory.mktemp("samples")
    reqs = []
    for entry, text in (("count_runs", GLOBAL_COUNTER), ("sum_loop", LOOP_CALLBACK)):
        (tmp / f"{entry}.c").write_text(text)
        reqs.append({"src": str(tmp / f"{entry}.c"), "entry": entry})
    return {r["entry"]: res for r, res in zip(reqs, bcc(reqs), strict=True)}


def test_bcc_leaves_global_variables_unrelocated(bcc_samples: dict[str, BccResult]) -> None:
    """A global variable (stord's state and parameters) is an lddw of address 0 after bcc,
    which the verifier refuses; the stord loader runs the same source."""
    got = bcc_samples["count_runs"]
    assert got.lddw and all(src_reg == 0 and imm == 0 and hi == 0
                            for _, src_reg, imm, hi in got.lddw)   # no map, no address
    assert got.error is not None and "invalid mem access 'scalar'" in got.log
    prog = load_object(compile_c(GLOBAL_COUNTER))
    with KernelEngine().load(prog) as inst:
        assert [inst.run_chunk(b"x" * 20, 0, False) for _ in range(3)] == [2, 2, 2]
        assert decode(prog, inst.read_state())["runs"] == 3


def test_bcc_cannot_pass_a_bpf_loop_callback(bcc_samples: dict[str, BccResult]) -> None:
    """bpf_loop's callback is neither loaded nor referenced by bcc (stord.h's CSV scanner
    and grep walk every chunk that way); the stord loader runs the same source."""
    got = bcc_samples["sum_loop"]
    assert got.kept == ["sum_loop"]                  # add() is not among bcc's functions
    assert got.error is not None and "R2 type=scalar expected=func" in got.log
    with KernelEngine().load(load_object(compile_c(LOOP_CALLBACK))) as inst:
        assert inst.run_chunk(b"x" * 20, 0, True) == 2          # 0 + 1 + ... + 9 == 45


BUILTIN_SOURCES = sorted(p.stem for p in (REPO / "bpf").glob("*.c"))


@pytest.fixture(scope="module")
def bcc_builtins(bcc: Callable[..., list[BccResult]]) -> dict[str, BccResult]:
    """Every built-in compiled once by bcc, with its optimised IR."""
    reqs = [{"src": str(REPO / "bpf" / f"{name}.c"),
             "entry": load_object(builtin_object(name)).name,
             "cflags": [f"-I{REPO / 'bpf' / 'include'}"], "debug": DEBUG_LLVM_IR}
            for name in BUILTIN_SOURCES]
    return dict(zip(BUILTIN_SOURCES, bcc(reqs), strict=True))


@pytest.mark.parametrize("name", BUILTIN_SOURCES)
def test_bcc_cannot_load_the_builtin(bcc_builtins: dict[str, BccResult], name: str) -> None:
    got = bcc_builtins[name]
    assert got.error is not None, f"bcc loaded {name}: time to revisit the hook engine"
    assert "invalid mem access 'scalar'" in got.log, got.log[-2000:]
    assert any(src_reg == 0 and imm == 0 for _, src_reg, imm, _ in got.lddw)


@pytest.mark.parametrize("name", BUILTIN_SOURCES)
def test_bcc_ir_through_llc_matches_interp(bcc_builtins: dict[str, BccResult], name: str,
                                           tmp_path: Path) -> None:
    """What bcc's compiler makes of a built-in is right: its optimised IR, emitted by llc
    and loaded by the stord loader, gives the interp engine's answers. The blocker is bcc's
    loader, not its front end."""
    from vm.test_hook_vm import BUILTINS, csv_bytes, with_rodata

    llc = shutil.which("llc-14") or shutil.which("llc")
    if llc is None:
        pytest.skip("llc not installed (apt-get install llvm-14)")
    (tmp_path / "prog.ll").write_text(bcc_builtins[name].ir)
    subprocess.run([llc, "-march=bpf", "-mcpu=v3", "-filetype=obj", "prog.ll", "-o", "prog.o"],
                   cwd=tmp_path, check=True)
    data = csv_bytes(400, seed=5)
    for key in [k for k in BUILTINS if (k == "count_gt" and name == "count") or k == name]:
        params = dict(BUILTINS[key])
        progs = []
        for obj in ((tmp_path / "prog.o").read_bytes(), builtin_object(name)):
            prog = load_object(obj)
            for k in [k for k, v in params.items() if isinstance(v, bytes)]:
                prog = with_rodata(prog, k, params[k])
            progs.append(prog.with_params(**{k: v for k, v in params.items()
                                             if not isinstance(v, bytes)}))
        bcc_prog, ref = progs
        assert bcc_prog.section == ref.section == "xdp"
        results = []
        for engine, prog in ((KernelEngine(), bcc_prog), (InterpEngine(), ref)):
            with engine.load(prog) as inst:
                verdicts = [inst.run_chunk(data[pos:pos + 3000], pos, pos + 3000 >= len(data))
                            for pos in range(0, len(data), 3000)]
                results.append((verdicts, decode(prog, inst.read_state())))
        assert results[0] == results[1], key
