"""One command for every benchmark of the Peak → Braze pipeline (see BENCHMARKS.md).

    .venv/bin/python -m benchmarks --rows 1000000 --repeat 3

Steps, all in one run so every ratio compares numbers taken on the same machine at the
same time:

1. generate a Peak warehouse (`peak-sample generate`) of `--rows` customers in SQLite
   (and PostgreSQL when available);
2. (a) the tap alone, `--repeat` times (the first run records the Singer stream);
3. (b) target-braze alone from the recorded stream into a sandbox with its rate limit
   off, interleaved with the framework floor (a discarding singer-sdk target), on the
   same `--compare-rows` slice; once more on the whole stream (throughput and memory
   at full size); the naive one-record-per-request target on `--naive-records`;
4. (d) target-braze against a sandbox enforcing `--rate-limit` requests per
   `--rate-window` seconds;
5. levers: target-braze and the floor with one setting changed (validation, reader,
   concurrency), one run each on the compare slice;
6. (c) `meltano run tap-peak-attributes target-braze` (when `meltano.yml` exists);
7. (e) peak memory of target-braze at 100k (compare slice) and at full size;
8. optional profile of target-braze (`--profile`).

Results: `<output-dir>/latest.json` (raw per-repeat numbers), `<output-dir>/throughput.png`
and the markdown report (`BENCHMARKS.md` at the repository root by default).
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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

if __package__ in {None, ""}:  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from braze_sandbox.testing import SandboxProcess

from benchmarks import report
from benchmarks.measure import ProcessRun, machine, median, run_measured
from benchmarks.profile import hotspots

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
BIN = Path(sys.executable).parent
STREAM = "customer_attributes"
API_KEY = "bench-key"
T = TypeVar("T")


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tool(name: str) -> str:
    """A console script of the venv running this benchmark."""
    path = BIN / name
    return str(path) if path.exists() else name


def patient(call: Callable[[], T], attempts: int = 20) -> T:
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
            log("sandbox busy (folding its journal?), retrying")
            time.sleep(2)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- streams


def slice_stream(source: Path, target: Path, records: int) -> int:
    """Copy the first `records` RECORD messages (with SCHEMA/STATE lines around them)."""
    count = 0
    with source.open("rb") as src, target.open("wb") as dst:
        for line in src:
            is_record = line.startswith(b'{"type":"RECORD"') or b'"type":"RECORD"' in line[:40]
            if is_record:
                if count >= records:
                    break
                count += 1
            dst.write(line)
    return count


def count_records(path: Path) -> int:
    """RECORD messages in a Singer stream file."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if b'"type":"RECORD"' in line[:40])


# --------------------------------------------------------------------------- stages


class Bench:
    """The state of one benchmark run: options, work files, results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if args.work_dir:
            self.work = Path(args.work_dir)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="peak-bench-")
            self.work = Path(self._tmp.name)
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.results: dict[str, Any] = {
            "machine": machine(),
            "command": shlex.join([".venv/bin/python", "-m", "benchmarks", *sys.argv[1:]]),
            "parameters": {
                k: v for k, v in vars(args).items() if k not in {"output_dir", "markdown"}
            },
            "notes": [],
            "warehouses": {},
            "measurements": {},
        }
        self._run_id = 0

    # -- helpers ------------------------------------------------------------------

    @property
    def measurements(self) -> dict[str, Any]:
        """Results by measurement key."""
        return self.results["measurements"]

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

    @contextmanager
    def sandbox(self, **options: Any) -> Iterator[SandboxProcess]:
        """A braze-sandbox process (never this process: its CPU is not the target's)."""
        with SandboxProcess(api_key=API_KEY, **options) as sandbox:
            yield sandbox

    @staticmethod
    def sandbox_pid(sandbox: SandboxProcess) -> int | None:
        """The sandbox's process id, to measure its CPU next to the target's."""
        process = getattr(sandbox, "_process", None)
        return process.pid if process is not None else None

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
        log(f"generating {self.args.rows:,} customers into {url.rsplit('@', maxsplit=1)[-1]}")
        command = [
            tool("peak-sample"),
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

    # -- 2. (a) the tap -----------------------------------------------------------

    def tap(self) -> None:
        """The tap alone, to a file: rows/s. The first SQLite run records the stream."""
        self.stream = self.work / f"stream-{self.args.rows}.jsonl"
        sources: list[tuple[str, str, dict[str, str]]] = [("sqlite", self.sqlite_url, {})]
        if self.postgres_url:
            sources.append(("postgresql", self.postgres_url, {"schema": self.args.postgres_schema}))
        for name, url, extra in sources:
            config = self.write_json(f"tap-{name}.json", {"sqlalchemy_url": url, **extra})
            runs = []
            for repeat in range(self.args.repeat):
                record = name == "sqlite" and repeat == 0
                out = self.stream if record else self.work / f"tap-{name}-out.jsonl"
                log(f"(a) tap alone ({name}) {repeat + 1}/{self.args.repeat}")
                run = run_measured(
                    [tool("tap-peak-attributes"), "--config", str(config)],
                    stdout_path=out,
                    stderr_path=self.logfile(f"tap-{name}"),
                )
                records = count_records(out)
                runs.append(self._rate_row(run, records))
                if not record:
                    out.unlink()
            self.measurements[f"tap_{name}"] = self._summary(f"(a) tap alone, {name}", "rows", runs)
        self.stream_records = count_records(self.stream)
        compare = min(self.args.compare_rows, self.stream_records)
        self.compare_stream = self.work / f"stream-compare-{compare}.jsonl"
        self.compare_records = slice_stream(self.stream, self.compare_stream, compare)
        self.naive_stream = self.work / "stream-naive.jsonl"
        self.naive_records = slice_stream(
            self.stream, self.naive_stream, min(self.args.naive_records, self.stream_records)
        )

    # -- 3. (b) target-braze vs the floor and the naive target ----------------------

    def braze_config(self, url: str, name: str, **overrides: Any) -> tuple[Path, Path]:
        """A target-braze config writing its run report next to it."""
        report_path = self.work / f"report-{name}.json"
        config = {
            "api_key": API_KEY,
            "rest_endpoint": url,
            "max_requests_per_window": 0,
            "run_report_path": str(report_path),
            "progress_interval_seconds": 60,
            **overrides,
        }
        return self.write_json(f"target-braze-{name}.json", config), report_path

    def run_braze(
        self,
        sandbox: SandboxProcess,
        stream: Path,
        records: int,
        name: str,
        **overrides: Any,
    ) -> dict[str, Any]:
        """One target-braze run from a recorded stream; the sandbox is reset first."""
        patient(sandbox.reset)
        config, report_path = self.braze_config(sandbox.url, name, **overrides)
        run = run_measured(
            [tool("target-braze"), "--config", str(config)],
            stdin_path=stream,
            stderr_path=self.logfile(f"target-braze-{name}"),
            sandbox_pid=self.sandbox_pid(sandbox),
        )
        run_report = json.loads(report_path.read_text(encoding="utf-8"))
        stats = patient(sandbox.stats)
        row = self._rate_row(run, records)
        requests = int(run_report.get("requests", 0))
        row.update(
            requests=requests,
            requests_per_second=round(requests / run.wall_seconds, 1),
            cpu_seconds_per_100k=round(run.cpu_seconds / max(records, 1) * 100_000, 3),
            records_in=run_report.get("records_in"),
            rate_limited=run_report.get("rate_limited"),
            retries=run_report.get("retries"),
            sandbox_objects_applied=stats.get("objects_applied"),
            sandbox_max_in_flight=stats.get("max_in_flight"),
        )
        return row

    def run_discard(self, stream: Path, records: int, name: str, **env: str) -> dict[str, Any]:
        """One run of the framework floor (a singer-sdk target that discards)."""
        config = self.write_json(f"discard-{name}.json", json.loads(env.pop("CONFIG", "{}")))
        run = run_measured(
            [
                sys.executable,
                str(BENCH / "baselines" / "discard_target.py"),
                "--config",
                str(config),
            ],
            stdin_path=stream,
            stderr_path=self.logfile(f"discard-{name}"),
            env=env,
        )
        row = self._rate_row(run, records)
        row["cpu_seconds_per_100k"] = round(run.cpu_seconds / max(records, 1) * 100_000, 3)
        return row

    def targets_alone(self) -> None:
        """(b), the floor and the naive target, into one sandbox with its limit off."""
        with self.sandbox(rate_limit=0) as sandbox:
            braze_runs: list[dict[str, Any]] = []
            floor_runs: list[dict[str, Any]] = []
            for repeat in range(self.args.repeat):
                log(
                    f"(b) target-braze vs floor on {self.compare_records:,} records, "
                    f"{repeat + 1}/{self.args.repeat}"
                )
                braze_runs.append(
                    self.run_braze(sandbox, self.compare_stream, self.compare_records, "compare")
                )
                floor_runs.append(
                    self.run_discard(self.compare_stream, self.compare_records, "floor")
                )
            for braze, floor in zip(braze_runs, floor_runs, strict=True):
                braze["floor_wall_ratio"] = round(floor["wall_seconds"] / braze["wall_seconds"], 3)
            self.measurements["target_braze_compare"] = self._summary(
                "(b) target-braze alone, rate limit off", "records", braze_runs
            )
            self.measurements["floor_compare"] = self._summary(
                "baseline: singer-sdk discard target (framework floor)", "records", floor_runs
            )

            if self.stream_records > self.compare_records:
                full_runs = []
                for repeat in range(self.args.full_repeat):
                    log(
                        f"(b/e) target-braze on all {self.stream_records:,} records "
                        f"{repeat + 1}/{self.args.full_repeat}"
                    )
                    full_runs.append(
                        self.run_braze(sandbox, self.stream, self.stream_records, "full")
                    )
                self.measurements["target_braze_full"] = self._summary(
                    "(b) target-braze alone, whole stream", "records", full_runs
                )

            naive_runs = []
            for repeat in range(self.args.repeat):
                log(
                    f"naive target on {self.naive_records:,} records "
                    f"{repeat + 1}/{self.args.repeat}"
                )
                patient(sandbox.reset)
                run = run_measured(
                    [
                        sys.executable,
                        str(BENCH / "baselines" / "naive_target.py"),
                        "--url",
                        sandbox.url,
                        "--api-key",
                        API_KEY,
                        "--limit",
                        str(self.naive_records),
                    ],
                    stdin_path=self.naive_stream,
                    stderr_path=self.logfile("naive"),
                    sandbox_pid=self.sandbox_pid(sandbox),
                )
                row = self._rate_row(run, self.naive_records)
                row["ms_per_record"] = round(run.wall_seconds / self.naive_records * 1000, 3)
                row["sandbox_objects_applied"] = patient(sandbox.stats).get("objects_applied")
                naive_runs.append(row)
            self.measurements["naive"] = self._summary(
                f"baseline: naive target, one record per request ({self.naive_records:,} "
                "records only)",
                "records",
                naive_runs,
            )
            if self.args.levers:
                self.levers(sandbox)

    def levers(self, sandbox: SandboxProcess) -> None:
        """One setting changed at a time, one run each, on the compare slice."""
        stream, records = self.compare_stream, self.compare_records
        variants: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            (
                "lever_braze_no_validation",
                "target-braze, validate_records false",
                lambda: self.run_braze(sandbox, stream, records, "noval", validate_records=False),
            ),
            (
                "lever_braze_concurrency_1",
                "target-braze, max_concurrent_requests 1",
                lambda: self.run_braze(sandbox, stream, records, "c1", max_concurrent_requests=1),
            ),
            (
                "lever_braze_concurrency_4",
                "target-braze, max_concurrent_requests 4",
                lambda: self.run_braze(sandbox, stream, records, "c4", max_concurrent_requests=4),
            ),
            (
                "lever_floor_no_validation",
                "floor, validate_records false",
                lambda: self.run_discard(
                    stream, records, "noval", CONFIG='{"validate_records": false}'
                ),
            ),
            (
                "lever_floor_msgspec",
                "floor, msgspec reader",
                lambda: self.run_discard(
                    stream, records, "msgspec", BENCH_DISCARD_READER="msgspec"
                ),
            ),
            (
                "lever_floor_msgspec_no_validation",
                "floor, msgspec reader + validate_records false",
                lambda: self.run_discard(
                    stream,
                    records,
                    "msgspec-noval",
                    BENCH_DISCARD_READER="msgspec",
                    CONFIG='{"validate_records": false}',
                ),
            ),
        ]
        for key, label, measure in variants:
            log(f"lever: {label}")
            self.measurements[key] = self._summary(f"lever: {label}", "records", [measure()])

    # -- 4. (d) rate limit ----------------------------------------------------------

    def rate_limited(self) -> None:
        """target-braze against a sandbox enforcing a scaled Braze limit."""
        limit, window = self.args.rate_limit, self.args.rate_window
        per_request = self.args.rate_objects_per_request
        wanted = limit * per_request * self.args.rate_windows
        records = min(wanted, self.stream_records)
        stream = self.work / f"stream-rate-{records}.jsonl"
        records = slice_stream(self.stream, stream, records)
        runs = []
        with self.sandbox(rate_limit=limit, rate_window=window) as sandbox:
            for repeat in range(self.args.repeat):
                log(
                    f"(d) rate limit {limit}/{window}s on {records:,} records "
                    f"{repeat + 1}/{self.args.repeat}"
                )
                row = self.run_braze(
                    sandbox,
                    stream,
                    records,
                    "rate",
                    max_requests_per_window=limit,
                    rate_limit_window_seconds=window,
                    max_objects_per_request=per_request,
                )
                stats = patient(sandbox.stats)
                arrivals = sorted(
                    entry["time"]
                    for entry in patient(sandbox.requests_log)
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
        self.measurements["rate_limited"] = self._summary(
            f"(d) target-braze vs sandbox limit {limit} requests / {window:g} s "
            f"({per_request} objects per request)",
            "records",
            runs,
        )

    # -- 6. (c) meltano run ----------------------------------------------------------

    def meltano(self) -> None:
        """The whole `meltano run`, with the sandbox URL in the environment."""
        if not (ROOT / "meltano.yml").exists():
            self.note("(c) not measured: no meltano.yml at the repository root yet.")
            return
        meltano = tool("meltano")
        if not (ROOT / ".meltano" / "loaders" / "target-braze").exists():
            log("meltano install (plugins not installed yet)")
            subprocess.run(
                [meltano, "install"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        runs = []
        with self.sandbox(rate_limit=0) as sandbox:
            for repeat in range(self.args.repeat):
                log(f"(c) meltano run {repeat + 1}/{self.args.repeat}")
                patient(sandbox.reset)
                report_path = self.work / "report-meltano.json"
                env = {
                    "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL": self.sqlite_url,
                    "TARGET_BRAZE_REST_ENDPOINT": sandbox.url,
                    "TARGET_BRAZE_API_KEY": API_KEY,
                    "TARGET_BRAZE_MAX_REQUESTS_PER_WINDOW": "0",
                    "TARGET_BRAZE_RUN_REPORT_PATH": str(report_path),
                    "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
                }
                run = run_measured(
                    [
                        meltano,
                        "--environment",
                        "dev",
                        "run",
                        "--force",
                        "--state-id-suffix",
                        f"bench-{uuid.uuid4().hex[:12]}",
                        "tap-peak-attributes",
                        "target-braze",
                    ],
                    cwd=ROOT,
                    env=env,
                    stderr_path=self.logfile("meltano"),
                    sandbox_pid=self.sandbox_pid(sandbox),
                )
                records_in = None
                if report_path.exists():
                    records_in = json.loads(report_path.read_text()).get("records_in")
                    report_path.unlink()
                applied = int(patient(sandbox.stats).get("objects_applied") or 0)
                row = self._rate_row(run, int(records_in or applied))
                row.update(records_in=records_in, sandbox_objects_applied=applied)
                runs.append(row)
        self.measurements["meltano_run"] = self._summary(
            "(c) meltano run tap-peak-attributes target-braze", "rows", runs
        )

    # -- 8. profile -------------------------------------------------------------------

    def profile(self, output_dir: Path) -> None:
        """pyinstrument over target-braze on the compare slice (main thread)."""
        if shutil.which("pyinstrument", path=str(BIN)) is None:
            self.note("profile skipped: pyinstrument is not installed in this venv.")
            return
        with self.sandbox(rate_limit=0) as sandbox:
            config, _ = self.braze_config(sandbox.url, "profile")
            session = self.work / "target-braze.pyisession"
            log(f"profiling target-braze on {self.compare_records:,} records")
            run_measured(
                [
                    str(BIN / "pyinstrument"),
                    "--renderer",
                    "session",
                    "--outfile",
                    str(session),
                    "-m",
                    "target_braze",
                    "--config",
                    str(config),
                ],
                stdin_path=self.compare_stream,
                stderr_path=self.logfile("profile"),
            )
        text = output_dir / "profile-target-braze.txt"
        subprocess.run(
            [
                str(BIN / "pyinstrument"),
                "--load",
                str(session),
                "--renderer",
                "text",
                "--outfile",
                str(text),
            ],
            check=True,
            capture_output=True,
        )
        self.results["profile"] = {
            "records": self.compare_records,
            "path": text.name,
            **hotspots(session),
        }

    # -- summaries --------------------------------------------------------------------

    @staticmethod
    def _rate_row(run: ProcessRun, records: int) -> dict[str, Any]:
        row = run.as_dict()
        row["records"] = records
        row["records_per_second"] = round(records / run.wall_seconds, 1)
        return row

    @staticmethod
    def _summary(label: str, unit: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "returncode"]
        medians = {k: median([r.get(k) for r in runs]) for k in keys}
        return {
            "label": label,
            "unit": unit,
            "repeats": len(runs),
            "median": {k: round(v, 4) if isinstance(v, float) else v for k, v in medians.items()},
            "runs": runs,
        }


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
    parser.add_argument("--no-levers", dest="levers", action="store_false")
    parser.add_argument("--no-meltano", dest="meltano", action="store_false")
    parser.add_argument("--profile", action="store_true", help="pyinstrument target-braze")
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
        results["goals"] = report.goals(results)
        write_outputs(results, output_dir, Path(args.markdown))
        return 0
    bench = Bench(args)
    for text in args.note:
        bench.note(text)
    started = time.perf_counter()
    bench.generate()
    bench.tap()
    stages: list[tuple[str, Callable[[], None]]] = [
        ("target-braze alone and baselines", bench.targets_alone),
        ("rate limit", bench.rate_limited),
    ]
    if args.meltano:
        stages.append(("meltano run", bench.meltano))
    if args.profile:
        stages.append(("profile", lambda: bench.profile(output_dir)))
    for name, stage in stages:
        try:
            stage()
        except Exception as exc:  # keep what was measured; report the failure
            bench.note(f"stage '{name}' failed: {type(exc).__name__}: {str(exc)[:300]}")
            bench.results.setdefault("failed_stages", []).append(name)
        (output_dir / "partial.json").write_text(json.dumps(bench.results, indent=2), "utf-8")
    (output_dir / "partial.json").unlink(missing_ok=True)
    bench.results["duration_seconds"] = round(time.perf_counter() - started, 1)
    bench.results["goals"] = report.goals(bench.results)
    write_outputs(bench.results, output_dir, Path(args.markdown))
    log(f"done in {bench.results['duration_seconds']} s")
    return 1 if bench.results.get("failed_stages") else 0


def write_outputs(results: dict[str, Any], output_dir: Path, markdown: Path) -> None:
    """latest.json, throughput.png and the markdown report."""
    json_path = output_dir / "latest.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    chart = output_dir / "throughput.png"
    report.chart(results, chart)
    markdown.write_text(report.markdown(results, markdown, chart, json_path), "utf-8")
    log(f"wrote {json_path}, {chart}, {markdown}")


if __name__ == "__main__":
    raise SystemExit(main())
