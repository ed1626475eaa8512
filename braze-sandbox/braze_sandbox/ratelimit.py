"""Braze's rate limit: a sliding window of arrivals plus an optional clock-hour limit.

Braze does not document the exact shape of its window; a sliding window counting
arrivals is the strictest reading, so a client that stays under it stays under Braze.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

RESET_STYLES = ("epoch", "seconds")
RETRY_AFTER_STYLES = ("none", "x-ratelimit", "retry-after")


@dataclass
class RateLimitSettings:
    """``limit`` requests per ``window`` seconds (0 = off), and per clock hour."""

    limit: int = 3000
    window: float = 3.0
    hourly_limit: int = 0
    reset_style: str = "epoch"
    retry_after_style: str = "none"


class RateLimiter:
    """Admits or refuses each arrival and produces Braze's rate-limit headers."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.settings = settings
        self._admitted: deque[float] = deque()
        self._hour = -1
        self._hour_count = 0

    def reset(self) -> None:
        """Forget all arrivals."""
        self._admitted.clear()
        self._hour = -1
        self._hour_count = 0

    def admit(self, now: float) -> tuple[bool, dict[str, str]]:
        """Count one arrival at monotonic time ``now``; return (admitted, headers).

        Only admitted requests take a slot: a refused one does not extend the wait.
        """
        s = self.settings
        if s.limit <= 0 and s.hourly_limit <= 0:
            return True, {}
        wall = time.time()
        admitted = True
        headers: dict[str, str] = {}
        reset_in = 0.0
        if s.limit > 0:
            window = self._admitted
            horizon = now - s.window
            while window and window[0] <= horizon:
                window.popleft()
            if len(window) >= s.limit:
                admitted = False
                reset_in = window[0] + s.window - now
            else:
                window.append(now)
                reset_in = window[0] + s.window - now
            headers["X-RateLimit-Limit"] = str(s.limit)
            headers["X-RateLimit-Remaining"] = str(max(0, s.limit - len(window)))
        if s.hourly_limit > 0:
            hour = int(wall // 3600)
            if hour != self._hour:
                self._hour, self._hour_count = hour, 0
            if admitted and self._hour_count >= s.hourly_limit:
                admitted = False
                if s.limit > 0:
                    self._admitted.pop()
                reset_in = (hour + 1) * 3600 - wall
            elif admitted:
                self._hour_count += 1
            if s.limit <= 0:
                headers["X-RateLimit-Limit"] = str(s.hourly_limit)
                headers["X-RateLimit-Remaining"] = str(max(0, s.hourly_limit - self._hour_count))
                if admitted:
                    reset_in = (hour + 1) * 3600 - wall
        headers["X-RateLimit-Reset"] = self._reset_value(reset_in, wall)
        if not admitted:
            headers.update(self.retry_after_headers(reset_in))
        return admitted, headers

    def _reset_value(self, reset_in: float, wall: float) -> str:
        if self.settings.reset_style == "seconds":
            return str(max(0, math.ceil(reset_in)))
        return str(math.ceil(wall + reset_in))

    def retry_after_headers(self, wait: float) -> dict[str, str]:
        """The retry hint of a 429 in the configured style."""
        style = self.settings.retry_after_style
        seconds = str(max(1, math.ceil(wait)))
        if style == "x-ratelimit":
            return {"X-Ratelimit-Retry-After": seconds}
        if style == "retry-after":
            return {"Retry-After": seconds}
        return {}

    def headers_for_injected_429(self, now: float) -> dict[str, str]:
        """Headers of an injected 429: as if the window were full."""
        s = self.settings
        wall = time.time()
        window = self._admitted
        wait = (window[0] + s.window - now) if window else s.window
        wait = max(wait, 0.0)
        headers = {}
        if s.limit > 0:
            headers = {
                "X-RateLimit-Limit": str(s.limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": self._reset_value(wait, wall),
            }
        headers.update(self.retry_after_headers(wait))
        return headers
