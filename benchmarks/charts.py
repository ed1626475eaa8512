"""The chart (one PNG, four panels): throughput, target-braze CPU, the pipeline, the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from benchmarks import goals

BRAZE_USERS_PER_SECOND = 75_000

THROUGHPUT = {
    "tap_sqlite": "(a) tap alone, RECORD",
    "tap_sqlite_batch": "(a) tap alone, BATCH",
    "tap_postgresql": "(a) tap alone, PostgreSQL",
    "wide_target_slice": "(f) target-braze, wide, slice",
    "wide_target_full": "(f) target-braze, wide, whole",
    "wide_floor_slice": "(f) strongest floor, slice",
    "wide_floor_full": "(f) strongest floor, whole",
    "meltano_record": "(c) meltano run, RECORD",
    "meltano_batch": "(c) meltano run, BATCH",
    "target_braze_compare": "(b) target-braze, sandbox",
    "floor_compare": "(b) default floor",
    "naive": "naive: 1 record/request",
}
TARGET_CPU = {
    "wide_target_slice": "target-braze, slice",
    "wide_target_full": "target-braze, whole",
    "wide_floor_slice": "strongest floor, slice",
    "wide_floor_full": "strongest floor, whole",
    "ledger_off": "(g) ledger off",
    "ledger_empty": "(g) ledger empty",
    "ledger_full_unchanged": "(g) ledger full, unchanged",
    "ledger_full_changed": "(g) ledger full, all changed",
}


def _median(results: dict[str, Any], key: str, field: str) -> float | None:
    value = goals.median_of(results, key, field)
    return float(value) if value is not None else None


def _bars(
    axis: Axes, labels: list[str], values: list[float], colours: list[str], spec: str
) -> None:
    axis.barh(labels, values, color=colours)
    axis.invert_yaxis()
    for y, value in enumerate(values):
        axis.text(value, y, f" {value:{spec}}", va="center", fontsize=7)


def _throughput(axis: Axes, results: dict[str, Any]) -> None:
    keys = [k for k in THROUGHPUT if k in results["measurements"]]
    values = [_median(results, k, "records_per_second") or 0.0 for k in keys]
    colours = [
        "tab:orange"
        if "target" in k
        else "tab:gray"
        if "floor" in k or k == "naive"
        else "tab:blue"
        for k in keys
    ]
    _bars(axis, [THROUGHPUT[k] for k in keys], values, colours, ",.0f")
    axis.set_xscale("log")
    axis.axvline(BRAZE_USERS_PER_SECOND, color="red", linestyle="--", linewidth=1)
    axis.text(BRAZE_USERS_PER_SECOND, -0.7, " Braze 75k/s", color="red", fontsize=7)
    axis.set_xlabel("records (rows) per second, wall, median, log scale")
    axis.set_title("Throughput", fontsize=9)


def _target_cpu(axis: Axes, results: dict[str, Any]) -> None:
    keys = [k for k in TARGET_CPU if k in results["measurements"]]
    values = [_median(results, k, "cpu_seconds_per_100k") or 0.0 for k in keys]
    colours = ["tab:gray" if "floor" in k else "tab:orange" for k in keys]
    _bars(axis, [TARGET_CPU[k] for k in keys], values, colours, ".2f")
    axis.axvline(goals.CPU_GOAL_PER_100K, color="red", linestyle="--", linewidth=1)
    axis.text(goals.CPU_GOAL_PER_100K, -0.7, " goal 1.33", color="red", fontsize=7)
    axis.set_xlabel("CPU-s (user + sys, whole process) per 100k records, median")
    axis.set_title("target-braze alone, wide stream, null_braze (issues 9, 8)", fontsize=9)


def _pipeline(axis: Axes, results: dict[str, Any]) -> None:
    """Stacked: Meltano's own CPU, the tap (measured alone), the target and the rest."""
    labels, own, tap, rest = [], [], [], []
    for mode, tap_key in (("record", "tap_sqlite"), ("batch", "tap_sqlite_batch")):
        whole = _median(results, f"meltano_{mode}", "cpu_seconds_per_100k")
        if whole is None:
            continue
        meltano = _median(results, f"meltano_{mode}", "meltano_own_cpu_per_100k") or 0.0
        alone = _median(results, tap_key, "cpu_seconds_per_100k") or 0.0
        labels.append(f"meltano run, {mode.upper()}")
        own.append(meltano)
        tap.append(min(alone, whole - meltano))
        rest.append(max(whole - meltano - alone, 0.0))
    if not labels:
        axis.set_axis_off()
        return
    axis.barh(labels, own, color="tab:purple", label="Meltano's own (relay + start-up)")
    axis.barh(labels, tap, left=own, color="tab:blue", label="tap (as measured alone)")
    lefts = [a + b for a, b in zip(own, tap, strict=True)]
    axis.barh(labels, rest, left=lefts, color="tab:orange", label="target-braze and the rest")
    axis.invert_yaxis()
    for y, total in enumerate(a + b for a, b in zip(lefts, rest, strict=True)):
        axis.text(total, y, f" {total:.2f}", va="center", fontsize=7)
    for limit, style in ((goals.PIPELINE_FIRST_GOAL, "--"), (goals.PIPELINE_GOAL, ":")):
        axis.axvline(limit, color="red", linestyle=style, linewidth=1)
        axis.text(limit, -0.55, f" {limit}", color="red", fontsize=7)
    axis.legend(fontsize=7, loc="lower right")
    axis.set_xlabel("CPU-s per 100k rows (meltano + tap + target; never the Braze side)")
    axis.set_title("Whole pipeline, null_braze, ledger off (issue 10)", fontsize=9)


def _ledger(axis: Axes, results: dict[str, Any]) -> None:
    ledger = results.get("ledger") or {}
    changed = (ledger.get("model_run") or {}).get("values_changed")
    if changed is None:
        axis.set_axis_off()
        return
    labels = ["values really changed", "data points, with ledger", "data points, without"]
    values = [
        float(changed),
        float(ledger.get("delta_data_points_with") or 0),
        float(ledger.get("delta_data_points_without") or 0),
    ]
    _bars(axis, labels, values, ["tab:green", "tab:orange", "tab:gray"], ",.0f")
    axis.set_xlabel(
        f"data points; requests: {ledger.get('delta_requests_with'):,} with the ledger, "
        f"{ledger.get('delta_requests_without'):,} without"
    )
    axis.set_title(
        f"Delivery ledger: a 10% delta of {ledger.get('users', 0):,} customers (issue 8)",
        fontsize=9,
    )


def draw(results: dict[str, Any], path: Path) -> None:
    """Write the four-panel PNG."""
    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5))
    _throughput(axes[0][0], results)
    _target_cpu(axes[0][1], results)
    _pipeline(axes[1][0], results)
    _ledger(axes[1][1], results)
    machine = results["machine"]
    fig.suptitle(
        f"Peak → Braze pipeline, {results['parameters']['rows']:,} rows — "
        f"{machine['nproc']} x {machine['cpu_model']}, {machine['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
