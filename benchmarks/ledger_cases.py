"""Issue 21's cost table: the ledger's three cases against ledger off, in one run.

    .venv/bin/python -m benchmarks.ledger_cases --records 100000 --repeat 3 \
        [--postgres "$(scripts/postgres)"] [--target PATH] [--json out.json]

target-braze (`--target`, by default this checkout's `.venv/bin/target-braze`) on the
Peak-shaped wide stream into null_braze, rate limit off, in four states, interleaved
(the order reversed every other repeat), each repeat's ledger runs against its own
ledger-off run: `off`; `empty` (first sync, a new ledger); `unchanged` (a copy of what a
first sync left, the same stream again); `changed` (the same copy, every record with 2 of
its 9 values moved: `wide_stream --variant rescored`). Medians of process CPU (user + sys,
`os.wait4`); with `--callgrind`, of instructions counted by callgrind instead. With
`--postgres`, the ledger is a PostgreSQL database created for the run (its server's CPU
is not the target's and is not counted; a copy is `CREATE DATABASE ... TEMPLATE`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks import wide_stream
from benchmarks.ledger_cost import checkpointed_size, remove_ledger
from benchmarks.measure import run_measured
from benchmarks.null_braze import NullBrazeProcess

ROOT = Path(__file__).resolve().parent.parent
CASES = ("off", "empty", "unchanged", "changed")


class _Postgres:
    """Databases in one server: `url(name)`, create, copy (TEMPLATE), drop."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._base = url.rsplit("/", 1)[0]
        self._admin = psycopg.connect(url, autocommit=True)
        self.names: set[str] = set()

    def url(self, name: str) -> str:
        return f"{self._base}/{name}"

    def recreate(self, name: str, template: str | None = None) -> str:
        self.drop(name)
        extra = f" TEMPLATE {template}" if template else ""
        self._admin.execute(f"CREATE DATABASE {name}{extra}")
        self.names.add(name)
        return self.url(name)

    def drop(self, name: str) -> None:
        self._admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def size(self, name: str) -> int:
        with self._psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute("VACUUM FULL ledger_users")
            row = conn.execute("SELECT pg_total_relation_size('ledger_users')").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        for name in self.names:
            self.drop(name)
        self._admin.close()


def _instructions(path: Path) -> int:
    """The instructions callgrind counted (every thread of the process)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _run(
    target: str,
    work: Path,
    url: str,
    stream: Path,
    name: str,
    ledger: str | None,
    callgrind: bool = False,
) -> dict[str, Any]:
    report = work / f"report-{name}.json"
    config: dict[str, Any] = {
        "api_key": "bench-key",
        "rest_endpoint": url,
        "max_requests_per_window": 0,
        "run_report_path": str(report),
        "rejected_records_path": str(work / f"rejects-{name}.jsonl"),
        "progress_interval_seconds": 600,
    }
    if ledger is None:
        config.update(send_only_changes=False, deduplicate_events=False)
    else:
        config.update(ledger_url=ledger, ledger_workspace="benchmark")
    path = work / f"config-{name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    command = [target, "--config", str(path)]
    counts = work / f"callgrind-{name}.out"
    if callgrind:
        counts.unlink(missing_ok=True)
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}", *command]
    run = run_measured(command, stdin_path=stream, stderr_path=work / f"{name}.log")
    data = json.loads(report.read_text(encoding="utf-8"))
    return {
        "instructions": _instructions(counts) if callgrind else None,
        "cpu": run.cpu_seconds,
        "wall": run.wall_seconds,
        "rss_mb": run.max_rss_mb,
        "data_points": data.get("data_points"),
        "unchanged": data.get("unchanged"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL: the ledger there")
    parser.add_argument("--target", default=str(ROOT / ".venv" / "bin" / "target-braze"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="run the cases (not the fill) under callgrind: instructions, repeatable on a "
        "busy machine (about 50 times slower: use 10k-20k records)",
    )
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ledger-cases-"))
    work.mkdir(parents=True, exist_ok=True)
    records = args.records
    first = work / f"wide-{records}.jsonl"
    changed = work / f"wide-{records}-changed.jsonl"
    if not first.exists():
        wide_stream.write_file(first, records)
    if not changed.exists():
        wide_stream.write_file(changed, records, variant="rescored")
    pg = _Postgres(args.postgres) if args.postgres else None
    tag = uuid.uuid4().hex[:8]
    template_file, ledger_file = work / "template.sqlite", work / "ledger.sqlite"
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    try:
        with NullBrazeProcess() as null:

            def ledger(fresh: bool) -> str:
                if pg is not None:
                    return pg.recreate(f"lc_{tag}_run", None if fresh else f"lc_{tag}_tpl")
                remove_ledger(ledger_file)
                if not fresh:
                    shutil.copyfile(template_file, ledger_file)
                return f"sqlite:///{ledger_file}"

            if pg is not None:
                template_url = pg.recreate(f"lc_{tag}_tpl")
            else:
                remove_ledger(template_file)
                template_url = f"sqlite:///{template_file}"
            fill = _run(args.target, work, null.url, first, "fill", template_url)
            size = pg.size(f"lc_{tag}_tpl") if pg else checkpointed_size(template_file)
            print(
                f"filled: {fill}; ledger users bytes {size:,} ({size / max(records, 1):.1f}/user)",
                file=sys.stderr,
                flush=True,
            )
            for index in range(args.repeat):
                order = cases if index % 2 == 0 else list(reversed(cases))
                for case in order:
                    source = changed if case == "changed" else first
                    url = None if case == "off" else ledger(case == "empty")
                    row = _run(args.target, work, null.url, source, case, url, args.callgrind)
                    results[case].append(row)
                    print(f"{index + 1}/{args.repeat} {case}: {row}", file=sys.stderr, flush=True)
    finally:
        if pg is not None:
            pg.close()
    summary: dict[str, Any] = {
        "records": records,
        "backend": "postgresql" if pg else "sqlite",
        "ledger_bytes": size,
        "bytes_per_user": round(size / max(records, 1), 1),
    }
    for case in cases if args.repeat else ():
        summary[case] = {
            "cpu_median": round(statistics.median(r["cpu"] for r in results[case]), 3),
            "runs": results[case],
        }
        if case != "off" and "off" in results:
            measure = "instructions" if args.callgrind else "cpu"
            pairs = zip(results[case], results["off"], strict=True)
            ratios = [r[measure] / o[measure] for r, o in pairs]
            summary[case]["ratio_median"] = round(statistics.median(ratios), 3)
            summary[case]["ratios"] = [round(x, 3) for x in ratios]
    text = json.dumps(summary, indent=1)
    print(
        json.dumps(
            {c: {k: v for k, v in summary[c].items() if k != "runs"} for c in summary if c in cases}
            | {"bytes_per_user": summary["bytes_per_user"]}
        )
    )
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
