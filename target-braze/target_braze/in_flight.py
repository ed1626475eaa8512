"""`InFlight`: how many requests are in flight at once, sized by rate x latency (Little's law).

Keeping a rate R going against a Braze that answers after L seconds needs about R x L
requests in flight: 1,000 requests/s at 300 ms is 300. R is what the rate limiter allows
(Braze's 1,000/s when the client-side limit is off) and L the latency it measures from a
send to its answer; before any answer, how long every request in flight has been out is
a lower bound (only before: afterwards the measured latency rules, and a wait that a busy
machine stretched, one of 0.3 s seen here, no longer opens dozens of slots at once). The
count grows when the main thread, which builds the requests, finds
every slot busy, the process idle meanwhile (the requests in flight wait for Braze, not
for our own threads), and rate x latency says more would be sent; never while senders
wait in the rate limiter (then the limit, not the latency, holds the run); never above
`max_concurrent_requests`. It shrinks when a stretch of requests found most slots idle.

Each slot is served by one sender thread, opened the first time the slot is used. Every
runnable sender thread costs the main thread GIL hand-overs, so the first `MINIMUM_SLOTS`
open as requests need them (into a stand-in answering at once, four kept the main thread
from waiting for answers, for the least CPU), and more only when rate x latency asks.
The main thread pays one uncontended lock per request here.

The rate in rate x latency is the lower of the limiter's and the rate at which the main
thread builds requests (the time from one slot taken to the next, its waits for a slot
left out): a run that cannot build 1,000 requests a second gains nothing from the
requests in flight that rate would need, and pays for their threads.

Whether a wait was Braze's: the process used little CPU meanwhile, and (where the client
can tell, `awaiting_braze`) at least half of the requests in flight were still waiting
for their answer to arrive. On a machine busy with other work the first test alone is
fooled: the process gets little CPU, so it looks idle while its answers have arrived and
wait for its own threads; the latency it measures (send to answer read) then includes
those waits, and rate x latency asked for more. Into a stand-in answering at once on a
loaded 2-core machine that opened 8 to 15 slots where 4 or 5 kept up, and capping them
at 5 took 14% less CPU (BENCHMARKS.md, "The send path on urllib3").
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
_BUILD_WEIGHT = 0.1  # of the newest request in the moving average of building times
_FIRST_WAIT_SECONDS = 0.002
_LONGEST_WAIT_SECONDS = 0.05
_WHILE_WAITING_EVERY = 0.5


class InFlight:
    """The in-flight slots; `take` is for the main thread, `release` for the senders."""

    def __init__(
        self,
        ceiling: int,
        open_thread: Callable[[], None],
        needed: Callable[[float, float], float],
        awaiting_braze: Callable[[], int | None] | None = None,
    ) -> None:
        """Up to `ceiling` slots.

        `open_thread` starts one more sender thread; `needed(latency_at_least,
        rate_at_most)` says how many requests in flight the rate (at most the rate requests
        are built at) and latency call for; `awaiting_braze()` how many
        requests in flight still wait for their answer to arrive (None: unknown).
        """
        self.ceiling = max(1, ceiling)
        self.allowed = min(MINIMUM_SLOTS, self.ceiling)
        self.peak = 0
        self.ceiling_waits = 0  # the main thread waited while more would have been sent
        self.threads = 0
        self._count = 0
        self._needed = needed
        self._awaiting_braze = awaiting_braze
        self._open_thread = open_thread
        self._cond = threading.Condition(threading.Lock())
        self._main_waits = False
        self._period = 0
        self._period_peak = 0
        self._answered = False  # a request in flight ended: the limiter measures latency
        self._slot_taken_at = 0.0  # when the main thread last got a slot
        self._build_seconds = 0.0  # moving average of its time from one slot to the next

    @property
    def current(self) -> int:
        """Requests in flight now (a snapshot)."""
        return self._count

    def take(self, while_waiting: Callable[[], None]) -> None:
        """Block until a slot is free and take it; `while_waiting` runs every 0.5 s of waiting."""
        now = time.monotonic()
        if self._slot_taken_at:
            built = now - self._slot_taken_at
            average = self._build_seconds
            self._build_seconds = average + _BUILD_WEIGHT * (built - average) if average else built
        with self._cond:
            taken = self._count < self.allowed
            if taken:
                self._taken()
        if not taken:
            self._wait(while_waiting)
            now = time.monotonic()
        self._slot_taken_at = now
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
        if self._count < self.allowed:  # a slot came free meanwhile
            return False
        if self._awaiting_braze is not None:
            awaiting = self._awaiting_braze()
            if awaiting is not None and awaiting * 2 < self._count:
                return False  # most answers are here, waiting for our own threads
        # Outside our lock: `needed` takes the rate limiter's.
        built_per_second = 1.0 / self._build_seconds if self._build_seconds else math.inf
        age = 0.0 if self._answered else elapsed
        needed = math.ceil(self._needed(age, built_per_second))
        with self._cond:
            if needed > self.allowed:
                self.allowed = min(self.ceiling, needed)
            return needed > self.ceiling and self._count >= self.ceiling

    def release(self) -> None:
        """A request ended (sender thread): its slot is free again."""
        with self._cond:
            self._count -= 1
            self._answered = True
            if self._main_waits:
                self._cond.notify()
