"""Lost answers: events and purchases are never resent; attributes are, alone.

Braze may apply a request whose answer never arrives (a connection dropped after the body
was sent, a 502 from a load balancer). Braze never deduplicates events, so the target
settles them as *delivery unknown*: named in the rejects output, counted, remembered by
the ledger, never sent again until a person releases them. Everything is asserted on what
the sandbox holds and on the target's outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import (
    customers,
    read_jsonl,
    run_target,
    schema_message,
    state,
    target_config,
)
from test_ledger import EVENTS_MAPPING, event_messages

EVENTS = [
    *event_messages("keyed_events", True, range(30)),
    *event_messages("plain_events", False, range(30)),
]


def report(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "report.json").read_text())


def unknown_rejects(tmp_path: Path) -> list[dict[str, Any]]:
    return [
        r for r in read_jsonl(tmp_path / "rejects.jsonl") if r["error_type"] == "DELIVERY_UNKNOWN"
    ]


def event_ids(braze: SandboxProcess) -> Counter[str]:
    return Counter(e["properties"]["event_id"] for e in braze.events())


def events_config(braze: SandboxProcess, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"stream_mappings": EVENTS_MAPPING, **overrides}
    return target_config(braze, tmp_path, identifier_property="customer_id", **settings)


def test_events_whose_answer_is_lost_are_not_resent_and_are_named_delivery_unknown(braze, tmp_path):
    braze.configure(fault_drop_after_apply=1.0)

    run = run_target(events_config(braze, tmp_path), EVENTS, tmp_path)

    assert run.returncode == 0, run.stderr
    assert event_ids(braze) == Counter(
        {f"{s}-{i}": 1 for s in ("keyed_events", "plain_events") for i in range(30)}
    )
    rejects = unknown_rejects(tmp_path)
    assert sorted(r["record"]["event_id"] for r in rejects) == sorted(event_ids(braze))
    assert all(r["reason"].startswith("delivery unknown: ") for r in rejects)
    assert all("target-braze-ledger release" in r["reason"] for r in rejects)
    counts = report(tmp_path)
    assert (counts["unknown"], counts["rejected"]) == (60, 0)
    assert "60 delivery unknown" in run.stderr
    assert "60 events/purchases are of unknown delivery" in run.stderr
    assert "target-braze-ledger unknown" in run.stderr
    # They settled: STATE moved past them (the ledger remembers them).
    assert run.states[-1] == state("end-30", "plain_events")["value"]


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


def test_a_rerun_and_a_re_emit_do_not_send_events_of_unknown_delivery(braze, tmp_path, ledger_url):
    config = events_config(braze, tmp_path, ledger_url=ledger_url)
    braze.configure(fault_5xx_after_apply=1.0)
    assert run_target(config, EVENTS, tmp_path).returncode == 0
    braze.configure(fault_5xx_after_apply=0.0)  # Braze heals

    again = run_target(config, EVENTS, tmp_path)

    assert again.returncode == 0, again.stderr
    assert set(event_ids(braze).values()) == {1}
    assert len(event_ids(braze)) == 60
    latest = [r for r in unknown_rejects(tmp_path) if "an earlier run" in r["reason"]]
    assert len(latest) == 60
    assert report(tmp_path)["unknown"] == 60


def test_a_rejected_event_is_forgotten_so_a_fixed_re_emit_sends_it(braze, tmp_path):
    braze.configure(errors={"u3": "BLACKLISTED_EXTERNAL_USER_ID"})
    config = events_config(braze, tmp_path, max_rejected_ratio=1.0)
    first = run_target(config, EVENTS, tmp_path)
    assert first.returncode == 0, first.stderr
    assert report(tmp_path)["rejected"] > 0
    braze.configure(errors={})  # fixed in Braze

    again = run_target(config, EVENTS, tmp_path)

    assert again.returncode == 0, again.stderr
    assert event_ids(braze) == Counter(
        {f"{s}-{i}": 1 for s in ("keyed_events", "plain_events") for i in range(30)}
    )
    assert unknown_rejects(tmp_path) == []


def test_unknown_events_do_not_count_toward_max_rejected_ratio(braze, tmp_path):
    braze.configure(fault_drop_after_apply=1.0)

    run = run_target(events_config(braze, tmp_path, max_rejected_ratio=0.0), EVENTS, tmp_path)

    assert run.returncode == 0, run.stderr
    assert report(tmp_path)["outcome"] == "partial_success"


def test_a_request_with_attributes_and_events_resends_its_attributes_alone(braze, tmp_path):
    braze.configure(fault_5xx_after_apply=0.5, seed=11)
    # Each user's attributes and one event of theirs, interleaved: requests carry both.
    messages = [schema_message(), EVENTS[0]]
    for attributes, event in zip(customers(30), EVENTS[1:31], strict=True):
        user = attributes["record"]["customer_id"]
        messages += [attributes, {**event, "record": {**event["record"], "customer_id": user}}]
    messages.append(state("end"))
    config = events_config(braze, tmp_path, max_retries=20, max_objects_per_request=4)

    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert braze.stats()["injected"].get("5xx_after_apply", 0) > 0
    for i in range(30):  # every attribute arrived, resent alone where needed
        profile = braze.profile(f"c{i}")
        assert profile is not None
        assert profile["custom_attributes"]["peak_segment"] == "loyal"
    ids = event_ids(braze)
    assert len(ids) == 30
    assert set(ids.values()) == {1}  # not one event twice
    assert report(tmp_path)["unknown"] > 0


def test_without_event_deduplication_events_are_still_never_resent(braze, tmp_path):
    braze.configure(fault_drop_after_apply=1.0)
    config = events_config(braze, tmp_path, deduplicate_events=False, send_only_changes=False)

    run = run_target(config, EVENTS, tmp_path)

    assert run.returncode == 0, run.stderr
    assert set(event_ids(braze).values()) == {1}
    assert len(unknown_rejects(tmp_path)) == 60
    assert all("re-emit" in r["reason"] for r in unknown_rejects(tmp_path))
    assert report(tmp_path)["unknown"] == 60


def test_events_of_a_run_that_failed_before_braze_applied_them_are_sent_by_the_rerun(
    braze, tmp_path
):
    # Certainly not applied: 429s without a reset to wait for (no rate-limit headers), so
    # max_retries runs out; a 429 that names its reset is waited for, not counted.
    braze.configure(fault_429=1.0, rate_limit=0)
    config = events_config(braze, tmp_path, max_retries=1)
    failed = run_target(config, EVENTS, tmp_path)
    assert failed.returncode != 0
    assert "gave up on a /users/track request" in failed.stderr
    braze.configure(fault_429=0.0)

    rerun = run_target(config, EVENTS, tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert len(event_ids(braze)) == 60
    assert set(event_ids(braze).values()) == {1}
    assert unknown_rejects(tmp_path) == []


# --- end to end: a flaky Braze, a rerun, a re-emit, then a release ---------------------------

PURCHASES_MAPPING = {
    "orders": {
        "object_type": "purchases",
        "product_id_property": "sku",
        "price_property": "price",
        "currency": "USD",
        "time_property": "at",
    }
}


def purchase_messages(ids: range) -> list[dict[str, Any]]:
    props = {
        "event_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "sku": {"type": "string"},
        "price": {"type": "number"},
        "at": {"type": "string", "format": "date-time"},
    }
    schema = schema_message("orders", props, key="event_id")
    schema.pop("bookmark_properties", None)
    records = [
        {
            "type": "RECORD",
            "stream": "orders",
            "record": {
                "event_id": f"orders-{i}",
                "customer_id": f"u{i % 11}",
                "sku": f"sku-{i % 5}",
                "price": 10 + i % 7,
                "at": f"2026-11-28T07:{i % 60:02d}:00Z",
            },
        }
        for i in ids
    ]
    return [schema, *records, state(f"end-{ids.stop}", "orders")]


def delivered(braze: SandboxProcess) -> Counter[str]:
    """How many copies of each event and purchase the sandbox holds, by event_id."""
    recorded = [*braze.events(), *braze.purchases()]
    return Counter(item["properties"]["event_id"] for item in recorded)


def ledger_command(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "target_braze.ledger_cli", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def listed_unknown(config_path: Path) -> dict[str, str]:
    """`target-braze-ledger unknown` as a person reads it: event id -> the event's event_id."""
    done = ledger_command(config_path, "unknown")
    assert done.returncode == 0, done.stderr
    listed = {}
    for line in done.stdout.splitlines()[1:]:
        ledger_id, body = line.split()[0], json.loads(line[line.index("{") :])
        listed[ledger_id] = body["properties"]["event_id"]
    return listed


def test_lost_answers_and_502s_duplicate_nothing_and_a_release_delivers_each_once(braze, tmp_path):
    messages = [
        *event_messages("keyed_events", True, range(400)),
        *event_messages("plain_events", False, range(400)),
        *purchase_messages(range(300)),
    ]
    everything = {m["record"]["event_id"] for m in messages if m["type"] == "RECORD"}
    # Applied, then the answer lost (10%) or a 502 in its place (5%); and a few 5xx
    # before the apply (6%), so some events of unknown delivery are really absent.
    braze.configure(
        fault_drop_after_apply=0.10, fault_5xx_after_apply=0.05, fault_5xx=0.06, seed=23
    )
    config = events_config(
        braze,
        tmp_path,
        stream_mappings={**EVENTS_MAPPING, **PURCHASES_MAPPING},
        max_objects_per_request=20,
    )

    first = run_target(config, messages, tmp_path)
    braze.configure(fault_drop_after_apply=0.0, fault_5xx_after_apply=0.0, fault_5xx=0.0)
    rerun = run_target(config, messages, tmp_path)
    re_emit = run_target(config, messages, tmp_path)

    for run in (first, rerun, re_emit):
        assert run.returncode == 0, run.stderr
    injected = braze.stats()["injected"]
    assert injected["drop_after_apply"] > 0
    assert injected["5xx_after_apply"] > 0
    assert injected["5xx"] > 0
    copies = delivered(braze)
    assert max(copies.values()) == 1, "an event or purchase reached Braze twice"
    absent = everything - set(copies)
    assert absent, "the pre-apply 5xx left no event absent: the check below proves nothing"
    named = {r["record"]["event_id"] for r in unknown_rejects(tmp_path)}
    assert absent <= named
    assert report(tmp_path)["unknown"] == len(named)  # the re-emit named each again

    # A person checks Braze and releases exactly those it lacks.
    config_path = tmp_path / "config.json"
    listed = listed_unknown(config_path)
    assert set(listed.values()) == named
    lacking = [ledger_id for ledger_id, event in listed.items() if event in absent]
    released = ledger_command(config_path, "release", *lacking, "--yes")
    assert released.returncode == 0, released.stderr
    assert f"released {len(absent)} events/purchases" in released.stdout

    final = run_target(config, messages, tmp_path)

    assert final.returncode == 0, final.stderr
    assert delivered(braze) == Counter(dict.fromkeys(everything, 1))
    assert set(listed_unknown(config_path).values()) == named - absent
