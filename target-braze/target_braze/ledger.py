"""`Ledger`: what Braze confirmed, so only changes are sent and no event goes twice.

Per user (identifier type and value) and attribute, the ledger keeps the value Braze last
confirmed (a 64-bit digest of it when it is long or personal: `PERSONAL_FIELDS`) and the
day it did; per event or purchase, its identity. `select` (main thread) drops what Braze
already holds from a few hundred objects at a time, with one lookup (none for users a
workspace new this run cannot hold); `confirmed` (sender threads) hands Braze's
confirmations to one writer thread, which commits them in groups and only then settles
their records, so STATE never moves past a confirmation the ledger could lose in a crash.
A ledger file therefore holds Peak's scores and segments as they are: it is private
(0600, like the rejects file) and should be kept like the warehouse's data.

The rule that keeps the ledger from ever being ahead of Braze: an entry is written only
for what Braze confirmed (a 2xx, no `errors[]` entry for the object). While an object
is on its way (staged, packed or in flight), its sends are *pending*: a later record of
the same user is compared with both the confirmed and the pending value, and skipped
only if both equal it; its ledger write then merges into whatever is committed when it
lands, so a rejected earlier object can never leave a value Braze does not hold.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import functools
import itertools
import logging
import operator
import queue
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

from target_braze.errors import TargetBrazeError
from target_braze.ledger_store import (
    CONFIRMED,
    UNKNOWN,
    KeySpace,
    LedgerError,
    LedgerStore,
    default_ledger_url,
    mask_url,
    open_store,
    sqlite_ledger_path,
    workspace_identity,
)
from target_braze.objects import CONTROL_KEYS, BrazeObject

logger = logging.getLogger("target_braze")

# A user's row (schema 6): the number of entries n (16 bits), their name slots (32 bits of
# the name's hash each), the days Braze confirmed them (16 bits: days since 1970, good until
# 2149), the 64-bit digest of the whole object's JSON the row was last written from (zero
# when it was merged from parts), then one JSON array of the values Braze confirmed. A value whose
# canonical JSON (sorted keys) is longer than `_LONG_VALUE` bytes is stored as
# `{"$xxh3": digest}` instead (a nested object may be 100 KB): `$` cannot start a key of a
# value the target sends, so no value is mistaken for a digest. Storing the values, not a
# digest per value, makes the row both smaller (Peak's 9 values take about 110 bytes, nine
# digests 72 plus what they are of) and cheaper to compare: a record whose object's JSON
# has the stored digest is unchanged, and otherwise one with the row's slots is compared
# value by value in C, not in a loop of Python per value.
_EPOCH = dt.date(1970, 1, 1)
# The writer commits once this many objects wait, or once the oldest waited this long.
# Random keys make each row written dirty its own page once the ledger is large, so the
# fewer commits the fewer times a page goes through the WAL: a first sync of 1M users
# took 13% less CPU with groups of 50,000 and 1 s than with 20,000 and 0.25 s (peak
# memory 125 MB instead of 87). The cost: a STATE may wait up to a second longer.
_GROUP_OBJECTS = 50_000
# Confirmations wait for the writer once this many objects are queued for it: a sender
# thread then waits too, and so in turn does the main thread (its in-flight slots are
# taken), so a ledger slower than Braze slows the run instead of filling memory.
_QUEUED_OBJECTS = _GROUP_OBJECTS
_GROUP_SECONDS = 1.0
_digest = xxhash.xxh3_64_intdigest
_dumps = orjson.dumps
_loads = orjson.loads
_SORT_KEYS = orjson.OPT_SORT_KEYS
_LONG_VALUE = 256
#: Braze's profile fields that hold personal data: the ledger stores only their digests, so
#: a ledger file holds no e-mail address, phone number, name or birthday in clear. (Custom
#: attributes are stored as they are when short: Peak's scores and segments.)
PERSONAL_FIELDS = frozenset(
    {
        "email",
        "phone",
        "first_name",
        "last_name",
        "dob",
        "gender",
        "home_city",
        "current_location",
        "image_url",
    }
)
_MARK = "$xxh3"
_MARKED = b'{"$xxh3":'
_COUNT = struct.Struct("<H")
_whole_digest = xxhash.xxh3_64_digest
_NO_WHOLE = bytes(8)
_differs = operator.ne
_GENERAL = object()  # `_trim_layout`: the general path decides
_dumps_sorted = functools.partial(orjson.dumps, option=_SORT_KEYS)
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_body_of = operator.attrgetter("body")
_encoded_of = operator.attrgetter("encoded")
_user_key_of = operator.attrgetter("user_key")
_key_of = operator.attrgetter("key")
_array_of = operator.attrgetter("array")
_check_of = operator.attrgetter("check")
_entries_of = operator.attrgetter("entries")
_partial_of = operator.attrgetter("partial")
_repeat = itertools.repeat


def _consume(iterator: Iterator[Any]) -> None:
    """Run `iterator` to its end in C (`map` of a function called for its effect)."""
    collections.deque(iterator, maxlen=0)


# The users a run on a new workspace selected (`Ledger._maybe_stored`): one byte per slot
# of 8M (8 MB), the slot the key's low 23 bits, so at 1M users about 6% of a first sync's
# users (12% at its end) are looked up for nothing. A byte, not a bit: one `&` of the key
# and one item, where a bit took four operations on 64-bit ints per user (2.4k
# instructions more per user, callgrind).
_WRITTEN_MASK = (1 << 23) - 1
_MAX_ENTRIES = 0xFFFF
Entries = dict[int, tuple[int, Any]]  # slot -> (day, stored value)
# The stored values an object sends, by slot: a dict, or (slots, values) as a first write
# has them, turned into a dict only if another object of the user comes while it is pending.
Sent = dict[int, Any] | tuple[tuple[int, ...], Sequence[Any]]


FORGOTTEN = "forgotten"


def _describe(obj: BrazeObject) -> str:
    """What `target-braze-ledger unknown` shows of an event sent: stream, user, object."""
    # The object's JSON is already encoded (it is the request's bytes): spliced in, not redone.
    head = _dumps({"stream": obj.stream, "user": obj.identifier, "array": obj.array})
    return (head[:-1] + b',"object":' + obj.encoded + b"}").decode()


def today() -> int:
    """Days since 1970-01-01 (UTC): the ledger's clock."""
    return (dt.datetime.now(dt.UTC).date() - _EPOCH).days


def stored_value(value: Any, seed: int, personal: bool = False) -> Any:
    """What the ledger stores of one attribute value: the value, or its digest.

    The digest when the value is long, or `personal` (a name in `PERSONAL_FIELDS`). `seed`
    is the attribute name's (`Ledger._slot`): the digest rule of schema 5, so digests a
    schema-5 ledger holds stay comparable.
    """
    encoded = _dumps(value, None, _SORT_KEYS)
    if len(encoded) <= _LONG_VALUE and not personal:
        return value
    return {_MARK: _digest(encoded, seed)}


def _matches(stored: Any, encoded: bytes, seed: int) -> bool:
    """Whether a stored value (`stored_value`'s form) is the value whose JSON is `encoded`.

    Canonical JSON decides, so `1`, `1.0` and `true` differ, and nested keys in any order
    do not.
    """
    if type(stored) is dict and len(stored) == 1 and _MARK in stored:
        # A long value's, or any value's in a row migrated from schema 5.
        return bool(stored[_MARK] == _digest(encoded, seed))
    return len(encoded) <= _LONG_VALUE and _dumps(stored, None, _SORT_KEYS) == encoded


def _moved_less(value: Any, held: Any, limit: float) -> bool:
    """Whether a number moved less than `limit` from the number Braze holds (`held`)."""
    numbers = (int, float)
    return type(value) in numbers and type(held) in numbers and abs(value - held) < limit


def _nested(encoded: bytes) -> bool:
    """Whether a JSON array of values may hold an array or object (a string may look so)."""
    return encoded.find(b"[", 1) >= 0 or b"{" in encoded


def encode_entries(entries: Entries, whole: bytes = _NO_WHOLE) -> bytes:
    """The stored form of a user's entries; `whole`: the object's digest, if all of it."""
    pairs = entries.values()
    return (
        _COUNT.pack(len(entries))
        + array("I", entries).tobytes()
        + array("H", [day for day, _ in pairs]).tobytes()
        + whole
        + _dumps([value for _, value in pairs], None, _SORT_KEYS)
    )


def unchanged_whole(blob: bytes, whole: bytes, cutoff: int) -> bool:
    """Whether a user's row was last written from an object of exactly `whole`'s JSON.

    `whole` is the new object's `_whole_digest`. Equal bytes mean every attribute equals
    what Braze confirmed; the object is unchanged if none was confirmed on `cutoff` or
    before (the retention).
    """
    if len(blob) < 10:
        return False
    (count,) = _COUNT.unpack_from(blob)
    at = 2 + 6 * count
    if len(blob) < at + 8 or blob[at : at + 8] != whole or whole == _NO_WHOLE:
        return False
    return cutoff < 0 or not count or min(array("H", blob[2 + 4 * count : at])) > cutoff


def decode_entries(blob: bytes) -> Entries:
    """A user's entries from their stored form (none, if the row cannot be read).

    A row that cannot be read costs a resend of the user's attributes, never a skip.
    """
    try:
        (count,) = _COUNT.unpack_from(blob)
        slots = array("I", blob[2 : 2 + 4 * count])
        days = array("H", blob[2 + 4 * count : 2 + 6 * count])
        values = _loads(blob[10 + 6 * count :])
    except (struct.error, ValueError, orjson.JSONDecodeError):
        return {}
    if type(values) is not list or len(values) != count or len(slots) != count:
        return {}
    return dict(zip(slots, zip(days, values, strict=True), strict=True))


@dataclass(frozen=True, slots=True)
class _Layout:
    """The attributes of objects with one sequence of keys, as the ledger stores them.

    A wide table's objects all have the same keys in the same order, and a user's stored
    entries keep the order in which they were first written: so the row of a user written
    from this layout starts with exactly `prefix`, its values sit at `values_at`, and the
    user's entries can be compared and rewritten as one JSON array, without a dict per user.
    """

    names: tuple[str, ...]  # the attributes (not the control keys), in the body's order
    seeds: tuple[int, ...]
    slots: tuple[int, ...]
    prefix: bytes  # the row's count and slots
    fresh_days: bytes  # every entry confirmed today (a layout lives for one run)
    values: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # the body's values, in order
    personal: bool  # some names are in PERSONAL_FIELDS
    values_at: int = 0  # where a row's values begin (after the whole object's digest)

    @property
    def count(self) -> int:
        """How many attributes."""
        return len(self.names)

    def encode(self, values: tuple[Any, ...]) -> tuple[bytes, Sequence[Any]]:
        """The stored JSON of `values`, and the stored values.

        The stored values are `values` unless some are long or personal.
        """
        encoded = _dumps(values, None, _SORT_KEYS)
        if len(encoded) <= _LONG_VALUE and not self.personal:
            return encoded, values  # each value's JSON is short too: each is stored as it is
        stored = [
            stored_value(v, s, n in PERSONAL_FIELDS)
            for v, s, n in zip(values, self.seeds, self.names, strict=True)
        ]
        if not any(v is not s for v, s in zip(values, stored, strict=True)):
            return encoded, values
        return _dumps(stored, None, _SORT_KEYS), stored

    def fresh_row(self, whole: bytes, encoded: bytes) -> bytes:
        """The row of an object of this layout sent whole: every entry confirmed today."""
        return self.prefix + self.fresh_days + whole + encoded


@dataclass(slots=True)
class UserWrite:
    """What the ledger records for one attributes object once Braze confirmed it.

    `entries` is the user's whole row, already encoded; or, when `partial`, only what
    this object sent, to merge into the committed row when written (an earlier object of
    the user was still pending when this one was built). Encoded bytes, not a dict of
    tuples, because thousands of these wait for the writer's commit: they must be cheap
    to hold and invisible to the garbage collector.
    """

    key: int
    check: int
    entries: Entries | bytes
    partial: bool
    intents: tuple[int, ...] = ()  # the intents written for it (two once merged)
    first: bool = False  # the ledger held nothing for the user, and nothing was on its way

    def merge(self, later: UserWrite) -> UserWrite:
        """The write of this object with a later one of the same user folded in."""
        # Both objects' intents are settled by the one write (the request carries one object).
        intents = self.intents + later.intents
        if later.partial:
            merged = {**_as_entries(self.entries), **_as_entries(later.entries)}
            stored: Entries | bytes = merged if self.partial else encode_entries(merged)
            return UserWrite(self.key, self.check, stored, self.partial, intents)
        return UserWrite(later.key, later.check, later.entries, later.partial, intents)


def _sent_dict(sent: Sent) -> dict[int, Any]:
    return dict(zip(*sent, strict=True)) if isinstance(sent, tuple) else sent


def _as_entries(entries: Entries | bytes) -> Entries:
    return decode_entries(entries) if isinstance(entries, bytes) else entries


@dataclass(slots=True)
class EventWrite:
    """What the ledger records for one event or purchase: in flight, then how it settled.

    `outcome` is "" while the object is on its way, then `confirmed`, `unknown` or
    `forgotten` (not delivered: its in-flight row is deleted).
    """

    key: int
    check: int
    user_key: int
    detail: str = ""  # what was sent (stream, user, object), kept while not confirmed
    outcome: str = ""


# Braze's confirmation of some objects: their ledger writes, their records, what settles
# them, and intents already settled otherwise (rejected objects) to delete.
_Confirmation = tuple[
    list["UserWrite | EventWrite"], list[int], Callable[[list[int]], None] | None, list[int]
]


@dataclass(slots=True)
class Selection:
    """`select`'s verdict: objects to send (trimmed to what changed), and what Braze holds."""

    send: list[BrazeObject] = field(default_factory=list)
    unchanged: list[BrazeObject] = field(default_factory=list)
    duplicates: list[BrazeObject] = field(default_factory=list)
    #: Events and purchases of unknown delivery (an earlier run sent them, no answer said
    #: whether Braze applied them): never sent again until released.
    unknown: list[BrazeObject] = field(default_factory=list)


class Ledger:
    """The delivery ledger of one run, on one workspace."""

    def __init__(
        self,
        config: Mapping[str, Any],
        endpoint: str | None,
        api_key: str | None,
        *,
        dry_run: bool,
    ) -> None:
        """Open the ledger (one connection to read, one for the writer thread)."""
        self.url = config.get("ledger_url")
        self.send_only_changes = bool(config["send_only_changes"])
        self.deduplicate_events = bool(config["deduplicate_events"])
        self.full_resync = bool(config["full_resync"])
        self._dry_run = dry_run
        retention = int(config["ledger_retention_days"])
        self._today = today()
        self._cutoff = self._today - retention if retention > 0 else -1
        label = config.get("ledger_workspace")
        identity = workspace_identity(endpoint or "", api_key, label)
        self._writer_store: LedgerStore | None = None
        self._reader: LedgerStore | None = None
        self._created = False  # this run registered the workspace
        self._kept = False  # Braze confirmed (or may hold) something: the workspace stays
        keyspace = identity
        if dry_run:
            # A dry run reads and never writes: no file, schema or workspace is created.
            path = sqlite_ledger_path(self.url or default_ledger_url())
            if path is None or path.exists():
                self._reader = open_store(self.url)
                found = self._reader.find_workspace(identity)
                self.workspace = -1 if found is None else found
                if found is not None:
                    keyspace = self._reader.workspace_keyspace(found)
            else:
                self.workspace = -1
        else:
            self._reader = open_store(self.url)
            if self._reader.find_workspace(identity) is None:
                try:
                    self._check_new_workspace(endpoint or "", label, config)
                except LedgerError:
                    self._reader.close()
                    raise
                self._created = True
            self.workspace = self._reader.register_workspace(identity, endpoint or "", label)
            keyspace = self._reader.workspace_keyspace(self.workspace)
        self._keys = KeySpace(keyspace)
        if not dry_run:
            self._writer_store = open_store(self.url)
            recovered = self._writer_store.recover_intents(self.workspace)
            if recovered:
                logger.warning(
                    "Ledger: %d users were on their way to Braze when a previous run stopped; "
                    "what Braze holds for them is unknown, so their attributes are sent in "
                    "full once",
                    recovered,
                )
            stranded = self._writer_store.recover_in_flight(self.workspace)
            if stranded:
                logger.warning(
                    "Ledger: %d events/purchases were in flight to Braze when a previous run "
                    "stopped; Braze may hold them, so they are not resent (delivery unknown): "
                    "list them with `target-braze-ledger unknown`, check Braze, then "
                    "`target-braze-ledger release` those it lacks",
                    stranded,
                )
            if retention > 0:
                forgotten = self._writer_store.forget_events_before(self.workspace, self._cutoff)
                if forgotten:
                    logger.info(
                        "Ledger: forgot %d event identities older than %d days",
                        forgotten,
                        retention,
                    )
        self._slots: dict[str, tuple[int, int]] = {}
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        self._thresholds: dict[str, dict[str, float]] = {}  # stream -> change_thresholds
        # Users this run selected to send, as bits, while the workspace is new this run.
        self._written = bytearray(_WRITTEN_MASK + 1) if self._created else None
        self._lock = threading.Lock()
        self._pending_users: dict[int, tuple[int, Sent]] = {}  # key -> (objects, digests)
        self._pending_events: dict[int, int] = {}  # key -> count
        self._open_intents: dict[int, int] = {}  # intent id -> objects not yet settled
        self._queue: queue.SimpleQueue[_Confirmation | None] = queue.SimpleQueue()
        self._queued = 0  # objects confirmed and not yet through the writer
        self._room = threading.Condition()
        self.failure: TargetBrazeError | None = None
        self._thread = threading.Thread(target=self._write_loop, name="ledger-writer", daemon=True)
        self._thread.start()
        logger.info(
            "Delivery ledger %s, workspace %d: %s%s",
            mask_url(self.url or default_ledger_url()),
            self.workspace,
            ", ".join(
                what
                for what, on in (
                    ("only changed attributes are sent", self.send_only_changes),
                    ("events and purchases deduplicated", self.deduplicate_events),
                )
                if on
            ),
            " (full_resync: every attribute is sent this run)" if self.full_resync else "",
        )

    def _check_new_workspace(
        self, endpoint: str, label: str | None, config: Mapping[str, Any]
    ) -> None:
        """Before a workspace the ledger has never seen is created: stop, or say so loudly.

        A key the ledger has never seen, on an endpoint where it holds another key's
        workspace, is most often that workspace's rotated key: starting afresh would send
        every attribute and every event again, so the run stops and names both ways on.
        """
        assert self._reader is not None  # noqa: S101 - only real runs register
        where = f"ledger_url {mask_url(self.url or default_ledger_url())}"
        others = self._reader.key_workspaces_at(endpoint) if endpoint and not label else []
        if others:
            ids = ", ".join(str(ws) for ws in others)
            raise LedgerError(
                f"{where} holds workspace {ids} for {endpoint} under another API key, and "
                "nothing for this api_key; nothing was sent. If this is a rotated key of the "
                f"same workspace, run `target-braze-ledger move-workspace --from {others[0]}` "
                "with this config (the ledger keeps what Braze holds); if it is another "
                "workspace, set ledger_workspace to name it; if the key is mistyped, fix api_key"
            )
        what = "is new" if self._reader.created else "holds nothing for this workspace"
        if config.get("require_existing_ledger"):
            raise LedgerError(
                f"{where} {what}, and require_existing_ledger is on; nothing was sent. Point "
                "ledger_url at the ledger earlier runs wrote, or create it deliberately with "
                "`target-braze-ledger init` (every attribute, event and purchase is then sent "
                "once more)"
            )
        logger.warning(
            "%s %s: every attribute is sent, and every event and purchase the tap sends will "
            "be delivered, even ones an earlier ledger knew Braze holds (if the ledger moved, "
            "point ledger_url at it; require_existing_ledger: true makes this an error)",
            where,
            what,
        )

    # --- choosing what to send (main thread) ----------------------------------------------

    def _slot(self, name: str) -> tuple[int, int]:
        """The name's slot in a user's entries, and the seed of its value digests."""
        seed = _digest(name.encode("utf-8", "surrogatepass"))
        slot = self._slots[name] = (seed & 0xFFFFFFFF, seed)
        return slot

    def _layout(self, keys: tuple[str, ...]) -> _Layout | None:
        """The layout of objects whose body has these keys, in this order."""
        names = tuple(name for name in keys if name not in CONTROL_KEYS)
        if len(names) > _MAX_ENTRIES:
            return None
        pairs = [self._slots.get(name) or self._slot(name) for name in names]
        slots = tuple(slot for slot, _ in pairs)
        values: Callable[[Mapping[str, Any]], tuple[Any, ...]]
        if len(names) > 1:
            values = operator.itemgetter(*names)
        else:
            only = names[0] if names else ""
            values = (lambda body: (body[only],)) if names else (lambda _body: ())
        layout = _Layout(
            names,
            tuple(seed for _, seed in pairs),
            slots,
            _COUNT.pack(len(slots)) + array("I", slots).tobytes(),
            array("H", [self._today] * len(slots)).tobytes(),
            values,
            not PERSONAL_FIELDS.isdisjoint(names),
            2 + 6 * len(slots) + 8,
        )
        if len(self._layouts) < 1024:  # a tap whose records vary in shape gets no cache
            self._layouts[keys] = layout
        return layout

    def select(self, objects: list[BrazeObject]) -> Selection:
        """Drop what Braze already holds; the rest is trimmed to what changed, in order."""
        arrays = set(map(_array_of, objects))
        if arrays == {"attributes"}:  # a table of attributes: no pass per object to split
            users = list(objects) if self.send_only_changes else []
            events = []
        else:
            users = (
                [o for o in objects if o.array == "attributes"] if self.send_only_changes else []
            )
            events = (
                [o for o in objects if o.array != "attributes"] if self.deduplicate_events else []
            )
        user_key = self._keys.user
        user_keys = self._keys.users(list(map(_user_key_of, users)))
        event_keys = [self._keys.event(self._event_identity(obj)) for obj in events]
        with self._lock:
            pending_users = self._pending_users
            # A copy of what is on its way for these users (`_trim` adds to it, outside the
            # lock); the users found by a set intersection in C, not a test per user.
            pending: dict[int, Sent] = {
                key: dict(_sent_dict(pending_users[key][1]))
                for key in (pending_users.keys() & map(_first, user_keys) if pending_users else ())
            }
            pending_events = {key for key, _ in event_keys if key in self._pending_events}
        reader = self._reader
        lookup = self._maybe_stored(user_keys) if users and reader else []
        stored = reader.read_users(lookup) if lookup and reader else {}
        seen_events = (
            reader.read_event_states([k for k, _ in event_keys]) if events and reader else {}
        )
        verdict: dict[int, str] = {}
        sent_digests: list[tuple[int, Sent]] = []
        sent_users: list[BrazeObject] = []
        firsts = None if stored or pending else self._first_writes(users, user_keys)
        if firsts is not None:
            sent_digests = firsts
        else:
            for obj, (key, check) in zip(users, user_keys, strict=True):
                row = stored.get(key)
                known = row is not None and row[0] == check
                sent = self._trim(obj, key, check, row[1] if known else b"", known, pending)  # type: ignore[index]
                if sent is None:
                    verdict[id(obj)] = "unchanged"
                else:
                    sent_digests.append((key, sent))
                    sent_users.append(obj)
        selected: set[int] = set()
        event_keys_sent = []
        sent_events: list[EventWrite] = []
        for obj, (key, check) in zip(events, event_keys, strict=True):
            seen = seen_events.get(key)
            if key in pending_events or key in selected:
                verdict[id(obj)] = "duplicates"  # the same identity is on its way
            elif seen is not None and seen[0] == check:
                # Not on its way in this run: `in_flight` was left by a stopped run (or
                # is this run's own, settled unknown, not yet written as such).
                verdict[id(obj)] = "duplicates" if seen[1] == CONFIRMED else "unknown"
            else:
                selected.add(key)
                event_keys_sent.append(key)
                write = EventWrite(key, check, user_key(*obj.user_key)[0], _describe(obj))
                obj.ledger = write
                sent_events.append(write)
        self._intend(sent_users, sent_events)
        selection = Selection()
        if verdict:
            for obj in objects:
                getattr(selection, verdict.get(id(obj), "send")).append(obj)
        else:
            selection.send = objects
        self._add_pending(sent_digests, event_keys_sent)
        if self._written is not None and sent_digests:
            slots = map(operator.and_, map(_first, sent_digests), _repeat(_WRITTEN_MASK))
            _consume(map(self._written.__setitem__, slots, _repeat(1)))
        return selection

    def _first_writes(
        self, users: list[BrazeObject], user_keys: list[tuple[int, int]]
    ) -> list[tuple[int, Sent]] | None:
        """Every user of a selection is new to the ledger: `_first_write` for all, in bulk.

        For a first sync's selections: nothing stored, nothing on its way, each user once,
        one layout of short values that are not personal. The same rows and pending values
        as `_first_write` gives each, made in C-level passes over the selection (no Python
        per user, beyond the write's object). None when the selection is not such.
        """
        if not users:
            return []
        shapes = set(map(tuple, map(_body_of, users)))
        if len(shapes) != 1 or len(set(user_keys)) != len(user_keys):
            return None
        (shape,) = shapes
        layout = self._layouts.get(shape) or self._layout(shape)
        if layout is None or layout.personal:
            return None
        values = list(map(layout.values, map(_body_of, users)))
        encoded = list(map(_dumps_sorted, values))
        if max(map(len, encoded)) > _LONG_VALUE:
            return None  # some value is stored as its digest: `_first_write` decides
        head = layout.prefix + layout.fresh_days
        rows = map(
            head.__add__, map(bytes.__add__, map(_whole_digest, map(_encoded_of, users)), encoded)
        )
        keys = list(map(_first, user_keys))
        writes = map(
            UserWrite,
            keys,
            map(_second, user_keys),
            rows,
            _repeat(False),
            _repeat(()),
            _repeat(True),
        )
        _consume(map(setattr, users, _repeat("ledger"), writes))
        return list(zip(keys, zip(_repeat(layout.slots), values, strict=False), strict=True))

    def _maybe_stored(self, user_keys: list[tuple[int, int]]) -> list[int]:
        """The keys to look up: all, or in a workspace new this run, those it may have written.

        Every row of a workspace this run registered was written by this run, for a user
        it selected to send: users it never selected need no lookup (a first sync makes
        none). A key's slot may be another's (a Bloom filter of one hash): then the lookup
        is made and finds nothing.
        """
        written = self._written
        keys = list(map(_first, user_keys))
        if written is None:
            return keys
        slots = map(operator.and_, keys, _repeat(_WRITTEN_MASK))
        return list(itertools.compress(keys, map(written.__getitem__, slots)))

    def _trim(
        self,
        obj: BrazeObject,
        key: int,
        check: int,
        blob: bytes,
        known: bool,
        pending: dict[int, Sent],
    ) -> Sent | None:
        """Keep only changed attributes in `obj`: the values sent, or None if none is left.

        Pass an attribute only if both what Braze confirmed (fresh, within the retention)
        and what is on its way to Braze for this user equal the new value. `blob` is the
        user's stored row (b"" if none).
        """
        in_flight = pending.get(key)
        if isinstance(in_flight, tuple):  # a first write earlier in this selection
            in_flight = pending[key] = _sent_dict(in_flight)
        whole = _NO_WHOLE  # the whole object's digest, stored only if the row is all of it
        if in_flight is None:
            whole = _whole_digest(obj.encoded)
            if blob and not self.full_resync and unchanged_whole(blob, whole, self._cutoff):
                return None
            keys = tuple(obj.body)
            layout = self._layouts.get(keys) or self._layout(keys)
            if layout is not None:
                if not blob:
                    sent = self._first_write(obj, key, check, layout, whole)
                    pending[key] = sent
                    return sent
                if blob.startswith(layout.prefix) and obj.stream not in self._thresholds:
                    decided = self._trim_layout(obj, key, check, blob, layout, whole)
                    if decided is not _GENERAL:
                        if decided is not None:
                            pending[key] = decided  # type: ignore[assignment]
                        return decided  # type: ignore[return-value]
        entries = decode_entries(blob)
        return self._trim_entries(obj, key, check, entries, known, in_flight, pending, whole)

    def set_change_thresholds(self, stream: str, thresholds: Mapping[str, float]) -> None:
        """`change_thresholds` of an attributes stream: by attribute, "*" for the others."""
        if thresholds:
            self._thresholds[stream] = dict(thresholds)
        else:
            self._thresholds.pop(stream, None)

    def _trim_layout(
        self, obj: BrazeObject, key: int, check: int, blob: bytes, layout: _Layout, whole: bytes
    ) -> Sent | object | None:
        """`_trim` of a user stored in the object's layout (the hot case of a wide table).

        The same decisions as `_trim_entries`, on the row's bytes and one list of values:
        nothing is in flight for the user and the stored slots are the layout's, in its
        order. `_GENERAL` when the general path must decide (digests, nested values).
        """
        body = obj.body
        values = layout.values(body)
        encoded, stored_new = layout.encode(values)
        at = layout.values_at
        start, end = len(layout.prefix), at - 8  # the days
        cutoff = self._cutoff
        if len(blob) <= at:
            return _GENERAL  # a damaged row: read as no entries
        stored_json = blob[at:]
        if self.full_resync:
            obj.ledger = UserWrite(key, check, layout.fresh_row(whole, encoded), partial=False)
            return layout.slots, stored_new
        # One comparison: every value equals what Braze confirmed (and none is too old).
        if stored_json == encoded and (
            cutoff < 0 or not values or min(array("H", blob[start:end])) > cutoff
        ):
            return None
        if stored_new is not values or _MARKED in stored_json or _nested(encoded):
            return _GENERAL  # digests, or values `==` cannot compare exactly
        try:
            stored = _loads(stored_json)
        except orjson.JSONDecodeError:
            return _GENERAL
        if type(stored) is not list or len(stored) != len(values):
            return _GENERAL
        # `!=` with the types: 1, 1.0 and True are three values to Braze.
        send = list(
            map(
                operator.or_,
                map(_differs, stored, values),
                map(operator.is_not, map(type, stored), map(type, values)),
            )
        )
        days = array("H", blob[start:end])
        if cutoff >= 0 and days and min(days) <= cutoff:  # some were confirmed too long ago
            send = [differs or day <= cutoff for differs, day in zip(send, days, strict=True)]
        if all(send):  # the whole object goes, as a first write
            obj.ledger = UserWrite(key, check, layout.fresh_row(whole, encoded), partial=False)
            return layout.slots, stored_new
        changed = [i for i, differs in enumerate(send) if differs]
        if not changed:
            return None
        today_ = self._today
        for i in changed:
            days[i] = today_
        names = {layout.names[i] for i in changed}
        kept = {
            name: value for name, value in body.items() if name in names or name in CONTROL_KEYS
        }
        obj.replace_body(kept, len(changed))
        row = layout.prefix + days.tobytes() + whole + encoded
        obj.ledger = UserWrite(key, check, row, partial=False)
        slots = layout.slots
        return {slots[i]: values[i] for i in changed}

    def _trim_entries(
        self,
        obj: BrazeObject,
        key: int,
        check: int,
        entries: Entries,
        known: bool,
        in_flight: dict[int, Any] | None,
        pending: dict[int, Sent],
        whole: bytes,
    ) -> dict[int, Any] | None:
        """`_trim` in general: entries in any order, or an earlier object still in flight.

        `whole` (zeros when `in_flight`) is stored with the row: it holds the whole object.
        """
        partial = in_flight is not None
        thresholds = self._thresholds.get(obj.stream)
        held = False  # some number moved less than its threshold: Braze keeps the old one
        slots = self._slots
        day = self._today
        cutoff = self._cutoff
        resend = self.full_resync
        others = in_flight or {}
        body = obj.body
        sent = {}
        written: Entries = {} if partial else entries
        kept: dict[str, Any] = {}
        for name, value in body.items():
            if name in CONTROL_KEYS:
                kept[name] = value
                continue
            slot, seed = slots.get(name) or self._slot(name)
            encoded = _dumps(value, None, _SORT_KEYS)
            confirmed = entries.get(slot)
            fresh = not resend and confirmed is not None and confirmed[0] > cutoff
            if (
                fresh
                and _matches(confirmed[1], encoded, seed)  # type: ignore[index]
                and (slot not in others or _matches(others[slot], encoded, seed))
            ):
                continue
            if thresholds is not None and (fresh or slot in others):
                # Against what Braze will hold: the value on its way, else the confirmed one.
                held_value = others[slot] if slot in others else confirmed[1]  # type: ignore[index]
                limit = thresholds.get(name, thresholds.get("*"))
                if limit is not None and _moved_less(value, held_value, limit):
                    held = True
                    continue
            if len(encoded) <= _LONG_VALUE and name not in PERSONAL_FIELDS:
                stored = value
            else:
                stored = {_MARK: _digest(encoded, seed)}
            kept[name] = value
            sent[slot] = stored
            written[slot] = (day, stored)
        # A record with no attributes at all still creates the user the first time.
        if not sent and (known or partial or len(kept) != len(body)):
            return None
        if len(kept) != len(body):
            obj.replace_body(kept, len(sent))
        pending.setdefault(key, {}).update(sent)  # type: ignore[union-attr]  # a dict here
        # A row that keeps a held value is not the object's whole: no digest of it.
        stored_row = written if partial else encode_entries(written, _NO_WHOLE if held else whole)
        obj.ledger = UserWrite(key, check, stored_row, partial)
        return sent

    def _first_write(
        self, obj: BrazeObject, key: int, check: int, layout: _Layout, whole: bytes
    ) -> Sent:
        """A user the ledger has never seen: every attribute is sent (a first sync).

        No loop per attribute: the values are taken in one call and encoded in another.
        """
        encoded, stored = layout.encode(layout.values(obj.body))
        row = layout.fresh_row(whole, encoded)
        obj.ledger = UserWrite(key, check, row, partial=False, first=True)
        return layout.slots, stored

    @staticmethod
    def _event_identity(obj: BrazeObject) -> bytes:
        if obj.key_values is not None:
            return _dumps([obj.stream, obj.array, obj.key_values], default=str)
        return _dumps(obj.body, option=_SORT_KEYS, default=str)

    def _add_pending(self, users: list[tuple[int, Sent]], events: list[int]) -> None:
        keys = list(map(_first, users))
        once = len(set(keys)) == len(keys)
        with self._lock:
            pending_users = self._pending_users
            if once and pending_users.keys().isdisjoint(keys):
                # Each user once, none pending yet (a first sync): one `update`, in C.
                pending_users.update(
                    zip(keys, zip(_repeat(1), map(_second, users), strict=False), strict=True)
                )
                users = []
            for key, sent in users:
                held = pending_users.get(key)
                pending_users[key] = (
                    (1, sent)
                    if held is None
                    else (held[0] + 1, {**_sent_dict(held[1]), **_sent_dict(sent)})
                )
            pending_events = self._pending_events
            for key in events:
                pending_events[key] = pending_events.get(key, 0) + 1

    def _intend(self, users: list[BrazeObject], events: list[EventWrite]) -> None:
        """Write first (committed) that these users' objects may reach Braze: one intent.

        The same write records `events` as `in_flight`: a run killed at any moment after
        leaves them for the next run to find, which then treats them as of unknown
        delivery instead of new (Braze never deduplicates events).

        If the run dies after Braze applied one but before the ledger recorded it, the next
        run finds the intent and stops trusting what the ledger holds for these users
        (`recover_intents`): a stale entry could otherwise equal a new value and skip it.
        A user the ledger held no entries for, with nothing on its way, needs none: after
        such a crash it still has no row, so it is sent in full anyway (a first sync writes
        no intents). Called by `select`, before any of these objects is packed.
        """
        if self._dry_run or self._reader is None:
            return
        writes = [
            write for obj in users if isinstance(write := obj.ledger, UserWrite) and not write.first
        ]
        if not writes and not events:
            return
        today_ = self._today
        intent = self._reader.add_intent(
            self.workspace,
            [write.key for write in writes],
            [(e.key, e.check, e.user_key, today_, e.detail) for e in events],
        )
        if not writes:
            return
        for write in writes:
            write.intents = (intent,)
        with self._lock:
            self._open_intents[intent] = len(writes)

    def _settled_intents(self, writes: Sequence[UserWrite | EventWrite]) -> list[int]:
        """Count these writes' objects as settled; the intents now wholly settled."""
        done: list[int] = []
        with self._lock:
            if not self._open_intents:  # a first sync opens none: no loop per write
                return done
            for write in writes:
                if not isinstance(write, UserWrite):
                    continue
                for intent in write.intents:
                    left = self._open_intents.get(intent, 1) - 1
                    if left <= 0:
                        self._open_intents.pop(intent, None)
                        done.append(intent)
                    else:
                        self._open_intents[intent] = left
        return done

    def forget_pending(self, objects: Sequence[BrazeObject]) -> None:
        """These objects will not be confirmed (rejected): they are pending no more.

        A rejected event or purchase was not delivered: its in-flight row is deleted (by
        the writer, which then ends its pending), so a fixed rerun may send it.
        """
        writes = [obj.ledger for obj in objects if obj.ledger is not None]
        users = [write for write in writes if isinstance(write, UserWrite)]
        events = [write for write in writes if isinstance(write, EventWrite)]
        self._release(users)
        done = self._settled_intents(users)
        for write in events:
            write.outcome = FORGOTTEN
        if done or events:  # the writer deletes them with its next commit
            with self._room:
                self._queued += len(events)
            self._queue.put((list(events), [], None, done))

    def not_sent(self, objects: Sequence[BrazeObject]) -> None:
        """The run failed before these objects' request could reach Braze.

        Their events and purchases were certainly not applied (the request was refused,
        rate limited until the retries ran out, or never sent): their in-flight rows are
        deleted so the rerun sends them. Nothing settles.
        """
        unsent = [
            obj for obj in objects if isinstance(obj.ledger, EventWrite) and not obj.ledger.outcome
        ]
        if unsent:
            self.forget_pending(unsent)

    def unknown(self, objects: Sequence[BrazeObject], then: Callable[[list[int]], None]) -> None:
        """Braze may hold these events or purchases: record them `unknown`, then `then(seqs)`."""
        for obj in objects:
            if isinstance(obj.ledger, EventWrite):
                obj.ledger.outcome = UNKNOWN
        self._queue_settled(objects, then)

    def _release(self, writes: Sequence[UserWrite | EventWrite]) -> None:
        if writes and set(map(type, writes)) == {UserWrite}:
            keys = list(map(_key_of, writes))
            if len(set(keys)) == len(keys):
                with self._lock:
                    popped: list[tuple[int, Sent] | None] = list(
                        map(self._pending_users.pop, keys, _repeat(None))
                    )
                    if max(map(_first, filter(None, popped)), default=1) <= 1:
                        return  # each was pending once (the common case): all popped, in C
                    for key, was in zip(keys, popped, strict=True):  # put back the others
                        if was is not None and was[0] > 1:
                            self._pending_users[key] = (was[0] - 1, was[1])
                return
        with self._lock:
            for write in writes:
                table: dict[int, Any] = (
                    self._pending_users if isinstance(write, UserWrite) else self._pending_events
                )
                held = table.get(write.key)
                count = held[0] if isinstance(held, tuple) else (held or 1)
                if count <= 1:
                    table.pop(write.key, None)
                elif isinstance(held, tuple):
                    table[write.key] = (count - 1, held[1])
                else:
                    table[write.key] = count - 1

    # --- recording what Braze confirmed (writer thread) ------------------------------------

    def confirmed(self, objects: Sequence[BrazeObject], then: Callable[[list[int]], None]) -> None:
        """Braze confirmed `objects`: record them, then call `then(seqs)` (to settle).

        Only the writes and sequence numbers are kept until the commit, not the objects.
        """
        for obj in objects:
            if isinstance(obj.ledger, EventWrite):
                obj.ledger.outcome = CONFIRMED
        self._queue_settled(objects, then)

    def forget_deleted_users(self, users: Sequence[tuple[str, str]]) -> None:
        """Braze deleted these users: forget their attributes, keep their event identities.

        Called by the writer thread (a `confirmed` callback), so the writer's store is
        used by one thread only. A user created again then gets every attribute, and an
        event re-emitted for them is still a duplicate.
        """
        if self._writer_store is None or self.failure is not None:
            return
        with self._failure_recorded("forgetting deleted users in the ledger"):
            keys = [self._keys.user(kind, identifier)[0] for kind, identifier in users]
            self._writer_store.clear_users(self.workspace, keys, events=False)

    @contextlib.contextmanager
    def _failure_recorded(self, doing: str) -> Iterator[None]:
        """Keep a failure of the writer thread's `doing` in `failure` (the run ends on it)."""
        try:
            yield
        except TargetBrazeError as exc:
            self.failure = exc
        except Exception as exc:
            logger.debug("Unexpected error %s", doing, exc_info=True)
            self.failure = TargetBrazeError(f"unexpected {type(exc).__name__} {doing}: {exc}")

    def _queue_settled(
        self, objects: Sequence[BrazeObject], then: Callable[[list[int]], None]
    ) -> None:
        """Hand settled objects' writes to the writer (waiting while it is far behind)."""
        writes = [obj.ledger for obj in objects if obj.ledger is not None]
        seqs = [seq for obj in objects for seq in obj.seqs]
        with self._room:
            while self._queued >= _QUEUED_OBJECTS:
                self._room.wait()
            self._queued += len(writes)
        self._queue.put((writes, seqs, then, []))

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            group = [item]
            size = len(item[0])
            started = time.monotonic()
            done = False
            while size < _GROUP_OBJECTS:
                wait = _GROUP_SECONDS - (time.monotonic() - started)
                try:
                    more = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                group.append(more)
                size += len(more[0])
            try:
                self._write_group(group)
            finally:  # also after a failure: the senders must not wait for it forever
                with self._room:
                    self._queued -= size
                    self._room.notify_all()
            if done:
                return

    def _write_group(self, group: list[_Confirmation]) -> None:
        writes = [write for item in group for write in item[0]]
        done = [intent for item in group for intent in item[3]]
        done += self._settled_intents(writes)
        if self.failure is None and not self._dry_run:
            with self._failure_recorded("writing the ledger"):
                self._commit(writes, done)
        if self.failure is not None:
            return  # nothing settles: STATE stays where the ledger is
        if any(isinstance(w, UserWrite) or w.outcome != FORGOTTEN for w in writes):
            self._kept = True  # Braze confirmed something, or may hold it: the workspace stays
        self._release(writes)
        for _, seqs, then, _ in group:
            if then is not None:
                then(seqs)

    def _commit(self, writes: list[UserWrite | EventWrite], done_intents: list[int]) -> None:
        assert self._writer_store is not None  # noqa: S101 - only real runs write
        if writes and set(map(type, writes)) == {UserWrite}:
            keys = list(map(_key_of, writes))
            blobs = list(map(_entries_of, writes))
            if (
                not any(map(_partial_of, writes))
                and set(map(type, blobs)) == {bytes}
                and len(set(keys)) == len(keys)
            ):
                # Whole rows, each user once (a first sync, a changed table): no merging,
                # the rows straight from the writes, in C-level passes.
                rows = list(zip(keys, map(_check_of, writes), blobs, strict=True))
                self._writer_store.write(self.workspace, rows, [], done_intents)
                return
        users: dict[int, UserWrite] = {}
        events = []
        unknown = []
        forgotten = []
        for write in writes:
            if isinstance(write, UserWrite):
                earlier = users.get(write.key)
                users[write.key] = write if earlier is None else earlier.merge(write)
            elif write.outcome == UNKNOWN:
                unknown.append(write.key)
            elif write.outcome == FORGOTTEN:
                forgotten.append(write.key)
            else:
                events.append((write.key, write.check, write.user_key, self._today))
        partial = [write.key for write in users.values() if write.partial]
        committed = self._writer_store.read_users(partial) if partial else {}
        rows = []
        for write in users.values():
            entries = write.entries
            if write.partial:
                row = committed.get(write.key)
                base = decode_entries(row[1]) if row is not None and row[0] == write.check else {}
                entries = encode_entries({**base, **_as_entries(entries)})
            elif not isinstance(entries, bytes):
                entries = encode_entries(entries)
            rows.append((write.key, write.check, entries))
        self._writer_store.write(self.workspace, rows, events, done_intents, unknown, forgotten)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the connections.

        A workspace this run created and never recorded a confirmation in is removed again:
        a key Braze refused (401), or a run stopped before any answer, leaves no empty
        workspace behind to be mistaken for a known one.
        """
        self._queue.put(None)
        self._thread.join()
        if self._created and not self._kept and self._reader is not None and self.failure is None:
            with contextlib.suppress(TargetBrazeError):
                self._reader.clear_workspace(self.workspace)
        if self._reader is not None:
            self._reader.close()
        if self._writer_store is not None:
            self._writer_store.close()
