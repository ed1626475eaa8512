"""Singer stream files and BATCH files: slicing, counting, the last bookmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _is(kind: bytes, line: bytes) -> bool:
    return line.startswith(b'{"type":"' + kind) or b'"type":"' + kind + b'"' in line[:40]


def slice_stream(source: Path, target: Path, records: int) -> int:
    """Copy the first `records` RECORD messages (with SCHEMA/STATE lines around them)."""
    count = 0
    with source.open("rb") as src, target.open("wb") as dst:
        for line in src:
            if _is(b"RECORD", line):
                if count >= records:
                    break
                count += 1
            dst.write(line)
    return count


def count_records(path: Path) -> int:
    """RECORD messages in a Singer stream file."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if _is(b"RECORD", line))


def count_batch_records(stream: Path) -> int:
    """Lines in the files the BATCH messages of a Singer stream file name (plain JSONL)."""
    total = 0
    with stream.open("rb") as handle:
        for line in handle:
            if not _is(b"BATCH", line):
                continue
            for url in json.loads(line)["manifest"]:
                with Path(url.removeprefix("file://")).open("rb") as batch:
                    total += sum(1 for _ in batch)
    return total


def last_state(stream: Path) -> Any:
    """The value of the last STATE message of a Singer stream file (the tap's bookmark)."""
    last = None
    with stream.open("rb") as handle:
        for line in handle:
            if _is(b"STATE", line):
                last = line
    if last is None:
        msg = f"no STATE in {stream}"
        raise RuntimeError(msg)
    return json.loads(last)["value"]
