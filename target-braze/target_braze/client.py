"""One request to Braze: the rate limit, retries, what each answer means, the dry run.

`RateLimiter`: stays under Braze's request window and hourly budget, shared by all senders.

Braze counts request *arrivals* in a window (3,000 per 3 s by default) without saying
exactly how the window slides. Counting each request at its send time lets network
jitter push more than the limit into one of Braze's windows. Instead each request takes
one of `limit` slots when it is sent, and the slot cools until
`max(send + window + margin, response arrival)`.

Why that is enough, and what it assumes: a request written out at `s` (the transport
notes when: a new connection's handshakes and any wait for the GIL come before, and
vary far more than the network) arrives at Braze between
`s + d_min` and `s + d_max` (one-way network delay), and always before its response
comes back. The next request on the same slot is sent no earlier than
`s + window + margin`, so it arrives no earlier than `s + window + margin + d_min`: at
least `window` after the first arrived, as long as the one-way delay varies by no more
than `margin` (`rate_limit_margin_seconds`, 0.1 s by default; delay on one path varies
by milliseconds, so this is a wide allowance). If it ever varied more, Braze would answer
429 to the excess: a 429 is never applied, and it is retried. So no window of Braze's
sees more than `limit` arrivals. The slot no longer waits a whole window *after* the
response (which capped a run at limit / (window + latency): 75% at 1 s latency); at
latency L it allows limit / max(window + margin, L) requests per second.

It also obeys Braze's own view: when `X-RateLimit-Remaining` says fewer requests are
left than our slots allow (the limit is shared with everything else the customer sends,
or with a run that ended moments ago), what Braze has left, less our requests still out,
is all that is sent until `X-RateLimit-Reset`; a 429 pauses every sender until the reset
it names. And an optional hourly budget (`max_requests_per_hour`, Braze's MAU contracts):
requests are counted per clock hour (UTC), and once the hour's budget is spent every
request waits for the next hour. A request sent within `margin` of the hour's end may
arrive in the next one, so it is counted in both.

The limiter also measures what the in-flight sizing needs (`in_flight_needed`): the
request rate it allows and the latency it sees between a send and its answer.

`BrazeClient`: one /users/track request, its retries, and what Braze's answer means.

Where is a 429 handled? Here: `BrazeClient.send` retries what Braze certainly did not
apply: a 429 (honouring Braze's rate-limit headers: a 429 naming its reset pauses every
sender until then, and does not use up `max_retries`), and a connection that was never
made. What Braze may have applied and not confirmed (a 5xx, a read timeout, a connection
that broke after the request went out) is *ambiguous*: retried with backoff when the
caller says a resend is safe (attributes only), else returned at once as
`Outcome(ambiguous=True)`. 401/403/404 stop the run at once; 400 and 413 come back as
`Outcome.split` so the caller can split the request.

Until Braze has answered once in this run, a refused connection, an unknown host or a
certificate that does not verify is a setting to fix, not an outage to wait out: the run
ends at once with one line naming `rest_endpoint`. The API key lives in the request
headers only: it is never logged and never part of an exception message. `DryRunClient`
stands in for the client in dry runs.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from target_braze.errors import BrazeFatalError, ConfigError
from target_braze.report import JsonlOutput, RunStats
from target_braze.transport import Answer, AnswerLost, ConnectFailed, Transport

logger = logging.getLogger("target_braze")

#: Requests per second assumed when the client-side limit is off: Braze's documented burst
#: limit (3,000 per 3 s).
BRAZE_REQUESTS_PER_SECOND = 1000.0

#: Requests in flight beyond rate x latency, for variation in latency.
IN_FLIGHT_HEADROOM = 1.2

_LATENCY_WEIGHT = 0.1  # of the newest answer in the moving average

_POLL_SECONDS = 0.1  # a pause or a cooling slot may end sooner than first computed

_HOUR = 3600.0


class RateLimiter:
    """Sliding-window slots, an hourly budget, and pauses Braze imposes through its headers."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        margin_seconds: float = 0.1,
        per_hour: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """A `limit` or `per_hour` of 0 turns that limit off (Braze's answers still count)."""
        self.limit = limit
        self.window = window_seconds
        self.margin = margin_seconds
        self.per_hour = per_hour
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition()
        self._in_use = 0
        self._waiting = 0  # senders held here: more in flight would only wait longer
        self._cooling: list[float] = []  # heap of times at which a slot frees up
        self._paused_until = 0.0
        # Braze's count below ours (shared limit): requests left to send until the reset.
        self._shared_left = 0
        self._shared_until = 0.0
        self._hour = -1  # the clock hour counted, its requests, and those of the next
        self._hour_sent = 0
        self._next_hour_sent = 0
        self._announced_hour = -1
        self._latency = 0.0

    @property
    def in_use(self) -> int:
        """Requests sent and not yet answered (a snapshot)."""
        return self._in_use

    def acquire(self) -> float:
        """Block until a request may be sent, take a slot; return the send time for `release`."""
        waited = False
        while True:
            announce = ""
            with self._cond:
                wait, announce = self._wait_needed()
                if wait <= 0:
                    if waited:
                        self._waiting -= 1
                    self._in_use += 1
                    return self._clock()
                if not waited:
                    waited = True
                    self._waiting += 1
                if not announce:
                    self._cond.wait(timeout=min(max(wait, 0.001), _POLL_SECONDS))
                    continue
            logger.warning("%s", announce)  # outside the lock: no I/O while holding it

    def _wait_needed(self) -> tuple[float, str]:
        """Seconds to wait (<= 0: go, and the request is counted), and a line to log once."""
        now = self._clock()
        while self._cooling and self._cooling[0] <= now:
            heapq.heappop(self._cooling)
        wait = self._paused_until - now
        if wait > 0:
            return wait, ""
        if self.limit and self._in_use + len(self._cooling) >= self.limit:
            return (self._cooling[0] - now if self._cooling else _POLL_SECONDS), ""
        shared = now < self._shared_until
        if shared and self._shared_left <= 0:
            return self._shared_until - now, ""
        if self.per_hour:
            wait, announce = self._hourly_wait()
            if wait > 0:
                return wait, announce
        if shared:
            self._shared_left -= 1
        return 0.0, ""

    def _hourly_wait(self) -> tuple[float, str]:
        wall = self._wall()
        hour = int(wall // _HOUR)
        if hour != self._hour:
            self._hour_sent = self._next_hour_sent if hour == self._hour + 1 else 0
            self._next_hour_sent = 0
            self._hour = hour
        if self._hour_sent >= self.per_hour:
            wait = (hour + 1) * _HOUR - wall
            if self._announced_hour == hour:
                return wait, ""
            self._announced_hour = hour
            return wait, (
                f"max_requests_per_hour ({self.per_hour}) is spent for this clock hour: "
                f"requests wait {wait:.0f} s for the next hour; the hourly budget, not this "
                "run, sets the pace"
            )
        self._hour_sent += 1
        if int((wall + self.margin) // _HOUR) != hour:
            self._next_hour_sent += 1  # may arrive in the next hour: it counts there too
        return 0.0, ""

    def release(self, sent_at: float) -> None:
        """The answer arrived (or the request failed): the slot cools, as the module says.

        `sent_at`: when the request was written out (on this limiter's clock), or when
        `acquire` returned if it never was.
        """
        with self._cond:
            now = self._clock()
            self._in_use -= 1
            latency = now - sent_at
            self._latency = (
                latency
                if not self._latency
                else self._latency + _LATENCY_WEIGHT * (latency - self._latency)
            )
            if self.limit:
                heapq.heappush(self._cooling, max(sent_at + self.window + self.margin, now))
            if self._waiting:
                self._cond.notify_all()

    def pause_for(self, seconds: float) -> None:
        """Hold every new request for `seconds` (Braze said the window is spent)."""
        with self._cond:
            until = self._clock() + seconds
            longer = until > self._paused_until + 1.0
            self._paused_until = max(self._paused_until, until)
        if longer:
            self._announce_wait(seconds)

    def _announce_wait(self, seconds: float) -> None:
        if seconds > max(self.window, 1.0) * 2:
            logger.warning(
                "Braze says its rate limit is spent for %.0f s (shared with other traffic, or "
                "an hourly limit): every request waits until then",
                seconds,
            )

    def observe(self, remaining: int | None, reset_in: float | None, in_flight: int) -> None:
        """Slow down when Braze says less is left than this limiter believes.

        Braze's `X-RateLimit-Remaining` counts everything the customer sends. While it is
        at least what our own slots allow, our slots already keep us under the limit.
        Below that, someone else is using the shared limit (or an earlier run's requests
        are still in Braze's window): until `X-RateLimit-Reset`, send only what Braze has
        left less our `in_flight` requests (which it may not have counted yet). Nothing
        left: every request waits for the reset. A later answer's count replaces this one.
        """
        if remaining is None or reset_in is None:
            return
        with self._cond:
            now = self._clock()
            if self.limit:
                while self._cooling and self._cooling[0] <= now:
                    heapq.heappop(self._cooling)
                ours = self.limit - self._in_use - len(self._cooling)
                # Alone on the limit, every arrival Braze counts holds one of our slots,
                # so Braze's remaining is never below our free slots.
                if remaining >= ours:
                    self._shared_until = 0.0
                    if self._waiting:
                        self._cond.notify_all()
                    return
            spent = self._shared_until > now and self._shared_left <= 0
            left = self._shared_left = remaining - in_flight
            self._shared_until = now + reset_in
            if self._waiting:
                self._cond.notify_all()
        if left <= 0 and not spent:
            self._announce_wait(reset_in)

    def in_flight_needed(
        self, latency_at_least: float = 0.0, rate_at_most: float = math.inf
    ) -> float:
        """Requests in flight that keep the allowed rate going (Little's law), with headroom.

        0 while senders wait here: then the limit, not Braze's latency, holds requests
        back, and more in flight would only wait longer. `latency_at_least` is what the
        caller knows before any answer arrived (how long every request in flight has been
        out); `rate_at_most` the rate at which the run can build requests, when it is below
        the limit's (more in flight than that rate needs would only add sender threads).
        """
        with self._cond:
            if self._waiting:
                return 0.0
            latency = max(self._latency, latency_at_least)
        rate = self.limit / (self.window + self.margin) if self.limit else BRAZE_REQUESTS_PER_SECOND
        rate = min(rate, rate_at_most)
        needed = rate * latency * IN_FLIGHT_HEADROOM
        return min(needed, float(self.limit)) if self.limit else needed

    def latency(self) -> float:
        """The moving average of seconds from a send to its answer (0 before any)."""
        return self._latency


logger = logging.getLogger("target_braze.client")

INSTANCE_ENDPOINTS = {
    **{f"US-0{n}": f"https://rest.iad-0{n}.braze.com" for n in range(1, 9)},
    "US-10": "https://rest.us-10.braze.com",
    "EU-01": "https://rest.fra-01.braze.eu",
    "EU-02": "https://rest.fra-02.braze.eu",
    "AU-01": "https://rest.au-01.braze.com",
    "ID-01": "https://rest.id-01.braze.com",
}

#: The API key permission each endpoint needs.
PERMISSIONS = {
    "/users/track": "users.track",
    "/users/delete": "users.delete",
    "/users/alias/new": "users.alias.new",
    "/users/identify": "users.identify",
    "/v2/subscription/status/set": "subscription.status.set",
}

_FATAL_REASONS = {
    401: "Braze answered 401: the api_key is missing or unknown to this instance; check "
    "api_key and that rest_endpoint is the instance the key was created on",
    403: "Braze answered 403 to {path}: the api_key lacks the {permission} permission (or the "
    "plan does not include it); create a REST API key with {permission}",
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


#: A 429 naming its reset does not use up `max_retries` (waiting for a known reset is not
#: a failure); this many in a row for one request still end the run.
MAX_PACED_429S = 100


class BrazeClient:
    """Sends bodies to one endpoint (/users/track unless `path` says otherwise); thread-safe.

    Thread-safe through a shared pool of keep-alive connections. Each user-data endpoint
    (/users/delete, ...) has a client of its own, with the rate limiter of its limit.
    """

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
        max_connections: int = 16,
        path: str = "/users/track",
    ) -> None:
        """Configure; nothing is sent until `send`."""
        self.base_url = base_url
        self.path = path
        self.url = f"{base_url}{path}"
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        if bulk_header:
            headers["X-Braze-Bulk"] = "true"
        self._transport = Transport(
            self.url, headers, timeout=timeout, max_connections=max_connections
        )
        self._limiter = limiter
        self._stats = stats
        self._retry = retry
        self._max_wait = max_wait_seconds
        self._stop = stop or threading.Event()
        self._answered = False  # Braze answered a request of this run: it exists

    def send(self, body: bytes, objects: int, *, resend_safe: bool = True) -> Outcome:
        """POST one body until Braze gives a final answer (or an ambiguous one, see module).

        Raises:
            BrazeFatalError: 401/403/404, retries exhausted, or no Braze at rest_endpoint.

        """
        attempt = paced = 0
        while True:
            if self._stop.is_set():
                raise BrazeFatalError("stopped: another request already failed the run")
            retry_in, problem, outcome = self._attempt(body, objects, resend_safe)
            if outcome is not None:
                return outcome
            # Only a 429 names when to come back; waiting for it is no failure.
            paced_429 = retry_in is not None
            if paced_429:
                paced += 1
                over = paced > MAX_PACED_429S
            else:
                over = attempt >= self._retry.max_retries
            if over:
                raise BrazeFatalError(
                    f"gave up on a {self.path} request after {attempt + paced + 1} attempts "
                    f"(last: {problem}); raise max_retries or check Braze's status page. "
                    "STATE stays at the last confirmed point: rerun to resume"
                )
            wait = retry_in if retry_in is not None else self._retry.backoff(attempt)
            wait = min(wait, self._max_wait)
            self._stats.add(retries=1)
            logger.info(
                "Retrying a %s request in %.2fs (attempt %d of %d): %s",
                self.path,
                wait,
                attempt + 2,
                self._retry.max_retries + 1,
                problem,
            )
            if self._stop.wait(wait):
                raise BrazeFatalError("stopped: another request already failed the run")
            if not paced_429:
                attempt += 1

    def _attempt(
        self, body: bytes, objects: int, resend_safe: bool
    ) -> tuple[float | None, str, Outcome | None]:
        """One try. Returns (wait hint, problem, None) to retry, or (.., .., outcome)."""
        sent_at = self._limiter.acquire()
        try:
            answer = self._transport.post(body)
        except ConnectFailed as failure:
            self._stats.add(requests=1, connection_errors=1)
            if not self._answered:
                raise BrazeFatalError(self._no_braze(failure)) from None
            return None, f"{failure.what} ({self.url})", None
        except AnswerLost as lost:
            self._stats.add(requests=1, connection_errors=1)
            if lost.tls and not self._answered:
                # Before any answer a TLS failure is the endpoint, not an outage.
                raise BrazeFatalError(self._no_braze(lost)) from None
            if not resend_safe:
                return None, "", Outcome(0, ambiguous=True, message=lost.what)
            return None, lost.what, None
        finally:
            # Counted from when the request was written out (see transport._Timed); one
            # that never was is counted from its slot's grant, which is earlier: safe.
            self._limiter.release(self._transport.written_at() or sent_at)
        self._answered = True
        return self._answer(answer, objects, len(body), resend_safe)

    def _no_braze(self, failure: ConnectFailed | AnswerLost) -> str:
        proxy = f" through the proxy {self._transport.proxy_name}" if self._transport.proxy else ""
        return (
            f"rest_endpoint {self.base_url}: {failure.what} at {self.url}{proxy}; check "
            "rest_endpoint (instance code or URL) and any HTTPS_PROXY"
            + (
                " or REQUESTS_CA_BUNDLE"
                if isinstance(failure, ConnectFailed) and failure.certificate
                else ""
            )
        )

    def _answer(
        self, answer: Answer, objects: int, size: int, resend_safe: bool
    ) -> tuple[float | None, str, Outcome | None]:
        status, headers = answer.status, answer.headers
        self._observe_limits(headers)
        if status in (201, 202):
            payload = _json(answer.body)
            self._stats.add(requests=1, objects_sent=objects, bytes_sent=size)
            return None, "", Outcome(status, errors=list(payload.get("errors") or []))
        self._stats.add(requests=1)
        message = str(_json(answer.body).get("message", "") or answer.reason or "")[:200]
        if status == 429:
            self._stats.add(rate_limited=1)
            wait = retry_after_seconds(headers)
            if wait is not None:
                self._limiter.pause_for(wait)
            return wait, "429 rate limited", None
        if status >= 500:
            self._stats.add(server_errors=1)
            problem = f"{status} {message}".strip()
            if not resend_safe:
                return (
                    None,
                    "",
                    Outcome(status, ambiguous=True, message=f"Braze answered {problem}"),
                )
            return None, problem, None
        if status in (400, 413):
            return None, "", Outcome(status, split=True, message=message)
        if status in _FATAL_REASONS:
            raise BrazeFatalError(
                _FATAL_REASONS[status].format(
                    url=self.url, path=self.path, permission=PERMISSIONS.get(self.path, "")
                )
            )
        raise BrazeFatalError(f"Braze answered {status} {message!r} to {self.path}; not retried")

    def _observe_limits(self, headers: Any) -> None:
        remaining = _number_header(headers, "X-RateLimit-Remaining")
        self._limiter.observe(
            None if remaining is None else int(remaining),
            reset_in_seconds(headers),
            self._limiter.in_use,
        )

    def awaiting_braze(self) -> int | None:
        """Requests sent whose answer has not arrived yet (None through a proxy: unknown).

        Optional for a `Sends` (the sender's in-flight sizing uses it where it exists).
        """
        return self._transport.awaiting_braze()

    def close(self) -> None:
        """Close the keep-alive connections."""
        self._transport.close()


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

    def close(self) -> None:
        """Close the output."""
        self._output.close()
