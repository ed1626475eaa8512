"""BATCH manifests are input: only regular files under batch_files_dir are read, and only
files under batch_files_cleanup_dir are ever deleted."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from braze_target_harness import (
    customers,
    error_lines,
    run_target,
    schema_message,
    state,
    target_config,
)
from target_braze.private_files import open_beneath, unlink_beneath
from target_braze.read import _local_path


def write_batch(path: Path, n: int = 5, start: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = customers(n, start=start)
    path.write_text("".join(json.dumps(m["record"]) + "\n" for m in records))
    return path


def batch(*uris: str) -> dict:
    return {
        "type": "BATCH",
        "stream": "customer_attributes",
        "encoding": {"format": "jsonl", "compression": "none"},
        "manifest": list(uris),
    }


def assert_one_line(run, *expected: str) -> str:
    assert run.returncode == 1, run.stderr
    [line] = error_lines(run.stderr)
    for text in expected:
        assert text in line, line
    assert "unexpected" not in line
    assert "Traceback" not in run.stderr
    assert run.states == [state("before")["value"]]  # STATE never passes the bad BATCH
    return line


def test_a_batch_file_outside_the_cleanup_directory_is_read_and_survives(braze, tmp_path):
    precious = write_batch(tmp_path / "shared" / "precious.jsonl")
    config = target_config(braze, tmp_path, batch_files_dir=str(precious.parent))
    messages = [schema_message(), batch(precious.as_uri()), state("after")]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("c4") is not None
    assert precious.exists()
    assert run.states[-1] == state("after")["value"]


def test_a_batch_file_under_the_cleanup_directory_is_deleted_once_settled(braze, tmp_path):
    owned = write_batch(tmp_path / "tap-batches" / "part.jsonl")
    config = target_config(braze, tmp_path, batch_files_cleanup_dir=str(owned.parent))
    run = run_target(config, [schema_message(), batch(owned.as_uri()), state("after")], tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("c4") is not None
    assert not owned.exists()


def test_a_batch_message_without_batch_files_dir_is_one_line(braze, tmp_path):
    file = write_batch(tmp_path / "batches" / "part.jsonl")
    messages = [schema_message(), state("before"), batch(file.as_uri()), state("after")]
    run = run_target(target_config(braze, tmp_path), messages, tmp_path)
    assert_one_line(run, "line 3:", "batch_files_dir is not set")
    assert file.exists()
    assert braze.profile("c0") is None


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("{outside}", "outside batch_files_dir"),
        ("{dir}/../outside/x.jsonl", "'..' segment"),
        ("{dir}/%2e%2e/outside/x.jsonl", "'..' segment"),
        ("{dir}/part.jsonl%00.txt", "NUL character"),
        ("file:part.jsonl", "relative path"),
        ("part.jsonl", "scheme ''"),
        ("https://example.com/part.jsonl", "scheme 'https'"),
        ("file://otherhost/tmp/part.jsonl", "names host"),
        ("{dir}/escape.jsonl", "outside batch_files_dir"),  # a symlink out of the directory
    ],
)
def test_a_manifest_uri_that_could_leave_batch_files_dir_is_one_line(braze, tmp_path, uri, problem):
    directory = tmp_path / "batches"
    write_batch(directory / "part.jsonl")
    outside = write_batch(tmp_path / "outside" / "x.jsonl")
    (directory / "escape.jsonl").symlink_to(outside)
    uri = uri.format(dir=directory.as_uri(), outside=outside.as_uri())
    config = target_config(braze, tmp_path, batch_files_cleanup_dir=str(directory))
    messages = [schema_message(), state("before"), batch(uri), state("after")]
    run = run_target(config, messages, tmp_path, timeout=60)
    assert_one_line(run, "line 3: BATCH file URI", problem)
    assert outside.exists()
    assert braze.profile("c0") is None


def test_a_fifo_ends_the_run_at_once_with_one_line(braze, tmp_path):
    directory = tmp_path / "batches"
    directory.mkdir()
    fifo = directory / "part.jsonl"
    os.mkfifo(fifo)
    config = target_config(braze, tmp_path, batch_files_dir=str(directory))
    messages = [schema_message(), state("before"), batch(fifo.as_uri()), state("after")]
    run = run_target(config, messages, tmp_path, timeout=60)  # a hang guard, not the verdict
    assert_one_line(run, f"the BATCH file {fifo} is not a regular file (a FIFO)")


def test_dev_zero_ends_the_run_at_once_with_one_line(braze, tmp_path):
    config = target_config(braze, tmp_path, batch_files_dir="/dev")
    messages = [schema_message(), state("before"), batch("file:///dev/zero"), state("after")]
    run = run_target(config, messages, tmp_path, timeout=60)  # a hang guard, not the verdict
    assert_one_line(run, "the BATCH file /dev/zero is not a regular file (a character device)")


def test_a_batch_file_beyond_max_batch_file_bytes_is_one_line(braze, tmp_path):
    file = write_batch(tmp_path / "batches" / "part.jsonl", n=50)
    config = target_config(
        braze, tmp_path, batch_files_dir=str(file.parent), max_batch_file_bytes=1000
    )
    messages = [schema_message(), state("before"), batch(file.as_uri()), state("after")]
    run = run_target(config, messages, tmp_path, timeout=60)
    assert_one_line(run, f"the BATCH file {file} holds more than max_batch_file_bytes (1000)")


def test_a_directory_swapped_for_a_link_after_the_check_is_neither_read_nor_cleaned(tmp_path):
    # The race a manifest could win: its path is checked, then a directory on it is swapped
    # for a link to elsewhere before the file is opened (or, later, deleted).
    root = tmp_path / "batches"
    inside = write_batch(root / "sub" / "part.jsonl")
    elsewhere = write_batch(tmp_path / "elsewhere" / "part.jsonl", start=100)
    directory = root.resolve()
    checked = _local_path(inside.as_uri(), 1, directory)
    (root / "sub").rename(root / "was-sub")
    (root / "sub").symlink_to(elsewhere.parent, target_is_directory=True)

    with pytest.raises(OSError, match=r"Not a directory|symbolic links") as opening:
        open_beneath(directory, checked, os.O_RDONLY)
    with pytest.raises(OSError, match=r"Not a directory|symbolic links") as removing:
        unlink_beneath(directory, checked)

    # A link where a directory must be: ENOTDIR (Linux, with O_DIRECTORY) or ELOOP.
    assert {opening.value.errno, removing.value.errno} <= {errno.ENOTDIR, errno.ELOOP}
    assert elsewhere.exists()
    # Opened by path, the same checked path leads to the other directory's file.
    with open(checked, "rb") as followed:
        assert json.loads(followed.readline())["customer_id"] == "c100"


def test_a_file_under_a_real_subdirectory_is_read_and_cleaned_through_handles(tmp_path):
    root = tmp_path / "batches"
    inside = write_batch(root / "a" / "b" / "part.jsonl")
    directory = root.resolve()
    checked = _local_path(inside.as_uri(), 1, directory)

    fd = open_beneath(directory, checked, os.O_RDONLY)
    with open(fd, "rb") as handle:
        assert json.loads(handle.readline())["customer_id"] == "c0"
    unlink_beneath(directory, checked)

    assert not inside.exists()
    unlink_beneath(directory, checked)  # already gone: nothing to do
