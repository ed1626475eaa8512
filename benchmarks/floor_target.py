"""The framework's floor: a singer-sdk target that reads and discards every record.

singer-sdk's msgspec reader with `validate_records: false` in its config: the least any
singer-sdk target pays to read a stream, the baseline of `python -m benchmarks target`.
Usage: `python benchmarks/floor_target.py --config c.json < stream.jsonl`
"""

from typing import Any

from singer_sdk import Target
from singer_sdk import typing as th
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.sinks import BatchSink


class DiscardSink(BatchSink):
    """Accepts batches and does nothing with them."""

    def process_batch(self, context: dict[str, Any]) -> None:
        """Drop the batch."""


class DiscardTarget(Target):
    """Reads and batches like any SDK target, then discards."""

    name = "target-discard"
    config_jsonschema = th.PropertiesList().to_dict()
    default_sink_class = DiscardSink
    message_reader_class = MsgSpecReader


if __name__ == "__main__":
    DiscardTarget.cli()
