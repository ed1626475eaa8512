"""Every case of `python -m benchmarks` at a tiny size: it runs and counts right.

No timing assertions (the machines are noisy): what each case counts (records, requests,
data points) is not noisy, and keeps the command from rotting. `--callgrind` is left out:
valgrind takes about a minute per run even at 300 records.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pipeline_harness
import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run one case; its JSON, with its rows by variant."""
    out = tmp_path / f"{args[0]}.json"
    command = [sys.executable, "-m", "benchmarks", *args, "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| Variant |" in result.stdout
    data = json.loads(out.read_text())
    data["by"] = {row["variant"]: row for row in data["rows"]}
    return data


def test_target_beside_the_floor_and_beside_a_frozen_older_commit(tmp_path: Path) -> None:
    data = bench(tmp_path, "target", "--records", "300", "--repeat", "2")
    floor, now = data["by"].values()
    assert floor["records_in"] == now["records_in"] == 300
    assert now["data_points"] == 300 * 9
    assert now["baseline"] == floor["variant"]
    assert len(now["ratios"]) == 2
    assert now["cpu"] > 0
    assert now["rss_mb"] > 0

    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    args = ("--records", "300", "--repeat", "1", "--latency-ms", "5")
    data = bench(tmp_path, "target", *args, "--old", "HEAD", "--set", "validate_records=false")
    assert list(data["by"]) == [f"target-braze {head}", "target-braze now"]
    assert all(row["records_in"] == 300 for row in data["rows"])


@pytest.mark.e2e  # runs Meltano: `scripts/test --quick` skips it
def test_tap_and_meltano_run(tmp_path: Path) -> None:
    data = bench(tmp_path, "tap", "--rows", "300", "--repeat", "1")
    records = [row["records_in"] for row in data["rows"]]
    assert records == [300, 300, 0]  # RECORD, BATCH, reading no row

    data = bench(tmp_path, "meltano", "--rows", "300", "--repeat", "1")
    assert [row["records_in"] for row in data["rows"]] == [300, 300, 0]
    for row in data["rows"]:
        assert 0 < row["own_cpu"] < row["cpu"]  # Meltano's own, apart from its children


def test_share_of_the_rate_limit(tmp_path: Path) -> None:
    data = bench(tmp_path, "limit", "--users", "750", "--null")
    assert len(data["rows"]) == 3
    for row in data["rows"]:
        assert row["requests"] == 10  # 75 users per request
        assert row["share"] > 0
    for row in data["rows"][:2]:
        assert row["busiest_window"] <= 300


def ledger_checks(data: dict[str, Any]) -> None:
    off, empty, unchanged, changed = data["rows"]
    assert off["data_points"] == empty["data_points"] == 300 * 9
    assert unchanged["data_points"] == 0
    assert unchanged["unchanged"] == 300
    assert changed["data_points"] == 300 * 2  # 2 of 9 values moved
    assert {row.get("baseline") for row in data["rows"][1:]} == {off["variant"]}
    assert all(len(row["ratios"]) == 2 for row in data["rows"][1:])


def test_ledger_cost_sqlite(tmp_path: Path) -> None:
    data = bench(tmp_path, "ledger", "--records", "300", "--repeat", "2")
    ledger_checks(data)
    assert data["ledger_bytes_per_user"]["now"] > 0


@pytest.mark.postgres
def test_ledger_cost_postgresql(tmp_path: Path) -> None:
    url = pipeline_harness.postgres_server_url()
    data = bench(tmp_path, "ledger", "--records", "300", "--repeat", "2", "--postgres", url)
    ledger_checks(data)
    assert data["backend"] == "postgresql"


def test_profile_and_stream(tmp_path: Path) -> None:
    data = bench(tmp_path, "profile", "--records", "300", "--output", str(tmp_path / "raw"))
    assert data["samples"] > 0
    assert data["rows"]
    assert (tmp_path / "raw").stat().st_size > 0

    command = [sys.executable, "-m", "benchmarks", "stream", "--records", "3"]
    lines = subprocess.run(
        [*command, "--variant", "rescored"], cwd=ROOT, capture_output=True, check=True
    ).stdout.splitlines()
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds == ["SCHEMA", "RECORD", "RECORD", "RECORD", "STATE"]
