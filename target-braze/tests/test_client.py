"""BrazeClient against a real local HTTP server (pytest-httpserver): statuses and headers."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pytest_httpserver import HTTPServer
from target_braze.client import (
    BrazeClient,
    RateLimiter,
    RetryPolicy,
    reset_in_seconds,
    retry_after_seconds,
)
from target_braze.errors import BrazeFatalError
from target_braze.report import RunStats
from urllib3 import HTTPHeaderDict

KEY = "client-test-key-9876"


def client_for(server: HTTPServer, **kwargs) -> BrazeClient:
    return BrazeClient(
        server.url_for("").rstrip("/"),
        KEY,
        RateLimiter(0, 3.0),
        RunStats(60.0),
        retry=RetryPolicy(max_retries=kwargs.pop("max_retries", 3), base_seconds=0.01),
        **kwargs,
    )


def test_sends_bearer_key_bulk_header_and_json(httpserver: HTTPServer):
    httpserver.expect_request(
        "/users/track",
        method="POST",
        headers={
            "Authorization": f"Bearer {KEY}",
            "X-Braze-Bulk": "true",
            "Content-Type": "application/json",
        },
        data=b'{"attributes":[]}',
    ).respond_with_json({"message": "success"}, status=201)
    outcome = client_for(httpserver).send(b'{"attributes":[]}', 0)
    assert outcome.status == 201
    assert outcome.errors == []


def test_404_fails_at_once_naming_the_instance_not_the_key(httpserver: HTTPServer):
    httpserver.expect_request("/users/track").respond_with_json({"message": "x"}, status=404)
    with pytest.raises(BrazeFatalError, match="404: the api_key is unknown") as caught:
        client_for(httpserver).send(b"{}", 1)
    assert KEY not in str(caught.value)
    assert len(httpserver.log) == 1


def test_202_queued_counts_as_accepted(httpserver: HTTPServer):
    httpserver.expect_request("/users/track").respond_with_json({"message": "queued"}, status=202)
    assert client_for(httpserver).send(b"{}", 1).status == 202


def test_400_and_413_ask_the_caller_to_split(httpserver: HTTPServer):
    httpserver.expect_ordered_request("/users/track").respond_with_json(
        {"message": "Max Input Length Exceeded"}, status=400
    )
    httpserver.expect_ordered_request("/users/track").respond_with_data("", status=413)
    client = client_for(httpserver)
    first = client.send(b"{}", 76)
    assert first.split
    assert first.message == "Max Input Length Exceeded"
    assert client.send(b"{}", 76).split


def test_429_then_success_honours_retry_after(httpserver: HTTPServer):
    httpserver.expect_ordered_request("/users/track").respond_with_data(
        "", status=429, headers={"Retry-After": "0.05"}
    )
    httpserver.expect_ordered_request("/users/track").respond_with_json(
        {"message": "success"}, status=201
    )
    stats = RunStats(60.0)
    client = BrazeClient(
        httpserver.url_for("").rstrip("/"),
        KEY,
        RateLimiter(0, 3.0),
        stats,
        retry=RetryPolicy(max_retries=2, base_seconds=5.0),  # backoff would take 5 s
    )
    assert client.send(b"{}", 1).status == 201
    assert stats.counts["rate_limited"] == 1
    assert stats.counts["retries"] == 1


def test_exhausted_retries_fail_with_the_last_problem(httpserver: HTTPServer):
    httpserver.expect_request("/users/track").respond_with_data("", status=503)
    with pytest.raises(BrazeFatalError, match=r"after 3 attempts \(last: 503"):
        client_for(httpserver, max_retries=2).send(b"{}", 1)
    assert len(httpserver.log) == 3


def test_stop_event_ends_retrying_early(httpserver: HTTPServer):
    httpserver.expect_request("/users/track").respond_with_data("", status=503)
    stop = threading.Event()
    stop.set()
    with pytest.raises(BrazeFatalError, match="another request already failed"):
        client_for(httpserver, stop=stop).send(b"{}", 1)


def test_retry_headers_any_case_and_reset_as_epoch_or_seconds():
    now = 2_000_000_000.0
    # Responses' headers are case-insensitive; Braze may send them lower-case.
    assert retry_after_seconds(HTTPHeaderDict({"x-ratelimit-retry-after": "7"}), now) == 7
    assert retry_after_seconds(HTTPHeaderDict({"retry-after": "3"}), now) == 3
    assert reset_in_seconds({"X-RateLimit-Reset": str(now + 12)}, now) == 12  # epoch
    assert reset_in_seconds({"X-RateLimit-Reset": "12"}, now) == 12  # seconds remaining
    assert reset_in_seconds({"X-RateLimit-Reset": "soon"}, now) is None
    assert retry_after_seconds({}, now) is None


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling():
    policy = RetryPolicy(max_retries=8, base_seconds=1.0, max_seconds=60.0)
    assert policy.backoff(0, rng=lambda: 0.0) == 0.5
    assert policy.backoff(0, rng=lambda: 1.0) == 1.0
    assert policy.backoff(3, rng=lambda: 1.0) == 8.0
    assert policy.backoff(10, rng=lambda: 1.0) == 60.0


# --- what Braze certainly did not apply, and what it may have ------------------------------


class SilentServer(socketserver.ThreadingTCPServer):
    """Reads one request, then closes without an answer (`drop`) or never answers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *, drop: bool) -> None:
        super().__init__(("127.0.0.1", 0), _SilentHandler)
        self.drop = drop
        self.requests = 0
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SilentHandler(socketserver.BaseRequestHandler):
    server: SilentServer

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        self.server.requests += 1
        if not self.server.drop:
            self.server.release.wait(30)


@pytest.fixture
def silent() -> Iterator[Callable[..., SilentServer]]:
    servers: list[SilentServer] = []

    def start(*, drop: bool) -> SilentServer:
        server = SilentServer(drop=drop)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_5xx_to_a_request_not_safe_to_resend_is_ambiguous_and_not_retried(httpserver):
    httpserver.expect_request("/users/track").respond_with_data("bad gateway", status=502)
    outcome = client_for(httpserver).send(b"{}", 1, resend_safe=False)
    assert outcome.ambiguous
    assert outcome.status == 502
    assert "502" in outcome.message
    assert len(httpserver.log) == 1


def test_a_5xx_to_attributes_only_is_retried(httpserver: HTTPServer):
    httpserver.expect_ordered_request("/users/track").respond_with_data("", status=503)
    httpserver.expect_ordered_request("/users/track").respond_with_json(
        {"message": "success"}, status=201
    )
    outcome = client_for(httpserver).send(b"{}", 1, resend_safe=True)
    assert outcome.status == 201
    assert not outcome.ambiguous
    assert len(httpserver.log) == 2


def test_a_connection_dropped_after_the_request_went_out_is_ambiguous(silent):
    server = silent(drop=True)
    client = BrazeClient(
        server.url, KEY, RateLimiter(0, 3.0), RunStats(60.0), retry=RetryPolicy(3, 0.01)
    )
    outcome = client.send(b'{"events":[]}', 1, resend_safe=False)
    assert outcome.ambiguous
    assert outcome.status == 0
    assert outcome.message
    assert server.requests == 1


def test_a_read_timeout_is_ambiguous(silent):
    server = silent(drop=False)
    client = BrazeClient(
        server.url,
        KEY,
        RateLimiter(0, 3.0),
        RunStats(60.0),
        retry=RetryPolicy(3, 0.01),
        timeout=0.3,
    )
    outcome = client.send(b'{"purchases":[]}', 1, resend_safe=False)
    assert outcome.ambiguous
    assert "read timeout" in outcome.message
    assert server.requests == 1


def test_a_dropped_answer_to_attributes_is_retried(silent):
    server = silent(drop=True)
    client = BrazeClient(
        server.url, KEY, RateLimiter(0, 3.0), RunStats(60.0), retry=RetryPolicy(2, 0.01)
    )
    with pytest.raises(BrazeFatalError, match="after 3 attempts"):
        client.send(b"{}", 1, resend_safe=True)
    assert server.requests == 3


def test_a_refused_connection_before_braze_ever_answered_fails_at_once_naming_rest_endpoint():
    url = f"http://127.0.0.1:{closed_port()}"
    stats = RunStats(60.0)
    client = BrazeClient(url, KEY, RateLimiter(0, 3.0), stats, retry=RetryPolicy(8, 5.0))
    with pytest.raises(BrazeFatalError) as caught:
        client.send(b"{}", 1)
    message = str(caught.value)
    assert message.startswith(f"rest_endpoint {url}: connection refused")
    assert "check rest_endpoint" in message
    assert KEY not in message
    assert stats.counts["retries"] == 0


def test_an_unknown_host_fails_at_once_naming_rest_endpoint():
    url = "http://braze-host-that-does-not-exist.invalid:8080"
    with pytest.raises(BrazeFatalError, match=r"^rest_endpoint .*: unknown host"):
        BrazeClient(url, KEY, RateLimiter(0, 3.0), RunStats(60.0), retry=RetryPolicy(8, 5.0)).send(
            b"{}", 1
        )


def test_once_braze_answered_a_refused_connection_is_retried():
    httpserver = HTTPServer(host="127.0.0.1")  # its own: the shared one must keep running
    httpserver.start()
    httpserver.expect_request("/users/track").respond_with_json({"message": "ok"}, status=201)
    stats = RunStats(60.0)
    client = BrazeClient(
        httpserver.url_for("").rstrip("/"),
        KEY,
        RateLimiter(0, 3.0),
        stats,
        retry=RetryPolicy(max_retries=2, base_seconds=0.01),
    )
    assert client.send(b"{}", 1).status == 201
    httpserver.stop()  # Braze goes away: an outage now, not a setting
    with pytest.raises(BrazeFatalError, match=r"gave up .* after 3 attempts \(last: connection"):
        client.send(b"{}", 1)
    assert stats.counts["retries"] == 2


def test_a_429_naming_its_reset_does_not_use_up_the_retries(httpserver: HTTPServer):
    for _ in range(4):
        httpserver.expect_ordered_request("/users/track").respond_with_data(
            "", status=429, headers={"X-Ratelimit-Retry-After": "0"}
        )
    httpserver.expect_ordered_request("/users/track").respond_with_json(
        {"message": "success"}, status=201
    )
    assert client_for(httpserver, max_retries=1).send(b"{}", 1).status == 201
    assert len(httpserver.log) == 5


def test_a_429_naming_a_far_reset_pauses_every_sender_until_then(httpserver: HTTPServer):
    httpserver.expect_request("/users/track").respond_with_data(
        "",
        status=429,
        headers={"X-Ratelimit-Retry-After": "1800"},  # the hourly limit
    )
    limiter = RateLimiter(0, 3.0)
    stop = threading.Event()
    stats = RunStats(60.0)
    client = BrazeClient(
        httpserver.url_for("").rstrip("/"),
        KEY,
        limiter,
        stats,
        retry=RetryPolicy(max_retries=0, base_seconds=0.01),
        stop=stop,
    )
    failures: list[BaseException] = []

    def send() -> None:
        try:
            client.send(b"{}", 1)
        except BrazeFatalError as exc:
            failures.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    while not stats.counts["retries"] and sender.is_alive():  # the 429 was read
        time.sleep(0.01)
    other = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(), other.set()), daemon=True).start()
    assert not other.wait(0.5)  # another sender is held too
    assert len(httpserver.log) == 1  # and the request waits, it does not retry at once
    assert sender.is_alive()  # max_retries 0, yet the run goes on: waiting is no failure
    stop.set()
    sender.join(5)
    assert "another request already failed" in str(failures[0])


def test_https_at_a_plain_http_port_fails_at_once_naming_rest_endpoint(httpserver: HTTPServer):
    url = httpserver.url_for("").rstrip("/").replace("http://", "https://")
    with pytest.raises(BrazeFatalError, match=r"^rest_endpoint https://.*: TLS failed") as caught:
        BrazeClient(url, KEY, RateLimiter(0, 3.0), RunStats(60.0), retry=RetryPolicy(8, 5.0)).send(
            b"{}", 1
        )
    assert "\n" not in str(caught.value)


def test_a_429_is_retried_even_when_a_resend_is_not_safe(httpserver: HTTPServer):
    httpserver.expect_ordered_request("/users/track").respond_with_data("", status=429)
    httpserver.expect_ordered_request("/users/track").respond_with_json(
        {"message": "success"}, status=201
    )

    outcome = client_for(httpserver).send(b"{}", 1, resend_safe=False)

    assert (outcome.status, outcome.ambiguous) == (201, False)
    assert len(httpserver.log) == 2
