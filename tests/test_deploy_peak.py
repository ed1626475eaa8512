"""The Peak specs (deploy/peak): they parse, hold the fields Peak's workflow and image APIs
document, and name the image's own command, which the project's Meltano accepts.

Field names are those of Peak's SDK (peak-sdk 1.29.0) for `peak workflows create` and
`peak images create`: a `body` with `steps` of `type: standard` (`imageId`, `command`,
`parents`, `executionParameters.parentStatus`, `parameters.env` / `parameters.secrets`),
`triggers` (cron or webhook), `metadata.allowConcurrentExecution`; an image of `type:
workflow` built from an upload with `buildDetails.dockerfilePath`.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from pipeline_harness import PROJECT_ROOT
from test_deploy_image import default_command, in_build_context, meltano_dry_run

PEAK = PROJECT_ROOT / "deploy" / "peak"
SYNC_STEP = "braze-sync"
# Settings whose value is a secret: never in `env`, only as tenant secrets.
SECRET_VARIABLES = {
    "TARGET_BRAZE_API_KEY",
    "TAP_PEAK_ATTRIBUTES_PEAK_API_KEY",
    "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL",
    "BRAZE_API_KEY",
    "PEAK_API_KEY",
    "PEAK_WAREHOUSE_URL",
    "PGPASSWORD",
}
MELTANO_VARIABLES = {"MELTANO_ENVIRONMENT", "MELTANO_STATE_BACKEND_URI"}


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((PEAK / name).read_text())
    assert isinstance(document, dict)
    assert set(document) <= {"body", "artifact"}, f"{name}: {sorted(document)}"
    return document


def declared_settings() -> dict[str, set[str]]:
    """Setting names of both plugins as meltano.yml declares them."""
    project = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text())
    plugins = project["plugins"]
    found = {}
    for kind in ("extractors", "loaders"):
        for plugin in plugins[kind]:
            found[plugin["name"]] = {setting["name"] for setting in plugin["settings"]}
    return found


def plugin_default(definition: str, setting: str) -> str | None:
    document = yaml.safe_load((PROJECT_ROOT / "plugins" / definition).read_text())
    for entry in document["settings"]:
        if entry["name"] == setting:
            return entry.get("value")
    return None


def sync_step(name: str) -> dict[str, Any]:
    steps = load(name)["body"]["steps"]
    assert SYNC_STEP in steps
    step = steps[SYNC_STEP]
    assert step["type"] == "standard"
    assert isinstance(step["imageId"], int)
    assert isinstance(step["imageVersionId"], int)
    return step


WORKFLOWS = ["workflow.yaml", "workflow-webhook.yaml"]


@pytest.mark.parametrize("name", [*WORKFLOWS, "image.yaml", "model-workflow-watcher.yaml"])
def test_every_spec_parses_with_a_body(name):
    assert isinstance(load(name)["body"], dict)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_concurrent_runs_are_off(name):
    assert load(name)["body"]["metadata"]["allowConcurrentExecution"] is False


def test_the_sync_runs_after_the_model_step_and_only_when_it_succeeded():
    body = load("workflow.yaml")["body"]
    step = sync_step("workflow.yaml")
    parents = step["parents"]
    assert parents
    assert all(parent in body["steps"] and parent != SYNC_STEP for parent in parents)
    model = body["steps"][parents[0]]
    assert model["type"] == "standard"
    assert model["command"]
    conditions = step["executionParameters"]["parentStatus"]
    assert conditions == [{"condition": "all-of", "parents": parents, "status": ["success"]}]
    assert body["triggers"][0]["cron"]


def test_the_webhook_variant_is_the_same_step_started_by_a_webhook():
    body = load("workflow-webhook.yaml")["body"]
    assert body["triggers"] == [{"webhook": True}]
    assert list(body["steps"]) == [SYNC_STEP]
    standalone = sync_step("workflow-webhook.yaml")
    assert "parents" not in standalone
    assert "executionParameters" not in standalone
    in_model_workflow = dict(sync_step("workflow.yaml"))
    in_model_workflow.pop("parents")
    in_model_workflow.pop("executionParameters")
    assert standalone == in_model_workflow


def test_the_model_workflow_calls_the_webhook_on_success_only():
    watchers = load("model-workflow-watcher.yaml")["body"]["watchers"]
    assert len(watchers) == 1
    assert watchers[0]["events"] == {"success": True, "fail": False}
    webhook = watchers[0]["webhook"]
    assert webhook["name"]
    assert webhook["url"].startswith("https://")
    assert isinstance(webhook["payload"], str)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_braze_key_and_the_peak_token_are_tenant_secrets_under_the_names_the_plugins_read(
    name,
):
    secrets = sync_step(name)["parameters"]["secrets"]
    assert {"BRAZE_API_KEY", "PEAK_API_KEY"} <= set(secrets)
    assert plugin_default("loaders/target-braze.yml", "api_key_env") == "BRAZE_API_KEY"
    # Declared once the tap's peak_api_key_env lands; its default must then agree.
    assert plugin_default("extractors/tap-peak-attributes.yml", "peak_api_key_env") in {
        None,
        "PEAK_API_KEY",
    }


@pytest.mark.parametrize("name", WORKFLOWS)
def test_settings_are_in_env_and_name_declared_settings_and_no_secret_is_there(name):
    env = sync_step(name)["parameters"]["env"]
    assert env
    settings = declared_settings()
    prefixes = {"TAP_PEAK_ATTRIBUTES_": "tap-peak-attributes", "TARGET_BRAZE_": "target-braze"}
    for variable, value in env.items():
        assert isinstance(value, str), f"{variable}: Peak's env values are strings"
        assert variable not in SECRET_VARIABLES, f"{variable} is a secret: use `secrets`"
        if variable in MELTANO_VARIABLES:
            continue
        prefix = next((p for p in prefixes if variable.startswith(p)), None)
        assert prefix, f"{variable} is neither a Meltano nor a plugin setting"
        setting = variable.removeprefix(prefix).lower()
        assert setting in settings[prefixes[prefix]], f"{variable}: no such setting"
    assert env["MELTANO_ENVIRONMENT"] == "prod"
    assert env["MELTANO_STATE_BACKEND_URI"].startswith("s3://")
    ledger = sa.engine.make_url(env["TARGET_BRAZE_LEDGER_URL"])
    assert ledger.get_backend_name() == "postgresql"
    assert ledger.password is None, "the ledger's password belongs in the PGPASSWORD secret"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_step_runs_the_images_own_command(name):
    assert shlex.split(sync_step(name)["command"]) == default_command()


def test_the_project_accepts_the_steps_command(meltano_env):
    result = meltano_dry_run(shlex.split(sync_step("workflow.yaml")["command"]), meltano_env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_from_the_dockerfile_with_its_ignore_file():
    spec = load("image.yaml")
    body = spec["body"]
    assert body["type"] == "workflow"
    assert body["name"]
    assert body["version"]
    build = body["buildDetails"]
    assert build["source"] == "upload"
    artifact = PROJECT_ROOT / spec["artifact"]["path"]
    context = artifact / build["context"]
    assert context.resolve() == PROJECT_ROOT
    dockerfile = context / build["dockerfilePath"]
    assert dockerfile.resolve() == (PROJECT_ROOT / "deploy" / "Dockerfile")
    ignore_files = [artifact / path for path in spec["artifact"]["ignore_files"]]
    assert [path.resolve() for path in ignore_files] == [
        PROJECT_ROOT / "deploy" / "Dockerfile.dockerignore"
    ]
    assert all(path.is_file() for path in ignore_files)
    # Peak zips what the ignore file leaves: the Dockerfile must be in the upload.
    assert in_build_context("deploy/Dockerfile")


def test_the_version_is_the_plugins_version():
    version = load("image.yaml")["body"]["version"]
    for plugin in ("tap-peak-attributes", "target-braze"):
        pyproject = (PROJECT_ROOT / plugin / "pyproject.toml").read_text()
        assert f'version = "{version}"' in pyproject, plugin
