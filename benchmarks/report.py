"""Goals with pass/miss status, the chart (PNG) and the markdown report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BRAZE_USERS_PER_SECOND = 75_000
CPU_GOAL_PER_100K = 1.33
MELTANO_GOAL_ROWS_PER_SECOND = 30_000
RATE_SHARE_GOAL = 0.95
MEMORY_GROWTH_GOAL = 0.10
MEMORY_CEILING_MB = 200.0

CHART_ORDER = [
    "tap_sqlite",
    "tap_postgresql",
    "target_braze_compare",
    "target_braze_full",
    "floor_compare",
    "naive",
    "meltano_run",
    "lever_braze_no_validation",
    "lever_braze_concurrency_1",
    "lever_braze_concurrency_4",
    "lever_floor_no_validation",
    "lever_floor_msgspec",
    "lever_floor_msgspec_no_validation",
]
SHORT = {
    "tap_sqlite": "(a) tap, SQLite",
    "tap_postgresql": "(a) tap, PostgreSQL",
    "target_braze_compare": "(b) target-braze (slice)",
    "target_braze_full": "(b) target-braze (whole stream)",
    "floor_compare": "floor: SDK discard target",
    "naive": "naive: 1 record/request",
    "meltano_run": "(c) meltano run",
    "rate_limited": "(d) rate-limited",
    "lever_braze_no_validation": "lever: braze, no validation",
    "lever_braze_concurrency_1": "lever: braze, concurrency 1",
    "lever_braze_concurrency_4": "lever: braze, concurrency 4",
    "lever_floor_no_validation": "lever: floor, no validation",
    "lever_floor_msgspec": "lever: floor, msgspec",
    "lever_floor_msgspec_no_validation": "lever: floor, msgspec + no validation",
}


def _median(results: dict[str, Any], key: str, field: str) -> Any:
    measurement = results["measurements"].get(key)
    if not measurement:
        return None
    return measurement["median"].get(field)


def _runs(results: dict[str, Any], key: str) -> list[dict[str, Any]]:
    measurement = results["measurements"].get(key)
    return list(measurement["runs"]) if measurement else []


def _status(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "pass" if ok else "miss"


def marginal_cpu_per_100k(results: dict[str, Any]) -> float | None:
    """CPU per 100k records between the slice and the whole stream (start-up cancels)."""
    small_cpu = _median(results, "target_braze_compare", "cpu_seconds")
    small_n = _median(results, "target_braze_compare", "records")
    big_cpu = _median(results, "target_braze_full", "cpu_seconds")
    big_n = _median(results, "target_braze_full", "records")
    if None in (small_cpu, small_n, big_cpu, big_n) or big_n <= small_n:
        return None
    return float((big_cpu - small_cpu) / (big_n - small_n) * 100_000)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's five targets, each with the measured figure and pass/miss."""
    out: list[dict[str, Any]] = []

    cpu_slice = _median(results, "target_braze_compare", "cpu_seconds_per_100k")
    cpu_full = _median(results, "target_braze_full", "cpu_seconds_per_100k")
    cpu_values = [v for v in (cpu_slice, cpu_full) if v is not None]
    cpu = max(cpu_values) if cpu_values else None
    marginal = marginal_cpu_per_100k(results)
    out.append(
        {
            "goal": "target-braze CPU (user + sys) <= 1.33 s per 100k records",
            "measured": (
                f"{cpu_slice:.2f} s/100k on the slice"
                + (f", {cpu_full:.2f} s/100k on the whole stream" if cpu_full else "")
                + (
                    f"; marginal (start-up excluded) {marginal:.2f} s/100k"
                    if marginal is not None
                    else ""
                )
                if cpu_slice is not None
                else "n/a"
            ),
            "value": cpu,
            "status": _status(None if cpu is None else cpu <= CPU_GOAL_PER_100K),
        }
    )

    ratios = [r["floor_wall_ratio"] for r in _runs(results, "target_braze_compare")]
    ratio = _median(results, "target_braze_compare", "floor_wall_ratio")
    out.append(
        {
            "goal": "target-braze wall time never behind the framework floor "
            "(floor wall / target-braze wall >= 1.0, same input, same run)",
            "measured": (
                f"median {ratio:.2f} (runs: {', '.join(f'{r:.2f}' for r in ratios)})"
                if ratio is not None
                else "n/a"
            ),
            "value": ratio,
            "status": _status(None if not ratios else min(ratios) >= 1.0),
        }
    )

    rows = _median(results, "meltano_run", "records_per_second")
    out.append(
        {
            "goal": "whole `meltano run` >= 30,000 rows/s",
            "measured": f"{rows:,.0f} rows/s (median)" if rows is not None else "n/a",
            "value": rows,
            "status": _status(None if rows is None else rows >= MELTANO_GOAL_ROWS_PER_SECOND),
        }
    )

    rate_runs = _runs(results, "rate_limited")
    shares = [r.get("share_of_limit") for r in rate_runs]
    share = _median(results, "rate_limited", "share_of_limit")
    over = any(r.get("over_limit") or (r.get("sandbox_429") or 0) > 0 for r in rate_runs)
    max_arrivals = max((r.get("max_arrivals_in_window") or 0 for r in rate_runs), default=0)
    total_429 = sum(r.get("sandbox_429") or 0 for r in rate_runs)
    rate_ok: bool | None = None
    if share is not None and all(s is not None for s in shares):
        rate_ok = share >= RATE_SHARE_GOAL and not over
    out.append(
        {
            "goal": ">= 95% of a configured rate limit used in steady state, no request over it",
            "measured": (
                f"{share:.1%} of the limit (median), busiest window {max_arrivals} requests, "
                f"{total_429} 429s"
                if share is not None
                else f"steady state not reached (too few records); busiest window "
                f"{max_arrivals}, {total_429} 429s"
            ),
            "value": share,
            "status": _status(rate_ok),
        }
    )

    small = _median(results, "target_braze_compare", "max_rss_mb")
    small_n = _median(results, "target_braze_compare", "records")
    big = _median(results, "target_braze_full", "max_rss_mb")
    big_n = _median(results, "target_braze_full", "records")
    mem_ok: bool | None = None
    if small is not None and big is not None:
        mem_ok = big <= small * (1 + MEMORY_GROWTH_GOAL) and big < MEMORY_CEILING_MB
    out.append(
        {
            "goal": "target-braze peak memory at 1M within 10% of that at 100k, under 200 MB",
            "measured": (
                f"{small:.0f} MB at {small_n:,.0f} records, {big:.0f} MB at {big_n:,.0f} records "
                f"({(big / small - 1):+.1%})"
                if small is not None and big is not None
                else (f"{small:.0f} MB at {small_n:,.0f} records" if small is not None else "n/a")
            ),
            "value": big,
            "status": _status(mem_ok),
        }
    )
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    """Records/s of every measurement (log scale) and CPU per 100k records."""
    keys = [k for k in CHART_ORDER if k in results["measurements"]]
    labels = [SHORT.get(k, k) for k in keys]
    rates = [results["measurements"][k]["median"].get("records_per_second") or 0 for k in keys]
    cpu_keys = [
        k
        for k in keys
        if results["measurements"][k]["median"].get("cpu_seconds_per_100k") is not None
    ]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 0.45 * max(len(keys), 6) + 1.6), width_ratios=[3, 2]
    )
    colours = [
        "tab:orange"
        if k.startswith("target_braze") or k.startswith("lever_braze")
        else "tab:gray"
        if k.startswith(("floor", "naive", "lever_floor"))
        else "tab:blue"
        for k in keys
    ]
    left.barh(labels, rates, color=colours)
    left.set_xscale("log")
    left.invert_yaxis()
    left.axvline(BRAZE_USERS_PER_SECOND, color="red", linestyle="--", linewidth=1)
    left.axvline(MELTANO_GOAL_ROWS_PER_SECOND, color="green", linestyle=":", linewidth=1)
    left.text(BRAZE_USERS_PER_SECOND, -0.6, " Braze 75k/s", color="red", fontsize=8)
    left.text(
        MELTANO_GOAL_ROWS_PER_SECOND,
        len(keys) - 0.2,
        "30k/s goal ",
        color="green",
        fontsize=8,
        ha="right",
    )
    for y, rate in enumerate(rates):
        left.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
    left.set_xlabel("records (rows) per second, median, log scale")
    left.set_title("Throughput")

    cpu_labels = [SHORT.get(k, k) for k in cpu_keys]
    cpu = [results["measurements"][k]["median"]["cpu_seconds_per_100k"] for k in cpu_keys]
    right.barh(
        cpu_labels, cpu, color=["tab:orange" if "braze" in k else "tab:gray" for k in cpu_keys]
    )
    right.invert_yaxis()
    right.axvline(CPU_GOAL_PER_100K, color="red", linestyle="--", linewidth=1)
    right.text(CPU_GOAL_PER_100K, -0.6, " goal 1.33 s", color="red", fontsize=8)
    for y, value in enumerate(cpu):
        right.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    right.set_xlabel("CPU s (user + sys) / 100k records, median")
    right.set_title("Process CPU")
    machine = results["machine"]
    fig.suptitle(
        f"Peak → Braze pipeline, {results['parameters']['rows']:,} rows — "
        f"{machine['nproc']} x {machine['cpu_model']}, {machine['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def markdown(results: dict[str, Any], path: Path, chart_path: Path, json_path: Path) -> str:
    """BENCHMARKS.md: how to run, machine, goals, tables, chart."""
    rel_chart = os.path.relpath(chart_path.resolve(), path.resolve().parent)
    rel_json = os.path.relpath(json_path.resolve(), path.resolve().parent)
    machine = results["machine"]
    params = results["parameters"]
    m = results["measurements"]
    lines = [
        "# Benchmarks",
        "",
        "How fast the Peak → Braze pipeline is next to Braze's ceiling of 75,000 users/s "
        "(3,000 `/users/track` requests per 3 s x 75 objects), measured on a local "
        "braze-sandbox in its own process.",
        "",
        "## How to run",
        "",
        "```sh",
        "# from the repository root, after scripts/setup (one command, ~20-25 min at 1M rows)",
        ".venv/bin/python -m benchmarks --rows 1000000 --repeat 3",
        "# CI / smoke: tiny and fast, results kept out of the committed ones",
        ".venv/bin/python -m benchmarks --rows 2000 --repeat 1 --compare-rows 1000 \\",
        "    --naive-records 200 --output-dir /tmp/bench",
        "# also: --profile (pyinstrument of target-braze), --postgres on|off|auto "
        "(or BENCH_POSTGRES=1),",
        "#       --no-levers, --no-meltano, --work-dir DIR (keep warehouses, streams, logs),",
        "#       --from-json benchmarks/results/latest.json (re-render chart + markdown only)",
        "```",
        "",
        "Writes `benchmarks/results/latest.json` (every repeat's raw numbers), "
        "`benchmarks/results/throughput.png` and this file. CI runs the smoke size only "
        "(`benchmarks/tests/test_benchmark_smoke.py`); there are no timing assertions.",
        "",
        "## This run",
        "",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['nproc']} cores, {machine['cpu_model']}, "
        f"{machine['memory_gb']} GB RAM, {machine['platform']}, Python {machine['python']}; "
        f"load average at start {machine['load_average_at_start']}",
        f"- Command: `{results['command']}` ({results.get('duration_seconds', 0):,.0f} s)",
        f"- Warehouse: {params['rows']:,} customers (`peak-sample generate --seed "
        f"{params['seed']} --no-long`); "
        + ", ".join(
            f"{name} generated in {w['generate_seconds']} s"
            for name, w in results["warehouses"].items()
        ),
        f"- Repeats: {params['repeat']} per measurement (medians below; levers 1 run each); "
        f"target-braze vs floor compared on the first {params['compare_rows']:,} records of "
        "the recorded stream, target-braze also run on the whole stream "
        f"({params['full_repeat']} run).",
        "- CPU and peak memory are the measured process's own (`os.wait4` rusage: user + "
        "sys, `ru_maxrss`), never the sandbox's, which runs as a separate process.",
        "",
        "## Goals",
        "",
        "| Goal | Measured | Status |",
        "|---|---|---|",
    ]
    for goal in results["goals"]:
        lines.append(f"| {goal['goal']} | {goal['measured']} | **{goal['status']}** |")
    lines += [
        "",
        "## Results",
        "",
        f"![throughput]({rel_chart})",
        "",
        "| Measurement | Records | Runs | Wall s | Records/s | Requests/s | CPU s | "
        "CPU s / 100k | Peak RSS MB | Sandbox CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in [*CHART_ORDER, "rate_limited"]:
        if key not in m:
            continue
        med = m[key]["median"]
        sandbox_cpu = med.get("sandbox_cpu_seconds")
        share = sandbox_cpu / med["wall_seconds"] if sandbox_cpu is not None else None
        lines.append(
            f"| {m[key]['label']} | {_fmt(med.get('records'))} | {m[key]['repeats']} | "
            f"{_fmt(med.get('wall_seconds'), '.2f')} | {_fmt(med.get('records_per_second'))} | "
            f"{_fmt(med.get('requests_per_second'), ',.1f')} | "
            f"{_fmt(med.get('cpu_seconds'), '.2f')} | "
            f"{_fmt(med.get('cpu_seconds_per_100k'), '.2f')} | "
            f"{_fmt(med.get('max_rss_mb'), '.0f')} | {_fmt(share, '.0%')} |"
        )
    lines += [
        "",
        "All processes share the machine's 2 cores: in (b) the sandbox takes one core "
        "(its share is in the last column), and in (c) meltano, the tap, the target and the "
        "sandbox compete for both, whereas in production Braze's side runs elsewhere.",
        "",
        "Records/s = records ÷ the process's wall time (start-up included). CPU s / 100k "
        "for the tap and `meltano run` rows is not shown: `meltano run`'s CPU (in the CPU s "
        "column) is meltano's plus the tap's plus the target's. Sandbox CPU share = sandbox "
        "CPU seconds ÷ wall time: near 100% means the sandbox (one core, ~900 requests/s "
        "at best) and not the client was the limit.",
        "",
    ]
    if "naive" in m:
        naive = m["naive"]["median"]
        braze = m.get("target_braze_compare", {}).get("median", {})
        lines += [
            "### Baselines",
            "",
            f"- Naive target (one record per request, sequential, keep-alive session), on "
            f"the first {_fmt(naive.get('records'))} records only: "
            f"{_fmt(naive.get('ms_per_record'), '.3f')} ms per record "
            f"({_fmt(naive.get('records_per_second'))} records/s)"
            + (
                f"; target-braze is {braze['records_per_second'] / naive['records_per_second']:.1f}"
                "x faster per record."
                if braze.get("records_per_second")
                else "."
            ),
        ]
        if "floor_compare" in m and braze:
            floor = m["floor_compare"]["median"]
            lines.append(
                f"- Framework floor (singer-sdk target discarding its records, default "
                f"settings: stdlib reader, jsonschema validation): "
                f"{_fmt(floor.get('records_per_second'))} records/s, "
                f"{_fmt(floor.get('cpu_seconds_per_100k'), '.2f')} CPU s / 100k; "
                f"floor wall ÷ target-braze wall = "
                f"{_fmt(braze.get('floor_wall_ratio'), '.2f')} (median)."
            )
        lines.append("")
    if "rate_limited" in m:
        lines += [
            "### Rate limit (d)",
            "",
            "| Run | Records | Requests | Steady requests/s | Limit requests/s | Share | "
            "Busiest window | 429s received | Retries |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, run in enumerate(m["rate_limited"]["runs"], 1):
            lines.append(
                f"| {i} | {_fmt(run.get('records'))} | {_fmt(run.get('requests'))} | "
                f"{_fmt(run.get('steady_requests_per_second'), '.1f')} | "
                f"{_fmt(run.get('limit_requests_per_second'), '.1f')} | "
                f"{_fmt(run.get('share_of_limit'), '.1%')} | "
                f"{_fmt(run.get('max_arrivals_in_window'))} | {_fmt(run.get('sandbox_429'))} | "
                f"{_fmt(run.get('retries'))} |"
            )
        lines += [
            "",
            "Steady state: arrivals at the sandbox from one window after the first request "
            "to the last request. Busiest window: the sandbox's exact maximum of arrivals in "
            "any interval of the window's length.",
            "",
        ]
    if results.get("profile"):
        lines += [
            "### Profile",
            "",
            f"pyinstrument of target-braze on {results['profile']['records']:,} records: "
            f"[`{results['profile']['path']}`]"
            f"({os.path.relpath(chart_path.parent / results['profile']['path'], path.parent)})"
            " (main thread only; the sender threads' time shows as waits there). "
            f"Profiled run: {results['profile'].get('duration_seconds', 0):.1f} s wall, "
            f"{results['profile'].get('cpu_seconds', 0):.1f} s CPU.",
            "",
            "| By self time | % | By inclusive time (application frames) | % |",
            "|---|---:|---|---:|",
        ]
        own = results["profile"].get("self", [])
        incl = results["profile"].get("inclusive", [])
        for i in range(max(len(own), len(incl))):
            a = own[i] if i < len(own) else {"function": "", "percent": None}
            b = incl[i] if i < len(incl) else {"function": "", "percent": None}
            lines.append(
                f"| `{a['function']}` | {_fmt(a['percent'], '.1f')} | "
                f"`{b['function']}` | {_fmt(b['percent'], '.1f')} |"
            )
        lines.append("")
    if results["notes"]:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in results["notes"]]
        lines.append("")
    lines += [f"Raw numbers: [`{os.path.basename(rel_json)}`]({rel_json}).", ""]
    return "\n".join(lines)
