"""Running one process and measuring it: wall time, its own CPU (user + sys), peak RSS."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

SPAWN = Path(__file__).resolve().parent / "spawn.py"


@dataclass
class ProcessRun:
    """What one child process cost, measured with `os.wait4` on that process only.

    `cpu_seconds` and `max_rss_mb` include the process's own waited-for children (for
    `meltano run`: the tap and the target), never the sandbox or this runner.
    `own_cpu_seconds` is the process's alone, children excluded (for `meltano run`:
    Meltano's relay); None where `/proc` could not tell. `others_cpu_seconds`: CPU the
    rest of the machine used meanwhile (every core's busy time from /proc/stat, less this
    runner's, the measured process's and the server's): other people's work competing for
    the cores, the mark of a number taken on a busy machine.
    """

    wall_seconds: float
    user_seconds: float
    system_seconds: float
    max_rss_mb: float
    returncode: int
    sandbox_cpu_seconds: float | None = None
    own_cpu_seconds: float | None = None
    children_cpu_seconds: float | None = None
    others_cpu_seconds: float | None = None

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU seconds."""
        return self.user_seconds + self.system_seconds

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, CPU total included."""
        data = asdict(self)
        data["cpu_seconds"] = round(self.cpu_seconds, 3)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}


class ProcessFailedError(RuntimeError):
    """A measured process exited with a non-zero status."""


def run_measured(
    command: Sequence[str],
    *,
    stdin_path: Path | None = None,
    stdout_path: Path | None = None,
    stderr_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    sandbox_pid: int | None = None,
    check: bool = True,
    inherit_env: bool = True,
) -> ProcessRun:
    """Run `command` to completion and return its wall time, CPU and peak RSS.

    `env` is added to this process's environment, or with `inherit_env=False` is the whole
    environment. `sandbox_pid`: a server process whose CPU over the run is reported too.
    """
    full_env = {**os.environ, **(env or {})} if inherit_env else dict(env or {})
    sandbox = _process(sandbox_pid)
    sandbox_before = _cpu(sandbox)
    machine_before, ours_before = machine_busy_seconds(), own_tree_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-spawn-") as tmp:
        result_path = Path(tmp) / "run.json"
        launcher = [sys.executable, "-I", "-S", str(SPAWN), str(result_path), *command]
        with (
            _open(stdin_path, "rb") as stdin,
            _open(stdout_path, "wb") as stdout,
            _open(stderr_path, "wb") as stderr,
        ):
            subprocess.run(
                launcher,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                stderr=stderr if stderr is not None else subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                check=False,
            )
        if not result_path.exists():
            raise ProcessFailedError(f"the launcher did not measure {' '.join(command)}")
        measured = json.loads(result_path.read_text(encoding="utf-8"))
    returncode = int(measured["returncode"])
    sandbox_after = _cpu(sandbox)
    machine_after, ours_after = machine_busy_seconds(), own_tree_seconds()
    server = (
        sandbox_after - sandbox_before
        if sandbox_after is not None and sandbox_before is not None
        else 0.0
    )
    others = None
    if machine_after is not None and machine_before is not None:
        ours = ours_after - ours_before
        others = max(0.0, machine_after - machine_before - ours - server)
    split = measured.get("split") or {}
    run = ProcessRun(
        wall_seconds=measured["wall_seconds"],
        user_seconds=measured["user_seconds"],
        system_seconds=measured["system_seconds"],
        max_rss_mb=measured["max_rss_kb"] / 1024,  # Linux: KiB
        returncode=returncode,
        sandbox_cpu_seconds=(
            sandbox_after - sandbox_before
            if sandbox_after is not None and sandbox_before is not None
            else None
        ),
        own_cpu_seconds=(
            split["own_user_seconds"] + split["own_system_seconds"] if split else None
        ),
        children_cpu_seconds=(
            split["children_user_seconds"] + split["children_system_seconds"] if split else None
        ),
        others_cpu_seconds=others,
    )
    if check and returncode != 0:
        tail = ""
        if stderr_path is not None and stderr_path.exists():
            tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise ProcessFailedError(f"{' '.join(command)} exited with {returncode}:\n{tail}")
    return run


class _NoFile:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _open(path: Path | None, mode: str) -> Any:
    return open(path, mode) if path is not None else _NoFile()


def _process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _cpu(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def machine_busy_seconds() -> float | None:
    """Busy CPU seconds of every core since boot (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_tree_seconds() -> float:
    """This runner's CPU seconds and its reaped children's (the measured runs among them)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def median(values: Sequence[float | None]) -> float | None:
    """Median of the non-missing values (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def machine() -> dict[str, Any]:
    """The machine and date the numbers come from."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def rate_row(run: ProcessRun, records: int) -> dict[str, Any]:
    """One run's JSON row: its measurement, the records it handled and records/s."""
    row = run.as_dict()
    row["records"] = records
    row["records_per_second"] = round(records / run.wall_seconds, 1)
    row["cpu_seconds_per_100k"] = round(run.cpu_seconds / max(records, 1) * 100_000, 3)
    if run.others_cpu_seconds is not None:
        # Cores' worth of other processes' work during the run (0 = the machine was ours).
        row["others_cores"] = round(run.others_cpu_seconds / run.wall_seconds, 3)
    return row


def summary(label: str, unit: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A measurement: its label, every run, and each numeric field's median."""
    keys: list[str] = []
    for run in runs:
        keys += [
            k
            for k, v in run.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in keys
        ]
    keys = [k for k in keys if k != "returncode"]
    medians = {k: median([r.get(k) for r in runs]) for k in keys}
    return {
        "label": label,
        "unit": unit,
        "repeats": len(runs),
        "median": {k: round(v, 4) if isinstance(v, float) else v for k, v in medians.items()},
        "runs": runs,
    }
