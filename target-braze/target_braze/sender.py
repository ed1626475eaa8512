"""`UsersTrackSender`: sends batches concurrently and settles every record with Braze's answer.

The flow of one batch: `submit` (main thread) waits until no in-flight request touches
the same users (so one user's updates reach Braze in order), takes one of the in-flight
slots (back-pressure: memory stays flat; `InFlight` opens them, up to
`max_concurrent_requests`, as rate x latency needs), and hands the batch to a sender
thread. There `client.send` gets Braze's final answer; 400/413 split the batch; an
ambiguous answer to a request holding events or purchases (Braze may have applied it)
settles its objects as of unknown delivery; `errors[]` entries are mapped back to their
objects; each object is then accepted or rejected through the `Settlement`, which
settles its records in the checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait

from target_braze.batching import RequestBatch
from target_braze.client import Outcome, Sends
from target_braze.errors import TargetBrazeError
from target_braze.in_flight import InFlight
from target_braze.objects import NOT_RESEND_SAFE, BrazeObject
from target_braze.report import RunStats
from target_braze.settlement import Settlement

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
