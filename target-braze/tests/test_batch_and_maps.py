"""BATCH messages and stream maps: every record, from a file or a line, takes the one path."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from braze_target_harness import (
    customers,
    error_lines,
    record,
    run_target,
    schema_message,
    state,
)
from braze_target_harness import target_config as harness_target_config


def batch_file(tmp_path: Path, records: list[dict], name: str, *, gzipped: bool = False) -> Path:
    """Records as a tap writes them in a jsonl batch file: one record body per line."""
    path = tmp_path / "batches" / name
    path.parent.mkdir(exist_ok=True)
    lines = "".join(json.dumps(message["record"]) + "\n" for message in records).encode()
    path.write_bytes(gzip.compress(lines) if gzipped else lines)
    return path


def batch_message(*files: Path, compression: str = "none", stream: str = "customer_attributes"):
    return {
        "type": "BATCH",
        "stream": stream,
        "encoding": {"format": "jsonl", "compression": compression},
        "manifest": [file.as_uri() for file in files],
    }


def target_config(braze, tmp_path: Path, **overrides):
    """The target's settings, with the tap's batch directory as the one it may clean."""
    (tmp_path / "batches").mkdir(exist_ok=True)
    return harness_target_config(
        braze, tmp_path, batch_files_cleanup_dir=str(tmp_path / "batches"), **overrides
    )


def profiles(braze) -> dict[str, dict]:
    return {p["external_id"]: p.get("custom_attributes", {}) for p in braze.profiles()}


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_batch_files_land_like_records_then_state_moves_and_the_files_are_deleted(
    braze, tmp_path, compression
):
    gzipped = compression == "gzip"
    first = batch_file(tmp_path, customers(100), "part-1.jsonl", gzipped=gzipped)
    second = batch_file(tmp_path, customers(50, start=100), "part-2.jsonl", gzipped=gzipped)
    messages = [
        schema_message(),
        batch_message(first, compression=compression),
        state("after-1"),
        batch_message(second, compression=compression),
        state("after-2"),
    ]

    run = run_target(target_config(braze, tmp_path), messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert len(profiles(braze)) == 150
    assert profiles(braze)["c120"] == {"peak_churn_probability": 0.12, "peak_segment": "loyal"}
    assert run.states[-1] == state("after-2")["value"]
    assert not first.exists()
    assert not second.exists()


def test_the_state_after_a_batch_waits_for_every_record_of_it(braze, tmp_path):
    braze.configure(fail_after_requests=1)  # the file's second request never succeeds
    file = batch_file(tmp_path, customers(150), "part.jsonl")
    messages = [schema_message(), state("before"), batch_message(file), state("after")]

    run = run_target(target_config(braze, tmp_path, max_retries=0), messages, tmp_path)

    assert run.returncode == 1
    assert run.states == [state("before")["value"]]
    assert file.exists()  # its records are not all settled: the tap will write it again


def test_a_missing_batch_file_ends_the_run_with_one_line_naming_it(braze, tmp_path):
    missing = tmp_path / "batches" / "gone.jsonl"
    messages = [schema_message(), state("before"), batch_message(missing), state("after")]

    run = run_target(target_config(braze, tmp_path), messages, tmp_path)

    assert run.returncode == 1
    (line,) = error_lines(run.stderr)
    assert f"line 3: the BATCH file {missing} cannot be read" in line
    assert "Traceback" not in run.stderr
    assert run.states == [state("before")["value"]]


def test_a_batch_record_braze_rejects_names_its_file_and_line(braze, tmp_path):
    braze.configure(errors={"c2": "EMAIL_BAD_FORMAT"})
    file = batch_file(tmp_path, customers(5), "part.jsonl")
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5)

    run = run_target(config, [schema_message(), batch_message(file), state("s")], tmp_path)

    assert run.returncode == 0, run.stderr
    (rejected,) = [
        json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()
    ]
    assert (rejected["input_line"], rejected["batch_file"], rejected["batch_line"]) == (
        2,
        str(file),
        3,
    )


def test_an_unsupported_batch_encoding_is_one_clear_line(braze, tmp_path):
    message = batch_message(batch_file(tmp_path, customers(1), "p.parquet"))
    message["encoding"]["format"] = "parquet"
    run = run_target(target_config(braze, tmp_path), [schema_message(), message], tmp_path)
    assert run.returncode == 1
    (line,) = error_lines(run.stderr)
    assert "BATCH encoding parquet/none" in line


def test_a_repeated_batch_is_unchanged_for_the_ledger(braze, tmp_path):
    config = target_config(braze, tmp_path)
    for name in ("one.jsonl", "two.jsonl"):
        file = batch_file(tmp_path, customers(80), name)
        run = run_target(config, [schema_message(), batch_message(file), state(name)], tmp_path)
        assert run.returncode == 0, run.stderr
    assert braze.stats()["data_points"] == 160


def test_stream_maps_apply_to_records_and_to_batch_files_alike(braze, tmp_path):
    maps = {
        "customer_attributes": {
            "peak_segment": None,  # removed
            "peak_band": "'high' if peak_churn_probability > 0.05 else 'low'",
        }
    }
    file = batch_file(tmp_path, customers(10, start=50), "part.jsonl")
    messages = [schema_message(), *customers(10), batch_message(file), state("s")]
    config = target_config(braze, tmp_path, stream_maps=maps)

    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    users = profiles(braze)
    assert len(users) == 20
    assert users["c3"] == {"peak_churn_probability": 0.003, "peak_band": "low"}
    assert users["c55"] == {"peak_churn_probability": 0.055, "peak_band": "high"}


def test_a_renamed_stream_keeps_its_replication_key_out_of_the_attributes(braze, tmp_path):
    maps = {"customer_attributes": {"__alias__": "braze_users"}}
    config = target_config(
        braze,
        tmp_path,
        stream_maps=maps,
        stream_mappings={"braze_users": {"null_values": "skip"}},
    )

    run = run_target(config, [schema_message(), *customers(3), state("s")], tmp_path)

    assert run.returncode == 0, run.stderr
    assert profiles(braze)["c1"] == {"peak_churn_probability": 0.001, "peak_segment": "loyal"}


def test_flattening_turns_nested_objects_into_prefixed_attributes(braze, tmp_path):
    props = {
        "customer_id": {"type": "string"},
        "scores": {
            "type": "object",
            "properties": {"churn": {"type": "number"}, "ltv": {"type": "number"}},
        },
    }
    body = {"customer_id": "c1", "scores": {"churn": 0.5, "ltv": 12}}
    messages = [
        schema_message(properties=props, bookmark=None),
        {"type": "RECORD", "stream": "customer_attributes", "record": body},
        state("s"),
    ]
    config = target_config(braze, tmp_path, flattening_enabled=True, flattening_max_depth=1)

    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert profiles(braze)["c1"] == {"scores__churn": 0.5, "scores__ltv": 12}


def test_activate_version_is_accepted_and_ignored(braze, tmp_path):
    messages = [
        schema_message(),
        {"type": "ACTIVATE_VERSION", "stream": "customer_attributes", "version": 1},
        record("c1", peak_segment="x"),
        state("s"),
    ]
    run = run_target(target_config(braze, tmp_path), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "ACTIVATE_VERSION (line 2) ignored" in run.stderr
    assert profiles(braze)["c1"] == {"peak_segment": "x"}


def test_singer_sdks_default_map_is_the_identity_the_message_path_skips():
    # message_path._transform_of skips calling the SDK's SameRecordTransform when
    # flattening is off, assuming it returns the record itself: this pins that.
    from singer_sdk.mapper import PluginMapper, SameRecordTransform

    mapper = PluginMapper(plugin_config={}, logger=logging.getLogger("test"))
    mapper.register_raw_stream_schema("s", {"properties": {"a": {"type": "integer"}}}, [])
    (stream_map,) = mapper.stream_maps["s"]
    record = {"a": 1}
    assert isinstance(stream_map, SameRecordTransform)
    assert not stream_map.flattening_enabled
    assert stream_map.transform(record) is record
