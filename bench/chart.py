"""One PNG with the run's headline figures (matplotlib, headless)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def draw(res: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    panels = ["throughput"]
    if res.get("pushdown"):
        panels.append("pushdown")
    if (res.get("latency") or {}).get("concurrency"):
        panels.append("concurrency")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.2 * len(panels)))
    if len(panels) == 1:
        axes = [axes]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "throughput":
            ok = [t for t in res["throughput"] if t["ok"]]
            names = [t["name"] for t in ok]
            vals = [t["mbps_median"] for t in ok]
            colors = ["#1f77b4" if n.startswith("stord") else
                      "#d62728" if n.startswith("C baseline") else
                      "#ff7f0e" if n.startswith("C same job") else "#7f7f7f" for n in names]
            ax.barh(names, vals, color=colors)
            ax.set_xscale("log")
            ax.invert_yaxis()
            ax.set_xlabel("MB/s (median, log scale)")
            ax.set_title(f"avg of one column, {res['dataset']['size'] / 1e6:.0f} MB CSV\n"
                         "(blue: stord, red: naive C baseline, orange: same-job C baseline)")
            for y, v in enumerate(vals):
                ax.text(v, y, f" {v:,.1f}" if v >= 100 else f" {v:.3g}", va="center",
                        fontsize=8)
        elif panel == "pushdown":
            groups: dict[str, list[float]] = {}
            for r in res["pushdown"]:
                groups.setdefault(f"{r['rate']}\n{r['method']}", []).append(r["total_s"])
            labels = list(groups)
            vals = [statistics.median(v) for v in groups.values()]
            ax.barh(labels, vals, color=["#1f77b4" if "stord" in lb else "#7f7f7f"
                                         for lb in labels])
            ax.invert_yaxis()
            ax.set_xlabel("end-to-end seconds (median)")
            ax.set_title("pushdown vs pull over a shaped veth link")
            for y, v in enumerate(vals):
                ax.text(v, y, f" {v:.3f} s", va="center", fontsize=8)
        else:
            conc = res["latency"]["concurrency"]
            xs = [c["clients"] for c in conc]
            ax.plot(xs, [c["qps"] for c in conc], "o-", label="queries/s")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("queries/s")
            ax2 = ax.twinx()
            ax2.plot(xs, [c["p99"] * 1e3 for c in conc], "s--", color="#d62728", label="p99 ms")
            ax2.set_ylabel("p99 ms")
            ax.set_title("daemon on loopback: throughput and tail latency")
            ax.legend(loc="upper left")
            ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
