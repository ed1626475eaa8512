"""The code location: `dagster dev -m peak_braze_dagster.definitions` (from deploy/dagster).

One job per workspace of the configuration (`PEAK_BRAZE_WORKSPACES`, default
workspaces.yml), its meltano.yml schedules and, with a `model_workflow_id`, its model-run
sensor.
"""

from __future__ import annotations

from dagster import Definitions, PipesSubprocessClient

from peak_braze_dagster.pipes_reader import CompleteLineFileMessageReader
from peak_braze_dagster.schedules import meltano_schedules, workspace_schedules
from peak_braze_dagster.sensors import model_run_sensor
from peak_braze_dagster.sync import sync_job
from peak_braze_dagster.workspaces import Settings, load_settings


def build_definitions(settings: Settings) -> Definitions:
    """Jobs, schedules and sensors of every configured workspace."""
    available = meltano_schedules(settings.project_dir)
    jobs, schedules, sensors = [], [], []
    for workspace in settings.workspaces:
        job = sync_job(settings, workspace)
        jobs.append(job)
        schedules.extend(workspace_schedules(workspace, job, available))
        if workspace.model_workflow_id is not None:
            sensors.append(model_run_sensor(workspace, job))
    return Definitions(
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={
            # Meltano's own output goes to Dagster's captured stdout as well as to its log;
            # messages are read whole lines only (Dagster's default reader tears them).
            "pipes_subprocess_client": PipesSubprocessClient(
                forward_stdio=True, message_reader=CompleteLineFileMessageReader()
            )
        },
    )


defs = build_definitions(load_settings())
