#!/usr/bin/env python3
"""Plot and report of the agent comparison (bench/agents.py, issue 7).

``bench/run.py`` calls :func:`plot_agents` and :func:`write_report` after the comparison: a full
run writes ``docs/img/bench-agents.png`` and ``docs/bench-agents.md``; a ``--quick`` run writes
both beside its JSON in ``bench/results/``. Standalone, from a results file::

    .venv/bin/python bench/plot.py bench/results/<stamp>.json            # docs/img/bench-agents.png
    .venv/bin/python bench/plot.py bench/results/<stamp>.json -o /tmp/a.png --report /tmp/a.md

The PNG has two panels against the number of concurrent connections (log scale): requests/s,
and p99 latency (log scale, with the 50 ms goal), one line per target.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PNG = REPO / "docs" / "img" / "bench-agents.png"
DEFAULT_REPORT = REPO / "docs" / "bench-agents.md"
TARGETS = ("monapi", "empty", "baseline")
LABELS = {
    "monapi": "monapi (InfluxDB backend)",
    "empty": "empty Flask 204 route, same gunicorn settings",
    "baseline": "BASELINE: naive founding design, gunicorn -w 4",
}
STYLES = {  # colour, marker, line style
    "monapi": ("tab:blue", "o", "-"),
    "empty": ("tab:gray", "s", "--"),
    "baseline": ("tab:red", "^", ":"),
}


def plot_agents(result: dict[str, Any], out: Path) -> Path:
    """Two panels (requests/s, p99 ms) against connections from a run's JSON."""
    cmp_ = result["agents_compare"]
    levels = [lv["connections"] for lv in cmp_["by_level"]]
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100)
    for t in TARGETS:
        pts = [
            (lv["connections"], lv[f"{t}_requests_per_s"], lv[f"{t}_p99_ms"])
            for lv in cmp_["by_level"]
            if lv[f"{t}_requests_per_s"] is not None
        ]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        color, marker, style = STYLES[t]
        for ax, k in ((ax_rps, 1), (ax_p99, 2)):
            ys = [p[k] for p in pts]
            ax.plot(xs, ys, color=color, marker=marker, linestyle=style, label=LABELS[t])
    goal = cmp_["goals"]["monapi_p99_ms"]
    ax_p99.axhline(goal, color="tab:green", linewidth=1, label=f"p99 goal ({goal:g} ms)")
    for ax, ylabel in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms, log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(c) for c in levels])
        ax.set_xlabel("concurrent keep-alive connections (wrk)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.set_ylim(bottom=0)
    ax_p99.set_yscale("log")
    bottom, top = ax_p99.get_ylim()
    bottom, top = min(bottom, goal / 2), max(top, goal * 2)
    ax_p99.set_ylim(bottom, top)
    ticks = [m * 10**e for e in range(-1, 6) for m in (1, 2, 5)]
    ax_p99.set_yticks([t for t in ticks if bottom <= t <= top])
    ax_p99.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax_p99.yaxis.set_minor_formatter(NullFormatter())
    ax_rps.set_title("Throughput, 1 point x 20 fields per request")
    ax_p99.set_title("p99 latency")
    ax_rps.legend(fontsize=8, loc="best")
    ax_p99.legend(fontsize=8, loc="best")
    m = result.get("machine", {})
    fig.suptitle(
        f"monapi agent-sized ingestion vs the framework's ceiling and the baseline - "
        f"{result.get('date', '')[:10]}, {m.get('nproc', '?')} cores, "
        f"{cmp_['seconds_per_run']:g} s per run",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _f(v: float | None, spec: str = ",.1f") -> str:
    return "n/a" if v is None else format(v, spec)


def report_markdown(result: dict[str, Any], png: Path, md: Path) -> str:
    """The comparison (and the soak, when run) as Markdown: machine, date, ratios, plot."""
    m = result.get("machine", {})
    cmp_ = result.get("agents_compare")
    soak = result.get("soak")
    pk = m.get("packages", {})
    lines = [
        "# Agent-sized ingestion: monapi, the framework's ceiling and the baseline (issue 7)",
        "",
        "Written by `bench/run.py` (`make bench`) from "
        f"`bench/results/{result.get('results_file', '?')}`; do not edit by hand.",
        "",
        "| | |",
        "|---|---|",
        f"| Date (UTC) | {result.get('date', '?')} |",
        f"| Command | `{result.get('command', '?')}` |",
        f"| Cores / CPU | {m.get('nproc', '?')} x {m.get('cpu_model', '?')} |",
        f"| Memory / kernel | {m.get('memory_gib', '?')} GiB / {m.get('kernel', '?')} |",
        f"| Python / gunicorn / Flask | {m.get('python', '?')} / {pk.get('gunicorn', '?')} / "
        f"{pk.get('flask', '?')} |",
        f"| wrk | {m.get('wrk', '?')} |",
        f"| Load average (1, 5, 15 min) before / after | {_load(m.get('loadavg_before'))} / "
        f"{_load(m.get('loadavg_after'))} |",
    ]
    if cmp_:
        h = cmp_["headline"]
        met = cmp_["goals_met"]
        g = cmp_["goals"]
        yes = {True: "yes", False: "**NO**"}
        lines += [
            f"| InfluxDB | {cmp_['influxdb']['version']} (throwaway, loopback) |",
            "",
            "## Targets",
            "",
            *(f"* `{t}`: {d}" for t, d in cmp_["targets"].items()),
            "",
            f"Request: {cmp_['request']}. Each level: {cmp_['warmup_seconds']:g} s warm-up, then "
            f"{cmp_['seconds_per_run']:g} s measured per target, the targets one after the other "
            f"in {cmp_.get('rounds', 1)} round(s) (order rotated per level and round; requests/s "
            "and p99 are medians of the rounds, ratios medians of the per-round ratios); wrk "
            "threads = min(connections, "
            f"{cmp_['wrk_threads_max']}). The empty route reads the request body "
            "(`request.get_data()`) so that keep-alive is fair. wrk runs on the same cores.",
            "",
            f"## Headline ({h['connections']} connections)",
            "",
            "| Measure | Result | Goal | Met |",
            "|---|---|---|---|",
            f"| monapi requests/s | {_f(h['monapi_requests_per_s'])} | | |",
            f"| empty route requests/s | {_f(h['empty_requests_per_s'])} | | |",
            f"| BASELINE requests/s | {_f(h['baseline_requests_per_s'])} | | |",
            f"| monapi / empty | {_f(h['monapi_over_empty'], '.2f')} | >= "
            f"{g['monapi_over_empty']} | {yes[met['monapi_over_empty']]} |",
            f"| monapi p99 | {_f(h['monapi_p99_ms'])} ms | < {g['monapi_p99_ms']:g} ms | "
            f"{yes[met['monapi_p99_ms']]} |",
            f"| monapi / BASELINE | {_f(h['monapi_over_baseline'], '.2f')} | >= "
            f"{g['monapi_over_baseline']:g} | {yes[met['monapi_over_baseline']]} |",
            f"| all 204, no socket errors / stored = acknowledged | {cmp_['all_204']} / "
            f"{cmp_['stored_matches']} | True / True | "
            f"{yes[cmp_['all_204'] and cmp_['stored_matches']]} |",
            "",
            f"![throughput and p99 against connections]({_rel(png, md)})",
            "",
            "## Every level",
            "",
            "| Conns | monapi req/s | empty req/s | baseline req/s | monapi p99 | empty p99 | "
            "baseline p99 | monapi/empty | monapi/baseline |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for lv in cmp_["by_level"]:
            lines.append(
                f"| {lv['connections']} | "
                + " | ".join(_f(lv[f"{t}_requests_per_s"]) for t in TARGETS)
                + " | "
                + " | ".join(f"{_f(lv[f'{t}_p99_ms'])} ms" for t in TARGETS)
                + f" | {_f(lv['monapi_over_empty'], '.2f')} | "
                f"{_f(lv['monapi_over_baseline'], '.2f')} |"
            )
        lines += ["", "Worker VmRSS (MB) at the end of each run:", ""]
        lines += ["| Conns | " + " | ".join(TARGETS) + " |", "|---|---|---|---|"]
        for c in cmp_["levels"]:
            cells = []
            for t in TARGETS:
                run = next(
                    (
                        r
                        for r in cmp_["runs"]
                        if r["target"] == t and r["connections"] == c and "error" not in r
                    ),
                    None,
                )
                cells.append(
                    " / ".join(f"{v:g}" for v in run["worker_rss_mb"].values()) if run else "n/a"
                )
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if soak:
        g = soak["goals"]
        lines += [
            "",
            f"## Memory soak ({soak['seconds']:g} s, {soak['connections']} connections, monapi "
            "on InfluxDB)",
            "",
            f"{soak['requests_per_s']:,.1f} requests/s, p99 {soak['latency_ms']['p99']} ms, "
            f"{soak['not_204']} not 204, stored = acknowledged: {soak['stored_matches']}. "
            f"VmRSS of each gunicorn worker every {soak['sample_every_s']:g} s. Goals: under "
            f"{g['worker_rss_mb']:g} MB at the end, and not growing: the least-squares growth "
            f"over the last window under {g['worker_growth_mb']:g} MB.",
            "",
            "| Worker pid | first (after) | last | max | slope over last window | growth | "
            "< limit | not growing |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for pid, w in soak["workers"].items():
            lines.append(
                f"| {pid} | {w['first_mb']:g} MB ({w['first_after_s']:g} s) | {w['last_mb']:g} MB "
                f"| {w['max_mb']:g} MB | {w['slope_mb_per_min']:+.3f} MB/min "
                f"({w['window_s']:g} s) | {w['growth_over_window_mb']:+.2f} MB | "
                f"{w['under_limit']} | {w['not_growing']} |"
            )
        if soak["workers_replaced"]:
            lines += ["", f"Workers replaced during the soak: {soak['workers_replaced']}"]
    return "\n".join(lines) + "\n"


def _load(values: Any) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "?"


def _rel(target: Path, md: Path) -> str:
    try:
        return str(target.resolve().relative_to(md.resolve().parent))
    except ValueError:
        return str(target.resolve())


def write_report(result: dict[str, Any], png: Path, md: Path) -> Path:
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(report_markdown(result, png, md))
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results", type=Path, help="a bench/results/*.json with agents_compare")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_PNG, help="the PNG to write")
    ap.add_argument("--report", type=Path, default=None, help="also write the Markdown report")
    args = ap.parse_args(argv)
    result = json.loads(args.results.read_text())
    if "agents_compare" not in result:
        ap.error(f"{args.results}: no agents_compare phase in this run")
    result.setdefault("results_file", args.results.name)
    print(plot_agents(result, args.output))
    if args.report:
        print(write_report(result, args.output, args.report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
