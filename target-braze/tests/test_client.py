"""BrazeClient against a real local HTTP server (pytest-httpserver): statuses and headers."""

from __future__ import annotations

import socket
import threading

import pytest
from pytest_httpserver import HTTPServer
from target_braze.client import BrazeClient, RetryPolicy, reset_in_seconds, retry_after_seconds
from target_braze.errors import BrazeFatalError
from target_braze.rate_limiter import RateLimiter
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


# --- resend_safe=False (events and purchases): ambiguous failures are not retried --------------


def test_a_5xx_is_returned_as_ambiguous_at_once_when_a_resend_is_not_safe(httpserver: HTTPServer):
    httpserver.expect_request("/users/track").respond_with_data("<html>502</html>", status=502)

    outcome = client_for(httpserver).send(b"{}", 1, resend_safe=False)

    assert (outcome.status, outcome.ambiguous) == (502, True)
    assert outcome.message.startswith("502")
    assert len(httpserver.log) == 1


def test_a_5xx_is_retried_when_a_resend_is_safe(httpserver: HTTPServer):
    httpserver.expect_ordered_request("/users/track").respond_with_data("", status=502)
    httpserver.expect_ordered_request("/users/track").respond_with_json(
        {"message": "success"}, status=201
    )

    outcome = client_for(httpserver).send(b"{}", 1)

    assert (outcome.status, outcome.ambiguous) == (201, False)
    assert len(httpserver.log) == 2


def test_a_429_is_retried_even_when_a_resend_is_not_safe(httpserver: HTTPServer):
    httpserver.expect_ordered_request("/users/track").respond_with_data("", status=429)
    httpserver.expect_ordered_request("/users/track").respond_with_json(
        {"message": "success"}, status=201
    )

    outcome = client_for(httpserver).send(b"{}", 1, resend_safe=False)

    assert (outcome.status, outcome.ambiguous) == (201, False)
    assert len(httpserver.log) == 2


def test_a_refused_connection_is_retried_even_when_a_resend_is_not_safe():
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = BrazeClient(
        f"http://127.0.0.1:{port}",
        KEY,
        RateLimiter(0, 3.0),
        RunStats(60.0),
        retry=RetryPolicy(max_retries=2, base_seconds=0.01),
    )

    with pytest.raises(BrazeFatalError, match="after 3 attempts"):
        client.send(b"{}", 1, resend_safe=False)


def test_a_connection_dropped_after_sending_is_ambiguous_when_a_resend_is_not_safe():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def drop() -> None:  # read the request, then close without answering
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)

        dropper = threading.Thread(target=drop)
        dropper.start()
        client = BrazeClient(
            f"http://127.0.0.1:{port}",
            KEY,
            RateLimiter(0, 3.0),
            RunStats(60.0),
            retry=RetryPolicy(max_retries=3, base_seconds=0.01),
        )
        outcome = client.send(b"{}", 1, resend_safe=False)
        dropper.join()

    assert (outcome.status, outcome.ambiguous) == (0, True)
    assert outcome.message
