"""Read: input lines, messages, BATCH files, and what each message does (stream maps too).

The Singer messages target-braze reads, decoded once per line by msgspec.

Each message type is a tagged `msgspec.Struct`: decoding a line checks its shape too (a
RECORD without `stream` or `record`, an unknown `type`), so the message path never looks
at a malformed message. Fields the spec adds that Braze has no use for
(`time_extracted`, `version` on records) are ignored.

`MessageReader`: Singer lines from the input, decoded once, handed to the `MessagePath`.

singer-sdk lets a target choose its reader (`Target.message_reader_class`, a public
extension point) and calls the reader's `process_lines` with the input. This reader
decodes each line with msgspec straight into a typed message (floats stay floats: Braze
receives JSON numbers, so singer-sdk's `Decimal` round trip would only cost time) and
dispatches it to the message path itself; the SDK's per-message callbacks, and the
per-record work behind them, are not used. Every malformed line ends the run with one
error naming its line number.

`MessagePath`: what happens to each Singer message, in one place, on one path.

SCHEMA resolves the stream's settings, stream maps and object builder once. RECORD goes
through the stream's maps (identity unless `stream_maps` or flattening say otherwise),
then straight to the builder and the delivery. STATE goes to the checkpoint. BATCH
files are read record by record through the very same record path. There is no other
path: every record, from stdin or a file, mapped or not, is handled here.

`BatchFiles`: the records of Singer BATCH messages, read through the one record path.

A BATCH message names files (`manifest`, `file://` URIs) holding one record per JSON line,
plain or gzip (`encoding`): tap-peak-attributes' own files and singer-sdk taps' `jsonl`
files alike. Each record goes through `MessagePath.deliver`, exactly as a RECORD message's
would, so stream maps, validation, the ledger and the checkpoint treat it the same. The
STATE after a BATCH is released once every record of its files is settled. A missing or
unreadable file ends the run with one line naming it; STATE stays before it.

The manifest comes from the input, so it is not trusted with the file system:
- only files under `batch_files_dir` are read: an absolute `file://` URI without `..`,
  NUL, query or fragment, whose real path (links resolved) lies in the directory's real
  path; anything else ends the run with one line naming the URI and the problem;
- a file is opened through handles on `batch_files_dir` and each directory below it,
  none of them followed if it is a link (`private_files.open_beneath`), so a component
  swapped for a link after the check cannot lead out of the directory; with `O_NONBLOCK`,
  and it must be a regular file (`fstat`): a FIFO or a device cannot stall the run or
  fill its memory;
- at most `max_batch_file_bytes` are read from a file, after decompression;
- a settled file is deleted only if it lies under `batch_files_cleanup_dir`, the
  directory whose files the target may clean (meltano.yml: tap-peak-attributes' private
  BATCH directory), reached the same way (`private_files.unlink_beneath`); any other file
  is read and left where it is, for its writer to clean.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import msgspec
from singer_sdk import metrics
from singer_sdk.mapper import PluginMapper, SameRecordTransform, StreamMap
from singer_sdk.singerlib.encoding.base import GenericSingerReader
from typing_extensions import override

from target_braze.build import ObjectBuilder, StreamMappings, StreamSettings
from target_braze.checkpoint import Checkpoint
from target_braze.errors import ConfigError, InputError, TargetBrazeError
from target_braze.objects import USER_DATA_OBJECT_TYPES, BrazeObject, Origin, Rejection
from target_braze.private_files import open_beneath
from target_braze.run import Run
from target_braze.user_data import DeletingBuilder, UserDataBuilder

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


_generic_decoder = msgspec.json.Decoder()


class MessageReader(GenericSingerReader[Any]):
    """Reads bytes (stdin) or text (`--input FILE`, the SDK's test runner) lines."""

    def __init__(self) -> None:
        """No message path yet: the target binds one once its settings are known."""
        super().__init__()
        self.path: MessagePath | None = None
        self.line_number = 0

    @property
    @override
    def default_input(self) -> IO[Any]:
        """Standard input, as bytes where it can be, read `READ_BUFFER_BYTES` at a time."""
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            return getattr(sys.stdin, "buffer", sys.stdin)
        return open(fd, "rb", buffering=READ_BUFFER_BYTES, closefd=False)

    @override
    def deserialize_json(self, line: Any) -> dict:
        """Parse one line as a plain dict (the SDK's interface; the path uses typed messages)."""
        try:
            message = _generic_decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise InputError(_decode_problem(line, exc, self.line_number)) from None
        if not isinstance(message, dict):
            raise InputError(f"line {self.line_number}: a Singer message must be a JSON object")
        return message

    @override
    def process_lines(
        self,
        file_input: IO[Any] | None,
        callbacks: dict[str, Callable[[dict], None]],
    ) -> Counter[str]:
        """Decode and dispatch every line; `callbacks` (the SDK's handlers) are not used."""
        path = self.path
        if path is None:
            msg = "MessageReader.path must be bound before reading"
            raise RuntimeError(msg)
        counts: Counter[str] = Counter()
        records = 0
        decode = message_decoder.decode
        record = path.record
        others: dict[type, tuple[str, Callable[[Any, int], None]]] = {
            StateMessage: ("STATE", path.state),
            SchemaMessage: ("SCHEMA", path.schema),
            BatchMessage: ("BATCH", path.batch),
            ActivateVersionMessage: ("ACTIVATE_VERSION", path.activate_version),
        }
        line_number = self.line_number
        stream = file_input or self.default_input
        readline = stream.readline
        # A line is read at most `limit` long, so an oversized one never sits in memory whole.
        limit = path.max_record_bytes + 1
        while line := readline(limit):
            line_number += 1
            self.line_number = line_number
            if len(line) >= limit and line[-1:] not in _NEWLINES:
                path.oversized(line, skip_rest_of_line(readline), line_number)
                continue
            try:
                message = decode(line)
            except msgspec.DecodeError as exc:
                if not line.strip():
                    continue  # a blank line carries no message
                raise InputError(_decode_problem(line, exc, line_number)) from None
            except RecursionError:
                path.too_deep(line, line_number)
                continue
            if type(message) is RecordMessage:
                records += 1
                record(message, line_number)
                continue
            name, handle = others[type(message)]
            handle(message, line_number)
            counts[name] += 1
        counts["RECORD"] += records
        return counts


_NEWLINES = (b"\n", "\n")

_SKIP_CHUNK = 1 << 20


def skip_rest_of_line(readline: Callable[[int], Any]) -> int:
    """Read past the rest of an oversized line, a chunk at a time; return its length."""
    skipped = 0
    while chunk := readline(_SKIP_CHUNK):
        skipped += len(chunk)
        if chunk[-1:] in _NEWLINES:
            break
    return skipped


def _decode_problem(line: Any, exc: msgspec.DecodeError, line_number: int) -> str:
    """One line saying what is wrong with an input line, and what to do."""
    raw = line if isinstance(line, bytes) else str(line).encode("utf-8", "surrogateescape")
    problem = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if "`$.type`" in problem or "field `type`" in problem:
            return (
                f"line {line_number}: not a Singer message type ({problem}); expected one of "
                f"{', '.join(MESSAGE_TYPES)}"
            )
        return f"line {line_number}: a malformed Singer message ({problem})"
    if b"NaN" in raw or b"Infinity" in raw:
        return (
            f"line {line_number}: holds NaN or Infinity, which JSON (and Braze) cannot carry; "
            "make the tap write null (or filter the value with a stream map)"
        )
    if "UTF-8" in problem:
        return (
            f"line {line_number}: is not valid UTF-8 ({problem}); Singer messages are UTF-8 "
            "JSON: fix the tap's text encoding"
        )
    return (
        f"line {line_number}: is not valid JSON ({problem}): {raw[:80]!r}; the tap must write "
        "one JSON Singer message per line"
    )


Builder = ObjectBuilder | UserDataBuilder | DeletingBuilder

logger = logging.getLogger("target_braze")


@dataclass(slots=True)
class _Route:
    """One output of a source stream: its map transform, builder and metric counter."""

    alias: str
    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None  # None: identity
    builder: Builder
    counter: metrics.Counter
    #: Where its objects go: the /users/track delivery, or the user-data endpoints.
    add: Callable[[BrazeObject], None]
    uncounted: int = 0


class MessagePath:
    """Handles every message the reader decodes, in input order (main thread)."""

    def __init__(self, config: Mapping[str, Any], mapper: PluginMapper, run: Run) -> None:
        """`config` holds every setting with its default; `mapper` is singer-sdk's."""
        self._config = config
        self._mapper = mapper
        self._run = run
        self._mappings = StreamMappings(config)
        self._validate = bool(config["validate_records"])
        self._routes: dict[str, list[_Route]] = {}
        self._counters: dict[str, metrics.Counter] = {}
        self._batch_size = int(config.get("batch_size_rows") or 0)
        self._since_drain = 0
        self._activate_version_noted: set[str] = set()
        # Called for every record: bound once.
        self._register = run.checkpoint.register_record
        self._add = run.delivery.add
        self.batch_reader: Callable[[BatchMessage, int], None] | None = None
        #: The longest line (or BATCH file line) read as a record; a longer one is rejected.
        self.max_record_bytes = int(config["max_record_bytes"])
        if self.max_record_bytes < 1:
            raise ConfigError("max_record_bytes must be at least 1")

    def schema(self, message: SchemaMessage, line: int) -> None:
        """Resolve the stream's maps, settings and builder (again, if the schema changed)."""
        stream = message.stream
        if not isinstance(message.schema.get("properties"), dict):
            raise InputError(
                f"line {line}: the SCHEMA of stream '{stream}' has no 'properties' object"
            )
        check_schema(stream, message.schema, line)
        key_properties = message.key_properties or []
        try:
            self._mapper.register_raw_stream_schema(stream, message.schema, key_properties)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise InputError(
                f"line {line}: the SCHEMA of stream '{stream}' cannot be used by the stream "
                f"maps ({type(exc).__name__}: {str(exc)[:200]}); fix the tap's schema or the "
                "stream_maps setting"
            ) from None
        entry_of: dict[str, Mapping[str, Any] | None] = {}
        routes = []
        for stream_map in self._mapper.stream_maps[stream]:
            alias = stream_map.stream_alias
            if alias not in entry_of:
                entry_of[alias] = self._mappings.entry_for(alias)
            schema = stream_map.transformed_schema
            settings = StreamSettings.from_config(
                alias,
                schema,
                self._config,
                entry_of[alias],
                bookmark_properties=message.bookmark_properties or (),
                key_properties=stream_map.transformed_key_properties or (),
            )
            builder, add = self._builder(settings, schema)
            counter = self._counters.get(alias)
            if counter is None:
                counter = self._counters[alias] = metrics.record_counter(alias)
            routes.append(_Route(alias, _transform_of(stream_map), builder, counter, add))
        self._routes[stream] = routes

    def _builder(
        self, settings: StreamSettings, schema: dict[str, Any]
    ) -> tuple[Builder, Callable[[BrazeObject], None]]:
        """The stream's builder, and where its objects go.

        Streams of /users/track objects go straight to the delivery, unless they identify
        users by alias or aliases or identifies of this run came before: then through
        `UserData.add_track`, which holds an object for a user an alias or identify of the
        run names until Braze confirmed it and the pause passed.
        """
        user_data = self._run.user_data
        if settings.object_type in USER_DATA_OBJECT_TYPES:
            user_data.stream_merge_behavior(settings.stream, settings.merge_behavior)
            return UserDataBuilder(settings), user_data.add
        builder = ObjectBuilder(settings, schema, validate=self._validate)
        ledger = self._run.ledger
        if ledger is not None:
            ledger.set_change_thresholds(settings.stream, settings.change_thresholds)
        if settings.deleted_property:
            return DeletingBuilder(settings, builder), user_data.add
        guarded = user_data.track_guard_needed or settings.identifier_type == "user_alias"
        return builder, user_data.add_track if guarded else self._add

    def record(self, message: RecordMessage, line: int) -> None:
        """Map, build and deliver one record from the input."""
        routes = self._routes.get(message.stream)
        if routes is None:
            raise InputError(
                f"line {line}: a RECORD of stream '{message.stream}' arrived before its "
                "SCHEMA; the tap must send each stream's SCHEMA message first"
            )
        self.deliver(routes, message.record, line)

    def routes(self, stream: str, line: int) -> list[_Route]:
        """The routes of a stream whose SCHEMA has arrived (for BATCH files)."""
        routes = self._routes.get(stream)
        if routes is None:
            raise InputError(
                f"line {line}: a BATCH of stream '{stream}' arrived before its SCHEMA; the "
                "tap must send each stream's SCHEMA message first"
            )
        return routes

    def deliver(self, routes: list[_Route], record: dict[str, Any], origin: Origin) -> None:
        """The record path: map, build, then reject or hand to the delivery."""
        run = self._run
        for route in routes:
            transform = route.transform
            if transform is None:
                transformed: dict[str, Any] | None = record
            else:
                try:
                    transformed = transform(record)
                except TargetBrazeError:
                    raise
                except Exception as exc:  # any expression may fail on some record
                    reason = (
                        f"the stream map of '{route.alias}' failed on this record "
                        f"({type(exc).__name__}: {str(exc)[:200]}); fix the expression in "
                        "stream_maps or the record"
                    )
                    self._reject(route.alias, record, reason, origin, "STREAM_MAP_FAILED")
                    continue
            if transformed is None:  # filtered out by a stream map
                continue
            seq = self._register()
            built = route.builder.build(transformed, seq, origin)
            if isinstance(built, Rejection):
                run.settlement.reject_record(built, seq)
            else:
                route.add(built)
            route.uncounted += 1
            if not seq & 1023:
                route.counter.increment(route.uncounted)
                route.uncounted = 0
                run.stats.maybe_log_progress()
                # A sender's failure also surfaces at the next request; this bounds it.
                run.raise_if_failed()
        if self._batch_size:
            self._since_drain += 1
            if self._since_drain >= self._batch_size:
                # batch_size_rows: wait until Braze confirmed everything so far.
                self._since_drain = 0
                run.delivery.drain()

    def oversized(
        self, start: bytes | str, rest: int, origin: Origin, stream: str | None = None
    ) -> None:
        """A line longer than `max_record_bytes`: reject its record, unread (never a crash).

        Only its start was read. From the input, the type and stream are taken from there
        (`stream` None); a line that is not a RECORD (a huge SCHEMA or STATE) cannot be
        skipped safely, so it ends the run. From a BATCH file, `stream` is the BATCH's.
        """
        problem = (
            f"is {len(start) + rest} bytes, longer than max_record_bytes "
            f"({self.max_record_bytes}; Braze takes at most 4 MB per request)"
        )
        self._reject_line(start, origin, stream, problem, "RECORD_TOO_LARGE")

    def too_deep(self, text: bytes | str, origin: Origin, stream: str | None = None) -> None:
        """A line nested too deep to decode: reject its record (or end the run if not one)."""
        problem = "is nested too deep to decode (Braze nested attributes are shallow)"
        self._reject_line(text, origin, stream, problem, "RECORD_TOO_DEEP")

    def _reject_line(
        self, text: bytes | str, origin: Origin, stream: str | None, problem: str, kind: str
    ) -> None:
        head = text[:_HEAD_BYTES]
        head = head if isinstance(head, bytes) else head.encode("utf-8", "surrogateescape")
        if stream is None:
            found = _RECORD_STREAM.search(head)
            if found is None or _RECORD_TYPE.search(head) is None:
                raise InputError(
                    f"line {origin}: a message {problem}, and its first {_HEAD_BYTES // 1024} "
                    "KiB do not say it is a RECORD of a named stream, so it cannot be rejected "
                    "alone; fix the tap"
                )
            stream = found.group(1).decode("utf-8", "replace")
        self.reject_unread(stream, head, f"the record {problem}", origin, kind)

    def reject_unread(
        self, stream: str, excerpt: bytes, reason: str, origin: Origin, kind: str
    ) -> None:
        """Reject a record that could not be read whole; `excerpt` is the start of its line."""
        routes = self._routes.get(stream)
        if routes is None:
            raise InputError(
                f"line {origin}: a RECORD of stream '{stream[:100]}' arrived before its SCHEMA; "
                "the tap must send each stream's SCHEMA message first"
            )
        start = excerpt[:_EXCERPT_BYTES].decode("utf-8", "ignore")
        record = {"_unread_line_start": start}
        for route in routes:
            self._reject(route.alias, record, reason, origin, kind)

    def _reject(
        self, stream: str, record: dict[str, Any], reason: str, origin: Origin, kind: str
    ) -> None:
        seq = self._register()
        rejection = Rejection(stream, None, record, reason, origin, kind)
        self._run.settlement.reject_record(rejection, seq)

    def state(self, message: StateMessage, line: int) -> None:
        """Queue the STATE behind the records so far; a partly filled request is sent soon."""
        if not isinstance(message.value, dict):
            raise InputError(f"line {line}: a STATE message's value must be a JSON object")
        self._run.checkpoint.add_state(message.value)
        self._run.delivery.flush_if_older_than(self._run.flush_interval)
        self._run.user_data.flush()

    def activate_version(self, message: ActivateVersionMessage, line: int) -> None:
        """Accepted and ignored: Braze profiles have no table versions to switch."""
        if message.stream not in self._activate_version_noted:
            self._activate_version_noted.add(message.stream)
            logger.info(
                "Stream %s: ACTIVATE_VERSION (line %d) ignored; Braze has no table versions, "
                "and records are upserts",
                message.stream,
                line,
            )

    def batch(self, message: BatchMessage, line: int) -> None:
        """Read a BATCH message's files through the record path."""
        if self.batch_reader is None:
            raise InputError(f"line {line}: BATCH messages are not supported")
        self.batch_reader(message, line)

    def finish(self) -> None:
        """End of input: count, warn about unused stream_mappings, finish the run."""
        for routes in self._routes.values():
            for route in routes:
                if route.uncounted:
                    route.counter.increment(route.uncounted)
                    route.uncounted = 0
        for counter in self._counters.values():
            counter.exit()
        unused = self._mappings.unmatched()
        if unused:
            logger.warning(
                "stream_mappings entries matched no stream of this run: %s (typo, or a stream "
                "the tap did not send?)",
                ", ".join(unused),
            )
        self._run.finish()


# Where `oversized` looks for the type and stream of a line it did not read whole.
_HEAD_BYTES = 64 * 1024

# How much of such a line the rejects output shows (its record was never read).
_EXCERPT_BYTES = 16 * 1024

_RECORD_TYPE = re.compile(rb'"type"\s*:\s*"RECORD"')

_RECORD_STREAM = re.compile(rb'"stream"\s*:\s*"([^"\\]{1,1000})"')

# How deep `check_schema` follows a schema: far beyond any real stream's.
_MAX_SCHEMA_DEPTH = 64


def check_schema(stream: str, schema: dict[str, Any], line: int) -> None:
    """Refuse, with one line naming the stream and property, a schema the target cannot use."""

    def fail(where: str, problem: str) -> InputError:
        return InputError(
            f"line {line}: the SCHEMA of stream '{stream}' is malformed at {where}: {problem}; "
            "fix the tap's schema"
        )

    def check(prop: Any, where: str, depth: int) -> None:
        if depth > _MAX_SCHEMA_DEPTH:
            raise fail(where, f"nested deeper than {_MAX_SCHEMA_DEPTH} levels")
        if not isinstance(prop, dict):
            raise fail(where, f"a {type(prop).__name__}, not a JSON Schema object")
        declared = prop.get("type")
        if declared is not None and not (
            isinstance(declared, str)
            or (isinstance(declared, list) and all(isinstance(t, str) for t in declared))
        ):
            raise fail(where, f"'type' is {str(declared)[:40]}, not a type name or list of them")
        for keyword in ("anyOf", "oneOf", "allOf"):
            options = prop.get(keyword)
            if options is None:
                continue
            if not isinstance(options, list):
                raise fail(where, f"'{keyword}' is not a list")
            for i, option in enumerate(options):
                check(option, f"{where}.{keyword}[{i}]", depth + 1)
        nested = prop.get("properties")
        if nested is not None:
            if not isinstance(nested, dict):
                raise fail(where, "'properties' is not an object")
            for name, child in nested.items():
                check(child, f"{where}.{name}", depth + 1)
        items = prop.get("items")
        if items is not None and not isinstance(items, bool):
            check(items, f"{where}[]", depth + 1)
        required = prop.get("required")
        if required is not None and not (
            isinstance(required, list) and all(isinstance(r, str) for r in required)
        ):
            raise fail(where, "'required' is not a list of property names")

    for name, prop in schema["properties"].items():
        check(prop, f"property '{name}'", 1)
    required = schema.get("required")
    if required is not None and not (
        isinstance(required, list) and all(isinstance(r, str) for r in required)
    ):
        raise fail("'required'", "not a list of property names")


def _transform_of(
    stream_map: StreamMap,
) -> Callable[[dict[str, Any]], dict[str, Any] | None] | None:
    """The map's transform, or None where singer-sdk's map is the identity.

    With no `stream_maps` entry and flattening off, `SameRecordTransform.transform` returns
    the record itself (checked by a test); calling it for every record would only cost.
    """
    if isinstance(stream_map, SameRecordTransform) and not stream_map.flattening_enabled:
        return None
    return stream_map.transform


logger = logging.getLogger("target_braze")

_decode = msgspec.json.Decoder().decode

_COMPRESSIONS = ("none", "gzip")


class BatchFiles:
    """Reads each BATCH message's files in order, record by record."""

    def __init__(
        self, path: MessagePath, checkpoint: Checkpoint, config: Mapping[str, Any]
    ) -> None:
        """Bind to the record path and the checkpoint that releases files; check the dirs."""
        self._path = path
        self._checkpoint = checkpoint
        self._config = config
        # Resolved at the first BATCH: the tap, started beside the target, creates them.
        self._directories: tuple[Path | None, Path | None] | None = None
        self._max_bytes = int(config["max_batch_file_bytes"])
        if self._max_bytes < 1:
            raise ConfigError("max_batch_file_bytes must be at least 1")
        self._left_in_place_noted = False

    def read(self, message: BatchMessage, line: int) -> None:
        """Deliver every record of the message's files; a file is released once settled."""
        routes = self._path.routes(message.stream, line)
        encoding = message.encoding
        compression = encoding.compression or "none"
        if encoding.format != "jsonl" or compression not in _COMPRESSIONS:
            raise InputError(
                f"line {line}: BATCH encoding {encoding.format}/{compression} of stream "
                f"'{message.stream}' is not supported; use jsonl, uncompressed or gzip, in the "
                "tap's batch_config"
            )
        if self._directories is None:
            cleanup = _directory(self._config, "batch_files_cleanup_dir")
            # Cleaning a directory implies reading it: one setting suffices for a private one.
            self._directories = (_directory(self._config, "batch_files_dir") or cleanup, cleanup)
        directory, cleanup = self._directories
        if directory is None:
            raise InputError(
                f"line {line}: a BATCH message arrived but batch_files_dir is not set: set it "
                "to the directory the tap writes its batch files to (and "
                "batch_files_cleanup_dir too if the target may delete them once settled)"
            )
        deliver = self._path.deliver
        for uri in message.manifest:
            file = _local_path(uri, line, directory)
            name = str(file)
            records = _records(
                file, directory, compression, line, self._max_bytes, self._path, message.stream
            )
            for file_line, record in records:
                if record is not None:
                    deliver(routes, record, (line, name, file_line))
            if cleanup is not None and file.is_relative_to(cleanup):
                self._checkpoint.add_file(file, cleanup)
            elif not self._left_in_place_noted:
                self._left_in_place_noted = True
                logger.info(
                    "BATCH files outside batch_files_cleanup_dir (%s) are read and left in "
                    "place for their writer to clean up",
                    cleanup or "unset",
                )


def _directory(config: Mapping[str, Any], setting: str) -> Path | None:
    """The real path of a directory setting; relative to the working directory."""
    value = config.get(setting)
    if not value:
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise ConfigError(f"{setting} must be the path of a directory")
    directory = Path(os.path.realpath(Path(value).expanduser()))
    if not directory.is_dir():
        raise ConfigError(
            f"{setting}: {directory} is not a directory; point {setting} at the directory "
            "the tap writes its batch files to"
        )
    return directory


def _local_path(uri: str, line: int, directory: Path) -> Path:
    """The real path of a manifest URI, checked to lie in `directory`."""

    def refuse(problem: str) -> InputError:
        return InputError(
            f"line {line}: BATCH file URI {uri[:200]!r} {problem}; target-braze reads only "
            f"absolute file:// URIs of files under batch_files_dir ({directory})"
        )

    if not isinstance(uri, str):
        raise refuse("is not a string")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise refuse(f"is not a URI ({exc})") from None
    if parts.scheme != "file":
        raise refuse(f"has scheme {parts.scheme!r}, not file")
    if parts.netloc not in ("", "localhost"):
        raise refuse(f"names host {parts.netloc!r}: only local files are read")
    if parts.query or parts.fragment:
        raise refuse("has a query or fragment")
    try:
        decoded = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise refuse("is not UTF-8 once percent-decoded") from None
    if "\x00" in decoded:
        raise refuse("holds a NUL character")
    if not decoded.startswith("/"):
        raise refuse("is a relative path")
    if ".." in decoded.split("/"):
        raise refuse("holds a '..' segment")
    real = Path(os.path.realpath(decoded))
    if not real.is_relative_to(directory):
        raise refuse(f"resolves to {real}, outside batch_files_dir")
    return real


def _records(
    file: Path,
    directory: Path,
    compression: str,
    line: int,
    max_bytes: int,
    path: MessagePath,
    stream: str,
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """The file's records by line; None where a line was rejected unread (too long or deep)."""
    try:
        handle = _open(file, directory, line)
    except OSError as exc:
        raise InputError(
            f"line {line}: the BATCH file {file} cannot be read ({exc.strerror or exc}); STATE "
            "stays before it: rerun the sync so the tap writes it again"
        ) from None
    unpacked = gzip.GzipFile(fileobj=handle, mode="rb") if compression == "gzip" else handle
    with handle, unpacked as lines:
        file_line = 0
        read = 0
        limit = path.max_record_bytes + 1
        readline = lines.readline
        try:
            while raw := readline(limit):
                file_line += 1
                if len(raw) >= limit and raw[-1:] != b"\n":
                    rest = skip_rest_of_line(readline)
                    read += len(raw) + rest
                    if read <= max_bytes:
                        origin = (line, str(file), file_line)
                        path.oversized(raw, rest, origin, stream)
                        yield file_line, None
                        continue
                read += len(raw)
                if read > max_bytes:
                    raise InputError(
                        f"line {line}: the BATCH file {file} holds more than "
                        f"max_batch_file_bytes ({max_bytes}) bytes (after decompression) by "
                        f"its line {file_line}; raise max_batch_file_bytes or make the tap "
                        "write smaller files (batch_size)"
                    )
                try:
                    record = _decode(raw)
                except RecursionError:
                    path.too_deep(raw, (line, str(file), file_line), stream)
                    yield file_line, None
                    continue
                except msgspec.DecodeError as exc:
                    if not raw.strip():
                        continue
                    raise InputError(
                        f"line {line}: the BATCH file {file}, line {file_line}, is not a JSON "
                        f"record ({exc})"
                    ) from None
                if not isinstance(record, dict):
                    raise InputError(
                        f"line {line}: the BATCH file {file}, line {file_line}, holds a JSON "
                        f"{type(record).__name__}, not a record object"
                    )
                yield file_line, record
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip file
            raise InputError(
                f"line {line}: the BATCH file {file} is unreadable after line {file_line} "
                f"({exc}); STATE stays before it: rerun the sync"
            ) from None


def _open(file: Path, directory: Path, line: int) -> IO[bytes]:
    # Opened here and closed by the caller's `with`, so an open failure is told apart.
    # O_NONBLOCK: opening a FIFO must not wait for a writer; then it is refused by fstat.
    fd = open_beneath(directory, file, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(
                f"line {line}: the BATCH file {file} is not a regular file (a "
                f"{_kind(mode)}); target-braze reads batch files only from regular files"
            )
        os.set_blocking(fd, True)
        raw = open(fd, "rb", buffering=READ_BUFFER_BYTES)  # noqa: SIM115 (closed by caller)
    except BaseException:
        os.close(fd)
        raise
    return raw


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "directory" if stat.S_ISDIR(mode) else "special file"
