"""`Settlement`: the one owner of how a record ends, and of telling the checkpoint.

Every record ends in exactly one of five ways: Braze accepted it, it was rejected (by our
checks or by Braze) and written to the rejects output with a reason, its delivery is
unknown (an event or purchase Braze may have applied without an answer saying so), the
delivery ledger showed Braze already holds it (`unchanged` attributes, a `duplicate`
event), or the run failed. Each way is one method here; each counts the record and
settles it in the `Checkpoint`, which may then release STATE.
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


DELIVERY_UNKNOWN = "DELIVERY_UNKNOWN"
DELIVERY_UNKNOWN_PREFIX = "delivery unknown: "


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

    def unknown(self, obj: BrazeObject, reason: str) -> None:
        """An event or purchase Braze may hold: never resent automatically, a person decides.

        It goes to the rejects output (kind `DELIVERY_UNKNOWN`) but is counted apart from
        rejections: it does not count toward `max_rejected_ratio`, since holding STATE
        back would not help (a rerun must not resend it either). It settles, so STATE may
        move past it: the ledger remembers it as `unknown`, and its next emission is not
        sent until `target-braze-ledger release` forgets it.
        """
        recorded = self._ledger is not None and obj.ledger is not None
        advice = (
            "check Braze for it, then run `target-braze-ledger release` if Braze does not "
            "hold it (its next emission is then sent)"
            if recorded or (self._ledger is not None and self._ledger.deduplicate_events)
            else "check Braze for it and re-emit it if Braze does not hold it (without the "
            "ledger's event deduplication nothing remembers it)"
        )
        text = f"{DELIVERY_UNKNOWN_PREFIX}{reason}; {advice}"
        for record, origin in zip(obj.records, obj.lines, strict=True):
            self._rejects.write(
                obj.stream, obj.identifier, record, text, DELIVERY_UNKNOWN, origin, unknown=True
            )
        obj.release()
        if recorded:
            assert self._ledger is not None  # noqa: S101 - checked above (for mypy)
            # Settled once the ledger recorded it: the run's last word on the object.
            self._ledger.unknown((obj,), self._checkpoint.settle)
        else:
            self._checkpoint.settle(obj.seqs)

    def not_sent(self, objects: Sequence[BrazeObject]) -> None:
        """The run failed before these objects reached Braze: nothing settles.

        The ledger forgets their events' in-flight rows, so the rerun sends them instead
        of taking them for events of unknown delivery.
        """
        if self._ledger is not None and objects:
            self._ledger.not_sent(objects)

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
            return
        deleted = [obj.user_key for obj in objects if obj.array == "deletes"]
        if deleted:
            # Braze deleted these users: the ledger forgets their attributes (a user
            # created again gets every attribute), then they settle.
            ledger, settle = self._ledger, self._checkpoint.settle

            def forget_then_settle(seqs: list[int]) -> None:
                ledger.forget_deleted_users(deleted)
                if ledger.failure is None:  # else STATE stays: the run fails
                    settle(seqs)

            self._ledger.confirmed(objects, forget_then_settle)
            return
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
