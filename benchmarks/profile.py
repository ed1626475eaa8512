"""Hotspots of a pyinstrument session: functions by self time and by inclusive time."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def hotspots(session_path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self time and by total (inclusive) time, as % of the run."""
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    root = session.root_frame()
    if root is None:
        return {"duration_seconds": 0.0, "self": [], "inclusive": []}
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)

    def name(frame: Any) -> str:
        where = f"{frame.file_path_short}:{frame.line_no}"
        return f"{frame.function} ({where})"

    def walk(frame: Any, active: frozenset[str]) -> None:
        key = name(frame)
        children = [c for c in frame.children if not c.is_synthetic]
        self_time[key] += frame.time - sum(c.time for c in children)
        if key not in active:  # recursion counts once
            inclusive[key] += frame.time
        for child in children:
            walk(child, active | {key})

    walk(root, frozenset())
    total = root.time or 1.0

    def table(times: dict[str, float]) -> list[dict[str, Any]]:
        ranked = sorted(times.items(), key=lambda item: item[1], reverse=True)[:top]
        return [
            {"function": key, "seconds": round(value, 3), "percent": round(100 * value / total, 1)}
            for key, value in ranked
        ]

    wrappers = ("<frozen", "<string>", "pyinstrument/", "click/", "runpy", "target_braze/__main__")
    app_inclusive = {k: v for k, v in inclusive.items() if not any(w in k for w in wrappers)}
    return {
        "duration_seconds": round(total, 3),
        "cpu_seconds": round(session.cpu_time or 0.0, 3),
        "self": table(self_time),
        "inclusive": table(app_inclusive),
    }
