"""The benchmark command at a tiny size: every stage runs end to end and writes its outputs.

No timing assertions: CI machines are noisy; this only keeps the command from rotting, and
checks what each stage counts (records, requests, data points), which is not noisy.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_command_tiny(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--rows",
        "600",
        "--repeat",
        "1",
        "--compare-rows",
        "300",
        "--naive-records",
        "50",
        "--rate-windows",
        "1",
        "--postgres",
        "off",
        "--output-dir",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    # A safety net only, under pytest-timeout's 900 s: every stage runs (Meltano included),
    # which took over 300 s on a 2-core machine at load average 7 to 10.
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=840, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]

    data = json.loads((out / "latest.json").read_text())
    assert data["machine"]["nproc"] >= 1
    assert data["warehouses"]["sqlite"]["rows"] == 600
    assert not data.get("failed_stages"), data["notes"]
    measurements = data["measurements"]
    for key in (
        "tap_sqlite",
        "tap_sqlite_batch",
        "wide_target_slice",
        "wide_target_full",
        "wide_floor_slice",
        "wide_floor_full",
        "ledger_off",
        "ledger_empty",
        "ledger_full_unchanged",
        "ledger_full_changed",
        "ledger_delta_with",
        "ledger_delta_without",
        "target_braze_compare",
        "target_braze_full",
        "floor_compare",
        "naive",
        "rate_limited",
    ):
        assert key in measurements, key
        runs = measurements[key]["runs"]
        assert runs, key
        for run in runs:
            assert run["records"] > 0, key
            assert run["wall_seconds"] > 0, key
            assert run["cpu_seconds"] > 0, key
            assert run["max_rss_mb"] > 0, key
    assert measurements["tap_sqlite"]["runs"][0]["records"] == 600
    assert measurements["tap_sqlite_batch"]["runs"][0]["records"] == 600
    assert measurements["wide_target_full"]["runs"][0]["records_in"] == 600
    assert measurements["wide_target_full"]["runs"][0]["data_points"] == 600 * 9
    assert measurements["wide_target_slice"]["runs"][0]["floor_wall_ratio"] > 0
    assert measurements["wide_target_empty"]["runs"][0]["records"] == 0

    # The ledger: a full ledger and an unchanged stream send nothing; every record
    # changed sends everything; the delta sends exactly the values that changed.
    assert measurements["ledger_full_unchanged"]["runs"][0]["requests"] == 0
    assert measurements["ledger_full_unchanged"]["runs"][0]["unchanged"] == 300
    assert measurements["ledger_full_changed"]["runs"][0]["data_points"] == 300 * 9
    ledger = data["ledger"]
    assert ledger["users"] == 600
    assert ledger["file_bytes"] > 0
    assert ledger["delta_records"] == ledger["model_run"]["customers_changed"] == 60
    assert ledger["delta_data_points_with"] == ledger["model_run"]["values_changed"]
    assert ledger["delta_data_points_without"] > ledger["delta_data_points_with"]

    # The whole pipeline in both modes, with Meltano's own share apart from its children's.
    for mode in ("record", "batch"):
        run = measurements[f"meltano_{mode}"]["runs"][0]
        assert run["records"] == 600, mode
        assert 0 < run["meltano_own_cpu_seconds"] < run["cpu_seconds"], mode
        assert measurements[f"meltano_{mode}_empty"]["runs"][0]["records"] == 0, mode
    assert measurements["meltano_record_ledger"]["runs"][0]["records"] == 600

    assert measurements["target_braze_full"]["runs"][0]["records"] == 600
    assert measurements["target_braze_full"]["runs"][0]["sandbox_objects_applied"] == 600
    assert measurements["target_braze_compare"]["runs"][0]["requests"] > 0
    assert measurements["naive"]["runs"][0]["sandbox_objects_applied"] == 50
    assert measurements["rate_limited"]["runs"][0]["sandbox_429"] == 0

    for name in ("target-braze", "target-braze-ledger"):
        profile = data["profiles"][name]
        assert profile["samples"] > 0, name
        assert profile["self"], name
        assert profile["inclusive"], name
        assert "main thread" in profile["thread_cpu_seconds"], name
        assert (out / f"profile-{name}.txt").read_text().startswith("py-spy"), name

    assert {g["issue"] for g in data["goals"]} >= {"8", "9", "10"}
    assert {g["status"] for g in data["goals"]} <= {"pass", "miss", "not measured"}

    png = (out / "throughput.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 1000

    markdown = (out / "BENCHMARKS.md").read_text()
    for section in ("# Benchmarks", "## How to run", "## This run", "## Goals", "## Results"):
        assert section in markdown
    for stage in ("(f) target-braze alone", "(g) The delivery ledger", "(c) The whole pipeline"):
        assert stage in markdown
    assert "throughput.png" in markdown
    assert data["machine"]["cpu_model"] in markdown


def test_ledger_storage_benchmark_tiny(tmp_path: Path) -> None:
    """`benchmarks/ledger_store.py` runs and reports every operation, the floor included."""
    out = tmp_path / "ledger-store.json"
    command = [sys.executable, "benchmarks/ledger_store.py", "--rows", "500", "--repeat", "1"]
    result = subprocess.run(
        [*command, "--batch", "200", "--postgres", "off", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    figures = json.loads(out.read_text())["results"]["sqlite"]
    for name in (
        "write new users, 200/call",
        "read_users misses, 500/call",
        "bare sqlite3 insert, 200/commit",
        "9 value digests (per user)",
    ):
        cpu_us, wall_us = figures[name]
        assert cpu_us > 0, name
        assert wall_us > 0, name
