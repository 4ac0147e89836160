"""The upstream bpf_conformance vectors on the interp engine, and the stord-conformance CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stord.cli.conformance import main, parse_vector, run_vector
from stord.engines.base import get_engine
from stord.program import isa
from stord.program.asm import assemble

VECTORS = Path("/work/shared/conformance/tests")
FILES = sorted(VECTORS.glob("*.data"))


@pytest.fixture(scope="module")
def interp():
    return get_engine("interp")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector(interp, path: Path) -> None:
    status, detail = run_vector(interp, parse_vector(path))
    assert status == "pass", detail


def test_all_313_vectors_are_run() -> None:
    assert len(FILES) == 313


def test_cli_summary_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = VECTORS / "add.data"
    wrong = tmp_path / "wrong.data"
    # The same program with a result the ISA does not produce must be reported as failed.
    wrong.write_text(good.read_text().replace("-- result\n0x3", "-- result\n0x4"))
    assert "0x4" in wrong.read_text()
    must_fail = tmp_path / "must_fail.data"
    must_fail.write_text("-- asm\nmov %r0, 1\nexit\n-- error\nanything\n")
    faults = tmp_path / "faults.data"
    faults.write_text("-- asm\nldxdw %r0, [%r1+100]\nexit\n-- mem\n00 01\n-- error\n")
    rc = main(["--engine", "interp", str(good), str(wrong), str(must_fail), str(faults)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert out[-1] == "2 passed, 2 failed, 0 skipped"
    assert any(line.startswith("FAIL wrong.data") for line in out)
    assert any(line.startswith("FAIL must_fail.data") for line in out)


def test_cli_whole_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(VECTORS)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "313 passed, 0 failed, 0 skipped"


def test_raw_takes_precedence_over_asm(tmp_path: Path, interp) -> None:
    f = tmp_path / "raw.data"
    raw = "\n".join(f"0x{int.from_bytes(i.encode(), 'little'):016x}"
                    for i in assemble("mov %r0, 7\nexit"))
    f.write_text(f"-- asm\nmov %r0, 1\nexit\n-- raw\n{raw}\n-- result\n0x7\n")
    assert run_vector(interp, parse_vector(f)) == ("pass", "")


def test_plugin_protocol() -> None:
    """The upstream runner's protocol: MEMHEX argument, base16 program on stdin."""
    code = isa.encode(assemble("ldxh %r0, [%r1+1]\nadd %r0, %r2\nexit")).hex()
    p = subprocess.run([sys.executable, "-m", "stord.cli.conformance", "--plugin",
                        "01  02  03  04  "], input=code, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.strip(), 16) == 0x0302 + 4
    bad = isa.encode(assemble("ldxdw %r0, [%r1+100]\nexit")).hex()
    p = subprocess.run([sys.executable, "-m", "stord.cli.conformance", "--plugin", "00  "],
                       input=bad, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "ProgramFault" in p.stderr


def test_failure_details_stay_on_one_line() -> None:
    from stord.cli.conformance import one_line
    assert one_line("verifier log\n0: (b7) r0 = 1\n\ninvalid shift 60\n") == \
        "verifier log ... invalid shift 60"
    assert len(one_line("x" * 1000)) == 300
