"""Profiles of target-braze: py-spy's hotspots and each thread's CPU.

`py-spy record --gil --function --format raw` samples the thread holding the GIL, which
is where Python's CPU goes (waits, and C code that releases the GIL, such as the kernel's
share of socket I/O and SQLite's own work, are not in it), and writes one collapsed stack
per line, `frame;frame;...;frame COUNT`, each frame `function (file:line)`. Self samples
are a stack's last frame; inclusive samples count a frame once per stack however often it
recurs. (py-spy's idle detection does not work here without `--gil`: threads blocked on
a queue or a socket show as busy.)

Because `--gil` hides CPU spent outside Python, a second, unprofiled run gives each
thread's CPU from /proc/<pid>/task, named by `py-spy dump` (MainThread, braze-send_N,
ledger-writer, state-output).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import plugins
from benchmarks.measure import run_measured

if TYPE_CHECKING:
    from benchmarks.run import Bench

#: Frames that only wrap the program (start-up machinery, the CLI, the SDK's entry).
_WRAPPERS = (
    "<frozen",
    "runpy",
    "target_braze/__main__",
    "(target-braze:",
    "click/",
    "(threading.py",
    "singer_sdk/plugin_base.py",
    "singer_sdk/target_base.py",
    "TargetBraze.invoke",
)
_DUMP_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "([^"]+)"', re.MULTILINE)


def parse(raw_path: Path) -> list[tuple[list[str], int]]:
    """(stack, samples) per line of a py-spy raw file."""
    stacks = []
    for line in raw_path.read_text(encoding="utf-8", errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if body and count.isdigit():
            stacks.append((body.split(";"), int(count)))
    return stacks


def _module(frame: str) -> str:
    where = frame.rpartition("(")[2].rstrip(")")
    return where.rpartition(":")[0] or where


def hotspots(raw_path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and inclusive samples and top files by self, as % of samples."""
    stacks = parse(raw_path)
    total = sum(count for _, count in stacks) or 1
    self_samples: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    by_file: dict[str, int] = defaultdict(int)
    for stack, count in stacks:
        self_samples[stack[-1]] += count
        by_file[_module(stack[-1])] += count
        for frame in set(stack):
            if not any(w in frame for w in _WRAPPERS):
                inclusive[frame] += count

    def table(samples: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(samples.items(), key=lambda item: item[1], reverse=True)[:top]
        return [
            {"function": key, "samples": value, "percent": round(100 * value / total, 1)}
            for key, value in ranked
        ]

    return {
        "samples": total,
        "self": table(self_samples),
        "inclusive": table(inclusive),
        "files": table(by_file),
    }


def _kind(name: str) -> str:
    if name == "MainThread":
        return "main thread"
    if name.startswith("braze-send"):
        return "sender threads (braze-send_N)"
    return name


def thread_cpu(command: list[str], stream: Path, stderr_path: Path) -> dict[str, float]:
    """CPU seconds per thread kind of one run: /proc/<pid>/task every 20 ms, names by py-spy.

    A thread's last reading before it exits is kept, so the figures run slightly low;
    they are a split, not a measurement of record (those come from wait4).
    """
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[str, float] = {}
    names: dict[str, str] = {}
    py_spy = plugins.tool("py-spy")
    with stream.open("rb") as stdin, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=plugins.clean_environment(),
        )
        tasks = Path(f"/proc/{process.pid}/task")
        next_dump = time.monotonic() + 0.3
        while process.poll() is None:
            try:
                for task in tasks.iterdir():
                    try:
                        stat = (task / "stat").read_text()
                    except OSError:
                        continue
                    fields = stat[stat.rindex(")") + 2 :].split()
                    seen[task.name] = (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                pass
            if time.monotonic() >= next_dump and len(names) < len(seen):
                next_dump = time.monotonic() + 0.5
                dump = subprocess.run(
                    [py_spy, "dump", "--nonblocking", "--pid", str(process.pid)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                names.update(_DUMP_THREAD.findall(dump.stdout))
            time.sleep(0.02)
    names.setdefault(str(process.pid), "MainThread")
    split: dict[str, float] = defaultdict(float)
    for tid, seconds in seen.items():
        split[_kind(names.get(tid, "unnamed"))] += seconds
    return {kind: round(seconds, 2) for kind, seconds in sorted(split.items())}


def record(bench: Bench, name: str, config: Path, stream: Path) -> dict[str, Any]:
    """py-spy over one target-braze run (Meltano venv), then an unprofiled run's threads."""
    raw = bench.work / f"profile-{name}.raw.txt"
    run = run_measured(
        [
            plugins.tool("py-spy"),
            "record",
            "--gil",
            "--function",
            "--rate",
            str(bench.args.profile_rate),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
            plugins.target_braze(),
            "--config",
            str(config),
        ],
        stdin_path=stream,
        stderr_path=bench.logfile(f"profile-{name}"),
        env=plugins.clean_environment(),
        inherit_env=False,
    )
    found = hotspots(raw)
    found["profiled_wall_seconds"] = round(run.wall_seconds, 2)
    found["thread_cpu_seconds"] = thread_cpu(
        [plugins.target_braze(), "--config", str(config)],
        stream,
        bench.logfile(f"profile-{name}-threads"),
    )
    return found


def text(summary: dict[str, Any], header: str) -> str:
    """The hotspots as a plain-text report."""
    lines = [header, "", f"{summary['samples']} samples of the GIL holder", ""]
    lines += ["CPU-s by thread (an unprofiled run):", ""]
    lines += [f"  {kind}: {s}" for kind, s in summary.get("thread_cpu_seconds", {}).items()]
    for title, key in (
        ("By self samples", "self"),
        ("By inclusive samples (start-up and CLI wrappers left out)", "inclusive"),
        ("By file, self samples", "files"),
    ):
        lines += ["", title, ""]
        lines += [f"  {row['percent']:5.1f}%  {row['function']}" for row in summary[key]]
    return "\n".join(lines) + "\n"


def publish(
    bench: Bench, output_dir: Path, name: str, found: dict[str, Any], what: str, records: int
) -> None:
    """Write `<output-dir>/profile-<name>.txt` and keep the hotspots in the results."""
    tool = "py-spy record --gil --function"
    path = output_dir / f"profile-{name}.txt"
    header = f"{tool} at {bench.args.profile_rate} Hz: {what}"
    path.write_text(text(found, header), encoding="utf-8")
    bench.results.setdefault("profiles", {})[name] = {
        "tool": tool,
        "what": what,
        "records": records,
        "path": path.name,
        **found,
    }
