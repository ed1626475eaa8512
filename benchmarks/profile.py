"""Hotspots of a py-spy profile: functions by self and by inclusive samples, files by self.

py-spy (`py-spy record --format raw --function`) writes one collapsed stack per line,
`frame;frame;...;frame COUNT`, each frame `function (file:line)`, every thread's samples
together, idle samples left out (so the counts follow CPU, not waits). Self samples are a
stack's last frame; inclusive samples count a frame once per stack however often it
recurs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

#: Frames that only wrap the program (start-up machinery, the launcher).
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
    threads: dict[str, int] = defaultdict(int)
    for stack, count in stacks:
        self_samples[stack[-1]] += count
        by_file[_module(stack[-1])] += count
        threads["sender and ledger threads" if "Thread" in stack[0] else "main thread"] += count
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
        "threads": {k: round(100 * v / total, 1) for k, v in threads.items()},
    }


def text(summary: dict[str, Any], header: str) -> str:
    """The hotspots as a plain-text report."""
    lines = [header, "", f"{summary['samples']} samples (idle excluded)", ""]
    lines += [f"  {name}: {share}%" for name, share in summary["threads"].items()]
    for title, key in (
        ("By self samples", "self"),
        ("By inclusive samples (start-up and CLI wrappers left out)", "inclusive"),
        ("By file, self samples", "files"),
    ):
        lines += ["", title, ""]
        lines += [f"  {row['percent']:5.1f}%  {row['function']}" for row in summary[key]]
    return "\n".join(lines) + "\n"
