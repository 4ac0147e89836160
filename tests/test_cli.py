"""`stor` and `stord` as a user runs them (subprocesses), against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALICE, BUILTIN_CASES, csv_numbers, oracle, resolve_names, same_answer
from test_client import NEWLINES, REPORTS_OVERFLOW
from test_server import OUT_OF_BOUNDS

from stord.server.launch import child_env


def run(*args: str, host: str | None = None, token: str | None = ALICE,
        module: str = "stord.cli.stor", timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    if host is not None:
        cmd += ["--host", host]
    if token is not None and module == "stord.cli.stor":
        cmd += ["--token", token]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(p: subprocess.CompletedProcess, code: str | None = None) -> str:
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr          # one clear line, never a traceback
    assert lines[0].startswith("stor: ") and "Traceback" not in p.stderr
    if code is not None:
        assert lines[0].startswith(f"stor: {code}:"), lines[0]
    return lines[0]


def test_ping_and_stats(daemon) -> None:
    p = run("ping", "--json", host=daemon.address)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["version"]
    p = run("stats", "--json", host=daemon.address)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["daemon_rss"] > 0 and "bytes_scanned" in s
    p = run("stats", host=daemon.address)
    assert p.returncode == 0 and "queries_served:" in p.stdout


def test_avg_json_by_name_and_index(daemon, engine, data_root) -> None:
    vals = csv_numbers(data_root / "data" / "sensors.csv", 2)
    want = float(sum(vals) / len(vals))
    outs = []
    for col in ("value", "2"):
        p = run("avg", "data/sensors.csv", "--column", col, "--header", "--engine", engine,
                "--json", host=daemon.address)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert set(out) == {"result", "stats"}
        v = out["result"]["avg"] if isinstance(out["result"], dict) else out["result"]
        assert v == pytest.approx(want, rel=1e-12)
        assert out["stats"]["bytes_scanned"] == (data_root / "data" / "sensors.csv").stat().st_size
        outs.append(out["result"])
    assert outs[0] == outs[1]


def test_human_output(daemon, engine) -> None:
    p = run("avg", "data/sensors.csv", "-c", "value", "--header", "--engine", engine,
            host=daemon.address)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()
    assert "scanned" in p.stderr and "returned" in p.stderr and engine in p.stderr


def test_query_with_program_file_and_params(daemon, engine, data_root, tmp_path) -> None:
    src = tmp_path / "count_byte.c"
    src.write_text(NEWLINES)
    data = (data_root / "data" / "sensors.csv").read_bytes()
    p = run("query", str(src), "data/sensors.csv", "-p", "ch=44", "--engine", engine,
            "--json", host=daemon.address)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["result"] == {"hits": data.count(b",")}


@pytest.mark.parametrize("args, code", [
    (("avg", "data/nope.csv", "-c", "1"), "not_found"),
    (("avg", "data/../outside/passwd.csv", "-c", "1"), "access_denied"),
    (("avg", "other/secret.csv", "-c", "1"), "access_denied"),
    (("count", "data/sensors.csv", "--engine", "warp"), "engine_unavailable"),
])
def test_errors_are_one_line(daemon, args, code) -> None:
    one_error_line(run(*args, host=daemon.address), code)


def test_error_on_overflow(daemon, engine, tmp_path) -> None:
    src = tmp_path / "ovf.c"
    src.write_text(REPORTS_OVERFLOW)
    one_error_line(run("query", str(src), "data/sensors.csv", "--engine", engine,
                       host=daemon.address), "overflow")


def test_bad_token_and_no_daemon(daemon) -> None:
    one_error_line(run("count", "data/sensors.csv", host=daemon.address, token="wrong"),
                   "access_denied")
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    line = one_error_line(run("ping", host=f"127.0.0.1:{port}"))
    assert "connection refused" in line


def test_usage_error_exit_2(daemon) -> None:
    p = run("count", "data/sensors.csv", "--op", "gt", host=daemon.address)
    assert p.returncode == 2 and "go together" in p.stderr


def test_stord_build(tmp_path) -> None:
    src = tmp_path / "p.c"
    src.write_text(NEWLINES)
    out = tmp_path / "p.o"
    p = run("build", str(src), "-o", str(out), module="stord.cli.stord", token=None)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:4] == b"\x7fELF"
    bad = tmp_path / "bad.c"
    bad.write_text("int f(void) { return nope; }\n")
    p = run("build", str(bad), module="stord.cli.stord", token=None)
    assert p.returncode == 1 and p.stderr.startswith("stord: compile_error:")


def test_stord_verify(tmp_path) -> None:
    from stord.engines.base import available_engines
    reason = available_engines().get("kernel")
    if reason is not None:
        pytest.skip(f"kernel engine unavailable: {reason}")
    good, bad = tmp_path / "good.c", tmp_path / "bad.c"
    good.write_text(REPORTS_OVERFLOW)
    bad.write_text(OUT_OF_BOUNDS)
    p = run("verify", str(good), module="stord.cli.stord", token=None)
    assert p.returncode == 0, p.stderr
    assert "accepted by the kernel verifier" in p.stderr
    p = run("verify", str(bad), module="stord.cli.stord", token=None)
    assert p.returncode == 1 and p.stderr.startswith("stord: verifier_rejected:")


def test_stord_serve_bad_config(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('listen = "127.0.0.1:0"\n[exports]\nx = "/does/not/exist"\n')
    p = run("serve", "--config", str(cfg), module="stord.cli.stord", token=None, timeout=60)
    assert p.returncode == 1
    assert "not a directory" in p.stderr and "Traceback" not in p.stderr


def test_example_config_parses(tmp_path) -> None:
    import tomllib

    from stord.server.config import parse_config
    raw = tomllib.loads((Path(__file__).parents[1] / "docs" / "stord.toml.example").read_text())
    raw["exports"] = {name: str(tmp_path) for name in raw["exports"]}
    cfg = parse_config(raw)
    assert cfg.port == 7411 and {t.name for t in cfg.tenants} == {"analytics", "ops"}


def test_demo(engine) -> None:
    p = subprocess.run([sys.executable, "-m", "stord.cli.demo", "--rows", "300", "--engine",
                        engine], env=child_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bytes scanned on the node" in p.stdout and "stopped (exit code 0)" in p.stdout


def cli_args(name: str, path: str, params: dict) -> list[str]:
    """The stor command line a user would type for a built-in with these parameters."""
    p = dict(params)
    args = [name, path]
    if name == "grep":
        return args + [p.pop("pattern")]
    flags = {"column": "--column", "op": "--op", "value": "--value", "lo": "--lo",
             "width": "--width", "nbuckets": "--buckets", "key": "--key"}
    if p.pop("header", False):
        args.append("--header")
    for k, v in p.items():
        args += [flags[k], str(v)]
    return args


@pytest.mark.parametrize("name, file, params", BUILTIN_CASES,
                         ids=[f"{n}-{f}-{i}" for i, (n, f, _) in enumerate(BUILTIN_CASES)])
def test_builtin_via_cli_matches_oracle(daemon, engine, data_root, messy, name, file,
                                        params) -> None:
    path = messy if file == "messy" else data_root / "data" / "sensors.csv"
    p = run(*cli_args(name, f"data/{path.name}", params), "--engine", engine, "--json",
            host=daemon.address)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    same_answer(name, out["result"], oracle(name, path, resolve_names(params, path)))
    assert out["stats"]["bytes_scanned"] == path.stat().st_size
    if file == "messy":
        return
    # and the human form prints without error
    h = run(*cli_args(name, f"data/{path.name}", params), "--engine", engine,
            host=daemon.address)
    assert h.returncode == 0 and h.stdout.strip(), h.stderr


def test_describe_is_the_stats_builtin(daemon, engine, data_root) -> None:
    path = data_root / "data" / "sensors.csv"
    vals = csv_numbers(path, 2)
    p = run("describe", "data/sensors.csv", "-c", "value", "--engine", engine, "--json",
            host=daemon.address)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)["result"]
    assert r["count"] == r["rows"] == len(vals)
    assert r["min"] == pytest.approx(float(min(vals))) and r["max"] == pytest.approx(
        float(max(vals)))
    assert r["avg"] == pytest.approx(float(sum(vals) / len(vals)), rel=1e-12)


@pytest.mark.parametrize("delim, flag", [("\t", "tab"), (";", ";"), ("|", "|")])
def test_other_delimiters_by_column_name(daemon, engine, data_root, delim, flag) -> None:
    rows = [["k", "v w"], ["a", "1.25"], ["b", "-3"], ["a", "x"], ["c", "10"]]
    path = data_root / "data" / f"delim{ord(delim)}.csv"
    path.write_text("\n".join(delim.join(r) for r in rows) + "\n")
    p = run("sum", f"data/{path.name}", "--column", "v w", "--delimiter", flag, "--engine",
            engine, "--json", host=daemon.address)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["result"] == pytest.approx(1.25 - 3 + 10)
    assert out["stats"]["skipped"] == 1


def test_groupby_latin1_keys_stay_distinct(daemon, engine, data_root) -> None:
    # "Zürich" and "Zörich" in Latin-1 are not UTF-8: a lossy decode would merge them.
    from stord_client import Client

    path = data_root / "data" / "latin1.csv"
    rows = [b"Z\xfcrich,1", b"Z\xf6rich,2", b"Z\xfcrich,4", b"Bern,8", "Gen\u00e8ve,16".encode()]
    path.write_bytes(b"\n".join(rows) + b"\n")
    try:
        with Client(daemon.address, token=ALICE) as c:
            r = c.query("data/latin1.csv", "groupby", key=0, column=1, scale=0, engine=engine)
        sums = {k: g["sum"] for k, g in r.value.items()}
        assert sums == {b"Z\xfcrich": 5, b"Z\xf6rich": 2, "Bern": 8, "Gen\u00e8ve": 16}
        p = run("groupby", "data/latin1.csv", "--key", "0", "--column", "1",
                "--engine", engine, "--json", host=daemon.address)
        assert p.returncode == 0, p.stderr
        got = {k: float(g["sum"]) for k, g in json.loads(p.stdout)["result"].items()}
        assert got == {"Z\\xfcrich": 5, "Z\\xf6rich": 2, "Bern": 8, "Gen\u00e8ve": 16}
        p = run("groupby", "data/latin1.csv", "--key", "0", "--column", "1",
                "--engine", engine, host=daemon.address)
        assert p.returncode == 0, p.stderr
        assert "Z\\xfcrich" in p.stdout and "Z\\xf6rich" in p.stdout
    finally:
        path.unlink()
