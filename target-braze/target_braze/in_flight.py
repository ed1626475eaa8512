"""`InFlightSlots`: how many requests are in flight at once, opened as Braze's latency needs.

Each slot is served by one sender thread. Up to `max_concurrent_requests` slots exist,
but every runnable sender thread costs the main thread GIL hand-overs, so beyond the
first `MINIMUM_SLOTS` a slot opens only while it pays. Measured on 100k wide records
into a stand-in that answers at once: 4 slots 1.2 CPU-s, 16 slots 1.3, and 1 slot 1.33
(its network waits were not overlapped with building the next request).

The rule (`SlotDecider`) looks at what the main thread, which builds the requests, finds
when it needs a slot. If every slot is busy, and busy requests are out waiting for
Braze's answer while no answer sits unread, Braze's latency is what holds the run up:
another slot lets the main thread build on. If an answer has arrived and its thread
waits for the GIL, we are what holds the run up, and another slot would only add a
thread (a request still being sent, or waiting for the rate limit or a retry, says
neither). It looks after a millisecond of waiting, which gives the senders the GIL: a
request handed over just before is sent by then, and one that Braze answers at once has
ended. If a slot was free at every request of a while, one is retired (its thread
sleeps), down to the minimum. The decision is by what the sockets and slots are doing,
not by how long anything took. Slots double while every wait is Braze's (as TCP's slow
start does): against a Braze 30 ms away all 16 open within the first few dozen requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: Requests between two decisions.
SETTLE_REQUESTS = 8
#: Slots that open without waiting for a reason, as soon as requests need them: at Braze's
#: smallest latency (a stand-in answering at once) four kept the main thread from waiting
#: for answers, for the least CPU (1.2 CPU-s per 100k records, where one slot took 1.33
#: and sixteen 1.3).
MINIMUM_SLOTS = 4
#: How long a wait lasts before the main thread looks at what the busy requests are doing.
LOOK_AFTER_SECONDS = 0.001


class SlotDecider:
    """The rule alone: after each request, how many slots to open (or retire: -1)."""

    def __init__(self, maximum: int, minimum: int = 1) -> None:
        """`minimum` slots to begin with (never fewer); never more than `maximum`."""
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.slots = self.minimum
        self._requests = 0
        self._braze_waits = 0  # the main thread waited, and only for Braze's answers
        self._free_at_once = 0  # a slot was free when the main thread asked

    def after_request(self, *, waited: bool, for_braze: bool) -> int:
        """What the main thread found: it had to wait; every busy request awaited Braze."""
        self._requests += 1
        if not waited:
            self._free_at_once += 1
        elif for_braze:
            self._braze_waits += 1
        if self._requests < SETTLE_REQUESTS:
            return 0
        change = 0
        if self._braze_waits == self._requests:
            change = min(self.slots, self.maximum - self.slots)  # double, up to the maximum
        elif self._braze_waits * 4 >= self._requests:
            change = min(1, self.maximum - self.slots)
        elif self._free_at_once == self._requests and self.slots > self.minimum:
            change = -1
        self.slots += change
        self._requests = self._braze_waits = self._free_at_once = 0
        return change


class InFlightSlots:
    """Free slots as a semaphore, resized by `SlotDecider`; `take` is for the main thread."""

    def __init__(
        self,
        maximum: int,
        open_thread: Callable[[], None],
        answers_pending: Callable[[], tuple[int, int]],
    ) -> None:
        """Start with no slot.

        `open_thread` starts one more sender thread, when a slot opens for the first time;
        `answers_pending` counts requests sent with no answer yet, and those whose answer
        is arriving but not read.
        """
        self._decider = SlotDecider(maximum, MINIMUM_SLOTS)
        self._unopened = self._decider.slots  # the first slots open as requests need them
        self._free = threading.Semaphore(0)
        self._open_thread = open_thread
        self._answers_pending = answers_pending
        self._lock = threading.Lock()
        self._held = 0  # retired slots, kept here (free, but not handed out)
        self._to_retire = 0  # retirements waiting for a busy slot to come back
        self.threads = 0

    @property
    def slots(self) -> int:
        """Slots in use now."""
        return self._decider.slots

    def take(self, while_waiting: Callable[[], None]) -> None:
        """Block until a slot is free and take it; `while_waiting` runs every 0.5 s of waiting."""
        waited = for_braze = False
        if self._free.acquire(blocking=False):
            pass
        elif self._unopened:
            self._unopened -= 1
            self._add_thread()  # one of the first slots, taken by this request
        else:
            waited = True
            # First a moment for the senders (this wait releases the GIL): a request just
            # handed over is sent by then, and one Braze answers at once is done.
            if not self._free.acquire(timeout=LOOK_AFTER_SECONDS):
                awaiting, unread = self._answers_pending()
                for_braze = awaiting > 0 and unread == 0
                while not self._free.acquire(timeout=0.5):
                    while_waiting()
        change = self._decider.after_request(waited=waited, for_braze=for_braze)
        for _ in range(change):
            self._open()
        if change < 0:
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
