"""The Singer messages target-braze reads, decoded once per line by msgspec.

Each message type is a tagged `msgspec.Struct`: decoding a line checks its shape too (a
RECORD without `stream` or `record`, an unknown `type`), so the message path never looks
at a malformed message. Fields the spec adds that Braze has no use for
(`time_extracted`, `version` on records) are ignored.
"""

from __future__ import annotations

from typing import Any

import msgspec

#: Input (standard input, BATCH files) is read this much at a time. Each read is a system
#: call that releases the GIL, and a sender thread waiting for it takes it and has to
#: hand it back: at 8 KiB (Python's default) that was 11 context switches per request.
READ_BUFFER_BYTES = 1 << 20


class SchemaMessage(msgspec.Struct, tag_field="type", tag="SCHEMA"):
    """A stream's JSON Schema and keys."""

    stream: str
    schema: dict[str, Any]
    key_properties: list[str] | None = None
    bookmark_properties: list[str] | None = None


class RecordMessage(msgspec.Struct, tag_field="type", tag="RECORD"):
    """One record of a stream."""

    stream: str
    record: dict[str, Any]


class StateMessage(msgspec.Struct, tag_field="type", tag="STATE"):
    """The tap's bookmark after the records before it."""

    value: Any


class ActivateVersionMessage(msgspec.Struct, tag_field="type", tag="ACTIVATE_VERSION"):
    """A table version switch (full-table replication)."""

    stream: str
    version: int


class BatchEncoding(msgspec.Struct):
    """How the files of a BATCH message are encoded."""

    format: str
    compression: str | None = None


class BatchMessage(msgspec.Struct, tag_field="type", tag="BATCH"):
    """Records in files instead of on the pipe."""

    stream: str
    encoding: BatchEncoding
    manifest: list[str]


Message = SchemaMessage | RecordMessage | StateMessage | ActivateVersionMessage | BatchMessage
MESSAGE_TYPES = ("SCHEMA", "RECORD", "STATE", "ACTIVATE_VERSION", "BATCH")

message_decoder = msgspec.json.Decoder(Message)
