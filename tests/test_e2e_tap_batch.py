"""tap-peak-attributes' BATCH messages through Meltano: `batch_config` from its variable, and
`meltano run` into the Braze sandbox, with target-braze reading the files."""

from __future__ import annotations

import gzip
import json
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pipeline_harness import (
    MELTANO,
    PROJECT_ROOT,
    copy_sample_warehouse,
    expected_profiles,
    mismatches,
    model_run,
    newest_row,
    normalise_timestamp,
    read_warehouse,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

SAMPLE_CUSTOMERS = 1200


def batch_config(root: Path, compression: str = "none", size: int = 500) -> str:
    return json.dumps(
        {
            "encoding": {"format": "jsonl", "compression": compression},
            "storage": {"root": root.as_uri()},
            "batch_size": size,
        }
    )


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_batch_config_from_its_variable_turns_records_into_batch_files(
    meltano_env, tmp_path, compression
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    root = tmp_path / "batches"
    env = {
        **meltano_env,
        "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL": f"sqlite:///{warehouse}",
        "TAP_PEAK_ATTRIBUTES_BATCH_CONFIG": batch_config(root, compression),
    }

    done = subprocess.run(
        [MELTANO, "invoke", "tap-peak-attributes"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert not [m for m in messages if m["type"] == "RECORD"]
    batches = [m for m in messages if m["type"] == "BATCH"]
    assert [len(b["manifest"]) for b in batches] == [1, 1, 1]  # 1,200 rows, 500 a file
    assert {json.dumps(b["encoding"]) for b in batches} == {
        json.dumps({"format": "jsonl", "compression": compression})
    }
    records = []
    for batch in batches:
        path = Path(urlsplit(batch["manifest"][0]).path)
        assert path.parent == root
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = path.read_bytes()
        records += [
            json.loads(x)
            for x in (gzip.decompress(data) if compression == "gzip" else data).splitlines()
        ]
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert len(records) == SAMPLE_CUSTOMERS
    assert len({r["customer_id"] for r in records}) == SAMPLE_CUSTOMERS
    final = [m for m in messages if m["type"] == "STATE"][-1]["value"]
    bookmark = final["bookmarks"]["customer_attributes"]
    assert (records[-1]["updated_at"], records[-1]["customer_id"]) == (
        bookmark["replication_key_value"],
        bookmark["replication_key_last_id"],
    )


def test_meltano_run_with_batch_messages_lands_every_customer_and_leaves_no_file(
    start_sandbox, make_pipeline, tmp_path
):
    # Needs target-braze's BATCH support (reads each file through its record path and
    # deletes it once its records are settled).
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    root = tmp_path / "batches"
    sandbox = start_sandbox()
    pipeline = make_pipeline(
        sandbox, warehouse, settings={"TAP_PEAK_ATTRIBUTES_BATCH_CONFIG": batch_config(root)}
    )

    first = pipeline.run()

    assert first.returncode == 0, first.describe()
    expected = expected_profiles(warehouse)
    problems = mismatches(expected, sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    ts, last_id = pipeline.bookmark()
    assert (normalise_timestamp(ts), last_id) == newest_row(read_warehouse(warehouse))
    # Every file was read, settled and deleted: the directory holds only the tap's lock.
    assert [p.name for p in root.iterdir()] == ["tap-peak-attributes.lock"]
    assert pipeline.report()["records_in"] == SAMPLE_CUSTOMERS

    requests_before = sandbox.stats()["requests"]
    second = pipeline.run()
    assert second.returncode == 0, second.describe()
    assert sandbox.stats()["requests"] == requests_before

    model_run(warehouse, changes=37, seed=11)
    third = pipeline.run()
    assert third.returncode == 0, third.describe()
    assert pipeline.report()["records_in"] == 37
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    assert [p.name for p in root.iterdir()] == ["tap-peak-attributes.lock"]
