"""When Peak's model last finished successfully, from Peak's workflow executions API.

A sync must never read a model output that is still being written. Peak runs the model as
a workflow; an execution that ended with status `Success` has finished writing, so rows
updated at or before its `finishedAt` are complete. One paged GET, made with `requests`
(the `peak-sdk` package pins old dependencies), the token raw as for the credentials:

    GET {base}/workflows/api/v1/workflows/executions/{workflowId}?statuses=Success
        &pageSize=100&pageNumber=N
    Authorization: <token>            (raw: no "Bearer")

The answer holds `executions` (each with `executionId`, `status`, `executedAt`,
`finishedAt`) and the paging fields `pageNumber` and `pageCount`. Peak returns the last
90 days unless `dateFrom` is given. `dateFrom` filters on when an execution started, so it
is not used: a long run that started before the instant and finished after it still counts.

Used by the tap (`peak_model_workflow_id`) and by the Dagster sensor in `deploy/dagster`.
"""

from __future__ import annotations

import datetime as dt
import typing as t
from dataclasses import dataclass

from tap_peak_attributes.errors import TapPeakError
from tap_peak_attributes.peak_api import base_url, get_json

EXECUTIONS_PATH = "/workflows/api/v1/workflows/executions/{workflow_id}"
SUCCESS = "Success"
PAGE_SIZE = 100
#: A guard against a server that never reports its last page (100 pages: 10,000 runs).
MAX_PAGES = 100


@dataclass(frozen=True)
class ModelRun:
    """One successful execution of the model's workflow."""

    execution_id: str
    finished_at: dt.datetime


def latest_successful_run(
    api_key: str,
    workflow_id: str | int,
    *,
    after: dt.datetime | None = None,
    stage: str = "prod",
    override: str | None = None,
    timeout: float = 30,
    key_source: str = "peak_api_key",
) -> ModelRun | None:
    """The successful execution that finished last, if it finished after `after`.

    `None` when no successful execution finished after `after` (or at all, without it).
    A naive `after` is taken as UTC. `key_source` names where the token came from (the
    setting or variable), for the error line when Peak refuses it; the token itself never
    appears in an error.
    """
    floor = _as_utc(after) if after is not None else None
    latest: ModelRun | None = None
    executions = _successful_executions(
        api_key, workflow_id, stage=stage, override=override, timeout=timeout, key_source=key_source
    )
    for execution in executions:
        run = _model_run(execution, workflow_id)
        if floor is not None and run.finished_at <= floor:
            continue
        if latest is None or run.finished_at > latest.finished_at:
            latest = run
    return latest


def latest_finished_at(
    api_key: str,
    workflow_id: str | int,
    *,
    after: dt.datetime | None = None,
    stage: str = "prod",
    override: str | None = None,
    timeout: float = 30,
    key_source: str = "peak_api_key",
) -> dt.datetime | None:
    """`finishedAt` (aware, UTC) of the latest successful execution after `after`, or None."""
    run = latest_successful_run(
        api_key,
        workflow_id,
        after=after,
        stage=stage,
        override=override,
        timeout=timeout,
        key_source=key_source,
    )
    return None if run is None else run.finished_at


def _successful_executions(
    api_key: str,
    workflow_id: str | int,
    *,
    stage: str,
    override: str | None,
    timeout: float,
    key_source: str,
) -> t.Iterator[t.Mapping[str, t.Any]]:
    """Every execution Peak lists as successful, page by page."""
    base = base_url(stage, override)
    url = base + EXECUTIONS_PATH.format(workflow_id=workflow_id)
    page = 1
    while True:
        answer = _get_page(url, base, api_key, page, timeout, key_source, workflow_id)
        executions = answer.get("executions")
        if not isinstance(executions, list):
            msg = "Peak's workflows API answered without an executions list"
            raise TapPeakError(msg)
        for execution in executions:
            # Filtered again here: the answer is what decides, not what was asked for.
            if isinstance(execution, dict) and execution.get("status") == SUCCESS:
                yield execution
        page_count = answer.get("pageCount")
        if not executions or not isinstance(page_count, int) or page >= min(page_count, MAX_PAGES):
            return
        page += 1


def _get_page(
    url: str,
    base: str,
    api_key: str,
    page: int,
    timeout: float,
    key_source: str,
    workflow_id: str | int,
) -> dict[str, t.Any]:
    return get_json(
        url,
        {"statuses": SUCCESS, "pageSize": str(PAGE_SIZE), "pageNumber": str(page)},
        api_key,
        api="workflows",
        base=base,
        timeout=timeout,
        refused=(
            f"Peak refused {key_source} (HTTP {{status}}) when asked for the runs of workflow "
            f"{workflow_id}: the key is wrong, expired (tenant API keys last 3 months) or "
            "lacks access to workflows"
        ),
        not_found=(
            f"Peak knows no workflow {workflow_id} (HTTP 404): check the model's workflow id"
        ),
    )


def _model_run(execution: t.Mapping[str, t.Any], workflow_id: str | int) -> ModelRun:
    execution_id = str(execution.get("executionId") or execution.get("id") or "?")
    finished = execution.get("finishedAt")
    if not isinstance(finished, str) or not finished:
        msg = (
            f"Peak reports execution {execution_id} of workflow {workflow_id} as successful "
            "but without a finishedAt"
        )
        raise TapPeakError(msg)
    try:
        finished_at = dt.datetime.fromisoformat(finished)
    except ValueError:
        msg = (
            f"Peak reports execution {execution_id} of workflow {workflow_id} with an "
            f"unreadable finishedAt {finished!r}"
        )
        raise TapPeakError(msg) from None
    return ModelRun(execution_id, _as_utc(finished_at))


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
