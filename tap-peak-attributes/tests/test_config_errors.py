"""Every configuration or input problem ends the tap with ONE `tap-peak-attributes: error:`
line naming the setting and what to do: no traceback (but at log level debug), and never
singer-sdk's raw `Config validation failed`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cli_forkserver
import pytest
from tap_peak_attributes import sample

PREFIX = "tap-peak-attributes: error: "
#: The bundled sample warehouse, as Meltano's dev environment allows it.
DEMO = {"allow_sample_warehouse": True}


def run_tap(tmp_path: Path, *args: str, env: dict[str, str] | None = None, config=None):
    command: list[str] = []
    if config is not None:
        path = tmp_path / "config.json"
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        command += ["--config", str(path)]
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("TAP_PEAK", "PEAK_", "LOGLEVEL"))
    }
    return cli_forkserver.run(
        "tap_peak_attributes", [*command, *args], env={**environment, **(env or {})}, timeout=120
    )


def assert_one_line(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "Config validation failed" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "error:" in line] == [PREFIX + expected]
    assert done.stderr.splitlines()[-1] == PREFIX + expected


CONFIG_CASES = {
    "an option outside its values": (
        {"streams": [{"name": "scores", "table": "customer_attributes", "shape": "wider"}]},
        "streams[scores].shape: 'wider' is not allowed; use one of: wide, long",
    ),
    "a wrong type": (
        {"lookback_window_minutes": "abc"},
        "lookback_window_minutes: 'abc' is not a whole number; give a whole number, e.g. 60",
    ),
    "a boolean as text": (
        {"flattening_enabled": "yes"},
        "flattening_enabled: 'yes' is not true or false; give true or false, e.g. true",
    ),
    "a list expected": (
        {"streams": "customer_attributes"},
        'streams: \'customer_attributes\' is not a list; give a list, e.g. ["a", "b"]',
    ),
    "a required key missing": (
        {"streams": [{"name": "scores"}]},
        "streams[scores]: 'table' is required",
    ),
    "two problems": (
        {"lookback_window_minutes": "abc", "state_message_frequency": "often"},
        "lookback_window_minutes: 'abc' is not a whole number; give a whole number, e.g. 60 "
        "(and 1 more problem)",
    ),
    "a batch option outside its values": (
        {"batch_config": {"encoding": {"compression": "zstd"}, "storage": {"root": "file:///x"}}},
        "batch_config.encoding.compression: 'zstd' is not allowed; use one of: none, gzip",
    ),
    "a stream map naming no stream": (
        {**DEMO, "stream_maps": {"customer_atributes": {"peak_segment": "__NULL__"}}},
        "stream_maps: 'customer_atributes' matches no stream of the tap (customer_attributes) "
        "and has no __source__; use a stream's name",
    ),
    "a misspelled setting": (
        {**DEMO, "lookback_window_minute": 5},
        "lookback_window_minute is not a tap-peak-attributes setting; did you mean "
        "lookback_window_minutes? (a deliberate extra: list it in ignore_unknown_settings)",
    ),
    "a misspelled stream setting": (
        {
            **DEMO,
            "streams": [
                {"name": "scores", "table": "customer_attributes", "updated_at_colum": "x"}
            ],
        },
        "streams[scores].updated_at_colum is not a stream setting; did you mean updated_at_column?",
    ),
    "a stream map that does not parse": (
        {**DEMO, "stream_maps": {"customer_attributes": {"x": "int(((peak_segment)"}}},
        "stream_maps: Failed to parse expression int(((peak_segment).",
    ),
}


@pytest.mark.parametrize(("config", "expected"), CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_a_config_problem_is_one_line_naming_the_setting(tmp_path, config, expected):
    assert_one_line(run_tap(tmp_path, config=config), expected)


def test_a_deliberate_extra_setting_passes_when_listed(tmp_path):
    config = {**DEMO, "team": "crm", "ignore_unknown_settings": ["team"]}
    done = run_tap(tmp_path, "--discover", config=config)
    assert done.returncode == 0, done.stderr


def test_a_wrong_type_from_an_environment_variable_is_one_line(tmp_path):
    done = run_tap(
        tmp_path, "--config", "ENV", env={"TAP_PEAK_ATTRIBUTES_LOOKBACK_WINDOW_MINUTES": "abc"}
    )
    assert_one_line(
        done,
        "lookback_window_minutes: 'abc' (from TAP_PEAK_ATTRIBUTES_LOOKBACK_WINDOW_MINUTES) is "
        "not a whole number; give one, e.g. 60",
    )


def test_a_stream_map_failing_on_a_record_names_the_stream_and_customer(tmp_path):
    config = {**DEMO, "stream_maps": {"customer_attributes": {"x": "int(peak_segment)"}}}
    assert_one_line(
        run_tap(tmp_path, config=config),
        "stream_maps: the map of stream customer_attributes failed on customer C0000001: "
        "ValueError: invalid literal for int() with base 10: 'occasional'",
    )


def test_config_state_and_catalog_files_that_are_not_json(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ')
    assert_one_line(
        run_tap(tmp_path, "--config", str(broken)),
        f"--config {broken} is not valid JSON (Expecting value: line 1 column 7 (char 6)); fix it",
    )
    assert_one_line(
        run_tap(tmp_path, "--state", str(broken), config={}),
        f"--state {broken} is not valid JSON (Expecting value: line 1 column 7 (char 6)); give "
        "a STATE file (as the tap writes it)",
    )
    assert_one_line(
        run_tap(tmp_path, "--catalog", str(broken), config={}),
        f"--catalog {broken} is not valid JSON (Expecting value: line 1 column 7 (char 6)); "
        "give a catalog (from --discover)",
    )
    missing = tmp_path / "missing.json"
    assert_one_line(
        run_tap(tmp_path, "--config", str(missing)),
        f"--config: File at '{missing}' was not found.",
    )


def test_the_traceback_is_shown_at_log_level_debug(tmp_path):
    config = {**DEMO, "stream_maps": {"customer_attributes": {"x": "int(peak_segment)"}}}
    done = run_tap(tmp_path, config=config, env={"TAP_PEAK_ATTRIBUTES_LOGLEVEL": "debug"})
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith(PREFIX + "stream_maps: the map of stream")


def test_without_a_warehouse_the_tap_stops_saying_what_to_set(tmp_path):
    assert_one_line(
        run_tap(tmp_path, config={"sqlalchemy_url_env": "ACME_WAREHOUSE_URL"}),
        "no warehouse configured (none of sqlalchemy_url, peak_api_key, ACME_WAREHOUSE_URL, "
        "PEAK_API_KEY is set): export the warehouse URL in ACME_WAREHOUSE_URL (or Peak's API "
        "key in PEAK_API_KEY); for the sample warehouse bundled with the tap (a demo), set "
        "allow_sample_warehouse to true",
    )


def test_without_a_warehouse_the_sample_is_read_only_when_allowed_and_that_is_said(tmp_path):
    done = run_tap(tmp_path, config=DEMO)
    assert done.returncode == 0, done.stderr
    assert (
        "No warehouse configured (none of sqlalchemy_url, peak_api_key, PEAK_WAREHOUSE_URL, "
        "PEAK_API_KEY is set) and allow_sample_warehouse is true: reading the sample warehouse "
        "bundled with the tap"
    ) in done.stderr
    assert done.stdout.count('"type":"RECORD"') == 1200


def test_a_configured_warehouse_wins_over_the_sample(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sample.generate(url, 3)
    done = run_tap(tmp_path, config={**DEMO, "sqlalchemy_url": url})
    assert done.returncode == 0, done.stderr
    assert "sample warehouse" not in done.stderr
    assert done.stdout.count('"type":"RECORD"') == 3


def test_a_file_that_is_not_a_database_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sample.generate(url, 3)
    (tmp_path / "w.sqlite").write_bytes(b"this is not a database" * 100)
    done = run_tap(tmp_path, config={"sqlalchemy_url": url})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(PREFIX + "cannot read customer_attributes at")


def test_every_query_value_of_the_warehouse_url_is_masked_in_the_error_line(tmp_path):
    secrets = {"sslpassword": "ssl-secret-1", "application_name": "app-secret-2"}
    query = "&".join(f"{key}={value}" for key, value in secrets.items())
    url = f"postgresql+psycopg://u:pw-secret-3@127.0.0.1:1/db?{query}"
    done = run_tap(tmp_path, "--discover", config={"sqlalchemy_url": url})
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith(PREFIX)]
    assert "cannot connect to the warehouse at postgresql+psycopg://u:***@127.0.0.1:1/db?" in line
    for secret in [*secrets.values(), "pw-secret-3"]:
        assert secret not in done.stderr + done.stdout
