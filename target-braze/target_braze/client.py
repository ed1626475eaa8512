"""`BrazeClient`: one /users/track request, its retries, and what Braze's answer means.

Where is a 429 handled? Here: `BrazeClient.send` retries 429, 5xx, dropped connections
and timeouts with exponential backoff and jitter, honouring Braze's rate-limit headers;
401/403/404 stop the run at once; 400 and 413 come back as `Outcome.split` so the caller
can split the request. The API key lives in the session headers only: it is never logged
and never part of an exception message.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import certifi
import orjson
import requests
import urllib3

from target_braze.errors import BrazeFatalError, ConfigError
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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before failing the run."""

    max_retries: int = 8
    base_seconds: float = 1.0
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


class BrazeClient:
    """Sends /users/track bodies; thread-safe (one keep-alive session per thread)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        limiter: RateLimiter,
        stats: RunStats,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        bulk_header: bool = True,
        max_wait_seconds: float = 3600.0,
        stop: threading.Event | None = None,
        max_connections: int = 16,
    ) -> None:
        """Configure; nothing is sent until `send`."""
        self.url = f"{base_url}/users/track"
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {api_key}",
        }
        if bulk_header:
            self._headers["X-Braze-Bulk"] = "true"
        self._limiter = limiter
        self._stats = stats
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._max_wait = max_wait_seconds
        self._stop = stop or threading.Event()
        self._pool = self._make_pool(max_connections)
        self._in_flight = 0
        self._lock = threading.Lock()

    def _make_pool(self, max_connections: int) -> urllib3.PoolManager:
        """One keep-alive pool shared by the sender threads.

        urllib3 directly, not a requests.Session: requests costs about 1 ms of CPU per
        request (environment lookups, hooks, adapters), which at Braze's 1,000 requests/s
        would be a core of its own. Proxy and CA-bundle variables are read once, here.
        """
        ca_bundle = (
            os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or certifi.where()
        )
        options: dict[str, Any] = {
            "num_pools": 2,
            "maxsize": max_connections,
            "headers": self._headers,
            # TLS verification is never switched off; a custom CA bundle is honoured.
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": ca_bundle,
            "retries": False,
        }
        proxy = requests.utils.get_environ_proxies(self.url).get(urlsplit(self.url).scheme)
        if proxy:
            return urllib3.ProxyManager(proxy, **options)
        return urllib3.PoolManager(**options)

    def send(self, body: bytes, objects: int) -> Outcome:
        """POST one body until Braze gives a final answer.

        Raises:
            BrazeFatalError: 401/403/404, or retries exhausted.

        """
        attempt = 0
        while True:
            if self._stop.is_set():
                raise BrazeFatalError("stopped: another request already failed the run")
            retry_in, problem, outcome = self._attempt(body, objects)
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

    def _attempt(self, body: bytes, objects: int) -> tuple[float | None, str, Outcome | None]:
        """One try. Returns (wait hint, problem, None) to retry, or (.., .., outcome)."""
        self._limiter.acquire()
        with self._lock:
            self._in_flight += 1
        try:
            response = self._pool.request(
                "POST", self.url, body=body, timeout=self._timeout, retries=False
            )
        except urllib3.exceptions.HTTPError as exc:
            self._stats.add(requests=1, connection_errors=1)
            return None, f"{type(exc).__name__} talking to {self.url}", None
        finally:
            with self._lock:
                in_flight = self._in_flight
                self._in_flight -= 1
            self._limiter.release()
        status = response.status
        self._stats.add(requests=1)
        self._observe_limits(response, in_flight)
        if status in (201, 202):
            payload = _json(response)
            self._stats.add(objects_sent=objects, bytes_sent=len(body))
            return None, "", Outcome(status, errors=list(payload.get("errors") or []))
        message = str(_json(response).get("message", "") or response.reason or "")[:200]
        if status == 429:
            self._stats.add(rate_limited=1)
            wait = retry_after_seconds(response.headers)
            if wait is not None:
                self._limiter.pause_for(wait)
            return wait, "429 rate limited", None
        if status >= 500:
            self._stats.add(server_errors=1)
            return None, f"{status} {message}".strip(), None
        if status in (400, 413):
            return None, "", Outcome(status, split=True, message=message)
        if status in _FATAL_REASONS:
            raise BrazeFatalError(_FATAL_REASONS[status].format(url=self.url))
        raise BrazeFatalError(f"Braze answered {status} {message!r} to /users/track; not retried")

    def _observe_limits(self, response: urllib3.BaseHTTPResponse, in_flight: int) -> None:
        headers = response.headers
        remaining = _number_header(headers, "X-RateLimit-Remaining")
        self._limiter.observe(
            None if remaining is None else int(remaining),
            reset_in_seconds(headers),
            in_flight,
        )


def _json(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    try:
        payload = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}
