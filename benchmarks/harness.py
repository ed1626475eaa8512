"""What every case shares: measuring a process, null_braze, frozen trees, interleaving, tables.

A measured process runs under `spawn.py` (wall time, user + sys CPU and peak RSS from
`os.wait4`, its own CPU apart from its children's); with `callgrind`, under `valgrind
--tool=callgrind` too (instructions of every thread: repeatable on a busy machine).
Variants of one case run interleaved, the order reversed every other repeat, and each run
is divided by its repeat's baseline run: the median of those ratios is the figure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
BIN = Path(sys.executable).parent
PLUGINS = ("tap-peak-attributes", "target-braze")
_SCRUBBED = ("TAP_", "TARGET_", "MELTANO_")  # the caller's settings never leak into a run


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without plugin or Meltano settings and PYTHONPATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


def write_json(path: Path, data: Any) -> Path:
    """`data` as JSON in `path`."""
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


class ProcessFailedError(RuntimeError):
    """A measured process exited with a non-zero status."""


def measure(
    command: Sequence[str],
    log_path: Path,
    *,
    stdin: Path | None = None,
    stdout: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    callgrind: bool = False,
) -> dict[str, Any]:
    """Run `command` to completion: wall, cpu, own_cpu, rss_mb (and instructions)."""
    counts = log_path.with_suffix(".callgrind")
    if callgrind:
        counts.unlink(missing_ok=True)
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}", *command]
    with tempfile.TemporaryDirectory(prefix="bench-spawn-") as tmp:
        result = Path(tmp) / "run.json"
        launcher = [sys.executable, "-I", "-S", str(BENCH / "spawn.py"), str(result), *command]
        with contextlib.ExitStack() as files:
            opened = [
                files.enter_context(p.open(m)) if p else None
                for p, m in ((stdin, "rb"), (stdout, "wb"), (log_path, "wb"))
            ]
            subprocess.run(
                launcher,
                stdin=opened[0] or subprocess.DEVNULL,
                stdout=opened[1] or subprocess.DEVNULL,
                stderr=opened[2],
                env=env if env is not None else clean_env(),
                cwd=cwd,
                check=False,
            )
        run = json.loads(result.read_text()) if result.exists() else {"returncode": -1}
    if run["returncode"] != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise ProcessFailedError(f"{' '.join(command)} exited {run['returncode']}:\n{tail}")
    if callgrind:
        lines = counts.read_text().splitlines()
        run["instructions"] = next(int(x.split()[1]) for x in lines if x.startswith("summary:"))
    return run


@contextlib.contextmanager
def null_braze(latency_ms: float = 0.0) -> Iterator[str]:
    """null_braze in its own process (its CPU is never the measured one's): its URL."""
    with tempfile.TemporaryDirectory(prefix="null-braze-") as tmp:
        ready = Path(tmp) / "url"
        script = str(BENCH / "null_braze.py")
        command = [sys.executable, "-I", "-S", script, "--ready-file", str(ready)]
        process = subprocess.Popen([*command, "--latency-ms", str(latency_ms)])
        try:
            deadline = time.monotonic() + 30
            while not (ready.exists() and ready.read_text()):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("null_braze did not start")
                time.sleep(0.02)
            yield ready.read_text()
        finally:
            process.terminate()
            process.wait(timeout=10)


@dataclass
class Tree:
    """A version of the plugins: this checkout's, or a frozen copy of an older commit's."""

    name: str
    root: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)  # PYTHONPATH of a frozen copy


def trees(old: str | None, work: Path) -> list[Tree]:
    """[frozen copy of `old`, this checkout] (`old`: a git ref or a checkout's directory)."""
    if old is None:
        return [Tree("now")]
    root = Path(old)
    if not root.is_dir():  # a git ref: its plugins, frozen (later edits cannot leak in)
        git = ["git", "-C", str(ROOT)]
        sha = subprocess.run(
            [*git, "rev-parse", "--short", old], capture_output=True, text=True, check=True
        ).stdout.strip()
        root = work / f"frozen-{sha}"
        if not root.exists():
            root.mkdir(parents=True)
            archive = subprocess.run(
                [*git, "archive", sha, *PLUGINS], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
            # Compiled now, as this checkout's modules are: no run pays for compiling them.
            compile_all = [sys.executable, "-m", "compileall", "-q", str(root)]
            subprocess.run(compile_all, check=True, stdout=subprocess.DEVNULL)
        old = sha
    elif root.name == "target-braze":
        root = root.parent
    tree = Tree(
        old,
        root.resolve(),
        {"PYTHONPATH": os.pathsep.join(str(root.resolve() / p) for p in PLUGINS)},
    )
    check = (
        "import target_braze, tap_peak_attributes as t; print(target_braze.__file__, t.__file__)"
    )
    found = subprocess.run(
        [sys.executable, "-c", check],
        env=clean_env(**tree.env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not all(path.startswith(str(tree.root)) for path in found):
        raise RuntimeError(f"the frozen copy {tree.root} is not what Python imports: {found}")
    return [tree, Tree("now")]


def run_target(
    tree: Tree,
    work: Path,
    name: str,
    url: str,
    stream: Path,
    *,
    callgrind: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """One target-braze run into `url`, rate limit off unless set: measurement + run report."""
    report = work / f"report-{name}.json"
    report.unlink(missing_ok=True)
    config = {
        "api_key": "bench-key",
        "rest_endpoint": url,
        "max_requests_per_window": 0,
        "run_report_path": str(report),
        "progress_interval_seconds": 600,
        "rejected_records_path": str(work / f"rejects-{name}.jsonl"),
        **settings,
    }
    path = write_json(work / f"config-{name}.json", config)
    command = [str(BIN / "target-braze"), "--config", str(path)]
    run = measure(
        command, work / f"{name}.log", stdin=stream, env=clean_env(**tree.env), callgrind=callgrind
    )
    figures = json.loads(report.read_text())
    keys = (
        "records_in",
        "requests",
        "data_points",
        "unchanged",
        "in_flight_peak",
        "in_flight_ceiling_waits",
        "sender_threads",
        "retries",
    )
    return {**run, **{k: figures.get(k) for k in keys}}


def interleave(
    variants: Mapping[str, Callable[[], dict[str, Any]]], repeat: int
) -> dict[str, list[dict[str, Any]]]:
    """Every variant once per repeat, in order, then reversed in the next repeat, ..."""
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(repeat):
        for name in names if index % 2 == 0 else names[::-1]:
            log(f"{index + 1}/{repeat} {name}")
            runs[name].append(variants[name]())
    return runs


def summarise(
    runs: dict[str, list[dict[str, Any]]],
    records: dict[str, int],
    baselines: dict[str, str],
    metric: str = "cpu",
) -> list[dict[str, Any]]:
    """One row per variant: medians, per-100k figures, ratio to its baseline (per repeat)."""
    rows = []
    for name, own in runs.items():
        count = records[name]
        for run in own:
            run["cpu_per_100k"] = run["cpu"] / max(count, 1) * 100_000
            run.setdefault("records_in", count)
            run["records_per_s"] = (run["records_in"] or 0) / run["wall"]
            if run.get("requests") is not None:
                run["requests_per_s"] = run["requests"] / run["wall"]
        numeric = {k for r in own for k, v in r.items() if isinstance(v, int | float)}
        row: dict[str, Any] = {"variant": name, "repeats": len(own)}
        row |= {
            k: statistics.median(r[k] for r in own if r.get(k) is not None)
            for k in sorted(numeric)
            if any(r.get(k) is not None for r in own)
        }
        base = baselines.get(name)
        if base in runs and base != name:
            ratios = [r[metric] / b[metric] for r, b in zip(own, runs[base], strict=True)]
            row |= {
                "baseline": base,
                "ratio": statistics.median(ratios),
                "ratios": [round(x, 3) for x in ratios],
            }
        rows.append(row | {"runs": own})
    return rows


COLUMNS = [
    ("Records", "records_in", ",.0f"),
    ("Runs", "repeats", "d"),
    ("Wall s", "wall", ".2f"),
    ("Records/s", "records_per_s", ",.0f"),
    ("CPU s", "cpu", ".2f"),
    ("of it system s", "sys_cpu", ".2f"),
    ("CPU s / 100k", "cpu_per_100k", ".2f"),
    ("Peak RSS MB", "rss_mb", ".0f"),
]


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table: one row per variant (`variant` first), medians in the cells."""
    columns = [c for c in columns if any(row.get(c[1]) is not None for row in rows)]
    out = [
        "| Variant | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = []
        for _, key, spec in columns:
            value = row.get(key)
            if isinstance(value, list):
                value = ", ".join(format(x, ".2f") for x in value)
            cells.append("-" if value is None else format(value, spec) if spec else value)
        out.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


RATIO = [("Ratio (median)", "ratio", ".3f"), ("Ratios per repeat", "ratios", "")]


def header() -> dict[str, Any]:
    """The commit, machine and load the figures come from."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "cores": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def generate_warehouse(
    work: Path, rows: int, url: str | None = None, schema: str | None = None
) -> str:
    """`peak-sample generate` of `rows` customers into SQLite (or `url`); the URL."""
    url = url or f"sqlite:///{work / f'warehouse-{rows}.sqlite'}"
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    command = [
        str(BIN / "peak-sample"),
        "generate",
        "--url",
        url,
        "--customers",
        str(rows),
        "--seed",
        "7",
        "--no-long",
        *(["--schema", schema] if schema else []),
    ]
    log(f"peak-sample generate --customers {rows:,}")
    measure(command, work / "generate.log", env=clean_env())
    return url


def count_records(path: Path) -> int:
    """RECORD messages in a Singer stream file (BATCH messages: the lines of their files)."""
    total = 0
    with path.open("rb") as handle:
        for line in handle:
            if b'"type":"RECORD"' in line[:40]:
                total += 1
            elif b'"type":"BATCH"' in line[:40]:
                for url in json.loads(line)["manifest"]:
                    with Path(url.removeprefix("file://")).open("rb") as batch:
                        total += sum(1 for _ in batch)
    return total
