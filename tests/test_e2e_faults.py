"""429 bursts, 5xx, dropped connections and slow answers: nothing lost, rate limit kept."""

from __future__ import annotations

import pytest
from pipeline_harness import (
    copy_sample_warehouse,
    expected_profiles,
    mismatches,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

SEED = 4242
# Braze's 3,000 requests per 3 s, scaled down so a 1,200-customer sync meets the limit.
RATE_LIMIT = 20
RATE_WINDOW_SECONDS = 2
OBJECTS_PER_REQUEST = 10


def test_faulty_braze_loses_nothing_and_rate_limit_is_never_exceeded(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox(
        rate_limit=RATE_LIMIT,
        rate_window=RATE_WINDOW_SECONDS,
        fault_429=0.08,
        fault_5xx=0.08,
        fault_drop=0.05,
        fault_drop_after_apply=0.05,
        latency_ms=(5, 400),
        seed=SEED,
    )
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            "TARGET_BRAZE_MAX_REQUESTS_PER_WINDOW": str(RATE_LIMIT),
            "TARGET_BRAZE_RATE_LIMIT_WINDOW_SECONDS": str(RATE_WINDOW_SECONDS),
            "TARGET_BRAZE_MAX_OBJECTS_PER_REQUEST": str(OBJECTS_PER_REQUEST),
            "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": "4",
            # No overrun while arrivals lag sends by less than the margin; a loaded test
            # machine's stand-in can lag by more than the 0.1 s default.
            "TARGET_BRAZE_RATE_LIMIT_MARGIN_SECONDS": "0.5",
            "TARGET_BRAZE_MAX_RETRIES": "10",
        },
    )

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    stats = sandbox.stats()
    # Every kind of fault really happened during the run ...
    for fault in ("429", "5xx", "drop", "drop_after_apply"):
        assert stats["injected"][fault] > 0, stats["injected"]
    # ... and the client never went over the limit: no 429 from the sandbox's own limiter.
    assert stats["max_arrivals_in_window"] <= RATE_LIMIT, stats
    assert stats["rate_limited"] == 0, stats
    assert stats["max_objects_in_request"] <= OBJECTS_PER_REQUEST
    assert stats["concurrent_user_conflicts"] == 0, stats
    report = pipeline.report()
    assert report["outcome"] == "success"
    assert report["rejected"] == 0
    assert report["retries"] > 0
