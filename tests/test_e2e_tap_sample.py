"""`peak-sample model-run`'s summary line through `meltano run`: N values changed, N data
points sent, and customers restamped with identical values cost nothing."""

from __future__ import annotations

import json
import subprocess

import pytest
from pipeline_harness import (
    PEAK_SAMPLE,
    copy_sample_warehouse,
    expected_profiles,
    mismatches,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e


def test_values_changed_by_a_model_run_are_the_data_points_sent(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, warehouse)
    assert pipeline.run().returncode == 0
    points_before = sandbox.stats()["data_points"]

    model_run = [PEAK_SAMPLE, "model-run", "--url", f"sqlite:///{warehouse}", "--seed", "4"]
    done = subprocess.run(
        [*model_run, "--changes", "30", "--rewrite-unchanged", "20"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    summary = json.loads(done.stdout)
    assert summary["customers_changed"] == 30
    assert summary["customers_restamped"] == 20
    assert summary["values_changed"] > 30

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    # The tap sends all 50 rewritten customers; Braze is billed only what really changed.
    assert pipeline.report()["records_in"] == 50
    assert sandbox.stats()["data_points"] - points_before == summary["values_changed"]
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
