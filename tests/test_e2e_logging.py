"""Why a run failed, as Meltano shows it: at error level, with the traceback on request."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from pipeline_harness import MELTANO, PROJECT_ROOT, PROJECT_SYS_DIR, copy_sample_warehouse

pytestmark = pytest.mark.e2e

# Meltano's console lines: `<time> [error    ] <message> ...`
ERROR_LINE = re.compile(r"\[error\s*\]\s+(?:target-braze\s+)?target-braze: error: ")


def test_the_reason_a_run_failed_is_logged_at_error_level(start_sandbox, make_pipeline, tmp_path):
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, copy_sample_warehouse(tmp_path / "warehouse.sqlite"))
    pipeline.api_key = "a-key-braze-does-not-know"

    result = pipeline.run()

    assert result.returncode != 0
    lines = [line for line in result.output.splitlines() if ERROR_LINE.search(line)]
    assert lines, result.describe()
    assert "401" in lines[0]
    assert not any(
        "[info" in line and "target-braze: error:" in line for line in result.output.splitlines()
    )


def planted_project(tmp_path: Path) -> Path:
    """This project's meltano.yml in `tmp_path`, with a bug planted in target-braze.

    Meltano drops PYTHONPATH from a plugin's environment, so the loader's executable is a
    wrapper (an absolute path) that puts a `sitecustomize` on it, then runs the installed
    target: every record (RECORD or BATCH) raises inside the message path. The plugin
    virtualenvs are the project's (`--no-install`).
    """
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            from target_braze.read import MessagePath

            def deliver(self, routes, record, origin):
                raise ZeroDivisionError("planted by the test")

            MessagePath.deliver = deliver
            """
        )
    )
    wrapper = tmp_path / "target-braze-planted"
    real = PROJECT_SYS_DIR / "loaders" / "target-braze" / "venv" / "bin" / "target-braze"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{plant}" exec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    text = (PROJECT_ROOT / "meltano.yml").read_text()
    text = text.replace("    executable: target-braze\n", f"    executable: {wrapper}\n", 1)
    (project / "meltano.yml").write_text(text)
    return project


def test_meltano_log_level_debug_shows_the_traceback_of_an_unexpected_error(
    start_sandbox, make_pipeline, tmp_path
):
    project = planted_project(tmp_path)
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, copy_sample_warehouse(tmp_path / "warehouse.sqlite"))

    def run(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                MELTANO,
                *options,
                "run",
                "--no-install",
                "--state-id-suffix",
                pipeline.suffix,
                "tap-peak-attributes",
                "target-braze",
            ],
            cwd=project,
            env=pipeline.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    quiet = run()
    output = quiet.stdout + quiet.stderr
    assert quiet.returncode != 0
    assert "unexpected ZeroDivisionError: planted by the test" in output, output[-3000:]
    assert "Traceback" not in output
    assert "meltano --log-level debug" in output

    verbose = run("--log-level", "debug")
    output = verbose.stdout + verbose.stderr
    assert verbose.returncode != 0
    assert "ZeroDivisionError" in output
    assert 'raise ZeroDivisionError("planted by the test")' in output, output[-3000:]
