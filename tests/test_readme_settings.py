"""The settings tables of the READMEs are the plugins' own `--about`, never hand-kept."""

from __future__ import annotations

import subprocess
import sys

from pipeline_harness import PROJECT_ROOT


def test_readme_settings_tables_equal_what_the_plugins_say():
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "readme-settings"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
