"""Running one process and measuring it: wall time, its own CPU (user + sys), peak RSS."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
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
    """

    wall_seconds: float
    user_seconds: float
    system_seconds: float
    max_rss_mb: float
    returncode: int
    sandbox_cpu_seconds: float | None = None

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
) -> ProcessRun:
    """Run `command` to completion and return its wall time, CPU and peak RSS."""
    full_env = {**os.environ, **(env or {})}
    sandbox = _process(sandbox_pid)
    sandbox_before = _cpu(sandbox)
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
