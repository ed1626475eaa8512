"""The ledger's workspace across day-two operations, as a user meets them: the target CLI
and `target-braze-ledger` against the Braze sandbox (one workspace, two valid keys)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import customers, error_lines, run_target, schema_message, state
from target_braze.ledger_store import open_store

OLD_KEY = "old-key-0123456789abcdef"
NEW_KEY = "new-key-fedcba9876543210"


@pytest.fixture
def two_keys() -> SandboxProcess:
    with SandboxProcess(api_key=OLD_KEY, api_keys=[OLD_KEY, NEW_KEY]) as sandbox:
        yield sandbox


def stream(n: int = 40) -> list[dict]:
    return [schema_message(), *customers(n), state("end")]


def config(sandbox: SandboxProcess, tmp_path: Path, key: str, **extra: object) -> dict:
    return {
        "api_key": key,
        "rest_endpoint": sandbox.url,
        "retry_backoff_seconds": 0.01,
        "rejected_records_path": str(tmp_path / "rejects.jsonl"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        **extra,
    }


def ledger_command(tmp_path: Path, cfg: dict, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "ledger-config.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run(
        [sys.executable, "-m", "target_braze.ledger_cli", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_rotated_key_stops_the_run_until_the_workspace_is_moved(two_keys, tmp_path):
    first = run_target(config(two_keys, tmp_path, OLD_KEY), stream(), tmp_path)
    assert first.returncode == 0, first.stderr
    requests = two_keys.stats()["requests"]

    rotated = config(two_keys, tmp_path, NEW_KEY)
    stopped = run_target(rotated, stream(), tmp_path)

    assert stopped.returncode == 1
    (line,) = error_lines(stopped.stderr)
    assert "under another API key" in line
    assert "target-braze-ledger move-workspace --from 1" in line
    assert "set ledger_workspace" in line
    assert NEW_KEY not in stopped.stderr
    assert OLD_KEY not in stopped.stderr
    assert two_keys.stats()["requests"] == requests  # nothing was sent
    assert stopped.states == []

    moved = ledger_command(tmp_path, rotated, "move-workspace", "--from", "1")
    assert moved.returncode == 0, moved.stderr

    after = run_target(rotated, stream(), tmp_path)
    assert after.returncode == 0, after.stderr
    assert two_keys.stats()["requests"] == requests  # every attribute is known: 0 sent
    assert after.states[-1] == state("end")["value"]


def test_another_workspace_on_the_same_endpoint_is_named_with_ledger_workspace(two_keys, tmp_path):
    assert run_target(config(two_keys, tmp_path, OLD_KEY), stream(), tmp_path).returncode == 0
    other = config(two_keys, tmp_path, NEW_KEY, ledger_workspace="staging")
    run = run_target(other, stream(), tmp_path)
    assert run.returncode == 0, run.stderr
    with open_store(other["ledger_url"]) as store:
        assert sorted(w.identity.split(":")[0] for w in store.workspaces()) == ["key", "name"]


def test_a_new_ledger_is_announced_once_before_anything_is_sent(two_keys, tmp_path):
    cfg = config(two_keys, tmp_path, OLD_KEY)
    first = run_target(cfg, stream(), tmp_path)
    assert first.returncode == 0, first.stderr
    warning = [line for line in first.stderr.splitlines() if " is new: " in line]
    assert len(warning) == 1, first.stderr
    assert "every event and purchase the tap sends will be delivered" in warning[0]
    assert f"ledger_url sqlite:///{tmp_path / 'ledger.sqlite'}" in warning[0]
    second = run_target(cfg, stream(), tmp_path)
    assert second.returncode == 0
    assert " is new: " not in second.stderr
    assert "holds nothing" not in second.stderr


def test_require_existing_ledger_fails_on_a_new_ledger_until_init(two_keys, tmp_path):
    cfg = config(two_keys, tmp_path, OLD_KEY, require_existing_ledger=True)
    run = run_target(cfg, stream(), tmp_path)
    assert run.returncode == 1
    (line,) = error_lines(run.stderr)
    assert "is new, and require_existing_ledger is on; nothing was sent" in line
    assert "target-braze-ledger init" in line
    assert two_keys.stats()["requests"] == 0

    created = ledger_command(tmp_path, cfg, "init")
    assert created.returncode == 0, created.stderr
    run = run_target(cfg, stream(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(two_keys.profiles()) == 40


def test_a_key_braze_refuses_leaves_no_workspace(two_keys, tmp_path):
    cfg = config(two_keys, tmp_path, "not-a-key-of-this-workspace")
    run = run_target(cfg, stream(), tmp_path)
    assert run.returncode == 1
    assert "401" in run.stderr
    with open_store(cfg["ledger_url"]) as store:
        assert store.workspaces() == []
    # and so the right key afterwards is a first sync, not a rotation
    run = run_target(config(two_keys, tmp_path, OLD_KEY), stream(), tmp_path)
    assert run.returncode == 0, run.stderr


@pytest.mark.postgres
def test_a_ledger_exported_and_imported_into_postgres_sends_nothing_again(
    two_keys, tmp_path, postgres_server_url
):
    import uuid

    import psycopg

    cfg = config(two_keys, tmp_path, OLD_KEY)
    assert run_target(cfg, stream(), tmp_path).returncode == 0
    requests = two_keys.stats()["requests"]
    export = tmp_path / "ledger.jsonl"
    assert ledger_command(tmp_path, cfg, "export", str(export)).returncode == 0

    name = f"ledger_move_{uuid.uuid4().hex[:12]}"
    admin_url = "postgresql://" + postgres_server_url.split("://", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host = postgres_server_url.split("@", 1)[1].rsplit("/", 1)[0]
    moved = {**cfg, "ledger_url": f"postgresql://postgres@{host}/{name}"}
    try:
        loaded = ledger_command(tmp_path, moved, "import", str(export))
        assert loaded.returncode == 0, loaded.stderr
        run = run_target({**moved, "require_existing_ledger": True}, stream(), tmp_path)
        assert run.returncode == 0, run.stderr
        assert two_keys.stats()["requests"] == requests  # every attribute known: 0 sent
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
