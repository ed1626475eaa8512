"""target-braze against the Braze sandbox over real HTTP: what lands, and when STATE moves."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import (
    Run,
    customers,
    error_lines,
    read_jsonl,
    record,
    run_target,
    schema_message,
    send,
    start_target,
    state,
    target_config,
)


def stream_of(n: int, state_every: int = 0) -> list[dict]:
    messages: list[dict] = [schema_message()]
    for i, message in enumerate(customers(n)):
        messages.append(message)
        if state_every and (i + 1) % state_every == 0:
            messages.append(state(i))
    messages.append(state("end"))
    return messages


def profiles_by_id(braze) -> dict[str, dict]:
    return {p["external_id"]: p for p in braze.profiles() if p.get("external_id")}


def test_full_sync_lands_every_profile_and_emits_the_final_state(braze, tmp_path):
    run = run_target(target_config(braze, tmp_path), stream_of(300, state_every=100), tmp_path)
    assert run.returncode == 0, run.stderr
    profiles = profiles_by_id(braze)
    assert len(profiles) == 300
    assert profiles["c7"]["custom_attributes"] == {
        "peak_churn_probability": 0.007,
        "peak_segment": "loyal",
    }
    assert run.states[-1] == state("end")["value"]
    # Latest releasable state only: intermediate states may be collapsed, never reordered.
    emitted = [s["bookmarks"]["customer_attributes"]["replication_key_value"] for s in run.states]
    sent = [99, 199, 299, "end"]
    assert [v for v in sent if v in emitted] == emitted
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["outcome"] == "success"
    assert report["records_accepted"] == 300
    assert report["requests"] == 4  # 75 objects per request
    assert report["data_points"] == 600
    assert braze.stats()["bulk_requests"] == 4  # X-Braze-Bulk: true on every request


def test_bulk_header_can_be_switched_off(braze, tmp_path):
    run = run_target(target_config(braze, tmp_path, bulk_header=False), stream_of(10), tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.stats()["requests"] == 1
    assert braze.stats()["bulk_requests"] == 0


def _readline_within(process: subprocess.Popen, seconds: float) -> str | None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    return process.stdout.readline() if ready else None


def test_state_is_withheld_until_braze_confirms_and_released_mid_stream(braze, tmp_path):
    braze.configure(latency_ms=[1500, 1500])
    config = target_config(braze, tmp_path, flush_interval_seconds=0)
    process = start_target(config, tmp_path)
    send(process, [schema_message(), *customers(3), state("after-3")])
    # Braze holds the request for 1.5 s: no STATE may appear meanwhile.
    assert _readline_within(process, 1.0) is None
    line = _readline_within(process, 10.0)
    assert line is not None
    assert json.loads(line) == state("after-3")["value"]
    # Released before the end of input, and only once Braze holds the profiles.
    assert set(profiles_by_id(braze)) == {"c0", "c1", "c2"}
    process.stdin.close()
    assert process.wait(30) == 0


def test_state_is_never_emitted_when_braze_keeps_failing(braze, tmp_path):
    braze.configure(fault_5xx=1.0)
    config = target_config(braze, tmp_path, max_retries=2)
    run = run_target(config, [schema_message(), *customers(10), state("after-10")], tmp_path)
    assert run.returncode == 1
    assert run.states == []
    (line,) = error_lines(run.stderr)
    assert "gave up on a /users/track request after 3 attempts" in line
    assert "Traceback" not in run.stderr
    assert json.loads((tmp_path / "report.json").read_text())["outcome"] == "failed"


def test_state_confirmed_before_a_failure_is_kept_and_nothing_after_it(braze, tmp_path):
    braze.configure(errors={"c7": "BLACKLISTED_EXTERNAL_USER_ID"})
    # max_rejected_ratio 0 (the default): any rejection fails the run.
    config = target_config(braze, tmp_path, flush_interval_seconds=0)
    process = start_target(config, tmp_path, stderr=subprocess.PIPE)
    send(process, [schema_message(), *customers(5), state("after-5")])
    first = _readline_within(process, 10.0)
    assert first is not None
    assert json.loads(first) == state("after-5")["value"]
    rest = "".join(json.dumps(m) + "\n" for m in [*customers(5, start=5), state("after-10")])
    out, err = process.communicate(input=rest, timeout=30)
    assert process.returncode == 1
    assert out.strip() == ""  # no STATE past the rejected record
    (line,) = error_lines(err)
    assert "above max_rejected_ratio 0.0%" in line


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("wrong-key-5555", "401: the api_key is missing or unknown"),
        ("no-permission-key", "403 to /users/track: the api_key lacks the users.track permission"),
    ],
)
def test_auth_failures_stop_at_once_naming_the_cause_not_the_key(braze, tmp_path, key, expected):
    config = target_config(braze, tmp_path, api_key=key)
    run = run_target(config, [schema_message(), *customers(5), state("s")], tmp_path)
    assert run.returncode == 1
    assert run.states == []
    (line,) = error_lines(run.stderr)
    assert expected in line
    assert key not in run.stderr
    assert braze.stats()["requests"] == 1  # no retry


@pytest.mark.parametrize(
    ("retry_after_style", "reset_style"),
    [("none", "epoch"), ("none", "seconds"), ("x-ratelimit", "epoch"), ("retry-after", "seconds")],
)
def test_429_storms_are_retried_with_each_header_variant(
    braze, tmp_path, retry_after_style, reset_style
):
    # A 1 s window on both sides: each 429 holds the senders until its reset, which Braze's
    # 3 s window would make a 20 s test of waiting; the headers and the retries are the same.
    braze.configure(
        fault_429=0.4,
        seed=7,
        retry_after_style=retry_after_style,
        reset_style=reset_style,
        rate_window=1,
    )
    config = target_config(  # giving up: 0.4^21, negligible
        braze, tmp_path, max_retries=20, rate_limit_window_seconds=1
    )
    run = run_target(config, stream_of(300), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(profiles_by_id(braze)) == 300
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rate_limited"] == braze.stats()["injected"]["429"] > 0
    assert report["retries"] >= report["rate_limited"]


def test_5xx_dropped_connections_and_lost_responses_lose_nothing(braze, tmp_path):
    braze.configure(fault_5xx=0.2, fault_drop=0.15, fault_drop_after_apply=0.1, seed=3)
    # 60 requests, each failing 45% of the time: 20 retries make giving up (0.45^21) negligible.
    config = target_config(braze, tmp_path, max_objects_per_request=10, max_retries=20)
    run = run_target(config, stream_of(600, 150), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(profiles_by_id(braze)) == 600
    injected = braze.stats()["injected"]
    assert injected.get("5xx", 0) > 0
    assert injected.get("drop", 0) > 0
    assert run.states[-1] == state("end")["value"]


def test_timeouts_are_retried(braze, tmp_path):
    braze.configure(latency_ms=[0, 1500], seed=5)
    config = target_config(braze, tmp_path, request_timeout_seconds=1)
    run = run_target(config, stream_of(150), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(profiles_by_id(braze)) == 150
    assert json.loads((tmp_path / "report.json").read_text())["connection_errors"] > 0
    # Requests the target gave up on are still sleeping in the sandbox: let them land
    # before the next test resets it.
    time.sleep(1.6)


def test_indexed_errors_are_written_to_rejects_with_brazes_reason(braze, tmp_path):
    braze.configure(errors={"c3": "BLACKLISTED_EXTERNAL_USER_ID"})
    config = target_config(braze, tmp_path, max_rejected_ratio=0.1)
    run = run_target(config, stream_of(20), tmp_path)
    assert run.returncode == 0, run.stderr
    (rejected,) = read_jsonl(tmp_path / "rejects.jsonl")
    assert rejected["identifier"] == "c3"
    assert rejected["error_type"] == "BLACKLISTED_EXTERNAL_USER_ID"
    assert "blocklisted" in rejected["reason"]
    assert rejected["record"]["customer_id"] == "c3"
    assert set(profiles_by_id(braze)) == {f"c{i}" for i in range(20)} - {"c3"}
    assert braze.stats()["errors_by_type"]["BLACKLISTED_EXTERNAL_USER_ID"] == 1  # not retried
    assert "Rejected records by reason: BLACKLISTED_EXTERNAL_USER_ID: 1 (e.g. c3)" in run.stderr
    assert run.states[-1] == state("end")["value"]
    assert json.loads((tmp_path / "report.json").read_text())["outcome"] == "partial_success"


def test_rejected_ratio_above_the_limit_fails_the_run_and_holds_state(braze, tmp_path):
    braze.configure(errors={"c1": "EMAIL_BAD_FORMAT", "c2": "EMAIL_BAD_FORMAT"})
    config = target_config(braze, tmp_path, max_rejected_ratio=0.05)
    run = run_target(config, stream_of(20), tmp_path)
    assert run.returncode == 1
    (line,) = error_lines(run.stderr)
    assert "2 of 20 records (10.0%) were rejected, above max_rejected_ratio 5.0%" in line
    assert run.states == []
    assert len(read_jsonl(tmp_path / "rejects.jsonl")) == 2


def test_unindexed_errors_resend_attributes_and_lose_nothing(braze, tmp_path):
    braze.configure(fault_unindexed_error=0.5, seed=11)
    config = target_config(braze, tmp_path, max_rejected_ratio=1.0)
    run = run_target(config, stream_of(600), tmp_path)
    assert run.returncode == 0, run.stderr
    injected = braze.stats()["injected"]["unindexed_error"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert injected > 0
    assert report["requests"] > 8  # answers without an index were resent
    delivered = set(profiles_by_id(braze))
    rejected = {r["identifier"] for r in read_jsonl(tmp_path / "rejects.jsonl")}
    # Every customer is either in Braze or in the rejects output, never both, never neither.
    assert delivered | rejected == {f"c{i}" for i in range(600)}
    assert not delivered & rejected
    for rejection in read_jsonl(tmp_path / "rejects.jsonl"):
        assert "without an index after 2 resends" in rejection["reason"]


def test_unindexed_errors_on_events_settle_as_delivery_unknown_never_resent(braze, tmp_path):
    braze.configure(fault_unindexed_error=1.0)
    props = {
        "customer_id": {"type": "string"},
        "event": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
    }
    messages = [schema_message("events", props, bookmark=None)] + [
        {
            "type": "RECORD",
            "stream": "events",
            "record": {"customer_id": f"u{i}", "event": "login", "at": "2026-11-28T06:00:00Z"},
        }
        for i in range(4)
    ]
    config = target_config(
        braze,
        tmp_path,
        object_type="events",
        event_name_property="event",
        time_property="at",
        max_rejected_ratio=1.0,
    )
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    assert {r["identifier"] for r in rejects} == {"u0", "u1", "u2", "u3"}
    assert all(r["error_type"] == "DELIVERY_UNKNOWN" for r in rejects)
    assert rejects[0]["reason"].startswith("delivery unknown: Braze reported")
    assert "not resent" in rejects[0]["reason"]
    assert braze.stats()["requests"] == 1
    # The ledger remembers them: Braze healed, the same input again sends none of them.
    braze.configure(fault_unindexed_error=0.0)
    again = run_target(config, messages, tmp_path)
    assert again.returncode == 0, again.stderr
    assert braze.stats()["requests"] == 1
    assert braze.stats()["events_processed"] == 0


def test_max_input_length_exceeded_splits_and_resends(braze, tmp_path):
    braze.configure(max_objects=40)
    config = target_config(braze, tmp_path, max_objects_per_request=75)
    run = run_target(config, stream_of(150), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(profiles_by_id(braze)) == 150
    assert braze.stats()["by_status"]["400"] == 2
    assert json.loads((tmp_path / "report.json").read_text())["splits"] == 2


def test_413_splits_and_resends(braze, tmp_path):
    braze.configure(max_body_bytes=2500)
    run = run_target(target_config(braze, tmp_path), stream_of(75), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(profiles_by_id(braze)) == 75
    assert braze.stats()["by_status"]["413"] >= 1
    assert braze.stats()["max_body_bytes_seen"] <= 2500 or braze.stats()["by_status"]["413"]


def test_requests_respect_object_and_byte_limits(braze, tmp_path):
    config = target_config(braze, tmp_path, max_objects_per_request=50, max_request_bytes=3000)
    run = run_target(config, stream_of(200), tmp_path)
    assert run.returncode == 0, run.stderr
    stats = braze.stats()
    assert stats["max_objects_in_request"] <= 50
    assert stats["max_body_bytes_seen"] <= 3000
    assert stats["by_status"] == {"201": stats["requests"]}


def test_one_users_updates_are_merged_and_never_in_flight_twice(braze, tmp_path):
    braze.configure(latency_ms=[5, 40], seed=2)
    messages = [schema_message()]
    for round_ in range(6):
        for i in range(100):
            messages.append(record(f"c{i}", peak_segment=f"round-{round_}"))
    messages.append(state("end"))
    run = run_target(target_config(braze, tmp_path, max_concurrent_requests=8), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    profiles = profiles_by_id(braze)
    assert {p["custom_attributes"]["peak_segment"] for p in profiles.values()} == {"round-5"}
    assert braze.stats()["concurrent_user_conflicts"] == 0


def test_client_rate_limit_keeps_under_the_window(braze, tmp_path):
    braze.configure(rate_limit=15, rate_window=1.0)
    config = target_config(
        braze,
        tmp_path,
        max_requests_per_window=15,
        rate_limit_window_seconds=1,
        # The limiter's contract: no overrun while arrivals lag sends by less than the
        # margin. On a loaded test machine the stand-in's own event loop can lag by more
        # than the 0.1 s default (a real Braze's delay varies far less): sized for that.
        rate_limit_margin_seconds=0.5,
        max_objects_per_request=5,
    )
    run = run_target(config, stream_of(200), tmp_path)  # 40 requests: at least 2 windows
    assert run.returncode == 0, run.stderr
    stats = braze.stats()
    assert stats["rate_limited"] == 0
    assert stats["max_arrivals_in_window"] <= 15
    assert len(profiles_by_id(braze)) == 200


def test_invalid_records_go_to_rejects_never_to_braze(braze, tmp_path):
    messages = [
        schema_message(),
        record("ok-1", peak_segment="fine"),
        record("long", peak_segment="x" * 300),
        {"type": "RECORD", "stream": "customer_attributes", "record": {"peak_segment": "no id"}},
        record("bad-type", peak_churn_probability="not a number"),
        state("end"),
    ]
    run = run_target(target_config(braze, tmp_path, max_rejected_ratio=1.0), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    reasons = {r["identifier"]: r["reason"] for r in read_jsonl(tmp_path / "rejects.jsonl")}
    assert "300 characters long" in reasons["long"]
    assert "'customer_id' is empty" in reasons[None]
    assert "does not match the stream's schema" in reasons["bad-type"]
    assert set(profiles_by_id(braze)) == {"ok-1"}
    assert run.states == [state("end")["value"]]


def test_dry_run_writes_request_bodies_sends_nothing_and_emits_no_state(braze, tmp_path):
    dry = tmp_path / "dry.jsonl"
    config = target_config(braze, tmp_path, dry_run=True, dry_run_path=str(dry))
    run = run_target(config, stream_of(100, 50), tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.states == []
    bodies = read_jsonl(dry)
    assert [len(b["attributes"]) for b in bodies] == [75, 25]
    assert bodies[0]["attributes"][0] == {
        "external_id": "c0",
        "peak_churn_probability": 0,
        "peak_segment": "loyal",
    }
    assert braze.stats()["requests"] == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dry_run"] is True
    assert report["data_points"] == 200


def test_dry_run_needs_no_api_key(tmp_path):
    config = {
        "dry_run": True,
        "dry_run_path": str(tmp_path / "dry.jsonl"),
        "rest_endpoint": "US-03",
    }
    run = run_target(config, stream_of(3), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(read_jsonl(tmp_path / "dry.jsonl")) == 1


def test_api_key_appears_nowhere_even_at_debug_level(braze, tmp_path):
    braze.configure(fault_429=0.3, fault_5xx=0.1, errors={"c4": "EMAIL_BAD_FORMAT"}, seed=1)
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5, max_retries=10)
    run: Run = run_target(config, stream_of(200, 50), tmp_path, env={"LOGLEVEL": "DEBUG"})
    assert run.returncode == 0, run.stderr
    assert "DEBUG" in run.stderr  # the debug level really was on
    assert braze.api_key not in run.stdout + run.stderr
    written = [path for path in tmp_path.iterdir() if path.name != "config.json"]
    assert any(path.name == "ledger.sqlite" for path in written)  # the ledger is searched too
    for path in written:
        assert braze.api_key.encode() not in path.read_bytes(), path.name


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"rest_endpoint": "http://rest.iad-01.braze.com"}, "plain http"),
        ({"rest_endpoint": "XX-99"}, "neither a Braze instance code"),
        ({"api_key": None}, "no Braze API key: export BRAZE_API_KEY"),
        ({"identifier_type": "user_alias"}, "needs alias_label"),
        ({"identifier_property": "id"}, "has no property 'id'"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(braze, tmp_path, overrides, expected):
    config = {k: v for k, v in {**target_config(braze, tmp_path), **overrides}.items() if v}
    run = run_target(config, stream_of(3), tmp_path)
    assert run.returncode == 1
    (line,) = error_lines(run.stderr)
    assert expected in line
    assert "Traceback" not in run.stderr


def test_the_api_key_can_come_from_the_variable_api_key_env_names(braze, tmp_path):
    config = {**target_config(braze, tmp_path), "api_key_env": "MY_BRAZE_KEY"}
    key = config.pop("api_key")
    run = run_target(config, stream_of(3), tmp_path, env={"MY_BRAZE_KEY": key})
    assert run.returncode == 0, run.stderr
    assert len(profiles_by_id(braze)) == 3
    assert key not in run.stderr


def test_instance_codes_resolve_to_brazes_rest_urls():
    from target_braze.client import resolve_rest_endpoint

    assert resolve_rest_endpoint("US-03") == "https://rest.iad-03.braze.com"
    assert resolve_rest_endpoint("eu-01") == "https://rest.fra-01.braze.eu"
    assert resolve_rest_endpoint("http://127.0.0.1:9/") == "http://127.0.0.1:9"


def test_sigterm_drains_and_checkpoints_what_braze_confirmed(braze, tmp_path):
    process = start_target(target_config(braze, tmp_path, flush_interval_seconds=600), tmp_path)
    # 75 records fill one request, sent at once: its STATE shows the target is running.
    send(process, [schema_message(), *customers(75), state("after-75")])
    first = _readline_within(process, 20.0)
    assert first is not None
    assert json.loads(first) == state("after-75")["value"]
    # 10 more wait in a partly filled request (flush interval 600 s) when SIGTERM comes.
    send(process, [*customers(10, start=75), state("after-85")])
    time.sleep(0.5)
    process.terminate()
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 128 + 15  # interrupted is not success
    assert json.loads(out.splitlines()[-1]) == state("after-85")["value"]
    assert len(profiles_by_id(braze)) == 85


def test_long_runs_log_progress_lines_and_a_final_summary(braze, tmp_path):
    braze.configure(latency_ms=[20, 20])
    config = target_config(
        braze, tmp_path, progress_interval_seconds="0.2", max_concurrent_requests=1
    )
    run = run_target(config, stream_of(1500), tmp_path)  # 20 requests of 20 ms: 0.4 s+
    assert run.returncode == 0, run.stderr
    progress = [line for line in run.stderr.splitlines() if "Progress: " in line]
    assert progress, run.stderr
    assert "records in" in progress[0]
    assert "429s" in progress[0]
    assert "records/s" in progress[0]
    assert re.search(r"\d+ in flight \(peak 1\)", progress[-1]), progress[-1]
    assert re.search(
        r"Run \w+ summary \(success\): 1500 records in, 1500 objects sent in 20 requests",
        run.stderr,
    ), run.stderr
    # 20 ms at up to 1,000 requests/s calls for ~20 in flight: the one allowed held it back.
    ceiling = [
        line for line in run.stderr.splitlines() if "reached max_concurrent_requests" in line
    ]
    assert len(ceiling) == 1, run.stderr
    assert "raise max_concurrent_requests" in ceiling[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["in_flight_peak"] == 1
    assert report["in_flight_ceiling_waits"] > 0


def test_without_a_ceiling_in_the_way_the_summary_says_nothing_of_it(braze, tmp_path):
    run = run_target(target_config(braze, tmp_path), stream_of(300), tmp_path)
    assert run.returncode == 0, run.stderr
    assert "max_concurrent_requests" not in run.stderr


def test_legacy_per_array_limits_fill_each_array_and_default_counts_them_together(braze, tmp_path):
    props = {
        "customer_id": {"type": "string"},
        "event": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
    }
    messages = [schema_message(), schema_message("events", props, bookmark=None)]
    for i in range(75):
        messages.append(record(f"c{i}", peak_segment="loyal"))
        messages.append(
            {
                "type": "RECORD",
                "stream": "events",
                "record": {"customer_id": f"e{i}", "event": "login", "at": "2026-11-28T06:00:00Z"},
            }
        )
    mapping = {
        "events": {"object_type": "events", "event_name_property": "event", "time_property": "at"}
    }
    braze.configure(legacy_per_array_limits=True)
    legacy = target_config(braze, tmp_path, legacy_per_array_limits=True, stream_mappings=mapping)
    run = run_target(legacy, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.stats()["requests"] == 1  # 75 attributes + 75 events in one request
    assert braze.stats()["max_objects_in_request"] == 150

    braze.reset()  # a new, empty workspace: a ledger of its own
    braze.configure(legacy_per_array_limits=False)
    config = target_config(
        braze, tmp_path, stream_mappings=mapping, ledger_url=f"sqlite:///{tmp_path}/ledger2.sqlite"
    )
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.stats()["requests"] == 2  # 150 objects, at most 75 per request combined
    assert braze.stats()["max_objects_in_request"] == 75
    assert len(braze.events()) == 75


def test_about_markdown_renders_with_no_indented_heading():
    about = subprocess.run(
        ["target-braze", "--about", "--format=markdown"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    ).stdout
    assert about.startswith("# `target-braze`\n")
    assert not [
        line for line in about.split("## Settings")[0].splitlines() if line.startswith("    ")
    ]
    assert "| api_key_env | False | BRAZE_API_KEY |" in about


def test_a_second_signal_during_the_drain_ends_the_run_cleanly(braze, tmp_path):
    braze.configure(latency_ms=[3000, 3000])  # the drain has to wait for Braze
    process = start_target(
        target_config(braze, tmp_path, flush_interval_seconds=600), tmp_path, stderr=subprocess.PIPE
    )
    send(process, [schema_message(), *customers(75), state("after-75")])
    send(process, [*customers(10, start=75), state("after-85")])
    assert process.stderr is not None
    wait_until(lambda: braze.stats()["requests"] >= 1)  # the first request is at Braze
    process.send_signal(signal.SIGTERM)
    lines = []
    for line in process.stderr:  # decide by progress: the drain has begun
        lines.append(line)
        if "Received signal 15" in line:
            break
    process.send_signal(signal.SIGINT)
    out, rest = process.communicate(timeout=60)
    stderr = "".join(lines) + rest
    assert process.returncode == 128 + 2, stderr
    assert "Traceback" not in stderr
    assert "Received signal 2 while draining: stopping now" in stderr
    held = profiles_by_id(braze)
    for emitted in (json.loads(line) for line in out.splitlines()):
        count = int(emitted["bookmarks"]["customer_attributes"]["replication_key_value"][6:])
        assert len([f"c{i}" for i in range(count) if f"c{i}" in held]) == count


def wait_until(condition, attempts: int = 600) -> None:
    """Poll `condition` (progress, not time, decides; the bound only stops a hung test)."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the condition never came true")


def test_the_cli_freezes_start_up_objects_and_collects_garbage_less_often():
    # The CLI's garbage-collector tuning (target._tune_garbage_collector) in a process of
    # its own: in this one it would freeze pytest's objects.
    probe = (
        "import gc\n"
        "from target_braze.target import TargetBraze\n"
        "import sys\n"
        "before = gc.get_threshold()\n"
        "try:\n"
        "    TargetBraze.invoke(about=True, about_format='json')\n"
        "finally:\n"
        "    print(before[0], gc.get_threshold()[0], gc.get_freeze_count(), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    before, after, frozen = (int(n) for n in done.stderr.split()[-3:])
    assert (before, after) == (700, 50_000)
    assert frozen > 10_000  # singer-sdk, jsonschema and our modules: never walked again


def event_messages(n: int) -> list[dict]:
    props = {
        "customer_id": {"type": "string"},
        "event": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
    }
    return [schema_message("events", props, bookmark=None)] + [
        {
            "type": "RECORD",
            "stream": "events",
            "record": {"customer_id": f"u{i}", "event": "login", "at": "2026-11-28T06:00:00Z"},
        }
        for i in range(n)
    ]


def test_a_lost_answer_to_events_is_delivery_unknown_and_never_resent(braze, tmp_path):
    braze.configure(fault_drop_after_apply=1.0)  # applied, then the answer is lost
    config = target_config(
        braze,
        tmp_path,
        object_type="events",
        event_name_property="event",
        time_property="at",
        max_rejected_ratio=1.0,
        send_only_changes=False,
        deduplicate_events=False,
    )
    run = run_target(config, event_messages(4), tmp_path)
    assert run.returncode == 0, run.stderr
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    assert {r["identifier"] for r in rejects} == {"u0", "u1", "u2", "u3"}
    assert all(r["error_type"] == "DELIVERY_UNKNOWN" for r in rejects)
    assert rejects[0]["reason"].startswith("delivery unknown: ")
    assert braze.stats()["requests"] == 1  # not resent
    assert len(braze.events()) == 4  # applied once


def test_rest_endpoint_at_a_closed_port_ends_the_run_with_one_line(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {
        "api_key": "closed-port-key-4242",
        "rest_endpoint": f"http://127.0.0.1:{port}",
        "send_only_changes": False,
        "deduplicate_events": False,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    messages = [schema_message(), *customers(3), state("end")]
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "target-braze"), "--config", str(config_path)],
        input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard only: the verdict is the exit and the line
        check=False,
    )
    assert completed.returncode != 0
    errors = error_lines(completed.stderr)
    assert len(errors) == 1, completed.stderr
    assert f"rest_endpoint http://127.0.0.1:{port}: connection refused" in errors[0]
    assert "closed-port-key-4242" not in completed.stderr
    assert completed.stdout == ""  # no STATE: nothing was confirmed


def test_at_300_per_3_s_and_1_s_latency_braze_counts_no_request_over_its_limit(tmp_path):
    with SandboxProcess(rate_limit=300, rate_window=3, latency_ms=(800, 1200)) as sandbox:
        config = target_config(
            sandbox,
            tmp_path,
            max_requests_per_window=300,
            rate_limit_window_seconds=3,
            # No overrun while arrivals lag sends by less than the margin; a loaded test
            # machine's stand-in lags by more than the 0.1 s default (see above).
            rate_limit_margin_seconds=0.5,
            max_objects_per_request=5,  # 900 requests: the window is used three times over
            send_only_changes=False,
            deduplicate_events=False,
        )
        run = run_target(config, stream_of(4500), tmp_path, timeout=180)
        assert run.returncode == 0, run.stderr
        stats = sandbox.stats()
        assert stats["rate_limited"] == 0
        assert stats["max_arrivals_in_window"] <= 300
        assert stats["requests"] == 900
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["in_flight_peak"] > 16  # the latency called for more than the old 16
        assert report["in_flight_peak"] <= report["max_concurrent_requests"]
