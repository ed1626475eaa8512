"""The fail point: the first N requests are handled, every later one is a 500 until healed."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest
from braze_sandbox.testing import SandboxError, SandboxProcess


def _body(user: str) -> dict[str, list[dict[str, object]]]:
    return {"attributes": [{"external_id": user, "x": 1}]}


@pytest.fixture
def sandbox(sandbox):
    """The module's sandbox, healed after each test (settings outlive a reset)."""
    yield sandbox
    sandbox.configure(fail_after_requests=None)


def test_first_n_requests_are_handled_then_500_with_json_and_nothing_applied(track):
    with SandboxProcess(fail_after_requests=2) as sandbox:
        statuses = [track(sandbox, _body(f"u{i}")).status_code for i in range(3)]
        failed = track(sandbox, _body("late"))

        assert statuses == [201, 201, 500]
        assert failed.status_code == 500
        assert failed.headers["Content-Type"].startswith("application/json")
        assert failed.json() == {"message": "Internal Server Error"}
        assert sorted(p["external_id"] for p in sandbox.profiles()) == ["u0", "u1"]
        assert sandbox.stats()["injected"] == {"failpoint": 2}


def test_fail_point_keeps_failing_until_the_setting_changes(sandbox, track):
    sandbox.configure(fail_after_requests=1)
    statuses = [track(sandbox, _body(f"u{i}")).status_code for i in range(6)]
    assert statuses == [201, 500, 500, 500, 500, 500]


@pytest.mark.parametrize("off", [0, None])
def test_zero_or_none_heals(sandbox, track, off):
    sandbox.configure(fail_after_requests=1)
    track(sandbox, _body("first"))
    assert track(sandbox, _body("refused")).status_code == 500

    sandbox.configure(fail_after_requests=off)

    assert [track(sandbox, _body(f"u{i}")).status_code for i in range(3)] == [201] * 3
    assert sandbox.profile("refused") is None
    assert sandbox.profile("u2") is not None


def test_count_starts_when_the_setting_is_set_not_at_start(sandbox, track):
    for i in range(3):
        track(sandbox, _body(f"before{i}"))
    sandbox.configure(fail_after_requests=2)
    assert [track(sandbox, _body(f"u{i}")).status_code for i in range(3)] == [201, 201, 500]


def test_setting_the_same_count_again_restarts_it(sandbox, track):
    sandbox.configure(fail_after_requests=1)
    track(sandbox, _body("a"))
    assert track(sandbox, _body("b")).status_code == 500

    sandbox.configure(fail_after_requests=1)

    assert [track(sandbox, _body(f"u{i}")).status_code for i in range(2)] == [201, 500]


def test_every_request_counts_and_the_fail_point_comes_before_auth(sandbox, track):
    sandbox.configure(fail_after_requests=1)
    assert track(sandbox, _body("u"), key="not-a-key").status_code == 401
    # Past the count Braze is down: even a bad key gets the 500, not a 401.
    assert track(sandbox, _body("u"), key="not-a-key").status_code == 500
    assert track(sandbox, _body("u")).status_code == 500


def test_failpoint_remaining_in_stats_counts_down_to_zero(sandbox, track):
    assert sandbox.stats()["failpoint_remaining"] is None
    sandbox.configure(fail_after_requests=2)
    remaining = [sandbox.stats()["failpoint_remaining"]]
    for i in range(3):
        track(sandbox, _body(f"u{i}"))
        remaining.append(sandbox.stats()["failpoint_remaining"])
    assert remaining == [2, 1, 0, 0]
    sandbox.configure(fail_after_requests=0)
    assert sandbox.stats()["failpoint_remaining"] is None


def test_reset_restarts_the_count_and_keeps_the_setting(sandbox, track):
    sandbox.configure(fail_after_requests=1)
    track(sandbox, _body("a"))
    assert track(sandbox, _body("b")).status_code == 500

    sandbox.reset()

    assert sandbox.config()["fail_after_requests"] == 1
    assert sandbox.stats()["failpoint_remaining"] == 1
    assert [track(sandbox, _body(f"u{i}")).status_code for i in range(2)] == [201, 500]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_fail_after_requests_must_be_a_count(sandbox, bad):
    with pytest.raises(SandboxError, match="400"):
        sandbox.configure(fail_after_requests=bad)
    assert sandbox.config()["fail_after_requests"] is None


def test_negative_fail_after_requests_on_the_command_line_is_one_error_line():
    result = subprocess.run(
        [sys.executable, "-m", "braze_sandbox", "--fail-after-requests", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--fail-after-requests must be 0 (off) or a positive count" in result.stderr
    assert "Traceback" not in result.stderr


def test_requests_log_has_arrival_and_answer_times_in_order(sandbox, track):
    sent_at = time.time()
    for i in range(3):
        track(sandbox, _body(f"u{i}"))
    back_at = time.time()

    log = sandbox.requests_log()

    assert len(log) == 3
    for entry in log:
        assert sent_at <= entry["received_at"] <= entry["answered_at"] <= back_at, entry
        assert entry["time"] == entry["received_at"]
    # One request after another: each was answered before the next arrived.
    for earlier, later in itertools.pairwise(log):
        assert earlier["answered_at"] <= later["received_at"], (earlier, later)
