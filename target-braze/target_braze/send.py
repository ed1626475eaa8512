"""Send: objects staged into requests, sent with as many in flight as rate and latency need.

`InFlight`: how many requests are in flight at once, sized by rate x latency (Little's law).

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

`UsersTrackSender`: sends batches concurrently and settles every record with Braze's answer.

The flow of one batch: `submit` (main thread) waits until no in-flight request touches
the same users (so one user's updates reach Braze in order), takes one of the in-flight
slots (back-pressure: memory stays flat; `InFlight` opens them, up to
`max_concurrent_requests`, as rate x latency needs), and hands the batch to a sender
thread. There `client.send` gets Braze's final answer; 400/413 split the batch; an
ambiguous answer to a request holding events or purchases (Braze may have applied it)
settles its objects as of unknown delivery; `errors[]` entries are mapped back to their
objects; each object is then accepted or rejected through the `Settlement`, which
settles its records in the checkpoint.

`Delivery`: the way from a built Braze object to a request in flight.

Objects arrive in the tap's order (main thread). With the delivery ledger on, they are
staged a few requests' worth at a time so the ledger can look them up in one query; the ledger
drops what Braze already holds (those records settle as `unchanged` or `duplicates`).
What remains is packed, in order, into `UsersTrackBatch`es, and each full batch goes to
the sender. Requests are built across streams in arrival order, so two streams updating
one user reach Braze in the order the tap sent them.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING

from target_braze.client import Outcome, Sends
from target_braze.errors import TargetBrazeError
from target_braze.objects import NOT_RESEND_SAFE, BrazeObject
from target_braze.pack import RequestBatch, RequestLimits, UsersTrackBatch
from target_braze.report import RunStats
from target_braze.settle import Settlement

if TYPE_CHECKING:
    from target_braze.ledger import Ledger


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


logger = logging.getLogger("target_braze")

# Braze errors that no resend can fix: the object is rejected and never retried.
PERMANENT_ERROR_HINTS = {
    "BLACKLISTED_EXTERNAL_USER_ID": "Braze has blocklisted this external_id",
    "EXTERNAL_USER_ID_TOO_LARGE": "the external_id is longer than Braze allows",
    "EMAIL_BAD_FORMAT": "Braze rejects the email address format",
}

UNINDEXED_RESENDS = 2

_Work = tuple[Future[None], RequestBatch] | None  # None: the thread ends


class UsersTrackSender:
    """Concurrent delivery of `UsersTrackBatch`es (or another endpoint's), in per-user order."""

    def __init__(
        self,
        client: Sends,
        settlement: Settlement,
        stats: RunStats,
        max_concurrent: int,
        stop: threading.Event,
        in_flight_needed: Callable[[float, float], float] | None = None,
    ) -> None:
        """Start the sender threads; `stop` is set when a request fails the run.

        `in_flight_needed` (the rate limiter's) sizes the requests in flight; without it
        (a dry run) the first few slots are all there is.
        """
        self._client = client
        self._settlement = settlement
        self._stats = stats
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._slots = InFlight(
            max_concurrent,
            self._start_thread,
            in_flight_needed or _no_latency,
            # Optional: a client that cannot tell (a dry run) sizes by CPU and latency alone.
            getattr(client, "awaiting_braze", None),
        )
        stats.watch_in_flight(self._slots)
        self._lock = threading.Lock()
        self._users_in_flight: dict[tuple[str, str], Future[None]] = {}
        self._futures: set[Future[None]] = set()
        self._failure: TargetBrazeError | None = None
        self._stop = stop

    def raise_if_failed(self) -> None:
        """Re-raise, in the calling thread, the error that failed the run."""
        if self._failure is not None:
            raise self._failure

    def submit(self, batch: RequestBatch) -> None:
        """Queue a batch for delivery (blocks while all slots are busy)."""
        self.raise_if_failed()
        keys = [obj.user_key for obj in batch.objects]
        in_flight = self._users_in_flight
        with self._lock:
            # A set intersection (in C): mostly empty, then no per-key lookups at all.
            blockers = {in_flight[key] for key in in_flight.keys() & keys}
        if blockers:
            wait(blockers)
        self._slots.take(self.raise_if_failed)
        self.raise_if_failed()
        future: Future[None] = Future()
        with self._lock:
            self._futures.add(future)
            in_flight.update(dict.fromkeys(keys, future))
        future.add_done_callback(lambda done: self._finished(done, keys))
        self._work.put((future, batch))

    def idle(self) -> bool:
        """Whether no request is in flight or queued (a hint: it may change at once)."""
        return not self._futures

    def _start_thread(self) -> None:
        # Daemon: a run that ends abnormally without `shutdown` must still exit; what the
        # thread had in flight was never confirmed, so STATE stays before it.
        thread = threading.Thread(
            target=self._serve, name=f"braze-send_{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        self._stats.add(sender_threads=1)
        thread.start()

    def _serve(self) -> None:
        """A sender thread: deliver batches until told to end."""
        while (work := self._work.get()) is not None:
            future, batch = work
            if future.set_running_or_notify_cancel():
                try:
                    self._deliver(batch)  # failures are recorded for the main thread
                finally:
                    future.set_result(None)  # wait_all and per-user order wait for it

    def _finished(self, future: Future[None], keys: list[tuple[str, str]]) -> None:
        with self._lock:
            self._futures.discard(future)
            for key in keys:
                if self._users_in_flight.get(key) is future:
                    del self._users_in_flight[key]
        self._slots.release()

    def wait_all(self) -> None:
        """Block until every submitted batch has Braze's final answer."""
        while True:
            with self._lock:
                pending = set(self._futures)
            if not pending:
                break
            wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
        self.raise_if_failed()

    def shutdown(self) -> None:
        """Stop the sender threads (after `wait_all`, or when failing).

        Queued batches are cancelled; a request in flight ends at its next retry, as
        `stop` is set by then.
        """
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                work[0].cancel()
                self._settlement.not_sent(work[1].objects)
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _deliver(self, batch: RequestBatch) -> None:
        try:
            self._send(batch, UNINDEXED_RESENDS)
        except TargetBrazeError as exc:
            # The client raises only where Braze certainly did not apply the request when
            # events ride in it (an ambiguous failure comes back as an outcome instead).
            self._settlement.not_sent(batch.objects)
            self._fail(exc)
        except Exception as exc:
            logger.debug("Unexpected error in a sender thread", exc_info=True)
            self._fail(TargetBrazeError(f"unexpected {type(exc).__name__} while sending: {exc}"))

    def _fail(self, exc: TargetBrazeError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
        self._stop.set()

    def _send(self, batch: RequestBatch, unindexed_resends: int) -> None:
        outcome = self._client.send(
            batch.body(),
            len(batch),
            resend_safe=not any(obj.array in NOT_RESEND_SAFE for obj in batch.objects),
        )
        if outcome.ambiguous:
            self._ambiguous(batch, outcome)
            return
        if outcome.split:
            self._split(batch, outcome, unindexed_resends)
            return
        rejected: dict[int, tuple[str, str]] = {}
        unindexed: list[str] = []
        for error in outcome.errors:
            kind = str(error.get("type", "UNKNOWN_ERROR"))
            index = error.get("index")
            obj = (
                batch.index_of(str(error.get("input_array", "attributes")), index)
                if isinstance(index, int) and not isinstance(index, bool)
                else None
            )
            if obj is None:
                unindexed.append(kind)
            else:
                hint = PERMANENT_ERROR_HINTS.get(kind, "Braze did not process this object")
                rejected[id(obj)] = (kind, f"Braze error {kind}: {hint}")
        for obj in batch.objects:
            if id(obj) in rejected:
                kind, reason = rejected[id(obj)]
                self._settlement.reject(obj, reason, kind)
        accepted = [obj for obj in batch.objects if id(obj) not in rejected]
        if unindexed and accepted:
            self._unindexed(accepted, unindexed, batch, unindexed_resends)
        else:
            self._settlement.accept(accepted)

    def _unindexed(
        self,
        objects: list[BrazeObject],
        kinds: list[str],
        batch: RequestBatch,
        resends: int,
    ) -> None:
        """An error without an index: no object of the request can be assumed delivered.

        Attributes are idempotent (setting a value twice leaves the same profile), so
        they are sent again, up to `UNINDEXED_RESENDS` times. Events and purchases are
        never deduplicated by Braze: a resend could count them twice, so they settle as
        *delivery unknown* (`Settlement.unknown`), for a person to decide.
        """
        kinds_text = ", ".join(sorted(set(kinds)))
        resendable = [obj for obj in objects if obj.resend_safe]
        for obj in objects:
            if not obj.resend_safe:
                # As after a lost answer: Braze may hold it, so the ledger records it
                # unknown and no rerun or re-emit sends it until a person releases it.
                self._settlement.unknown(
                    obj,
                    f"Braze reported {kinds_text} without saying which object; {obj.array} "
                    "are not resent because Braze does not deduplicate them",
                )
        if not resendable:
            return
        if resends > 0:
            logger.warning(
                "Braze reported %s without an index; resending the %d attributes objects of "
                "that request (%d resends left)",
                kinds_text,
                len(resendable),
                resends - 1,
            )
            self._send(batch.subset(resendable), resends - 1)
            return
        for obj in resendable:
            self._settlement.reject(
                obj,
                f"Braze kept reporting {kinds_text} without an index after "
                f"{UNINDEXED_RESENDS} resends",
                "UNINDEXED_ERROR",
            )

    def _ambiguous(self, batch: RequestBatch, outcome: Outcome) -> None:
        """Braze may have applied the request, and no answer says so.

        Braze never deduplicates events or purchases: a resend could deliver them twice
        (a campaign sent twice), so they settle as *delivery unknown* for a person to
        check. Attributes are idempotent: they are resent alone, and a request carrying
        only attributes is retried by the client as any other failure.
        """
        happened = outcome.message or f"HTTP {outcome.status}"
        attributes = [obj for obj in batch.objects if obj.resend_safe]
        for obj in batch.objects:
            if not obj.resend_safe:
                self._settlement.unknown(
                    obj,
                    f"{happened} after the request was sent, so Braze may hold this "
                    f"{obj.array[:-1]}; it is not resent because Braze does not deduplicate "
                    f"{obj.array}",
                )
        if attributes:
            logger.info(
                "No answer Braze may have applied (%s): resending the %d attributes objects "
                "of that request alone",
                happened,
                len(attributes),
            )
            self._send(batch.subset(attributes), UNINDEXED_RESENDS)

    def _split(self, batch: RequestBatch, outcome: Outcome, resends: int) -> None:
        if len(batch) > 1:
            self._stats.add(splits=1)
            logger.info(
                "Braze answered %d (%s) to %d objects: splitting the request",
                outcome.status,
                outcome.message or "no message",
                len(batch),
            )
            for half in batch.halves():
                self._send(half, resends)
            return
        (obj,) = batch.objects
        self._settlement.reject(
            obj,
            f"Braze answered {outcome.status} ({outcome.message or 'no message'}) to this "
            "object alone",
            f"HTTP_{outcome.status}",
        )


def _no_latency(_latency_at_least: float, _rate_at_most: float) -> float:
    """A dry run's answers come at once: nothing beyond the first slots is needed."""
    return 0.0


# With the ledger on, while requests are in flight objects are looked up this many
# requests' worth at a time: one query and one intent for them all (measured: 1 µs of CPU
# less per record than one request's worth). With nothing in flight, one request's worth
# is looked up and sent at once, so a slow tap's records do not wait for seven more.
STAGE_REQUESTS = 8

EARLIER_RUN_UNKNOWN = (
    "an earlier run sent it and Braze's answer was lost, or that run stopped while it was "
    "in flight, so Braze may hold it; it is not sent again"
)


class Delivery:
    """Stages, filters and packs objects, and hands full requests to the sender."""

    def __init__(
        self,
        limits: RequestLimits,
        sender: UsersTrackSender,
        settlement: Settlement,
        stats: RunStats,
        ledger: Ledger | None = None,
    ) -> None:
        """Nothing staged, an empty request."""
        self._limits = limits
        self._sender = sender
        self._settlement = settlement
        self._stats = stats
        self._ledger = ledger
        self._staged: list[BrazeObject] = []
        self._staged_at: float | None = None
        self._stage_objects = STAGE_REQUESTS * limits.max_objects
        self._batch = UsersTrackBatch(limits)
        #: Take one object (main thread); a full request goes to the sender. Without the
        #: ledger, nothing is staged: chosen once, not asked for every object.
        self.add: Callable[[BrazeObject], None] = self._pack if ledger is None else self._stage

    def _stage(self, obj: BrazeObject) -> None:
        if not self._staged:
            self._staged_at = time.monotonic()
        self._staged.append(obj)
        staged = len(self._staged)
        if staged >= self._limits.max_objects and (
            staged >= self._stage_objects or self._sender.idle()
        ):
            self._select()

    def _select(self) -> None:
        """Let the ledger drop what Braze already holds; pack the rest."""
        staged, self._staged, self._staged_at = self._staged, [], None
        if not staged or self._ledger is None:
            return
        selection = self._ledger.select(staged)
        if selection.unchanged:
            self._settlement.skip(selection.unchanged, "unchanged")
        if selection.duplicates:
            self._settlement.skip(selection.duplicates, "duplicates")
        for obj in selection.unknown:
            self._settlement.unknown(obj, EARLIER_RUN_UNKNOWN)
        for obj in selection.send:
            self._pack(obj)

    def _pack(self, obj: BrazeObject) -> None:
        added = self._batch.try_add(obj)
        if added is False:
            self._submit()
            added = self._batch.try_add(obj)
        if added is None:  # full
            self._submit()

    def _submit(self) -> None:
        batch = self._batch
        if not len(batch):
            return
        self._batch = UsersTrackBatch(self._limits)
        self._stats.add(records_merged=batch.record_count - len(batch))
        self._sender.submit(batch)

    def flush(self) -> None:
        """Send everything staged or partly packed."""
        self._select()
        self._submit()

    def flush_if_older_than(self, seconds: float) -> None:
        """Send what has waited at least `seconds` (a STATE should not wait long)."""
        now = time.monotonic()
        oldest = min(
            (t for t in (self._staged_at, self._batch.first_added_at) if t is not None),
            default=None,
        )
        if oldest is not None and now - oldest >= seconds:
            self.flush()

    def abandon(self) -> None:
        """The run failed: the request being packed will never be sent (see `not_sent`)."""
        self._settlement.not_sent(self._batch.objects)
        self._batch = UsersTrackBatch(self._limits)

    def drain(self) -> None:
        """Send everything and wait until Braze answered all of it."""
        self.flush()
        self._sender.wait_all()
