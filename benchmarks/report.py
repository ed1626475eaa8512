"""BENCHMARKS.md: how to run, the machine, the goals, every measurement's table, the chart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks import goals

Column = tuple[str, str, str]  # header, field, format

RATE_COLUMNS: list[Column] = [
    ("Records", "records", ",.0f"),
    ("Runs", "repeats", "d"),
    ("Wall s", "wall_seconds", ".2f"),
    ("Records/s", "records_per_second", ",.0f"),
    ("Requests/s", "requests_per_second", ",.1f"),
    ("CPU s", "cpu_seconds", ".2f"),
    ("CPU s / 100k", "cpu_seconds_per_100k", ".2f"),
    ("Peak RSS MB", "max_rss_mb", ".0f"),
    ("Others' cores", "others_cores", ".2f"),
]
LEDGER_COLUMNS: list[Column] = [
    ("Records", "records", ",.0f"),
    ("Runs", "repeats", "d"),
    ("Wall s", "wall_seconds", ".2f"),
    ("Records/s", "records_per_second", ",.0f"),
    ("CPU s / 100k", "cpu_seconds_per_100k", ".2f"),
    ("CPU vs off", "cpu_over_off", "+.0%"),
    ("Requests", "requests", ",.0f"),
    ("Data points", "data_points", ",.0f"),
    ("Unchanged", "unchanged", ",.0f"),
    ("Peak RSS MB", "max_rss_mb", ".0f"),
    ("Others' cores", "others_cores", ".2f"),
]
PIPELINE_COLUMNS: list[Column] = [
    ("Rows", "records", ",.0f"),
    ("Runs", "repeats", "d"),
    ("Wall s", "wall_seconds", ".2f"),
    ("Rows/s", "records_per_second", ",.0f"),
    ("CPU s", "cpu_seconds", ".2f"),
    ("CPU s / 100k rows", "cpu_seconds_per_100k", ".2f"),
    ("Meltano's own CPU s", "meltano_own_cpu_seconds", ".2f"),
    ("Meltano's share", "relay_share", ".0%"),
    ("Peak RSS MB", "max_rss_mb", ".0f"),
    ("Others' cores", "others_cores", ".2f"),
]
TARGET_ALONE_COLUMNS: list[Column] = [
    *RATE_COLUMNS[:-1],
    ("Sender threads", "sender_threads", ".0f"),
    RATE_COLUMNS[-1],
]
SANDBOX_COLUMNS: list[Column] = [*RATE_COLUMNS[:-1], ("Sandbox CPU share", "sandbox_share", ".0%")]

HOW_TO_RUN = """\
```sh
# from the repository root, after scripts/setup (one command; its duration: "This run")
.venv/bin/python -m benchmarks --rows 1000000 --repeat 3
# CI / smoke: tiny and fast, results kept out of the committed ones (every stage runs)
.venv/bin/python -m benchmarks --rows 600 --repeat 1 --compare-rows 300 \\
    --naive-records 50 --rate-windows 1 --postgres off --output-dir /tmp/bench
# also: --ledger-repeat N (repeats of the ledger stage), --profile-rate HZ (py-spy),
#       --no-profile, --no-ledger, --no-meltano, --no-sandbox, --no-levers,
#       --postgres on|off|auto (or BENCH_POSTGRES=1), --work-dir DIR (keep warehouses,
#       streams, logs), --from-json benchmarks/results/latest.json (re-render only)
```"""


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def _row_values(measurement: dict[str, Any]) -> dict[str, Any]:
    values = dict(measurement["median"])
    values["repeats"] = measurement["repeats"]
    sandbox = values.get("sandbox_cpu_seconds")
    if sandbox is not None and values.get("wall_seconds"):
        values["sandbox_share"] = sandbox / values["wall_seconds"]
    return values


def table(results: dict[str, Any], keys: list[str], columns: list[Column]) -> list[str]:
    """A markdown table of the medians of the measurements `keys` (those measured)."""
    m = results["measurements"]
    present = [k for k in keys if k in m]
    if not present:
        return []
    lines = [
        "| Measurement | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key in present:
        values = _row_values(m[key])
        cells = [_fmt(values.get(field), spec) for _, field, spec in columns]
        lines.append(f"| {m[key]['label']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _this_run(results: dict[str, Any]) -> list[str]:
    machine, params, tree = results["machine"], results["parameters"], results.get("tree", {})
    dirty = tree.get("uncommitted_plugin_files") or []
    lines = [
        "## This run",
        "",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['nproc']} cores, {machine['cpu_model']}, {machine['memory_gb']} GB "
        f"RAM, {machine['platform']}, Python {machine['python']}",
        f"- Load average at start: {machine['load_average_at_start']} (1, 5, 15 min)",
        f"- Command: `{results['command']}` ({results.get('duration_seconds', 0):,.0f} s)",
        f"- Code measured: commit {tree.get('commit', '?')}"
        + (
            f", with uncommitted changes to {', '.join(f'`{p}`' for p in dirty)} (the plugin "
            "venvs are editable installs of the working tree: those changes were measured)"
            if dirty
            else ", plugin trees clean"
        ),
        f"- Warehouse: {params['rows']:,} customers (`peak-sample generate --seed "
        f"{params['seed']} --no-long`); "
        + ", ".join(
            f"{name} generated in {w['generate_seconds']} s"
            for name, w in results["warehouses"].items()
        ),
        f"- Repeats: {params['repeat']} per measurement, interleaved (medians below); ledger "
        f"stage {params.get('ledger_repeat', params['repeat'])}; levers 1 run each.",
        "- Processes: the tap and target-braze from their Meltano venvs "
        "(`.meltano/extractors/tap-peak-attributes/venv`, `.meltano/loaders/target-braze/venv`),"
        " the floors from target-braze's venv, `meltano` from `.venv`; a private "
        "`MELTANO_SYS_DIR_ROOT` and a `file://` state backend for every `meltano run`.",
        "- CPU: user + sys from `os.wait4` of the measured process, its waited-for children "
        "included (for `meltano run`: the tap and the target); Meltano's own share is that "
        "process's `/proc` times without its children's, read before it is reaped. Never "
        "the Braze side (null_braze or braze-sandbox run as separate processes).",
        f"- Others' cores: CPU other processes used during a run (all cores' busy time less "
        f"the benchmark's), in cores. Above {goals.BUSY_CORES} the figure was taken while "
        "the machine was busy with someone else's work, and is marked so.",
        "",
    ]
    stages = results.get("stages") or {}
    if stages:
        lines += [
            "| Stage | Seconds | Load average at start | at end |",
            "|---|---:|---|---|",
        ]
        for name, stage in stages.items():
            lines.append(
                f"| {name} | {stage['seconds']:,.0f} | {stage['load_average_at_start']} | "
                f"{stage['load_average_at_end']} |"
            )
        lines.append("")
    return lines


def _goals(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Goals",
        "",
        "| Issue | Goal | Measured | Status | Others' cores (max) |",
        "|---|---|---|---|---:|",
    ]
    for goal in results["goals"]:
        others = _fmt(goal.get("others_cores_max"), ".2f")
        if goal.get("busy"):
            others += " **busy**"
        lines.append(
            f"| {goal.get('issue', '-')} | {goal['goal']} | {goal['measured']} | "
            f"**{goal['status']}** | {others} |"
        )
    return [*lines, ""]


def _target_alone(results: dict[str, Any]) -> list[str]:
    keys = [
        f"wide_{who}_{size}" for size in ("slice", "full", "empty") for who in ("target", "floor")
    ]
    keys += sorted(
        (k for k in results["measurements"] if k.startswith("wide_target_slice_latency")),
        key=lambda k: int(k.removeprefix("wide_target_slice_latency")),
    )
    rows = table(results, keys, TARGET_ALONE_COLUMNS)
    if not rows:
        return []
    wide = results.get("wide_stream", {})
    lines = [
        "### (f) target-braze alone, Peak-shaped wide stream (issue 9)",
        "",
        f"Generated stream (`benchmarks/wide_stream.py`): `customer_id`, `updated_at` and "
        f"{wide.get('attributes', 9)} attributes (3 floats, 3 strings, a boolean, an integer, a "
        "date-time), into null_braze, rate limit off, ledger off, other settings as shipped "
        "(`validate_records` true). Floor: singer-sdk's discard target, msgspec reader, "
        "`validate_records: false`. Interleaved, alternating order. Last, target-braze on "
        "the slice into null_braze answering each request after a delay, as a distant Braze "
        "would ('Sender threads': how many the latency made it open).",
        "",
        *rows,
    ]
    marginals = [
        f"{who} {size}: {_fmt(wide.get(f'marginal_cpu_per_100k_{who}_{size}'), '.2f')}"
        for who in ("target", "floor")
        for size in ("slice", "full")
    ]
    lines += [
        "Marginal CPU-s per 100k (the SCHEMA-only run's CPU subtracted): "
        + ", ".join(marginals)
        + ".",
        "",
    ]
    for size in ("slice", "full"):
        runs = goals.runs_of(results, f"wide_target_{size}")
        ratios = [r.get("floor_wall_ratio") for r in runs]
        if ratios:
            lines.append(
                f"- floor wall / target-braze wall, {size}: "
                + ", ".join(_fmt(r, ".2f") for r in ratios)
            )
    return [*lines, ""]


def _profile(results: dict[str, Any], path: Path, chart_path: Path) -> list[str]:
    lines: list[str] = []
    for name, found in (results.get("profiles") or {}).items():
        link = os.path.relpath(chart_path.parent / found["path"], path.parent)
        threads = found.get("thread_cpu_seconds") or {}
        split = ", ".join(f"{kind} {seconds:.2f}" for kind, seconds in threads.items())
        lines += [
            f"### Profile: {name} (py-spy)",
            "",
            f"`{found['tool']}` at {results['parameters'].get('profile_rate', '?')} Hz: "
            f"{found['what']}; {found['samples']} samples of the GIL holder (Python's CPU; "
            f"time in C that releases the GIL, such as socket I/O in the kernel and SQLite, is "
            f"not in it): [`{found['path']}`]({link}). CPU-s by thread in an unprofiled run: "
            f"{split or 'n/a'}.",
            "",
            "| By self samples | % | By inclusive samples | % | By file (self) | % |",
            "|---|---:|---|---:|---|---:|",
        ]
        own, incl = found.get("self", []), found.get("inclusive", [])
        files = found.get("files", [])
        blank = {"function": "", "percent": None}
        for i in range(max(len(own), len(incl), len(files))):
            a = own[i] if i < len(own) else blank
            b = incl[i] if i < len(incl) else blank
            c = files[i] if i < len(files) else blank
            lines.append(
                f"| `{a['function']}` | {_fmt(a['percent'], '.1f')} | `{b['function']}` | "
                f"{_fmt(b['percent'], '.1f')} | `{c['function']}` | "
                f"{_fmt(c['percent'], '.1f')} |"
            )
        lines.append("")
    return lines


def _ledger(results: dict[str, Any]) -> list[str]:
    keys = [
        "ledger_off",
        "ledger_empty",
        "ledger_full_unchanged",
        "ledger_full_changed",
        "ledger_first_sync_tap_stream",
        "ledger_delta_without",
        "ledger_delta_with",
    ]
    rows = table(results, keys, LEDGER_COLUMNS)
    if not rows:
        return []
    lines = [
        "### (g) The delivery ledger (issue 8)",
        "",
        "target-braze into null_braze, rate limit off, SQLite ledger in the work directory. "
        "The first four rows: the wide slice, interleaved; 'CPU vs off' is each run against "
        "the ledger-off run of its own repeat (median). 'Full' is a copy of the ledger a first "
        "sync of the same slice left; 'every record changed' is the same customers with "
        "every attribute moved. Then the tap's stream of the whole warehouse as a first "
        "sync, and a 10% delta after `peak-sample model-run`.",
        "",
        *rows,
    ]
    ledger = results.get("ledger")
    if ledger:
        model = ledger["model_run"]
        lines += [
            f"- Ledger file (SQLite, WAL checkpointed) after the first sync of "
            f"{ledger['users']:,} users: {ledger['file_bytes'] / 2**20:,.1f} MiB, "
            f"{ledger['bytes_per_user']:.0f} bytes per user: "
            f"**{ledger['mb_per_million_users']:,.0f} MiB per 1M users**.",
            f"- Model run: `peak-sample model-run --changes {model['customers_changed']:,}` "
            f"changed {model['values_changed']:,} values; the tap's incremental run read "
            f"{ledger['delta_records']:,} rows.",
            f"- Delta sent with the ledger: {ledger['delta_data_points_with']:,} data points in "
            f"{ledger['delta_requests_with']:,} requests; without: "
            f"{ledger['delta_data_points_without']:,} data points in "
            f"{ledger['delta_requests_without']:,} requests.",
            "",
        ]
    return lines


def _pipeline(results: dict[str, Any]) -> list[str]:
    keys = [
        "meltano_record",
        "meltano_batch",
        "meltano_record_empty",
        "meltano_batch_empty",
        "meltano_record_ledger",
    ]
    rows = table(results, keys, PIPELINE_COLUMNS)
    if not rows:
        return []
    lines = [
        "### (c) The whole pipeline: `meltano run tap-peak-attributes target-braze` (issue 10)",
        "",
        "Into null_braze, rate limit off, ledger off (but the last row), RECORD mode with "
        "`TAP_PEAK_ATTRIBUTES_BATCH_CONFIG={}`, BATCH mode with msgspec JSON lines, no "
        "compression, a private directory per run. 'Reading no row' runs (`start_date` in "
        "2099) are the fixed cost of start-up and teardown; their CPU per 100k is per 100k "
        "rows of the warehouse.",
        "",
        *rows,
    ]
    for mode, tap_key in (("record", "tap_sqlite"), ("batch", "tap_sqlite_batch")):
        whole = goals.median_of(results, f"meltano_{mode}", "cpu_seconds_per_100k")
        own = goals.median_of(results, f"meltano_{mode}", "meltano_own_cpu_per_100k")
        tap = goals.median_of(results, tap_key, "cpu_seconds_per_100k")
        empty = goals.marginal(results, f"meltano_{mode}", f"meltano_{mode}_empty")
        if whole is None:
            continue
        lines.append(
            f"- {mode.upper()}: {whole:.2f} CPU-s per 100k rows in all; Meltano's own "
            f"{_fmt(own, '.2f')}, the tap alone {_fmt(tap, '.2f')}, so target-braze and the "
            f"rest about {_fmt(whole - (own or 0) - (tap or 0), '.2f')}; marginal (the run "
            f"reading no row subtracted) {_fmt(empty, '.2f')}."
        )
    return [*lines, ""]


def _tap(results: dict[str, Any]) -> list[str]:
    keys = [
        "tap_sqlite",
        "tap_sqlite_batch",
        "tap_sqlite_empty",
        "tap_sqlite_batch_empty",
        "tap_postgresql",
    ]
    rows = table(results, keys, RATE_COLUMNS)
    if not rows:
        return []
    lines = [
        "### (a) The tap alone",
        "",
        "From its Meltano venv, its output to a file (BATCH: the files in a private "
        "directory). CPU per 100k is per 100k warehouse rows, for the runs reading no row too.",
        "",
        *rows,
    ]
    for key in ("tap_sqlite", "tap_sqlite_batch"):
        value = goals.marginal(results, key, f"{key}_empty")
        if value is not None:
            lines.append(f"- {key}: marginal {value:.2f} CPU-s per 100k rows (start-up excluded).")
    return [*lines, ""]


def _sandbox(results: dict[str, Any]) -> list[str]:
    m = results["measurements"]
    keys = [
        "target_braze_compare",
        "target_braze_full",
        "floor_compare",
        "naive",
        "lever_braze_no_validation",
        "lever_braze_concurrency_1",
        "lever_braze_concurrency_4",
        "lever_floor_no_validation",
        "lever_floor_msgspec",
        "lever_floor_msgspec_no_validation",
    ]
    rows = table(results, keys, SANDBOX_COLUMNS)
    lines: list[str] = []
    if rows:
        lines += [
            "### (b) target-braze into braze-sandbox, baselines and levers",
            "",
            "The tap's recorded stream; the sandbox stores profiles and takes a core (its "
            "CPU share in the last column); ledger off. The floor here is singer-sdk's "
            "discard target at its defaults (stdlib reader, jsonschema validation).",
            "",
            *rows,
        ]
        if "naive" in m and "target_braze_compare" in m:
            naive = m["naive"]["median"]
            braze = m["target_braze_compare"]["median"]
            lines += [
                f"- Naive target (one record per request, sequential, keep-alive): "
                f"{_fmt(naive.get('ms_per_record'), '.3f')} ms per record; target-braze is "
                f"{braze['records_per_second'] / naive['records_per_second']:.1f}x faster.",
                "",
            ]
    if "rate_limited" in m:
        lines += [
            "### (d) Rate limit",
            "",
            "| Run | Records | Requests | Steady requests/s | Limit requests/s | Share | "
            "Busiest window | 429s received | Retries |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, run in enumerate(m["rate_limited"]["runs"], 1):
            lines.append(
                f"| {i} | {_fmt(run.get('records'), ',.0f')} | "
                f"{_fmt(run.get('requests'), ',.0f')} | "
                f"{_fmt(run.get('steady_requests_per_second'), '.1f')} | "
                f"{_fmt(run.get('limit_requests_per_second'), '.1f')} | "
                f"{_fmt(run.get('share_of_limit'), '.1%')} | "
                f"{_fmt(run.get('max_arrivals_in_window'), 'd')} | "
                f"{_fmt(run.get('sandbox_429'), 'd')} | {_fmt(run.get('retries'), 'd')} |"
            )
        lines += [
            "",
            "Steady state: arrivals at the sandbox from one window after the first request to "
            "the last. Busiest window: the sandbox's exact maximum of arrivals in any interval "
            "of the window's length.",
            "",
        ]
    return lines


#: Figures measured apart from this harness (`python -m benchmarks.send_path`), kept by
#: hand and carried into every rendering of BENCHMARKS.md.
SEND_PATH_SECTION = Path(__file__).resolve().parent / "results" / "send-path.md"
#: The ledger's cost table of issue 21 (`python -m benchmarks.ledger_cases`), kept the same way.
LEDGER_SECTION = Path(__file__).resolve().parent / "results" / "ledger-cost.md"


def markdown(results: dict[str, Any], path: Path, chart_path: Path, json_path: Path) -> str:
    """BENCHMARKS.md."""
    rel_chart = os.path.relpath(chart_path.resolve(), path.resolve().parent)
    rel_json = os.path.relpath(json_path.resolve(), path.resolve().parent)
    lines = [
        "# Benchmarks",
        "",
        "How fast the Peak → Braze pipeline is next to Braze's ceiling of 75,000 users/s "
        "(3,000 `/users/track` requests per 3 s x 75 objects): at most 1.33 CPU-s per 100k "
        "records for target-braze (one core keeps pace), at most 2.67 CPU-s per 100k rows "
        "for the whole `meltano run` (two cores do).",
        "",
        "## How to run",
        "",
        HOW_TO_RUN,
        "",
        f"Writes `benchmarks/results/latest.json` (every repeat's raw numbers), "
        f"`{rel_chart}` and this file. CI runs the smoke size only "
        "(`benchmarks/tests/test_benchmark_smoke.py`); there are no timing assertions.",
        "",
        *_this_run(results),
        *_goals(results),
        "## Results",
        "",
        f"![throughput]({rel_chart})",
        "",
        *_target_alone(results),
        *_profile(results, path, chart_path),
        *_ledger(results),
        *_pipeline(results),
        *_tap(results),
        *_sandbox(results),
    ]
    for section in (SEND_PATH_SECTION, LEDGER_SECTION):
        if section.exists():
            lines += [section.read_text(encoding="utf-8").rstrip(), ""]
    if results["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in results["notes"]], ""]
    lines += [f"Raw numbers: [`{os.path.basename(rel_json)}`]({rel_json}).", ""]
    return "\n".join(lines)
