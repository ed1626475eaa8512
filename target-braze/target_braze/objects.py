"""`BrazeObject`: one object of a /users/track array, and the records it carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

ObjectType = Literal[
    "attributes", "events", "purchases", "deletes", "aliases", "identify", "subscriptions"
]
#: Where a record came from: its line of input, or (line of the BATCH message, file, line).
Origin = int | tuple[int, str, int]
#: The arrays of a /users/track request.
OBJECT_TYPES: tuple[ObjectType, ...] = ("attributes", "events", "purchases")
#: What a stream may be besides OBJECT_TYPES: each goes to its own endpoint (user_data.py).
USER_DATA_OBJECT_TYPES: tuple[ObjectType, ...] = ("deletes", "aliases", "subscriptions")
#: Objects Braze does not count twice when sent twice: everything but events and purchases.
NOT_RESEND_SAFE = frozenset({"events", "purchases"})
IDENTIFIER_TYPES = ("external_id", "user_alias", "braze_id", "email", "phone")
# Keys of an object that identify the user or steer Braze; they are not billed data points.
CONTROL_KEYS = frozenset(
    {"external_id", "user_alias", "braze_id", "_update_existing_only", "_merge_objects"}
)


@dataclass(slots=True)
class BrazeObject:
    """One object of a /users/track array, with the records it carries.

    `seqs` are the checkpoint sequence numbers of the records merged into it, `records`
    the records themselves and `lines` where each came from (for the rejects output);
    both are kept only until Braze answers. `ledger` is what the delivery ledger records
    once Braze confirmed the object (None when the ledger is off).
    """

    array: ObjectType
    user_key: tuple[str, str]
    body: dict[str, Any]
    data_points: int
    seqs: list[int]
    records: list[dict[str, Any]]
    lines: list[Origin]
    stream: str
    identifier: str
    key_values: tuple[Any, ...] | None = None  # the stream's key properties (events identity)
    ledger: Any = None
    #: The object's JSON: both the size estimate and the request's bytes (kept current).
    encoded: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        """Encode the body once."""
        if not self.encoded:
            self.encoded = orjson.dumps(self.body)

    @property
    def resend_safe(self) -> bool:
        """Whether sending it again is harmless (attributes, deletes, aliases, subscriptions).

        Braze never deduplicates events or purchases; everything else sets a state.
        """
        return self.array not in NOT_RESEND_SAFE

    def merge(self, later: BrazeObject) -> None:
        """Fold a later attributes object of the same user into this one (last value wins)."""
        self.body.update(later.body)
        self.data_points = count_data_points(self.body)
        self.seqs.extend(later.seqs)
        self.records.extend(later.records)
        self.lines.extend(later.lines)
        if later.ledger is not None:
            self.ledger = later.ledger if self.ledger is None else self.ledger.merge(later.ledger)
        self.encoded = orjson.dumps(self.body)

    def replace_body(self, body: dict[str, Any], data_points: int) -> None:
        """Send `body` instead (the ledger trimmed what Braze already holds)."""
        self.body = body
        self.data_points = data_points
        self.encoded = orjson.dumps(body)

    def release(self) -> None:
        """Braze answered: drop the records early, so memory stays flat."""
        self.records = []
        self.lines = []


def count_data_points(body: dict[str, Any]) -> int:
    """Billable data points in an attributes object: every key but the control keys."""
    return sum(1 for key in body if key not in CONTROL_KEYS)


@dataclass(slots=True)
class Rejection:
    """A record that cannot be sent, and why."""

    stream: str
    identifier: str | None
    record: dict[str, Any]
    reason: str
    line: Origin
    kind: str = "INVALID_RECORD"
