"""The code location's configuration: the Meltano project, and one entry per workspace.

Each workspace is a Braze workspace the pipeline feeds. Read from the YAML file that
`PEAK_BRAZE_WORKSPACES` names (default: `workspaces.yml` beside this package). Everything
but secrets lives there; a secret is named, never given: each workspace maps the variable
a plugin reads (`BRAZE_API_KEY`, `PEAK_API_KEY`, ...) to the variable of Dagster's own
environment that holds this workspace's value.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import typing as t
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

CONFIG_VARIABLE = "PEAK_BRAZE_WORKSPACES"
DEPLOY_DAGSTER = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = DEPLOY_DAGSTER / "workspaces.yml"
#: Variables the plugins read their secrets from (target-braze's `api_key_env`,
#: tap-peak-attributes' `peak_api_key_env` and `sqlalchemy_url_env` defaults). Each is one
#: workspace's: a run gets only its own workspace's, never one set for Dagster as a whole.
PLUGIN_SECRET_VARIABLES = ("BRAZE_API_KEY", "PEAK_API_KEY", "PEAK_WAREHOUSE_URL")
#: Secret settings as Meltano variables: Meltano writes those to disk during a run (the
#: README's "Secrets: the production way"). A run never inherits them; a workspace may set
#: only the URLs among them, and only without a password (libpq reads PGPASSWORD).
SECRET_SETTING_VARIABLES = (
    "TARGET_BRAZE_API_KEY",
    "TAP_PEAK_ATTRIBUTES_PEAK_API_KEY",
    "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL",
)
URL_SETTING_VARIABLES = ("TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL", "TARGET_BRAZE_LEDGER_URL")
PEAK_TOKEN_VARIABLE = "PEAK_API_KEY"  # noqa: S105 - a variable's name, not a secret
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORKSPACE_KEYS = {
    "name",
    "environment",
    "state_id_suffix",
    "secrets",
    "env",
    "schedules",
    "model_workflow_id",
    "peak_stage",
    "peak_api_url",
    "sensor_interval_seconds",
}
_TOP_KEYS = {"project_dir", "plugins_dir", "run_directory", "meltano", "workspaces"}


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the file and the entry."""


@dataclass(frozen=True)
class Workspace:
    """One Braze workspace: its own state, schedule, secrets and, optionally, model sensor."""

    name: str
    environment: str
    state_id_suffix: str
    secrets: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    schedules: tuple[str, ...] = ()
    model_workflow_id: str | None = None
    peak_stage: str = "prod"
    peak_api_url: str | None = None
    sensor_interval_seconds: int = 300

    @property
    def ident(self) -> str:
        """The name as Dagster names things (letters, digits, underscores)."""
        return re.sub(r"[^A-Za-z0-9_]", "_", self.name)

    @property
    def state_id(self) -> str:
        """Meltano's state id of this workspace's pipeline."""
        return f"{self.environment}:tap-peak-attributes-to-target-braze:{self.state_id_suffix}"


@dataclass(frozen=True)
class Settings:
    """The whole configuration, paths resolved."""

    project_dir: Path
    plugins_dir: Path
    run_directory: Path
    meltano: str
    workspaces: tuple[Workspace, ...]
    source: Path

    @property
    def secret_sources(self) -> set[str]:
        """Every variable of Dagster's environment that holds some workspace's secret."""
        return {source for ws in self.workspaces for source in ws.secrets.values()}


def default_meltano() -> str:
    """The `meltano` beside this Python (a venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("meltano")
    if beside.exists():
        return str(beside)
    return shutil.which("meltano") or "meltano"


def default_run_directory() -> Path:
    """The current user's own base for run directories, checked private before each run.

    $XDG_RUNTIME_DIR (private, per user) if there is one, else a per-user name in the
    temporary directory.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "peak-braze-dagster"
    return Path(tempfile.gettempdir()) / f"peak-braze-dagster-{os.geteuid()}"


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and check the configuration file (default: `PEAK_BRAZE_WORKSPACES`)."""
    source = Path(path or os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG).resolve()
    try:
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"{source}: cannot read the workspaces file ({exc.strerror}); set {CONFIG_VARIABLE}"
        raise ConfigError(msg) from None
    except yaml.YAMLError as exc:
        msg = f"{source}: not YAML: {exc}"
        raise ConfigError(msg) from None
    if not isinstance(document, dict):
        msg = f"{source}: expected a mapping with `workspaces`"
        raise ConfigError(msg)
    _only(document, _TOP_KEYS, str(source))
    base = source.parent
    project_dir = (base / str(document.get("project_dir", "../.."))).resolve()
    if not (project_dir / "meltano.yml").is_file():
        msg = f"{source}: project_dir {project_dir} holds no meltano.yml"
        raise ConfigError(msg)
    plugins_dir = (project_dir / str(document.get("plugins_dir", ".meltano"))).resolve()
    run_directory = Path(document.get("run_directory") or default_run_directory())
    entries = document.get("workspaces")
    if not isinstance(entries, list) or not entries:
        msg = f"{source}: `workspaces` must be a non-empty list"
        raise ConfigError(msg)
    workspaces = tuple(
        _workspace(entry, f"{source}: workspaces[{n}]") for n, entry in enumerate(entries)
    )
    _unique(workspaces, source)
    return Settings(
        project_dir=project_dir,
        plugins_dir=plugins_dir,
        run_directory=(base / run_directory).resolve(),
        meltano=str(document.get("meltano") or default_meltano()),
        workspaces=workspaces,
        source=source,
    )


def _workspace(entry: t.Any, where: str) -> Workspace:
    if not isinstance(entry, dict):
        msg = f"{where}: expected a mapping"
        raise ConfigError(msg)
    _only(entry, _WORKSPACE_KEYS, where)
    for key in ("name", "environment", "state_id_suffix"):
        value = entry.get(key)
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            msg = f"{where}: `{key}` is required (letters, digits, '.', '_' or '-')"
            raise ConfigError(msg)
    secrets = _variables(entry.get("secrets") or {}, f"{where} ({entry['name']}).secrets")
    for plugin_variable, source in secrets.items():
        if not _VARIABLE.fullmatch(source):
            msg = f"{where}: secrets.{plugin_variable} must name a variable, not {source!r}"
            raise ConfigError(msg)
        if plugin_variable in SECRET_SETTING_VARIABLES:
            msg = (
                f"{where}: secrets.{plugin_variable}: Meltano writes that setting to disk; map "
                f"the variable the plugin reads instead ({', '.join(PLUGIN_SECRET_VARIABLES)})"
            )
            raise ConfigError(msg)
    env = _variables(entry.get("env") or {}, f"{where} ({entry['name']}).env")
    refused = {*PLUGIN_SECRET_VARIABLES, *SECRET_SETTING_VARIABLES, "PGPASSWORD"}
    leaked = sorted(
        key
        for key, value in env.items()
        if key in refused and not (key in URL_SETTING_VARIABLES and not _has_password(value))
    )
    if leaked:
        msg = f"{where}: {', '.join(leaked)} in `env`: secrets go in `secrets`, by variable name"
        raise ConfigError(msg)
    schedules = entry.get("schedules") or []
    if not isinstance(schedules, list) or not all(isinstance(s, str) for s in schedules):
        msg = f"{where}: `schedules` must be a list of meltano.yml schedule names"
        raise ConfigError(msg)
    workflow = entry.get("model_workflow_id")
    if workflow is not None and PEAK_TOKEN_VARIABLE not in secrets:
        msg = f"{where}: model_workflow_id needs secrets.{PEAK_TOKEN_VARIABLE} (Peak's API key)"
        raise ConfigError(msg)
    interval = entry.get("sensor_interval_seconds", 300)
    if not isinstance(interval, int) or interval < 1:
        msg = f"{where}: sensor_interval_seconds must be a positive integer"
        raise ConfigError(msg)
    return Workspace(
        name=entry["name"],
        environment=entry["environment"],
        state_id_suffix=entry["state_id_suffix"],
        secrets=secrets,
        env=env,
        schedules=tuple(schedules),
        model_workflow_id=None if workflow is None else str(workflow),
        peak_stage=str(entry.get("peak_stage") or "prod"),
        peak_api_url=entry.get("peak_api_url"),
        sensor_interval_seconds=interval,
    )


def _has_password(url: str) -> bool:
    """Whether a URL carries a password (`scheme://user:password@host/...`)."""
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return True


def _variables(value: t.Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        msg = f"{where}: expected a mapping of variable names to strings"
        raise ConfigError(msg)
    result = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _VARIABLE.fullmatch(key):
            msg = f"{where}: {key!r} is not a variable name"
            raise ConfigError(msg)
        if not isinstance(item, str | int | float | bool):
            msg = f"{where}.{key}: give a string (JSON for lists and objects)"
            raise ConfigError(msg)
        result[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return result


def _only(mapping: dict[str, t.Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        msg = f"{where}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        raise ConfigError(msg)


def _unique(workspaces: tuple[Workspace, ...], source: Path) -> None:
    seen: dict[str, str] = {}
    states: dict[str, str] = {}
    for ws in workspaces:
        if ws.ident in seen:
            msg = (
                f"{source}: workspaces {seen[ws.ident]!r} and {ws.name!r} share the name {ws.ident}"
            )
            raise ConfigError(msg)
        seen[ws.ident] = ws.name
        if ws.state_id in states:
            msg = (
                f"{source}: workspaces {states[ws.state_id]!r} and {ws.name!r} would share the "
                f"state {ws.state_id}: give each its own state_id_suffix"
            )
            raise ConfigError(msg)
        states[ws.state_id] = ws.name
