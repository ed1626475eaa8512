"""Streams of customers whose predicted attributes changed since the last sync.

Two table shapes, one incremental contract (see `incremental.py`):

- wide: one row per customer, one column per attribute. A record is the whole row.
- long: one row per changed attribute. The rows of one customer sharing an updated-at
  become one record holding only those attributes, because every attribute sent to Braze
  is a billed data point.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
import typing as t
from dataclasses import dataclass, field

import sqlalchemy as sa
from singer_sdk import Stream
from singer_sdk.exceptions import InvalidStreamSortException
from singer_sdk.helpers._batch import SDKBatchMessage
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.mapper import RemoveRecordTransform, SameRecordTransform
from typing_extensions import override

from tap_peak_attributes.batch_files import BatchDirectory, BatchFile
from tap_peak_attributes.connector import (
    Warehouse,
    attribute_key,
    is_semi_structured,
    json_scalar,
    json_schema_for,
    resolve_name,
    value_converter,
)
from tap_peak_attributes.errors import TapPeakError
from tap_peak_attributes.incremental import (
    LAST_ID_KEY,
    REPLICATION_KEY,
    Bookmark,
    Window,
    incremental_query,
)
from tap_peak_attributes.output import SingerOutput, record_prefix, record_suffix
from tap_peak_attributes.timestamps import parse_setting

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from singer_sdk import Tap
    from singer_sdk.helpers import types
    from singer_sdk.helpers._batch import BatchConfig
    from singer_sdk.mapper import StreamMap

#: Types a long table's text values can be given in `attribute_types`.
ATTRIBUTE_TYPES: dict[str, dict[str, t.Any]] = {
    "string": {"type": ["string", "null"]},
    "integer": {"type": ["integer", "null"]},
    "number": {"type": ["number", "null"]},
    "boolean": {"type": ["boolean", "null"]},
    "date-time": {"type": ["string", "null"], "format": "date-time"},
}
#: Distinct values sampled per long attribute when its type must be inferred.
INFERENCE_SAMPLE = 200
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_BOOLEAN = frozenset({"true", "false"})
#: Rows fetched from the DB-API cursor at a time.
FETCH_ROWS = 5_000


def utc_now() -> dt.datetime:
    """The sync's clock (a function so tests can move time forward)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class StreamSettings:
    """One entry of the `streams` setting, with defaults applied."""

    name: str
    table: str
    shape: str = "wide"
    schema: str | None = None
    id_column: str = "customer_id"
    updated_at_column: str = "updated_at"
    attributes: tuple[str, ...] = ()
    exclude_attributes: tuple[str, ...] = ()
    attribute_name_column: str = "attribute_name"
    attribute_value_column: str = "attribute_value"
    attribute_types: dict[str, str] = field(default_factory=dict)
    attribute_prefix: str = "peak_"

    @classmethod
    def from_config(cls, raw: t.Mapping[str, t.Any], default_schema: str | None) -> StreamSettings:
        """Validate one stream entry; JSON Schema already checked the types."""
        name = raw.get("name") or raw.get("table")
        if not name or not raw.get("table"):
            msg = "every entry of `streams` needs a `table` (and a `name`)"
            raise TapPeakError(msg)
        shape = raw.get("shape", "wide")
        if shape not in {"wide", "long"}:
            msg = f"streams[{name}].shape must be 'wide' or 'long', not {shape!r}"
            raise TapPeakError(msg)
        types = {str(k).lower(): str(v) for k, v in (raw.get("attribute_types") or {}).items()}
        unknown = sorted({v for v in types.values() if v not in ATTRIBUTE_TYPES})
        if unknown:
            msg = (
                f"streams[{name}].attribute_types: unknown type(s) {', '.join(unknown)}; "
                f"use one of {', '.join(ATTRIBUTE_TYPES)}"
            )
            raise TapPeakError(msg)
        prefix = raw.get("attribute_prefix")
        return cls(
            name=str(name),
            table=str(raw["table"]),
            shape=shape,
            schema=raw.get("schema") or default_schema,
            id_column=raw.get("id_column") or "customer_id",
            updated_at_column=raw.get("updated_at_column") or "updated_at",
            attributes=tuple(raw.get("attributes") or ()),
            exclude_attributes=tuple(raw.get("exclude_attributes") or ()),
            attribute_name_column=raw.get("attribute_name_column") or "attribute_name",
            attribute_value_column=raw.get("attribute_value_column") or "attribute_value",
            attribute_types=types,
            attribute_prefix="peak_" if prefix is None else str(prefix),
        )


def is_identity(stream_map: StreamMap) -> bool:
    """Whether a stream map returns every record unchanged (no map, no flattening)."""
    return type(stream_map) is SameRecordTransform and not stream_map.flattening_enabled


def map_record(stream_map: StreamMap, record: types.Record) -> dict | None:
    """`stream_map.transform(record)`; an expression failing on a record is one clear line.

    singer-sdk lets the expression's own exception (a ValueError from `int('x')`, ...)
    escape with a traceback.
    """
    try:
        return stream_map.transform(record)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = (
            f"stream_maps: the map of stream {stream_map.stream_alias} failed on customer "
            f"{record.get('customer_id')}: {type(exc).__name__}: {reason}"
        )
        raise TapPeakError(msg) from exc


def _text_of(value: t.Any) -> str | None:
    """A value as a text column would hold it (a decoded JSON `true` is `true`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


def infer_attribute_type(values: t.Iterable[str | None]) -> str:
    """Narrowest of integer, number, boolean, string that fits every sampled value."""
    texts = [v.strip() for v in values if v is not None and v.strip()]
    if not texts:
        return "string"
    if all(_INTEGER.match(v) for v in texts):
        return "integer"
    if all(_NUMBER.match(v) for v in texts):
        return "number"
    if all(v.lower() in _BOOLEAN for v in texts):
        return "boolean"
    return "string"


@dataclass(frozen=True)
class Batch:
    """One closed batch: a file per output stream, and the bookmark they reach."""

    files: list[tuple[str, str]]  # (output stream, file:// URL)
    bookmark: tuple[str, str] | None


class PeakAttributesStream(Stream):
    """Common incremental machinery; subclasses build the columns and the records."""

    replication_key = REPLICATION_KEY
    is_sorted = True
    # Records are built already typed from the schema (see `value_converter`); the SDK's
    # per-field conformance pass cost a third of the run time on large syncs.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    def __init__(self, tap: Tap, settings: StreamSettings, warehouse: Warehouse) -> None:
        """Reflect the table and build the schema (this is discovery)."""
        self.settings = settings
        self.warehouse = warehouse
        self.owner = tap
        with warehouse.connect() as conn:
            try:
                self.table = warehouse.resolve_table(conn, settings.schema, settings.table)
                self.id_column = self.table.column(settings.id_column, "id_column")
                self.ts_column = self.table.column(settings.updated_at_column, "updated_at_column")
                properties = self.discover_attributes(conn)
            except sa.exc.DBAPIError as exc:
                raise warehouse.error(f"cannot read {settings.table}", exc) from exc
        self.converters = {key: value_converter(schema) for key, schema in properties.items()}
        schema = {
            "type": "object",
            "properties": {
                "customer_id": {"type": ["string"]},
                REPLICATION_KEY: {"type": ["string"], "format": "date-time"},
                **properties,
            },
            "required": ["customer_id", REPLICATION_KEY],
        }
        super().__init__(tap, schema=schema, name=settings.name)
        self.STATE_MSG_FREQUENCY = int(tap.config.get("state_message_frequency") or 10_000)
        self._advance = True
        self._last_emitted: tuple[str, str] | None = None
        self._bookmark: dict[str, t.Any] | None = None
        self._batching = False
        self._pending_bookmark: tuple[str, str] | None = None
        self._record_suffix = record_suffix(dt.datetime.now(dt.UTC))
        self._record_outputs: list[tuple[StreamMap | None, bytes]] | None = None

    def discover_attributes(self, conn: sa.Connection) -> dict[str, dict[str, t.Any]]:
        """Attribute properties of the record schema, keyed by prefixed name."""
        raise NotImplementedError

    @override
    def get_records(self, context: types.Context | None) -> t.Iterable[dict]:
        """The shape's records; the buffered RECORD lines are written after the last one.

        A STATE usually follows and writes them anyway, but not when it would repeat the
        previous one (singer-sdk then writes none), e.g. after a look-back re-read.
        """
        yield from self.records(context)
        writer = self._tap.message_writer
        if isinstance(writer, SingerOutput):
            writer.flush()

    def records(self, context: types.Context | None) -> t.Iterator[dict]:
        """One record per changed customer (wide) or customer and updated-at (long)."""
        raise NotImplementedError

    def selected_attributes(self) -> set[str]:
        """Attribute keys selected in the catalog; records never hold the others.

        singer-sdk would remove deselected properties from every record, walking the
        selection mask per property; leaving them out of the record costs nothing.
        """
        return {key for key in self.converters if self.mask[("properties", key)]}

    # --- the window ---------------------------------------------------------------

    def window(self) -> Window:
        """Rows to read now: after the bookmark (minus look-back), never past sync start."""
        start = self.config.get("start_date")
        minutes = int(self.config.get("lookback_window_minutes") or 0)
        bookmark = Bookmark.from_state(self.stream_state)
        cap = utc_now()
        complete_until = self.complete_until()
        if complete_until is not None:
            cap = min(cap, complete_until)
            if bookmark is not None and complete_until <= bookmark.updated_at:
                self.logger.info(
                    "Stream %s: no successful model run since its bookmark (%s); 0 records",
                    self.name,
                    bookmark.updated_at.isoformat(),
                )
        return Window(
            bookmark=bookmark,
            start_date=parse_setting(start, "start_date") if start else None,
            lookback=dt.timedelta(minutes=minutes),
            cap=cap,
        )

    def complete_until(self) -> dt.datetime | None:
        """Until when the model's output is complete (the tap asks Peak; None: not guarded)."""
        until = getattr(self.owner, "model_output_complete_until", None)
        return until if isinstance(until, dt.datetime) else None

    def bind_id(self, value: str) -> t.Any:
        """Bind the stored (text) id with the column's own type, so ordering agrees."""
        if json_schema_for(self.table.columns[self.id_column])["type"][0] == "integer":
            return int(value)
        return value

    def row_chunks(
        self, columns: list[str], order_after: t.Sequence[str] = ()
    ) -> Iterator[t.Sequence[sa.Row[t.Any]]]:
        """Run the incremental query; yield its rows in chunks of `FETCH_ROWS`.

        Rows are `(ts, id, after_bookmark, *columns)`; each chunk is one DB-API
        `fetchmany` (a server-side cursor's on PostgreSQL/Redshift). `order_after` (a
        subset of `columns`) orders rows within one (ts, id) pair.
        """
        source = self.table.sql(*dict.fromkeys([self.id_column, self.ts_column, *columns]))
        ts, bind_ts = self.warehouse.timestamp_expression(
            source.c[self.ts_column], self.table.columns[self.ts_column]
        )
        query = incremental_query(
            source=source,
            ts=ts,
            id_column=source.c[self.id_column],
            columns=[source.c[c] for c in columns],
            window=self.window(),
            bind_ts=bind_ts,
            bind_id=self.bind_id,
            order_after=[source.c[c] for c in order_after],
        )
        self.warn_unusable_rows(source, ts)
        options: dict[str, t.Any] = {}
        if self.warehouse.dialect_name != "sqlite":
            # Server-side cursor (PostgreSQL/Redshift), so memory stays flat.
            options = {"stream_results": True, "yield_per": FETCH_ROWS}
        self._bookmark = None
        with self.warehouse.connect() as conn:
            try:
                result = conn.execution_options(**options).execute(query)
                for chunk in result.partitions(FETCH_ROWS):
                    # time_extracted of the chunk's RECORD messages: when it was fetched.
                    self._record_suffix = record_suffix(dt.datetime.now(dt.UTC))
                    yield chunk
            except sa.exc.DBAPIError as exc:
                raise self.warehouse.error(f"reading {self.table.display} failed", exc) from exc

    def unusable_condition(self, source: sa.TableClause, ts: sa.ColumnElement[t.Any]) -> t.Any:
        """Rows that can never be emitted: no id or no (readable) updated-at."""
        return sa.or_(source.c[self.id_column].is_(None), ts.is_(None))

    def warn_unusable_rows(self, source: sa.TableClause, ts: sa.ColumnElement[t.Any]) -> None:
        """One warning line per stream per run counting rows that are never emitted."""
        query = sa.select(sa.func.count()).select_from(source)
        query = query.where(self.unusable_condition(source, ts))
        with self.warehouse.connect() as conn:
            try:
                count = conn.execute(query).scalar() or 0
            except sa.exc.DBAPIError as exc:
                raise self.warehouse.error(f"reading {self.table.display} failed", exc) from exc
        if count:
            self.logger.warning(
                "%d rows of %s have a NULL %s or %s (or one that is not a timestamp) "
                "and are not emitted; fix them at the source",
                count,
                self.table.display,
                self.id_column,
                self.ts_column,
            )

    # --- singer-sdk state hooks -----------------------------------------------------

    @override
    def get_replication_key_signpost(self, context: types.Context | None = None) -> None:
        """No signpost: the query itself caps rows at sync start (see `window`)."""
        return

    @override
    def _write_starting_replication_value(self, context: types.Context | None) -> None:
        """Keep STATE to the bookmark proper; the window is computed in `window()`.

        Private in singer-sdk: it would store a `starting_replication_value` the tap
        never reads (pinned by test_state_holds_only_the_bookmark_fields).
        """

    @override
    def _increment_stream_state(
        self, latest_record: types.Record, *, context: types.Context | None = None
    ) -> None:
        """Advance the bookmark to the record just written: `(updated_at, customer_id)`.

        Replaces singer-sdk's private version, which keeps only `replication_key_value`
        (pinned by test_state_carries_timestamp_and_id_in_fixed_format). A row re-read by
        the look-back (not after the stored bookmark, as decided by the database) never
        moves the bookmark back. Order is checked on the timestamp, the fixed-format text
        sorting like the instant. While batching, the bookmark waits until the file
        holding the record is announced (`_sync_batches`): a STATE written meanwhile (a
        signal) must not cover records no BATCH message has announced.
        """
        record_key = (latest_record[REPLICATION_KEY], latest_record["customer_id"])
        if self._last_emitted is not None and record_key[0] < self._last_emitted[0]:
            msg = (
                f"Unsorted data in stream {self.name}: {record_key[0]} after "
                f"{self._last_emitted[0]}"
            )
            raise InvalidStreamSortException(msg)
        self._last_emitted = record_key
        if self._advance:
            if self._batching:
                self._pending_bookmark = record_key
            else:
                self._write_bookmark(record_key)

    def _write_bookmark(self, key: tuple[str, str]) -> None:
        """Store `(updated_at, id)` in this stream's STATE entry."""
        if self._bookmark is None:
            self._bookmark = self.get_context_state(None)
        # One dict.update: a signal between two assignments could otherwise leave a new
        # timestamp beside the previous id in the STATE written on the way out.
        self._bookmark.update(
            {
                "replication_key": REPLICATION_KEY,
                "replication_key_value": key[0],
                LAST_ID_KEY: key[1],
            }
        )

    # --- RECORD messages -----------------------------------------------------------

    def record_outputs(self) -> list[tuple[StreamMap | None, bytes]]:
        """Each stream map that emits records, with its RECORD line prefix.

        The map is None where it returns the record itself (no map configured for the
        stream, no flattening): `SameRecordTransform.transform` would only hand it back.
        """
        if self._record_outputs is None:
            self._record_outputs = [
                (
                    None if is_identity(stream_map) else stream_map,
                    record_prefix(stream_map.stream_alias),
                )
                for stream_map in self.stream_maps
                if not isinstance(stream_map, RemoveRecordTransform)
            ]
        return self._record_outputs

    @override
    def _write_record_message(self, record: types.Record) -> None:
        """Write the record's RECORD line(s) straight from the record dict.

        Private in singer-sdk, replaced for speed: its version builds a RecordMessage per
        record and stream map, walks the selection mask over every property (records
        here hold selected properties only, see `selected_attributes`), calls the
        conformance pass (off here) and copies the record into a message dict before
        encoding; that was half of the tap's CPU. The lines are the same, each stream
        map applied as singer-sdk applies it (pinned by
        test_record_lines_are_exactly_singer_sdk_messages).
        """
        writer = self._tap.message_writer
        if not isinstance(writer, SingerOutput):
            super()._write_record_message(record)
            return
        suffix = self._record_suffix
        for stream_map, prefix in self.record_outputs():
            mapped = record if stream_map is None else map_record(stream_map, record)
            if mapped is not None:
                writer.write_record(prefix, mapped, suffix)
        self.state_manager.is_flushed = False

    @override
    def generate_child_contexts(
        self, record: types.Record, context: types.Context | None
    ) -> t.Iterable[types.Context | None]:
        """No child streams: nothing per record (singer-sdk would copy a context)."""
        return ()

    # --- BATCH messages ------------------------------------------------------------

    @override
    def get_batch_config(self, config: t.Mapping) -> BatchConfig | None:
        """The validated `batch_config` (see `batch_files.BatchSettings`), or None."""
        settings = self._tap.batch_settings  # type: ignore[attr-defined]
        return None if settings is None else settings.batch_config()

    @override
    def _sync_batches(
        self, batch_config: BatchConfig, context: types.Context | None = None
    ) -> None:
        """Write records to batch files; per closed batch, its BATCH messages, then STATE.

        Private in singer-sdk, replaced because its batch mode writes records before the
        stream maps (and sends the same unmapped files under every map's name), skipping
        them silently, and encodes with simplejson + gzip level 9. Here each stream map
        is applied exactly as for RECORD messages, one file per output stream and batch,
        and the STATE after a batch's BATCH messages holds the bookmark of its last row
        (pinned by test_batch_mode_is_reached_through_sync).
        """
        directory: BatchDirectory = self._tap.batch_directory  # type: ignore[attr-defined]
        encoding = directory.settings.encoding
        with self.get_batch_counter() as counter:
            for batch in self._write_batches(directory, context):
                counter.increment()
                for stream, url in batch.files:
                    message = SDKBatchMessage(stream=stream, encoding=encoding, manifest=[url])
                    self._tap.write_message(message)
                if batch.bookmark is not None:
                    self._write_bookmark(batch.bookmark)
                self.state_manager.is_flushed = False
                self._write_state_message()

    def _write_batches(
        self, directory: BatchDirectory, context: types.Context | None
    ) -> Iterator[Batch]:
        """Fill files with up to `batch_size` source records each; yield each closed batch.

        Records come from singer-sdk's record loop (`_sync_records` without writing
        messages, as its own batch mode does), which advances the pending bookmark. A
        file still being written when the run stops is removed: it was never announced.
        Closing a batch's files, announcing them and the STATE after them (the caller's
        part, while this generator waits at `yield`) hold a stop until they are done, so
        a stop never leaves a closed file unannounced.
        """
        writer = self._tap.message_writer
        hold = writer.holding_stop if isinstance(writer, SingerOutput) else contextlib.nullcontext
        outputs = [
            (stream_map, stream_map.stream_alias)
            for stream_map in self.stream_maps
            if not isinstance(stream_map, RemoveRecordTransform)
        ]
        size = directory.settings.batch_size
        files: dict[str, BatchFile] = {}
        count = 0
        self._batching = True
        self._pending_bookmark = None
        try:
            for record in self._sync_records(context, write_messages=False):
                for stream_map, stream in outputs:
                    mapped = map_record(stream_map, record)
                    if mapped is not None:
                        file = files.get(stream)
                        if file is None:
                            # Held: a stop between creating the file and holding it
                            # here would leave it behind, never announced.
                            with hold():
                                file = files[stream] = directory.new_file(stream)
                        file.write(mapped)
                count += 1
                if count >= size:
                    with hold():
                        batch = self._close_batch(files)
                        files, count = {}, 0
                        yield batch
            if count:
                with hold():
                    batch = self._close_batch(files)
                    files = {}
                    yield batch
        finally:
            self._batching = False
            for file in files.values():
                file.discard()

    def _close_batch(self, files: dict[str, BatchFile]) -> Batch:
        return Batch(
            files=[(stream, file.close()) for stream, file in files.items()],
            bookmark=self._pending_bookmark,
        )


class WideAttributesStream(PeakAttributesStream):
    """One record per customer row: the row's attributes, all of them (the full state)."""

    primary_keys = ("customer_id",)

    @override
    def discover_attributes(self, conn: sa.Connection) -> dict[str, dict[str, t.Any]]:
        """Every column but id and updated-at, narrowed by `attributes`/`exclude_attributes`."""
        candidates = [c for c in self.table.columns if c not in {self.id_column, self.ts_column}]
        if self.settings.attributes:
            chosen = [
                resolve_name(a, candidates, f"attributes: column of {self.table.display}")
                for a in self.settings.attributes
            ]
        else:
            chosen = candidates
        excluded = {
            resolve_name(a, candidates, f"exclude_attributes: column of {self.table.display}")
            for a in self.settings.exclude_attributes
        }
        self.attribute_columns = {
            attribute_key(self.settings.attribute_prefix, c): c for c in chosen if c not in excluded
        }
        return {
            key: json_schema_for(self.table.columns[column])
            for key, column in self.attribute_columns.items()
        }

    @override
    def records(self, context: types.Context | None) -> t.Iterator[dict]:
        """Yield one record per row, in (updated_at, customer_id) order."""
        selected = self.selected_attributes()
        keys = [key for key in self.attribute_columns if key in selected]
        columns = [self.attribute_columns[key] for key in keys]
        # (key, converter, position in the row): rows are (ts, id, after_bookmark, *columns).
        fields = [(key, self.converters[key], 3 + n) for n, key in enumerate(keys)]
        ts_convert = self.converters_ts()
        for chunk in self.row_chunks(columns):
            for row in chunk:
                self._advance = bool(row[2])
                record = {"customer_id": str(row[1]), REPLICATION_KEY: ts_convert(row[0])}
                for key, convert, position in fields:
                    record[key] = convert(row[position])
                yield record

    def converters_ts(self) -> t.Callable[[t.Any], str]:
        """Turn the selected timestamp expression into the fixed UTC text."""
        return value_converter({"type": ["string"], "format": "date-time"})


class LongAttributesStream(PeakAttributesStream):
    """One record per customer per updated-at, holding only the attributes that changed.

    Key: (customer_id, updated_at). A customer changing in two model runs yields two
    records in one sync; keyed by customer alone, a deduplicating target could drop the
    older record and with it attributes only that run changed. The target merges records
    by `customer_id` itself.
    """

    primary_keys = ("customer_id", REPLICATION_KEY)

    @override
    def discover_attributes(self, conn: sa.Connection) -> dict[str, dict[str, t.Any]]:
        """Attribute names from `attributes` or the data; types from the map or inferred."""
        self.name_column = self.table.column(
            self.settings.attribute_name_column, "attribute_name_column"
        )
        self.value_column = self.table.column(
            self.settings.attribute_value_column, "attribute_value_column"
        )
        # A VARIANT (Snowflake) or json/jsonb (PostgreSQL) value column holds JSON: its
        # text is decoded before typing.
        value_type = self.table.columns[self.value_column]
        self.decode_value = is_semi_structured(value_type)
        source = self.table.sql(self.name_column, self.value_column)
        names_col, values_col = source.c[self.name_column], source.c[self.value_column]
        # PostgreSQL's json has no equality, so no DISTINCT: its samples are compared as text.
        distinct_values = (
            sa.cast(values_col, sa.Text) if isinstance(value_type, sa.JSON) else values_col
        )
        if self.settings.attributes:
            names = list(self.settings.attributes)
        else:
            query = (
                sa.select(names_col).where(names_col.is_not(None)).distinct().order_by(names_col)
            )
            names = [str(n) for n in conn.execute(query).scalars()]
        excluded = {a.lower() for a in self.settings.exclude_attributes}
        self.attribute_keys: dict[str, str] = {}
        properties: dict[str, dict[str, t.Any]] = {}
        for name in names:
            if name.lower() in excluded:
                continue
            kind = self.settings.attribute_types.get(name.lower())
            if kind is None:
                sample = (
                    sa.select(distinct_values)
                    .where(names_col == name, values_col.is_not(None))
                    .distinct()
                    .limit(INFERENCE_SAMPLE)
                )
                found = conn.execute(sample).scalars()
                texts = (_text_of(json_scalar(v) if self.decode_value else v) for v in found)
                kind = infer_attribute_type(texts)
            key = attribute_key(self.settings.attribute_prefix, name)
            self.attribute_keys[name.lower()] = key
            properties[key] = ATTRIBUTE_TYPES[kind]
        return properties

    @override
    def unusable_condition(self, source: sa.TableClause, ts: sa.ColumnElement[t.Any]) -> t.Any:
        """Also count rows without an attribute name."""
        return sa.or_(super().unusable_condition(source, ts), source.c[self.name_column].is_(None))

    @override
    def records(self, context: types.Context | None) -> t.Iterator[dict]:
        """Group consecutive rows of one (updated_at, customer) into one record."""
        ts_convert = value_converter({"type": ["string"], "format": "date-time"})
        selected = self.selected_attributes()
        decode = self.decode_value
        unknown: set[str] = set()
        rows = itertools.chain.from_iterable(
            self.row_chunks([self.name_column, self.value_column], order_after=[self.name_column])
        )
        for (raw_ts, raw_id), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
            record: dict[str, t.Any] = {
                "customer_id": str(raw_id),
                REPLICATION_KEY: ts_convert(raw_ts),
            }
            advance = False
            for row in group:
                advance = advance or bool(row[2])
                name, value = row[3], row[4]
                if name is None:
                    continue
                key = self.attribute_keys.get(str(name).lower())
                if key is None:
                    unknown.add(str(name))
                    continue
                if key not in selected:
                    continue
                if decode:
                    value = json_scalar(value)
                try:
                    record[key] = self.converters[key](value)
                except (ValueError, ArithmeticError) as exc:
                    msg = (
                        f"stream {self.name}: attribute {name!r} of customer {raw_id} holds "
                        f"{str(value)[:40]!r}, not a {self.schema['properties'][key]['type'][0]}; "
                        "declare its type in attribute_types"
                    )
                    raise TapPeakError(msg) from exc
            self._advance = advance
            yield record
        if unknown:
            self.logger.warning(
                "Stream %s skipped attributes not in its catalog schema (new since discovery?): %s",
                self.name,
                ", ".join(sorted(unknown)),
            )
