"""Start a workspace's sync when Peak reports a new successful run of the model.

Each workspace with a `model_workflow_id` gets a sensor that asks Peak's workflow
executions API (`tap_peak_attributes.model_runs`, the client the tap uses) for the latest
successful execution finished after the sensor's cursor. A newer one requests exactly one
run, keyed by the execution, and moves the cursor to its `finishedAt`; nothing newer
requests nothing. Rows of a model run still in progress are not synced early: the run
only starts once Peak reports the execution successful.
"""

import datetime as dt
import os

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from tap_peak_attributes.model_runs import latest_successful_run

from peak_braze_dagster.sync import WORKSPACE_TAG
from peak_braze_dagster.workspaces import PEAK_TOKEN_VARIABLE, Workspace

MODEL_RUN_TAG = "peak-braze/model-execution"


def model_run_sensor(workspace: Workspace, job: JobDefinition) -> SensorDefinition:
    """The sensor of one workspace (which must have a `model_workflow_id`)."""
    workflow = workspace.model_workflow_id
    if workflow is None:
        msg = f"workspace {workspace.name} has no model_workflow_id"
        raise ValueError(msg)
    token_variable = workspace.secrets[PEAK_TOKEN_VARIABLE]

    @sensor(
        name=f"{workspace.ident}_model_runs",
        job=job,
        minimum_interval_seconds=workspace.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Syncs {workspace.name} when Peak workflow {workflow} (the model) finishes "
            "successfully"
        ),
    )
    def model_runs(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        token = os.environ.get(token_variable)
        if not token:
            msg = f"{token_variable} (Peak's API key for {workspace.name}) is not set"
            raise RuntimeError(msg)
        after = dt.datetime.fromisoformat(context.cursor) if context.cursor else None
        run = latest_successful_run(
            token,
            workflow,
            after=after,
            stage=workspace.peak_stage,
            override=workspace.peak_api_url,
            key_source=token_variable,
        )
        if run is None:
            since = f" after {context.cursor}" if context.cursor else ""
            return SkipReason(f"no successful run of Peak workflow {workflow} finished{since}")
        finished = run.finished_at.isoformat()
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=f"{workspace.name}:{run.execution_id}:{finished}",
                    tags={WORKSPACE_TAG: workspace.name, MODEL_RUN_TAG: run.execution_id},
                )
            ],
            cursor=finished,
        )

    return model_runs
