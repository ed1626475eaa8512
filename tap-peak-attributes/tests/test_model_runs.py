"""Peak's workflow executions API, served like Peak does by a local HTTP server.

The stand-in answers as Peak's API does: the token raw in `Authorization` (anything else
is a 401), `statuses` filters, executions newest first in pages of `pageSize` with
`pageNumber` and `pageCount`, and 404 for a workflow it does not know.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import socket

import pytest
from tap_peak_attributes import model_runs
from tap_peak_attributes.errors import TapPeakError
from werkzeug import Request, Response

TOKEN = "eyJ-tenant-key-not-to-be-echoed"
WORKFLOW = 4821
PATH = f"/workflows/api/v1/workflows/executions/{WORKFLOW}"
T0 = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)


def execution(number: int, status: str, started: dt.datetime, minutes: float | None) -> dict:
    finished = None if minutes is None else started + dt.timedelta(minutes=minutes)
    return {
        "executionId": f"exec-{number}",
        "status": status,
        "executedAt": started.isoformat().replace("+00:00", "Z"),
        "finishedAt": None if finished is None else finished.isoformat().replace("+00:00", "Z"),
        "duration": None,
        "triggerType": "scheduled",
    }


class FakePeak:
    """The executions endpoint of one workflow; `requests` records what was asked."""

    def __init__(self, executions: list[dict]) -> None:
        self.executions = executions
        self.requests: list[dict] = []

    def __call__(self, request: Request) -> Response:
        self.requests.append(
            {"args": request.args.to_dict(flat=False), "auth": request.headers.get("Authorization")}
        )
        if request.headers.get("Authorization") != TOKEN:
            return Response(json.dumps({"message": "Unauthorized"}), status=401)
        statuses = request.args.getlist("statuses")
        chosen = [e for e in self.executions if not statuses or e["status"] in statuses]
        chosen.sort(key=lambda e: e["executedAt"], reverse=True)
        size = int(request.args.get("pageSize", 25))
        number = int(request.args.get("pageNumber", 1))
        body = {
            "executions": chosen[(number - 1) * size : number * size],
            "pageNumber": number,
            "pageSize": size,
            "pageCount": max(1, math.ceil(len(chosen) / size)),
            "executionsCount": len(chosen),
        }
        return Response(json.dumps(body), status=200, content_type="application/json")


@pytest.fixture
def peak(httpserver):
    def serve(executions: list[dict]) -> FakePeak:
        fake = FakePeak(executions)
        httpserver.expect_request(PATH).respond_with_handler(fake)
        return fake

    return serve


def latest(httpserver, after=None, token=TOKEN, workflow=WORKFLOW):
    return model_runs.latest_finished_at(
        token, workflow, after=after, override=httpserver.url_for("/").rstrip("/")
    )


def test_latest_successful_finish_is_returned(httpserver, peak):
    peak(
        [
            execution(1, "Success", T0, 30),
            execution(2, "Success", T0 + dt.timedelta(days=1), 45),
            execution(3, "Failed", T0 + dt.timedelta(days=2), 10),
        ]
    )
    assert latest(httpserver) == T0 + dt.timedelta(days=1, minutes=45)


def test_a_run_still_in_progress_does_not_count(httpserver, peak):
    peak(
        [
            execution(1, "Success", T0, 30),
            execution(2, "Running", T0 + dt.timedelta(days=1), None),
        ]
    )
    assert latest(httpserver) == T0 + dt.timedelta(minutes=30)


def test_token_goes_raw_in_authorization_and_only_successes_are_asked_for(httpserver, peak):
    fake = peak([execution(1, "Success", T0, 30)])
    latest(httpserver)
    assert fake.requests[0]["auth"] == TOKEN
    assert fake.requests[0]["args"]["statuses"] == ["Success"]
    assert "dateFrom" not in fake.requests[0]["args"]


def test_every_page_is_read_and_the_latest_finish_wins_not_the_latest_start(httpserver, peak):
    # 250 daily runs of 30 minutes, newest first: three pages of 100. The oldest one ran
    # for 400 days, so it finished last; it is on the last page.
    runs = [execution(n, "Success", T0 + dt.timedelta(days=n), 30) for n in range(1, 250)]
    long_one = execution(0, "Success", T0, 400 * 24 * 60)
    fake = peak([*runs, long_one])
    assert latest(httpserver) == T0 + dt.timedelta(days=400)
    assert [r["args"]["pageNumber"] for r in fake.requests] == [["1"], ["2"], ["3"]]


def test_the_status_is_checked_in_the_answer_too(httpserver):
    # A server that ignores `statuses` must not make a failed run count.
    body = {
        "executions": [
            execution(2, "Failed", T0 + dt.timedelta(days=1), 5),
            execution(1, "Success", T0, 30),
        ],
        "pageNumber": 1,
        "pageCount": 1,
    }
    httpserver.expect_request(PATH).respond_with_json(body)
    assert latest(httpserver) == T0 + dt.timedelta(minutes=30)


def test_only_finishes_after_the_instant_count(httpserver, peak):
    peak([execution(1, "Success", T0, 30), execution(2, "Success", T0 + dt.timedelta(days=1), 30)])
    second = T0 + dt.timedelta(days=1, minutes=30)
    assert latest(httpserver, after=T0) == second
    assert latest(httpserver, after=second - dt.timedelta(microseconds=1)) == second


def test_nothing_finished_after_the_instant_is_none(httpserver, peak):
    peak(
        [execution(1, "Success", T0, 30), execution(2, "Running", T0 + dt.timedelta(days=1), None)]
    )
    assert latest(httpserver, after=T0 + dt.timedelta(minutes=30)) is None


def test_no_execution_at_all_is_none(httpserver, peak):
    peak([])
    assert latest(httpserver) is None


def test_a_naive_instant_is_utc_and_offsets_are_normalised(httpserver):
    finished = "2026-11-20T08:30:00+02:00"  # 06:30 UTC
    body = {
        "executions": [{"executionId": "e", "status": "Success", "finishedAt": finished}],
        "pageNumber": 1,
        "pageCount": 1,
    }
    httpserver.expect_request(PATH).respond_with_json(body)
    naive_before = dt.datetime(2026, 11, 20, 6, 29)
    result = latest(httpserver, after=naive_before)
    assert result == dt.datetime(2026, 11, 20, 6, 30, tzinfo=dt.UTC)
    assert result.utcoffset() == dt.timedelta(0)
    assert latest(httpserver, after=dt.datetime(2026, 11, 20, 6, 30)) is None


def test_execution_id_comes_with_the_run(httpserver, peak):
    peak([execution(7, "Success", T0, 30)])
    run = model_runs.latest_successful_run(
        TOKEN, WORKFLOW, override=httpserver.url_for("/").rstrip("/")
    )
    assert run == model_runs.ModelRun("exec-7", T0 + dt.timedelta(minutes=30))


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_one_line_naming_the_setting_never_the_token(httpserver, status):
    httpserver.expect_request(PATH).respond_with_response(Response("no", status=status))
    with pytest.raises(TapPeakError) as raised:
        latest(httpserver)
    message = str(raised.value)
    assert "\n" not in message
    assert TOKEN not in message
    assert f"peak_api_key (HTTP {status})" in message
    assert str(WORKFLOW) in message


def test_the_error_names_where_the_key_came_from(httpserver):
    httpserver.expect_request(PATH).respond_with_response(Response("no", status=401))
    with pytest.raises(TapPeakError, match="ACME_PEAK_API_KEY"):
        model_runs.latest_finished_at(
            "wrong",
            WORKFLOW,
            override=httpserver.url_for("/").rstrip("/"),
            key_source="ACME_PEAK_API_KEY",
        )


def test_a_wrong_token_is_refused_by_the_stand_in_like_peak(httpserver, peak):
    peak([execution(1, "Success", T0, 30)])
    with pytest.raises(TapPeakError, match="refused"):
        latest(httpserver, token="Bearer " + TOKEN)


def test_an_unknown_workflow_says_so(httpserver):
    httpserver.expect_request("/workflows/api/v1/workflows/executions/999").respond_with_response(
        Response("{}", status=404)
    )
    with pytest.raises(TapPeakError, match="no workflow 999") as raised:
        latest(httpserver, workflow=999)
    assert TOKEN not in str(raised.value)


def test_a_server_error_is_one_line_with_the_status(httpserver):
    httpserver.expect_request(PATH).respond_with_response(Response("boom", status=502))
    with pytest.raises(TapPeakError, match="HTTP 502") as raised:
        latest(httpserver)
    assert "\n" not in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_an_answer_that_is_not_json_is_one_line(httpserver):
    httpserver.expect_request(PATH).respond_with_data("<html>proxy</html>")
    with pytest.raises(TapPeakError, match="did not answer JSON"):
        latest(httpserver)


def test_an_answer_without_executions_is_refused(httpserver):
    httpserver.expect_request(PATH).respond_with_json({"items": []})
    with pytest.raises(TapPeakError, match="without an executions list"):
        latest(httpserver)


def test_a_success_without_finished_at_is_refused(httpserver):
    body = {
        "executions": [execution(1, "Success", T0, None)],
        "pageNumber": 1,
        "pageCount": 1,
    }
    httpserver.expect_request(PATH).respond_with_json(body)
    with pytest.raises(TapPeakError, match=r"exec-1 .* without a finishedAt"):
        latest(httpserver)


def test_an_unreachable_api_is_one_line_without_the_token():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TapPeakError, match="cannot reach Peak's API") as raised:
        model_runs.latest_finished_at(TOKEN, WORKFLOW, override=f"http://127.0.0.1:{port}")
    assert TOKEN not in str(raised.value)


def test_plain_http_to_a_remote_host_is_refused_before_sending_the_token():
    with pytest.raises(TapPeakError, match="https"):
        model_runs.latest_finished_at(TOKEN, WORKFLOW, override="http://service.peak.ai")


def test_the_stage_selects_the_service_host():
    assert model_runs.base_url("beta") == "https://service.beta.peak.ai"
