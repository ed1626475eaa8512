"""(a) tap-peak-attributes alone, from its Meltano venv: RECORD and BATCH mode, full and empty.

Each repeat, in alternating order: the tap on the whole SQLite warehouse writing RECORD
messages to a file (the first such run is the recorded stream every later stage reads),
the same in BATCH mode (msgspec JSON lines, no compression, a new private directory; the
files are counted, then deleted), and each mode once reading no row (`start_date` in
2099: start-up and the query alone, for the marginal CPU). On PostgreSQL (when available)
the RECORD mode, full, too.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from benchmarks import plugins
from benchmarks.measure import rate_row, run_measured, summary
from benchmarks.singer_files import count_batch_records, count_records

if TYPE_CHECKING:
    from benchmarks.run import Bench

NOTHING_AFTER = "2099-01-01T00:00:00Z"


def tap_once(bench: Bench, name: str, config: dict[str, Any], record: bool) -> dict[str, Any]:
    """One tap run to a file; its row (rows counted from the output)."""
    path = bench.write_json(f"tap-{name}.json", config)
    out = bench.stream if record else bench.work / f"tap-{name}-out.jsonl"
    run = run_measured(
        [plugins.tap(), "--config", str(path)],
        stdout_path=out,
        stderr_path=bench.logfile(f"tap-{name}"),
        env=plugins.clean_environment(),
        inherit_env=False,
    )
    batch_root = config.get("batch_config", {}).get("storage", {}).get("root")
    rows = count_batch_records(out) if batch_root else count_records(out)
    if batch_root:
        shutil.rmtree(batch_root.removeprefix("file://"), ignore_errors=True)
    if not record:
        out.unlink()
    row = rate_row(run, rows)
    total = max(bench.args.rows, 1)
    row["cpu_seconds_per_100k"] = round(run.cpu_seconds / total * 100_000, 3)
    return row


def measure(bench: Bench) -> None:
    """Every tap measurement; afterwards `bench.stream` holds the recorded RECORD stream."""
    base = {"sqlalchemy_url": bench.sqlite_url}
    batch_number = 0

    def batch(extra: dict[str, Any]) -> dict[str, Any]:
        nonlocal batch_number
        batch_number += 1
        root = bench.work / f"tap-batches-{batch_number}"
        encoding = {"format": "jsonl", "compression": "none"}
        return {**extra, "batch_config": {"encoding": encoding, "storage": {"root": root.as_uri()}}}

    plans: dict[str, Any] = {
        "tap_sqlite": lambda: base,
        "tap_sqlite_batch": lambda: batch(base),
        "tap_sqlite_empty": lambda: {**base, "start_date": NOTHING_AFTER},
        "tap_sqlite_batch_empty": lambda: batch({**base, "start_date": NOTHING_AFTER}),
    }
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in plans}
    repeat = bench.args.repeat
    for index in range(repeat):
        order = list(plans) if index % 2 == 0 else list(reversed(plans))
        for key in order:
            bench.log(f"(a) {key.replace('_', ' ')} {index + 1}/{repeat}")
            record = key == "tap_sqlite" and not runs[key]
            runs[key].append(tap_once(bench, key, plans[key](), record))
    labels = {
        "tap_sqlite": "(a) tap alone, sqlite, RECORD messages",
        "tap_sqlite_batch": "(a) tap alone, sqlite, BATCH messages",
        "tap_sqlite_empty": "(a) tap alone, sqlite, RECORD, reading no row",
        "tap_sqlite_batch_empty": "(a) tap alone, sqlite, BATCH, reading no row",
    }
    for key, label in labels.items():
        bench.measurements[key] = summary(label, "rows", runs[key])
    if bench.postgres_url:
        config = {"sqlalchemy_url": bench.postgres_url, "schema": bench.args.postgres_schema}
        pg_runs = []
        for index in range(repeat):
            bench.log(f"(a) tap alone, postgresql {index + 1}/{repeat}")
            pg_runs.append(tap_once(bench, "postgresql", config, False))
        bench.measurements["tap_postgresql"] = summary(
            "(a) tap alone, postgresql, RECORD messages", "rows", pg_runs
        )


def marginal(bench: Bench, key: str) -> float | None:
    """CPU per 100k rows with start-up excluded: (full run - run reading nothing) / rows."""
    full = bench.measurements.get(key)
    empty = bench.measurements.get(f"{key}_empty")
    if not full or not empty or not full["median"].get("records"):
        return None
    cpu = full["median"]["cpu_seconds"] - empty["median"]["cpu_seconds"]
    return round(cpu / full["median"]["records"] * 100_000, 3)
