"""`Settlement`: the one owner of how a record ends, and of telling the checkpoint.

Every record ends in exactly one of four ways: Braze accepted it, it was rejected (by our
checks or by Braze) and written to the rejects output with a reason, the delivery ledger
showed Braze already holds it (`unchanged` attributes, a `duplicate` event), or the run
failed. Each way is one method here; each counts the record and settles it in the
`Checkpoint`, which may then release STATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from target_braze.checkpoint import Checkpoint
from target_braze.objects import BrazeObject, Rejection
from target_braze.rejects import RejectedRecords
from target_braze.report import RunStats

if TYPE_CHECKING:
    from target_braze.ledger import Ledger


class Settlement:
    """Rejects, accepts and skips records; thread-safe (the parts it calls are)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        rejects: RejectedRecords,
        stats: RunStats,
        ledger: Ledger | None = None,
    ) -> None:
        """Wire the outputs together; `ledger` records what Braze confirmed."""
        self._checkpoint = checkpoint
        self._rejects = rejects
        self._stats = stats
        self._ledger = ledger

    def reject_record(self, rejection: Rejection, seq: int) -> None:
        """A record our checks refused before any request."""
        self._rejects.write(
            rejection.stream,
            rejection.identifier,
            rejection.record,
            rejection.reason,
            rejection.kind,
            rejection.line,
        )
        self._checkpoint.settle((seq,))

    def reject(self, obj: BrazeObject, reason: str, kind: str) -> None:
        """Braze refused the object (or delivery is unknown): every record it carries."""
        for record, origin in zip(obj.records, obj.lines, strict=True):
            self._rejects.write(obj.stream, obj.identifier, record, reason, kind, origin)
        if self._ledger is not None:
            self._ledger.forget_pending((obj,))
        obj.release()
        self._checkpoint.settle(obj.seqs)

    def accept(self, objects: Sequence[BrazeObject]) -> None:
        """Braze confirmed these objects: record them in the ledger, then settle."""
        if not objects:
            return
        records = 0
        points = 0
        for obj in objects:
            records += len(obj.seqs)
            points += obj.data_points
            obj.release()
        self._stats.add(objects_accepted=len(objects), records_accepted=records, data_points=points)
        if self._ledger is None:
            self._settle(objects)
        else:
            # The ledger's writer settles them once its transaction committed: STATE never
            # moves past an object the ledger would not know after a crash.
            self._ledger.confirmed(objects, self._checkpoint.settle)

    def skip(self, objects: Sequence[BrazeObject], outcome: str) -> None:
        """The ledger shows Braze already holds these (`unchanged` or `duplicates`)."""
        records = sum(len(obj.seqs) for obj in objects)
        self._stats.add(**{outcome: records})
        for obj in objects:
            obj.release()
        self._settle(objects)

    def _settle(self, objects: Sequence[BrazeObject]) -> None:
        self._checkpoint.settle([seq for obj in objects for seq in obj.seqs])
