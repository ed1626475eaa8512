"""(g) What the delivery ledger costs target-braze, and what it saves (issue 8).

CPU: target-braze (Meltano venv, into null_braze, rate limit off) on the wide stream's
`--compare-rows` slice in four states, interleaved, `--ledger-repeat` times:

- `off`: `send_only_changes` and `deduplicate_events` false (no ledger at all);
- `empty`: the ledger on, its SQLite file new (a first sync);
- `full, unchanged`: the ledger already holding these exact values (a copy of the file a
  first sync left), the same stream again: every record settles as unchanged;
- `full, all changed`: the same full ledger, a stream with every attribute of every
  customer changed (`wide_stream --variant changed`): every value is looked up, sent and
  written.

Delta: the tap's 1M stream (recorded in (a)) through target-braze with an empty ledger
(a first sync; its ledger file's size per 1M users), then `peak-sample model-run
--changes N/10` on a copy of the warehouse, the tap's incremental run from the first
sync's last STATE, and that delta through target-braze with and without the full
ledger: requests and data points sent, against the values the model run really changed.

With profiling on, a py-spy profile of the dearest state (full, every record changed).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import plugins, profiles, wide_stream
from benchmarks.measure import median, run_measured, summary
from benchmarks.null_braze import NullBrazeProcess
from benchmarks.singer_files import count_records, last_state
from benchmarks.target_alone import LEDGER_OFF, braze_config, run_target, streams

if TYPE_CHECKING:
    from benchmarks.run import Bench

VARIANTS = ("off", "empty", "full_unchanged", "full_changed")
LABELS = {
    "off": "ledger off",
    "empty": "ledger on, empty (first sync)",
    "full_unchanged": "ledger on, full, nothing changed",
    "full_changed": "ledger on, full, every record changed",
}


def ledger_settings(path: Path) -> dict[str, Any]:
    """The ledger on, in `path`, under a fixed workspace name (the server's port varies)."""
    return {
        "send_only_changes": True,
        "deduplicate_events": True,
        "ledger_url": f"sqlite:///{path}",
        "ledger_workspace": "benchmark",
    }


def fresh_copy(template: Path, path: Path) -> None:
    """`path` becomes a copy of the ledger file `template` (no WAL beside either)."""
    remove_ledger(path)
    shutil.copyfile(template, path)


def remove_ledger(path: Path) -> None:
    """Delete a ledger file and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def checkpointed_size(path: Path) -> int:
    """The ledger file's size once its WAL is copied in (the WAL is scratch space)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.stat().st_size


def cpu(bench: Bench) -> None:
    """The four ledger states on the wide slice, interleaved."""
    stream, records = streams(bench)["slice"]
    changed = bench.work / f"wide-{records}-changed.jsonl"
    wide_stream.write_file(changed, records, seed=bench.args.seed, variant="changed")
    template = bench.work / "ledger-template-wide.sqlite"
    ledger = bench.work / "ledger-wide.sqlite"
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with NullBrazeProcess() as null:
        # The full ledger: what a first sync of this stream leaves (not measured).
        remove_ledger(template)
        run_target(
            bench, null.url, stream, records, "ledger-fill", null.pid, **ledger_settings(template)
        )
        checkpointed_size(template)
        repeat = bench.args.ledger_repeat
        for index in range(repeat):
            order = VARIANTS if index % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                bench.log(f"(g) {LABELS[variant]} on {records:,} {index + 1}/{repeat}")
                settings: dict[str, Any] = dict(LEDGER_OFF)
                source = stream
                if variant == "empty":
                    remove_ledger(ledger)
                    settings = ledger_settings(ledger)
                elif variant.startswith("full"):
                    fresh_copy(template, ledger)
                    settings = ledger_settings(ledger)
                    source = changed if variant == "full_changed" else stream
                row = run_target(
                    bench, null.url, source, records, f"ledger-{variant}", null.pid, **settings
                )
                runs[variant].append(row)
        if bench.args.profile:
            # Where the ledger's cost goes, in its dearest state (not a measured run).
            fresh_copy(template, ledger)
            config, _ = braze_config(bench, null.url, "profile-ledger", **ledger_settings(ledger))
            bench.log(f"(g) profiling target-braze, {LABELS['full_changed']} (py-spy)")
            found = profiles.record(bench, "target-braze-ledger", config, changed)
            what = (
                f"target-braze ({plugins.TARGET_VENV}) on {records:,} wide records into "
                f"null_braze, {LABELS['full_changed']}"
            )
            profiles.publish(bench, bench.output_dir, "target-braze-ledger", found, what, records)
    # Each ledger run against the ledger-off run of its own repeat.
    for variant in VARIANTS[1:]:
        for on, off in zip(runs[variant], runs["off"], strict=True):
            on["cpu_over_off"] = round(on["cpu_seconds"] / off["cpu_seconds"] - 1, 4)
    for variant in VARIANTS:
        bench.measurements[f"ledger_{variant}"] = summary(
            f"(g) target-braze, {LABELS[variant]}", "records", runs[variant]
        )
    remove_ledger(ledger)


def delta(bench: Bench) -> None:
    """1M first sync with the ledger (its size), a 10% model run, the delta with and without."""
    if not bench.stream_records:
        bench.note("(g) delta not measured: the tap's stream is empty.")
        return
    users = bench.stream_records
    template = bench.work / "ledger-template-delta.sqlite"
    ledger = bench.work / "ledger-delta.sqlite"
    remove_ledger(template)
    with NullBrazeProcess() as null:
        bench.log(f"(g) first sync of {users:,} customers with the ledger on (empty)")
        first = run_target(
            bench,
            null.url,
            bench.stream,
            users,
            "delta-first",
            null.pid,
            **ledger_settings(template),
        )
        size = checkpointed_size(template)
        bench.measurements["ledger_first_sync_tap_stream"] = summary(
            "(g) target-braze, tap stream, ledger on, empty (first sync)", "records", [first]
        )

        warehouse = bench.work / "warehouse-delta.sqlite"
        shutil.copyfile(bench.sqlite_path, warehouse)
        url = f"sqlite:///{warehouse}"
        changes = max(1, users // 10)
        bench.log(f"(g) peak-sample model-run --changes {changes:,}")
        model_run = run_measured(
            [
                plugins.tool("peak-sample"),
                "model-run",
                "--url",
                url,
                "--changes",
                str(changes),
                "--seed",
                str(bench.args.seed),
            ],
            stdout_path=bench.work / "model-run.json",
            stderr_path=bench.logfile("model-run"),
        )
        summary_line = (bench.work / "model-run.json").read_text().strip().splitlines()[-1]
        model = json.loads(summary_line)

        state = bench.work / "state-after-first-sync.json"
        state.write_text(json.dumps(last_state(bench.stream)), encoding="utf-8")
        config = bench.write_json("tap-delta.json", {"sqlalchemy_url": url})
        delta_stream = bench.work / "stream-delta.jsonl"
        bench.log("(g) the tap's incremental run after the model run")
        tap_run = run_measured(
            [plugins.tap(), "--config", str(config), "--state", str(state)],
            stdout_path=delta_stream,
            stderr_path=bench.logfile("tap-delta"),
            env=plugins.clean_environment(),
            inherit_env=False,
        )
        records = count_records(delta_stream)

        runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        repeat = bench.args.ledger_repeat
        for index in range(repeat):
            order = ["without", "with"] if index % 2 == 0 else ["with", "without"]
            for which in order:
                bench.log(
                    f"(g) delta of {records:,} records {which} the ledger {index + 1}/{repeat}"
                )
                settings: dict[str, Any] = dict(LEDGER_OFF)
                if which == "with":
                    fresh_copy(template, ledger)
                    settings = ledger_settings(ledger)
                runs[which].append(
                    run_target(
                        bench,
                        null.url,
                        delta_stream,
                        records,
                        f"delta-{which}",
                        null.pid,
                        **settings,
                    )
                )
    for which, rows in runs.items():
        bench.measurements[f"ledger_delta_{which}"] = summary(
            f"(g) target-braze, 10% delta, {which} the ledger", "records", rows
        )
    bench.results["ledger"] = {
        "users": users,
        "file_bytes": size,
        "bytes_per_user": round(size / users, 1),
        "mb_per_million_users": round(size / users * 1_000_000 / 2**20, 1),
        "model_run": model,
        "model_run_seconds": round(model_run.wall_seconds, 2),
        "delta_records": records,
        "tap_delta_wall_seconds": round(tap_run.wall_seconds, 2),
        "delta_data_points_with": median([r["data_points"] for r in runs["with"]]),
        "delta_data_points_without": median([r["data_points"] for r in runs["without"]]),
        "delta_requests_with": median([r["requests"] for r in runs["with"]]),
        "delta_requests_without": median([r["requests"] for r in runs["without"]]),
    }
    remove_ledger(ledger)
    remove_ledger(template)
    warehouse.unlink(missing_ok=True)


def measure(bench: Bench) -> None:
    """Both parts."""
    cpu(bench)
    delta(bench)
