"""Crashes and outages mid-sync: nothing is lost, the bookmark never passes what Braze holds.

Every decision here is taken from progress the sandbox reports (requests answered) or the
state Meltano stored, never from the clock: a loaded machine makes the runs slower, not
the verdicts different.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pipeline_harness import (
    RUN_TIMEOUT_SECONDS,
    Pipeline,
    copy_sample_warehouse,
    expected_profiles,
    generate_warehouse,
    mismatches,
    model_run,
    normalise_timestamp,
    read_warehouse,
    rows_up_to,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

SEED = 20261129
# The kill test's size only has to make each trial's run long (in requests): smaller
# requests do that with a third of the rows to generate, read and compare (30,000
# customers in requests of 75 cost the test a third more time, and proved the same).
CUSTOMERS = 10_000
# Per mode, half of them killed only after a checkpoint: 12 kills at random progress over
# both modes (20 cost the suite a minute more of its two cores).
TRIALS = 6
OBJECTS_PER_REQUEST = 25
# Before each trial, model runs make sure at least this many rows wait to be sent, so a
# trial's run makes at least OUTSTANDING_BEFORE_TRIAL / OBJECTS_PER_REQUEST = 200 requests.
OUTSTANDING_BEFORE_TRIAL = 5_000
# A trial's run is killed once the sandbox has answered K of its requests, K drawn from
# this range. K <= 100 leaves at least 100 requests to go, and the sandbox holds each for
# at least 40 ms with at most 2 in flight: the run cannot end within 2 s of reaching K,
# however fast or slow the machine, while the test polls every POLL_SECONDS.
KILL_AFTER_ANSWERED = (1, 100)
LATENCY_MS = (40, 80)
MAX_IN_FLIGHT = 2
STATE_EVERY_RECORDS = 1000
POLL_SECONDS = 0.01

# The outage test: the sample warehouse (1,200 customers, 16 full requests) sent one
# request at a time, so the first FAIL_AFTER_REQUESTS to arrive are the first in order.
# A checkpoint after every request: the first is confirmed 11 requests before the outage,
# and Meltano must go on relaying hundreds of KB of records to the target after it (so it
# reads, and stores, the target's STATE before the target can give up).
FAIL_AFTER_REQUESTS = 12
FAILPOINT_OBJECTS_PER_REQUEST = 75
FAILPOINT_STATE_EVERY_RECORDS = 75
FAILPOINT_MAX_RETRIES = 2
GAVE_UP = "target-braze: error: gave up on a /users/track request after"
TARGET_LOG = "] target-braze "  # how Meltano prefixes the lines the target writes

Bookmark = tuple[str, str] | None


def _order(bookmark: Bookmark) -> tuple[str, str]:
    """A bookmark as a sortable key; no bookmark sorts before every row."""
    if bookmark is None:
        return ("", "")
    return normalise_timestamp(bookmark[0]), bookmark[1]


def _answered(sandbox: Any) -> int:
    """How many /users/track requests the sandbox has answered (finished handling)."""
    return sum(sandbox.stats()["by_status"].values())


def _wait_until_sandbox_quiet(sandbox: Any) -> int:
    """Wait until no request is in flight (a killed run's last ones finish); answered count.

    The deadline only keeps a hang from lasting forever; nothing is decided by it.
    """
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stats = sandbox.stats()
        answered = sum(stats["by_status"].values())
        if stats["requests"] == answered:
            return answered
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"the sandbox still has requests in flight: {sandbox.stats()}")


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


def _tail(log_path: Path, lines: int = 40) -> str:
    """The last lines the killed runs wrote (Meltano's, the tap's and the target's)."""
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _kill_at_progress(
    sandbox: Any,
    pipeline: Pipeline,
    process: subprocess.Popen[bytes],
    log_path: Path,
    *,
    answered_before: int,
    answered_needed: int,
    bookmark_before: Bookmark,
    wait_for_checkpoint: bool,
) -> int:
    """kill -9 the run's process group once it reached the threshold; answered so far.

    The threshold: the sandbox answered `answered_needed` of this run's requests and, with
    `wait_for_checkpoint`, Meltano stored a bookmark beyond `bookmark_before`. If the run
    ends first, the test fails: the kill would not have interrupted a sync.
    """
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    killed = False
    try:
        while process.poll() is None:
            answered = _answered(sandbox) - answered_before
            reached = answered >= answered_needed
            if reached and wait_for_checkpoint:
                reached = _order(pipeline.bookmark()) > _order(bookmark_before)
            if reached:
                # If the whole group is gone already, the exit status tells (not -9).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                killed = True
                return answered
            assert time.monotonic() < deadline, "the run neither progressed nor ended"
            time.sleep(POLL_SECONDS)
        raise AssertionError(
            f"the run ended (exit {process.returncode}) before the threshold: "
            f"{_answered(sandbox) - answered_before} of {answered_needed} requests answered, "
            f"waiting for a checkpoint: {wait_for_checkpoint}; the end of its log:\n"
            + _tail(log_path)
        )
    finally:
        if not killed and process.poll() is None:
            # Only after a failed assertion above: never leave a pipeline running.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# Both ways the tap can hand records over: RECORD lines (batch_config {}) and BATCH files
# (the default in meltano.yml), each file holding what one checkpoint covers.
MODES = ("records", "batch")


def mode_settings(mode: str, directory, checkpoint_every: int) -> dict[str, str]:
    """The tap's settings for one mode, with a STATE every `checkpoint_every` records."""
    every = str(checkpoint_every)
    if mode == "records":
        return {
            "TAP_PEAK_ATTRIBUTES_BATCH_CONFIG": "{}",
            "TAP_PEAK_ATTRIBUTES_STATE_MESSAGE_FREQUENCY": every,
        }
    config = {
        "encoding": {"format": "jsonl", "compression": "none"},
        "storage": {"root": directory.as_uri()},
        "batch_size": checkpoint_every,  # one BATCH file, then its STATE, per this many
    }
    return {"TAP_PEAK_ATTRIBUTES_BATCH_CONFIG": json.dumps(config)}


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_at_random_progress_loses_nothing_and_bookmark_never_passes_braze(
    start_sandbox, make_pipeline, tmp_path, mode
):
    rng = random.Random(SEED)
    warehouse = generate_warehouse(tmp_path / "warehouse.sqlite", CUSTOMERS, seed=SEED)
    # Slow answers and few requests in flight make a sync hundreds of requests long.
    sandbox = start_sandbox(latency_ms=LATENCY_MS, seed=SEED)
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": str(MAX_IN_FLIGHT),
            "TARGET_BRAZE_MAX_OBJECTS_PER_REQUEST": str(OBJECTS_PER_REQUEST),
            **mode_settings(mode, tmp_path / "batches", STATE_EVERY_RECORDS),
        },
    )
    log_path = tmp_path / "killed-runs.log"
    advanced = 0

    for trial in range(TRIALS):
        bookmark_before = pipeline.bookmark()
        _top_up(warehouse, bookmark_before, seed=SEED + 10 * trial)
        answered_before = _wait_until_sandbox_quiet(sandbox)
        answered_needed = rng.randint(*KILL_AFTER_ANSWERED)
        # Odd trials are killed only after this run stored a checkpoint as well, so state
        # certainly moves; even ones may die before any (the bookmark then stays).
        wait_for_checkpoint = trial % 2 == 1
        # After a kill -9 Meltano believes the previous run is still going: --force.
        process = pipeline.start(force=True, log_path=log_path)
        answered_at_kill = _kill_at_progress(
            sandbox,
            pipeline,
            process,
            log_path,
            answered_before=answered_before,
            answered_needed=answered_needed,
            bookmark_before=bookmark_before,
            wait_for_checkpoint=wait_for_checkpoint,
        )

        bookmark = pipeline.bookmark()
        with (tmp_path / "trials.jsonl").open("a") as trials:
            entry = {
                "trial": trial,
                "answered_needed": answered_needed,
                "answered_at_kill": answered_at_kill,
                "wait_for_checkpoint": wait_for_checkpoint,
                "bookmark_before": bookmark_before,
                "bookmark": bookmark,
            }
            trials.write(json.dumps(entry) + "\n")
        # Our SIGKILL ended the run: it was alive when it reached the threshold.
        assert process.returncode == -signal.SIGKILL, (trial, process.returncode, entry)
        rows = read_warehouse(warehouse)
        covered = rows_up_to(rows, bookmark)
        assert len(covered) < len(rows), f"trial {trial}: the run had finished its sync"
        assert _order(bookmark) >= _order(bookmark_before), f"trial {trial}: went back {entry}"
        advanced += _order(bookmark) > _order(bookmark_before)
        expected = {row.customer_id: row.attributes for row in covered}
        problems = mismatches(expected, sandbox_attributes(sandbox), exact_population=False)
        assert not problems, (
            f"trial {trial}: the stored bookmark {bookmark} covers {len(covered)} rows, "
            f"but the sandbox does not hold them all: {summarise(problems)}"
        )

    # The checkpoint trials stored a bookmark beyond their start before they were killed.
    assert advanced >= TRIALS // 2, f"the bookmark advanced in only {advanced} trials"

    final = pipeline.run(force=True)

    assert final.returncode == 0, final.describe()
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    if mode == "batch":  # the killed runs' files were removed, the last run's deleted
        left = sorted(p.name for p in (tmp_path / "batches").iterdir() if ".jsonl" in p.name)
        assert left == [], left


@pytest.mark.parametrize("mode", MODES)
def test_braze_failing_mid_sync_fails_the_run_and_a_rerun_after_it_heals_completes(
    start_sandbox, make_pipeline, tmp_path, mode
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox(fail_after_requests=FAIL_AFTER_REQUESTS)
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            **mode_settings(mode, tmp_path / "batches", FAILPOINT_STATE_EVERY_RECORDS),
            "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": "1",
            "TARGET_BRAZE_MAX_OBJECTS_PER_REQUEST": str(FAILPOINT_OBJECTS_PER_REQUEST),
            "TARGET_BRAZE_MAX_RETRIES": str(FAILPOINT_MAX_RETRIES),
        },
    )

    failed = pipeline.run()

    assert failed.returncode != 0, failed.describe()
    gave_up = [line for line in failed.output.splitlines() if GAVE_UP in line]
    assert len(gave_up) == 1, failed.describe()
    assert f"after {FAILPOINT_MAX_RETRIES + 1} attempts" in gave_up[0], gave_up
    # Meltano itself prints BrokenPipeError tracebacks when the target exits while the tap
    # still writes; the target's own output must be that one line, no traceback.
    target_lines = [line for line in failed.output.splitlines() if TARGET_LOG in line]
    assert not [line for line in target_lines if "Traceback" in line], failed.describe()
    stats = sandbox.stats()
    assert stats["failpoint_remaining"] == 0, stats
    assert stats["injected"]["failpoint"] >= 1, stats
    # The outage hit mid-sync: Braze holds some customers, not all ...
    rows = read_warehouse(warehouse)
    held = sandbox_attributes(sandbox)
    assert 0 < len(held) < len(rows), (len(held), len(rows))
    # ... and the stored bookmark moved (the handled requests confirmed checkpoints) but
    # covers only customers Braze holds, exactly as the warehouse has them.
    bookmark = pipeline.bookmark()
    assert bookmark is not None, failed.describe()
    covered = rows_up_to(rows, bookmark)
    expected = {row.customer_id: row.attributes for row in covered}
    problems = mismatches(expected, held, exact_population=False)
    assert not problems, f"bookmark {bookmark}: {summarise(problems)}"

    sandbox.configure(fail_after_requests=0)
    rerun = pipeline.run()

    assert rerun.returncode == 0, rerun.describe()
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)


def test_a_file_state_backend_s_empty_state_json_fails_the_next_run_until_removed(
    start_sandbox, make_pipeline, tmp_path
):
    """Pins the README's warning about Meltano's `file://` state backend (Meltano 4.4).

    It truncates, then writes, `state.json`: a kill -9 in between leaves it empty, which
    is why the crash tests run on `systemdb`. The next run then fails before sending
    anything; with the file removed, a run completes. If Meltano comes to write the state
    in one step (or to read an empty file as no state), this fails: then the README's
    warning and troubleshooting row go.
    """
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, warehouse)
    state_dir = tmp_path / "file-state"
    backend = {"MELTANO_STATE_BACKEND_URI": f"file://{state_dir}"}
    state_file = state_dir / pipeline.state_id / "state.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text("")  # what a kill between Meltano's truncate and write leaves

    failed = pipeline.run(extra_env=backend)

    assert failed.returncode != 0, failed.describe()
    assert "Expecting value: line 1 column 1 (char 0)" in failed.output, failed.describe()
    assert "Failed to retrieve state" in failed.output, failed.describe()
    assert sandbox.stats()["requests"] == 0, failed.describe()

    state_file.unlink()  # the README's remedy
    rerun = pipeline.run(extra_env=backend)

    assert rerun.returncode == 0, rerun.describe()
    assert json.loads(state_file.read_text())["completed"]["singer_state"]["bookmarks"]
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
