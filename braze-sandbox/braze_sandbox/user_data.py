"""Braze's user-data endpoints besides ``/users/track``: deletes, aliases, identify, subscriptions.

* ``POST /users/delete``: one of ``external_ids``, ``user_aliases``, ``braze_ids``,
  ``email_addresses`` or ``phone_numbers`` (only one kind per request), at most 50;
  answers ``{"deleted": n, "message": "success"}``: ``n`` the profiles removed.
* ``POST /users/alias/new``: ``user_aliases`` (at most 50) of ``alias_name``,
  ``alias_label`` and optionally ``external_id``: with it, the alias is added to that
  identified user (an unknown external_id fails that object); without, an alias-only
  user is created.
* ``POST /users/identify``: ``aliases_to_identify`` (at most 50) of ``external_id`` and
  ``user_alias``, and ``merge_behavior`` ``none`` or ``merge`` (the default): see
  :meth:`ProfileStore.identify`.
* ``POST /v2/subscription/status/set``: ``subscription_groups`` entries of
  ``subscription_group_id``, ``subscription_state`` (``subscribed`` or ``unsubscribed``)
  and ``external_ids``, ``emails`` or ``phones`` (not both emails and phones); at most
  50 identifiers per request.

The first three share one rate limiter (Braze: 20,000 requests per minute), the
subscription endpoint has its own (5,000 per minute). A malformed request is refused
whole with ``400`` and a message naming what is wrong (nothing applied); an identifier
chosen with ``--error ID=TYPE`` is reported in ``errors[]`` by its array and index, as
``/users/track`` reports objects, and the rest is applied. Injected 429s and 5xx apply
here as on ``/users/track``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from braze_sandbox.contract import SUBSCRIPTION_STATES, RequestRejected
from braze_sandbox.profiles import Profile
from braze_sandbox.ratelimit import RateLimiter, RateLimitSettings

if TYPE_CHECKING:
    from braze_sandbox.server import Sandbox

DELETE_PERMISSION = "users.delete"
ALIAS_PERMISSION = "users.alias.new"
IDENTIFY_PERMISSION = "users.identify"
SUBSCRIPTION_PERMISSION = "subscription.status.set"
PERMISSIONS = (DELETE_PERMISSION, ALIAS_PERMISSION, IDENTIFY_PERMISSION, SUBSCRIPTION_PERMISSION)
#: Braze's defaults: the three user endpoints share 20,000 per minute; subscriptions 5,000.
USER_DATA_RATE = RateLimitSettings(limit=20_000, window=60.0)
SUBSCRIPTION_RATE = RateLimitSettings(limit=5_000, window=60.0)
MERGE_BEHAVIORS = ("none", "merge")
# /users/delete's identifier arrays, and the lookup key prefix of each.
_DELETE_KINDS = {
    "external_ids": "e:",
    "user_aliases": "a:",
    "braze_ids": "b:",
    "email_addresses": "m:",
    "phone_numbers": "p:",
}
# /v2/subscription/status/set's identifier arrays.
_SUBSCRIPTION_KINDS = {"external_ids": "e:", "emails": "m:", "phones": "p:"}


class UserDataEndpoints:
    """The handlers, their rate limiters and per-endpoint counters for one sandbox."""

    def __init__(
        self,
        sandbox: Sandbox,
        user_data_rate: RateLimitSettings,
        subscription_rate: RateLimitSettings,
    ) -> None:
        self.sandbox = sandbox
        self.user_data_limiter = RateLimiter(user_data_rate)
        self.subscription_limiter = RateLimiter(subscription_rate)
        self.by_status: dict[str, Counter[int]] = {}
        self.max_ids_in_request: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        # Arrival times per limiter group, to report the busiest window.
        self._arrivals: dict[str, list[float]] = {"user_data": [], "subscription": []}

    def routes(self, app: web.Application) -> None:
        """Add the four endpoints."""
        app.router.add_post("/users/delete", self.delete)
        app.router.add_post("/users/alias/new", self.alias_new)
        app.router.add_post("/users/identify", self.identify)
        app.router.add_post("/v2/subscription/status/set", self.subscription_status_set)

    def reset(self) -> None:
        """Forget counters and rate-limit history."""
        self.user_data_limiter.reset()
        self.subscription_limiter.reset()
        self.by_status.clear()
        self.max_ids_in_request.clear()
        self.applied.clear()
        for arrivals in self._arrivals.values():
            arrivals.clear()

    def as_json(self) -> dict[str, Any]:
        """Per-endpoint counters for ``/_sandbox/stats``."""
        return {
            path: {
                "requests": sum(statuses.values()),
                "by_status": {str(k): v for k, v in sorted(statuses.items())},
                "max_ids_in_request": self.max_ids_in_request[path],
                "applied": self.applied[path],
            }
            for path, statuses in sorted(self.by_status.items())
        } | {
            "max_arrivals_in_window": {
                "user_data": _busiest(
                    self._arrivals["user_data"], self.user_data_limiter.settings.window
                ),
                "subscription": _busiest(
                    self._arrivals["subscription"], self.subscription_limiter.settings.window
                ),
            }
        }

    # -- the common path -----------------------------------------------------------

    async def _handle(
        self,
        request: web.Request,
        path: str,
        permission: str,
        group: str,
        apply: Any,
    ) -> web.StreamResponse:
        arrival = time.monotonic()
        sandbox = self.sandbox
        status, body = 0, None
        headers: dict[str, str] = {}
        try:
            denied = sandbox.check_key(request, permission)
            if denied is not None:
                status, body = denied
                return _answer(status, body, headers)
            limiter = self.user_data_limiter if group == "user_data" else self.subscription_limiter
            admitted, headers = limiter.admit(arrival)
            if not admitted:
                status, body = 429, {"message": "API rate limit exceeded"}
                return _answer(status, body, headers)
            self._arrivals[group].append(arrival)
            if sandbox.faults.inject_429():
                sandbox.stats.injected["429"] += 1
                status, body = 429, {"message": "API rate limit exceeded"}
                return _answer(status, body, limiter.headers_for_injected_429(arrival))
            failure = sandbox.faults.inject_5xx()
            if failure:
                sandbox.stats.injected["5xx"] += 1
                status = failure
                return _answer(status, None, headers)
            try:
                payload = orjson.loads(await request.read())
                if type(payload) is not dict:
                    raise RequestRejected(400, "Invalid request: body must be a JSON object")
                status, body = 201, apply(payload, path)
            except orjson.JSONDecodeError:
                status, body = 400, {"message": "Invalid JSON in request body"}
            except RequestRejected as rejected:
                status, body = rejected.status, rejected.body
            delay = sandbox.faults.latency_seconds()
            if delay:
                await asyncio.sleep(delay)
            return _answer(status, body, headers)
        finally:
            self.by_status.setdefault(path, Counter())[status] += 1

    def _count_ids(self, path: str, count: int) -> None:
        limit = self.sandbox.limits.max_user_data_ids
        if count > limit:
            raise RequestRejected(
                400, f"Too many identifiers: {count} in the request; at most {limit}"
            )
        if count == 0:
            raise RequestRejected(400, "No identifiers given")
        self.max_ids_in_request[path] = max(self.max_ids_in_request[path], count)

    # -- /users/delete ---------------------------------------------------------------

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/delete``."""
        return await self._handle(request, "/users/delete", DELETE_PERMISSION, "user_data",
                                  self._delete)  # fmt: skip

    def _delete(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        given = [kind for kind in _DELETE_KINDS if body.get(kind) is not None]
        if len(given) != 1:
            raise RequestRejected(
                400,
                "Exactly one of external_ids, user_aliases, braze_ids, email_addresses or "
                f"phone_numbers is allowed per request ({len(given)} given)",
            )
        (kind,) = given
        items = body[kind]
        if type(items) is not list:
            raise RequestRejected(400, f"'{kind}' must be an array")
        self._count_ids(path, len(items))
        prefix = _DELETE_KINDS[kind]
        keys = [self._key(kind, prefix, item, index) for index, item in enumerate(items)]
        errors = self._chosen_errors(kind, items)
        store = self.sandbox.store
        deleted = 0
        for index, key in enumerate(keys):
            if index in errors:
                continue
            profile = store.find(key)
            if profile is not None:
                store.delete(profile)
                deleted += 1
        store.commit()
        self.applied[path] += deleted
        answer: dict[str, Any] = {"deleted": deleted, "message": "success"}
        if errors:
            answer["errors"] = [
                {"type": kind_of, "input_array": kind, "index": index}
                for index, kind_of in sorted(errors.items())
            ]
        return answer

    def _key(self, kind: str, prefix: str, item: Any, index: int) -> str:
        """The lookup key of one identifier, or 400 naming it."""
        if prefix == "a:":
            if (
                type(item) is not dict
                or type(item.get("alias_name")) is not str
                or type(item.get("alias_label")) is not str
                or not item["alias_name"]
                or not item["alias_label"]
            ):
                raise RequestRejected(
                    400, f"Invalid {kind}[{index}]: a user alias needs alias_name and alias_label"
                )
            return "a:" + item["alias_label"] + "\x1f" + item["alias_name"]
        if type(item) is not str or not item:
            raise RequestRejected(400, f"Invalid {kind}[{index}]: expected a non-empty string")
        if prefix == "e:" and len(item.encode()) > self.sandbox.limits.external_id_max_bytes:
            raise RequestRejected(400, f"Invalid {kind}[{index}]: external_id too large")
        return prefix + (item.lower() if prefix == "m:" else item)

    def _chosen_errors(self, kind: str, items: list[Any]) -> dict[int, str]:
        """Identifiers the sandbox was told to refuse (``--error ID=TYPE``), by index."""
        chosen = self.sandbox.faults.settings.errors
        found: dict[int, str] = {}
        for index, item in enumerate(items):
            name = item.get("alias_name") if type(item) is dict else item
            if type(name) is str and name in chosen:
                found[index] = chosen[name]
                self.sandbox.stats.errors_by_type[chosen[name]] += 1
        return found

    # -- /users/alias/new --------------------------------------------------------------

    async def alias_new(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/alias/new``."""
        return await self._handle(request, "/users/alias/new", ALIAS_PERMISSION, "user_data",
                                  self._alias_new)  # fmt: skip

    def _alias_new(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        items = body.get("user_aliases")
        if type(items) is not list:
            raise RequestRejected(400, "'user_aliases' (an array of new user aliases) is required")
        self._count_ids(path, len(items))
        for index, item in enumerate(items):
            self._key("user_aliases", "a:", item, index)
            ext = item.get("external_id")
            if ext is not None and (type(ext) is not str or not ext):
                raise RequestRejected(400, f"Invalid user_aliases[{index}].external_id")
        store = self.sandbox.store
        errors: list[dict[str, Any]] = []
        processed = 0
        for index, item in enumerate(items):
            name, label, ext = item["alias_name"], item["alias_label"], item.get("external_id")
            chosen = self.sandbox.faults.chosen_error({"user_alias": item, "external_id": ext})
            if chosen:
                errors.append({"type": chosen, "input_array": "user_aliases", "index": index})
                continue
            existing = store.find("a:" + label + "\x1f" + name)
            if ext is None:
                if existing is None:
                    store.create_alias_user(name, label)
                processed += 1
                continue
            owner = store.find("e:" + ext)
            if owner is None:
                errors.append(
                    {"type": "EXTERNAL_ID_NOT_FOUND", "input_array": "user_aliases", "index": index}
                )
                continue
            if existing is None:
                store.add_alias(owner, name, label)
            processed += 1
        store.commit()
        self.applied[path] += processed
        answer: dict[str, Any] = {"aliases_processed": processed, "message": "success"}
        if errors:
            answer["errors"] = errors
        return answer

    # -- /users/identify ----------------------------------------------------------------

    async def identify(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/identify``."""
        return await self._handle(request, "/users/identify", IDENTIFY_PERMISSION, "user_data",
                                  self._identify)  # fmt: skip

    def _identify(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        items = body.get("aliases_to_identify")
        if type(items) is not list:
            raise RequestRejected(400, "'aliases_to_identify' (an array) is required")
        behavior = body.get("merge_behavior", "merge")
        if behavior not in MERGE_BEHAVIORS:
            raise RequestRejected(
                400, f"merge_behavior must be one of {', '.join(MERGE_BEHAVIORS)}"
            )
        self._count_ids(path, len(items))
        for index, item in enumerate(items):
            if type(item) is not dict:
                raise RequestRejected(400, f"Invalid aliases_to_identify[{index}]")
            self._key("aliases_to_identify", "a:", item.get("user_alias"), index)
            ext = item.get("external_id")
            if type(ext) is not str or not ext:
                raise RequestRejected(
                    400, f"Invalid aliases_to_identify[{index}]: external_id is required"
                )
        store = self.sandbox.store
        errors: list[dict[str, Any]] = []
        processed = 0
        for index, item in enumerate(items):
            alias = item["user_alias"]
            chosen = self.sandbox.faults.chosen_error(item)
            if chosen:
                errors.append(
                    {"type": chosen, "input_array": "aliases_to_identify", "index": index}
                )
                continue
            profile: Profile | None = store.find(
                "a:" + alias["alias_label"] + "\x1f" + alias["alias_name"]
            )
            if profile is not None and store.identify(
                profile, item["external_id"], merge=behavior == "merge"
            ):
                processed += 1
        store.commit()
        self.applied[path] += processed
        answer: dict[str, Any] = {"aliases_processed": processed, "message": "success"}
        if errors:
            answer["errors"] = errors
        return answer

    # -- /v2/subscription/status/set ----------------------------------------------------

    async def subscription_status_set(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/subscription/status/set``."""
        return await self._handle(request, "/v2/subscription/status/set",
                                  SUBSCRIPTION_PERMISSION, "subscription",
                                  self._subscriptions)  # fmt: skip

    def _subscriptions(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        entries = body.get("subscription_groups")
        if type(entries) is not list or not entries:
            raise RequestRejected(400, "'subscription_groups' (a non-empty array) is required")
        planned: list[tuple[str, str, str]] = []
        for index, entry in enumerate(entries):
            where = f"subscription_groups[{index}]"
            if type(entry) is not dict:
                raise RequestRejected(400, f"Invalid {where}: expected an object")
            group = entry.get("subscription_group_id")
            if type(group) is not str or not group:
                raise RequestRejected(400, f"Invalid {where}: subscription_group_id is required")
            state = entry.get("subscription_state")
            if state not in SUBSCRIPTION_STATES:
                raise RequestRejected(
                    400,
                    f"Invalid {where}: subscription_state must be subscribed or unsubscribed",
                )
            if entry.get("emails") is not None and entry.get("phones") is not None:
                raise RequestRejected(400, f"Invalid {where}: emails and phones cannot be combined")
            given = 0
            for kind, prefix in _SUBSCRIPTION_KINDS.items():
                items = entry.get(kind)
                if items is None:
                    continue
                if type(items) is str:
                    items = [items]
                if type(items) is not list:
                    raise RequestRejected(400, f"Invalid {where}.{kind}: expected an array")
                for i, item in enumerate(items):
                    planned.append((self._key(f"{where}.{kind}", prefix, item, i), group, state))
                given += len(items)
            if not given:
                raise RequestRejected(
                    400, f"Invalid {where}: external_ids, emails or phones is required"
                )
        self._count_ids(path, len(planned))
        store = self.sandbox.store
        applied = 0
        for key, group, state in planned:
            profile = store.find(key)
            if profile is not None:
                store.set_subscription(profile, group, state)
                applied += 1
        store.commit()
        self.applied[path] += applied
        return {"message": "success"}


def _answer(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    if body is None:
        return web.Response(
            status=status, body=b'{"message":"Internal Server Error"}', headers=headers,
            content_type="application/json",
        )  # fmt: skip
    return web.Response(
        status=status, body=orjson.dumps(body), headers=headers, content_type="application/json"
    )


def _busiest(arrivals: list[float], window: float) -> int:
    """The most arrivals in any interval of `window` seconds (each ends at an arrival)."""
    best = start = 0
    for end, at in enumerate(arrivals):
        while arrivals[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best
