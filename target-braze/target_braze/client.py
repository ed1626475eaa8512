"""`BrazeClient`: one /users/track request, its retries, and what Braze's answer means.

Where is a 429 handled? Here: `BrazeClient.send` retries 429, 5xx, dropped connections
and timeouts with exponential backoff and jitter, honouring Braze's rate-limit headers;
401/403/404 stop the run at once; 400 and 413 come back as `Outcome.split` so the caller
can split the request. The API key lives in the request headers only: it is never logged
and never part of an exception message. `DryRunClient` stands in for it in dry runs.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import certifi
import orjson
import requests

from target_braze.errors import BrazeFatalError, ConfigError
from target_braze.http11 import Endpoint, Http11Connection, ResponseHeaders
from target_braze.jsonl_output import JsonlOutput
from target_braze.rate_limiter import RateLimiter
from target_braze.report import RunStats

logger = logging.getLogger("target_braze.client")

INSTANCE_ENDPOINTS = {
    **{f"US-0{n}": f"https://rest.iad-0{n}.braze.com" for n in range(1, 9)},
    "US-10": "https://rest.us-10.braze.com",
    "EU-01": "https://rest.fra-01.braze.eu",
    "EU-02": "https://rest.fra-02.braze.eu",
    "AU-01": "https://rest.au-01.braze.com",
    "ID-01": "https://rest.id-01.braze.com",
}
_FATAL_REASONS = {
    401: "Braze answered 401: the api_key is missing or unknown to this instance; check "
    "api_key and that rest_endpoint is the instance the key was created on",
    403: "Braze answered 403: the api_key lacks the users.track permission (or the plan "
    "does not include it); create a REST API key with users.track",
    404: "Braze answered 404: the api_key is unknown at {url}; check rest_endpoint is the "
    "instance of your dashboard (for example US-03 or EU-01)",
}


def resolve_rest_endpoint(value: str) -> str:
    """An instance code (US-03, EU-01, ...) or a URL, as the base URL; https except loopback."""
    code = value.strip().upper()
    if code in INSTANCE_ENDPOINTS:
        return INSTANCE_ENDPOINTS[code]
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"rest_endpoint {value!r} is neither a Braze instance code "
            f"({', '.join(sorted(INSTANCE_ENDPOINTS))}) nor an https URL"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"rest_endpoint {value!r} uses plain http; Braze needs https (plain http is "
            "allowed only for loopback test servers)"
        )
    return value.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class Outcome:
    """Braze's final answer to one request (after retries)."""

    status: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    split: bool = False  # 400 or 413: split the request and send the parts
    message: str = ""
    # Braze may have applied the request and no answer says so (returned, not retried,
    # only when the caller said a resend is not safe: events and purchases).
    ambiguous: bool = False


class Sends(Protocol):
    """What the sender needs from a client: `BrazeClient`, or `DryRunClient`."""

    def send(self, body: bytes, objects: int, *, resend_safe: bool = True) -> Outcome:
        """Deliver one body and return Braze's final answer.

        With `resend_safe=False` a failure after which Braze may have applied the request
        (a drop after the body was sent, a read timeout, a 5xx) is not retried: it comes
        back at once as `Outcome(ambiguous=True)`.
        """
        ...

    def close(self) -> None:
        """Release connections or files."""
        ...

    def answers_pending(self) -> tuple[int, int]:
        """Requests sent with no answer yet, and those whose answer is arriving (any thread)."""
        ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before failing the run."""

    max_retries: int
    base_seconds: float
    max_seconds: float = 60.0

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Exponential with jitter: half fixed, half random, so senders spread out."""
        ceiling = min(self.max_seconds, self.base_seconds * (2**attempt))
        return ceiling / 2 + ceiling / 2 * rng()


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds Braze asks us to wait, from whichever header it sent (names case-insensitive).

    `X-RateLimit-Reset` is epoch seconds on most plans and seconds remaining on MAU
    plans: a value above 10^9 can only be an epoch.
    """
    for name in ("X-Ratelimit-Retry-After", "Retry-After"):
        value = _number_header(headers, name)
        if value is not None:
            return max(0.0, value)
    return reset_in_seconds(headers, now)


def reset_in_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds until `X-RateLimit-Reset`, whichever form it takes."""
    reset = _number_header(headers, "X-RateLimit-Reset")
    if reset is None:
        return None
    if reset > 1e9:
        return max(0.0, reset - (time.time() if now is None else now))
    return max(0.0, reset)


def _number_header(headers: Any, name: str) -> float | None:
    value = headers.get(name) if headers is not None else None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class _Connections:
    """One keep-alive `Http11Connection` per sender thread, to one `Endpoint`.

    TLS is always verified (certifi's bundle, or REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE); an
    http:// proxy from the environment (HTTPS_PROXY, NO_PROXY honoured) is used through a
    CONNECT tunnel. All of it is read once, here.
    """

    def __init__(self, url: str, timeout: float, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        context = None
        if https:
            ca_bundle = (
                os.environ.get("REQUESTS_CA_BUNDLE")
                or os.environ.get("CURL_CA_BUNDLE")
                or certifi.where()
            )
            # create_default_context: CERT_REQUIRED and hostname checking, never switched off.
            context = ssl.create_default_context(cafile=ca_bundle)
        proxy = _proxy(url)
        self.endpoint = Endpoint(
            host=parts.hostname or "",
            port=parts.port or (443 if https else 80),
            path=parts.path or "/",
            timeout=timeout,
            context=context,
            proxy=proxy[0] if proxy else None,
            proxy_headers=proxy[1] if proxy else {},
        )
        self._headers = headers
        self._local = threading.local()
        self._all: list[Http11Connection] = []
        self._lock = threading.Lock()

    def get(self) -> Http11Connection:
        """The calling thread's connection."""
        connection: Http11Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = Http11Connection(self.endpoint, self._headers)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def answers_pending(self) -> tuple[int, int]:
        """Connections that sent a request and see no answer yet; those seeing one arrive."""
        with self._lock:
            connections = list(self._all)
        states = [connection.answer_state() for connection in connections]
        return states.count(1), states.count(2)

    def close_all(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()


def _proxy(url: str) -> tuple[tuple[str, int], dict[str, str]] | None:
    """The proxy the environment names for `url` (NO_PROXY honoured), and its auth header."""
    proxy_url = requests.utils.get_environ_proxies(url).get(urlsplit(url).scheme)
    if not proxy_url:
        return None
    proxy = urlsplit(proxy_url if "//" in proxy_url else f"http://{proxy_url}")
    if proxy.scheme != "http" or not proxy.hostname:
        raise ConfigError(
            "the proxy in HTTPS_PROXY/HTTP_PROXY must be an http:// URL (target-braze "
            "tunnels TLS to Braze through it with CONNECT)"
        )
    headers = {}
    if proxy.username:
        token = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
    return (proxy.hostname, proxy.port or 8080), headers


class BrazeClient:
    """Sends /users/track bodies; thread-safe (one keep-alive connection per thread)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        limiter: RateLimiter,
        stats: RunStats,
        *,
        retry: RetryPolicy,
        timeout: float = 30.0,
        bulk_header: bool = True,
        max_wait_seconds: float = 3600.0,
        stop: threading.Event | None = None,
    ) -> None:
        """Configure; nothing is sent until `send`."""
        self.url = f"{base_url}/users/track"
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        if bulk_header:
            headers["X-Braze-Bulk"] = "true"
        self._connections = _Connections(self.url, timeout, headers)
        self._limiter = limiter
        self._stats = stats
        self._retry = retry
        self._max_wait = max_wait_seconds
        self._stop = stop or threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()

    def send(self, body: bytes, objects: int, *, resend_safe: bool = True) -> Outcome:
        """POST one body until Braze gives a final answer (see `Sends.send`).

        Raises:
            BrazeFatalError: 401/403/404, or retries exhausted.

        """
        attempt = 0
        while True:
            if self._stop.is_set():
                raise BrazeFatalError("stopped: another request already failed the run")
            retry_in, problem, outcome = self._attempt(body, objects, resend_safe)
            if outcome is not None:
                return outcome
            if attempt >= self._retry.max_retries:
                raise BrazeFatalError(
                    f"gave up on a /users/track request after {attempt + 1} attempts "
                    f"(last: {problem}); raise max_retries or check Braze's status page. "
                    "STATE stays at the last confirmed point: rerun to resume"
                )
            wait = retry_in if retry_in is not None else self._retry.backoff(attempt)
            wait = min(wait, self._max_wait)
            self._stats.add(retries=1)
            logger.info(
                "Retrying a /users/track request in %.2fs (attempt %d of %d): %s",
                wait,
                attempt + 2,
                self._retry.max_retries + 1,
                problem,
            )
            if self._stop.wait(wait):
                raise BrazeFatalError("stopped: another request already failed the run")
            attempt += 1

    def _attempt(
        self, body: bytes, objects: int, resend_safe: bool
    ) -> tuple[float | None, str, Outcome | None]:
        """One try. Returns (wait hint, problem, None) to retry, or (.., .., outcome)."""
        self._limiter.acquire()
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
        try:
            status, reason, headers, data = self._post(body)
        except OSError as exc:  # the connection closed itself: the next request reconnects
            self._stats.add(requests=1, connection_errors=1)
            problem = f"{type(exc).__name__} talking to {self.url}"
            # Refused: nothing was sent. Any other error may have come after the body was.
            if not resend_safe and not isinstance(exc, ConnectionRefusedError):
                return None, problem, Outcome(0, ambiguous=True, message=problem)
            return None, problem, None
        finally:
            with self._lock:
                self._in_flight -= 1
            self._limiter.release()
        self._observe_limits(headers, in_flight)
        if status in (201, 202):
            payload = _json(data)
            self._stats.add(requests=1, objects_sent=objects, bytes_sent=len(body))
            return None, "", Outcome(status, errors=list(payload.get("errors") or []))
        self._stats.add(requests=1)
        message = str(_json(data).get("message", "") or reason or "")[:200]
        if status == 429:
            self._stats.add(rate_limited=1)
            wait = retry_after_seconds(headers)
            if wait is not None:
                self._limiter.pause_for(wait)
            return wait, "429 rate limited", None
        if status >= 500:
            self._stats.add(server_errors=1)
            problem = f"{status} {message}".strip()
            if not resend_safe:  # a gateway may answer 5xx after Braze applied it
                return None, problem, Outcome(status, ambiguous=True, message=problem)
            return None, problem, None
        if status in (400, 413):
            return None, "", Outcome(status, split=True, message=message)
        if status in _FATAL_REASONS:
            raise BrazeFatalError(_FATAL_REASONS[status].format(url=self.url))
        raise BrazeFatalError(f"Braze answered {status} {message!r} to /users/track; not retried")

    def _post(self, body: bytes) -> tuple[int, str, ResponseHeaders, bytes]:
        response = self._connections.get().post(body)
        return response.status, response.reason, response.headers, response.body

    def _observe_limits(self, headers: ResponseHeaders, in_flight: int) -> None:
        remaining = _number_header(headers, "X-RateLimit-Remaining")
        self._limiter.observe(
            None if remaining is None else int(remaining),
            reset_in_seconds(headers),
            in_flight,
        )

    def answers_pending(self) -> tuple[int, int]:
        """Requests sent to Braze with no answer yet, and those whose answer is arriving."""
        return self._connections.answers_pending()

    def close(self) -> None:
        """Close the keep-alive connections."""
        self._connections.close_all()


def _json(data: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


class DryRunClient:
    """Writes each request body as one JSON line instead of sending it."""

    def __init__(self, path: str, stats: RunStats) -> None:
        """Empty the dry-run output (a previous dry run's bodies must not linger)."""
        self._output = JsonlOutput(path, truncate=True)
        self._output.open()
        self._stats = stats

    def send(self, body: bytes, objects: int, *, resend_safe: bool = True) -> Outcome:
        """Record the body; report it as accepted so counting proceeds as in a real run."""
        self._output.write_line(body)
        self._stats.add(requests=1, objects_sent=objects, bytes_sent=len(body))
        return Outcome(201)

    def answers_pending(self) -> tuple[int, int]:
        """None: a dry run answers every request at once."""
        return 0, 0

    def close(self) -> None:
        """Close the output."""
        self._output.close()
