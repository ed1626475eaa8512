"""`UsersTrackBatch`: the objects of one /users/track request, kept under Braze's limits.

The batch is the one owner of "the request is full": `try_add` refuses an object that
would break a limit, and says when no further object can fit by count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from target_braze.objects import OBJECT_TYPES, BrazeObject

# '{"attributes":[' ... ']}' plus the separators between arrays: a few bytes per array.
_ENVELOPE_BYTES = 64


class RequestBatch(Protocol):
    """What the sender needs of a request's objects: `UsersTrackBatch` or `UserDataBatch`."""

    objects: list[BrazeObject]

    def __len__(self) -> int:
        """Objects in the request."""
        ...

    def body(self) -> bytes:
        """The request body."""
        ...

    def index_of(self, array: str, index: int) -> BrazeObject | None:
        """The object an `errors[]` entry names."""
        ...

    def subset(self, objects: list[BrazeObject]) -> RequestBatch:
        """A request of some of these objects, for a resend."""
        ...

    def halves(self) -> list[RequestBatch]:
        """Split in two (400, 413)."""
        ...


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Braze's per-request limits, from the settings (Braze has changed them over the years)."""

    max_objects: int
    max_bytes: int
    per_array: bool = False


class UsersTrackBatch:
    """Objects bound for one request.

    Attributes objects for a user already in the batch are merged into that user's
    object (last value wins), so one request never carries two updates of one user that
    Braze might apply out of order, and each attribute is billed once.
    """

    def __init__(self, limits: RequestLimits) -> None:
        """Start an empty batch."""
        self.limits = limits
        self.objects: list[BrazeObject] = []
        self._by_user: dict[tuple[str, str], BrazeObject] = {}
        self._counts: dict[str, int] = dict.fromkeys(OBJECT_TYPES, 0)
        self._bytes = _ENVELOPE_BYTES
        self.first_added_at: float | None = None

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def record_count(self) -> int:
        """How many records the batch carries (merged records count each)."""
        return sum(len(obj.seqs) for obj in self.objects)

    def try_add(self, obj: BrazeObject) -> bool | None:
        """Add or merge `obj`.

        True: added. None: added, and now the batch is full by count. False: refused, the
        batch unchanged, because `obj` would break a limit.
        """
        array = obj.array
        if array == "attributes":
            existing = self._by_user.get(obj.user_key)
            if existing is not None:
                old_size = len(existing.encoded)
                existing.merge(obj)
                self._bytes += len(existing.encoded) - old_size
                return True
        size = len(obj.encoded) + 1
        objects = self.objects
        limits = self.limits
        if objects:
            if self._bytes + size > limits.max_bytes:
                return False
        else:
            self.first_added_at = time.monotonic()
        if limits.per_array:
            if self._counts[array] >= limits.max_objects:
                return False
            self._append(obj, size)
            return True
        if len(objects) >= limits.max_objects:
            return False
        self._append(obj, size)
        return None if len(objects) >= limits.max_objects else True

    def _append(self, obj: BrazeObject, size: int) -> None:
        self.objects.append(obj)
        self._counts[obj.array] += 1
        self._bytes += size
        if obj.array == "attributes":
            self._by_user[obj.user_key] = obj

    def body(self) -> bytes:
        """The request body, assembled from each object's cached JSON."""
        if self._counts["attributes"] == len(self.objects):  # the usual: one array
            return b'{"attributes":[' + b",".join([o.encoded for o in self.objects]) + b"]}"
        parts: list[bytes] = []
        for array in OBJECT_TYPES:
            items = [obj.encoded for obj in self.objects if obj.array == array]
            if items:
                parts.append(b'"' + array.encode() + b'":[' + b",".join(items) + b"]")
        return b"{" + b",".join(parts) + b"}"

    def index_of(self, array: str, index: int) -> BrazeObject | None:
        """The object Braze means by `errors[].input_array` and `errors[].index`."""
        matching = [obj for obj in self.objects if obj.array == array]
        if 0 <= index < len(matching):
            return matching[index]
        return None

    def subset(self, objects: list[BrazeObject]) -> UsersTrackBatch:
        """A batch of some of these objects (already within limits), for a resend."""
        batch = UsersTrackBatch(self.limits)
        for obj in objects:
            batch._append(obj, len(obj.encoded) + 1)
        return batch

    def halves(self) -> list[RequestBatch]:
        """Split in two (for 413 and 'Max Input Length Exceeded')."""
        middle = len(self.objects) // 2
        return [self.subset(self.objects[:middle]), self.subset(self.objects[middle:])]
