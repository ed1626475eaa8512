"""Settings mistakes users make, as the target's CLI answers them: one line naming the
setting, the value (never a secret's) and the fix; an unknown name with the closest one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BASE = {
    "rest_endpoint": "http://127.0.0.1:9",
    "api_key": "k-0123456789",
    "send_only_changes": False,
    "deduplicate_events": False,
}


def run(tmp_path, extra: dict, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**BASE, **extra}))
    return subprocess.run(
        [sys.executable, "-m", "target_braze", "--config", str(path)],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("target-braze: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0].removeprefix("target-braze: error: ")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"max_rejected_ratio": "abc"},
            "setting max_rejected_ratio: 'abc' is not a number; give a number, e.g. 0.05",
        ),
        (
            {"retry_backoff_seconds": "1s"},
            "setting retry_backoff_seconds: '1s' is not a number; give a number, e.g. 0.05",
        ),
        (
            {"max_retries": "many"},
            "setting max_retries: 'many' is not a whole number; give a whole number, e.g. 8",
        ),
        ({"dry_run": "maybe"}, "setting dry_run: 'maybe' is not true or false"),
        ({"api_key": 12345678}, "setting api_key: (value hidden) is not text; give text"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_setting_value_and_expected_type(
    tmp_path, extra, expected
):
    line = error_line(run(tmp_path, extra))
    assert line.startswith(expected), line
    assert "12345678" not in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"rejected_record_path": "rejects.jsonl"},
            "setting rejected_record_path is not a target-braze setting; did you mean "
            "rejected_records_path? (a deliberate extra: list it in ignore_unknown_settings)",
        ),
        (
            {"stream_mappings": {"events": {"identifer_property": "user_id"}}},
            "setting stream_mappings.events.identifer_property is not a stream setting; did you "
            "mean identifier_property?",
        ),
        (
            {"completely_unrelated": 1},
            "setting completely_unrelated is not a target-braze setting; `target-braze --about` "
            "lists the settings (a deliberate extra: list it in ignore_unknown_settings)",
        ),
    ],
)
def test_an_unknown_setting_name_is_one_line_with_the_closest_known_one(tmp_path, extra, expected):
    assert error_line(run(tmp_path, extra)) == expected


def test_deliberate_extras_pass_when_listed(tmp_path):
    done = run(tmp_path, {"team": "crm", "ignore_unknown_settings": ["team"]})
    assert done.returncode == 0, done.stderr


def test_a_number_setting_from_an_environment_variable_is_checked_too(tmp_path):
    path = tmp_path / "base.json"
    path.write_text(json.dumps(BASE))
    done = subprocess.run(
        [sys.executable, "-m", "target_braze", "--config", str(path), "--config", "ENV"],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in __import__("os").environ.items() if not k.startswith("TARGET_BRAZE_")}
        | {"TARGET_BRAZE_MAX_REJECTED_RATIO": "abc"},
    )
    assert error_line(done).startswith("setting max_rejected_ratio: 'abc' is not a number")


def test_a_numeric_string_is_a_number(tmp_path):
    assert run(tmp_path, {"max_rejected_ratio": "0.05"}).returncode == 0
