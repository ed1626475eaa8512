"""`Delivery`: the way from a built Braze object to a request in flight.

Objects arrive in the tap's order (main thread). With the delivery ledger on, they are
staged a few requests' worth at a time so the ledger can look them up in one query; the ledger
drops what Braze already holds (those records settle as `unchanged` or `duplicates`).
What remains is packed, in order, into `UsersTrackBatch`es, and each full batch goes to
the sender. Requests are built across streams in arrival order, so two streams updating
one user reach Braze in the order the tap sent them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from target_braze.batching import RequestLimits, UsersTrackBatch
from target_braze.objects import BrazeObject
from target_braze.report import RunStats
from target_braze.sender import UsersTrackSender
from target_braze.settlement import Settlement

if TYPE_CHECKING:
    from target_braze.ledger import Ledger

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
