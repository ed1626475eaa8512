"""One Dagster job per Braze workspace: `meltano run tap-peak-attributes target-braze`.

The op runs Meltano through `PipesSubprocessClient` (the external side is
`meltano_pipes.py`) and never passes `--force`: Dagster, not Meltano's run records, keeps
one sync per workspace at a time (the `peak-braze/workspace` run tag, limited to one run
per value in the instance's `concurrency.runs.tag_concurrency_limits`; see dagster.yaml).

Runs of different workspaces go side by side in one Meltano project without clashing:
each run gets its own Meltano system directory (`MELTANO_SYS_DIR_ROOT`: catalog, config
and state files under fixed names, run records), in which the project's installed plugin
venvs are linked, and its own run report, rejects and dry-run files. So Meltano's state
must live in a state backend (`MELTANO_STATE_BACKEND_URI`, s3:// in production), never in
the per-run system database.
"""

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetMaterialization,
    Failure,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Output,
    PipesSubprocessClient,
    job,
    op,
)

from peak_braze_dagster.workspaces import (
    PLUGIN_SECRET_VARIABLES,
    SECRET_SETTING_VARIABLES,
    Settings,
    Workspace,
)

WORKSPACE_TAG = "peak-braze/workspace"
TAP = "tap-peak-attributes"
TARGET = "target-braze"
LAUNCHER = Path(__file__).with_name("meltano_pipes.py")
STATE_BACKEND_VARIABLE = "MELTANO_STATE_BACKEND_URI"
#: Counts of target-braze's run report shown as metadata (all of them are integers).
REPORTED_COUNTS = (
    "records_in",
    "records_accepted",
    "objects_sent",
    "objects_accepted",
    "unchanged",
    "duplicates",
    "rejected",
    "data_points",
    "requests",
    "retries",
    "rate_limited",
    "server_errors",
    "connection_errors",
    "states_emitted",
)
#: Meltano settings of the caller's environment a run must not inherit: each run has its own.
_RUN_OWN = ("MELTANO_SYS_DIR_ROOT", "MELTANO_ENVIRONMENT", "MELTANO_RUN_ID")


def meltano_command(settings: Settings, workspace: Workspace, run_id: str) -> list[str]:
    """`meltano run --no-install --state-id-suffix S --run-id R tap target`, never --force.

    `--no-install`: a run only uses the plugins installed beforehand; it never installs
    into venvs other runs are using. `--run-id`: Meltano's run id is Dagster's.
    """
    return [
        settings.meltano,
        "run",
        "--no-install",
        "--state-id-suffix",
        workspace.state_id_suffix,
        "--run-id",
        run_id,
        TAP,
        TARGET,
    ]


def private_base(base: Path) -> Path:
    """`base`, created 0700 if missing; refused unless a real directory of ours, 0700."""
    missing = []
    current = base
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    status = base.lstat()
    problem = None
    if stat.S_ISLNK(status.st_mode) or not stat.S_ISDIR(status.st_mode):
        problem = "is not a directory (a symbolic link or a file)"
    elif status.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {status.st_uid})"
    elif stat.S_IMODE(status.st_mode) & 0o077:
        problem = f"is open to other users (mode {stat.S_IMODE(status.st_mode):o})"
    if problem:
        msg = (
            f"run_directory {base} {problem}: each run's Meltano system directory holds its "
            "config and state; chmod 700 a directory of this user, or set run_directory to one"
        )
        raise Failure(description=msg)
    return base


def run_directory(settings: Settings, run_id: str) -> Path:
    """A fresh Meltano system directory for one run, the installed plugins linked in.

    Made by `mkdtemp` (a new 0700 directory with an unpredictable name) under the private
    base `run_directory`: a fixed name in a shared place (`/tmp/peak-braze-dagster`) can be
    created first by another local user, who would then own the run's state and config.
    """
    base = private_base(settings.run_directory)
    directory = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=base))
    for plugin_type in ("extractors", "loaders"):
        installed = settings.plugins_dir / plugin_type
        if not installed.is_dir():
            msg = (
                f"no installed {plugin_type} in {settings.plugins_dir}: run `meltano install` "
                "in the project first (the image does it at build time)"
            )
            raise Failure(description=msg)
        (directory / plugin_type).symlink_to(installed, target_is_directory=True)
    return directory


def run_environment(
    settings: Settings, workspace: Workspace, sys_dir: Path, environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Variables set for Meltano, and the names withheld from it.

    Set: the workspace's environment, settings and secrets (read from the variables its
    `secrets` name), the run's own system directory and output paths. Withheld: every
    other workspace's secret variables, a plugin's secret variable this workspace does not
    map, and secret settings Meltano would write to disk.
    """
    output = settings.project_dir / "output" / workspace.name
    env = {
        "MELTANO_ENVIRONMENT": workspace.environment,
        "MELTANO_SYS_DIR_ROOT": str(sys_dir),
        "TARGET_BRAZE_REJECTED_RECORDS_PATH": str(output / "rejected-records.jsonl"),
        "TARGET_BRAZE_DRY_RUN_PATH": str(output / "braze-dry-run.jsonl"),
        **workspace.env,
        # The report is the run's own: the op reads it back as metadata.
        "TARGET_BRAZE_RUN_REPORT_PATH": str(sys_dir / "run-report.json"),
    }
    missing = []
    for plugin_variable, source in workspace.secrets.items():
        value = environ.get(source)
        if not value:
            missing.append(source)
        else:
            env[plugin_variable] = value
    if missing:
        msg = (
            f"workspace {workspace.name}: {', '.join(sorted(missing))} not set in the "
            "environment of Dagster's run worker"
        )
        raise Failure(description=msg)
    if not (env.get(STATE_BACKEND_VARIABLE) or environ.get(STATE_BACKEND_VARIABLE)):
        msg = (
            f"workspace {workspace.name}: set {STATE_BACKEND_VARIABLE} (s3://..., gs://... or "
            "azure://...; file://... only where a run is never killed, see the README): each "
            "run has its own Meltano system directory, so state in Meltano's system database "
            "would be lost after every run"
        )
        raise Failure(description=msg)
    withheld = (
        settings.secret_sources
        | set(PLUGIN_SECRET_VARIABLES)
        | set(SECRET_SETTING_VARIABLES)
        | set(_RUN_OWN)
    ) - set(env)
    return env, sorted(withheld)


def report_metadata(workspace: Workspace, message: Mapping[str, Any]) -> dict[str, Any]:
    """Dagster metadata of one run: the run report's counts, outcome and state id."""
    metadata: dict[str, Any] = {
        "workspace": workspace.name,
        "state_id": workspace.state_id,
        "meltano_exit_code": int(message.get("returncode", -1)),
    }
    report = message.get("run_report") or {}
    if report:
        metadata["outcome"] = str(report.get("outcome", ""))
        for key in REPORTED_COUNTS:
            if isinstance(report.get(key), int):
                metadata[key] = int(report[key])
        if isinstance(report.get("elapsed_seconds"), int | float):
            metadata["elapsed_seconds"] = float(report["elapsed_seconds"])
        if report.get("rejected_by_reason"):
            metadata["rejected_by_reason"] = MetadataValue.json(report["rejected_by_reason"])
    return metadata


def sync_job(settings: Settings, workspace: Workspace) -> JobDefinition:
    """The job syncing one workspace; its runs carry the workspace's concurrency tag."""

    @op(
        name=f"meltano_run_{workspace.ident}",
        description=f"meltano run {TAP} {TARGET} for Braze workspace {workspace.name}",
    )
    def meltano_run(
        context: OpExecutionContext, pipes_subprocess_client: PipesSubprocessClient
    ) -> Iterator[AssetMaterialization | Output[None]]:
        sys_dir = run_directory(settings, context.run_id)
        try:
            env, withheld = run_environment(settings, workspace, sys_dir, os.environ)
            invocation = pipes_subprocess_client.run(
                context=context,
                command=[sys.executable, str(LAUNCHER)],
                env=env,
                cwd=str(settings.project_dir),
                extras={
                    "command": meltano_command(settings, workspace, context.run_id),
                    "cwd": str(settings.project_dir),
                    "withhold": withheld,
                    "run_report_path": env["TARGET_BRAZE_RUN_REPORT_PATH"],
                },
            )
        finally:
            shutil.rmtree(sys_dir, ignore_errors=True)
        messages = invocation.get_custom_messages()
        if not messages:
            raise Failure(description="the Meltano launcher reported nothing")
        message = messages[-1]
        metadata = report_metadata(workspace, message)
        if message.get("returncode") != 0:
            lines = message.get("error_lines") or []
            reason = lines[-1] if lines else "see the run's logs"
            raise Failure(
                description=f"meltano run exited {message.get('returncode')}: {reason}",
                metadata=metadata,
            )
        yield AssetMaterialization(
            asset_key=["braze", workspace.name],
            description=f"Peak attributes synced to Braze workspace {workspace.name}",
            metadata=metadata,
        )
        yield Output(None, metadata=metadata)

    @job(
        name=f"sync_{workspace.ident}",
        description=(
            f"Peak -> Braze workspace {workspace.name}: meltano run {TAP} {TARGET} "
            f"(environment {workspace.environment}, state {workspace.state_id})"
        ),
        tags={WORKSPACE_TAG: workspace.name},
    )
    def sync() -> None:
        meltano_run()

    return sync
