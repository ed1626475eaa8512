"""tap-peak-attributes alone, and Meltano's relay of its output: a baseline against now.

    .venv/bin/python -m benchmarks.tap_alone --rows 200000 --repeat 5 --baseline-ref REF \
        [--meltano] [--batch] [--output results.json]

Both versions run side by side in one process of this script, alternating, on one
warehouse (`peak-sample generate --customers N --no-long`), so the noise of a shared
machine falls on both alike:

- tap alone: each version's console entry point, stdout a pipe read by this script (as
  Meltano reads it), CPU from `os.wait4` (user + sys of the tap process); also a run
  reading nothing (STATE at the end), so start-up and the query's own cost can be
  subtracted (marginal CPU per 100k rows).
- relay (`--meltano`): `meltano run <tap> target-braze` in a scratch Meltano project
  whose two extractors are the two versions; target-braze in dry-run mode (no Braze, no
  sandbox). Meltano's own CPU is read from its process once it has exited (a zombie
  still reports its own user and system time), so the tap and the target are excluded;
  a run reading no row is subtracted (Meltano's start-up) to give the relay's share.
- `--batch`: the working tree's tap also in BATCH mode (`batch_config`, 10,000 records a
  file), alone and through `meltano run` (target-braze reads and deletes the files).

The baseline is `git archive REF tap-peak-attributes`, imported ahead of the installed
package through PYTHONPATH (the script checks which one each run imported).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLUGIN_VENV = ROOT / ".meltano" / "extractors" / "tap-peak-attributes" / "venv"
ENTRY = (
    "import sys, tap_peak_attributes; "
    "print('imported', tap_peak_attributes.__file__, file=sys.stderr); "
    "from tap_peak_attributes.__main__ import main; main()"
)


@dataclass
class Variant:
    """One version of the tap: a name and the PYTHONPATH that selects it."""

    name: str
    pythonpath: str | None  # None: the installed (working tree) package
    config: Path | None = None  # another config file (BATCH mode)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env


def log(message: str) -> None:
    print(f"[tap-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def export_baseline(ref: str, into: Path) -> Path:
    """`git archive REF tap-peak-attributes` under `into`; the package's parent directory."""
    archive = subprocess.run(
        ["git", "archive", ref, "tap-peak-attributes"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "tap-peak-attributes"


def run_tap(
    variant: Variant, python: str, config: Path, state: Path | None, expect: str
) -> dict[str, Any]:
    """One run of the tap; its stdout read from a pipe. CPU and lines of the tap process."""
    command = [python, "-c", ENTRY, "--config", str(config)]
    if state is not None:
        command += ["--state", str(state)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=variant.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tempfile.gettempdir(),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines = 0
    while chunk := process.stdout.read(1 << 16):
        lines += chunk.count(b"\n")
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{variant.name} exited {code}: {stderr[-2000:]}")
    imported = next(line for line in stderr.splitlines() if line.startswith("imported "))
    if expect not in imported:
        raise RuntimeError(f"{variant.name} imported the wrong package: {imported}")
    return {
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": wall,
        "lines": lines,
    }


def tap_alone(
    variants: list[tuple[Variant, str]], config: Path, end_state: Path, rows: int, repeat: int
) -> dict[str, Any]:
    """Alternate the variants `repeat` times: a full read, then a read of nothing."""
    python = sys.executable
    results: dict[str, dict[str, list[float]]] = {
        v.name: {"full": [], "empty": [], "wall": []} for v, _ in variants
    }
    for index in range(repeat):
        order = variants if index % 2 == 0 else list(reversed(variants))
        for variant, expect in order:
            config_path = variant.config or config
            full = run_tap(variant, python, config_path, None, expect)
            if full["lines"] < rows and variant.config is None:
                raise RuntimeError(f"{variant.name} wrote {full['lines']} lines for {rows} rows")
            empty = run_tap(variant, python, config_path, end_state, expect)
            results[variant.name]["full"].append(full["cpu_seconds"])
            results[variant.name]["empty"].append(empty["cpu_seconds"])
            results[variant.name]["wall"].append(full["wall_seconds"])
            log(
                f"tap alone {index + 1}/{repeat} {variant.name}: {full['cpu_seconds']:.2f} CPU-s "
                f"({empty['cpu_seconds']:.2f} reading nothing), {full['wall_seconds']:.2f} s wall"
            )
    summary = {}
    for name, runs in results.items():
        full_cpu, empty_cpu = statistics.median(runs["full"]), statistics.median(runs["empty"])
        summary[name] = {
            "cpu_seconds_median": round(full_cpu, 3),
            "cpu_seconds_runs": [round(x, 3) for x in runs["full"]],
            "cpu_per_100k_rows": round(full_cpu / rows * 100_000, 3),
            "empty_run_cpu_seconds_median": round(empty_cpu, 3),
            "marginal_cpu_per_100k_rows": round((full_cpu - empty_cpu) / rows * 100_000, 3),
            "wall_seconds_median": round(statistics.median(runs["wall"]), 3),
            "rows_per_second": round(rows / statistics.median(runs["wall"])),
        }
    return summary


def meltano_project(work: Path, baseline: Path) -> Path:
    """A scratch Meltano project: extractors `tap-now` and `tap-baseline`, target-braze."""
    project = work / "meltano-project"
    sys_dir = project / ".meltano"
    (sys_dir / "extractors").mkdir(parents=True)
    for name in ("tap-now", "tap-baseline"):
        (sys_dir / "extractors" / name).symlink_to(PLUGIN_VENV.parent, target_is_directory=True)
    (sys_dir / "loaders").symlink_to(ROOT / ".meltano" / "loaders", target_is_directory=True)
    wrapper = project / "tap-baseline.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={baseline} exec {PLUGIN_VENV}/bin/python -c "
        f'"from tap_peak_attributes.__main__ import main; main()" "$@"\n'
    )
    wrapper.chmod(0o755)
    settings = [
        {"name": "sqlalchemy_url", "kind": "string"},
        {"name": "state_message_frequency", "kind": "integer"},
        {"name": "start_date", "kind": "string"},
        {"name": "batch_config", "kind": "object"},
    ]
    extractor = {
        "namespace": "tap_peak_attributes",
        "pip_url": f"-e {ROOT / 'tap-peak-attributes'}",
        "capabilities": ["catalog", "discover", "state", "about", "stream-maps"],
        "settings": settings,
    }
    config = {
        "project_id": "tap-relay-bench",
        "send_anonymous_usage_stats": False,
        "default_environment": "bench",
        "environments": [{"name": "bench"}],
        "plugins": {
            "extractors": [
                {"name": "tap-now", "executable": "tap-peak-attributes", **extractor},
                {"name": "tap-baseline", "executable": str(wrapper), **extractor},
            ],
            "loaders": [
                {
                    "name": "target-braze",
                    "namespace": "target_braze",
                    "pip_url": f"-e {ROOT / 'target-braze'}",
                    "executable": "target-braze",
                    "settings": [
                        {"name": name, "kind": kind}
                        for name, kind in (
                            ("dry_run", "boolean"),
                            ("dry_run_path", "string"),
                            ("validate_records", "boolean"),
                            ("send_only_changes", "boolean"),
                            ("deduplicate_events", "boolean"),
                            ("rest_endpoint", "string"),
                        )
                    ],
                }
            ],
        },
    }
    (project / "meltano.yml").write_text(json.dumps(config, indent=2))
    return project


def meltano_self_cpu(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Run `meltano ...`; its own CPU (children excluded) read while it is a zombie."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    watched = psutil.Process(process.pid)
    own = None
    while True:
        try:
            if watched.status() == psutil.STATUS_ZOMBIE:
                times = watched.cpu_times()
                own = times.user + times.system
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    assert process.stderr is not None
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"meltano failed: {stderr[-3000:]}")
    if own is None:
        raise RuntimeError("could not read meltano's own CPU before it was reaped")
    return {
        "meltano_cpu_seconds": own,
        "whole_cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": wall,
    }


def relay(
    work: Path, baseline: Path, sqlite_url: str, rows: int, repeat: int, batch: str | None
) -> dict[str, Any]:
    """`meltano run tap-{now,baseline} target-braze` (dry run), alternating; with `batch`,
    also tap-now in BATCH mode (target-braze reads the files)."""
    project = meltano_project(work, baseline)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_STATE_BACKEND_URI": f"file://{work / 'state'}",
            "TAP_NOW_SQLALCHEMY_URL": sqlite_url,
            "TAP_BASELINE_SQLALCHEMY_URL": sqlite_url,
            "TARGET_BRAZE_DRY_RUN": "true",
            "TARGET_BRAZE_DRY_RUN_PATH": str(work / "dry-run.jsonl"),
            "TARGET_BRAZE_REST_ENDPOINT": "US-01",
            "TARGET_BRAZE_VALIDATE_RECORDS": "false",
            "TARGET_BRAZE_SEND_ONLY_CHANGES": "false",
            "TARGET_BRAZE_DEDUPLICATE_EVENTS": "false",
        }
    )
    runs_of: dict[str, tuple[str, dict[str, str]]] = {
        "tap-baseline": ("tap-baseline", {}),
        "tap-now": ("tap-now", {}),
    }
    if batch:
        runs_of["tap-now BATCH"] = ("tap-now", {"TAP_NOW_BATCH_CONFIG": batch})
    meltano = str(BIN / "meltano")
    results: dict[str, list[dict[str, float]]] = {label: [] for label in runs_of}
    empty: dict[str, list[float]] = {label: [] for label in runs_of}
    names = list(results)
    for index in range(repeat):
        for name in names if index % 2 == 0 else list(reversed(names)):
            extractor, extra = runs_of[name]
            command = [meltano, "run", "--full-refresh", "--state-id-suffix", "bench", extractor]
            command.append("target-braze")
            run = meltano_self_cpu(command, project, {**env, **extra})
            results[name].append(run)
            # The same run reading no row: Meltano's start-up and teardown alone.
            variable = extractor.upper().replace("-", "_") + "_START_DATE"
            nothing = meltano_self_cpu(command, project, {**env, **extra, variable: "2099-01-01"})
            empty[name].append(nothing["meltano_cpu_seconds"])
            log(
                f"relay {index + 1}/{repeat} {name}: meltano {run['meltano_cpu_seconds']:.2f} "
                f"CPU-s ({nothing['meltano_cpu_seconds']:.2f} relaying nothing), whole run "
                f"{run['whole_cpu_seconds']:.2f} CPU-s, {run['wall_seconds']:.1f} s"
            )
    summary = {}
    for name, runs in results.items():
        own = statistics.median(r["meltano_cpu_seconds"] for r in runs)
        idle = statistics.median(empty[name])
        whole = statistics.median(r["whole_cpu_seconds"] for r in runs)
        summary[name] = {
            "meltano_cpu_seconds_median": round(own, 3),
            "meltano_cpu_runs": [round(r["meltano_cpu_seconds"], 3) for r in runs],
            "meltano_cpu_relaying_nothing_median": round(idle, 3),
            "relay_cpu_per_100k_rows": round((own - idle) / rows * 100_000, 3),
            "whole_run_cpu_per_100k_rows": round(whole / rows * 100_000, 3),
            "wall_seconds_median": round(statistics.median(r["wall_seconds"] for r in runs), 2),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline-ref", default="HEAD", help="git ref of the baseline tap")
    parser.add_argument("--meltano", action="store_true", help="also measure the relay")
    parser.add_argument("--meltano-repeat", type=int, default=3)
    parser.add_argument("--batch", action="store_true", help="also the tap in BATCH mode")
    parser.add_argument("--work-dir", type=Path, help="keep the warehouse and logs here")
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        warehouse = work / "warehouse.sqlite"
        sqlite_url = f"sqlite:///{warehouse}"
        log(f"peak-sample generate --customers {args.rows}")
        generate = [str(BIN / "peak-sample"), "generate", "--url", sqlite_url, "--no-long"]
        subprocess.run(
            [*generate, "--customers", str(args.rows), "--seed", "7"],
            check=True,
            capture_output=True,
        )
        config = work / "config.json"
        config.write_text(json.dumps({"sqlalchemy_url": sqlite_url}))
        baseline_dir = work / "baseline"
        baseline_dir.mkdir(exist_ok=True)
        baseline = export_baseline(args.baseline_ref, baseline_dir)
        end_state = work / "state-end.json"
        end_state.write_text(
            json.dumps(
                {
                    "bookmarks": {
                        "customer_attributes": {
                            "replication_key": "updated_at",
                            "replication_key_value": "2099-01-01T00:00:00.000000+00:00",
                            "replication_key_last_id": "Z",
                        }
                    }
                }
            )
        )
        variants = [
            (Variant("baseline", str(baseline)), str(baseline)),
            (Variant("now", None), str(ROOT / "tap-peak-attributes")),
        ]
        batch = None
        if args.batch:
            batches = work / "batches"
            batch = json.dumps({"storage": {"root": batches.as_uri()}, "batch_size": 10_000})
            batch_config = work / "config-batch.json"
            batch_config.write_text(
                json.dumps({"sqlalchemy_url": sqlite_url, "batch_config": json.loads(batch)})
            )
            variants.append(
                (Variant("now BATCH", None, batch_config), str(ROOT / "tap-peak-attributes"))
            )
        results: dict[str, Any] = {
            "rows": args.rows,
            "baseline_ref": subprocess.run(
                ["git", "rev-parse", "--short", args.baseline_ref],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip(),
            "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "tap_alone": tap_alone(variants, config, end_state, args.rows, args.repeat),
        }
        if args.meltano:
            results["relay"] = relay(
                work, baseline, sqlite_url, args.rows, args.meltano_repeat, batch
            )
        text = json.dumps(results, indent=2)
        print(text)
        if args.output:
            args.output.write_text(text + "\n")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
