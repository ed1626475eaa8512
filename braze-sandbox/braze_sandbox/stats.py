"""What the sandbox observed: counters a test or benchmark asserts on.

``max_arrivals_in_window`` is exact: the busiest interval of window length always ends at
an arrival, so counting, at each arrival, the arrivals of the preceding window finds it.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any


class SandboxStats:
    """Counters of requests, outcomes, injected faults and client behaviour."""

    def __init__(self, window: float, log_size: int = 100_000) -> None:
        self.window = window
        self.log_size = log_size
        self.reset()

    def reset(self) -> None:
        """Zero everything."""
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.objects_applied = 0
        self.data_points = 0
        self.attributes_processed = 0
        self.events_processed = 0
        self.purchases_processed = 0
        self.rate_limited = 0
        self.injected: Counter[str] = Counter()
        self.errors_by_type: Counter[str] = Counter()
        self.max_arrivals_in_window = 0
        self.concurrent_user_conflicts = 0
        self.max_objects_in_request = 0
        self.max_body_bytes_seen = 0
        self.max_in_flight = 0
        self.bulk_requests = 0
        self.skipped_unknown_user = 0
        self.nested_updates_dropped = 0
        self._arrivals: deque[float] = deque()
        # (received_at, answered_at, status, objects, bytes, duration_ms) per request.
        self.log: deque[tuple[float, float, int, int, int, float]] = deque(maxlen=self.log_size)

    def set_window(self, window: float) -> None:
        """Measure against a new window length from now on."""
        if window != self.window:
            self.window = window
            self._arrivals.clear()

    def arrival(self, now: float) -> None:
        """Count a ``/users/track`` arrival at monotonic time ``now``."""
        arrivals = self._arrivals
        horizon = now - self.window
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()
        arrivals.append(now)
        self.max_arrivals_in_window = max(self.max_arrivals_in_window, len(arrivals))

    def as_json(self) -> dict[str, Any]:
        """The ``GET /_sandbox/stats`` document."""
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "objects_applied": self.objects_applied,
            "data_points": self.data_points,
            "attributes_processed": self.attributes_processed,
            "events_processed": self.events_processed,
            "purchases_processed": self.purchases_processed,
            "rate_limited": self.rate_limited,
            "injected": dict(self.injected),
            "errors_by_type": dict(self.errors_by_type),
            "max_arrivals_in_window": self.max_arrivals_in_window,
            "rate_window_seconds": self.window,
            "concurrent_user_conflicts": self.concurrent_user_conflicts,
            "max_objects_in_request": self.max_objects_in_request,
            "max_body_bytes_seen": self.max_body_bytes_seen,
            "max_in_flight": self.max_in_flight,
            "bulk_requests": self.bulk_requests,
            "skipped_unknown_user": self.skipped_unknown_user,
            "nested_updates_dropped": self.nested_updates_dropped,
        }
