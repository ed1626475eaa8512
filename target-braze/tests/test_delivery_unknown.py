"""Lost answers: events and purchases are never resent; attributes are, alone.

Braze may apply a request whose answer never arrives (a connection dropped after the body
was sent, a 502 from a load balancer). Braze never deduplicates events, so the target
settles them as *delivery unknown*: named in the rejects output, counted, remembered by
the ledger, never sent again until a person releases them. Everything is asserted on what
the sandbox holds and on the target's outputs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

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
    return target_config(
        braze,
        tmp_path,
        identifier_property="customer_id",
        stream_mappings=EVENTS_MAPPING,
        **overrides,
    )


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


def test_a_rerun_and_a_re_emit_do_not_send_events_of_unknown_delivery(braze, tmp_path):
    config = events_config(braze, tmp_path)
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
    braze.configure(fault_429=1.0)  # certainly not applied
    config = events_config(braze, tmp_path, max_retries=1)
    failed = run_target(config, EVENTS, tmp_path)
    assert failed.returncode != 0
    braze.configure(fault_429=0.0)

    rerun = run_target(config, EVENTS, tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert len(event_ids(braze)) == 60
    assert set(event_ids(braze).values()) == {1}
    assert unknown_rejects(tmp_path) == []
