"""`InFlightSlots`: how many requests are in flight at once, opened as Braze's latency needs.

Each slot is served by one sender thread. Up to `max_concurrent_requests` slots exist,
but each runnable sender thread costs the main thread GIL hand-overs, so slots are opened
only while they pay: measured on 100k records into a stand-in that answers at once, 16
busy senders used 1.6 CPU-s where two used 1.05, for the same wall time.

The rule (`SlotDecider`) is Little's law seen from the main thread, which builds the
requests. Per request it spends `built` seconds building and `waited` seconds waiting
for a free slot. While it waits more than a quarter of its building time (smoothed over
recent requests), the slots are all busy with Braze's latency: one more is opened, so
the main thread keeps building (at least 80% of the rate it could reach). When it has
not waited at all for a while, a slot is idle: one is retired (its thread sleeps). A
request held up only by the GIL ends as soon as the main thread waits and releases it,
so that wait is short and opens nothing. Against a Braze that answers in 30 ms, all 16
open within the first few dozen requests; against one that answers at once, one or two
serve the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Requests between two changes of the slot count (the averages settle in between).
SETTLE_REQUESTS = 16
#: Weight of the newest request in the smoothed times.
_SMOOTHING = 1 / 8
#: Waiting more than this share of the building time opens a slot.
_OPEN_ABOVE = 1 / 4
#: Waiting less than this share of it retires one.
_RETIRE_BELOW = 1 / 64


class SlotDecider:
    """The rule alone: after each request, open (+1), retire (-1) or keep (0) a slot."""

    def __init__(self, maximum: int) -> None:
        """One slot to begin with; never more than `maximum`."""
        self.maximum = max(1, maximum)
        self.slots = 1
        self._built = 0.0
        self._waited = 0.0
        self._since_change = 0

    def after_request(self, built: float, waited: float) -> int:
        """Seconds the main thread spent building a request and waiting for its slot."""
        self._built += (built - self._built) * _SMOOTHING
        self._waited += (waited - self._waited) * _SMOOTHING
        self._since_change += 1
        if self._since_change < SETTLE_REQUESTS:
            return 0
        change = 0
        if self._waited > self._built * _OPEN_ABOVE and self.slots < self.maximum:
            change = 1
        elif self._waited < self._built * _RETIRE_BELOW and self.slots > 1:
            change = -1
        if change:
            self.slots += change
            self._since_change = 0
            self._waited = self._built * (_OPEN_ABOVE + _RETIRE_BELOW) / 2  # start afresh
        return change


class InFlightSlots:
    """Free slots as a semaphore, resized by `SlotDecider`; `take` is for the main thread."""

    def __init__(
        self,
        maximum: int,
        open_thread: Callable[[], None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`open_thread` starts one more sender thread, when a slot opens for the first time."""
        self._decider = SlotDecider(maximum)
        self._free = threading.Semaphore(0)
        self._open_thread = open_thread
        self._clock = clock
        self._lock = threading.Lock()
        self._held = 0  # retired slots, kept here (free, but not handed out)
        self._to_retire = 0  # retirements waiting for a slot to come back
        self.threads = 0
        self._last = clock()

    @property
    def slots(self) -> int:
        """Slots in use now."""
        return self._decider.slots

    def take(self, while_waiting: Callable[[], None]) -> None:
        """Block until a slot is free and take it; `while_waiting` runs every 0.5 s of waiting."""
        started = self._clock()
        if self.threads == 0:
            self._add_thread()  # the first slot, taken by this request
        elif not self._free.acquire(blocking=False):
            while not self._free.acquire(timeout=0.5):
                while_waiting()
        now = self._clock()
        change = self._decider.after_request(started - self._last, now - started)
        self._last = now
        if change > 0:
            self._open()
        elif change < 0:
            self._retire()

    def release(self) -> None:
        """A request ended (sender thread): its slot is free again, or retired."""
        with self._lock:
            if self._to_retire:
                self._to_retire -= 1
                self._held += 1
                return
        self._free.release()

    def _open(self) -> None:
        with self._lock:
            if self._to_retire:
                self._to_retire -= 1  # not retired after all: it is still in use
                return
            if self._held:
                self._held -= 1
                self._free.release()
                return
        self._add_thread()
        self._free.release()

    def _retire(self) -> None:
        with self._lock:
            if self._free.acquire(blocking=False):
                self._held += 1
            else:
                self._to_retire += 1

    def _add_thread(self) -> None:
        self.threads += 1
        self._open_thread()
