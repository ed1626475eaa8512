"""The external side of Dagster Pipes: run `meltano run ...` and report back to Dagster.

Started by the sync op through `PipesSubprocessClient` (`python meltano_pipes.py`); it
needs only `dagster-pipes` and the standard library. From the Pipes context's extras it
takes the command, the working directory, the variables to withhold from Meltano and the
run report's path. It then

- runs Meltano, passing each line Meltano writes on to Dagster's log (at Meltano's level)
  and to its own stdout (Dagster's captured output);
- passes SIGINT and SIGTERM on to Meltano (the Pipes client sends SIGINT when Dagster
  terminates the run), so Meltano stops its plugins as on any interrupt;
- reports Meltano's exit status, its last error lines and the run report as one custom
  message, and exits 0: whether the sync failed is the op's decision, with the counts.

Secrets reach Meltano in this process's environment only: Pipes' context travels through
a file, so nothing secret is ever put in the extras.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

from dagster_pipes import PipesContext, open_dagster_pipes

_LEVEL = re.compile(r"\[\s*(debug|info|warning|error|critical)\s*\]", re.IGNORECASE)
_ERROR_LINE = re.compile(r"(: error: |\[\s*(error|critical)\s*\])", re.IGNORECASE)
ERROR_LINES_KEPT = 5


def level_of(line: str) -> str:
    """Meltano's level of a log line (`[info     ]`); plain plugin output counts as info."""
    match = _LEVEL.search(line)
    return match.group(1).lower() if match else "info"


def child_environment(withheld: list[str]) -> dict[str, str]:
    """The environment Meltano gets: ours, less the withheld variables and Pipes' own."""
    drop = set(withheld)
    return {
        key: value
        for key, value in os.environ.items()
        if key not in drop and not key.startswith("DAGSTER_PIPES_")
    }


def run_meltano(pipes: PipesContext) -> dict[str, Any]:
    """Run the command; return what the custom message reports."""
    extras = pipes.extras
    command = [str(part) for part in extras["command"]]
    process = subprocess.Popen(
        command,
        cwd=extras.get("cwd"),
        env=child_environment(list(extras.get("withhold", []))),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )

    def forward(signum: int, _frame: FrameType | None) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    errors: deque[str] = deque(maxlen=ERROR_LINES_KEPT)
    assert process.stdout is not None  # noqa: S101 - stdout=PIPE above
    for raw in process.stdout:
        line = raw.rstrip("\n")
        sys.stdout.write(raw)
        sys.stdout.flush()
        if not line.strip():
            continue
        getattr(pipes.log, level_of(line))(line)
        if _ERROR_LINE.search(line):
            errors.append(line.strip())
    returncode = process.wait()
    return {
        "returncode": returncode,
        "error_lines": list(errors),
        "run_report": _report(extras.get("run_report_path")),
    }


def _report(path: str | None) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def main() -> int:
    """Run Meltano inside a Pipes session."""
    with open_dagster_pipes() as pipes:
        pipes.report_custom_message(run_meltano(pipes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
