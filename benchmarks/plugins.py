"""Where the measured programs live: the plugins' Meltano venvs, and a private Meltano.

Every tap and target process is measured from the venv it really runs in under Meltano
(`.meltano/<type>/<plugin>/venv`): start-up there costs ~0.4 CPU-s, less than in the
repository's `.venv`, which also holds numpy, matplotlib and the test tools. `meltano`
itself runs from `.venv` (that is where the project installs it).

Benchmark runs of `meltano run` get their own Meltano system directory (the plugin venvs
linked in, as `tests/pipeline_harness.py` does) and a `file://` state backend, so they
never share `.meltano/run/` or `meltano.db` with anyone else's run of the project.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SYS_DIR = ROOT / ".meltano"
TAP = "tap-peak-attributes"
TARGET = "target-braze"
TAP_VENV = SYS_DIR / "extractors" / TAP / "venv"
TARGET_VENV = SYS_DIR / "loaders" / TARGET / "venv"
# The caller's plugin and Meltano settings must not leak into a measured run.
_SCRUBBED_PREFIXES = ("TAP_", "TARGET_", "MELTANO_")


def tool(name: str) -> str:
    """A console script of the venv running this benchmark (meltano, peak-sample)."""
    path = BIN / name
    return str(path) if path.exists() else name


def ensure_installed() -> None:
    """`meltano install` once, if the project's plugin venvs do not exist yet."""
    if (TAP_VENV / "bin" / TAP).exists() and (TARGET_VENV / "bin" / TARGET).exists():
        return
    subprocess.run([tool("meltano"), "install"], cwd=ROOT, check=True, capture_output=True)


def target_braze() -> str:
    """target-braze's console script in its Meltano venv."""
    ensure_installed()
    return str(TARGET_VENV / "bin" / TARGET)


def target_python() -> str:
    """The Python of target-braze's Meltano venv (singer-sdk and msgspec: the floor's too)."""
    ensure_installed()
    return str(TARGET_VENV / "bin" / "python")


def tap() -> str:
    """tap-peak-attributes' console script in its Meltano venv."""
    ensure_installed()
    return str(TAP_VENV / "bin" / TAP)


def private_meltano_directory(directory: Path) -> Path:
    """A Meltano system directory of this benchmark, sharing the installed plugin venvs."""
    ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    for plugin_type in ("extractors", "loaders"):
        link = directory / plugin_type
        if not link.exists():
            link.symlink_to(SYS_DIR / plugin_type, target_is_directory=True)
    return directory


def meltano_environment(sys_dir: Path, state_dir: Path) -> dict[str, str]:
    """The caller's environment without plugin or Meltano settings, private Meltano dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.pop("PYTHONPATH", None)
    env["MELTANO_SYS_DIR_ROOT"] = str(private_meltano_directory(sys_dir))
    env["MELTANO_STATE_BACKEND_URI"] = state_dir.as_uri()
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["MELTANO_ENVIRONMENT"] = "dev"
    return env


def clean_environment() -> dict[str, str]:
    """The caller's environment without plugin or Meltano settings (a plugin run alone)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.pop("PYTHONPATH", None)
    return env


def git_tree() -> dict[str, object]:
    """The commit measured, and which plugin files differ from it (the venvs are editable)."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout

    status = git("status", "--porcelain", "--", TAP, TARGET, "meltano.yml")
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_plugin_files": changed,
    }
