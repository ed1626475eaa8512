"""Valid-but-odd input rejects the record at fault with a reason; it never crashes the run."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from braze_target_harness import (
    error_lines,
    read_jsonl,
    run_target,
    schema_message,
    state,
    target_command,
    target_config,
)

PROPERTIES = {"customer_id": {"type": "string"}, "plan": {}}


def rec(**fields: object) -> dict:
    return {"type": "RECORD", "stream": "customer_attributes", "record": fields}


def deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def run_with_one_odd_record(braze, tmp_path: Path, odd: dict, **settings: object):
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5, **settings)
    messages = [
        schema_message(properties=PROPERTIES, bookmark=None),
        rec(customer_id="good-1", plan="gold"),
        odd,
        rec(customer_id="good-2", plan="silver"),
        state("after"),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "unexpected" not in run.stderr
    assert braze.profile("good-1")["custom_attributes"] == {"plan": "gold"}
    assert braze.profile("good-2")["custom_attributes"] == {"plan": "silver"}
    assert run.states[-1] == state("after")["value"]
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["input_line"] == 3
    return reject


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**40])
def test_an_integer_beyond_64_bits_rejects_its_record_naming_the_field(braze, tmp_path, number):
    reject = run_with_one_odd_record(braze, tmp_path, rec(customer_id="odd", plan=number))
    assert "'plan' cannot be sent as JSON" in reject["reason"]
    assert braze.profile("odd") is None


@pytest.mark.parametrize("levels", [40, 300, 5000])
def test_deep_nesting_rejects_its_record(braze, tmp_path, levels):
    if levels < 1000:
        odd = rec(customer_id="odd", plan=deep(levels))
        reject = run_with_one_odd_record(braze, tmp_path, odd)
        assert "'plan' is nested deeper than 32 levels" in reject["reason"]
    else:  # too deep for json.dumps to write: the line is made by hand
        line = json.dumps(rec(customer_id="odd", plan="X")).replace(
            '"X"', "[" * levels + "1" + "]" * levels
        )
        reject = run_lines_with_one_odd_line(braze, tmp_path, line)
        assert reject["error_type"] == "RECORD_TOO_DEEP"
    assert braze.profile("odd") is None


def run_lines_with_one_odd_line(braze, tmp_path: Path, line: str, **settings: object):
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5, **settings)
    (tmp_path / "config.json").write_text(json.dumps(config))
    lines = [
        json.dumps(schema_message(properties=PROPERTIES, bookmark=None)),
        json.dumps(rec(customer_id="good-1", plan="gold")),
        line,
        json.dumps(state("after")),
    ]
    done = subprocess.run(
        target_command(tmp_path / "config.json"),
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "unexpected" not in done.stderr
    assert braze.profile("good-1") is not None
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    return reject


@pytest.mark.parametrize("expression", ["1/0", "int(plan)"])
def test_a_failing_stream_map_expression_rejects_that_record(braze, tmp_path, expression):
    maps = {"customer_attributes": {"plan": expression}}
    config = target_config(braze, tmp_path, stream_maps=maps, max_rejected_ratio=1)
    messages = [
        schema_message(properties=PROPERTIES, bookmark=None),
        rec(customer_id="odd", plan="gold"),
        state("after"),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "STREAM_MAP_FAILED"
    assert "the stream map of 'customer_attributes' failed on this record" in reject["reason"]
    assert braze.profile("odd") is None


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"customer_id": {"type": "string"}, "plan": 5}, "property 'plan': a int"),
        ({"customer_id": {"type": "string"}, "plan": {"type": 7}}, "property 'plan': 'type' is 7"),
        (
            {"customer_id": {"type": "string"}, "plan": {"anyOf": [{"type": "string"}, "x"]}},
            "property 'plan'.anyOf[1]: a str",
        ),
    ],
)
def test_a_malformed_schema_is_one_line_naming_stream_and_property(
    braze, tmp_path, properties, expected
):
    messages = [state("before"), schema_message(properties=properties, bookmark=None)]
    run = run_target(target_config(braze, tmp_path), messages, tmp_path)
    assert run.returncode == 1, run.stderr
    [line] = error_lines(run.stderr)
    assert "the SCHEMA of stream 'customer_attributes' is malformed at" in line
    assert expected in line
    assert "Traceback" not in run.stderr


def test_a_rejected_record_is_truncated_in_the_rejects_file_saying_so(braze, tmp_path):
    odd = rec(customer_id="odd", plan={"long": "y" * 100_000, "$bad": 1})
    reject = run_with_one_odd_record(braze, tmp_path, odd)
    assert "record" not in reject
    assert reject["record_truncated"].startswith("the record's JSON is ")
    assert len(reject["record_json"]) == 64 * 1024


def test_a_200_mb_line_is_rejected_unread_in_bounded_memory(braze, tmp_path):
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    source = tmp_path / "input.jsonl"
    with source.open("w") as file:
        file.write(json.dumps(schema_message(properties=PROPERTIES, bookmark=None)) + "\n")
        file.write('{"type": "RECORD", "stream": "customer_attributes", "record": ')
        file.write('{"customer_id": "huge", "plan": "' + "x" * 200_000_000 + '"}}\n')
        file.write(json.dumps(rec(customer_id="good-1", plan="gold")) + "\n")
        file.write(json.dumps(state("after")) + "\n")
    returncode, peak_kib, stderr = run_measuring_memory(source, config_path)
    assert returncode == 0, stderr
    assert peak_kib < 200 * 1024, f"peak {peak_kib} KiB"
    assert braze.profile("good-1") is not None
    assert braze.profile("huge") is None
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "RECORD_TOO_LARGE"
    assert "longer than max_record_bytes (4000000" in reject["reason"]
    assert (tmp_path / "rejects.jsonl").stat().st_size < 100_000


def test_an_oversized_line_in_a_batch_file_is_rejected_unread(braze, tmp_path):
    directory = tmp_path / "batches"
    directory.mkdir()
    file = directory / "part.jsonl"
    records = [
        {"customer_id": "good-1", "plan": "gold"},
        {"customer_id": "huge", "plan": "x" * 5000},
        {"customer_id": "good-2", "plan": "silver"},
    ]
    file.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = target_config(
        braze,
        tmp_path,
        max_rejected_ratio=0.5,
        max_record_bytes=1000,
        batch_files_dir=str(directory),
    )
    batch = {
        "type": "BATCH",
        "stream": "customer_attributes",
        "encoding": {"format": "jsonl", "compression": "none"},
        "manifest": [file.as_uri()],
    }
    messages = [schema_message(properties=PROPERTIES, bookmark=None), batch, state("after")]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("good-2") is not None
    assert braze.profile("huge") is None
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "RECORD_TOO_LARGE"
    assert (reject["batch_file"], reject["batch_line"]) == (str(file), 2)


def run_measuring_memory(source: Path, config_path: Path) -> tuple[int, int, str]:
    """Run the CLI on `source`; its exit code, peak resident memory (KiB) and stderr.

    Measured by a parent process that runs nothing else, so the peak is the target's own.
    """
    measure = (
        "import resource, subprocess, sys\n"
        "with open(sys.argv[1], 'rb') as stdin:\n"
        "    done = subprocess.run(sys.argv[2:], stdin=stdin, capture_output=True, timeout=300)\n"
        "sys.stderr.write(done.stderr.decode(errors='replace'))\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", measure, str(source), *target_command(config_path)],
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    returncode, peak_kib = map(int, done.stdout.split())
    return returncode, peak_kib, done.stderr


def test_a_gzip_batch_file_holding_a_200_mb_line_is_read_in_bounded_memory(braze, tmp_path):
    directory = tmp_path / "batches"
    directory.mkdir()
    file = directory / "part.jsonl.gz"
    with gzip.open(file, "wt", compresslevel=6) as out:
        out.write('{"customer_id": "huge", "plan": "' + "x" * 200_000_000 + '"}\n')
        out.write(json.dumps({"customer_id": "good-1", "plan": "gold"}) + "\n")
    assert file.stat().st_size < 1_000_000  # a small file that unpacks to 200 MB
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5, batch_files_dir=str(directory))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    batch = {
        "type": "BATCH",
        "stream": "customer_attributes",
        "encoding": {"format": "jsonl", "compression": "gzip"},
        "manifest": [file.as_uri()],
    }
    source = tmp_path / "input.jsonl"
    messages = [schema_message(properties=PROPERTIES, bookmark=None), batch, state("after")]
    source.write_text("".join(json.dumps(m) + "\n" for m in messages))
    returncode, peak_kib, stderr = run_measuring_memory(source, config_path)
    assert returncode == 0, stderr
    assert peak_kib < 200 * 1024, f"peak {peak_kib} KiB"
    assert braze.profile("good-1") is not None
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "RECORD_TOO_LARGE"


def test_an_oversized_line_that_is_not_a_record_is_one_clean_line(braze, tmp_path):
    config = target_config(braze, tmp_path, max_record_bytes=1000)
    messages = [
        schema_message(properties=PROPERTIES, bookmark=None),
        rec(customer_id="good-1", plan="gold"),
        {"type": "STATE", "value": {"bookmarks": {"x": "y" * 5000}}},
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 1, run.stderr
    [line] = error_lines(run.stderr)
    assert "line 3: a message is 50" in line
    assert "cannot be rejected alone" in line
    assert "Traceback" not in run.stderr
