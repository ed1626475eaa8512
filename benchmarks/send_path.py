"""The send path (issue 19): share of Braze's rate limit used, and CPU per 100k records.

    .venv/bin/python -m benchmarks.send_path limit
    .venv/bin/python -m benchmarks.send_path cpu --old /tmp/old-send/target-braze

`limit`: wide-stream users into braze-sandbox with a rate limit and latency, the
target's `max_requests_per_window` equal to the sandbox's, the ledger off. The share of
the limit used is the mean arrival rate at the sandbox, (requests - 1) / (last arrival -
first arrival), over the limit's mean rate (limit / window). target-braze paces its
requests (a slot is reused one window after its send), so on a run of a few windows
this is the rate it kept; a client bursting a whole window's worth at once could show
more than 100% on so short a run while keeping under the limit. `run_share` divides by
the whole wall time instead (start-up and the last answers included). Also what the
sandbox saw over its limit (429s, the busiest window) and the run report's peak in
flight.

`cpu`: target-braze CPU-s per 100k records into null_braze answering at once (rate
limit off, ledger off), this checkout against an older one (`--old`: its `target-braze`
directory, put first on PYTHONPATH), interleaved, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from braze_sandbox.testing import SandboxProcess

from benchmarks import wide_stream
from benchmarks.measure import run_measured
from benchmarks.null_braze import NullBrazeProcess

LEDGER_OFF = {"send_only_changes": False, "deduplicate_events": False}
#: (requests per window, window seconds, latency in ms, users)
LIMIT_CASES = ((300, 3, (800, 1200), 45_000), (3000, 3, 50, 450_000))


def _target(config: dict[str, Any], work: Path, stream: Path, env: dict[str, str]) -> Any:
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    return run_measured(
        [sys.executable, "-m", "target_braze", "--config", str(config_path)],
        stdin_path=stream,
        stderr_path=work / "stderr.log",
        env=env,
    )


def limit_case(
    per_window: int, window: int, latency: Any, users: int, work: Path
) -> dict[str, Any]:
    """One run into the sandbox; the share of the limit used and what Braze counted."""
    stream = work / f"stream-{users}.jsonl"
    if not stream.exists():
        wide_stream.write_file(stream, users)
    report_path = work / "report.json"
    with SandboxProcess(rate_limit=per_window, rate_window=window, latency_ms=latency) as braze:
        config = {
            "api_key": braze.api_key,
            "rest_endpoint": braze.url,
            "max_requests_per_window": per_window,
            "rate_limit_window_seconds": window,
            "run_report_path": str(report_path),
            "rejected_records_path": str(work / "rejects.jsonl"),
            **LEDGER_OFF,
        }
        assert braze._process is not None
        server = psutil.Process(braze._process.pid)
        server_cpu = sum(server.cpu_times()[:2])
        run = _target(config, work, stream, {})
        server_cpu = sum(server.cpu_times()[:2]) - server_cpu
        stats = braze.stats()
        arrivals = [row["received_at"] for row in braze.requests_log()]
    report = json.loads(report_path.read_text())
    rate = per_window / window
    share = (len(arrivals) - 1) / (max(arrivals) - min(arrivals)) / rate
    return {
        "limit": f"{per_window}/{window}s",
        "latency_ms": latency,
        "users": users,
        "requests": len(arrivals),
        "wall_seconds": round(run.wall_seconds, 2),
        "share_of_limit": round(share, 3),
        "run_share": round(len(arrivals) / run.wall_seconds / rate, 3),
        "sandbox_rate_limited": stats["rate_limited"],
        "sandbox_max_arrivals_in_window": stats["max_arrivals_in_window"],
        "in_flight_peak": report.get("in_flight_peak"),
        "in_flight_ceiling_waits": report.get("in_flight_ceiling_waits"),
        "target_cpu_seconds": round(run.cpu_seconds, 2),
        "sandbox_cpu_seconds": round(server_cpu, 2),
        "retries": report.get("retries"),
    }


def null_case(per_window: int, window: int, latency_ms: float, users: int, work: Path) -> dict:
    """The target alone against the limit: null_braze answering after `latency_ms`.

    The sandbox stores every profile and cannot take 1,000 requests/s on a small machine;
    null_braze can, so this shows what the target keeps up (its own CPU is then the
    bound). The rate is the run report's requests over its elapsed time (start-up
    included: a lower bound).
    """
    stream = work / f"stream-{users}.jsonl"
    if not stream.exists():
        wide_stream.write_file(stream, users)
    report_path = work / "report.json"
    with NullBrazeProcess(latency_ms=latency_ms) as braze:
        config = {
            "api_key": "bench-key",
            "rest_endpoint": braze.url,
            "max_requests_per_window": per_window,
            "rate_limit_window_seconds": window,
            "run_report_path": str(report_path),
            **LEDGER_OFF,
        }
        run = _target(config, work, stream, {})
    report = json.loads(report_path.read_text())
    rate = report["requests"] / report["elapsed_seconds"]
    return {
        "limit": f"{per_window}/{window}s",
        "server": "null_braze",
        "latency_ms": latency_ms,
        "users": users,
        "requests": report["requests"],
        "wall_seconds": round(run.wall_seconds, 2),
        "share_of_limit": round(rate / (per_window / window), 3),
        "in_flight_peak": report.get("in_flight_peak"),
        "in_flight_ceiling_waits": report.get("in_flight_ceiling_waits"),
        "target_cpu_seconds": round(run.cpu_seconds, 2),
    }


def cpu_runs(old: Path, records: int, repeats: int, work: Path) -> dict[str, Any]:
    """Interleaved runs of both trees into null_braze; CPU-s per 100k records, medians."""
    stream = work / f"stream-{records}.jsonl"
    if not stream.exists():
        wide_stream.write_file(stream, records)
    trees = {"new": Path(__file__).resolve().parents[1] / "target-braze", "old": old}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    wall: dict[str, list[float]] = {name: [] for name in trees}
    with NullBrazeProcess() as braze:
        config = {
            "api_key": "bench-key",
            "rest_endpoint": braze.url,
            "max_requests_per_window": 0,
            "run_report_path": str(work / "report.json"),
            "progress_interval_seconds": 600,
            **LEDGER_OFF,
        }
        for repeat in range(repeats):
            order = list(trees) if repeat % 2 == 0 else list(reversed(trees))
            for name in order:
                env = {"PYTHONPATH": str(trees[name])}
                run = _target(config, work, stream, env)
                if run.returncode:
                    raise RuntimeError((work / "stderr.log").read_text()[-2000:])
                cpu[name].append(run.cpu_seconds * 100_000 / records)
                wall[name].append(run.wall_seconds)
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "records": records,
        "repeats": repeats,
        "cpu_seconds_per_100k": {k: [round(v, 3) for v in vs] for k, vs in cpu.items()},
        "median_cpu_seconds_per_100k": {k: round(v, 3) for k, v in medians.items()},
        "new_over_old": round(medians["new"] / medians["old"] - 1, 3),
        "median_wall_seconds": {k: round(statistics.median(v), 2) for k, v in wall.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Run one measurement; print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.send_path")
    sub = parser.add_subparsers(dest="what", required=True)
    limit = sub.add_parser("limit")
    limit.add_argument("--case", type=int, action="append", help="index into LIMIT_CASES")
    limit.add_argument("--null", action="store_true", help="also 3,000/3 s into null_braze")
    cpu = sub.add_parser("cpu")
    cpu.add_argument("--old", type=Path, required=True, help="the old tree's target-braze dir")
    cpu.add_argument("--records", type=int, default=100_000)
    cpu.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory(prefix="send-path-") as tmp:
        work = Path(tmp)
        if args.what == "limit":
            cases = [LIMIT_CASES[i] for i in args.case] if args.case else list(LIMIT_CASES)
            results: Any = [limit_case(*case, work) for case in cases]
            if args.null:
                results.append(null_case(3000, 3, 50, 450_000, work))
        else:
            results = cpu_runs(args.old, args.records, args.repeats, work)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
