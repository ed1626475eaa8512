"""Deletes, aliases and identify, subscription states: `meltano run` of a tap that is not ours.

The same fresh project as test_e2e_fresh_project.py (target-braze added from its
definition, tap-spreadsheets from the package index reading CSV files), against the Braze
sandbox, checked through `/users/export/ids`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from braze_sandbox.testing import SandboxProcess
from pipeline_harness import MELTANO
from test_e2e_fresh_project import (
    BRAZE_KEY,
    THIRD_PARTY_TAP,
    FreshProject,
    fresh_project,
    installed_fresh_project,
)

pytestmark = pytest.mark.e2e
# The fixtures: each test's own copy of the project installed once per session.
__all__ = ["fresh_project", "installed_fresh_project"]


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> dict[str, Any]:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return {
        "path": str(path),
        "format": "csv",
        "table_name": path.stem,
        "primary_keys": [header[0]],
    }


def _configure(
    project: FreshProject, sandbox: SandboxProcess, tmp_path: Path, **settings: Any
) -> None:
    values = {
        "rest_endpoint": sandbox.url,
        "identifier_property": "user_id",
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "rejected_records_path": str(tmp_path / "rejects.jsonl"),
        "run_report_path": str(tmp_path / "report.json"),
        "max_deletes_per_run": 0,
        **settings,
    }
    project.configure("loaders", "target-braze", values)


def _run(project: FreshProject, files: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    project.configure("extractors", THIRD_PARTY_TAP, {"files": files})
    return subprocess.run(
        [MELTANO, "run", "--force", THIRD_PARTY_TAP, "target-braze"],
        cwd=project.root,
        env=project.env | {"BRAZE_API_KEY": BRAZE_KEY},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _existing(sandbox: SandboxProcess, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 50):
        answer = sandbox.export(external_ids=ids[start : start + 50])
        found |= {user["external_id"] for user in answer["users"]}
    return found


def _users(sandbox: SandboxProcess, count: int) -> list[str]:
    ids = [f"user-{n:03d}" for n in range(count)]
    for start in range(0, count, 75):
        chunk = ids[start : start + 75]
        sandbox.track({"attributes": [{"external_id": u, "plan": "pro"} for u in chunk]})
    return ids


DELETES = {"churned": {"object_type": "deletes"}}


def _churned(tmp_path: Path, ids: list[str]) -> list[dict[str, Any]]:
    # Two columns: the tap guesses a one-column file's delimiter from its values.
    rows = [[u, "2026-12-01"] for u in ids]
    return [_csv(tmp_path / "churned.csv", ["user_id", "churned_on"], rows)]


def test_120_deletes_with_one_refused_leave_119_gone_and_one_in_the_rejects_file(
    fresh_project, tmp_path
):
    with SandboxProcess(api_key=BRAZE_KEY) as sandbox:
        ids = _users(sandbox, 120)
        sandbox.configure(errors={"user-057": "BLACKLISTED_EXTERNAL_USER_ID"})
        _configure(
            fresh_project, sandbox, tmp_path, stream_mappings=DELETES, max_rejected_ratio=0.05
        )
        files = _churned(tmp_path, ids)
        result = _run(fresh_project, files)
        assert result.returncode == 0, result.stderr[-4000:]
        assert _existing(sandbox, ids) == {"user-057"}
        stats = sandbox.stats()["user_data"]["/users/delete"]
    assert stats["requests"] == 3
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["identifier"], r["error_type"]) for r in rejects] == [
        ("user-057", "BLACKLISTED_EXTERNAL_USER_ID")
    ]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["endpoints"]["/users/delete"]["objects_sent"] == 120
    assert report["records_accepted"] == 119


def test_a_delete_guard_stops_the_run_and_nothing_is_deleted(fresh_project, tmp_path):
    with SandboxProcess(api_key=BRAZE_KEY) as sandbox:
        ids = _users(sandbox, 120)
        _configure(
            fresh_project, sandbox, tmp_path, stream_mappings=DELETES, max_deletes_per_run=100
        )
        files = _churned(tmp_path, ids)
        result = _run(fresh_project, files)
        assert result.returncode != 0
        assert "120 users would be deleted" in result.stderr
        assert "max_deletes_per_run 100" in result.stderr
        assert _existing(sandbox, ids) == set(ids)
        assert "/users/delete" not in sandbox.stats()["user_data"]


def test_aliases_created_then_identified_into_external_ids_with_their_attributes_merged(
    fresh_project, tmp_path
):
    mappings = {
        "aliases": {
            "object_type": "aliases",
            "alias_label": "crm",
            "identify_property": "external_id",
        },
        "alias_profiles": {"identifier_type": "user_alias", "alias_label": "crm"},
    }
    names = [f"crm-{n}" for n in range(60)]
    with SandboxProcess(api_key=BRAZE_KEY) as sandbox:
        sandbox.track({"attributes": [{"external_id": "known-0", "plan": "team"}]})
        _configure(fresh_project, sandbox, tmp_path, stream_mappings=mappings, alias_wait_seconds=1)
        # One run per step: tap-spreadsheets syncs its files in no fixed order, and the
        # aliases must exist before their profiles get attributes.
        create = [
            _csv(tmp_path / "aliases.csv", ["user_id", "external_id"], [[n, ""] for n in names])
        ]
        result = _run(fresh_project, create)
        assert result.returncode == 0, result.stderr[-4000:]
        profiles = [
            _csv(
                tmp_path / "alias_profiles.csv", ["user_id", "segment"], [[n, "vip"] for n in names]
            )
        ]
        result = _run(fresh_project, profiles)
        assert result.returncode == 0, result.stderr[-4000:]
        alias = {"alias_name": "crm-0", "alias_label": "crm"}
        (user,) = sandbox.export(user_aliases=[alias])["users"]
        assert user["custom_attributes"] == {"segment": "vip"}
        identify_dir = tmp_path / "identify"
        identify_dir.mkdir()
        rows = [[n, f"known-{i}"] for i, n in enumerate(names)]
        result = _run(
            fresh_project, [_csv(identify_dir / "aliases.csv", ["user_id", "external_id"], rows)]
        )
        assert result.returncode == 0, result.stderr[-4000:]
        merged = sandbox.profile("known-0")
        fresh = sandbox.profile("known-59")
        stats = sandbox.stats()["user_data"]
    assert merged["custom_attributes"] == {"plan": "team", "segment": "vip"}
    assert merged["user_aliases"] == [alias]
    assert fresh["custom_attributes"] == {"segment": "vip"}
    assert stats["/users/alias/new"]["requests"] == 2
    assert stats["/users/identify"]["requests"] == 2


def test_subscription_states_of_200_users(fresh_project, tmp_path):
    mappings = {
        "newsletter": {
            "object_type": "subscriptions",
            "subscription_group_id": "group-news",
            "subscription_state_property": "state",
        }
    }
    with SandboxProcess(api_key=BRAZE_KEY) as sandbox:
        ids = _users(sandbox, 200)
        _configure(fresh_project, sandbox, tmp_path, stream_mappings=mappings)
        rows = [[u, "subscribed" if n % 4 else "Unsubscribed"] for n, u in enumerate(ids)]
        result = _run(
            fresh_project, [_csv(tmp_path / "newsletter.csv", ["user_id", "state"], rows)]
        )
        assert result.returncode == 0, result.stderr[-4000:]
        states = {}
        for start in range(0, 200, 50):
            for user in sandbox.export(external_ids=ids[start : start + 50])["users"]:
                states[user["external_id"]] = user["subscription_groups"]
    assert len(states) == 200
    assert states["user-000"] == [{"id": "group-news", "status": "unsubscribed"}]
    assert states["user-001"] == [{"id": "group-news", "status": "subscribed"}]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["records_accepted"] == 200
    assert report["data_points"] == 0


def test_deletes_under_429s_keep_the_endpoint_s_limit_and_all_arrive(fresh_project, tmp_path):
    # /users/delete limited to 2 requests per 2 s on both sides, and 30% of the requests
    # the sandbox admits answered 429 anyway: every 429 must be an injected one (none for
    # going over the limit), and every user is deleted in the end.
    with SandboxProcess(
        api_key=BRAZE_KEY, user_data_rate_limit=2, user_data_rate_window=2, seed=23
    ) as sandbox:
        ids = _users(sandbox, 300)
        sandbox.configure(fault_429=0.3)  # after the users exist
        _configure(
            fresh_project,
            sandbox,
            tmp_path,
            stream_mappings=DELETES,
            user_data_requests_per_window=2,
            user_data_rate_window_seconds=2,
            # A loaded machine's stand-in stamps arrivals late by up to about 0.5 s.
            rate_limit_margin_seconds=0.5,
            max_retries=20,
        )
        result = _run(fresh_project, _churned(tmp_path, ids))
        assert result.returncode == 0, result.stderr[-4000:]
        assert _existing(sandbox, ids) == set()
        stats = sandbox.stats()
    deletes = stats["user_data"]["/users/delete"]
    answered_429 = deletes["by_status"].get("429", 0) + stats["by_status"].get("429", 0)
    assert stats["injected"]["429"] > 0, stats["injected"]
    assert answered_429 == stats["injected"]["429"], (deletes, stats["injected"])
    assert stats["user_data"]["max_arrivals_in_window"]["user_data"] <= 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["endpoints"]["/users/delete"]["rate_limited"] == stats["injected"]["429"]


def test_kill_9_between_deletes_then_a_rerun_loses_nothing_and_duplicates_no_event(
    fresh_project, tmp_path
):
    # One user-data request an hour: after the first of three deletes the run cannot end,
    # however slow the machine, so the kill lands between two deletes.
    mappings = {
        **DELETES,
        "visits": {"object_type": "events", "event_name": "visit", "time_property": "at"},
    }
    visits = [[f"v{n}", f"visitor-{n % 7}", "2026-12-01T00:00:00Z"] for n in range(40)]
    with SandboxProcess(api_key=BRAZE_KEY) as sandbox:
        ids = _users(sandbox, 120)
        files = [
            _csv(tmp_path / "visits.csv", ["visit_id", "user_id", "at"], visits),
            *_churned(tmp_path, ids),
        ]
        _configure(
            fresh_project,
            sandbox,
            tmp_path,
            stream_mappings=mappings,
            user_data_requests_per_window=1,
            user_data_rate_window_seconds=3600,
        )
        fresh_project.configure("extractors", THIRD_PARTY_TAP, {"files": files})
        with (tmp_path / "killed.log").open("wb") as log:
            process = subprocess.Popen(
                [MELTANO, "run", "--force", THIRD_PARTY_TAP, "target-braze"],
                cwd=fresh_project.root,
                env=fresh_project.env | {"BRAZE_API_KEY": BRAZE_KEY},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 600  # a safety net only
            while len(_existing(sandbox, ids)) == len(ids):  # by progress: a delete applied
                assert process.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no delete was applied"
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL
        left = _existing(sandbox, ids)
        assert 0 < len(left) < len(ids)

        _configure(
            fresh_project,
            sandbox,
            tmp_path,
            stream_mappings=mappings,
            user_data_requests_per_window=20_000,
            user_data_rate_window_seconds=60,
        )
        result = _run(fresh_project, files)
        assert result.returncode == 0, result.stderr[-4000:]
        assert _existing(sandbox, ids) == set()
        events = sandbox.events()
    # Each visit once: the killed run's were confirmed (duplicates now) or in flight (of
    # unknown delivery now); none was sent again.
    assert sorted(e["properties"]["visit_id"] for e in events) == sorted(v[0] for v in visits)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["duplicates"] + report["unknown"] == len(visits)
    # STATE never passed a delete, so the rerun sent every one again (counted; harmless).
    assert report["endpoints"]["/users/delete"]["objects_sent"] == len(ids)
