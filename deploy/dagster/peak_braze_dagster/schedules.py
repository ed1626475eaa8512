"""Dagster schedules mirroring meltano.yml's: a workspace names the ones it follows.

meltano.yml's `schedules` give a job and an `interval` (`@daily`, `@weekly`, ... or a
cron expression). A workspace's `schedules: [peak-to-braze-daily]` becomes one Dagster
schedule of that workspace's job on the same cron, in UTC as Meltano's. Only schedules of
a Meltano job that is exactly `tap-peak-attributes target-braze` can be mirrored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dagster import DefaultScheduleStatus, JobDefinition, ScheduleDefinition

from peak_braze_dagster.sync import TAP, TARGET
from peak_braze_dagster.workspaces import ConfigError, Workspace

#: Meltano's interval presets as cron expressions (those of Airflow, which Meltano follows).
PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def meltano_schedules(project_dir: Path) -> dict[str, str]:
    """Name -> cron of every meltano.yml schedule running the pipeline."""
    project: dict[str, Any] = yaml.safe_load((project_dir / "meltano.yml").read_text()) or {}
    jobs = {entry["name"]: entry.get("tasks") or [] for entry in project.get("jobs") or []}
    schedules = {}
    for entry in project.get("schedules") or []:
        name, interval = entry.get("name"), str(entry.get("interval") or "")
        if entry.get("job") is not None:
            tasks = jobs.get(entry["job"], [])
        else:
            tasks = [f"{entry.get('extractor')} {entry.get('loader')}"]
        if tasks != [f"{TAP} {TARGET}"]:
            continue
        cron = PRESETS.get(interval, interval)
        if len(cron.split()) != 5:
            continue  # @once, @manual: nothing to mirror
        schedules[name] = cron
    return schedules


def workspace_schedules(
    workspace: Workspace, job: JobDefinition, available: dict[str, str]
) -> list[ScheduleDefinition]:
    """The Dagster schedules of one workspace's job."""
    result = []
    for name in workspace.schedules:
        if name not in available:
            msg = (
                f"workspace {workspace.name}: no meltano.yml schedule {name!r} of "
                f"`{TAP} {TARGET}`; known: {', '.join(sorted(available)) or 'none'}"
            )
            raise ConfigError(msg)
        result.append(
            ScheduleDefinition(
                name=f"{workspace.ident}_{name.replace('-', '_')}",
                job=job,
                cron_schedule=available[name],
                execution_timezone="UTC",
                default_status=DefaultScheduleStatus.RUNNING,
                description=f"meltano.yml's {name} ({available[name]}) for {workspace.name}",
            )
        )
    return result
