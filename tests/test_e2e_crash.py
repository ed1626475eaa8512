"""kill -9 of the whole pipeline at random moments: nothing is lost, the bookmark never lies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from pipeline_harness import (
    expected_profiles,
    generate_warehouse,
    mismatches,
    model_run,
    read_warehouse,
    rows_up_to,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

SEED = 20261129
CUSTOMERS = 30_000
TRIALS = 10
# Customers changed by a model run before each trial after the first, so every trial has
# work left to interrupt.
CHANGES_PER_TRIAL = 2_500
# A kill lands this long (uniformly) after the run's first request reached the sandbox.
KILL_AFTER_FIRST_REQUEST = (0.0, 4.0)
STARTUP_TIMEOUT = 120.0


def _wait_for_first_request(sandbox, process: subprocess.Popen[bytes], requests_before: int):
    """Block until this run sent a request (or ended); True if it is still running."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if sandbox.stats()["requests"] > requests_before:
            return True
        time.sleep(0.05)
    raise AssertionError(f"no request reached the sandbox within {STARTUP_TIMEOUT} s")


def test_kill_9_at_random_moments_loses_nothing_and_bookmark_never_passes_braze(
    start_sandbox, make_pipeline, tmp_path
):
    rng = random.Random(SEED)
    warehouse = generate_warehouse(tmp_path / "warehouse.sqlite", CUSTOMERS, seed=SEED)
    # Slow answers and few requests in flight make the sync last several seconds.
    sandbox = start_sandbox(latency_ms=(20, 50), seed=SEED)
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            "TAP_PEAK_ATTRIBUTES_STATE_MESSAGE_FREQUENCY": "1000",
            "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": "2",
        },
    )
    log_path = tmp_path / "killed-runs.log"
    killed_mid_sync = 0
    bookmarks = []

    for trial in range(TRIALS):
        if trial:
            model_run(warehouse, changes=CHANGES_PER_TRIAL, seed=SEED + trial)
        requests_before = sandbox.stats()["requests"]
        # After a kill -9 Meltano believes the previous run is still going: --force.
        process = pipeline.start(force=True, log_path=log_path)
        try:
            running = _wait_for_first_request(sandbox, process, requests_before)
            if running:
                time.sleep(rng.uniform(*KILL_AFTER_FIRST_REQUEST))
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                killed_mid_sync += 1
            process.wait()

        bookmark = pipeline.bookmark()
        bookmarks.append(bookmark)
        covered = rows_up_to(read_warehouse(warehouse), bookmark)
        expected = {row.customer_id: row.attributes for row in covered}
        problems = mismatches(expected, sandbox_attributes(sandbox), exact_population=False)
        assert not problems, (
            f"trial {trial}: the stored bookmark {bookmark} covers {len(covered)} rows, "
            f"but the sandbox does not hold them all: {summarise(problems)}"
        )

    # The test proves something only if most kills interrupted a sync and state moved.
    assert killed_mid_sync >= TRIALS - 2, f"only {killed_mid_sync} kills landed mid-sync"
    assert len({b for b in bookmarks if b is not None}) >= TRIALS // 2, bookmarks

    final = pipeline.run(force=True)

    assert final.returncode == 0, final.describe()
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
