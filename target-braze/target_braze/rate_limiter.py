"""`RateLimiter`: stays provably under Braze's request window, shared by all senders.

Braze counts request arrivals in a window (3,000 per 3 s by default) without saying
exactly how the window slides. Counting each request at its send time lets network
jitter push more than the limit into one of Braze's windows. Instead each request holds
one of `limit` slots from the moment it is sent until `window` seconds after its
response arrived: two uses of one slot then reach Braze at least `window` apart, so no
window anywhere ever sees more than `limit` arrivals.

It also obeys Braze's own view: when `X-RateLimit-Remaining` says fewer requests are
left than are in flight (the limit is shared with everything else the customer sends),
new requests wait until `X-RateLimit-Reset`.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Sliding-window slots plus a pause Braze can impose through its headers."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A `limit` of 0 turns client-side limiting off (Braze's answers still count)."""
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._in_use = 0
        self._cooling: list[float] = []  # heap of times at which a slot frees up
        self._paused_until = 0.0

    def acquire(self) -> None:
        """Block until a request may be sent, and take a slot for it."""
        with self._cond:
            while True:
                now = self._clock()
                while self._cooling and self._cooling[0] <= now:
                    heapq.heappop(self._cooling)
                wait = self._paused_until - now
                if wait <= 0 and self.limit:
                    if self._in_use + len(self._cooling) < self.limit:
                        break
                    wait = self._cooling[0] - now if self._cooling else 0.05
                elif wait <= 0:
                    break
                # Short waits: a pause or a cooling slot may end sooner than first computed.
                self._cond.wait(timeout=min(max(wait, 0.001), 0.1))
            self._in_use += 1

    def release(self) -> None:
        """The response arrived (or the request failed): the slot cools for one window."""
        with self._cond:
            self._in_use -= 1
            if self.limit:
                heapq.heappush(self._cooling, self._clock() + self.window)
            self._cond.notify_all()

    def pause_for(self, seconds: float) -> None:
        """Hold every new request for `seconds` (Braze said the window is spent)."""
        with self._cond:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def observe(self, remaining: int | None, reset_in: float | None, in_flight: int) -> None:
        """Slow down when Braze says less is left than this limiter believes.

        Braze's `X-RateLimit-Remaining` counts everything the customer sends. While it is
        at least what our own slots allow, our slots already keep us under the limit and
        a pause would only waste the window. Below that, someone else is using the shared
        limit: hold new requests until `X-RateLimit-Reset`.
        """
        if remaining is None or reset_in is None:
            return
        if self.limit:
            with self._cond:
                now = self._clock()
                while self._cooling and self._cooling[0] <= now:
                    heapq.heappop(self._cooling)
                ours = self.limit - self._in_use - len(self._cooling)
            # Alone on the limit, every arrival Braze counts holds one of our slots, so
            # Braze's remaining is never below our free slots.
            if remaining >= ours:
                return
        elif remaining > in_flight:
            return
        self.pause_for(reset_in)
