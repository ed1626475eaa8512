"""Bad input: one `tap-peak-attributes: error:` line, exit 1, no traceback, no secrets."""

from __future__ import annotations

import pytest
from tap_peak_attributes import sample

#: The bundled sample warehouse, as Meltano's dev environment allows it.
DEMO = {"allow_sample_warehouse": True}


def _assert_one_error_line(run, *expected: str) -> str:
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    errors = [
        line for line in run.stderr.splitlines() if line.startswith("tap-peak-attributes: error:")
    ]
    assert len(errors) == 1, run.stderr
    for text in expected:
        assert text in errors[0]
    return errors[0]


def test_missing_table_is_named_and_existing_tables_listed(run_cli):
    config = {**DEMO, "streams": [{"name": "x", "table": "churn_scores"}]}
    run = run_cli(config, None, "--discover")
    _assert_one_error_line(run, "'churn_scores' not found", "customer_attributes")


def test_missing_column_is_named_and_existing_columns_listed(run_cli):
    stream = {"name": "x", "table": "customer_attributes", "id_column": "cust_no"}
    config = {**DEMO, "streams": [stream]}
    run = run_cli(config)
    _assert_one_error_line(run, "id_column", "'cust_no' not found", "customer_id", "lifetime_value")


def test_unreachable_database_does_not_echo_the_password(run_cli):
    url = "postgresql+psycopg://peak:Sup3rS3cret@127.0.0.1:1/warehouse"
    run = run_cli({"sqlalchemy_url": url, "connect_timeout_seconds": 2})
    line = _assert_one_error_line(run, "cannot connect", "127.0.0.1:1")
    assert "Sup3rS3cret" not in run.stderr
    assert "***" in line


def test_missing_sqlite_file_is_reported(run_cli, tmp_path):
    run = run_cli({"sqlalchemy_url": f"sqlite:///{tmp_path}/nope.sqlite"})
    _assert_one_error_line(run, "not found", "nope.sqlite")


def test_both_url_and_peak_key_are_refused(run_cli):
    run = run_cli({"sqlalchemy_url": "sqlite://", "peak_api_key": "k-123-secret"})
    _assert_one_error_line(run, "either sqlalchemy_url or peak_api_key")
    assert "k-123-secret" not in run.stderr


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ({"name": "x", "table": "customer_attributes", "attribute_types": {"a": "float"}}, "float"),
        (
            {"name": "x", "table": "customer_attributes", "attributes": ["churn", "segment"]},
            "'churn' not found",
        ),
    ],
)
def test_bad_stream_settings_are_explained(run_tap, stream, expected):
    from tap_peak_attributes.errors import TapPeakError

    with pytest.raises(TapPeakError, match=expected):
        run_tap({**DEMO, "streams": [stream]})


def test_a_value_not_matching_its_declared_type_names_the_attribute(sqlite_url, run_tap):
    from tap_peak_attributes.errors import TapPeakError

    sample.generate(sqlite_url, 2)
    stream = {
        "name": "c",
        "table": "customer_attribute_changes",
        "shape": "long",
        "attribute_types": {"segment": "integer"},
    }
    with pytest.raises(TapPeakError, match="attribute 'segment'"):
        run_tap({"sqlalchemy_url": sqlite_url, "streams": [stream]})


def test_invalid_config_values_fail_validation_without_traceback(run_cli):
    run = run_cli({"streams": [{"name": "x", "table": "customer_attributes", "shape": "tall"}]})
    line = _assert_one_error_line(run)
    assert line == (
        "tap-peak-attributes: error: streams[x].shape: 'tall' is not allowed; "
        "use one of: wide, long"
    )
    assert "Config validation failed" not in run.stderr
