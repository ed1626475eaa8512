"""The Dagster code location (deploy/dagster): a job per workspace running the real
`meltano run`, the schedules mirrored from meltano.yml, the model-run sensor against a
stand-in answering like Peak's workflow executions API, and the configuration's checks.

Concurrency (one run per workspace, workspaces side by side) is in
test_deploy_dagster_concurrency.py, with a real Dagster daemon.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline_harness import (
    MELTANO,
    PROJECT_ROOT,
    expected_profiles,
    generate_warehouse,
    init_ledger,
    mismatches,
    sandbox_attributes,
    summarise,
)
from werkzeug import Request, Response

DEPLOY_DAGSTER = PROJECT_ROOT / "deploy" / "dagster"
if str(DEPLOY_DAGSTER) not in sys.path:
    sys.path.insert(0, str(DEPLOY_DAGSTER))

from dagster import DagsterInstance, Definitions, build_sensor_context  # noqa: E402
from peak_braze_dagster.definitions import build_definitions  # noqa: E402
from peak_braze_dagster.sync import WORKSPACE_TAG, run_environment  # noqa: E402
from peak_braze_dagster.workspaces import ConfigError, load_settings  # noqa: E402

# Dagster's Pipes uses its own preview APIs internally (expected_writer_count); those warn.
pytestmark = pytest.mark.filterwarnings(
    "ignore::dagster_shared.utils.warnings.PreviewWarning",
    "ignore::dagster_shared.utils.warnings.BetaWarning",
)

BRAZE_KEY = "acme-braze-key-" + uuid.uuid4().hex[:8]
PEAK_TOKEN = "acme-peak-token-" + uuid.uuid4().hex[:8]
# Dagster's own variables and the plugins' settings of the caller's shell stay out.
_SCRUBBED = ("TAP_", "TARGET_", "MELTANO_", "DAGSTER_")
_SCRUBBED_NAMES = ("BRAZE_API_KEY", "PEAK_API_KEY", "PEAK_WAREHOUSE_URL")


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pytest process's environment, as Dagster's run worker inherits it, made neutral."""
    import os

    for name in list(os.environ):
        if name.startswith(_SCRUBBED) or name in _SCRUBBED_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("MELTANO_SEND_ANONYMOUS_USAGE_STATS", "false")


def workspace_entry(
    name: str,
    sandbox_url: str,
    warehouse: Path,
    state_dir: Path,
    ledger_url: str,
    **extra: Any,
) -> dict[str, Any]:
    """A workspace of the test: sandbox, warehouse copy, file state backend, own ledger."""
    env = {
        "TARGET_BRAZE_REST_ENDPOINT": sandbox_url,
        "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL": f"sqlite:///{warehouse}",
        "TARGET_BRAZE_LEDGER_URL": ledger_url,
        "TARGET_BRAZE_LEDGER_WORKSPACE": name,
        "TARGET_BRAZE_RETRY_BACKOFF_SECONDS": "0.05",
        "MELTANO_STATE_BACKEND_URI": f"file://{state_dir}",
    }
    env.update(extra.pop("env", {}))
    return {
        "name": name,
        "environment": "prod",
        "state_id_suffix": f"{name}-{uuid.uuid4().hex[:8]}",
        "secrets": {"BRAZE_API_KEY": f"{name.upper().replace('-', '_')}_BRAZE_API_KEY"},
        "env": env,
        **extra,
    }


def write_config(directory: Path, workspaces: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "workspaces.yml"
    document = {
        "project_dir": str(PROJECT_ROOT),
        "run_directory": str(directory / "runs"),
        "meltano": MELTANO,
        "workspaces": workspaces,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def state_file(state_dir: Path, workspace: dict[str, Any]) -> Path:
    state_id = f"prod:tap-peak-attributes-to-target-braze:{workspace['state_id_suffix']}"
    return state_dir / state_id / "state.json"


# The job, executed by Dagster -----------------------------------------------------------

CUSTOMERS = 300


@pytest.mark.e2e
def test_a_workspace_job_runs_meltano_and_braze_holds_the_warehouse(
    meltano_env, start_sandbox, tmp_path, monkeypatch
):
    clean_environment(monkeypatch)
    sandbox = start_sandbox(api_key=BRAZE_KEY)
    warehouse = generate_warehouse(tmp_path / "warehouse.sqlite", CUSTOMERS, seed=1313)
    state_dir = tmp_path / "state"
    entry = workspace_entry(
        "acme-us", sandbox.url, warehouse, state_dir, f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    )
    config = write_config(tmp_path / "dagster", [entry])
    # The prod environment requires an existing ledger: a deployment creates it once.
    init_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", sandbox.url, BRAZE_KEY, "acme-us")
    monkeypatch.setenv("ACME_US_BRAZE_API_KEY", BRAZE_KEY)
    # A key set for Dagster as a whole is never a workspace's: the sandbox refuses it.
    monkeypatch.setenv("BRAZE_API_KEY", "a-global-key-the-sandbox-refuses")
    instance = DagsterInstance.ephemeral()

    result = (
        build_definitions(load_settings(config))
        .resolve_job_def("sync_acme_us")
        .execute_in_process(instance=instance)
    )

    assert result.success
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    assert result.dagster_run.tags[WORKSPACE_TAG] == "acme-us"
    output = next(
        event for event in result.all_node_events if event.event_type_value == "STEP_OUTPUT"
    )
    metadata = {key: value.value for key, value in output.step_output_data.metadata.items()}
    assert metadata["records_in"] == CUSTOMERS
    assert metadata["records_accepted"] == CUSTOMERS
    assert metadata["outcome"] == "success"
    assert metadata["requests"] == math.ceil(CUSTOMERS / 75)
    assert metadata["data_points"] > 0
    assert metadata["meltano_exit_code"] == 0
    materialization = next(
        event
        for event in result.all_node_events
        if event.event_type_value == "ASSET_MATERIALIZATION"
    )
    assert materialization.asset_key.path == ["braze", "acme-us"]
    # Meltano's own lines are in Dagster's log, each at Meltano's level.
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("Run completed" in message for message in messages), messages[-20:]
    assert any("tap-peak-attributes" in message for message in messages)
    assert not any(BRAZE_KEY in message for message in messages)
    # State went to the workspace's backend, under its own suffix; the run's own Meltano
    # system directory is gone.
    stored = json.loads(state_file(state_dir, entry).read_text())
    assert stored["completed"]["singer_state"]["bookmarks"]
    assert list((tmp_path / "dagster" / "runs").iterdir()) == []


def test_a_missing_secret_fails_the_run_naming_the_variable_before_meltano_starts(
    tmp_path, monkeypatch
):
    clean_environment(monkeypatch)
    entry = workspace_entry(
        "acme-us", "http://127.0.0.1:9", tmp_path / "w.sqlite", tmp_path / "s", "sqlite:///l"
    )
    config = write_config(tmp_path / "dagster", [entry])
    result = (
        build_definitions(load_settings(config))
        .resolve_job_def("sync_acme_us")
        .execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False)
    )
    assert not result.success
    failure = next(e for e in result.all_node_events if e.event_type_value == "STEP_FAILURE")
    assert "ACME_US_BRAZE_API_KEY not set" in failure.step_failure_data.error.message
    assert list((tmp_path / "dagster" / "runs").iterdir()) == []


def test_a_run_gets_its_own_secrets_and_no_other_workspaces(tmp_path, monkeypatch):
    clean_environment(monkeypatch)
    first = workspace_entry("acme-us", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    second = workspace_entry("acme-eu", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    second["secrets"]["PEAK_API_KEY"] = "ACME_EU_PEAK_API_KEY"
    settings = load_settings(write_config(tmp_path, [first, second]))
    environ = {
        "ACME_US_BRAZE_API_KEY": "us-key",
        "ACME_EU_BRAZE_API_KEY": "eu-key",
        "ACME_EU_PEAK_API_KEY": "eu-token",
        "BRAZE_API_KEY": "global",
        "PEAK_API_KEY": "global",
        "TARGET_BRAZE_API_KEY": "written-to-disk-by-meltano",
        "MELTANO_SYS_DIR_ROOT": "/shared",
    }
    env, withheld = run_environment(settings, settings.workspaces[0], tmp_path / "run", environ)
    assert env["BRAZE_API_KEY"] == "us-key"
    assert env["MELTANO_SYS_DIR_ROOT"] == str(tmp_path / "run")
    assert env["MELTANO_ENVIRONMENT"] == "prod"
    assert env["TARGET_BRAZE_RUN_REPORT_PATH"] == str(tmp_path / "run" / "run-report.json")
    assert "eu-key" not in env.values()
    assert {
        "ACME_US_BRAZE_API_KEY",
        "ACME_EU_BRAZE_API_KEY",
        "ACME_EU_PEAK_API_KEY",
        "PEAK_API_KEY",
        "TARGET_BRAZE_API_KEY",
    } <= set(withheld)
    assert "BRAZE_API_KEY" not in withheld  # set, to this workspace's key


# Schedules and the shipped example -------------------------------------------------------


def test_schedules_mirror_meltano_yml(tmp_path):
    project = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text())
    intervals = {entry["name"]: entry["interval"] for entry in project["schedules"]}
    assert intervals == {"peak-to-braze-daily": "@daily", "peak-to-braze-weekly": "@weekly"}
    entry = workspace_entry("acme-us", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    entry["schedules"] = ["peak-to-braze-daily", "peak-to-braze-weekly"]
    defs = build_definitions(load_settings(write_config(tmp_path, [entry])))
    daily = defs.resolve_schedule_def("acme_us_peak_to_braze_daily")
    weekly = defs.resolve_schedule_def("acme_us_peak_to_braze_weekly")
    assert daily.cron_schedule == "0 0 * * *"
    assert weekly.cron_schedule == "0 0 * * 0"
    assert daily.execution_timezone == weekly.execution_timezone == "UTC"
    assert daily.job_name == weekly.job_name == "sync_acme_us"


def test_a_schedule_meltano_yml_lacks_is_refused(tmp_path):
    entry = workspace_entry("acme-us", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    entry["schedules"] = ["peak-to-braze-hourly"]
    with pytest.raises(ConfigError, match=r"no meltano\.yml schedule 'peak-to-braze-hourly'"):
        build_definitions(load_settings(write_config(tmp_path, [entry])))


def test_the_shipped_example_loads_one_job_per_workspace_with_its_schedule_and_sensor():
    defs = build_definitions(load_settings(DEPLOY_DAGSTER / "workspaces.yml"))
    Definitions.validate_loadable(defs)
    us, eu = defs.resolve_job_def("sync_acme_us"), defs.resolve_job_def("sync_acme_eu")
    assert us.tags[WORKSPACE_TAG] == "acme-us"
    assert eu.tags[WORKSPACE_TAG] == "acme-eu"
    assert defs.resolve_schedule_def("acme_us_peak_to_braze_daily").job_name == "sync_acme_us"
    assert defs.resolve_sensor_def("acme_eu_model_runs").job_name == "sync_acme_eu"


def test_the_code_location_module_loads_the_file_peak_braze_workspaces_names(tmp_path):
    import subprocess

    entry = workspace_entry("solo", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    config = write_config(tmp_path, [entry])
    probe = (
        "from peak_braze_dagster.definitions import defs; "
        "print(sorted(job.name for job in defs.resolve_all_job_defs()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=DEPLOY_DAGSTER,
        env={"PEAK_BRAZE_WORKSPACES": str(config), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['sync_solo']"


# Configuration checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"env": {"BRAZE_API_KEY": "k"}}, "secrets go in `secrets`"),
        ({"env": {"TARGET_BRAZE_API_KEY": "k"}}, "secrets go in `secrets`"),
        (
            {"env": {"TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL": "postgresql://u:pw@h/db"}},
            "secrets go in `secrets`",
        ),
        ({"secrets": {"TARGET_BRAZE_API_KEY": "X"}}, "Meltano writes that setting to disk"),
        ({"secrets": {"BRAZE_API_KEY": "not a name"}}, "must name a variable"),
        ({"model_workflow_id": 7}, "needs secrets.PEAK_API_KEY"),
        ({"colour": "blue"}, "unknown keys colour"),
        ({"state_id_suffix": None}, "`state_id_suffix` is required"),
    ],
)
def test_a_bad_workspace_is_refused_with_the_reason(tmp_path, change, complaint):
    entry = workspace_entry("acme-us", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    entry.update(change)
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        load_settings(write_config(tmp_path, [entry]))


def test_a_ledger_url_without_a_password_is_a_setting(tmp_path):
    entry = workspace_entry("acme-us", "u", tmp_path / "w", tmp_path / "s", "postgresql://u@h/db")
    assert load_settings(write_config(tmp_path, [entry])).workspaces[0].env[
        "TARGET_BRAZE_LEDGER_URL"
    ] == ("postgresql://u@h/db")


def test_two_workspaces_sharing_a_state_are_refused(tmp_path):
    first = workspace_entry("acme-us", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    second = workspace_entry("acme-eu", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    second["state_id_suffix"] = first["state_id_suffix"]
    with pytest.raises(ConfigError, match="would share the state"):
        load_settings(write_config(tmp_path, [first, second]))


# The model-run sensor --------------------------------------------------------------------

WORKFLOW = 4821
EXECUTIONS = f"/workflows/api/v1/workflows/executions/{WORKFLOW}"
T0 = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)


class FakePeakExecutions:
    """Peak's executions endpoint: raw token, `statuses` filter, newest first, paged."""

    def __init__(self) -> None:
        self.executions: list[dict[str, Any]] = []

    def add(self, status: str, started: dt.datetime, minutes: float | None) -> None:
        number = len(self.executions) + 1
        finished = None if minutes is None else started + dt.timedelta(minutes=minutes)
        self.executions.append(
            {
                "executionId": f"exec-{number}",
                "status": status,
                "executedAt": started.isoformat(),
                "finishedAt": None if finished is None else finished.isoformat(),
            }
        )

    def __call__(self, request: Request) -> Response:
        if request.headers.get("Authorization") != PEAK_TOKEN:
            return Response("Unauthorized", status=401)
        statuses = request.args.getlist("statuses")
        chosen = [e for e in self.executions if not statuses or e["status"] in statuses]
        chosen.sort(key=lambda e: e["executedAt"], reverse=True)
        size, page = int(request.args.get("pageSize", 25)), int(request.args.get("pageNumber", 1))
        body = {
            "executions": chosen[(page - 1) * size : page * size],
            "pageNumber": page,
            "pageCount": max(1, math.ceil(len(chosen) / size)),
        }
        return Response(json.dumps(body), content_type="application/json")


@pytest.fixture
def sensor_setup(httpserver, tmp_path, monkeypatch):
    clean_environment(monkeypatch)
    peak = FakePeakExecutions()
    httpserver.expect_request(EXECUTIONS).respond_with_handler(peak)
    entry = workspace_entry("acme-eu", "u", tmp_path / "w", tmp_path / "s", "sqlite:///l")
    entry["secrets"]["PEAK_API_KEY"] = "ACME_EU_PEAK_API_KEY"
    entry["model_workflow_id"] = WORKFLOW
    entry["peak_api_url"] = httpserver.url_for("/").rstrip("/")
    defs = build_definitions(load_settings(write_config(tmp_path, [entry])))
    monkeypatch.setenv("ACME_EU_PEAK_API_KEY", PEAK_TOKEN)
    return peak, defs


def tick(defs: Definitions, cursor: str | None):
    sensor = defs.resolve_sensor_def("acme_eu_model_runs")
    context = build_sensor_context(
        instance=DagsterInstance.ephemeral(), cursor=cursor, definitions=defs
    )
    return sensor.evaluate_tick(context)


def test_sensor_requests_exactly_one_run_for_a_new_successful_model_run_then_none(sensor_setup):
    peak, defs = sensor_setup
    peak.add("Success", T0, 30)

    first = tick(defs, None)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.tags[WORKSPACE_TAG] == "acme-eu"
    assert first.cursor == (T0 + dt.timedelta(minutes=30)).isoformat()

    nothing_new = tick(defs, first.cursor)
    assert nothing_new.run_requests == []
    assert "no successful run of Peak workflow 4821" in nothing_new.skip_message

    # The next model run is going, then fails: still nothing to sync.
    peak.add("Running", T0 + dt.timedelta(days=1), None)
    peak.add("Failed", T0 + dt.timedelta(days=1, hours=1), 5)
    assert tick(defs, first.cursor).run_requests == []

    peak.add("Success", T0 + dt.timedelta(days=2), 40)
    second = tick(defs, first.cursor)
    assert len(second.run_requests) == 1
    assert second.run_requests[0].run_key != request.run_key
    assert second.cursor == (T0 + dt.timedelta(days=2, minutes=40)).isoformat()
    assert tick(defs, second.cursor).run_requests == []


def test_sensor_with_a_refused_token_fails_naming_the_variable_never_the_token(
    sensor_setup, monkeypatch
):
    peak, defs = sensor_setup
    peak.add("Success", T0, 30)
    monkeypatch.setenv("ACME_EU_PEAK_API_KEY", "an-expired-token-not-to-be-echoed")
    with pytest.raises(Exception, match="ACME_EU_PEAK_API_KEY") as raised:
        tick(defs, None)
    assert "an-expired-token-not-to-be-echoed" not in str(raised.value)
    assert "HTTP 401" in str(raised.value)


def _run_missing_secret_job(tmp_path: Path) -> Any:
    """A job that fails at once (its key is not set), after its run directory was made."""
    entry = workspace_entry(
        "acme-us", "http://127.0.0.1:9", tmp_path / "w.sqlite", tmp_path / "s", "sqlite:///l"
    )
    config = write_config(tmp_path / "dagster", [entry])
    return (
        build_definitions(load_settings(config))
        .resolve_job_def("sync_acme_us")
        .execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False)
    )


def _failure_message(result: Any) -> str:
    failure = next(e for e in result.all_node_events if e.event_type_value == "STEP_FAILURE")
    return failure.step_failure_data.error.message


def test_the_run_directory_base_is_created_private(tmp_path, monkeypatch):
    clean_environment(monkeypatch)
    result = _run_missing_secret_job(tmp_path)
    assert "ACME_US_BRAZE_API_KEY not set" in _failure_message(result)
    runs = tmp_path / "dagster" / "runs"
    assert runs.stat().st_mode & 0o777 == 0o700
    assert list(runs.iterdir()) == []


@pytest.mark.parametrize("problem", ["open to other users", "belongs to another user"])
def test_a_run_directory_base_another_user_could_control_is_refused(tmp_path, monkeypatch, problem):
    clean_environment(monkeypatch)
    runs = tmp_path / "dagster" / "runs"
    runs.mkdir(parents=True)
    if problem == "open to other users":
        runs.chmod(0o777)
    else:
        runs.chmod(0o700)
        os.chown(runs, 65534, 65534)  # the tests run as root here and in CI
    result = _run_missing_secret_job(tmp_path)
    assert not result.success
    message = _failure_message(result)
    assert f"run_directory {runs} " in message
    assert problem in message
    assert list(runs.iterdir()) == []  # nothing was made in it
