"""kill -9 of the whole pipeline at random moments: nothing is lost, the bookmark never lies."""

from __future__ import annotations

import json
import math
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
# A kill lands this long (uniformly) after the run's first request reached the sandbox.
KILL_AFTER_FIRST_REQUEST = (0.0, 3.0)
# The sandbox's latency caps the sync's speed whatever the machine: at most 2 requests in
# flight x 75 objects / 40 ms = 3,750 records/s, so at most ~11,000 records before a kill.
LATENCY_MS = (40, 80)
MAX_IN_FLIGHT = 2
# Before each trial, model runs make sure at least this many rows wait to be sent, so
# every kill interrupts a sync.
OUTSTANDING_BEFORE_TRIAL = 15_000
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


def _top_up(warehouse, bookmark, seed: int) -> None:
    """Model runs until at least OUTSTANDING_BEFORE_TRIAL rows are after the bookmark."""
    for attempt in range(5):
        rows = read_warehouse(warehouse)
        covered = len(rows_up_to(rows, bookmark))
        deficit = OUTSTANDING_BEFORE_TRIAL - (len(rows) - covered)
        if deficit <= 0:
            return
        # A model run picks customers at random; only those already covered add work.
        changes = min(len(rows), math.ceil(deficit * len(rows) / covered) + 200)
        model_run(warehouse, changes=changes, seed=seed + attempt)
    raise AssertionError("model runs did not leave enough rows to send")


def test_kill_9_at_random_moments_loses_nothing_and_bookmark_never_passes_braze(
    start_sandbox, make_pipeline, tmp_path
):
    rng = random.Random(SEED)
    warehouse = generate_warehouse(tmp_path / "warehouse.sqlite", CUSTOMERS, seed=SEED)
    # Slow answers and few requests in flight make the sync last several seconds.
    sandbox = start_sandbox(latency_ms=LATENCY_MS, seed=SEED)
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            "TAP_PEAK_ATTRIBUTES_STATE_MESSAGE_FREQUENCY": "1000",
            "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": str(MAX_IN_FLIGHT),
        },
    )
    log_path = tmp_path / "killed-runs.log"
    killed_mid_sync = 0
    bookmarks = []

    for trial in range(TRIALS):
        _top_up(warehouse, pipeline.bookmark(), seed=SEED + 10 * trial)
        requests_before = sandbox.stats()["requests"]
        # After a kill -9 Meltano believes the previous run is still going: --force.
        process = pipeline.start(force=True, log_path=log_path)
        delay = rng.uniform(*KILL_AFTER_FIRST_REQUEST)
        try:
            if _wait_for_first_request(sandbox, process, requests_before):
                time.sleep(delay)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                killed_mid_sync += 1
            process.wait()

        bookmark = pipeline.bookmark()
        bookmarks.append(bookmark)
        with (tmp_path / "trials.jsonl").open("a") as trials:
            trials.write(json.dumps({"trial": trial, "delay": delay, "bookmark": bookmark}) + "\n")
        covered = rows_up_to(read_warehouse(warehouse), bookmark)
        expected = {row.customer_id: row.attributes for row in covered}
        problems = mismatches(expected, sandbox_attributes(sandbox), exact_population=False)
        assert not problems, (
            f"trial {trial}: the stored bookmark {bookmark} covers {len(covered)} rows, "
            f"but the sandbox does not hold them all: {summarise(problems)}"
        )

    # The test proves something only if the kills interrupted syncs and state moved.
    assert killed_mid_sync == TRIALS, f"only {killed_mid_sync} kills landed mid-sync"
    assert len({b for b in bookmarks if b is not None}) >= TRIALS // 2, bookmarks

    final = pipeline.run(force=True)

    assert final.returncode == 0, final.describe()
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
