"""target-braze in somebody else's Meltano project, as the README tells them to add it.

A project made by `meltano init` outside this repository adds target-braze with
`meltano add --from-ref plugins/loaders/target-braze.yml` (pip_url: this checkout, through
PEAK_BRAZE_CHECKOUT) and a third-party tap installed from the package index
(tap-spreadsheets, reading a CSV file), then runs `meltano run` against the Braze sandbox
with the API key given only through BRAZE_API_KEY, the variable `api_key_env` names.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from braze_sandbox.testing import SandboxProcess
from pipeline_harness import MELTANO, PROJECT_ROOT, built_once

pytestmark = pytest.mark.e2e

TARGET_DEFINITION = PROJECT_ROOT / "plugins" / "loaders" / "target-braze.yml"
THIRD_PARTY_TAP = "tap-spreadsheets"
# A custom definition (Meltano Hub is unreachable here), the package from the index.
THIRD_PARTY_TAP_DEFINITION = {
    "name": THIRD_PARTY_TAP,
    "namespace": "tap_spreadsheets",
    "pip_url": "tap-spreadsheets==1.1.2",
    "executable": THIRD_PARTY_TAP,
    "capabilities": ["catalog", "discover", "state", "about", "stream-maps"],
    "settings": [{"name": "files", "kind": "array", "description": "Files to read."}],
}
STREAM = "app_users"
USERS = 120  # two /users/track requests of at most 75 objects
PLANS = ("free", "pro", "team")
CITIES = ("Lisbon", "Porto, PT", "São Paulo", 'The "Hague"', "Zürich")
# Settings and secrets of the caller's shell must not reach the other project.
_SCRUBBED_PREFIXES = ("TAP_", "TARGET_", "MELTANO_")
_SCRUBBED = {"BRAZE_API_KEY", "PEAK_API_KEY", "PEAK_WAREHOUSE_URL", "PEAK_BRAZE_CHECKOUT"}
BRAZE_KEY = "fresh-project-k3y-7Yq2Lm9Vw"
PROJECT_NAME = "their-project"


@dataclass
class FreshProject:
    """A Meltano project of its own, outside the repository, driven by the repo's Meltano."""

    root: Path
    env: dict[str, str]

    def meltano(
        self, *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`meltano <args>` in the project; fails the test unless it exits 0."""
        result = subprocess.run(
            [MELTANO, *args],
            cwd=self.root,
            env=self.env | (extra_env or {}),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, (
            f"meltano {' '.join(args)}: exit {result.returncode}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
        return result

    def configure(self, plugin_type: str, name: str, values: dict[str, Any]) -> None:
        """Set plugin settings in meltano.yml, as `meltano config set` would write them (in
        the plugin's `config`), without a Meltano start-up per setting."""
        path = self.root / "meltano.yml"
        project = yaml.safe_load(path.read_text(encoding="utf-8"))
        (entry,) = [p for p in project["plugins"][plugin_type] if p["name"] == name]
        entry.setdefault("config", {}).update(values)
        path.write_text(yaml.safe_dump(project, sort_keys=False), encoding="utf-8")

    def plugin(self, plugin_type: str, name: str) -> dict[str, Any]:
        """The plugin's entry in the project's meltano.yml."""
        project = yaml.safe_load((self.root / "meltano.yml").read_text(encoding="utf-8"))
        (entry,) = [p for p in project["plugins"][plugin_type] if p["name"] == name]
        return entry


def _clean_environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key not in _SCRUBBED
    }
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    # The target definition's pip_url is ${PEAK_BRAZE_CHECKOUT}/target-braze[postgres].
    env["PEAK_BRAZE_CHECKOUT"] = str(PROJECT_ROOT)
    return env


def _install_fresh_project(parent: Path) -> None:
    """`meltano init`, then target-braze and the third-party tap added (and installed)."""
    env = _clean_environment()
    init = subprocess.run(
        [MELTANO, "init", PROJECT_NAME, "--no_usage_stats"],
        cwd=parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    project = FreshProject(parent / PROJECT_NAME, env)
    project.meltano("config", "set", "meltano", "venv.backend", "uv")
    tap_definition = parent / f"{THIRD_PARTY_TAP}.yml"
    tap_definition.write_text(yaml.safe_dump(THIRD_PARTY_TAP_DEFINITION), encoding="utf-8")

    project.meltano(
        "add", "--plugin-type", "loader", "target-braze", "--from-ref", str(TARGET_DEFINITION)
    )
    project.meltano(
        "add", "--plugin-type", "extractor", THIRD_PARTY_TAP, "--from-ref", str(tap_definition)
    )


@pytest.fixture(scope="session")
def installed_fresh_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as `meltano init` and the two `meltano add` left it: made (and its
    plugins installed) once per test session, whichever xdist worker asks first."""
    parent = built_once(tmp_path_factory.getbasetemp(), "another-team", _install_fresh_project)
    assert not parent.resolve().is_relative_to(PROJECT_ROOT)
    return parent / PROJECT_NAME


@pytest.fixture
def fresh_project(installed_fresh_project: Path, tmp_path: Path) -> FreshProject:
    """A test's own copy of the installed project: its meltano.yml, lock files and system
    database are its own; the plugin venvs are the installed ones, linked in (the same
    files `meltano add` installed, so nothing is installed again)."""
    root = tmp_path / PROJECT_NAME
    shutil.copytree(installed_fresh_project, root, ignore=shutil.ignore_patterns(".meltano"))
    (root / ".meltano").mkdir()
    for plugin_type in ("extractors", "loaders"):
        (root / ".meltano" / plugin_type).symlink_to(
            installed_fresh_project / ".meltano" / plugin_type, target_is_directory=True
        )
    return FreshProject(root, _clean_environment())


def _installed_about(project: FreshProject) -> dict[str, Any]:
    executable = project.root / ".meltano" / "loaders" / "target-braze" / "venv" / "bin"
    result = subprocess.run(
        [str(executable / "target-braze"), "--about", "--format=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def test_target_added_from_its_definition_declares_every_setting_the_installed_target_has(
    fresh_project,
):
    about = _installed_about(fresh_project)

    loader = fresh_project.plugin("loaders", "target-braze")

    assert loader["pip_url"] == "${PEAK_BRAZE_CHECKOUT}/target-braze[postgres]"
    declared = {setting["name"]: setting for setting in loader["settings"]}
    assert list(declared) == list(about["settings"]["properties"])
    secret = {n for n, s in about["settings"]["properties"].items() if s.get("secret")}
    assert {n for n, s in declared.items() if s.get("sensitive")} == secret
    assert "api_key" in secret
    assert all(setting.get("kind") for setting in declared.values()), declared


def test_target_added_from_its_definition_reads_each_kind_of_setting_from_its_variable(
    fresh_project,
):
    settings = {
        "TARGET_BRAZE_API_KEY": "key-from-the-variable",  # string, sensitive
        "TARGET_BRAZE_MAX_RETRIES": "3",  # integer
        "TARGET_BRAZE_MAX_REJECTED_RATIO": "0.05",  # number, declared as a string
        "TARGET_BRAZE_DRY_RUN": "true",  # boolean
        "TARGET_BRAZE_IDENTIFIER_TYPE": "user_alias",  # options
        "TARGET_BRAZE_INCLUDE_PROPERTIES": '["plan", "seats"]',  # array
        "TARGET_BRAZE_STREAM_MAPPINGS": '{"app_events": {"object_type": "events"}}',  # object
    }

    printed = fresh_project.meltano(
        "config", "--unsafe", "print", "target-braze", "--format", "json", extra_env=settings
    )

    config = json.loads(printed.stdout)
    assert config["api_key"] == "key-from-the-variable"
    assert config["max_retries"] == 3
    assert config["max_rejected_ratio"] == "0.05"
    assert config["dry_run"] is True
    assert config["identifier_type"] == "user_alias"
    assert config["include_properties"] == ["plan", "seats"]
    assert config["stream_mappings"] == {"app_events": {"object_type": "events"}}


def _write_users_csv(path: Path) -> list[dict[str, str]]:
    rng = random.Random(11)
    users = [
        {
            "user_id": f"csv-user-{n:03d}",
            "email": f"csv.user{n:03d}@example.com",
            "plan": rng.choice(PLANS),
            "seats": str(rng.randint(1, 500)),
            "city": rng.choice(CITIES),
        }
        for n in range(1, USERS + 1)
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(users[0]))
        writer.writeheader()
        writer.writerows(users)
    return users


def test_csv_rows_of_a_third_party_tap_arrive_in_braze_with_the_key_only_in_braze_api_key(
    fresh_project, tmp_path
):
    users = _write_users_csv(tmp_path / "users.csv")
    files = [
        {
            "path": str(tmp_path / "users.csv"),
            "format": "csv",
            "table_name": STREAM,
            "primary_keys": ["user_id"],
        }
    ]
    project = fresh_project
    project.meltano("config", "set", THIRD_PARTY_TAP, "files", json.dumps(files))
    sandbox = SandboxProcess(api_key=BRAZE_KEY).start()
    try:
        # What their meltano.yml says: where Braze is and how rows map, never the key.
        project.meltano("config", "set", "target-braze", "rest_endpoint", sandbox.url)
        project.meltano("config", "set", "target-braze", "identifier_property", "user_id")
        project.meltano(
            "config",
            "set",
            "target-braze",
            "include_properties",
            json.dumps(["email", "plan", "seats", "city"]),
        )
        project.meltano(
            "config",
            "set",
            "target-braze",
            "ledger_url",
            f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        )

        project.meltano(
            "run", THIRD_PARTY_TAP, "target-braze", extra_env={"BRAZE_API_KEY": BRAZE_KEY}
        )

        profiles = {profile["external_id"]: profile for profile in sandbox.profiles()}
        requests = sandbox.stats()["by_status"]
    finally:
        sandbox.stop()
    assert requests == {"201": 2}, requests
    assert sorted(profiles) == [user["user_id"] for user in users]
    problems = []
    for user in users:
        profile = profiles[user["user_id"]]
        expected = {"plan": user["plan"], "seats": user["seats"], "city": user["city"]}
        if profile.get("email") != user["email"]:
            problems.append(f"{user['user_id']}: email {profile.get('email')!r}")
        if profile.get("custom_attributes") != expected:
            problems.append(f"{user['user_id']}: {profile.get('custom_attributes')} != {expected}")
    assert not problems, "\n".join(problems[:20])
    assert BRAZE_KEY not in (project.root / "meltano.yml").read_text(encoding="utf-8")


def test_csv_values_are_typed_and_a_json_column_becomes_event_properties(fresh_project, tmp_path):
    """The README's CSV example: every CSV value is text; property_types sends a score as a
    number, a flag as a boolean and a date as a time, properties_property sends a JSON
    column as each event's properties (an object, not one long string), and a stream map
    drops a column."""
    with (tmp_path / "scores.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "churn_score", "vip", "signed_up", "seats", "internal_note"])
        writer.writerow(["typed-1", "87.5", "yes", "2026-11-01 06:00:00", "12", "call back"])
        writer.writerow(["typed-2", "3", "no", "2026-10-15T08:30:00Z", "", ""])
    with (tmp_path / "events.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "user_id", "event", "at", "properties"])
        writer.writerow(
            ["e1", "typed-1", "upgraded", "2026-11-28T06:00:00Z", '{"plan": "pro", "seats": 5}']
        )
        writer.writerow(["e2", "typed-2", "logged_in", "2026-11-28T07:00:00Z", ""])
    files = [
        {
            "path": str(tmp_path / "scores.csv"),
            "format": "csv",
            "table_name": "scores",
            "primary_keys": ["user_id"],
        },
        {
            "path": str(tmp_path / "events.csv"),
            "format": "csv",
            "table_name": "app_events",
            "primary_keys": ["event_id"],
        },
    ]
    mappings = {
        "scores": {
            "property_types": {
                "churn_score": "number",
                "vip": "boolean",
                "signed_up": "time",
                "seats": "integer",
            }
        },
        "app_events": {
            "object_type": "events",
            "event_name_property": "event",
            "time_property": "at",
            "properties_property": "properties",
        },
    }
    project = fresh_project
    project.meltano("config", "set", THIRD_PARTY_TAP, "files", json.dumps(files))
    sandbox = SandboxProcess(api_key=BRAZE_KEY).start()
    try:
        for name, value in (
            ("rest_endpoint", sandbox.url),
            ("identifier_property", "user_id"),
            ("include_properties", "[]"),
            ("stream_mappings", json.dumps(mappings)),
            # A stream map drops a column before anything else sees it.
            ("stream_maps", json.dumps({"scores": {"internal_note": "__NULL__"}})),
            ("ledger_url", f"sqlite:///{tmp_path / 'ledger.sqlite'}"),
        ):
            project.meltano("config", "set", "target-braze", name, value)
        project.meltano(
            "run", THIRD_PARTY_TAP, "target-braze", extra_env={"BRAZE_API_KEY": BRAZE_KEY}
        )
        profiles = {p["external_id"]: p["custom_attributes"] for p in sandbox.profiles()}
        events = {e["external_id"]: e for e in sandbox.events()}
    finally:
        sandbox.stop()
    assert profiles["typed-1"] == {
        "churn_score": 87.5,
        "vip": True,
        "signed_up": "2026-11-01T06:00:00+00:00",
        "seats": 12,
    }
    # An empty cell is a missing value: null removes the attribute (null_values: unset).
    assert profiles["typed-2"] == {
        "churn_score": 3,
        "vip": False,
        "signed_up": "2026-10-15T08:30:00+00:00",
    }
    assert events["typed-1"]["name"] == "upgraded"
    assert events["typed-1"]["properties"] == {"plan": "pro", "seats": 5}
    assert "properties" not in events["typed-2"] or not events["typed-2"]["properties"]


def test_the_definitions_header_gives_the_command_this_project_was_built_with():
    """The header's `meltano add` is the one the fixture ran (--plugin-type: added once)."""
    header = [
        line.removeprefix("#").strip()
        for line in TARGET_DEFINITION.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    ]
    command = (
        "meltano add --plugin-type loader target-braze --from-ref "
        "$PEAK_BRAZE_CHECKOUT/plugins/loaders/target-braze.yml"
    )
    assert command in header
    assert "export PEAK_BRAZE_CHECKOUT=/path/to/checkout" in header
