"""The cases of `python -m benchmarks`: each returns its rows and a markdown table.

Every figure stands beside a baseline measured in the same run: the singer-sdk floor or
an older commit's frozen plugins (`--old`), the tap's and Meltano's start-up (a run
reading no row), the ledger off, Braze's rate limit.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import harness, wide_stream
from benchmarks.harness import (
    BENCH,
    BIN,
    COLUMNS,
    RATIO,
    ROOT,
    clean_env,
    interleave,
    measure,
    null_braze,
    run_target,
    summarise,
    table,
    trees,
    write_json,
)

LEDGER_OFF = {"send_only_changes": False, "deduplicate_events": False}
NOTHING_AFTER = "2099-01-01T00:00:00Z"  # a start_date after every row: start-up alone
Result = dict[str, Any]
T = TypeVar("T")


def _stream(work: Path, records: int, variant: str = "first") -> Path:
    path = work / f"wide-{records}-{variant}.jsonl"
    if not path.exists():
        with path.open("wb") as out:
            wide_stream.write(out, records, variant=variant)
    return path


def _settings(pairs: list[str]) -> dict[str, Any]:
    """`--set name=value` (the value as JSON where it parses: 4, false, "x")."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def _result(rows: list[Result], columns: list[tuple[str, str, str]], **extra: Any) -> Result:
    return {"rows": rows, "table": table(rows, columns), **extra}


def target(args: argparse.Namespace, work: Path) -> Result:
    """target-braze on the wide stream into null_braze, beside the floor or an older commit."""
    stream = _stream(work, args.records)
    settings = {**LEDGER_OFF, **_settings(args.set)}
    variants = {}
    with null_braze(args.latency_ms) as url:
        if args.old is None:
            config = write_json(work / "floor.json", {"validate_records": False})
            command = [sys.executable, str(BENCH / "floor_target.py"), "--config", str(config)]
            variants["floor: singer-sdk, msgspec, no validation"] = functools.partial(
                measure, command, work / "floor.log", stdin=stream, callgrind=args.callgrind
            )
        for tree in trees(args.old, work):
            variants[f"target-braze {tree.name}"] = functools.partial(
                run_target, tree, work, tree.name, url, stream, callgrind=args.callgrind, **settings
            )
        runs = interleave(variants, args.repeat)
    base = next(iter(runs))
    metric = "instructions" if args.callgrind else "cpu"
    rows = summarise(runs, dict.fromkeys(runs, args.records), dict.fromkeys(runs, base), metric)
    columns = [
        *COLUMNS,
        ("Requests/s", "requests_per_s", ",.0f"),
        ("Sender threads", "sender_threads", ".0f"),
        ("Instructions", "instructions", ",.0f"),
    ]
    return _result(rows, [*columns, *RATIO], metric=metric)


def _tap_run(tree: harness.Tree, work: Path, name: str, config: Result) -> Result:
    out = work / f"tap-{name}.jsonl"
    command = [
        str(BIN / "tap-peak-attributes"),
        "--config",
        str(write_json(work / f"tap-{name}.json", config)),
    ]
    run = measure(command, work / f"tap-{name}.log", stdout=out, env=clean_env(**tree.env))
    run["records_in"] = harness.count_records(out)
    out.unlink()
    if "batch_config" in config:
        shutil.rmtree(work / "batches", ignore_errors=True)
    return run


def tap(args: argparse.Namespace, work: Path) -> Result:
    """The tap alone (RECORD, BATCH, reading no row), its output to a file."""
    base: dict[str, Any] = {"sqlalchemy_url": harness.generate_warehouse(work, args.rows)}
    batch = {
        "encoding": {"format": "jsonl", "compression": "none"},
        "storage": {"root": (work / "batches").as_uri()},
    }
    configs = {f"tap {tree.name}, RECORD": (tree, base) for tree in trees(args.old, work)}
    now = harness.Tree("now")
    configs["tap now, BATCH"] = (now, {**base, "batch_config": batch})
    configs["tap now, reading no row (start-up)"] = (now, {**base, "start_date": NOTHING_AFTER})
    if args.postgres:
        schema = "bench_publish"
        harness.generate_warehouse(work, args.rows, args.postgres, schema)
        configs["tap now, PostgreSQL, RECORD"] = (
            now,
            {"sqlalchemy_url": args.postgres, "schema": schema},
        )
    variants = {
        name: functools.partial(_tap_run, tree, work, str(i), config)
        for i, (name, (tree, config)) in enumerate(configs.items())
    }
    runs = interleave(variants, args.repeat)
    first = next(iter(runs))
    rows = summarise(runs, dict.fromkeys(runs, args.rows), dict.fromkeys(runs, first))
    return _result(
        rows,
        [*COLUMNS, *RATIO],
        note="CPU s / 100k: per 100k warehouse rows, for the run reading none too",
    )


def meltano(args: argparse.Namespace, work: Path) -> Result:
    """`meltano run tap-peak-attributes target-braze` into null_braze, RECORD and BATCH."""
    if not (ROOT / ".meltano" / "loaders" / "target-braze" / "venv").exists():
        subprocess.run([str(BIN / "meltano"), "install"], cwd=ROOT, check=True)
    sys_dir = work / "meltano-sys"  # private: never the project's .meltano/run or meltano.db
    sys_dir.mkdir(exist_ok=True)
    for kind in ("extractors", "loaders"):
        if not (sys_dir / kind).exists():
            (sys_dir / kind).symlink_to(ROOT / ".meltano" / kind, target_is_directory=True)
    warehouse = harness.generate_warehouse(work, args.rows)

    def run(tree: harness.Tree, mode: str, url: str, **extra: str) -> Result:
        name = f"meltano-{uuid.uuid4().hex[:8]}"
        batch = work / f"batches-{name}"
        env = clean_env(
            **tree.env,
            MELTANO_SYS_DIR_ROOT=str(sys_dir),
            MELTANO_ENVIRONMENT="dev",
            MELTANO_STATE_BACKEND_URI=(work / "state").as_uri(),
            MELTANO_SEND_ANONYMOUS_USAGE_STATS="false",
            TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL=warehouse,
            TARGET_BRAZE_REST_ENDPOINT=url,
            TARGET_BRAZE_API_KEY="bench-key",
            TARGET_BRAZE_MAX_REQUESTS_PER_WINDOW="0",
            TARGET_BRAZE_SEND_ONLY_CHANGES="false",
            TARGET_BRAZE_DEDUPLICATE_EVENTS="false",
            # The dev environment's paths are the project's output/: never a benchmark's.
            TARGET_BRAZE_LEDGER_URL=f"sqlite:///{work / 'ledger.sqlite'}",
            TARGET_BRAZE_RUN_REPORT_PATH=str(work / f"{name}.json"),
            TARGET_BRAZE_REJECTED_RECORDS_PATH=str(work / f"{name}-rejects.jsonl"),
            TAP_PEAK_ATTRIBUTES_BATCH_CONFIG="{}"
            if mode == "record"
            else json.dumps(
                {
                    "encoding": {"format": "jsonl", "compression": "none"},
                    "storage": {"root": batch.as_uri()},
                }
            ),
            **(
                {
                    "TARGET_BRAZE_BATCH_FILES_DIR": str(batch),
                    "TARGET_BRAZE_BATCH_FILES_CLEANUP_DIR": str(batch),
                }
                if mode == "batch"
                else {}
            ),
            **extra,
        )
        command = [
            str(BIN / "meltano"),
            "run",
            "--state-id-suffix",
            name,
            "tap-peak-attributes",
            "target-braze",
        ]
        measured = measure(command, work / f"{name}.log", env=env, cwd=ROOT)
        measured["records_in"] = json.loads((work / f"{name}.json").read_text())["records_in"]
        measured["own_share"] = measured["own_cpu"] / measured["cpu"]
        return measured

    with null_braze() as url:
        now = harness.Tree("now")  # (Meltano does not hand PYTHONPATH to plugins: no --old)
        variants = {"meltano run, now, RECORD": functools.partial(run, now, "record", url)}
        variants["meltano run, now, BATCH"] = functools.partial(run, now, "batch", url)
        variants["meltano run, now, reading no row (start-up)"] = functools.partial(
            run, now, "record", url, TAP_PEAK_ATTRIBUTES_START_DATE=NOTHING_AFTER
        )
        runs = interleave(variants, args.repeat)
    first = next(iter(runs))
    rows = summarise(runs, dict.fromkeys(runs, args.rows), dict.fromkeys(runs, first))
    columns = [
        *COLUMNS,
        ("Meltano's own CPU s", "own_cpu", ".2f"),
        ("Meltano's share", "own_share", ".0%"),
        *RATIO,
    ]
    return _result(
        rows,
        columns,
        note="CPU: meltano and its children (tap, target); "
        "per 100k warehouse rows, for the run reading none too",
    )


def _patient(call: Callable[[], T]) -> T:
    """The sandbox's admin API: after ~10^5 profiles its journal fold blocks it for longer
    than its client's 30 s timeout, so wait that out."""
    for attempt in range(10):
        try:
            return call()
        except OSError:  # TimeoutError among them
            if attempt == 9:
                raise
            harness.log("sandbox busy (folding its journal?), asking again")
    raise AssertionError("unreachable")


#: (requests per window, window seconds, latency in ms, users): issue 19's two cases.
LIMIT_CASES = ((300, 3, (800, 1200), 45_000), (3000, 3, 50, 450_000))


def limit(args: argparse.Namespace, work: Path) -> Result:
    """Share of the rate limit used against braze-sandbox with latency (and null_braze)."""
    import psutil
    from braze_sandbox.testing import SandboxProcess

    rows = []
    for tree in trees(args.old, work):
        for index in args.case or range(len(LIMIT_CASES)):
            per_window, window, latency, users = LIMIT_CASES[index]
            users = args.users or users
            stream = _stream(work, users)
            settings: dict[str, Any] = {
                **LEDGER_OFF,
                "max_requests_per_window": per_window,
                "rate_limit_window_seconds": window,
            }
            options: dict[str, Any] = {
                "rate_limit": per_window,
                "rate_window": window,
                "latency_ms": latency,
            }
            with SandboxProcess(api_key="bench-key", **options) as braze:
                assert braze._process is not None
                server = psutil.Process(braze._process.pid)
                before = sum(server.cpu_times()[:2])
                run = run_target(tree, work, "limit", braze.url, stream, **settings)
                run["sandbox_cpu"] = sum(server.cpu_times()[:2]) - before
                stats = _patient(braze.stats)
                arrivals = [row["received_at"] for row in _patient(braze.requests_log)]
            rate = per_window / window
            span = max(arrivals) - min(arrivals) if len(arrivals) > 1 else 0
            shown = "-".join(map(str, latency)) if isinstance(latency, tuple) else latency
            rows.append(
                run
                | {
                    "variant": f"{tree.name}: sandbox, {per_window} per {window} s, {shown} ms",
                    "users": users,
                    "requests": len(arrivals),
                    "share": (len(arrivals) - 1) / span / rate if span else None,
                    "run_share": len(arrivals) / run["wall"] / rate,
                    "rate_limited": stats["rate_limited"],
                    "busiest_window": stats["max_arrivals_in_window"],
                }
            )
        if args.null:
            users = args.users or 450_000
            settings = {
                **LEDGER_OFF,
                "max_requests_per_window": 3000,
                "rate_limit_window_seconds": 3,
            }
            with null_braze(50) as url:
                run = run_target(tree, work, "limit-null", url, _stream(work, users), **settings)
            rows.append(
                run
                | {
                    "variant": f"{tree.name}: null_braze, 3000 per 3 s, 50 ms",
                    "users": users,
                    "share": run["requests"] / run["wall"] / 1000,
                }
            )
    for row in rows:
        row["requests_per_s"] = row["requests"] / row["wall"]
    columns = [
        ("Users", "users", ",.0f"),
        ("Requests", "requests", ",.0f"),
        ("Wall s", "wall", ".1f"),
        ("Requests/s", "requests_per_s", ",.1f"),
        ("Share", "share", ".1%"),
        ("Run share", "run_share", ".1%"),
        ("429s", "rate_limited", "d"),
        ("Busiest window", "busiest_window", "d"),
        ("Peak in flight", "in_flight_peak", "d"),
        ("Waits at the ceiling", "in_flight_ceiling_waits", "d"),
        ("Target CPU s", "cpu", ".2f"),
        ("Sandbox CPU s", "sandbox_cpu", ".2f"),
    ]
    return _result(
        rows,
        columns,
        note="Share: (requests - 1) over the span from the first "
        "arrival to the last, over the limit's rate; run share: over the whole wall "
        "time. Into null_braze: requests over wall time (a lower bound).",
    )


LEDGER_CASES = {
    "off": "ledger off",
    "empty": "empty ledger (first sync)",
    "unchanged": "nothing changed",
    "changed": "every record changed (2 of 9)",
}


class _Postgres:
    """Ledger databases in one server: created, copied (TEMPLATE), dropped."""

    def __init__(self, url: str) -> None:
        import psycopg

        url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.base, self.names = url.rsplit("/", 1)[0], set[str]()
        self.admin = psycopg.connect(url, autocommit=True)

    def recreate(self, name: str, template: str | None = None) -> str:
        self.admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.admin.execute(
            f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")
        )
        self.names.add(name)
        return f"{self.base}/{name}"

    def size(self, name: str) -> int:
        import psycopg

        with psycopg.connect(f"{self.base}/{name}", autocommit=True) as conn:
            conn.execute("VACUUM FULL ledger_users")
            row = conn.execute("SELECT pg_total_relation_size('ledger_users')").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        for name in self.names:
            self.admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.admin.close()


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def ledger(args: argparse.Namespace, work: Path) -> Result:
    """The ledger's cost: off, first sync, nothing changed, 2 of 9 changed (issue 21)."""
    first, rescored = _stream(work, args.records), _stream(work, args.records, "rescored")
    pg = _Postgres(args.postgres) if args.postgres else None
    tag = uuid.uuid4().hex[:8]
    variants, baselines, sizes = {}, {}, {}

    def ledger_url(t: str, fresh: bool) -> str:  # a new ledger, or a copy of the filled one
        if pg is not None:
            return pg.recreate(f"lc_{tag}_{t}_run", None if fresh else f"lc_{tag}_{t}_tpl")
        _remove(work / f"ledger-{t}.sqlite")
        if not fresh:
            shutil.copyfile(work / f"template-{t}.sqlite", work / f"ledger-{t}.sqlite")
        return f"sqlite:///{work / f'ledger-{t}.sqlite'}"

    def state(tree: harness.Tree, t: str, case: str) -> Result:
        on = {"ledger_url": ledger_url(t, case == "empty"), "ledger_workspace": "benchmark"}
        stream = rescored if case == "changed" else first
        settings = LEDGER_OFF if case == "off" else on
        return run_target(
            tree, work, f"{t}-{case}", url, stream, callgrind=args.callgrind, **settings
        )

    try:
        with null_braze() as url:
            for tree in trees(args.old, work):
                t = "".join(c for c in tree.name if c.isalnum())
                template = work / f"template-{t}.sqlite"
                _remove(template)
                fill = pg.recreate(f"lc_{tag}_{t}_tpl") if pg else f"sqlite:///{template}"
                harness.log(f"filling the ledger of {tree.name} (a first sync, not measured)")
                run_target(
                    tree,
                    work,
                    f"{t}-fill",
                    url,
                    first,
                    ledger_url=fill,
                    ledger_workspace="benchmark",
                )
                if pg is not None:
                    sizes[tree.name] = pg.size(f"lc_{tag}_{t}_tpl")
                else:
                    with sqlite3.connect(template) as conn:
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    conn.close()
                    sizes[tree.name] = template.stat().st_size
                for case in args.cases.split(","):
                    name = f"{tree.name}: {LEDGER_CASES[case]}"
                    variants[name] = functools.partial(state, tree, t, case)
                    baselines[name] = f"{tree.name}: {LEDGER_CASES['off']}"
            runs = interleave(variants, args.repeat)
    finally:
        if pg is not None:
            pg.close()
    metric = "instructions" if args.callgrind else "cpu"
    rows = summarise(runs, dict.fromkeys(runs, args.records), baselines, metric)
    columns = [
        *COLUMNS,
        ("Data points", "data_points", ",.0f"),
        ("Unchanged", "unchanged", ",.0f"),
        ("Instructions", "instructions", ",.0f"),
        *RATIO,
    ]
    per_user = {k: round(v / max(args.records, 1), 1) for k, v in sizes.items()}
    return _result(
        rows,
        columns,
        metric=metric,
        backend="postgresql" if pg else "sqlite",
        ledger_bytes_per_user=per_user,
        note=f"Ledger size after the first sync, bytes per user: {per_user}",
    )


def profile(args: argparse.Namespace, work: Path) -> Result:
    """py-spy (`record --gil`) over target-braze on the wide stream: the top functions."""
    stream, raw = _stream(work, args.records), work / "profile.raw.txt"
    with null_braze() as url:
        config = {
            "api_key": "bench-key",
            "rest_endpoint": url,
            "max_requests_per_window": 0,
            **LEDGER_OFF,
            **_settings(args.set),
        }
        path = write_json(work / "profile.json", config)
        command = [
            str(BIN / "py-spy"),
            "record",
            "--gil",
            "--function",
            "--rate",
            str(args.rate),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
            str(BIN / "target-braze"),
            "--config",
            str(path),
        ]
        measure(command, work / "profile.log", stdin=stream)
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    total = sum(own.values()) or 1
    rows = [
        {
            "variant": f"`{name}`",
            "self": 100 * n / total,
            "inclusive": 100 * inclusive[name] / total,
        }
        for name, n in sorted(own.items(), key=lambda x: -x[1])[: args.top]
    ]
    if args.output:
        shutil.copyfile(raw, args.output)
    return _result(
        rows,
        [("Self %", "self", ".1f"), ("Inclusive %", "inclusive", ".1f")],
        samples=total,
        note=f"{total} samples of the GIL holder (py-spy --gil)",
    )
