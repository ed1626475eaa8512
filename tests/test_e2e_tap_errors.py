"""tap-peak-attributes' bad input through `meltano run`: one error line, exit 1, no traceback,
no STATE stored, nothing sent to Braze.

Settings are given the way a Meltano user gives them, as `TAP_PEAK_ATTRIBUTES_*` variables
(JSON for the `array` and `object` kinds). Meltano relays the tap's stderr in its own log
lines, at the record's level (structured logging), and repeats it raw when discovery
fails; the tap's own line is the part after `tap-peak-attributes: error: `.
"""

from __future__ import annotations

import contextlib
import json
import re

import pytest
from pipeline_harness import (
    SAMPLE_WAREHOUSE,
    copy_sample_warehouse,
    expected_profiles,
    mismatches,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

ERROR = "tap-peak-attributes: error: "
# Meltano's own log lines: `<time> [<level>   ] <plugin> <message>`.
MELTANO_LINE = re.compile(r"^\S+ \[(\w+)\s*\] ")


def tap_error_lines(output: str) -> list[str]:
    """The tap's error messages in Meltano's output, each once, in order."""
    found: list[str] = []
    for raw in output.splitlines():
        # The tap logs structured (JSON) lines; Meltano repeats them raw when discovery fails.
        line = raw.strip()
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(ValueError):
                line = str(json.loads(line).get("message", line))
        if ERROR in line:
            message = line.split(ERROR, 1)[1].strip()
            # Meltano's structured-log suffix, when it adds one: `... cmd_type=...`.
            message = message.split(" cmd_type=")[0].strip()
            if message not in found:
                found.append(message)
    return found


CASES = {
    "an option outside its values": (
        {
            "TAP_PEAK_ATTRIBUTES_STREAMS": json.dumps(
                [{"name": "customer_attributes", "table": "customer_attributes", "shape": "wider"}]
            )
        },
        "streams[customer_attributes].shape: 'wider' is not allowed; use one of: wide, long",
    ),
    "a wrong type inside an object setting": (
        {
            "TAP_PEAK_ATTRIBUTES_BATCH_CONFIG": json.dumps(
                {"storage": {"root": "file:///var/lib/peak/batches"}, "batch_size": "many"}
            )
        },
        "batch_config.batch_size: 'many' is not a whole number; give a whole number, e.g. 60",
    ),
    "a stream map naming no stream": (
        {"TAP_PEAK_ATTRIBUTES_STREAM_MAPS": json.dumps({"customers": {"peak_segment": None}})},
        "stream_maps: 'customers' matches no stream of the tap (customer_attributes) and has no "
        "__source__; use a stream's name",
    ),
    "a missing table": (
        {"TAP_PEAK_ATTRIBUTES_STREAMS": json.dumps([{"name": "scores", "table": "churn_scores"}])},
        "table 'churn_scores' not found; available: customer_attribute_changes, "
        "customer_attributes",
    ),
}


@pytest.mark.parametrize(("settings", "expected"), CASES.values(), ids=CASES.keys())
def test_a_bad_tap_setting_ends_meltano_run_with_the_tap_s_one_line(
    start_sandbox, make_pipeline, tmp_path, settings, expected
):
    sandbox = start_sandbox()
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    pipeline = make_pipeline(sandbox, warehouse, settings=settings)

    result = pipeline.run()

    assert result.returncode == 1, result.describe()
    assert tap_error_lines(result.output) == [expected], result.describe()
    # Logged at error level, so anything filtering Meltano's logs by level sees it.
    levels = {
        match[1]
        for line in result.output.splitlines()
        if ERROR in line and (match := MELTANO_LINE.match(line))
    }
    assert levels == {"error"}, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert "Config validation failed" not in result.output, result.describe()
    assert pipeline.stored_state() == {}
    assert sandbox.stats()["requests"] == 0


def test_two_warehouse_variables_end_meltano_run_with_one_line_and_no_secret(
    start_sandbox, make_pipeline, tmp_path
):
    sandbox = start_sandbox()
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    key = "peak-key-never-printed-4711"
    pipeline = make_pipeline(
        sandbox,
        None,
        settings={"PEAK_WAREHOUSE_URL": f"sqlite:///{warehouse}", "PEAK_API_KEY": key},
    )

    result = pipeline.run()

    assert result.returncode == 1, result.describe()
    assert tap_error_lines(result.output) == [
        "both PEAK_WAREHOUSE_URL (sqlalchemy_url_env) and PEAK_API_KEY (peak_api_key_env) are "
        "set: unset one; the tap reads the warehouse from a URL or from Peak's API, not both"
    ], result.describe()
    assert key not in result.output
    assert "Traceback" not in result.output
    assert pipeline.stored_state() == {}


def test_a_production_run_with_no_warehouse_stops_instead_of_reading_the_sample(
    start_sandbox, make_pipeline
):
    sandbox = start_sandbox()
    # A forgotten PEAK_WAREHOUSE_URL in production: no warehouse setting at all.
    pipeline = make_pipeline(sandbox, None)

    result = pipeline.run(extra_env={"MELTANO_ENVIRONMENT": "prod"})

    assert result.returncode == 1, result.describe()
    assert tap_error_lines(result.output) == [
        "no warehouse configured (none of sqlalchemy_url, peak_api_key, PEAK_WAREHOUSE_URL, "
        "PEAK_API_KEY is set): export the warehouse URL in PEAK_WAREHOUSE_URL (or Peak's API "
        "key in PEAK_API_KEY); for the sample warehouse bundled with the tap (a demo), set "
        "allow_sample_warehouse to true"
    ], result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert sandbox.stats()["requests"] == 0


def test_the_dev_environment_reads_the_bundled_sample_when_no_warehouse_is_set(
    start_sandbox, make_pipeline
):
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, None)

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    assert "allow_sample_warehouse is true: reading the sample warehouse" in result.output
    expected = expected_profiles(SAMPLE_WAREHOUSE)
    assert len(expected) == 1200
    problems = mismatches(expected, sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
