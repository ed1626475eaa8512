"""Rejected records and `max_rejected_ratio`; the API key never written anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_harness import (
    PROJECT_ROOT,
    PROJECT_SYS_DIR,
    copy_sample_warehouse,
    expected_profiles,
    mismatches,
    normalise_timestamp,
    read_warehouse,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

REASON = "BLACKLISTED_EXTERNAL_USER_ID"
RATIO_FAILURE = "above max_rejected_ratio"


def _refused_customer(warehouse: Path) -> tuple[str, tuple[str, str]]:
    """The customer halfway through the sync order (updated_at, id), and its sort key.

    Halfway, so STATE messages exist both before and after it (100 rows apart).
    """
    rows = sorted(read_warehouse(warehouse).values(), key=lambda r: (r.updated_at, r.customer_id))
    row = rows[len(rows) // 2]
    return row.customer_id, (row.updated_at, row.customer_id)


def test_rejected_record_is_written_with_its_reason_and_run_succeeds_under_ratio(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    refused, _ = _refused_customer(warehouse)
    sandbox = start_sandbox(errors={refused: REASON})
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            "TARGET_BRAZE_MAX_REJECTED_RATIO": "0.01",
            "TAP_PEAK_ATTRIBUTES_STATE_MESSAGE_FREQUENCY": "100",
        },
    )

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    rejects = pipeline.rejects()
    assert [r["identifier"] for r in rejects] == [refused]
    assert REASON in rejects[0]["reason"] or rejects[0]["error_type"] == REASON, rejects[0]
    assert rejects[0]["record"]["customer_id"] == refused
    expected = expected_profiles(warehouse)
    del expected[refused]
    problems = mismatches(expected, sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    report = pipeline.report()
    assert report["rejected"] == 1
    assert report["rejected_by_reason"] == {REASON: 1}
    # Within the allowed ratio the run completes: the bookmark reaches the last row.
    newest = max((r.updated_at, r.customer_id) for r in read_warehouse(warehouse).values())
    ts, last_id = pipeline.bookmark()
    assert (normalise_timestamp(ts), last_id) == newest


def test_rejection_above_ratio_fails_the_run_and_holds_state_before_it(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    refused, refused_key = _refused_customer(warehouse)
    sandbox = start_sandbox(errors={refused: REASON})
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            "TARGET_BRAZE_MAX_REJECTED_RATIO": "0",
            "TAP_PEAK_ATTRIBUTES_STATE_MESSAGE_FREQUENCY": "100",
        },
    )

    result = pipeline.run()

    assert result.returncode != 0, result.describe()
    failure_lines = [line for line in result.output.splitlines() if RATIO_FAILURE in line]
    assert len(failure_lines) == 1, result.describe()
    assert "target-braze: error: 1 of 1200 records" in failure_lines[0], failure_lines
    assert "Traceback" not in result.output, result.describe()
    assert [r["identifier"] for r in pipeline.rejects()] == [refused]
    assert pipeline.report()["outcome"] == "failed"
    # Meltano's stored bookmark may cover the rows before the refused one, never it.
    bookmark = pipeline.bookmark()
    assert pipeline.stored_state() == pipeline.meltano_state_get()
    if bookmark is not None:
        assert (normalise_timestamp(bookmark[0]), bookmark[1]) < refused_key, bookmark


# A key no other run uses, so finding it anywhere means this run wrote it.
DISTINCTIVE_KEY = "e2e-k3y-Zq8vT2mWx9Lr4Np7Hc6"


def _files_under(*roots: Path) -> list[Path]:
    files = [root for root in roots if root.is_file()]
    for root in roots:
        if root.is_dir() and not root.is_symlink():
            files.extend(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return files


def test_api_key_appears_in_no_output_log_or_file(
    start_sandbox, make_pipeline, tmp_path, meltano_env
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    # Retries and a rejection exercise the error paths too, at debug level.
    sandbox = start_sandbox(
        api_key=DISTINCTIVE_KEY,
        fault_429=0.1,
        fault_5xx=0.1,
        errors={"C0000007": REASON},
        seed=99,
    )
    pipeline = make_pipeline(
        sandbox,
        warehouse,
        settings={
            "TARGET_BRAZE_MAX_REJECTED_RATIO": "0.01",
            "LOGLEVEL": "DEBUG",
            "TARGET_BRAZE_LOGLEVEL": "DEBUG",
            "TAP_PEAK_ATTRIBUTES_LOGLEVEL": "DEBUG",
        },
    )

    result = pipeline.run("--log-level=debug")

    assert result.returncode == 0, result.describe()
    assert sandbox.stats()["by_status"].get("201", 0) > 0  # the key did authenticate
    assert "DEBUG" in result.output.upper()  # debug logging was really on
    assert DISTINCTIVE_KEY not in result.stdout, "API key in meltano's stdout"
    assert DISTINCTIVE_KEY not in result.stderr, "API key in meltano's stderr"
    # The session's own .meltano (run files, logs, system database; not the linked plugin
    # virtualenvs), the project's .meltano/logs and .meltano/run, output/ and tmp_path.
    sys_dir = Path(meltano_env["MELTANO_SYS_DIR_ROOT"])
    own = [p for p in sys_dir.iterdir() if p.name not in {"extractors", "loaders"}]
    searched = _files_under(
        tmp_path,
        PROJECT_ROOT / "output",
        PROJECT_SYS_DIR / "logs",
        PROJECT_SYS_DIR / "run",
        *own,
    )
    assert any(p.is_relative_to(sys_dir / "run") for p in searched)
    leaked = [str(p) for p in searched if DISTINCTIVE_KEY.encode() in p.read_bytes()]
    assert not leaked, f"API key written to: {leaked}"
