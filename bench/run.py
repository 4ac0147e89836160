"""`python -m bench.run`: where stord stands against what users would do instead.

Sections (all by default; choose with --only): throughput (stord engines, the naive C
baseline, the same-job C baseline, DuckDB, pandas, csv module on one generated CSV), jit (compile cold/cached, range split over
1 vs 2 processes), pushdown (stord vs pull over a shaped veth link between two network
namespaces), latency (round trips and a concurrency sweep against a daemon on loopback).
Writes bench/results/<timestamp>.json and .png, prints the tables, and refreshes the
generated block of bench/RESULTS.md (unless --no-results-md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import chart, competitors, datagen, machine, report
from bench.measure import balanced, interleave, round_ratios

HERE = Path(__file__).resolve().parent
SECTIONS = ("throughput", "jit", "pushdown", "latency")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=128,
                    help="main CSV size in MB (default 128)")
    ap.add_argument("--small-kb", type=float, default=256,
                    help="CSV size for the interp engine and latency, in KB (default 256)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure (default 5)")
    ap.add_argument("--rounds", type=int, default=11,
                    help="rounds of the round-robin comparison of the C baselines, stord jit, "
                         "DuckDB and pandas: one run each per round (default 11)")
    ap.add_argument("--pairs", type=int, default=15,
                    help="balanced rounds (C, C same job, jit, then reversed) after the "
                         "round-robin, for the jit-vs-C ratio (default 15; 0: none)")
    ap.add_argument("--duck-pairs", type=int, default=9,
                    help="balanced rounds of the jit and DuckDB 1 thread alone (jit, DuckDB, "
                         "DuckDB, jit), for the jit-vs-DuckDB ratio (default 9; 0: none)")
    ap.add_argument("--slow-budget-s", type=float, default=30,
                    help="stop repeating a slow figure after this many seconds (>= 1 run)")
    ap.add_argument("--rates", default="1gbit,100mbit",
                    help="link rates for the pushdown section (default 1gbit,100mbit)")
    ap.add_argument("--link-runs", type=int, default=3, help="runs per method and rate")
    ap.add_argument("--latency-n", type=int, default=200,
                    help="warm round trips for p50/p99 (default 200)")
    ap.add_argument("--cold-n", type=int, default=20, help="cold round trips (default 20)")
    ap.add_argument("--sweep", default="1,2,4,8,16,32,64",
                    help="concurrent clients for the sweep (default 1,2,4,8,16,32,64)")
    ap.add_argument("--sweep-seconds", type=float, default=4.0,
                    help="seconds per concurrency level (default 4)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    ap.add_argument("--data-dir", default="/var/tmp/stord-bench",
                    help="where generated CSVs are kept between runs")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--no-results-md", action="store_true",
                    help="do not rewrite bench/RESULTS.md (for trial runs)")
    ap.add_argument("--hook-vm", action="store_true",
                    help="first run `python -m vagrant.harness bench` (qemu, slow); without "
                    "it the report shows that harness's last result when there is one")
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def throughput(args: argparse.Namespace, ds: datagen.Dataset, small: datagen.Dataset,
               res: dict[str, Any]) -> None:
    from bench import engines

    runs = args.runs
    out = res["throughput"]

    def add(rec: Any) -> None:
        out.append(rec.to_dict())
        best = rec.mbps(rec.best)
        speed = f"{best:9.1f} MB/s" if best else ""
        log(f"  {rec.name:<44} {speed:>14}  "
            f"{'ok' if rec.ok else rec.error}")

    # The ratios the targets are about (jit vs both C loops and DuckDB) come from contenders
    # run round-robin in one loop; the slow engines and the csv module run alone afterwards.
    datagen.warm(ds.path)
    nthreads = competitors.all_threads()
    duck = [competitors.duckdb_contender(ds, 1)]
    if nthreads > 1:
        duck.append(competitors.duckdb_contender(ds, nthreads))
    first = [competitors.c_baseline_contender(ds), competitors.c_same_job_contender(ds),
             engines.stord_contender(ds, "jit")]
    rest = [competitors.pandas_contender(ds)]
    c_naive, c_same, jit, *others = interleave(first + duck + rest, args.rounds)
    for rec in (c_naive, c_same, jit):
        add(rec)
    for name in engines.engine_names():
        if name == "jit":
            continue
        target = small if name == "interp" else ds
        datagen.warm(target.path)
        add(engines.stord_engine(target, name, runs, budget_s=args.slow_budget_s))
    for rec in others:
        add(rec)
    res["rounds"] = {"jit_vs_c": round_ratios(c_naive, jit),
                     "jit_vs_c_same_job": round_ratios(c_same, jit),
                     "jit_vs_duckdb_1_thread": round_ratios(others[0], jit)}
    if args.pairs:
        # the jit against the C loops alone, in short balanced rounds: the least noisy ratio
        b_naive, b_same, b_jit = balanced(
            [competitors.c_baseline_contender(ds), competitors.c_same_job_contender(ds),
             engines.stord_contender(ds, "jit")], args.pairs)
        res["balanced"] = {"jit_vs_c": round_ratios(b_naive, b_jit),
                           "jit_vs_c_same_job": round_ratios(b_same, b_jit),
                           "errors": [r.error for r in (b_naive, b_same, b_jit) if r.error]}
    if args.duck_pairs:
        # the same for DuckDB: in the round-robin, the jit's run and DuckDB's are up to a
        # second apart and the machine's speed drifts in between (2.2x-3.6x in one run)
        d_jit, d_duck = balanced([engines.stord_contender(ds, "jit"),
                                  competitors.duckdb_contender(ds, 1)], args.duck_pairs)
        bal = res.setdefault("balanced", {"errors": []})
        bal["jit_vs_duckdb_1_thread"] = round_ratios(d_duck, d_jit)
        bal["errors"] += [r.error for r in (d_jit, d_duck) if r.error]
    add(competitors.csv_module_avg(ds, min(runs, 3)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = set(only) - set(SECTIONS)
    if bad:
        print(f"unknown sections: {', '.join(sorted(bad))} (known: {', '.join(SECTIONS)})",
              file=sys.stderr)
        return 2
    t_start = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "machine": machine.describe(),
        "config": {**vars(args), "command": " ".join(
            ["python -m bench.run", *(shlex.quote(a) for a in (argv if argv is not None
                                                                else sys.argv[1:]))])},
        "throughput": [], "problems": [],
    }
    log(f"stord bench {stamp}: {res['machine']['nproc']} CPUs, load "
        f"{res['machine']['loadavg_start'][0]:.2f}")
    log(f"data: {args.data_dir} (generating when missing)")
    ds = datagen.ensure(args.data_dir, int(args.size_mb * 1e6), seed=args.seed)
    small = datagen.ensure(args.data_dir, int(args.small_kb * 1e3), seed=args.seed)
    res["dataset"], res["small_dataset"] = vars(ds).copy(), vars(small).copy()

    if "throughput" in only:
        log(f"== throughput: avg of column 2 over {ds.mb:.1f} MB ({ds.rows:,} rows), "
            f"interp on {small.mb:.2f} MB")
        throughput(args, ds, small, res)
    if "jit" in only:
        from bench import jitbench
        log("== jit: compile cold/cached, ranges over 1 vs 2 worker processes")
        res["jit"] = jitbench.run(ds, args.runs, log=log)
    if "pushdown" in only:
        from bench import pushdown
        log("== pushdown vs pull over a veth link (network namespaces)")
        rates = [r.strip() for r in args.rates.split(",") if r.strip()]
        try:
            runs, problems = pushdown.run(ds, rates, args.link_runs, log=log)
            res["pushdown"] = [r.to_dict() for r in runs]
            res["pushdown_dataset"] = res["dataset"]
            res["problems"] += problems
        except Exception as e:  # noqa: BLE001 - e.g. no CAP_NET_ADMIN: report, go on
            res["problems"].append(f"pushdown: {type(e).__name__}: {e}")
            log(f"  FAILED: {e}")
    if "latency" in only:
        from bench import latency
        log("== latency and concurrency against a daemon on loopback")
        try:
            res["latency"] = latency.run(small, warm_n=args.latency_n, cold_n=args.cold_n,
                                         sweep=[int(x) for x in args.sweep.split(",")],
                                         seconds=args.sweep_seconds, log=log)
        except Exception as e:  # noqa: BLE001
            res["problems"].append(f"latency: {type(e).__name__}: {e}")
            log(f"  FAILED: {e}")

    if "throughput" in only:
        from bench import hookvm
        if args.hook_vm:
            log("== hook engine: the VM bench (qemu)")
            err = hookvm.run_vm()
            if err:
                res["problems"].append(f"hook VM: {err}")
        res["hook_vm"] = hookvm.load()
    for t in res["throughput"]:
        if t["error"]:
            res["problems"].append(f"{t['name']}: {t['error']}")
    res["loadavg_end"] = os.getloadavg()
    res["elapsed_s"] = time.monotonic() - t_start
    js = out_dir / f"{stamp}.json"
    js.write_text(json.dumps(res, indent=1, default=str))
    md = report.markdown(res)
    print()
    print(md)
    try:
        png = chart.draw(res, out_dir / f"{stamp}.png")
        log(f"chart: {png}")
    except ImportError as e:
        png = None
        log(f"no chart: {e} (pip install '.[bench]')")
    log(f"results: {js}")
    if not args.no_results_md:
        if png is not None:
            shutil.copyfile(png, HERE / "chart.png")
            md += "\n![chart](chart.png)\n"
        report.update_results_md(HERE / "RESULTS.md", md)
        log(f"updated {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
