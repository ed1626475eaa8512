"""Report: progress lines, the summary, the run report, and the JSON Lines outputs.

`JsonlOutput`: a JSON-lines file that several threads append to without a lock.

`RunStats`: the run's counts, the progress line, the final summary and the JSON report.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from target_braze.private_files import open_private, replace_private


class JsonlOutput:
    """Appends lines with one `write()` each on an O_APPEND descriptor.

    Appends of whole lines from several threads then never interleave, and no lock is
    held around the I/O. The file is created on the first line, so a run with nothing to
    write leaves no empty file behind. It may hold customer data, so it is opened as
    `private_files.open_private` says: 0600, never through a link, never another user's.
    """

    def __init__(
        self, path: str | Path, *, truncate: bool = False, setting: str = "the output path"
    ) -> None:
        """Remember the path; `truncate` empties an existing file at the first write."""
        self.path = Path(path)
        self.setting = setting
        self._truncate = truncate
        self._fd: int | None = None

    def write_line(self, line: bytes) -> None:
        """Append `line` and a newline."""
        fd = self._fd if self._fd is not None else self.open()
        view = memoryview(line + b"\n")
        while view:  # os.write may write fewer bytes than asked
            view = view[os.write(fd, view) :]

    def open(self) -> int:
        """Create (or truncate) the file now; `write_line` does it when first needed."""
        flags = os.O_WRONLY | os.O_APPEND
        fd = open_private(self.path, self.setting, flags, truncate=self._truncate)
        if self._fd is None:
            self._fd = fd
        else:  # another thread opened it meanwhile: keep one descriptor
            os.close(fd)
        return self._fd

    def close(self) -> None:
        """Close the file (a later line reopens it, appending)."""
        fd, self._fd = self._fd, None
        self._truncate = False
        if fd is not None:
            os.close(fd)


logger = logging.getLogger("target_braze")

COUNTERS = (
    "records_in",
    "objects_sent",
    "objects_accepted",
    "records_accepted",
    "records_merged",
    "unchanged",
    "duplicates",
    "requests",
    "retries",
    "rate_limited",
    "server_errors",
    "connection_errors",
    "splits",
    "rejected",
    "unknown",
    "data_points",
    "bytes_sent",
    "states_emitted",
    "sender_threads",
)


class InFlightGauge(Protocol):
    """What the report reads of the requests in flight (`in_flight.InFlight`)."""

    @property
    def current(self) -> int:
        """Requests in flight now."""
        ...

    peak: int
    ceiling: int
    ceiling_waits: int


class RunStats:
    """Thread-safe counters shared by the message path, the sender threads and the client."""

    def __init__(
        self,
        progress_interval: float,
        records_in: Callable[[], int] | None = None,
        *,
        run_id: str = "",
        dry_run: bool = False,
    ) -> None:
        """Start the clock; `records_in` counts received records (the checkpoint does)."""
        self._records_in = records_in or (lambda: self.counts["records_in"])
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.rejected_by_reason: dict[str, int] = {}
        self.rejected_examples: dict[str, list[str]] = {}
        self.run_id = run_id
        self.dry_run = dry_run
        self.started = time.monotonic()
        self._progress_interval = progress_interval
        self._next_progress = self.started + progress_interval
        self._in_flight: InFlightGauge | None = None

    def watch_in_flight(self, gauge: InFlightGauge) -> None:
        """Read the requests in flight from `gauge` in the progress line and the report."""
        self._in_flight = gauge

    def in_flight_figures(self) -> dict[str, int]:
        """Requests in flight now and at the peak, the ceiling, and waits at the ceiling."""
        gauge = self._in_flight
        if gauge is None:
            return {}
        return {
            "in_flight": gauge.current,
            "in_flight_peak": gauge.peak,
            "max_concurrent_requests": gauge.ceiling,
            "in_flight_ceiling_waits": gauge.ceiling_waits,
        }

    def ceiling_note(self) -> str:
        """One line when in-flight requests ran into `max_concurrent_requests`, else ''."""
        figures = self.in_flight_figures()
        if not figures.get("in_flight_ceiling_waits"):
            return ""
        return (
            f"Requests in flight reached max_concurrent_requests "
            f"({figures['max_concurrent_requests']}) while more were waiting to go "
            f"({figures['in_flight_ceiling_waits']} waits): raise max_concurrent_requests "
            "for more throughput at this latency"
        )

    def add(self, **increments: int) -> None:
        """Add to named counters."""
        with self._lock:
            for name, value in increments.items():
                self.counts[name] += value

    def add_rejection(self, reason_kind: str, example: str) -> None:
        """Count a rejected record under a short reason; `example` names it (id or line)."""
        with self._lock:
            self.counts["rejected"] += 1
            self.rejected_by_reason[reason_kind] = self.rejected_by_reason.get(reason_kind, 0) + 1
            examples = self.rejected_examples.setdefault(reason_kind, [])
            if len(examples) < 3:
                examples.append(example)

    def rejection_summary(self) -> str:
        """'EMAIL_BAD_FORMAT: 12 (e.g. u1, u7, u9); ...': the shape of the problem in a line."""
        with self._lock:
            return "; ".join(
                f"{kind}: {count} (e.g. {', '.join(self.rejected_examples.get(kind, []))})"
                for kind, count in sorted(self.rejected_by_reason.items(), key=lambda kv: -kv[1])
            )

    def rejected_ratio(self) -> float:
        """Rejected records over records received so far (a snapshot)."""
        total = self._records_in()
        with self._lock:
            rejected = self.counts["rejected"]
        return rejected / total if total else 0.0

    def maybe_log_progress(self) -> None:
        """Log one progress line when `progress_interval` has passed (cheap to call often)."""
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + self._progress_interval
        logger.info("Progress: %s", self._line(now))

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of the counters."""
        with self._lock:
            counts = dict(self.counts)
        counts["records_in"] = self._records_in()
        return counts

    def _line(self, now: float) -> str:
        c = self.snapshot()
        elapsed = max(now - self.started, 1e-9)
        sent = "would be sent" if self.dry_run else "sent"
        return (
            f"{c['records_in']} records in, {c['objects_sent']} objects {sent} in "
            f"{c['requests']} requests ({c['retries']} retries, {c['rate_limited']} 429s, "
            f"{c['server_errors']} 5xx, {c['connection_errors']} connection errors), "
            f"{c['unchanged']} unchanged, {c['duplicates']} duplicates, "
            f"{c['rejected']} rejected, {c['unknown']} delivery unknown, "
            f"{c['data_points']} data points, "
            f"{c['records_in'] / elapsed:,.0f} records/s{self._in_flight_text()}"
        )

    def _in_flight_text(self) -> str:
        figures = self.in_flight_figures()
        if not figures:
            return ""
        return f", {figures['in_flight']} in flight (peak {figures['in_flight_peak']})"

    def summary(self) -> str:
        """The final one-line summary."""
        return self._line(time.monotonic())

    def as_dict(
        self, *, outcome: str, endpoints: dict[str, dict[str, int]] | None = None
    ) -> dict[str, Any]:
        """What `run_report_path` holds; `endpoints`: counts of the user-data endpoints."""
        elapsed = time.monotonic() - self.started
        counts = self.snapshot()
        with self._lock:
            reasons = dict(self.rejected_by_reason)
        return {
            "run_id": self.run_id,
            "outcome": outcome,
            "dry_run": self.dry_run,
            "elapsed_seconds": round(elapsed, 3),
            "records_per_second": round(counts["records_in"] / elapsed, 1) if elapsed else None,
            **counts,
            **self.in_flight_figures(),
            "rejected_by_reason": reasons,
            "endpoints": endpoints or {},
        }

    def write_report(
        self, path: str, *, outcome: str, endpoints: dict[str, dict[str, int]] | None = None
    ) -> None:
        """Write the JSON run report: whole, 0600, renamed over the previous one."""
        report = json.dumps(self.as_dict(outcome=outcome, endpoints=endpoints), indent=2) + "\n"
        replace_private(path, "run_report_path", report.encode())
