"""(b) and (d): target-braze against braze-sandbox, the framework floor, the naive target.

(b) target-braze alone on the tap's recorded stream into a braze-sandbox with its rate
limit off (the sandbox stores profiles, so it takes a core: its CPU share is reported),
interleaved with the framework floor at singer-sdk's defaults (stdlib reader, jsonschema
validation); once more on the whole stream; the naive one-record-per-request target;
levers (one setting changed, one run each). (d) target-braze against a sandbox enforcing
a scaled Braze rate limit. target-braze runs from its Meltano venv with the ledger off.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from braze_sandbox.testing import SandboxProcess

from benchmarks import plugins
from benchmarks.measure import rate_row, run_measured, summary
from benchmarks.singer_files import slice_stream
from benchmarks.target_alone import LEDGER_OFF, braze_config

if TYPE_CHECKING:
    from benchmarks.run import Bench

BASELINES = Path(__file__).resolve().parent / "baselines"
API_KEY = "bench-key"
T = TypeVar("T")


def patient(bench: Bench, call: Callable[[], T], attempts: int = 20) -> T:
    """Call the sandbox's admin API, waiting out its journal fold.

    When traffic pauses the sandbox folds its profile journal into SQLite; after a
    million profiles that blocks it for longer than its client's 30 s timeout.
    """
    for attempt in range(attempts):
        try:
            return call()
        except (TimeoutError, OSError):
            if attempt == attempts - 1:
                raise
            bench.log("sandbox busy (folding its journal?), retrying")
            time.sleep(2)
    raise AssertionError("unreachable")


@contextmanager
def sandbox(**options: Any) -> Iterator[SandboxProcess]:
    """A braze-sandbox process (never this process: its CPU is not the target's)."""
    with SandboxProcess(api_key=API_KEY, **options) as server:
        yield server


def sandbox_pid(server: SandboxProcess) -> int | None:
    """The sandbox's process id, to measure its CPU next to the target's."""
    process = getattr(server, "_process", None)
    return process.pid if process is not None else None


def run_braze(
    bench: Bench,
    server: SandboxProcess,
    stream: Path,
    records: int,
    name: str,
    **overrides: Any,
) -> dict[str, Any]:
    """One target-braze run from a recorded stream; the sandbox is reset first."""
    patient(bench, server.reset)
    config, report_path = braze_config(bench, server.url, name, **{**LEDGER_OFF, **overrides})
    run = run_measured(
        [plugins.target_braze(), "--config", str(config)],
        stdin_path=stream,
        stderr_path=bench.logfile(f"target-braze-{name}"),
        sandbox_pid=sandbox_pid(server),
        env=plugins.clean_environment(),
        inherit_env=False,
    )
    run_report = json.loads(report_path.read_text(encoding="utf-8"))
    stats = patient(bench, server.stats)
    row = rate_row(run, records)
    requests = int(run_report.get("requests", 0))
    row.update(
        requests=requests,
        requests_per_second=round(requests / run.wall_seconds, 1),
        records_in=run_report.get("records_in"),
        rate_limited=run_report.get("rate_limited"),
        retries=run_report.get("retries"),
        sandbox_objects_applied=stats.get("objects_applied"),
        sandbox_max_in_flight=stats.get("max_in_flight"),
    )
    return row


def run_discard(bench: Bench, stream: Path, records: int, name: str, **env: str) -> dict[str, Any]:
    """One run of the framework floor (a singer-sdk target that discards), Meltano venv."""
    config = bench.write_json(f"discard-{name}.json", json.loads(env.pop("CONFIG", "{}")))
    run = run_measured(
        [plugins.target_python(), str(BASELINES / "discard_target.py"), "--config", str(config)],
        stdin_path=stream,
        stderr_path=bench.logfile(f"discard-{name}"),
        env={**plugins.clean_environment(), **env},
        inherit_env=False,
    )
    return rate_row(run, records)


def targets_alone(bench: Bench) -> None:
    """(b), the floor and the naive target, into one sandbox with its limit off."""
    compare_stream, compare_records = bench.compare_stream, bench.compare_records
    with sandbox(rate_limit=0) as server:
        braze_runs: list[dict[str, Any]] = []
        floor_runs: list[dict[str, Any]] = []
        for repeat in range(bench.args.repeat):
            bench.log(
                f"(b) target-braze vs floor on {compare_records:,} records, "
                f"{repeat + 1}/{bench.args.repeat}"
            )
            braze_runs.append(run_braze(bench, server, compare_stream, compare_records, "compare"))
            floor_runs.append(run_discard(bench, compare_stream, compare_records, "floor"))
        for braze, floor in zip(braze_runs, floor_runs, strict=True):
            braze["floor_wall_ratio"] = round(floor["wall_seconds"] / braze["wall_seconds"], 3)
        bench.measurements["target_braze_compare"] = summary(
            "(b) target-braze, tap stream, braze-sandbox, rate limit off", "records", braze_runs
        )
        bench.measurements["floor_compare"] = summary(
            "baseline: singer-sdk discard target, default settings", "records", floor_runs
        )

        if bench.stream_records > compare_records:
            full_runs = []
            for repeat in range(bench.args.full_repeat):
                bench.log(
                    f"(b) target-braze on all {bench.stream_records:,} records "
                    f"{repeat + 1}/{bench.args.full_repeat}"
                )
                full_runs.append(
                    run_braze(bench, server, bench.stream, bench.stream_records, "full")
                )
            bench.measurements["target_braze_full"] = summary(
                "(b) target-braze, tap stream, braze-sandbox, whole stream", "records", full_runs
            )

        naive_runs = []
        for repeat in range(bench.args.repeat):
            bench.log(
                f"naive target on {bench.naive_records:,} records {repeat + 1}/{bench.args.repeat}"
            )
            patient(bench, server.reset)
            run = run_measured(
                [
                    sys.executable,
                    str(BASELINES / "naive_target.py"),
                    "--url",
                    server.url,
                    "--api-key",
                    API_KEY,
                    "--limit",
                    str(bench.naive_records),
                ],
                stdin_path=bench.naive_stream,
                stderr_path=bench.logfile("naive"),
                sandbox_pid=sandbox_pid(server),
            )
            row = rate_row(run, bench.naive_records)
            row["ms_per_record"] = round(run.wall_seconds / bench.naive_records * 1000, 3)
            row["sandbox_objects_applied"] = patient(bench, server.stats).get("objects_applied")
            naive_runs.append(row)
        bench.measurements["naive"] = summary(
            f"baseline: naive target, one record per request ({bench.naive_records:,} "
            "records only)",
            "records",
            naive_runs,
        )
        if bench.args.levers:
            levers(bench, server)


def levers(bench: Bench, server: SandboxProcess) -> None:
    """One setting changed at a time, one run each, on the compare slice."""
    stream, records = bench.compare_stream, bench.compare_records
    variants: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        (
            "lever_braze_no_validation",
            "target-braze, validate_records false",
            lambda: run_braze(bench, server, stream, records, "noval", validate_records=False),
        ),
        (
            "lever_braze_concurrency_1",
            "target-braze, max_concurrent_requests 1",
            lambda: run_braze(bench, server, stream, records, "c1", max_concurrent_requests=1),
        ),
        (
            "lever_braze_concurrency_4",
            "target-braze, max_concurrent_requests 4",
            lambda: run_braze(bench, server, stream, records, "c4", max_concurrent_requests=4),
        ),
        (
            "lever_floor_no_validation",
            "floor, validate_records false",
            lambda: run_discard(
                bench, stream, records, "noval", CONFIG='{"validate_records": false}'
            ),
        ),
        (
            "lever_floor_msgspec",
            "floor, msgspec reader",
            lambda: run_discard(bench, stream, records, "msgspec", BENCH_DISCARD_READER="msgspec"),
        ),
        (
            "lever_floor_msgspec_no_validation",
            "floor, msgspec reader + validate_records false",
            lambda: run_discard(
                bench,
                stream,
                records,
                "msgspec-noval",
                BENCH_DISCARD_READER="msgspec",
                CONFIG='{"validate_records": false}',
            ),
        ),
    ]
    for key, label, measure in variants:
        bench.log(f"lever: {label}")
        bench.measurements[key] = summary(f"lever: {label}", "records", [measure()])


def rate_limited(bench: Bench) -> None:
    """(d) target-braze against a sandbox enforcing a scaled Braze limit."""
    limit, window = bench.args.rate_limit, bench.args.rate_window
    per_request = bench.args.rate_objects_per_request
    wanted = limit * per_request * bench.args.rate_windows
    records = min(wanted, bench.stream_records)
    stream = bench.work / f"stream-rate-{records}.jsonl"
    records = slice_stream(bench.stream, stream, records)
    runs = []
    with sandbox(rate_limit=limit, rate_window=window) as server:
        for repeat in range(bench.args.repeat):
            bench.log(
                f"(d) rate limit {limit}/{window}s on {records:,} records "
                f"{repeat + 1}/{bench.args.repeat}"
            )
            row = run_braze(
                bench,
                server,
                stream,
                records,
                "rate",
                max_requests_per_window=limit,
                rate_limit_window_seconds=window,
                max_objects_per_request=per_request,
            )
            stats = patient(bench, server.stats)
            arrivals = sorted(
                entry["time"]
                for entry in patient(bench, server.requests_log)
                if entry.get("status") not in {0, "0"}
            )
            row.update(
                limit_requests_per_second=round(limit / window, 2),
                sandbox_requests=stats.get("requests"),
                sandbox_429=stats.get("rate_limited"),
                max_arrivals_in_window=stats.get("max_arrivals_in_window"),
                over_limit=bool((stats.get("max_arrivals_in_window") or 0) > limit),
                **steady_state(arrivals, limit, window),
            )
            runs.append(row)
    bench.measurements["rate_limited"] = summary(
        f"(d) target-braze vs sandbox limit {limit} requests / {window:g} s "
        f"({per_request} objects per request)",
        "records",
        runs,
    )


def steady_state(arrivals: list[float], limit: int, window: float) -> dict[str, Any]:
    """Requests/s after the first window and before the last request, and its share."""
    if len(arrivals) < 2:
        return {"steady_requests_per_second": None, "share_of_limit": None}
    start = arrivals[0] + window
    end = arrivals[-1]
    if end - start < window:
        return {"steady_requests_per_second": None, "share_of_limit": None}
    count = sum(1 for t in arrivals if start <= t <= end)
    rate = count / (end - start)
    return {
        "steady_requests_per_second": round(rate, 2),
        "share_of_limit": round(rate / (limit / window), 4),
    }
