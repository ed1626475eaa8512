"""The aiohttp application: Braze's ``/users/track`` and ``/users/export/ids``, plus ``/_sandbox/``.

A ``/users/track`` request goes through, in order: the fail point (500 once armed and
past its count), dropped connection (fault), auth, rate limiter, injected 429/5xx, size
and JSON checks, per-object validation, latency, application to the profile store (one
SQLite transaction), lost response or 502 after the apply (faults).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from braze_sandbox import contract
from braze_sandbox.contract import ContractLimits, RequestRejected
from braze_sandbox.export import export_ids
from braze_sandbox.faults import FaultInjector, FaultSettings
from braze_sandbox.profiles import ProfileStore
from braze_sandbox.ratelimit import RateLimiter, RateLimitSettings
from braze_sandbox.runtime_config import apply_config, current_config
from braze_sandbox.stats import SandboxStats
from braze_sandbox.user_data import PERMISSIONS as USER_DATA_PERMISSIONS
from braze_sandbox.user_data import SUBSCRIPTION_RATE, USER_DATA_RATE, UserDataEndpoints

TRACK_PERMISSION = "users.track"
#: The header carrying the admin token, and the variable it is read from at start.
ADMIN_TOKEN_HEADER = "X-Sandbox-Admin-Token"  # noqa: S105 (a header name)
ADMIN_TOKEN_VARIABLE = "BRAZE_SANDBOX_ADMIN_TOKEN"  # noqa: S105 (a variable name)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
EXPORT_PERMISSION = "users.export.ids"
JSON = "application/json"
IDLE_FOLD_SECONDS = 0.25

_5XX_BODIES = {
    500: (JSON, b'{"message":"Internal Server Error"}'),
    # Gateways in front of an API answer in HTML: a client must not choke on that.
    502: ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    503: ("text/html", b"<html><body><h1>503 Service Unavailable</h1></body></html>"),
}


@dataclass
class SandboxOptions:
    """Everything a sandbox is started with."""

    db_path: str = ":memory:"
    api_keys: list[str] = field(default_factory=lambda: ["sandbox-key"])
    permissionless_keys: list[str] = field(default_factory=list)
    limits: ContractLimits = field(default_factory=ContractLimits)
    rate: RateLimitSettings = field(default_factory=RateLimitSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    #: /users/delete, /users/alias/new and /users/identify share one limit; subscriptions
    #: have their own (Braze: 20,000 and 5,000 requests per minute).
    user_data_rate: RateLimitSettings = field(
        default_factory=lambda: RateLimitSettings(USER_DATA_RATE.limit, USER_DATA_RATE.window)
    )
    subscription_rate: RateLimitSettings = field(
        default_factory=lambda: RateLimitSettings(SUBSCRIPTION_RATE.limit, SUBSCRIPTION_RATE.window)
    )
    #: The token `/_sandbox/` endpoints want in `ADMIN_TOKEN_HEADER` (health excepted).
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: Host header names `/_sandbox/` answers besides loopback's (a DNS-rebinding guard).
    allowed_hosts: list[str] = field(default_factory=list)


class _Dropped(Exception):
    """The connection is to be closed without a response."""


class Sandbox:
    """State and request handlers of one sandbox instance."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.limits = options.limits
        self.keys: dict[str, frozenset[str]] = {
            key: frozenset({TRACK_PERMISSION, EXPORT_PERMISSION, *USER_DATA_PERMISSIONS})
            for key in options.api_keys
        }
        for key in options.permissionless_keys:
            self.keys[key] = frozenset()
        self.store = ProfileStore(options.db_path, options.limits.max_array_length)
        self.limiter = RateLimiter(options.rate)
        self.faults = FaultInjector(options.faults)
        self.stats = SandboxStats(options.rate.window)
        self.export_requests = 0
        self.user_data = UserDataEndpoints(self, options.user_data_rate, options.subscription_rate)
        self._users_in_flight: dict[str, int] = {}
        self._in_flight = 0

    def app(self) -> web.Application:
        """The aiohttp application serving this sandbox."""
        # The body limit is enforced by the handler (413 at the configured size); this
        # only bounds what aiohttp buffers.
        app = web.Application(client_max_size=max(self.limits.max_body_bytes * 4, 64 << 20))
        app.router.add_post("/users/track", self.track)
        app.router.add_post("/users/export/ids", self.export)
        self.user_data.routes(app)
        admin = self._admin
        app.router.add_get("/_sandbox/profiles", admin(self.admin_profiles))
        app.router.add_get("/_sandbox/events", admin(self.admin_events))
        app.router.add_get("/_sandbox/purchases", admin(self.admin_purchases))
        app.router.add_get("/_sandbox/stats", admin(self.admin_stats))
        app.router.add_get("/_sandbox/requests", admin(self.admin_requests))
        app.router.add_get("/_sandbox/config", admin(self.admin_get_config))
        app.router.add_put("/_sandbox/config", admin(self.admin_set_config))
        app.router.add_patch("/_sandbox/config", admin(self.admin_set_config))
        app.router.add_post("/_sandbox/reset", admin(self.admin_reset))
        app.router.add_get("/_sandbox/health", self.admin_health)
        app.router.add_post("/_sandbox/flush", admin(self.admin_flush))
        app.cleanup_ctx.append(self._fold_when_idle)
        return app

    async def _fold_when_idle(self, app: web.Application) -> AsyncIterator[None]:
        """Fold the profile journal into ``profiles`` whenever traffic pauses."""

        async def watch() -> None:
            seen = -1
            while True:
                await asyncio.sleep(IDLE_FOLD_SECONDS)
                if self.stats.requests == seen and self.store.journal_pending:
                    self.store.fold_journal()
                seen = self.stats.requests

        task = asyncio.create_task(watch())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- /users/track --------------------------------------------------------------

    async def track(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/track``."""
        arrival = time.monotonic()
        wall = time.time()
        stats = self.stats
        stats.requests += 1
        stats.arrival(arrival)
        self._in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, self._in_flight)
        status, objects, size = 0, 0, 0
        try:
            status, body, headers, objects, size, delayed = await self._track(request, arrival)
            if not delayed:
                delay = self.faults.latency_seconds()
                if delay:
                    await asyncio.sleep(delay)
            return _json(status, body, headers)
        except _Dropped:
            status = 0
            _drop_connection(request)
            # Nothing reaches the client: the transport is already gone.
            return web.Response(status=204)
        finally:
            self._in_flight -= 1
            stats.by_status[status] += 1
            # Wall-clock arrival and answer, so a test can tell whether two clients' runs
            # overlapped; the duration from the monotonic clock, immune to clock steps.
            duration_ms = (time.monotonic() - arrival) * 1000.0
            stats.log.append((wall, time.time(), status, objects, size, duration_ms))

    async def _track(
        self, request: web.Request, arrival: float
    ) -> tuple[int, Any, dict[str, str], int, int, bool]:
        """Return (status, body, headers, objects, bytes, latency_already_applied)."""
        stats = self.stats
        faults = self.faults
        if request.headers.get("X-Braze-Bulk", "").lower() == "true":
            stats.bulk_requests += 1
        if faults.failpoint():
            # First, so that once armed and past its count every request fails alike.
            stats.injected["failpoint"] += 1
            return 500, None, {}, 0, 0, False
        if faults.drop_before():
            stats.injected["drop"] += 1
            raise _Dropped
        denied = self._auth(request, TRACK_PERMISSION)
        if denied is not None:
            return denied[0], denied[1], {}, 0, 0, False
        admitted, headers = self.limiter.admit(arrival)
        if not admitted:
            stats.rate_limited += 1
            return 429, {"message": "API rate limit exceeded"}, headers, 0, 0, False
        if faults.inject_429():
            stats.injected["429"] += 1
            return (
                429,
                {"message": "API rate limit exceeded"},
                self.limiter.headers_for_injected_429(arrival),
                0,
                0,
                False,
            )
        failure = faults.inject_5xx()
        if failure:
            stats.injected["5xx"] += 1
            return failure, None, headers, 0, 0, False

        raw = await request.read()
        size = len(raw)
        stats.max_body_bytes_seen = max(stats.max_body_bytes_seen, size)
        limits = self.limits
        if size > limits.max_body_bytes:
            return 413, {"message": "Request Entity Too Large"}, headers, 0, size, False
        if not request.content_type.endswith("json"):
            message = {"message": "Content-Type must be application/json"}
            return 400, message, headers, 0, size, False
        try:
            body = orjson.loads(raw)
            arrays = contract.check_request(body, limits)
        except orjson.JSONDecodeError:
            return 400, {"message": "Invalid JSON in request body"}, headers, 0, size, False
        except RequestRejected as rejected:
            return rejected.status, rejected.body, headers, 0, size, False
        objects = sum(len(items) for items in arrays.values())
        stats.max_objects_in_request = max(stats.max_objects_in_request, objects)

        accepted, errors, nested_invalid = self._validate(arrays)
        users = {item[2] for item in accepted}
        in_flight = self._users_in_flight
        conflict = False
        for user in users:
            count = in_flight.get(user, 0)
            conflict = conflict or count > 0
            in_flight[user] = count + 1
        if conflict:
            stats.concurrent_user_conflicts += 1
        try:
            delay = faults.latency_seconds()
            if delay:
                await asyncio.sleep(delay)
            if faults.unindexed_error():
                stats.injected["unindexed_error"] += 1
                first = next(iter(arrays))
                unindexed: dict[str, Any] = {
                    "message": "success",
                    "errors": [{"type": "INTERNAL_PROCESSING_ERROR", "input_array": first}],
                }
                return 201, unindexed, headers, objects, size, True
            self._apply(accepted, nested_invalid)
        finally:
            for user in users:
                count = in_flight[user] - 1
                if count:
                    in_flight[user] = count
                else:
                    del in_flight[user]

        answer: dict[str, Any] = {"message": "success"}
        for name, items in arrays.items():
            processed = len(items) - sum(1 for e in errors if e["input_array"] == name)
            answer[f"{name}_processed"] = processed
        stats.attributes_processed += answer.get("attributes_processed", 0)
        stats.events_processed += answer.get("events_processed", 0)
        stats.purchases_processed += answer.get("purchases_processed", 0)
        if errors:
            answer["errors"] = errors
        if faults.drop_after_apply():
            stats.injected["drop_after_apply"] += 1
            raise _Dropped
        if faults.error_after_apply():
            stats.injected["5xx_after_apply"] += 1
            return 502, None, headers, objects, size, True
        if faults.queued():
            stats.injected["queued"] += 1
            return 202, {"message": "queued"}, headers, objects, size, True
        return 201, answer, headers, objects, size, True

    def _validate(
        self, arrays: dict[str, list[Any]]
    ) -> tuple[list[tuple[str, dict[str, Any], str]], list[dict[str, Any]], bool]:
        """Split objects into accepted ones and indexed errors."""
        limits = self.limits
        faults = self.faults
        chosen = bool(faults.settings.errors)
        errors_by_type = self.stats.errors_by_type
        accepted: list[tuple[str, dict[str, Any], str]] = []
        errors: list[dict[str, Any]] = []
        nested_invalid = False
        identify = contract.identify
        for name, items in arrays.items():
            for index, obj in enumerate(items):
                if type(obj) is not dict:
                    error = contract.INVALID_OBJECT
                else:
                    user, error = identify(obj, limits)
                    if not error:
                        if name == "attributes":
                            error, bad_nested = contract.check_attributes(obj, limits)
                            nested_invalid = nested_invalid or bad_nested
                        elif name == "events":
                            error = contract.check_event(obj, limits)
                        else:
                            error = contract.check_purchase(obj, limits)
                    if not error and chosen:
                        error = faults.chosen_error(obj)
                        if error:
                            self.stats.injected["chosen_error"] += 1
                if error:
                    errors.append({"type": error, "input_array": name, "index": index})
                    errors_by_type[error] += 1
                else:
                    accepted.append((name, obj, user))
        return accepted, errors, nested_invalid

    def _apply(self, accepted: list[tuple[str, dict[str, Any], str]], nested_invalid: bool) -> None:
        store = self.store
        stats = self.stats
        if nested_invalid:
            stats.nested_updates_dropped += 1
        applied = 0
        points = 0
        for name, obj, user in accepted:
            existing_only = obj.get("_update_existing_only")
            create = user[0] != "a" if existing_only is None else not existing_only
            profile = store.resolve(user, obj, create)
            if profile is None:
                stats.skipped_unknown_user += 1
                continue
            points += _data_points(name, obj)
            if name == "attributes":
                store.apply_attributes(profile, obj, nested_invalid)
            elif name == "events":
                store.record_event(profile, obj, contract.parse_time(obj["time"]) or "")
            else:
                store.record_purchase(profile, obj, contract.parse_time(obj["time"]) or "")
            applied += 1
        store.commit()
        stats.objects_applied += applied
        stats.data_points += points

    def check_key(self, request: web.Request, permission: str) -> tuple[int, Any] | None:
        """None when the request's key has `permission`, else the 401/403 answer."""
        return self._auth(request, permission)

    def _auth(self, request: web.Request, permission: str) -> tuple[int, Any] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return 401, {"message": "Missing API key: send 'Authorization: Bearer <key>'"}
        permissions = self.keys.get(key.strip())
        if permissions is None:
            return 401, {"message": "Invalid API key"}
        if permission not in permissions:
            return 403, {"message": f"This API key does not have the {permission} permission"}
        return None

    # -- /users/export/ids -----------------------------------------------------------

    async def export(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/export/ids`` (no rate limit, no faults: it is the read-back path)."""
        self.export_requests += 1
        denied = self._auth(request, EXPORT_PERMISSION)
        if denied is not None:
            return _json(denied[0], denied[1], {})
        try:
            answer = export_ids(self.store, orjson.loads(await request.read()), self.limits)
        except orjson.JSONDecodeError:
            return _json(400, {"message": "Invalid JSON in request body"}, {})
        except RequestRejected as rejected:
            return _json(rejected.status, rejected.body, {})
        return _json(201, answer, {})

    # -- /_sandbox/ ------------------------------------------------------------------

    def _admin(self, handler: Handler) -> Handler:
        """`handler`, answered only with the admin token and a Host naming this sandbox.

        The token: anyone who can reach the port could otherwise read every profile or
        reconfigure faults. The Host check: a web page the developer visits could
        otherwise reach a loopback sandbox through a rebound DNS name.
        """
        token = self.options.admin_token.encode()
        allowed = LOOPBACK_NAMES | {h.lower() for h in self.options.allowed_hosts}

        async def guarded(request: web.Request) -> web.StreamResponse:
            if _host_name(request.host) not in allowed:
                message = "Host not allowed: start the sandbox with --allow-host NAME"
                return _json(403, {"message": message}, {})
            given = request.headers.get(ADMIN_TOKEN_HEADER, "").encode()
            if not hmac.compare_digest(given, token):
                message = f"/_sandbox/ needs the admin token in {ADMIN_TOKEN_HEADER}"
                return _json(401, {"message": message}, {})
            return await handler(request)

        return guarded

    async def admin_profiles(self, request: web.Request) -> web.StreamResponse:
        """All profiles, or those with ``?external_id=``."""
        ext = request.query.get("external_id")
        profiles = list(self.store.profiles.values())
        if ext is not None:
            profiles = [p for p in profiles if p.external_id == ext]
        return _json(200, [p.as_json() for p in profiles], {})

    async def admin_events(self, request: web.Request) -> web.StreamResponse:
        """Every recorded event (``?external_id=`` to filter)."""
        return _json(200, self._filtered(self.store.events(), request), {})

    async def admin_purchases(self, request: web.Request) -> web.StreamResponse:
        """Every recorded purchase (``?external_id=`` to filter)."""
        return _json(200, self._filtered(self.store.purchases(), request), {})

    @staticmethod
    def _filtered(rows: list[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
        ext = request.query.get("external_id")
        return rows if ext is None else [r for r in rows if r["external_id"] == ext]

    async def admin_stats(self, request: web.Request) -> web.StreamResponse:
        """Counters (see :class:`SandboxStats`)."""
        doc = self.stats.as_json()
        doc["export_requests"] = self.export_requests
        doc["profiles"] = len(self.store.profiles)
        doc["failpoint_remaining"] = self.faults.failpoint_remaining()
        doc["user_data"] = self.user_data.as_json()
        return _json(200, doc, {})

    async def admin_requests(self, request: web.Request) -> web.StreamResponse:
        """Per-request log of ``/users/track``, oldest first."""
        rows = [
            {
                "time": received,
                "received_at": received,
                "answered_at": answered,
                "status": status,
                "objects": objects,
                "bytes": size,
                "duration_ms": round(ms, 3),
            }
            for received, answered, status, objects, size, ms in self.stats.log
        ]
        return _json(200, rows, {})

    async def admin_get_config(self, request: web.Request) -> web.StreamResponse:
        """Current runtime settings."""
        return _json(200, current_config(self), {})

    async def admin_set_config(self, request: web.Request) -> web.StreamResponse:
        """Change settings given in the JSON body; all or nothing."""
        try:
            changes = orjson.loads(await request.read())
            if type(changes) is not dict:
                raise ValueError("body must be a JSON object")
            apply_config(self, changes)
        except (ValueError, TypeError) as problem:
            return _json(400, {"message": str(problem)}, {})
        return _json(200, current_config(self), {})

    async def admin_reset(self, request: web.Request) -> web.StreamResponse:
        """Forget all data, counters and rate-limit history; restart the fault sequences."""
        self.reset()
        return _json(200, {"message": "reset"}, {})

    async def admin_flush(self, request: web.Request) -> web.StreamResponse:
        """Fold the journal into the ``profiles`` table now (for readers of the file)."""
        self.store.fold_journal()
        return _json(200, {"message": "flushed"}, {})

    async def admin_health(self, request: web.Request) -> web.StreamResponse:
        """Liveness."""
        return _json(200, {"message": "ok"}, {})

    def reset(self) -> None:
        """Empty everything (the settings stay)."""
        self.store.reset()
        self.stats.reset()
        self.limiter.reset()
        self.user_data.reset()
        self.export_requests = 0
        self.faults.reseed(self.faults.settings.seed)
        self.faults.restart_failpoint_count()

    def close(self) -> None:
        """Release the database."""
        self.store.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_name(host: str | None) -> str:
    """The name in a Host header, without its port (IPv6 literals unbracketed)."""
    value = (host or "").strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _json(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    if body is None:
        content_type, payload = _5XX_BODIES.get(status, _5XX_BODIES[500])
        return web.Response(status=status, body=payload, headers=headers, content_type=content_type)
    return web.Response(status=status, body=orjson.dumps(body), headers=headers, content_type=JSON)


def _drop_connection(request: web.Request) -> None:
    """Close the socket with no response at all."""
    transport = request.transport
    if transport is not None:
        transport.abort()


# Keys that identify the user or steer Braze: not billed (Braze's data point rules).
_NOT_BILLED = frozenset(
    {"external_id", "user_alias", "braze_id", "_update_existing_only", "_merge_objects"}
)


def _data_points(array: str, obj: dict[str, Any]) -> int:
    """Billed data points of one applied object (attribute sets; events and properties)."""
    if array == "attributes":
        return sum(1 for key in obj if key not in _NOT_BILLED)
    return 1 + len(obj.get("properties") or {})
