"""(c) The whole pipeline: `meltano run tap-peak-attributes target-braze`, both modes (issue 10).

From the repository's project (`meltano.yml`), with a private Meltano system directory
and a `file://` state backend (see `plugins`), into null_braze (the Braze side takes no
core), the rate limit off and the ledger off, each repeat runs, in alternating order:

- plain RECORD messages;
- BATCH messages (`TAP_PEAK_ATTRIBUTES_BATCH_CONFIG`: msgspec JSON lines, no compression,
  a new private directory each run; target-braze reads and deletes the files);

each once on the whole warehouse and once reading no row (`start_date` in 2099: Meltano's,
the tap's and the target's start-up and teardown alone). CPU is `meltano`'s process with
its waited-for children, the tap and the target (`os.wait4`), never null_braze's; Meltano's
own share (the relay, plus its start-up) is that process's CPU without its children's,
read from /proc before it is reaped. Last, one RECORD run with the ledger on (an empty
SQLite ledger: a first sync), once.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from benchmarks import plugins
from benchmarks.measure import rate_row, run_measured, summary
from benchmarks.null_braze import NullBrazeProcess

if TYPE_CHECKING:
    from benchmarks.run import Bench

API_KEY = "bench-key"
MODES = ("record", "batch")
NOTHING_AFTER = "2099-01-01T00:00:00Z"


def environment(bench: Bench, url: str, mode: str, run: str) -> dict[str, str]:
    """A `meltano run`'s whole environment: private Meltano, the warehouse, null_braze."""
    env = plugins.meltano_environment(bench.work / "meltano-sys", bench.work / "meltano-state")
    env.update(
        {
            "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL": bench.sqlite_url,
            "TARGET_BRAZE_REST_ENDPOINT": url,
            "TARGET_BRAZE_API_KEY": API_KEY,
            "TARGET_BRAZE_MAX_REQUESTS_PER_WINDOW": "0",
            "TARGET_BRAZE_SEND_ONLY_CHANGES": "false",
            "TARGET_BRAZE_DEDUPLICATE_EVENTS": "false",
            # The dev environment's paths are the project's output/: never a benchmark's.
            "TARGET_BRAZE_LEDGER_URL": f"sqlite:///{bench.work / f'ledger-{run}.sqlite'}",
            "TARGET_BRAZE_RUN_REPORT_PATH": str(bench.work / f"report-{run}.json"),
            "TARGET_BRAZE_REJECTED_RECORDS_PATH": str(bench.work / f"rejects-{run}.jsonl"),
            "TARGET_BRAZE_PROGRESS_INTERVAL_SECONDS": "60",
        }
    )
    if mode == "record":
        # Explicitly: whatever the project's default batch_config, RECORD messages.
        env["TAP_PEAK_ATTRIBUTES_BATCH_CONFIG"] = "{}"
    if mode == "batch":
        root = bench.work / f"batches-{run}"  # the tap creates it, private (0700)
        env["TAP_PEAK_ATTRIBUTES_BATCH_CONFIG"] = json.dumps(
            {
                "encoding": {"format": "jsonl", "compression": "none"},
                "storage": {"root": root.as_uri()},
            }
        )
        # target-braze reads (and cleans) BATCH files only in the tap's directory.
        env["TARGET_BRAZE_BATCH_FILES_DIR"] = str(root)
        env["TARGET_BRAZE_BATCH_FILES_CLEANUP_DIR"] = str(root)
    return env


def meltano_run(
    bench: Bench, url: str, server_pid: int | None, mode: str, *, empty: bool, **extra: str
) -> dict[str, Any]:
    """One `meltano run` measured; its row with Meltano's own share and the run report."""
    run = f"meltano-{mode}-{'empty-' if empty else ''}{uuid.uuid4().hex[:8]}"
    env = environment(bench, url, mode, run)
    if empty:
        env["TAP_PEAK_ATTRIBUTES_START_DATE"] = NOTHING_AFTER
    env.update(extra)
    command = [
        plugins.tool("meltano"),
        "run",
        "--state-id-suffix",
        run,
        plugins.TAP,
        plugins.TARGET,
    ]
    measured = run_measured(
        command,
        cwd=plugins.ROOT,
        env=env,
        inherit_env=False,
        stderr_path=bench.logfile(run),
        sandbox_pid=server_pid,
    )
    report_path = bench.work / f"report-{run}.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report_path.unlink()
    records = int(report.get("records_in") or 0)
    expected = 0 if empty else bench.args.rows
    if records != expected:
        msg = f"meltano run ({mode}) delivered {records} records, expected {expected}"
        raise RuntimeError(msg)
    row = rate_row(measured, records)
    rows = max(bench.args.rows, 1)
    row.update(
        mode=mode,
        requests=report.get("requests"),
        data_points=report.get("data_points"),
        # Per 100k rows of the warehouse, also for the empty run (its fixed cost).
        cpu_seconds_per_100k=round(measured.cpu_seconds / rows * 100_000, 3),
    )
    if measured.own_cpu_seconds is not None:
        row["meltano_own_cpu_seconds"] = round(measured.own_cpu_seconds, 3)
        row["meltano_own_cpu_per_100k"] = round(measured.own_cpu_seconds / rows * 100_000, 3)
        row["relay_share"] = round(measured.own_cpu_seconds / measured.cpu_seconds, 4)
    return row


def measure(bench: Bench) -> None:
    """Both modes, full and empty, interleaved; then the RECORD mode with the ledger on."""
    runs: dict[str, list[dict[str, Any]]] = {
        f"{mode}_{kind}": [] for mode in MODES for kind in ("full", "empty")
    }
    repeat = bench.args.repeat
    with NullBrazeProcess() as null:
        for index in range(repeat):
            order = MODES if index % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                for empty in (False, True):
                    kind = "empty" if empty else "full"
                    bench.log(f"(c) meltano run, {mode.upper()} mode, {kind} {index + 1}/{repeat}")
                    runs[f"{mode}_{kind}"].append(
                        meltano_run(bench, null.url, null.pid, mode, empty=empty)
                    )
        bench.log("(c) meltano run, RECORD mode, ledger on (empty: a first sync), once")
        ledger_on = meltano_run(
            bench,
            null.url,
            null.pid,
            "record",
            empty=False,
            TARGET_BRAZE_SEND_ONLY_CHANGES="true",
            TARGET_BRAZE_DEDUPLICATE_EVENTS="true",
        )
    labels = {"record": "RECORD messages", "batch": "BATCH messages"}
    for mode in MODES:
        bench.measurements[f"meltano_{mode}"] = summary(
            f"(c) meltano run, {labels[mode]}, null_braze, ledger off", "rows", runs[f"{mode}_full"]
        )
        bench.measurements[f"meltano_{mode}_empty"] = summary(
            f"(c) meltano run, {labels[mode]}, reading no row", "rows", runs[f"{mode}_empty"]
        )
    bench.measurements["meltano_record_ledger"] = summary(
        "(c) meltano run, RECORD messages, ledger on (first sync)", "rows", [ledger_on]
    )
