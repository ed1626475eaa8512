"""`UsersTrackSender`: sends batches concurrently and settles every record with Braze's answer.

The flow of one batch: `submit` (main thread) waits until no in-flight request touches
the same users (so one user's updates reach Braze in order), takes one of
`max_concurrent_requests` slots (back-pressure: memory stays flat), and hands the batch
to a sender thread. There `client.send` gets Braze's final answer; 400/413 split the
batch; `errors[]` entries are mapped back to their objects; each object is then accepted
or rejected through the `Settlement`, which settles its records in the checkpoint.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from target_braze.batching import UsersTrackBatch
from target_braze.client import Outcome, Sends
from target_braze.errors import TargetBrazeError
from target_braze.objects import BrazeObject
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


class UsersTrackSender:
    """Concurrent delivery of `UsersTrackBatch`es, in per-user order."""

    def __init__(
        self,
        client: Sends,
        settlement: Settlement,
        stats: RunStats,
        max_concurrent: int,
        stop: threading.Event,
    ) -> None:
        """Start the sender threads; `stop` is set when a request fails the run."""
        self._client = client
        self._settlement = settlement
        self._stats = stats
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="braze-send")
        self._slots = threading.Semaphore(max_concurrent)
        self._lock = threading.Lock()
        self._users_in_flight: dict[tuple[str, str], Future[None]] = {}
        self._futures: set[Future[None]] = set()
        self._failure: TargetBrazeError | None = None
        self._stop = stop

    def raise_if_failed(self) -> None:
        """Re-raise, in the calling thread, the error that failed the run."""
        if self._failure is not None:
            raise self._failure

    def submit(self, batch: UsersTrackBatch) -> None:
        """Queue a batch for delivery (blocks while all slots are busy)."""
        self.raise_if_failed()
        keys = list(batch.user_keys)
        with self._lock:
            blockers = {
                future for key in keys if (future := self._users_in_flight.get(key)) is not None
            }
        if blockers:
            wait(blockers)
        while not self._slots.acquire(timeout=0.5):
            self.raise_if_failed()
        self.raise_if_failed()
        future = self._executor.submit(self._deliver, batch)
        with self._lock:
            self._futures.add(future)
            for key in keys:
                self._users_in_flight[key] = future
        future.add_done_callback(lambda done: self._finished(done, keys))

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
        """Stop the sender threads (after `wait_all`, or when failing)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _deliver(self, batch: UsersTrackBatch) -> None:
        try:
            self._send(batch, UNINDEXED_RESENDS)
        except TargetBrazeError as exc:
            self._fail(exc)
        except Exception as exc:
            logger.debug("Unexpected error in a sender thread", exc_info=True)
            self._fail(TargetBrazeError(f"unexpected {type(exc).__name__} while sending: {exc}"))

    def _fail(self, exc: TargetBrazeError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
        self._stop.set()

    def _send(self, batch: UsersTrackBatch, unindexed_resends: int) -> None:
        outcome = self._client.send(batch.body(), len(batch))
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
        batch: UsersTrackBatch,
        resends: int,
    ) -> None:
        """An error without an index: no object of the request can be assumed delivered.

        Attributes are idempotent (setting a value twice leaves the same profile), so
        they are sent again, up to `UNINDEXED_RESENDS` times. Events and purchases are
        never deduplicated by Braze: a resend could count them twice, so they go to
        the rejects output marked as of unknown delivery, for a person to decide.
        """
        kinds_text = ", ".join(sorted(set(kinds)))
        resendable = [obj for obj in objects if obj.array == "attributes"]
        for obj in objects:
            if obj.array != "attributes":
                self._settlement.reject(
                    obj,
                    f"Braze reported {kinds_text} without saying which object; delivery "
                    f"unknown, and {obj.array} are not resent because Braze does not "
                    "deduplicate them",
                    "UNINDEXED_ERROR",
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

    def _split(self, batch: UsersTrackBatch, outcome: Outcome, resends: int) -> None:
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
