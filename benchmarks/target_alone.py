"""(f) target-braze alone on the Peak-shaped wide stream, beside the strongest floor (issue 9).

Into null_braze (a stand-in costing almost nothing, so the Braze side takes no core), the
rate limit off and the ledger off, target-braze runs from its Meltano venv with its other
settings as shipped (`validate_records` true among them). Beside it, in the same run and
interleaved, the floor: singer-sdk's discard target with the msgspec reader and
`validate_records: false`, from the same venv. Each repeat runs both on the
`--compare-rows` slice and on an input with the SCHEMA only (start-up and teardown alone,
for the marginal CPU); then both on the whole `--rows` stream (throughput and peak memory
at full size). The order alternates between repeats.

On the slice too, target-braze into null_braze answering after 5 ms and after 30 ms (as a
distant Braze would): how many sender threads the latency needs, and what they cost.

Then the profile (`profiles`): py-spy over target-braze on the slice, and one unprofiled
run whose threads' CPU is read from /proc, per thread name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import plugins, profiles, wide_stream
from benchmarks.measure import rate_row, run_measured, summary
from benchmarks.null_braze import NullBrazeProcess

if TYPE_CHECKING:
    from benchmarks.run import Bench

API_KEY = "bench-key"
FLOOR = Path(__file__).resolve().parent / "baselines" / "discard_target.py"
LEDGER_OFF = {"send_only_changes": False, "deduplicate_events": False}
LATENCIES_MS = (5, 30)


def braze_config(bench: Bench, url: str, name: str, **overrides: Any) -> tuple[Path, Path]:
    """A target-braze config into `url`: rate limit off, a run report next to it."""
    report_path = bench.work / f"report-{name}.json"
    config = {
        "api_key": API_KEY,
        "rest_endpoint": url,
        "max_requests_per_window": 0,
        "run_report_path": str(report_path),
        "rejected_records_path": str(bench.work / f"rejects-{name}.jsonl"),
        "progress_interval_seconds": 60,
        **overrides,
    }
    return bench.write_json(f"target-braze-{name}.json", config), report_path


def run_target(
    bench: Bench,
    url: str,
    stream: Path,
    records: int,
    name: str,
    server_pid: int | None,
    **overrides: Any,
) -> dict[str, Any]:
    """One target-braze run (Meltano venv) from a stream file; its row with the report."""
    config, report_path = braze_config(bench, url, name, **overrides)
    report_path.unlink(missing_ok=True)
    run = run_measured(
        [plugins.target_braze(), "--config", str(config)],
        stdin_path=stream,
        stderr_path=bench.logfile(f"target-braze-{name}"),
        sandbox_pid=server_pid,
        env=plugins.clean_environment(),
        inherit_env=False,
    )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    row = rate_row(run, records)
    requests = int(report.get("requests", 0))
    row.update(
        requests=requests,
        requests_per_second=round(requests / run.wall_seconds, 1),
        records_in=report.get("records_in"),
        objects_sent=report.get("objects_sent"),
        data_points=report.get("data_points"),
        unchanged=report.get("unchanged"),
        rejected=report.get("rejected"),
        sender_threads=report.get("sender_threads"),
    )
    if records and report.get("records_in") != records:
        msg = f"target-braze read {report.get('records_in')} records of {records} ({name})"
        raise RuntimeError(msg)
    return row


def run_floor(bench: Bench, stream: Path, records: int, name: str) -> dict[str, Any]:
    """One run of the strongest floor: discard target, msgspec reader, no validation."""
    config = bench.write_json("floor-strongest.json", {"validate_records": False})
    env = plugins.clean_environment()
    env["BENCH_DISCARD_READER"] = "msgspec"
    run = run_measured(
        [plugins.target_python(), str(FLOOR), "--config", str(config)],
        stdin_path=stream,
        stderr_path=bench.logfile(f"floor-{name}"),
        env=env,
        inherit_env=False,
    )
    return rate_row(run, records)


def streams(bench: Bench) -> dict[str, tuple[Path, int]]:
    """The wide streams: the slice, the whole size and SCHEMA only (generated once)."""
    small = min(bench.args.compare_rows, bench.args.rows)
    out: dict[str, tuple[Path, int]] = {}
    for key, count in (("slice", small), ("full", bench.args.rows)):
        path = bench.work / f"wide-{count}.jsonl"
        if not path.exists():
            wide_stream.write_file(path, count, seed=bench.args.seed)
        out[key] = (path, count)
    empty = bench.work / "wide-empty.jsonl"
    wide_stream.write_file(empty, 0)
    out["empty"] = (empty, 0)
    return out


def measure(bench: Bench) -> None:
    """Interleaved repeats of target-braze and the floor: slice, empty input, whole stream."""
    inputs = streams(bench)
    repeat = bench.args.repeat
    runs: dict[str, list[dict[str, Any]]] = {
        f"{who}_{size}": [] for who in ("target", "floor") for size in inputs
    }
    for latency in LATENCIES_MS:
        stream, records = inputs["slice"]
        key = f"target_slice_latency{latency}"
        with NullBrazeProcess(latency_ms=latency) as slow:
            for index in range(repeat):
                bench.log(f"(f) wide stream, target, {latency} ms latency {index + 1}/{repeat}")
                runs.setdefault(key, []).append(
                    run_target(
                        bench, slow.url, stream, records, f"wide-{key}", slow.pid, **LEDGER_OFF
                    )
                )
        bench.measurements[f"wide_{key}"] = summary(
            f"(f) target-braze, wide stream, slice, null_braze answering after {latency} ms",
            "records",
            runs[key],
        )
    with NullBrazeProcess() as null:
        for index in range(repeat):
            plan = [(who, size) for size in ("slice", "empty") for who in ("target", "floor")]
            for who, size in plan if index % 2 == 0 else list(reversed(plan)):
                stream, records = inputs[size]
                bench.log(f"(f) wide stream, {who} on {size} ({records:,}) {index + 1}/{repeat}")
                if who == "target":
                    row = run_target(
                        bench, null.url, stream, records, f"wide-{size}", null.pid, **LEDGER_OFF
                    )
                else:
                    row = run_floor(bench, stream, records, size)
                runs[f"{who}_{size}"].append(row)
        for index in range(repeat):
            whole = ["target", "floor"] if index % 2 == 0 else ["floor", "target"]
            stream, records = inputs["full"]
            for who in whole:
                bench.log(f"(f) wide stream, {who} on all {records:,} {index + 1}/{repeat}")
                if who == "target":
                    row = run_target(
                        bench, null.url, stream, records, "wide-full", null.pid, **LEDGER_OFF
                    )
                else:
                    row = run_floor(bench, stream, records, "full")
                runs[f"{who}_full"].append(row)
    for size in inputs:
        for target, floor in zip(runs[f"target_{size}"], runs[f"floor_{size}"], strict=True):
            target["floor_wall_ratio"] = round(floor["wall_seconds"] / target["wall_seconds"], 3)
    labels = {
        "slice": "wide stream, slice",
        "full": "wide stream, whole",
        "empty": "SCHEMA only (start-up)",
    }
    for size, label in labels.items():
        bench.measurements[f"wide_target_{size}"] = summary(
            f"(f) target-braze, {label}, null_braze, ledger off", "records", runs[f"target_{size}"]
        )
        bench.measurements[f"wide_floor_{size}"] = summary(
            f"floor: discard target, msgspec, validate_records false, {label}",
            "records",
            runs[f"floor_{size}"],
        )
    bench.results["wide_stream"] = {
        "attributes": wide_stream.ATTRIBUTES,
        "schema": wide_stream.SCHEMA["schema"]["properties"],
        **{
            f"marginal_cpu_per_100k_{who}_{size}": marginal(bench, who, size)
            for who in ("target", "floor")
            for size in ("slice", "full")
        },
    }


def marginal(bench: Bench, who: str, size: str) -> float | None:
    """CPU per 100k records with start-up excluded: (run - SCHEMA-only run) / records."""
    full = bench.measurements.get(f"wide_{who}_{size}")
    empty = bench.measurements.get(f"wide_{who}_empty")
    if not full or not empty or not full["median"].get("records"):
        return None
    cpu = full["median"]["cpu_seconds"] - empty["median"]["cpu_seconds"]
    return round(cpu / full["median"]["records"] * 100_000, 3)


def profile(bench: Bench) -> None:
    """py-spy over target-braze on the wide slice, ledger off, and its threads' CPU split."""
    stream, records = streams(bench)["slice"]
    with NullBrazeProcess() as null:
        config, _ = braze_config(bench, null.url, "profile", **LEDGER_OFF)
        bench.log(f"(f) profiling target-braze on {records:,} wide records (py-spy)")
        found = profiles.record(bench, "target-braze", config, stream)
    header = (
        f"target-braze ({plugins.TARGET_VENV}) on {records:,} Peak-shaped wide records into "
        "null_braze, ledger off"
    )
    profiles.publish(bench, bench.output_dir, "target-braze", found, header, records)
