"""Rate limiting with Braze's headers, and injected faults."""

from __future__ import annotations

import time

import pytest
import requests
from braze_sandbox.testing import SandboxError, SandboxProcess

BODY = {"attributes": [{"external_id": "u", "x": 1}]}


@pytest.mark.parametrize(
    ("style", "header"),
    [("none", None), ("x-ratelimit", "X-Ratelimit-Retry-After"), ("retry-after", "Retry-After")],
)
def test_over_the_window_is_429_with_headers(style, header, track):
    with SandboxProcess(rate_limit=3, rate_window=5, retry_after_style=style) as sandbox:
        responses = [track(sandbox, BODY) for _ in range(4)]
        assert [r.status_code for r in responses] == [201, 201, 201, 429]
        for response in responses:
            assert response.headers["X-RateLimit-Limit"] == "3"
            assert "X-RateLimit-Reset" in response.headers
        assert responses[0].headers["X-RateLimit-Remaining"] == "2"
        assert responses[3].headers["X-RateLimit-Remaining"] == "0"
        assert int(responses[3].headers["X-RateLimit-Reset"]) > time.time()
        if header is None:
            assert "Retry-After" not in responses[3].headers
            assert "X-Ratelimit-Retry-After" not in responses[3].headers
        else:
            assert 1 <= int(responses[3].headers[header]) <= 5
        stats = sandbox.stats()
        assert stats["rate_limited"] == 1
        assert stats["max_arrivals_in_window"] == 4


def test_reset_style_seconds_gives_seconds_remaining(track):
    with SandboxProcess(rate_limit=3, rate_window=5, reset_style="seconds") as sandbox:
        assert 0 <= int(track(sandbox, BODY).headers["X-RateLimit-Reset"]) <= 5


def test_injected_faults_are_counted_and_deterministic(track):
    def run() -> tuple[list[object], dict[str, int]]:
        with SandboxProcess(fault_429=0.2, fault_5xx=0.2, fault_drop=0.2, seed=42) as sandbox:
            outcomes: list[object] = []
            for _ in range(40):
                try:
                    outcomes.append(track(sandbox, BODY).status_code)
                except requests.ConnectionError:
                    outcomes.append("drop")
            return outcomes, sandbox.stats()["injected"]

    first, injected = run()
    second, _ = run()
    assert first == second
    assert injected["drop"] == first.count("drop")
    assert injected["429"] == first.count(429)
    assert injected["5xx"] == sum(1 for o in first if o in (500, 502, 503))
    assert injected["drop"]
    assert injected["429"]
    assert injected["5xx"]


def test_drop_after_apply_applies_then_loses_the_response(sandbox, track):
    sandbox.configure(fault_drop_after_apply=1.0)
    try:
        with pytest.raises(requests.ConnectionError):
            track(sandbox, BODY)
    finally:
        sandbox.configure(fault_drop_after_apply=0.0)
    assert sandbox.profile("u") is not None
    assert sandbox.stats()["injected"] == {"drop_after_apply": 1}


EVENTS_BODY = {"events": [{"external_id": "u", "name": "signup", "time": "2026-01-01T00:00:00Z"}]}


def test_5xx_after_apply_applies_then_answers_502(sandbox, track):
    sandbox.configure(fault_5xx_after_apply=1.0)
    try:
        response = track(sandbox, EVENTS_BODY)
    finally:
        sandbox.configure(fault_5xx_after_apply=0.0)
    assert response.status_code == 502
    assert len(sandbox.events("u")) == 1
    assert sandbox.stats()["injected"] == {"5xx_after_apply": 1}


def test_after_apply_faults_heal_at_run_time(sandbox, track):
    sandbox.configure(fault_5xx_after_apply=1.0, fault_drop_after_apply=0.0)
    assert sandbox.config()["fault_5xx_after_apply"] == 1.0
    assert track(sandbox, EVENTS_BODY).status_code == 502
    sandbox.configure(fault_5xx_after_apply=0.0)
    assert track(sandbox, EVENTS_BODY).status_code == 201
    assert len(sandbox.events("u")) == 2


def test_5xx_after_apply_is_a_cli_option():
    with SandboxProcess(fault_5xx_after_apply=1.0) as sandbox:
        client_body = {"attributes": [{"external_id": "cli", "x": 1}]}
        response = requests.post(
            f"{sandbox.url}/users/track",
            json=client_body,
            headers={"Authorization": f"Bearer {sandbox.api_key}"},
            timeout=10,
        )
        assert response.status_code == 502
        assert sandbox.profile("cli") is not None
        assert sandbox.config()["fault_5xx_after_apply"] == 1.0


def test_5xx_after_apply_rejects_a_bad_probability(sandbox):
    with pytest.raises(SandboxError):
        sandbox.configure(fault_5xx_after_apply=1.5)


def test_unindexed_error_applies_nothing(sandbox, track):
    sandbox.configure(fault_unindexed_error=1.0)
    try:
        answer = track(sandbox, BODY).json()
    finally:
        sandbox.configure(fault_unindexed_error=0.0)
    assert answer["errors"]
    assert "index" not in answer["errors"][0]
    assert sandbox.profiles() == []
