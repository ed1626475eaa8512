"""The framework's floor: a singer-sdk target whose sink discards every record.

Default singer-sdk settings: the stdlib JSON reader and jsonschema validation. Two
environment variables switch on the levers target-braze may use, for the "levers" rows:
`BENCH_DISCARD_READER=msgspec` (singer-sdk's msgspec reader) and the config setting
`validate_records: false`.

Usage: `python benchmarks/baselines/discard_target.py --config c.json < stream.jsonl`
"""

from __future__ import annotations

import os
from typing import Any

from singer_sdk import Target
from singer_sdk import typing as th
from singer_sdk.sinks import BatchSink


class DiscardSink(BatchSink):
    """Accepts batches and does nothing with them."""

    def process_batch(self, context: dict[str, Any]) -> None:
        """Drop the batch."""


class DiscardTarget(Target):
    """A target that reads, validates and batches like any SDK target, then discards."""

    name = "target-discard"
    config_jsonschema = th.PropertiesList().to_dict()
    default_sink_class = DiscardSink


if os.environ.get("BENCH_DISCARD_READER") == "msgspec":
    from singer_sdk.contrib.msgspec import MsgSpecReader

    DiscardTarget.message_reader_class = MsgSpecReader


if __name__ == "__main__":
    DiscardTarget.cli()
