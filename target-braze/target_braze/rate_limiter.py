"""`RateLimiter`: stays under Braze's request window and hourly budget, shared by all senders.

Braze counts request *arrivals* in a window (3,000 per 3 s by default) without saying
exactly how the window slides. Counting each request at its send time lets network
jitter push more than the limit into one of Braze's windows. Instead each request takes
one of `limit` slots when it is sent, and the slot cools until
`max(send + window + margin, response arrival)`.

Why that is enough, and what it assumes: a request written out at `s` (the transport
notes when: a new connection's handshakes and any wait for the GIL come before, and
vary far more than the network) arrives at Braze between
`s + d_min` and `s + d_max` (one-way network delay), and always before its response
comes back. The next request on the same slot is sent no earlier than
`s + window + margin`, so it arrives no earlier than `s + window + margin + d_min`: at
least `window` after the first arrived, as long as the one-way delay varies by no more
than `margin` (`rate_limit_margin_seconds`, 0.1 s by default; delay on one path varies
by milliseconds, so this is a wide allowance). If it ever varied more, Braze would answer
429 to the excess: a 429 is never applied, and it is retried. So no window of Braze's
sees more than `limit` arrivals. The slot no longer waits a whole window *after* the
response (which capped a run at limit / (window + latency): 75% at 1 s latency); at
latency L it allows limit / max(window + margin, L) requests per second.

It also obeys Braze's own view: when `X-RateLimit-Remaining` says fewer requests are
left than our slots allow (the limit is shared with everything else the customer sends),
new requests wait until `X-RateLimit-Reset`; a 429 pauses every sender until the reset it
names. And an optional hourly budget (`max_requests_per_hour`, Braze's MAU contracts):
requests are counted per clock hour (UTC), and once the hour's budget is spent every
request waits for the next hour. A request sent within `margin` of the hour's end may
arrive in the next one, so it is counted in both.

The limiter also measures what the in-flight sizing needs (`in_flight_needed`): the
request rate it allows and the latency it sees between a send and its answer.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("target_braze")

#: Requests per second assumed when the client-side limit is off: Braze's documented burst
#: limit (3,000 per 3 s).
BRAZE_REQUESTS_PER_SECOND = 1000.0
#: Requests in flight beyond rate x latency, for variation in latency.
IN_FLIGHT_HEADROOM = 1.2
_LATENCY_WEIGHT = 0.1  # of the newest answer in the moving average
_POLL_SECONDS = 0.1  # a pause or a cooling slot may end sooner than first computed
_HOUR = 3600.0


class RateLimiter:
    """Sliding-window slots, an hourly budget, and pauses Braze imposes through its headers."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        margin_seconds: float = 0.1,
        per_hour: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """A `limit` or `per_hour` of 0 turns that limit off (Braze's answers still count)."""
        self.limit = limit
        self.window = window_seconds
        self.margin = margin_seconds
        self.per_hour = per_hour
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition()
        self._in_use = 0
        self._waiting = 0  # senders held here: more in flight would only wait longer
        self._cooling: list[float] = []  # heap of times at which a slot frees up
        self._paused_until = 0.0
        self._hour = -1  # the clock hour counted, its requests, and those of the next
        self._hour_sent = 0
        self._next_hour_sent = 0
        self._announced_hour = -1
        self._latency = 0.0

    @property
    def in_use(self) -> int:
        """Requests sent and not yet answered (a snapshot)."""
        return self._in_use

    def acquire(self) -> float:
        """Block until a request may be sent, take a slot; return the send time for `release`."""
        waited = False
        while True:
            announce = ""
            with self._cond:
                wait, announce = self._wait_needed()
                if wait <= 0:
                    if waited:
                        self._waiting -= 1
                    self._in_use += 1
                    return self._clock()
                if not waited:
                    waited = True
                    self._waiting += 1
                if not announce:
                    self._cond.wait(timeout=min(max(wait, 0.001), _POLL_SECONDS))
                    continue
            logger.warning("%s", announce)  # outside the lock: no I/O while holding it

    def _wait_needed(self) -> tuple[float, str]:
        """Seconds to wait (<= 0: go, and the request is counted), and a line to log once."""
        now = self._clock()
        while self._cooling and self._cooling[0] <= now:
            heapq.heappop(self._cooling)
        wait = self._paused_until - now
        if wait > 0:
            return wait, ""
        if self.limit and self._in_use + len(self._cooling) >= self.limit:
            return (self._cooling[0] - now if self._cooling else _POLL_SECONDS), ""
        if self.per_hour:
            return self._hourly_wait()
        return 0.0, ""

    def _hourly_wait(self) -> tuple[float, str]:
        wall = self._wall()
        hour = int(wall // _HOUR)
        if hour != self._hour:
            self._hour_sent = self._next_hour_sent if hour == self._hour + 1 else 0
            self._next_hour_sent = 0
            self._hour = hour
        if self._hour_sent >= self.per_hour:
            wait = (hour + 1) * _HOUR - wall
            if self._announced_hour == hour:
                return wait, ""
            self._announced_hour = hour
            return wait, (
                f"max_requests_per_hour ({self.per_hour}) is spent for this clock hour: "
                f"requests wait {wait:.0f} s for the next hour; the hourly budget, not this "
                "run, sets the pace"
            )
        self._hour_sent += 1
        if int((wall + self.margin) // _HOUR) != hour:
            self._next_hour_sent += 1  # may arrive in the next hour: it counts there too
        return 0.0, ""

    def release(self, sent_at: float) -> None:
        """The answer arrived (or the request failed): the slot cools, as the module says.

        `sent_at`: when the request was written out (on this limiter's clock), or when
        `acquire` returned if it never was.
        """
        with self._cond:
            now = self._clock()
            self._in_use -= 1
            latency = now - sent_at
            self._latency = (
                latency
                if not self._latency
                else self._latency + _LATENCY_WEIGHT * (latency - self._latency)
            )
            if self.limit:
                heapq.heappush(self._cooling, max(sent_at + self.window + self.margin, now))
            if self._waiting:
                self._cond.notify_all()

    def pause_for(self, seconds: float) -> None:
        """Hold every new request for `seconds` (Braze said the window is spent)."""
        with self._cond:
            until = self._clock() + seconds
            longer = until > self._paused_until + 1.0
            self._paused_until = max(self._paused_until, until)
        if longer and seconds > max(self.window, 1.0) * 2:
            logger.warning(
                "Braze says its rate limit is spent for %.0f s (shared with other traffic, or "
                "an hourly limit): every request waits until then",
                seconds,
            )

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

    def in_flight_needed(
        self, latency_at_least: float = 0.0, rate_at_most: float = math.inf
    ) -> float:
        """Requests in flight that keep the allowed rate going (Little's law), with headroom.

        0 while senders wait here: then the limit, not Braze's latency, holds requests
        back, and more in flight would only wait longer. `latency_at_least` is what the
        caller knows before any answer arrived (how long every request in flight has been
        out); `rate_at_most` the rate at which the run can build requests, when it is below
        the limit's (more in flight than that rate needs would only add sender threads).
        """
        with self._cond:
            if self._waiting:
                return 0.0
            latency = max(self._latency, latency_at_least)
        rate = self.limit / (self.window + self.margin) if self.limit else BRAZE_REQUESTS_PER_SECOND
        rate = min(rate, rate_at_most)
        needed = rate * latency * IN_FLIGHT_HEADROOM
        return min(needed, float(self.limit)) if self.limit else needed

    def latency(self) -> float:
        """The moving average of seconds from a send to its answer (0 before any)."""
        return self._latency
