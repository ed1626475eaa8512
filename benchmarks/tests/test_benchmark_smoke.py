"""The benchmark command at a tiny size: it runs end to end and writes its outputs.

No timing assertions: CI machines are noisy; this only keeps the command from rotting.
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
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]

    data = json.loads((out / "latest.json").read_text())
    assert data["machine"]["nproc"] >= 1
    assert data["warehouses"]["sqlite"]["rows"] == 600
    measurements = data["measurements"]
    for key in (
        "tap_sqlite",
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
    assert measurements["target_braze_full"]["runs"][0]["records"] == 600
    assert measurements["target_braze_full"]["runs"][0]["sandbox_objects_applied"] == 600
    assert measurements["target_braze_compare"]["runs"][0]["requests"] > 0
    assert measurements["naive"]["runs"][0]["sandbox_objects_applied"] == 50
    assert measurements["rate_limited"]["runs"][0]["sandbox_429"] == 0
    if (ROOT / "meltano.yml").exists():
        assert measurements["meltano_run"]["runs"][0]["records"] == 600
    assert len(data["goals"]) == 5
    assert {g["status"] for g in data["goals"]} <= {"pass", "miss", "not measured"}

    png = (out / "throughput.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 1000

    markdown = (out / "BENCHMARKS.md").read_text()
    for section in ("# Benchmarks", "## How to run", "## This run", "## Goals", "## Results"):
        assert section in markdown
    assert "throughput.png" in markdown
    assert data["machine"]["cpu_model"] in markdown
