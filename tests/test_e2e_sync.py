"""Full and incremental syncs of the sample warehouse through `meltano run`."""

from __future__ import annotations

import pytest
from pipeline_harness import (
    copy_sample_warehouse,
    expected_profiles,
    exported_attributes,
    mismatches,
    model_run,
    newest_row,
    normalise_timestamp,
    read_warehouse,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

SAMPLE_CUSTOMERS = 1200
STALE = "__stale_before_rerun__"


def test_full_sync_puts_every_customer_in_braze_with_exactly_its_attributes(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, warehouse)

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    expected = expected_profiles(warehouse)
    assert len(expected) == SAMPLE_CUSTOMERS
    # Read back the way a Braze user would: /users/export/ids, 50 ids per call.
    exported = exported_attributes(sandbox, sorted(expected))
    problems = mismatches(expected, exported)
    assert not problems, summarise(problems)
    # ... and no other profile was created.
    assert sandbox_attributes(sandbox).keys() == expected.keys()
    report = pipeline.report()
    assert report["outcome"] == "success"
    assert report["records_in"] == SAMPLE_CUSTOMERS
    assert report["rejected"] == 0
    # The stored bookmark is the last row of the warehouse in (updated_at, id) order.
    ts, last_id = pipeline.bookmark()
    assert (normalise_timestamp(ts), last_id) == newest_row(read_warehouse(warehouse))


def test_rerun_without_changes_sends_nothing(start_sandbox, make_pipeline, tmp_path):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, warehouse)
    first = pipeline.run()
    assert first.returncode == 0, first.describe()
    requests_before = sandbox.stats()["requests"]
    bookmark_before = pipeline.bookmark()

    second = pipeline.run()

    assert second.returncode == 0, second.describe()
    assert sandbox.stats()["requests"] == requests_before
    report = pipeline.report()
    assert report["records_in"] == 0
    assert report["requests"] == 0
    assert pipeline.bookmark() == bookmark_before


def test_rerun_after_model_run_sends_exactly_the_changed_customers(
    start_sandbox, make_pipeline, tmp_path
):
    changes = 137
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    # The tap's selection is under test: whole rows of the changed customers, so the ledger
    # (which would send only their changed attributes) is off. tests/test_e2e_ledger.py
    # covers the ledger.
    pipeline = make_pipeline(
        sandbox, warehouse, settings={"TARGET_BRAZE_SEND_ONLY_CHANGES": "false"}
    )
    first = pipeline.run()
    assert first.returncode == 0, first.describe()
    before = read_warehouse(warehouse)
    model_run(warehouse, changes=changes, seed=20261129)
    after = read_warehouse(warehouse)
    changed = {c for c, row in after.items() if row.updated_at != before[c].updated_at}
    assert len(changed) == changes
    # Mark every profile: after the rerun exactly the customers that were sent lose the mark.
    customers = sorted(after)
    for start in range(0, len(customers), 75):
        sandbox.track(
            {
                "attributes": [
                    {"external_id": c, "peak_segment": STALE} for c in customers[start : start + 75]
                ]
            }
        )
    log_before = len(sandbox.requests_log())
    applied_before = sandbox.stats()["objects_applied"]

    second = pipeline.run()

    assert second.returncode == 0, second.describe()
    sent = sum(entry["objects"] for entry in sandbox.requests_log()[log_before:])
    assert sent == changes
    assert sandbox.stats()["objects_applied"] - applied_before == changes
    report = pipeline.report()
    assert report["records_in"] == changes
    assert report["rejected"] == 0
    held = sandbox_attributes(sandbox)
    unmarked = {c for c, attributes in held.items() if attributes.get("peak_segment") != STALE}
    assert unmarked == changed
    expected = {c: row.attributes for c, row in after.items() if c in changed}
    problems = mismatches(expected, {c: held[c] for c in changed})
    assert not problems, summarise(problems)
    ts, last_id = pipeline.bookmark()
    assert (normalise_timestamp(ts), last_id) == newest_row(after)
