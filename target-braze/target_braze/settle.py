"""Settle: how each record ends (accepted, rejected, unknown, unchanged), and the rejects output.

`RejectedRecords`: the rejects output, one JSON line per record Braze will not get.

`Settlement`: the one owner of how a record ends, and of telling the checkpoint.

Every record ends in exactly one of five ways: Braze accepted it, it was rejected (by our
checks or by Braze) and written to the rejects output with a reason, its delivery is
unknown (an event or purchase Braze may have applied without an answer saying so), the
delivery ledger showed Braze already holds it (`unchanged` attributes, a `duplicate`
event), or the run failed. Each way is one method here; each counts the record and
settles it in the `Checkpoint`, which may then release STATE.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from target_braze.checkpoint import Checkpoint
from target_braze.objects import BrazeObject, Origin, Rejection
from target_braze.report import JsonlOutput, RunStats

if TYPE_CHECKING:
    from target_braze.ledger import Ledger


logger = logging.getLogger("target_braze")


def describe_origin(origin: Origin) -> str:
    """`line 12`, or `line 3 (batch file /tmp/x.jsonl, line 40)`."""
    if isinstance(origin, int):
        return f"line {origin}"
    line, path, file_line = origin
    return f"line {line} (batch file {path}, line {file_line})"


def _origin_fields(origin: Origin) -> dict[str, Any]:
    if isinstance(origin, int):
        return {"input_line": origin}
    line, path, file_line = origin
    return {"input_line": line, "batch_file": path, "batch_line": file_line}


def _default(value: Any) -> Any:
    # Records may still hold Decimal or other reader types; keep them readable.
    return str(value)


#: A rejected record is written whole up to this many bytes of JSON, else truncated.
MAX_RECORD_EXCERPT_BYTES = 64 * 1024


def _record_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the rejects line carries it: whole, or its JSON's start, saying so.

    A record JSON cannot carry (a 65-bit integer, nesting too deep for orjson) is written
    as far as Python's own encoder manages, or else by its reason alone.
    """
    try:
        encoded = orjson.dumps(record, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        try:
            encoded = json.dumps(record, default=str).encode()
        except (ValueError, TypeError, RecursionError) as exc:
            return {"record": None, "record_unwritable": f"{type(exc).__name__}: {exc}"[:200]}
        else:
            return _excerpt(encoded)
    if len(encoded) <= MAX_RECORD_EXCERPT_BYTES:
        return {"record": orjson.Fragment(encoded)}  # encoded once, embedded as is
    return _excerpt(encoded)


def _excerpt(encoded: bytes) -> dict[str, Any]:
    if len(encoded) <= MAX_RECORD_EXCERPT_BYTES:
        return {"record_json": encoded.decode("utf-8", "replace")}
    return {
        "record_truncated": (
            f"the record's JSON is {len(encoded)} bytes; record_json holds its first "
            f"{MAX_RECORD_EXCERPT_BYTES}"
        ),
        "record_json": encoded[:MAX_RECORD_EXCERPT_BYTES].decode("utf-8", "ignore"),
    }


class RejectedRecords:
    """Writes rejected records to JSONL, each with the run id, the time and its input line.

    The file is appended to across runs; `run_id` (also in the run report and the log
    summary) tells one run's rejects from another's. Without `rejected_records_path` each
    rejection is logged as a WARNING line with the same JSON, so a rejected record is
    never silently dropped.
    """

    def __init__(self, path: str | None, stats: RunStats, run_id: str) -> None:
        """Open the output lazily: a clean run leaves no empty file behind."""
        self._output = JsonlOutput(path, setting="rejected_records_path") if path else None
        self._stats = stats
        self._run_id = run_id

    def write(
        self,
        stream: str,
        identifier: str | None,
        record: dict[str, Any],
        reason: str,
        kind: str,
        origin: Origin,
        *,
        unknown: bool = False,
    ) -> None:
        """Record one rejection with its reason; `kind` groups reasons in the summary.

        `unknown`: a record of unknown delivery, counted as such rather than as rejected.
        """
        line = orjson.dumps(
            {
                "run_id": self._run_id,
                "rejected_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "stream": stream,
                "identifier": identifier,
                **_origin_fields(origin),
                "reason": reason,
                "error_type": kind,
                **_record_fields(record),
            },
            default=_default,
            option=orjson.OPT_NON_STR_KEYS,
        )
        if unknown:
            self._stats.add(unknown=1)
        else:
            self._stats.add_rejection(kind, identifier or describe_origin(origin))
        if self._output is None:
            logger.warning("Rejected record: %s", line.decode())
            return
        self._output.write_line(line)

    def close(self) -> None:
        """Close the output."""
        if self._output is not None:
            self._output.close()


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
