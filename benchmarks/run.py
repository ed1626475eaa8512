"""One command for every benchmark of the Peak → Braze pipeline (see BENCHMARKS.md).

    .venv/bin/python -m benchmarks --rows 1000000 --repeat 3

Stages, all in one run so every ratio compares numbers taken on the same machine at the
same time (each stage's module says exactly what it runs):

1. generate a Peak warehouse (`peak-sample generate`) of `--rows` customers in SQLite
   (and PostgreSQL when available);
2. (a) `tap_runs`: the tap alone, RECORD and BATCH mode, full and reading nothing (the
   first run records the Singer stream later stages read);
3. (f) `target_alone`: target-braze on the Peak-shaped wide stream into null_braze,
   interleaved with the strongest singer-sdk floor; the py-spy profile (issue 9);
4. (g) `ledger_cost`: target-braze with the delivery ledger off, empty, full and
   unchanged, full and all changed; a 1M first sync and a 10% delta (issue 8);
5. (c) `pipeline`: `meltano run tap-peak-attributes target-braze`, RECORD and BATCH
   mode, into null_braze, with Meltano's own share (issue 10);
6. (b) and (d) `sandbox_runs`: target-braze into braze-sandbox beside the default floor
   and the naive target, levers, and against the sandbox's rate limit.

Every tap and target runs from its Meltano venv (`plugins`). Results:
`<output-dir>/latest.json` (raw per-repeat numbers), `<output-dir>/throughput.png` and
the markdown report (`BENCHMARKS.md` at the repository root by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    charts,
    goals,
    ledger_cost,
    pipeline,
    plugins,
    report,
    sandbox_runs,
    tap_runs,
    target_alone,
)
from benchmarks.measure import ProcessRun, machine, run_measured
from benchmarks.singer_files import count_records, slice_stream

ROOT = plugins.ROOT
BENCH = ROOT / "benchmarks"


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """The state of one benchmark run: options, work files, results."""

    def __init__(self, args: argparse.Namespace) -> None:
        """A work directory (`--work-dir` or a temporary one) and empty results."""
        self.args = args
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if args.work_dir:
            self.work = Path(args.work_dir).resolve()
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="peak-bench-")
            self.work = Path(self._tmp.name)
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.results: dict[str, Any] = {
            "machine": machine(),
            "tree": plugins.git_tree(),
            "command": shlex.join([".venv/bin/python", "-m", "benchmarks", *sys.argv[1:]]),
            "parameters": {
                k: v for k, v in vars(args).items() if k not in {"output_dir", "markdown"}
            },
            "notes": [],
            "warehouses": {},
            "measurements": {},
            "stages": {},
        }
        self._run_id = 0
        self.stream = self.work / f"stream-{args.rows}.jsonl"
        self.stream_records = 0
        self.output_dir = Path(args.output_dir)

    # -- helpers ------------------------------------------------------------------

    @property
    def measurements(self) -> dict[str, Any]:
        """Results by measurement key."""
        return self.results["measurements"]

    @staticmethod
    def log(message: str) -> None:
        """Progress on stderr."""
        log(message)

    def note(self, text: str) -> None:
        """A remark for the report."""
        log(f"note: {text}")
        self.results["notes"].append(text)

    def logfile(self, name: str) -> Path:
        """A fresh stderr log path for one process."""
        self._run_id += 1
        return self.logs / f"{self._run_id:03d}-{name}.log"

    def write_json(self, name: str, data: Any) -> Path:
        """A config file in the work directory."""
        path = self.work / name
        path.write_text(json.dumps(data), encoding="utf-8")
        return path

    # -- 1. warehouses ------------------------------------------------------------

    def generate(self) -> None:
        """Write the SQLite warehouse (and the PostgreSQL one when available)."""
        rows = self.args.rows
        sqlite_path = self.work / f"warehouse-{rows}.sqlite"
        if sqlite_path.exists():
            sqlite_path.unlink()
        url = f"sqlite:///{sqlite_path}"
        run = self._generate(url, [])
        self.results["warehouses"]["sqlite"] = {
            "rows": rows,
            "generate_seconds": round(run.wall_seconds, 2),
            "bytes": sqlite_path.stat().st_size,
        }
        self.sqlite_path = sqlite_path
        self.sqlite_url = url
        self.postgres_url: str | None = None
        postgres = self.postgres()
        if postgres:
            run = self._generate(postgres, ["--schema", self.args.postgres_schema])
            self.results["warehouses"]["postgresql"] = {
                "rows": rows,
                "generate_seconds": round(run.wall_seconds, 2),
                "schema": self.args.postgres_schema,
            }
            self.postgres_url = postgres

    def _generate(self, url: str, extra: list[str]) -> ProcessRun:
        self.log(f"generating {self.args.rows:,} customers into {url.rsplit('@', maxsplit=1)[-1]}")
        command = [
            plugins.tool("peak-sample"),
            "generate",
            "--url",
            url,
            "--customers",
            str(self.args.rows),
            "--seed",
            str(self.args.seed),
            "--no-long",
            *extra,
        ]
        return run_measured(command, stderr_path=self.logfile("generate"))

    def postgres(self) -> str | None:
        """The loopback PostgreSQL URL, if this run uses PostgreSQL."""
        mode = self.args.postgres
        if mode == "auto":
            wanted = os.environ.get("BENCH_POSTGRES") == "1"
            installed = shutil.which("pg_ctl") is not None or any(
                Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")
            )
            if not (wanted or installed):
                self.note(
                    "PostgreSQL not measured: no server installed (set BENCH_POSTGRES=1 "
                    "or --postgres on to let scripts/postgres install and start one)."
                )
                return None
        elif mode == "off":
            return None
        timeout = 900 if mode == "on" or os.environ.get("BENCH_POSTGRES") == "1" else 60
        try:
            result = subprocess.run(
                [str(ROOT / "scripts" / "postgres")],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            self.note(f"PostgreSQL not measured: scripts/postgres failed ({exc}).")
            return None
        lines = result.stdout.strip().splitlines()
        return lines[-1] if lines else None

    # -- 2. (a) the tap, and the slices of its stream ----------------------------------

    def tap(self) -> None:
        """(a); then the slices of the recorded stream the sandbox stages read."""
        tap_runs.measure(self)
        self.stream_records = count_records(self.stream)
        compare = min(self.args.compare_rows, self.stream_records)
        self.compare_stream = self.work / f"stream-compare-{compare}.jsonl"
        self.compare_records = slice_stream(self.stream, self.compare_stream, compare)
        self.naive_stream = self.work / "stream-naive.jsonl"
        self.naive_records = slice_stream(
            self.stream, self.naive_stream, min(self.args.naive_records, self.stream_records)
        )


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark tap-peak-attributes, target-braze and meltano run.",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="warehouse customers")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each measurement")
    parser.add_argument(
        "--compare-rows",
        type=int,
        default=100_000,
        help="records of the slice on which target-braze, the floor and the levers are "
        "compared (and memory at 100k measured)",
    )
    parser.add_argument(
        "--full-repeat",
        type=int,
        default=1,
        help="runs of target-braze on the whole stream (memory at full size)",
    )
    parser.add_argument("--naive-records", type=int, default=5_000)
    parser.add_argument("--rate-limit", type=int, default=300, help="sandbox requests/window")
    parser.add_argument("--rate-window", type=int, default=3, help="seconds")
    parser.add_argument(
        "--rate-objects-per-request",
        type=int,
        default=10,
        help="max_objects_per_request in (d), so few records make many requests",
    )
    parser.add_argument("--rate-windows", type=int, default=5, help="windows of traffic in (d)")
    parser.add_argument("--postgres", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--postgres-schema", default="bench_publish")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--ledger-repeat",
        type=int,
        default=None,
        help="repeats of the ledger measurements (g) (default: --repeat)",
    )
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    parser.add_argument("--no-levers", dest="levers", action="store_false")
    parser.add_argument("--no-meltano", dest="meltano", action="store_false", help="skip (c)")
    parser.add_argument("--no-ledger", dest="ledger", action="store_false", help="skip (g)")
    parser.add_argument(
        "--no-sandbox", dest="sandbox", action="store_false", help="skip (b) and (d)"
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="no py-spy")
    parser.add_argument(
        "--output-dir", default=str(BENCH / "results"), help="JSON, PNG (and profile)"
    )
    parser.add_argument(
        "--markdown",
        default=None,
        help="markdown report path (default: BENCHMARKS.md at the repository root, or "
        "<output-dir>/BENCHMARKS.md when --output-dir is given)",
    )
    parser.add_argument("--work-dir", default=None, help="keep warehouses/streams/logs here")
    parser.add_argument("--note", action="append", default=[], help="remark for the report")
    parser.add_argument(
        "--from-json",
        default=None,
        help="measure nothing: re-render chart and markdown from this results JSON",
    )
    args = parser.parse_args(argv)
    if args.ledger_repeat is None:
        args.ledger_repeat = args.repeat
    if args.markdown is None:
        default_output = Path(args.output_dir).resolve() == (BENCH / "results").resolve()
        args.markdown = str(
            ROOT / "BENCHMARKS.md" if default_output else Path(args.output_dir) / "BENCHMARKS.md"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every stage, then write JSON, chart and markdown."""
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        results["goals"] = goals.evaluate(results)
        write_outputs(results, output_dir, Path(args.markdown))
        return 0
    bench = Bench(args)
    for text in args.note:
        bench.note(text)
    started = time.perf_counter()
    stages: list[tuple[str, Callable[[], None]]] = [
        ("warehouse", bench.generate),
        ("(a) tap alone", bench.tap),
        ("(f) target-braze alone, wide stream", lambda: target_alone.measure(bench)),
    ]
    if args.profile:
        stages.append(("(f) profile", lambda: target_alone.profile(bench)))
    if args.ledger:
        stages.append(("(g) ledger", lambda: ledger_cost.measure(bench)))
    if args.meltano:
        stages.append(("(c) meltano run", lambda: pipeline.measure(bench)))
    if args.sandbox:
        stages += [
            ("(b) target-braze and baselines, sandbox", lambda: sandbox_runs.targets_alone(bench)),
            ("(d) rate limit", lambda: sandbox_runs.rate_limited(bench)),
        ]
    for name, stage in stages:
        stage_started = time.perf_counter()
        load = [round(x, 2) for x in os.getloadavg()]
        try:
            stage()
        except Exception as exc:  # keep what was measured; report the failure
            bench.note(f"stage '{name}' failed: {type(exc).__name__}: {str(exc)[:300]}")
            bench.results.setdefault("failed_stages", []).append(name)
            if name in {"warehouse", "(a) tap alone"}:
                break  # every later stage reads what these make
        finally:
            bench.results["stages"][name] = {
                "seconds": round(time.perf_counter() - stage_started, 1),
                "load_average_at_start": load,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            }
        (output_dir / "partial.json").write_text(json.dumps(bench.results, indent=2), "utf-8")
    (output_dir / "partial.json").unlink(missing_ok=True)
    bench.results["duration_seconds"] = round(time.perf_counter() - started, 1)
    bench.results["goals"] = goals.evaluate(bench.results)
    write_outputs(bench.results, output_dir, Path(args.markdown))
    log(f"done in {bench.results['duration_seconds']} s")
    return 1 if bench.results.get("failed_stages") else 0


def write_outputs(results: dict[str, Any], output_dir: Path, markdown: Path) -> None:
    """latest.json, throughput.png and the markdown report."""
    json_path = output_dir / "latest.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    chart = output_dir / "throughput.png"
    charts.draw(results, chart)
    markdown.write_text(report.markdown(results, markdown, chart, json_path), "utf-8")
    log(f"wrote {json_path}, {chart}, {markdown}")


if __name__ == "__main__":
    raise SystemExit(main())
