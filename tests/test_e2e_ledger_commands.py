"""`target-braze-ledger` under `meltano invoke`, as a user of this project runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pipeline_harness import MELTANO, PROJECT_ROOT, copy_sample_warehouse
from target_braze.ledger_store import open_store

pytestmark = pytest.mark.e2e


def invoke(pipeline, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MELTANO, "invoke", *args],
        cwd=PROJECT_ROOT,
        env={**pipeline.env(), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def direct(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "target_braze.ledger_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def workspace_sizes(pipeline) -> list[tuple[int, int]]:
    with open_store(f"sqlite:///{pipeline.ledger_path}") as store:
        return [(w.users, w.events) for w in store.workspaces()]


def test_the_ledger_commands_answer_alike_under_meltano_with_config_and_with_variables(
    start_sandbox, make_pipeline, tmp_path
):
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, copy_sample_warehouse(tmp_path / "warehouse.sqlite"))
    assert pipeline.run().returncode == 0
    sizes = workspace_sizes(pipeline)
    assert sizes[0][0] > 0

    under_meltano = invoke(pipeline, "target-braze:ledger-stats")
    assert under_meltano.returncode == 0, under_meltano.stderr
    config = tmp_path / "ledger-config.json"
    env = pipeline.env()
    config.write_text(
        json.dumps(
            {
                "ledger_url": env["TARGET_BRAZE_LEDGER_URL"],
                "rest_endpoint": env["TARGET_BRAZE_REST_ENDPOINT"],
                "api_key": env["TARGET_BRAZE_API_KEY"],
            }
        )
    )
    bare = {k: v for k, v in env.items() if not k.startswith("TARGET_BRAZE_")}
    with_config = direct("--config", str(config), "stats", env=bare)
    with_variables = direct("stats", env=env)
    # One table, whichever way the settings arrived (Meltano's log lines go to stderr).
    table = with_config.stdout
    assert f"{sizes[0][0]:,}" in table
    assert with_variables.stdout == table
    assert under_meltano.stdout == table

    # A delete without --yes (no terminal to ask on) deletes nothing, under Meltano too.
    refused = invoke(pipeline, "target-braze:ledger-clear-workspace")
    assert refused.returncode != 0
    assert "nothing changed: no answer on standard input" in refused.stdout + refused.stderr
    assert workspace_sizes(pipeline) == sizes

    cleared = invoke(pipeline, "target-braze:ledger-clear-workspace", "--yes")
    assert cleared.returncode == 0, cleared.stderr
    assert workspace_sizes(pipeline) == []
