"""`peak_model_workflow_id`: a sync never reads a model output that is still being written."""

from __future__ import annotations

import datetime as dt

from tap_peak_attributes import sample
from test_model_runs import PATH, TOKEN, WORKFLOW, FakePeak, execution

FIRST_STAMP = dt.datetime(2026, 11, 21, 6, 0, tzinfo=dt.UTC)  # sample.generate's rows
MODEL_STAMP = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)  # sample.model_run's rows


def serve(httpserver, executions: list[dict]) -> FakePeak:
    fake = FakePeak(executions)
    httpserver.expect_request(PATH).respond_with_handler(fake)
    return fake


def guarded(url: str, httpserver) -> dict:
    return {
        "sqlalchemy_url": url,
        "peak_api_key": TOKEN,  # with the guard, the key only asks Peak about model runs
        "peak_model_workflow_id": str(WORKFLOW),
        "peak_api_url": httpserver.url_for("/").rstrip("/"),
    }


def test_rows_of_a_model_run_still_being_written_wait_for_the_next_sync(
    sqlite_url, run_cli, httpserver
):
    sample.generate(sqlite_url, 50, seed=1)
    changed = sample.model_run(sqlite_url, 10, seed=3)
    # The last success finished between the two stamps: the model run is still going.
    serve(httpserver, [execution(1, "Success", FIRST_STAMP, 60 * 24)])

    first = run_cli(guarded(sqlite_url, httpserver))

    assert first.returncode == 0, first.stderr
    assert len(first.ids()) == 40
    assert not set(changed) & set(first.ids())
    httpserver.clear()
    serve(httpserver, [execution(2, "Success", MODEL_STAMP - dt.timedelta(hours=1), 90)])
    second = run_cli(guarded(sqlite_url, httpserver), first.final_state)
    assert second.returncode == 0, second.stderr
    assert second.ids() == changed


def test_rows_written_after_the_last_successful_run_are_not_read_and_it_says_so(
    sqlite_url, run_cli, httpserver
):
    sample.generate(sqlite_url, 20, seed=1)
    serve(httpserver, [execution(1, "Success", FIRST_STAMP, 30)])
    first = run_cli(guarded(sqlite_url, httpserver))
    assert len(first.ids()) == 20
    sample.model_run(sqlite_url, 5, seed=3)  # written, but no model run has succeeded since

    second = run_cli(guarded(sqlite_url, httpserver), first.final_state)

    assert second.returncode == 0, second.stderr
    assert second.records() == []
    assert (
        f"Peak model workflow {WORKFLOW} last succeeded at 2026-11-21T06:30:00+00:00: rows "
        "updated after it wait for the next sync"
    ) in second.stderr


def test_a_workflow_without_any_success_reads_nothing(sqlite_url, run_cli, httpserver):
    sample.generate(sqlite_url, 20, seed=1)
    serve(
        httpserver,
        [execution(1, "Failed", FIRST_STAMP, 5), execution(2, "Running", FIRST_STAMP, None)],
    )

    run = run_cli(guarded(sqlite_url, httpserver))

    assert run.returncode == 0, run.stderr
    assert run.records() == []
    assert f"Peak model workflow {WORKFLOW} has no successful execution yet" in run.stderr


def test_a_refused_token_is_one_error_line_that_never_echoes_it(sqlite_url, run_cli, httpserver):
    sample.generate(sqlite_url, 5, seed=1)
    serve(httpserver, [execution(1, "Success", FIRST_STAMP, 30)])
    config = {**guarded(sqlite_url, httpserver), "peak_api_key": "wrong-token-abc"}

    run = run_cli(config)

    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("tap-peak-attributes: error:")
    assert "peak_api_key" in last
    assert "wrong-token-abc" not in run.stderr
    assert "Traceback" not in run.stderr
    assert run.records() == []
