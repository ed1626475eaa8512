"""Rejects, dry run, run report and SQLite ledger: 0600 files in 0700 directories, no links."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from braze_target_harness import (
    customers,
    error_lines,
    record,
    run_target,
    schema_message,
    state,
    target_config,
)

BAD = record("c9", peak_churn_probability="high")  # rejected: the schema says number
MESSAGES = [schema_message(), *customers(2), BAD, state("s")]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_refused(run, setting: str, problem: str) -> None:
    assert run.returncode == 1, run.stderr
    [line] = error_lines(run.stderr)
    assert setting in line, line
    assert problem in line, line
    assert "Traceback" not in run.stderr
    assert run.states == []


def test_outputs_are_created_0600_in_0700_directories(braze, tmp_path):
    out = tmp_path / "made" / "by" / "target"
    config = target_config(
        braze,
        tmp_path,
        rejected_records_path=str(out / "rejects.jsonl"),
        run_report_path=str(out / "reports" / "report.json"),
        ledger_url=f"sqlite:///{out / 'ledger' / 'ledger.sqlite'}",
        max_rejected_ratio=0.5,
    )
    run = run_target(config, MESSAGES, tmp_path)
    assert run.returncode == 0, run.stderr
    for directory in (tmp_path / "made", out.parent, out, out / "reports", out / "ledger"):
        assert mode(directory) == 0o700, directory
    for file in (
        out / "rejects.jsonl",
        out / "reports" / "report.json",
        out / "ledger" / "ledger.sqlite",
    ):
        assert mode(file) == 0o600, file
    assert [p.name for p in (out / "reports").iterdir()] == ["report.json"]  # no temporary left


def test_an_existing_report_and_rejects_file_are_narrowed_to_0600(braze, tmp_path):
    for name in ("report.json", "rejects.jsonl"):
        (tmp_path / name).write_text("")
        (tmp_path / name).chmod(0o644)
    run = run_target(target_config(braze, tmp_path, max_rejected_ratio=0.5), MESSAGES, tmp_path)
    assert run.returncode == 0, run.stderr
    assert mode(tmp_path / "report.json") == 0o600
    assert mode(tmp_path / "rejects.jsonl") == 0o600


@pytest.mark.parametrize("setting", ["rejected_records_path", "run_report_path"])
def test_a_symlinked_output_is_refused_and_its_target_untouched(braze, tmp_path, setting):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    precious.chmod(0o644)
    link = tmp_path / "out.jsonl"
    link.symlink_to(precious)
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5, **{setting: str(link)})
    run = run_target(config, MESSAGES, tmp_path)
    assert_refused(run, setting, "is a symbolic link")
    assert precious.read_text() == "keep me\n"
    assert mode(precious) == 0o644
    assert braze.profile("c0") is None  # refused before anything was sent


def test_a_symlinked_dry_run_path_is_refused_and_its_target_untouched(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    link = tmp_path / "dry.jsonl"
    link.symlink_to(precious)
    config = {"dry_run": True, "dry_run_path": str(link), "rest_endpoint": "US-03"}
    run = run_target(config, MESSAGES, tmp_path)
    assert_refused(run, "dry_run_path", "is a symbolic link")
    assert precious.read_text() == "keep me\n"


def test_a_symlinked_sqlite_ledger_is_refused(braze, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    (tmp_path / "ledger.sqlite").symlink_to(precious)
    run = run_target(target_config(braze, tmp_path), MESSAGES[:3], tmp_path)
    assert_refused(run, "ledger_url", "is a symbolic link")
    assert precious.read_text() == "keep me\n"


def test_a_rejects_file_of_another_user_is_refused(braze, tmp_path):
    foreign = tmp_path / "rejects.jsonl"
    foreign.write_text("theirs\n")
    os.chown(foreign, 65534, 65534)  # the tests run as root in CI and here
    run = run_target(target_config(braze, tmp_path, max_rejected_ratio=0.5), MESSAGES, tmp_path)
    assert_refused(run, "rejected_records_path", "belongs to another user")
    assert foreign.read_text() == "theirs\n"
