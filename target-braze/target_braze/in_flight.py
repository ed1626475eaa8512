"""`InFlight`: how many requests are in flight at once, sized by rate x latency (Little's law).

Keeping a rate R going against a Braze that answers after L seconds needs about R x L
requests in flight: 1,000 requests/s at 300 ms is 300. R is what the rate limiter allows
(Braze's 1,000/s when the client-side limit is off) and L the latency it measures from a
send to its answer; before any answer, how long every request in flight has been out is
a lower bound. The count grows when the main thread, which builds the requests, finds
every slot busy, the process idle meanwhile (the requests in flight wait for Braze, not
for our own threads), and rate x latency says more would be sent; never while senders
wait in the rate limiter (then the limit, not the latency, holds the run); never above
`max_concurrent_requests`. It shrinks when a stretch of requests found most slots idle.

Each slot is served by one sender thread, opened the first time the slot is used. Every
runnable sender thread costs the main thread GIL hand-overs, so the first `MINIMUM_SLOTS`
open as requests need them (into a stand-in answering at once, four kept the main thread
from waiting for answers, for the least CPU), and more only when rate x latency asks.
The main thread pays one uncontended lock per request here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

#: Slots open at once, as requests need them, without waiting for a reason.
MINIMUM_SLOTS = 4
#: The share of one core the process may have used while the main thread waited for a
#: slot, for the wait to count as Braze's (not our own threads').
BUSY_SHARE = 0.5
#: Requests between two looks at whether to shrink.
SHRINK_PERIOD = 256
_FIRST_WAIT_SECONDS = 0.002
_LONGEST_WAIT_SECONDS = 0.05
_WHILE_WAITING_EVERY = 0.5


class InFlight:
    """The in-flight slots; `take` is for the main thread, `release` for the senders."""

    def __init__(
        self,
        ceiling: int,
        open_thread: Callable[[], None],
        needed: Callable[[float], float],
    ) -> None:
        """Up to `ceiling` slots.

        `open_thread` starts one more sender thread; `needed(latency_at_least)` says how
        many requests in flight the rate and latency call for.
        """
        self.ceiling = max(1, ceiling)
        self.allowed = min(MINIMUM_SLOTS, self.ceiling)
        self.peak = 0
        self.ceiling_waits = 0  # the main thread waited while more would have been sent
        self.threads = 0
        self._count = 0
        self._needed = needed
        self._open_thread = open_thread
        self._cond = threading.Condition(threading.Lock())
        self._main_waits = False
        self._period = 0
        self._period_peak = 0

    @property
    def current(self) -> int:
        """Requests in flight now (a snapshot)."""
        return self._count

    def take(self, while_waiting: Callable[[], None]) -> None:
        """Block until a slot is free and take it; `while_waiting` runs every 0.5 s of waiting."""
        with self._cond:
            taken = self._count < self.allowed
            if taken:
                self._taken()
        if not taken:
            self._wait(while_waiting)
        if self._count > self.threads:
            self.threads += 1
            self._open_thread()

    def _taken(self) -> None:
        # Under the lock.
        self._count += 1
        count = self._count
        self.peak = max(self.peak, count)
        self._period_peak = max(self._period_peak, count)
        self._period += 1
        if self._period >= SHRINK_PERIOD:
            if self._period_peak * 2 < self.allowed:
                self.allowed = max(MINIMUM_SLOTS, self._period_peak * 2)
            self._period = self._period_peak = 0

    def _wait(self, while_waiting: Callable[[], None]) -> None:
        started = time.monotonic()
        cpu_started = time.process_time()
        next_call = started + _WHILE_WAITING_EVERY
        step = _FIRST_WAIT_SECONDS
        at_ceiling = False
        while True:
            with self._cond:
                if self._count < self.allowed:
                    self._taken()
                    if at_ceiling:
                        self.ceiling_waits += 1
                    return
                self._main_waits = True
                released = self._cond.wait(step)
                self._main_waits = False
            if not released:
                at_ceiling |= self._grow(started, cpu_started)
            # Waits lengthen: a Braze that answers at once ends the first; a distant one
            # is looked at again as its requests age (their age bounds the latency).
            step = min(step * 2, _LONGEST_WAIT_SECONDS)
            if time.monotonic() >= next_call:
                next_call += _WHILE_WAITING_EVERY
                while_waiting()

    def _grow(self, started: float, cpu_started: float) -> bool:
        """Open what rate x latency asks, if the wait was Braze's; True: the ceiling held.

        While the main thread waited, the process was idle if every request in flight
        was waiting for Braze; busy, the requests were waiting for our own threads (the
        GIL), and more of them would only add hand-overs (into a stand-in answering at
        once, 25 slots took 60% more CPU than 4).
        """
        elapsed = time.monotonic() - started
        if time.process_time() - cpu_started > BUSY_SHARE * elapsed:
            return False
        # Outside our lock: `needed` takes the rate limiter's.
        needed = math.ceil(self._needed(elapsed))
        with self._cond:
            if needed > self.allowed:
                self.allowed = min(self.ceiling, needed)
            return needed > self.ceiling and self._count >= self.ceiling

    def release(self) -> None:
        """A request ended (sender thread): its slot is free again."""
        with self._cond:
            self._count -= 1
            if self._main_waits:
                self._cond.notify()
