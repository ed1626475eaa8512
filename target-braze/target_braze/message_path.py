"""`MessagePath`: what happens to each Singer message, in one place, on one path.

SCHEMA resolves the stream's settings, stream maps and object builder once. RECORD goes
through the stream's maps (identity unless `stream_maps` or flattening say otherwise),
then straight to the builder and the delivery. STATE goes to the checkpoint. BATCH
files are read record by record through the very same record path. There is no other
path: every record, from stdin or a file, mapped or not, is handled here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from singer_sdk import metrics
from singer_sdk.mapper import PluginMapper, SameRecordTransform, StreamMap

from target_braze.builder import ObjectBuilder
from target_braze.errors import ConfigError, InputError, TargetBrazeError
from target_braze.messages import (
    ActivateVersionMessage,
    BatchMessage,
    RecordMessage,
    SchemaMessage,
    StateMessage,
)
from target_braze.objects import USER_DATA_OBJECT_TYPES, BrazeObject, Origin, Rejection
from target_braze.run import Run
from target_braze.stream_settings import StreamMappings, StreamSettings
from target_braze.user_data_objects import DeletingBuilder, UserDataBuilder

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
