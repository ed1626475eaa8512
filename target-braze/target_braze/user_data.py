"""Braze's other user-data endpoints: deletes, aliases and identify, subscription states.

Records of deletes, aliases and subscriptions streams become objects of Braze's user-data API.

Each object's `encoded` is its element of the endpoint's array: an identifier of
`/users/delete`, a user alias of `/users/alias/new`, an alias to identify of
`/users/identify`; a subscription is `{"group", "state"}`, packed by `user_data.py` into
the endpoint that needs fewer requests. None of them is a billed data point.

`UserData`: deletes, aliases, identify and subscription states, each to its own endpoint.

Each endpoint has a `BrazeClient` of its own (its path, its answers) and a
`UsersTrackSender` of its own (concurrency, retries, splitting on 400, `errors[]` mapped
back to the object, settlement); `/users/delete`, `/users/alias/new` and `/users/identify`
share one `RateLimiter` (Braze: 20,000 requests per minute between them), and
`/v2/subscription/status/set` has its own (5,000 per minute). Every one of these objects
is safe to send twice, so an ambiguous answer is retried like an attributes request.

Order, relative to the /users/track traffic of the same run:

* **Aliases** go as their requests fill (50 each). A /users/track object of a stream
  whose SCHEMA arrived after aliases of this run, for a user such an alias or identify
  names, first waits until Braze confirmed every alias and identify so far, then
  `alias_wait_seconds` (Braze asks for a pause before an alias is used elsewhere).
* **Identify** waits for the /users/track requests before it in the input (so an alias
  user's attributes are there to merge), and for aliases of this run it names (created,
  confirmed, then the pause).
* **Subscriptions** go after the /users/track requests before them (a user created in the
  run exists), through whichever endpoint needs fewer requests for what is pending:
  /users/track attributes objects with `subscription_groups` (75 users a request) or
  /v2/subscription/status/set (50 identifiers a request).
* **Deletes** are held until the end of the input, after every /users/track request: only
  then is their number known, so `max_deletes_per_run` and `max_delete_ratio` can stop the
  run before anything is deleted. A confirmed delete makes the ledger forget the user's
  attributes (a user created again gets everything) and keep their event identities.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from target_braze.build import MAX_EXTERNAL_ID_BYTES, ObjectBuilder, StreamSettings
from target_braze.client import BrazeClient, Outcome, RateLimiter, RetryPolicy, Sends
from target_braze.errors import ConfigError, TargetBrazeError
from target_braze.objects import BrazeObject, Origin, Rejection
from target_braze.pack import RequestBatch, RequestLimits, UsersTrackBatch
from target_braze.report import RunStats
from target_braze.send import UsersTrackSender
from target_braze.settle import Settlement

if TYPE_CHECKING:
    from target_braze.send import Delivery


#: The states /v2/subscription/status/set and /users/track's subscription_groups accept.
SUBSCRIPTION_STATES = ("subscribed", "unsubscribed")


class UserDataBuilder:
    """The per-stream recipe for deletes, aliases and subscriptions streams."""

    def __init__(self, settings: StreamSettings) -> None:
        """Nothing per property: these records carry a few named values."""
        self.settings = settings
        self.stream = settings.stream

    def build(self, record: dict[str, Any], seq: int, line: Origin) -> BrazeObject | Rejection:
        """One record as a delete, alias, identify or subscription object, or a rejection."""
        settings = self.settings
        identifier, problem = _identifier(record, settings.identifier_property)
        if problem:
            return Rejection(self.stream, identifier, record, problem, line)
        kind = settings.object_type
        if kind == "deletes":
            return delete_object(settings, identifier, record, seq, line)
        if kind == "aliases":
            return self._alias(identifier, record, seq, line)
        return self._subscription(identifier, record, seq, line)

    def _alias(self, name: str, record: dict[str, Any], seq: int, line: Origin) -> Any:
        settings = self.settings
        alias = {"alias_name": name, "alias_label": settings.alias_label}
        target = record.get(settings.identify_property or "")
        if target is None or target == "":
            user = ("user_alias", name)
            return _object("aliases", user, alias, settings, name, record, seq, line)
        external_id = str(target)
        if len(external_id.encode()) > MAX_EXTERNAL_ID_BYTES:
            return Rejection(
                self.stream,
                name,
                record,
                f"'{settings.identify_property}' is longer than Braze's "
                f"{MAX_EXTERNAL_ID_BYTES}-byte external_id limit",
                line,
            )
        element = {"external_id": external_id, "user_alias": alias}
        return _object("identify", ("user_alias", name), element, settings, name, record, seq, line)

    def _subscription(self, identifier: str, record: dict[str, Any], seq: int, line: Origin) -> Any:
        settings = self.settings
        group = settings.subscription_group_id or record.get(
            settings.subscription_group_id_property or ""
        )
        if group is None or group == "":
            return Rejection(
                self.stream,
                identifier,
                record,
                f"'{settings.subscription_group_id_property}' (the subscription group id) is empty",
                line,
            )
        state_property = settings.subscription_state_property or ""
        state = record.get(state_property)
        normal = state.strip().lower() if isinstance(state, str) else None
        if normal not in SUBSCRIPTION_STATES:
            return Rejection(
                self.stream,
                identifier,
                record,
                f"'{state_property}' is {str(state)[:40]!r}; Braze takes subscribed or "
                "unsubscribed",
                line,
                "INVALID_SUBSCRIPTION_STATE",
            )
        element = {"group": str(group), "state": normal}
        if settings.identifier_type == "user_alias":
            element["label"] = settings.alias_label or ""
        user = (settings.identifier_type, identifier)
        return _object("subscriptions", user, element, settings, identifier, record, seq, line)


class DeletingBuilder:
    """An attributes stream whose records may say the user is deleted (`deleted_property`).

    A record with that property set becomes a delete; any other is built as usual.
    """

    def __init__(self, settings: StreamSettings, attributes: ObjectBuilder) -> None:
        """Wrap the stream's attributes builder."""
        self.settings = settings
        self._attributes = attributes
        self._property = settings.deleted_property or ""

    def build(self, record: dict[str, Any], seq: int, line: Origin) -> BrazeObject | Rejection:
        """A delete when the record says so, else the attributes object."""
        marker = record.get(self._property)
        if marker is None or marker == "" or marker is False:
            return self._attributes.build(record, seq, line)
        settings = self.settings
        identifier, problem = _identifier(record, settings.identifier_property)
        if problem:
            return Rejection(settings.stream, identifier, record, problem, line)
        return delete_object(settings, identifier, record, seq, line)


def delete_object(
    settings: StreamSettings, identifier: str, record: dict[str, Any], seq: int, line: Origin
) -> BrazeObject | Rejection:
    """The user `identifier` (of the stream's identifier_type) as an element of /users/delete."""
    kind = settings.identifier_type
    if kind == "external_id" and len(identifier.encode()) > MAX_EXTERNAL_ID_BYTES:
        return Rejection(
            settings.stream,
            identifier,
            record,
            f"'{settings.identifier_property}' is longer than Braze's "
            f"{MAX_EXTERNAL_ID_BYTES}-byte external_id limit",
            line,
        )
    element: Any = (
        {"alias_name": identifier, "alias_label": settings.alias_label}
        if kind == "user_alias"
        else identifier
    )
    return _object("deletes", (kind, identifier), element, settings, identifier, record, seq, line)


def _identifier(record: dict[str, Any], name: str) -> tuple[str, str]:
    """The record's identifier as text, and a problem ('' when none)."""
    raw = record.get(name)
    if raw is None or raw == "" or isinstance(raw, dict | list):
        return "", f"'{name}' is empty; every user-data record names a user"
    return str(raw), ""


def _object(
    array: Any,
    user: tuple[str, str],
    element: Any,
    settings: StreamSettings,
    identifier: str,
    record: dict[str, Any],
    seq: int,
    line: Origin,
) -> BrazeObject:
    return BrazeObject(
        array,
        user,
        element if isinstance(element, dict) else {"id": element},
        0,  # deletes, aliases and subscription states are not billed data points
        [seq],
        [record],
        [line],
        settings.stream,
        identifier,
        encoded=orjson.dumps(element),
    )


logger = logging.getLogger("target_braze")

#: Braze's limit: identifiers per /users/delete, /users/alias/new, /users/identify and
#: /v2/subscription/status/set request.
MAX_IDS_PER_REQUEST = 50

#: Subscriptions pending before they are packed: a whole number of requests either way.
_SUBSCRIPTION_FLUSH = 150

DELETE = "/users/delete"

ALIAS = "/users/alias/new"

IDENTIFY = "/users/identify"

SUBSCRIPTIONS = "/v2/subscription/status/set"

# /users/delete's array for each identifier type (one type per request).
_DELETE_ARRAYS = {
    "external_id": "external_ids",
    "user_alias": "user_aliases",
    "braze_id": "braze_ids",
    "email": "email_addresses",
    "phone": "phone_numbers",
}

# /v2/subscription/status/set's array for each identifier type it takes.
_SUBSCRIPTION_ARRAYS = {"external_id": "external_ids", "email": "emails", "phone": "phones"}


class DeleteGuardTripped(TargetBrazeError):
    """More deletes than `max_deletes_per_run` or `max_delete_ratio` allow: none was sent."""


def delete_guards(config: Mapping[str, Any]) -> tuple[int, float]:
    """`max_deletes_per_run` and `max_delete_ratio`, checked.

    Raises:
        ConfigError: one line naming the setting out of range.

    """
    most, ratio = int(config["max_deletes_per_run"]), float(config["max_delete_ratio"])
    if most < 0:
        raise ConfigError("max_deletes_per_run must be 0 (no limit) or more")
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("max_delete_ratio must be between 0 and 1 (0.1 = 10%; 1: no limit)")
    return most, ratio


class UserDataBatch:
    """The objects of one request to a user-data endpoint (`RequestBatch` for the sender)."""

    def __init__(
        self, render: Callable[[list[BrazeObject]], bytes], objects: list[BrazeObject]
    ) -> None:
        """`render` turns the objects into the request body."""
        self._render = render
        self.objects = objects

    def __len__(self) -> int:
        return len(self.objects)

    def body(self) -> bytes:
        """The request body."""
        return self._render(self.objects)

    def index_of(self, array: str, index: int) -> BrazeObject | None:
        """The object at `index` of the request's one identifier array."""
        return self.objects[index] if 0 <= index < len(self.objects) else None

    def subset(self, objects: list[BrazeObject]) -> UserDataBatch:
        """Some of the objects, for a resend."""
        return UserDataBatch(self._render, objects)

    def halves(self) -> list[RequestBatch]:
        """Split in two (400: one identifier may be what Braze refuses)."""
        middle = len(self.objects) // 2
        return [self.subset(self.objects[:middle]), self.subset(self.objects[middle:])]


def _array_body(name: str, extra: bytes = b"") -> Callable[[list[BrazeObject]], bytes]:
    head = b'{"' + name.encode() + b'":['

    def render(objects: list[BrazeObject]) -> bytes:
        return head + b",".join(obj.encoded for obj in objects) + b"]" + extra + b"}"

    return render


def _subscriptions_body(objects: list[BrazeObject]) -> bytes:
    """/v2/subscription/status/set: one entry per group, state and kind of identifier."""
    entries: dict[tuple[str, str, str], list[str]] = {}
    for obj in objects:
        group, state = obj.body["group"], obj.body["state"]
        array = _SUBSCRIPTION_ARRAYS[obj.user_key[0]]
        entries.setdefault((group, state, array), []).append(obj.identifier)
    return orjson.dumps(
        {
            "subscription_groups": [
                {"subscription_group_id": group, "subscription_state": state, array: ids}
                for (group, state, array), ids in entries.items()
            ]
        }
    )


def _submit_chunks(
    endpoint: _Endpoint, render: Callable[[list[BrazeObject]], bytes], objects: list[BrazeObject]
) -> None:
    """Requests of at most 50 objects each, in order."""
    for start in range(0, len(objects), MAX_IDS_PER_REQUEST):
        chunk = objects[start : start + MAX_IDS_PER_REQUEST]
        endpoint.sender.submit(UserDataBatch(render, chunk))


@dataclass
class _Endpoint:
    """One endpoint's client, sender and counters."""

    path: str
    client: Sends
    sender: UsersTrackSender
    stats: RunStats


class _DryRunEndpoint:
    """In a dry run: each body goes to dry_run_path with the endpoint it was for."""

    def __init__(self, dry_run: Sends, path: str) -> None:
        self._dry_run = dry_run
        self._prefix = b'{"endpoint":"' + path.encode() + b'","body":'

    def send(self, body: bytes, objects: int, *, resend_safe: bool = True) -> Outcome:
        return self._dry_run.send(self._prefix + body + b"}", objects, resend_safe=resend_safe)

    def close(self) -> None:
        """The run's dry-run output is closed by the run."""


class UserData:
    """The user-data objects of one run, their endpoints, order and guards (main thread)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        base_url: str | None,
        api_key: str | None,
        dry_run_client: Sends | None,
        settlement: Settlement,
        stats: RunStats,
        stop: threading.Event,
        delivery: Delivery,
        track_sender: UsersTrackSender,
        track_limits: RequestLimits,
        records_in: Callable[[], int],
    ) -> None:
        """Nothing is opened until an object arrives for an endpoint."""
        self._config = config
        self._base_url = base_url
        self._api_key = api_key
        self._dry_run_client = dry_run_client
        self._settlement = settlement
        self._stats = stats
        self._stop = stop
        self._delivery = delivery
        self._track_sender = track_sender
        self._track_limits = track_limits
        self._records_in = records_in
        self._window = float(config["user_data_rate_window_seconds"])
        self._alias_wait = float(config["alias_wait_seconds"])
        self.max_deletes, self.max_delete_ratio = delete_guards(config)
        self._limiters: dict[str, RateLimiter] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._deletes: list[BrazeObject] = []
        self._aliases: list[BrazeObject] = []
        self._identify: dict[str, list[BrazeObject]] = {}  # by merge_behavior
        self._subscriptions: list[BrazeObject] = []
        self._merge_behavior: dict[str, str] = {}  # stream -> merge_behavior
        # Users an alias or identify of this run names that /users/track must not use
        # before Braze confirmed it and the pause passed; aliases created, not yet usable.
        self._fresh: set[tuple[str, str]] = set()
        self._fresh_aliases: set[str] = set()
        self.track_guard_needed = False  # an alias or identify was seen in this run

    # --- taking objects (main thread) ------------------------------------------------

    def stream_merge_behavior(self, stream: str, behavior: str) -> None:
        """The aliases stream's `merge_behavior` (set when its SCHEMA arrives)."""
        self._merge_behavior[stream] = behavior

    def add(self, obj: BrazeObject) -> None:
        """Take one user-data object; a full request goes out (deletes wait for the end)."""
        array = obj.array
        if array == "deletes":
            self._deletes.append(obj)
        elif array == "aliases":
            self.track_guard_needed = True
            self._fresh.add(obj.user_key)
            self._fresh_aliases.add(obj.identifier)
            self._aliases.append(obj)
            if len(self._aliases) >= MAX_IDS_PER_REQUEST:
                self._send_aliases()
        elif array == "identify":
            self.track_guard_needed = True
            self._fresh.add(obj.user_key)
            self._fresh.add(("external_id", obj.body["external_id"]))
            behavior = self._merge_behavior.get(obj.stream, "merge")
            pending = self._identify.setdefault(behavior, [])
            pending.append(obj)
            if len(pending) >= MAX_IDS_PER_REQUEST:
                self._send_identify(behavior)
        elif array == "subscriptions":
            self._subscriptions.append(obj)
            if len(self._subscriptions) >= _SUBSCRIPTION_FLUSH:
                self._send_subscriptions()
        else:
            self.add_track(obj)  # an attributes record of a stream that may delete

    def add_track(self, obj: BrazeObject) -> None:
        """A /users/track object of a stream that may use this run's aliases."""
        if self._fresh and obj.user_key in self._fresh:
            self._aliases_usable()
        self._delivery.add(obj)

    def flush(self) -> None:
        """Send aliases, identify and subscriptions pending (at a STATE; deletes wait)."""
        if self._aliases:
            self._send_aliases()
        for behavior in list(self._identify):
            self._send_identify(behavior)
        if self._subscriptions:
            self._send_subscriptions()

    # --- order ----------------------------------------------------------------------------

    def _aliases_usable(self) -> None:
        """Wait until Braze confirmed this run's aliases and identify, then the pause."""
        self.flush()
        for path in (ALIAS, IDENTIFY):
            endpoint = self._endpoints.get(path)
            if endpoint is not None:
                endpoint.sender.wait_all()
        if self._alias_wait > 0:
            logger.info(
                "Waiting %.0fs (alias_wait_seconds) after Braze confirmed %d aliases/identifies "
                "before /users/track uses them",
                self._alias_wait,
                len(self._fresh),
            )
            if self._stop.wait(self._alias_wait):
                raise TargetBrazeError("stopped: another request already failed the run")
        self._fresh.clear()
        self._fresh_aliases.clear()

    def _send_aliases(self) -> None:
        pending, self._aliases = self._aliases, []
        endpoint = self._endpoint(ALIAS)
        render = _array_body("user_aliases")
        _submit_chunks(endpoint, render, pending)

    def _send_identify(self, behavior: str) -> None:
        pending = self._identify.pop(behavior, [])
        if not pending:
            return
        # The /users/track requests before it in the input first (an alias user's
        # attributes are there to merge), and aliases of this run it names.
        self._delivery.flush()
        self._track_sender.wait_all()
        if any(obj.identifier in self._fresh_aliases for obj in pending):
            self._aliases_usable()
            for obj in pending:  # the aliases were cleared: the identify keys are fresh
                self._fresh.add(obj.user_key)
                self._fresh.add(("external_id", obj.body["external_id"]))
        endpoint = self._endpoint(IDENTIFY)
        render = _array_body("aliases_to_identify", b',"merge_behavior":' + orjson.dumps(behavior))
        _submit_chunks(endpoint, render, pending)

    def _send_subscriptions(self) -> None:
        """Pack pending subscriptions through the endpoint needing fewer requests."""
        pending, self._subscriptions = self._subscriptions, []
        by_user: dict[tuple[str, str], list[BrazeObject]] = {}
        for obj in pending:
            by_user.setdefault(obj.user_key, []).append(obj)
        via_track = math.ceil(len(by_user) / self._track_limits.max_objects)
        v2_possible = all(kind in _SUBSCRIPTION_ARRAYS for kind, _ in by_user)
        via_v2 = math.ceil(len(pending) / MAX_IDS_PER_REQUEST) if v2_possible else math.inf
        self._delivery.flush()  # /users/track requests before them in the input go first
        if via_track < via_v2:
            self._subscriptions_via_track(by_user)
            return
        self._track_sender.wait_all()  # another sender: order by waiting
        _submit_chunks(self._endpoint(SUBSCRIPTIONS), _subscriptions_body, pending)

    def _subscriptions_via_track(self, by_user: dict[tuple[str, str], list[BrazeObject]]) -> None:
        """One attributes object per user with its `subscription_groups` (no data points)."""
        batch = UsersTrackBatch(self._track_limits)
        for (kind, identifier), objects in by_user.items():
            identity: dict[str, Any] = (
                {"user_alias": {"alias_name": identifier, "alias_label": objects[0].body["label"]}}
                if kind == "user_alias"
                else {kind: identifier}
            )
            groups = {obj.body["group"]: obj.body["state"] for obj in objects}
            body = {
                **identity,
                "subscription_groups": [
                    {"subscription_group_id": group, "subscription_state": state}
                    for group, state in groups.items()
                ],
            }
            combined = BrazeObject(
                "attributes",
                (kind, identifier),
                body,
                0,  # subscription states are not billed data points
                [seq for obj in objects for seq in obj.seqs],
                [record for obj in objects for record in obj.records],
                [line for obj in objects for line in obj.lines],
                objects[0].stream,
                identifier,
            )
            added = batch.try_add(combined)
            if added is False:
                self._track_sender.submit(batch)
                batch = UsersTrackBatch(self._track_limits)
                added = batch.try_add(combined)
            if added is None:
                self._track_sender.submit(batch)
                batch = UsersTrackBatch(self._track_limits)
        if len(batch):
            self._track_sender.submit(batch)

    # --- the end of the input ------------------------------------------------------------

    def finish(self, *, dry_run: bool) -> None:
        """Send what is pending, check the delete guards, send the deletes, wait for Braze.

        Raises:
            DeleteGuardTripped: more deletes than the guards allow (none was sent).

        """
        self.flush()
        self._track_sender.wait_all()  # subscriptions sent as /users/track objects
        for endpoint in list(self._endpoints.values()):
            endpoint.sender.wait_all()
        if self._deletes:
            self._check_delete_guards(dry_run=dry_run)
            self._send_deletes()
        for endpoint in list(self._endpoints.values()):
            endpoint.sender.wait_all()

    def _check_delete_guards(self, *, dry_run: bool) -> None:
        count = len(self._deletes)
        received = max(self._records_in(), 1)
        ratio = count / received
        over = []
        if self.max_deletes and count > self.max_deletes:
            over.append(f"max_deletes_per_run {self.max_deletes}")
        if ratio > self.max_delete_ratio:
            over.append(f"max_delete_ratio {self.max_delete_ratio:g}")
        if not over:
            logger.info("Deleting %d users in Braze (/users/delete)", count)
            return
        problem = (
            f"{count} users would be deleted ({ratio:.1%} of the run's {received} records), "
            f"above {' and '.join(over)}"
        )
        if dry_run:
            logger.warning("Dry run: %s; a real run would stop before deleting any", problem)
            return
        raise DeleteGuardTripped(
            f"{problem}: nothing was deleted and STATE stays before the first delete; check "
            "the source, then raise the setting and rerun to delete them"
        )

    def _send_deletes(self) -> None:
        pending, self._deletes = self._deletes, []
        by_kind: dict[str, list[BrazeObject]] = {}
        for obj in pending:
            by_kind.setdefault(obj.user_key[0], []).append(obj)
        endpoint = self._endpoint(DELETE)
        for kind, objects in by_kind.items():
            _submit_chunks(endpoint, _array_body(_DELETE_ARRAYS[kind]), objects)

    # --- endpoints --------------------------------------------------------------------------

    def _endpoint(self, path: str) -> _Endpoint:
        endpoint = self._endpoints.get(path)
        if endpoint is not None:
            return endpoint
        config = self._config
        stats = RunStats(float(config["progress_interval_seconds"]), dry_run=self._stats.dry_run)
        limiter: RateLimiter | None = None
        client: Sends
        if self._dry_run_client is not None:
            client = _DryRunEndpoint(self._dry_run_client, path)
        else:
            group = "subscriptions" if path == SUBSCRIPTIONS else "users"
            limiter = self._limiters.get(group)
            if limiter is None:
                per_window = int(
                    config["subscription_requests_per_window"]
                    if group == "subscriptions"
                    else config["user_data_requests_per_window"]
                )
                limiter = self._limiters[group] = RateLimiter(
                    per_window,
                    self._window,
                    margin_seconds=float(config["rate_limit_margin_seconds"]),
                )
            client = BrazeClient(
                self._base_url or "",
                self._api_key or "",
                limiter,
                stats,
                retry=RetryPolicy(
                    max_retries=int(config["max_retries"]),
                    base_seconds=float(config["retry_backoff_seconds"]),
                ),
                timeout=float(config["request_timeout_seconds"]),
                bulk_header=False,
                stop=self._stop,
                max_connections=min(int(config["max_concurrent_requests"]), 16),
                path=path,
            )
        sender = UsersTrackSender(
            client,
            self._settlement,
            stats,
            min(int(config["max_concurrent_requests"]), 16),
            self._stop,
            limiter.in_flight_needed if limiter is not None else None,
        )
        endpoint = self._endpoints[path] = _Endpoint(path, client, sender, stats)
        return endpoint

    def raise_if_failed(self) -> None:
        """Re-raise, in the calling thread, an endpoint's error that failed the run."""
        for endpoint in list(self._endpoints.values()):
            endpoint.sender.raise_if_failed()

    def shutdown(self) -> None:
        """Stop the endpoints' sender threads and close their connections."""
        for endpoint in self._endpoints.values():
            endpoint.sender.shutdown()
            endpoint.client.close()

    def figures(self) -> dict[str, dict[str, int]]:
        """Per endpoint: requests, objects, retries, 429s, 5xx, connection errors, splits."""
        names = (
            "requests",
            "objects_sent",
            "retries",
            "rate_limited",
            "server_errors",
            "connection_errors",
            "splits",
        )
        return {
            path: {name: endpoint.stats.snapshot()[name] for name in names}
            for path, endpoint in self._endpoints.items()
        }

    def summary(self) -> str:
        """'; /users/delete: 3 requests, 120 objects (0 retries, 0 429s)' per endpoint used."""
        return "".join(
            f"; {path}: {f['requests']} requests, {f['objects_sent']} objects "
            f"({f['retries']} retries, {f['rate_limited']} 429s, {f['server_errors']} 5xx, "
            f"{f['splits']} splits)"
            for path, f in self.figures().items()
        )
