"""One sync per Braze workspace at a time, workspaces side by side: a real Dagster daemon.

Three runs are queued at once, before the daemon starts: two of workspace A, then one of
workspace B. The daemon (queued-run coordinator, the tag limit of deploy/dagster's
dagster.yaml) launches them; each runs the real `meltano run` against its workspace's
sandbox and warehouse.

Decided by progress, not by the clock. Workspace A's sandbox fails every request past its
second (its fail point), so A's first run is held mid-sync, retrying, and cannot end. The
test waits until B's sandbox has confirmed a request of B's run: B went while A's run was
alive. At that moment A's second run, queued before B's, must still be queued: the daemon
launched a run queued after it, so it was held back, by the limit. Then a model run lands
in A's warehouse (stamped after A's first run began reading, so only A's second run reads
it), A's sandbox heals and everything finishes. The sandboxes' request times then show it:
A's second run (the model run's 25 customers, one request) was received after every
request of A's first run was answered, and B's requests fell between the first and the
last of A's first run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from pipeline_harness import (
    PEAK_SAMPLE,
    VENV_BIN,
    expected_profiles,
    generate_warehouse,
    init_ledger,
    mismatches,
    sandbox_attributes,
    summarise,
)
from test_deploy_dagster import DEPLOY_DAGSTER, workspace_entry, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings(
        "ignore::dagster_shared.utils.warnings.PreviewWarning",
        "ignore::dagster_shared.utils.warnings.BetaWarning",
    ),
]

CUSTOMERS = 600  # 8 requests of 75
CHANGES = 25  # the model run A's second run syncs: one request of 25 objects
HELD_AFTER_REQUESTS = 2
KEY_A = "braze-key-a-" + uuid.uuid4().hex[:8]
KEY_B = "braze-key-b-" + uuid.uuid4().hex[:8]
IN_PROGRESS = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
# Only a bound for a run that neither progresses nor ends; no verdict depends on it.
STALL_SECONDS = 600
POLL_SECONDS = 0.2


def instance_home(directory: Path) -> Path:
    """DAGSTER_HOME with the shipped dagster.yaml, dequeuing every second."""
    directory.mkdir(parents=True)
    config = yaml.safe_load((DEPLOY_DAGSTER / "dagster.yaml").read_text())
    config["run_queue"]["dequeue_interval_seconds"] = 1
    (directory / "dagster.yaml").write_text(yaml.safe_dump(config))
    return directory


def accepted_requests(sandbox) -> int:
    return sum(1 for request in sandbox.requests_log() if request["status"] == 201)


def held(sandbox) -> bool:
    return sandbox.stats()["injected"].get("failpoint", 0) > 0


def to_delete_journal(warehouse: Path) -> None:
    connection = sqlite3.connect(warehouse)
    try:
        connection.execute("PRAGMA journal_mode=DELETE").fetchone()
    finally:
        connection.close()


@pytest.fixture
def daemon_env(meltano_env, tmp_path):
    env = {k: v for k, v in meltano_env.items() if not k.startswith("DAGSTER_")}
    env["DAGSTER_HOME"] = str(instance_home(tmp_path / "dagster-home"))
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def launch(env: dict[str, str], workspace_file: Path, job: str, run_id: str) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "dagster"), "job", "launch", "-w", str(workspace_file), "-j", job,
         "--run-id", run_id],
        cwd=DEPLOY_DAGSTER,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_one_run_per_workspace_at_a_time_and_workspaces_side_by_side(
    daemon_env, start_sandbox, tmp_path
):
    sandbox_a = start_sandbox(api_key=KEY_A, fail_after_requests=HELD_AFTER_REQUESTS)
    sandbox_b = start_sandbox(api_key=KEY_B)
    warehouse_a = generate_warehouse(tmp_path / "warehouse-a.sqlite", CUSTOMERS, seed=71)
    warehouse_b = generate_warehouse(tmp_path / "warehouse-b.sqlite", CUSTOMERS, seed=72)
    # A's warehouse gets a model run while A's first run may still be reading it.
    sqlite3.connect(warehouse_a).execute("PRAGMA journal_mode=WAL").fetchone()
    entry_a = workspace_entry(
        "ws-a",
        sandbox_a.url,
        warehouse_a,
        tmp_path / "state-a",
        f"sqlite:///{tmp_path / 'ledger-a.sqlite'}",
        # Held mid-sync for minutes at least: 30 retries from 0.5 s, doubling to 60 s.
        env={"TARGET_BRAZE_MAX_RETRIES": "30", "TARGET_BRAZE_RETRY_BACKOFF_SECONDS": "0.5"},
    )
    entry_b = workspace_entry(
        "ws-b",
        sandbox_b.url,
        warehouse_b,
        tmp_path / "state-b",
        f"sqlite:///{tmp_path / 'ledger-b.sqlite'}",
    )
    # The prod environment requires an existing ledger: a deployment creates each once.
    init_ledger(f"sqlite:///{tmp_path / 'ledger-a.sqlite'}", sandbox_a.url, KEY_A, "ws-a")
    init_ledger(f"sqlite:///{tmp_path / 'ledger-b.sqlite'}", sandbox_b.url, KEY_B, "ws-b")
    config = write_config(tmp_path / "code-location", [entry_a, entry_b])
    workspace_file = tmp_path / "workspace.yaml"
    workspace_file.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "peak_braze_dagster.definitions",
                            "working_directory": str(DEPLOY_DAGSTER),
                        }
                    }
                ]
            }
        )
    )
    env = daemon_env | {
        "PEAK_BRAZE_WORKSPACES": str(config),
        "WS_A_BRAZE_API_KEY": KEY_A,
        "WS_B_BRAZE_API_KEY": KEY_B,
    }
    a_first, a_second, b_run = (str(uuid.uuid4()) for _ in range(3))
    for job, run_id in (("sync_ws_a", a_first), ("sync_ws_a", a_second), ("sync_ws_b", b_run)):
        launch(env, workspace_file, job, run_id)
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    runs = (a_first, a_second, b_run)

    def statuses() -> dict[str, DagsterRunStatus]:
        found = {}
        for run_id in runs:
            run = instance.get_run_by_id(run_id)
            assert run is not None, run_id
            found[run_id] = run.status
        return found

    assert set(statuses().values()) == {DagsterRunStatus.QUEUED}, "queued at once, none started"
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(workspace_file)],
        cwd=DEPLOY_DAGSTER,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    both_a_in_progress = False
    try:
        # Until A's first run is held mid-sync and B's sandbox confirmed a request of B's.
        deadline = time.monotonic() + STALL_SECONDS
        while True:
            now = statuses()
            both_a_in_progress |= now[a_first] in IN_PROGRESS and now[a_second] in IN_PROGRESS
            failed = {r: s for r, s in now.items() if s in FINISHED - {DagsterRunStatus.SUCCESS}}
            assert not failed, f"runs ended badly: {failed}; {tail(tmp_path / 'daemon.log')}"
            if held(sandbox_a) and accepted_requests(sandbox_b) > 0:
                break
            assert time.monotonic() < deadline, f"no progress: {now}"
            time.sleep(POLL_SECONDS)
        at_hold = statuses()
        held_run = a_first if at_hold[a_first] in IN_PROGRESS else a_second
        waiting_run = a_second if held_run == a_first else a_first
        assert at_hold[held_run] == DagsterRunStatus.STARTED, at_hold
        assert at_hold[waiting_run] == DagsterRunStatus.QUEUED, (
            f"A's other run left the queue while A was syncing: {at_hold}"
        )
        assert at_hold[b_run] in IN_PROGRESS | {DagsterRunStatus.SUCCESS}, at_hold

        # The model run: after A's first run started reading (its sync began before its
        # first request reached Braze), before A's second run starts (it is queued).
        first_request = min(r["received_at"] for r in sandbox_a.requests_log())
        stamp = dt.datetime.fromtimestamp(first_request, dt.UTC)
        peak_sample_model_run(warehouse_a, CHANGES, stamp)
        sandbox_a.configure(fail_after_requests=0)

        deadline = time.monotonic() + STALL_SECONDS
        while True:
            now = statuses()
            both_a_in_progress |= now[a_first] in IN_PROGRESS and now[a_second] in IN_PROGRESS
            if all(status in FINISHED for status in now.values()):
                break
            assert time.monotonic() < deadline, f"runs did not end: {now}"
            time.sleep(POLL_SECONDS)
        assert set(now.values()) == {DagsterRunStatus.SUCCESS}, (
            f"{now}; {tail(tmp_path / 'daemon.log')}"
        )
    finally:
        stop(daemon)
        log.close()
    assert not both_a_in_progress, "two runs of workspace A were in progress at once"

    # Workspace A, from its sandbox: the second run's one request came after every
    # request of the first was answered.
    requests_a = sandbox_a.requests_log()
    second = [r for r in requests_a if r["objects"] == CHANGES]
    first = [r for r in requests_a if r["objects"] != CHANGES]
    assert len(second) == 1, [r["objects"] for r in requests_a]
    assert second[0]["status"] == 201
    assert {r["objects"] for r in first} <= {75, 0}, "A's first run: full requests, and 500s"
    assert max(r["answered_at"] for r in first) <= second[0]["received_at"]
    # Workspace B ran while A's first run was going: its requests lie inside A's.
    requests_b = sandbox_b.requests_log()
    assert min(r["received_at"] for r in requests_b) < max(r["answered_at"] for r in first)
    assert min(r["received_at"] for r in first) < max(r["answered_at"] for r in requests_b)
    # Dagster's records say the same.
    records = {r: instance.get_run_record_by_id(r) for r in runs}
    assert records[waiting_run].start_time >= records[held_run].end_time
    assert records[b_run].start_time < records[held_run].end_time

    for sandbox, warehouse in ((sandbox_a, warehouse_a), (sandbox_b, warehouse_b)):
        to_delete_journal(warehouse)
        problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
        assert not problems, summarise(problems)


def peak_sample_model_run(warehouse: Path, changes: int, at: dt.datetime) -> None:
    result = subprocess.run(
        [PEAK_SAMPLE, "model-run", "--url", f"sqlite:///{warehouse}", "--changes", str(changes),
         "--seed", "5", "--at", at.isoformat()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def stop(process: subprocess.Popen[bytes]) -> None:
    """End the daemon's process group: the daemon, its code server and any run left.

    SIGTERM first, so the daemon stops cleanly; then SIGKILL for whatever of the group is
    still there (a run worker held mid-sync would go on retrying).
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tail(path: Path, size: int = 4000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""
