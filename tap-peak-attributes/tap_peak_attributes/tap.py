"""TapPeakAttributes: settings, warehouse resolution and stream construction."""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import io
import json
import os
import typing as t
from pathlib import Path

import click
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError, MappingError
from typing_extensions import override

from tap_peak_attributes import credentials, model_runs, peak_api
from tap_peak_attributes.batch_files import (
    COMPRESSIONS,
    DEFAULT_BATCH_SIZE,
    FORMAT,
    BatchDirectory,
    BatchSettings,
)
from tap_peak_attributes.config_errors import describe_config_problems, unknown_setting_problem
from tap_peak_attributes.connector import Warehouse
from tap_peak_attributes.errors import TapPeakError, TapStopped
from tap_peak_attributes.output import SingerOutput
from tap_peak_attributes.streams import (
    LongAttributesStream,
    PeakAttributesStream,
    StreamSettings,
    WideAttributesStream,
)

if t.TYPE_CHECKING:
    from types import FrameType

#: The bundled sample warehouse, read only with `allow_sample_warehouse` and no warehouse.
SAMPLE_DATABASE = Path(__file__).parent / "data" / "peak_warehouse.sqlite"
DEFAULT_STREAMS = [{"name": "customer_attributes", "table": "customer_attributes", "shape": "wide"}]

STREAM_SETTINGS = th.ObjectType(
    th.Property(
        "name",
        th.StringType,
        required=True,
        title="Stream name",
        description="Name of the Singer stream (and of the catalog entry).",
    ),
    th.Property(
        "table",
        th.StringType,
        required=True,
        title="Table",
        description="Table or view holding Peak's output (case-insensitive).",
    ),
    th.Property(
        "schema",
        th.StringType,
        title="Schema",
        description="Schema of this table; overrides the top-level `schema`.",
    ),
    th.Property(
        "shape",
        th.StringType,
        default="wide",
        allowed_values=["wide", "long"],
        title="Table shape",
        description="`wide`: one row per customer, one column per attribute. "
        "`long`: one row per attribute change (name, value).",
    ),
    th.Property(
        "id_column",
        th.StringType,
        default="customer_id",
        title="Customer id column",
        description="Column holding the customer id (emitted as string `customer_id`).",
    ),
    th.Property(
        "updated_at_column",
        th.StringType,
        default="updated_at",
        title="Updated-at column",
        description="Column with the time the attributes last changed (the "
        "replication key, emitted as `updated_at`).",
    ),
    th.Property(
        "attributes",
        th.ArrayType(th.StringType),
        title="Attributes to include",
        description="Wide: attribute columns to include (default: all). Long: "
        "attribute names to include (default: every name found in the table).",
    ),
    th.Property(
        "exclude_attributes",
        th.ArrayType(th.StringType),
        title="Attributes to exclude",
        description="Attribute columns (wide) or names (long) to leave out.",
    ),
    th.Property(
        "attribute_name_column",
        th.StringType,
        default="attribute_name",
        title="Attribute name column (long)",
        description="Long shape: column naming the attribute.",
    ),
    th.Property(
        "attribute_value_column",
        th.StringType,
        default="attribute_value",
        title="Attribute value column (long)",
        description="Long shape: column holding the attribute's value (usually text).",
    ),
    th.Property(
        "attribute_types",
        th.ObjectType(additional_properties=th.StringType),
        title="Attribute types (long)",
        description="Long shape: attribute name -> string, integer, number, boolean "
        "or date-time. Unlisted attributes are inferred from up to 200 distinct values.",
    ),
    th.Property(
        "attribute_prefix",
        th.StringType,
        default="peak_",
        title="Attribute prefix",
        description="Prefix of every attribute key (`peak_churn_probability`), so "
        "attributes cannot collide with Braze's reserved profile fields.",
    ),
)


BATCH_SETTINGS = th.ObjectType(
    th.Property(
        "encoding",
        th.ObjectType(
            th.Property(
                "format",
                th.StringType,
                default=FORMAT,
                allowed_values=[FORMAT],
                title="Batch file format",
                description="`jsonl`: one record per line.",
            ),
            th.Property(
                "compression",
                th.StringType,
                default="none",
                allowed_values=list(COMPRESSIONS),
                title="Batch file compression",
                description="`none` (fastest) or `gzip`.",
            ),
        ),
        title="Batch encoding",
    ),
    th.Property(
        "storage",
        th.ObjectType(
            th.Property(
                "root",
                th.StringType,
                title="Batch directory",
                description="file:// URL of a local directory private to this pipeline "
                "(created 0700; files 0600), e.g. file:///var/lib/peak/batches.",
            ),
            th.Property(
                "prefix",
                th.StringType,
                title="File name prefix",
                description="Starts every batch file name.",
            ),
        ),
        title="Batch storage",
    ),
    th.Property(
        "batch_size",
        th.IntegerType,
        default=DEFAULT_BATCH_SIZE,
        title="Records per batch file",
        description="Source records per batch; a STATE follows each batch.",
    ),
)


class TapPeakAttributes(Tap):
    """Customers whose Peak predictions changed since the last sync, from the warehouse."""

    name = "tap-peak-attributes"
    # msgspec-encoded, buffered between checkpoints (see `output.py`).
    message_writer_class = SingerOutput

    config_jsonschema = th.PropertiesList(
        th.Property(
            "ignore_unknown_settings",
            th.ArrayType(th.StringType),
            title="Ignore unknown settings",
            description="Setting names the tap does not know that the config carries on "
            "purpose (shared config files). Any other unknown name stops the run with one "
            "line naming it and the closest known setting.",
        ),
        th.Property(
            "sqlalchemy_url",
            th.StringType,
            secret=True,
            title="SQLAlchemy URL",
            description="Any SQLAlchemy URL of the warehouse (postgresql+psycopg://, "
            "snowflake://, sqlite:///). Meltano writes it to disk during a run: prefer the "
            "variable `sqlalchemy_url_env` names, or a URL without its password plus "
            "PGPASSWORD (PostgreSQL/Redshift). Do not combine with `peak_api_key`.",
        ),
        th.Property(
            "peak_api_key",
            th.StringType,
            secret=True,
            title="Peak API key",
            description="Peak tenant API key or personal access token: the tap asks "
            "Peak's connections API for the warehouse credentials (Snowflake or "
            "Redshift) instead of using `sqlalchemy_url`. Meltano writes it to disk during "
            "a run: prefer the variable `peak_api_key_env` names.",
        ),
        th.Property(
            "sqlalchemy_url_env",
            th.StringType,
            default=credentials.DEFAULT_URL_VARIABLE,
            title="Variable with the SQLAlchemy URL",
            description="Name of the environment variable the tap reads the warehouse URL "
            "from when neither `sqlalchemy_url` nor `peak_api_key` is set. Meltano never "
            "writes it to disk, unlike `sqlalchemy_url`: the production way to give a URL "
            "with a password.",
        ),
        th.Property(
            "peak_api_key_env",
            th.StringType,
            default=credentials.DEFAULT_KEY_VARIABLE,
            title="Variable with the Peak API key",
            description="Name of the environment variable the tap reads Peak's API key from "
            "when neither `sqlalchemy_url` nor `peak_api_key` is set (never written to disk "
            "by Meltano).",
        ),
        th.Property(
            "allow_sample_warehouse",
            th.BooleanType,
            default=False,
            title="Allow the sample warehouse",
            description="When no warehouse is configured (no `sqlalchemy_url`, "
            "`peak_api_key` or the variables their `*_env` settings name), read the sample "
            "warehouse bundled with the tap (1,200 made-up customers) instead of stopping "
            "with an error. For demos and development only: a configured warehouse always "
            "wins, and production must never fall back to made-up customers.",
        ),
        th.Property(
            "peak_stage",
            th.StringType,
            default="prod",
            title="Peak stage",
            description="Peak environment: `prod` uses https://service.peak.ai, any "
            "other X uses https://service.X.peak.ai.",
        ),
        th.Property(
            "peak_model_workflow_id",
            th.StringType,
            title="Peak model workflow id",
            description="The Peak workflow that runs the model. When set, each sync reads "
            "only rows updated at or before that workflow's latest successful execution "
            "finished (Peak's workflow executions API, with the Peak API key): rows of a "
            "model run still being written wait for the next sync.",
        ),
        th.Property(
            "peak_api_url",
            th.StringType,
            title="Peak API base URL",
            description="Override of Peak's service URL (tests, proxies). https "
            "required except for loopback hosts.",
        ),
        th.Property(
            "schema",
            th.StringType,
            default="publish",
            title="Schema",
            description="Warehouse schema of the output tables (Peak's default is "
            "`publish`). Ignored for SQLite unless it names an attached database.",
        ),
        th.Property(
            "streams",
            th.ArrayType(STREAM_SETTINGS),
            default=DEFAULT_STREAMS,
            title="Streams",
            description="One entry per output table. Default: `customer_attributes` "
            "over the bundled sample's wide table.",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description="Without STATE, read rows updated at or after this instant "
            "(default: all rows).",
        ),
        th.Property(
            "lookback_window_minutes",
            th.IntegerType,
            default=0,
            title="Look-back window (minutes)",
            description="Re-read this many minutes before the bookmark to catch rows "
            "that land late with an older updated-at. Rows in the window are sent "
            "again; 0 resumes exactly after the last row sent.",
        ),
        th.Property(
            "state_message_frequency",
            th.IntegerType,
            default=10_000,
            title="STATE every N records",
            description="Emit a STATE message after every N records (and at the end), "
            "so an interrupted sync resumes where it stopped.",
        ),
        th.Property(
            "connect_timeout_seconds",
            th.IntegerType,
            default=30,
            title="Connect timeout (seconds)",
            description="How long to wait for the warehouse (and Peak's API).",
        ),
        th.Property(
            "allow_insecure_postgres",
            th.BooleanType,
            default=False,
            title="Allow insecure PostgreSQL",
            description="For a PostgreSQL or Redshift warehouse whose host is not loopback, "
            "the connection uses sslmode=verify-full and require_auth=scram-sha-256 (libpq "
            "16+), and a URL asking for less is refused: libpq's default sends the password "
            "to a server that refuses TLS. true: connect exactly as the URL says.",
        ),
        th.Property(
            "batch_config",
            BATCH_SETTINGS,
            title="BATCH messages",
            description="Write records to local files announced by BATCH messages instead "
            'of RECORD lines: {"encoding": {"format": "jsonl", "compression": "none"}, '
            '"storage": {"root": "file:///private/dir"}}. Unset: RECORD messages.',
        ),
    ).to_dict()

    def __init__(self, **kwargs: t.Any) -> None:
        """Build the tap (discovery included); every configuration problem is one line.

        singer-sdk reports an invalid config with jsonschema's raw messages and a bad stream
        map with a traceback; both become a `TapPeakError` naming the setting.
        """
        config = kwargs.get("config")
        if isinstance(config, dict) and not kwargs.get("parse_env_config"):
            # Checked before singer-sdk's own pass, which with validate_config=False (as
            # in --discover, Meltano's first call) logs "Config validation failed" and
            # goes on into discovery with the bad value.
            schema = type(self).config_jsonschema
            type(self).append_builtin_config(schema)
            problem = describe_config_problems(config, schema)
            if problem:
                raise TapPeakError(problem)
        self._stopping = False
        try:
            super().__init__(**kwargs)
        except ConfigValidationError as exc:
            described = describe_config_problems(self.config, self.config_jsonschema)
            raise TapPeakError(described or "; ".join(exc.errors) or str(exc)) from exc
        except MappingError as exc:
            raise TapPeakError(f"stream_maps: {_first_line(exc)}") from exc
        except ValueError as exc:
            problem = _unparsable_variable(type(self).config_jsonschema)
            if problem is None:
                raise
            raise TapPeakError(problem) from exc
        unknown = unknown_setting_problem(self.config, type(self).config_jsonschema)
        if unknown:  # however the config arrived (files, variables): a typo stops the run
            raise TapPeakError(unknown)
        _ = self.batch_settings  # validated before any message is written
        self._check_stream_map_names()

    def _check_stream_map_names(self) -> None:
        """A `stream_maps` key that names no stream is a typo, not a no-op to ignore.

        singer-sdk ignores it, so a map meant to drop or hash a property silently does
        nothing. Keys are stream names or globs (`*`); `__source__` maps make new streams.
        """
        names = sorted(self.streams)
        for key, value in (self.config.get("stream_maps") or {}).items():
            if key.startswith("__") or any(fnmatch.fnmatch(name, key) for name in names):
                continue
            if isinstance(value, dict) and value.get("__source__"):
                continue
            msg = (
                f"stream_maps: {key!r} matches no stream of the tap ({', '.join(names)}) and "
                "has no __source__; use a stream's name"
            )
            raise TapPeakError(msg)

    @override
    @classmethod
    def cb_config(cls, ctx: click.Context, param: click.Option, value: tuple[str, ...]) -> t.Any:
        """Read the --config files; a missing or malformed one is one clear line."""
        try:
            return super().cb_config(ctx, param, value)
        except FileNotFoundError as exc:
            raise TapPeakError(f"--config: {_first_line(exc)}") from None
        except ValueError as exc:
            if not (hasattr(exc, "doc") and hasattr(exc, "lineno")):  # json's, simplejson's
                raise
            culprit = next((v for v in value if v != "ENV" and not _is_json_file(v)), "")
            msg = f"--config {culprit} is not valid JSON ({_first_line(exc)}); fix it"
            raise TapPeakError(msg) from None

    @override
    @classmethod
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: t.Any = None,
        state: t.IO[str] | None = None,
        catalog: t.IO[str] | None = None,
    ) -> None:
        """Run from the command line; unreadable --state or --catalog JSON is one line."""
        checked = {
            "state": _checked_json(state, "--state", "a STATE file (as the tap writes it)"),
            "catalog": _checked_json(catalog, "--catalog", "a catalog (from --discover)"),
        }
        super().invoke(about=about, about_format=about_format, config=config, **checked)

    @functools.cached_property
    def batch_settings(self) -> BatchSettings | None:
        """`batch_config`, validated; None when records go out as RECORD messages."""
        return BatchSettings.from_config(self.config.get("batch_config"))

    @functools.cached_property
    def batch_directory(self) -> BatchDirectory:
        """The batch files' directory, made private and locked, leftovers removed."""
        settings = self.batch_settings
        if settings is None:  # pragma: no cover - only reached in batch mode
            msg = "batch_config is not set"
            raise TapPeakError(msg)
        directory = BatchDirectory(settings)
        if directory.removed_leftovers:
            self.logger.info(
                "Removed %d batch file(s) a stopped run left in %s",
                len(directory.removed_leftovers),
                directory.path,
            )
        return directory

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop by unwinding; write nothing from inside the handler.

        Private in singer-sdk, replaced: its handler writes STATE and calls sys.exit from
        within the signal handler, which re-enters stdout when the signal lands during a
        write to a full pipe, and whose STATE would cover batch records not yet announced.
        `TapStopped` unwinds the sync instead (at once, or after the write in progress);
        `__main__` then calls `finish_after_stop`. Pinned by
        test_sigterm_while_blocked_on_a_full_pipe_loses_no_line.
        """
        if self._stopping:
            # A second signal while the first is handled (the last lines may be going to a
            # pipe nobody reads any more): give up on them at once.
            name = TapStopped(signum, self.finish_after_stop).signal_name
            os.write(
                2,
                f"tap-peak-attributes: error: stopped by a second {name} while writing the "
                "last lines; rerun to resume from the last STATE the target stored\n".encode(),
            )
            os._exit(128 + signum)
        self._stopping = True
        stopped = TapStopped(signum, self.finish_after_stop)
        writer = self.message_writer
        if isinstance(writer, SingerOutput):
            writer.stop(stopped)
            return
        raise stopped

    def finish_after_stop(self) -> None:
        """After a stop: write the buffered lines, then the STATE covering them."""
        writer = self.message_writer
        if isinstance(writer, SingerOutput):
            writer.cut_partial_line()
        self.state_writer.write_state(self.state)
        if isinstance(writer, SingerOutput):
            writer.flush()

    @functools.cached_property
    def warehouse(self) -> Warehouse:
        """The warehouse: a URL, Peak's API, or the bundled sample (see `credentials.py`)."""
        secret = credentials.resolve(self.config)
        timeout = int(self.config.get("connect_timeout_seconds") or 30)
        insecure = bool(self.config.get("allow_insecure_postgres"))
        if secret.peak_api_key:
            answer = peak_api.fetch_credentials(
                secret.peak_api_key,
                stage=self.config.get("peak_stage") or "prod",
                override=self.config.get("peak_api_url"),
                timeout=timeout,
                source=secret.source,
            )
            return Warehouse(
                peak_api.warehouse_url(answer),
                connect_timeout=timeout,
                source="the warehouse URL from Peak's API",
                allow_insecure_postgres=insecure,
            )
        if secret.url:
            return Warehouse(
                secret.url,
                connect_timeout=timeout,
                source=secret.source,
                allow_insecure_postgres=insecure,
            )
        if not self.config.get("allow_sample_warehouse"):
            msg = (
                f"no warehouse configured ({secret.source} is set): export the warehouse "
                f"URL in {credentials.url_variable_of(self.config)} (or Peak's API key in "
                f"{credentials.key_variable_of(self.config)}); for the sample warehouse "
                "bundled with the tap (a demo), set allow_sample_warehouse to true"
            )
            raise TapPeakError(msg)
        self.logger.warning(
            "No warehouse configured (%s is set) and allow_sample_warehouse is true: "
            "reading the sample warehouse bundled with the tap (made-up customers)",
            secret.source,
        )
        return Warehouse(f"sqlite:///{SAMPLE_DATABASE}", connect_timeout=timeout)

    @functools.cached_property
    def model_output_complete_until(self) -> dt.datetime | None:
        """Until when the model's output is complete (`peak_model_workflow_id`), else None.

        Asked once per sync, when the first stream starts reading (never at discovery,
        which must work offline). No successful execution at all: nothing is complete.
        """
        workflow = self.config.get("peak_model_workflow_id")
        if not workflow:
            return None
        key, source = credentials.peak_key(self.config)
        finished = model_runs.latest_finished_at(
            key,
            workflow,
            stage=self.config.get("peak_stage") or "prod",
            override=self.config.get("peak_api_url"),
            timeout=int(self.config.get("connect_timeout_seconds") or 30),
            key_source=source,
        )
        if finished is None:
            self.logger.info(
                "Peak model workflow %s has no successful execution yet: nothing is read this sync",
                workflow,
            )
            return dt.datetime.min.replace(tzinfo=dt.UTC)
        self.logger.info(
            "Peak model workflow %s last succeeded at %s: rows updated after it wait for "
            "the next sync",
            workflow,
            finished.isoformat(),
        )
        return finished

    def stream_settings(self) -> list[StreamSettings]:
        """The `streams` setting with defaults applied; names must be unique."""
        entries = self.config.get("streams") or DEFAULT_STREAMS
        settings = [StreamSettings.from_config(e, self.config.get("schema")) for e in entries]
        names = [s.name for s in settings]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            msg = f"streams: duplicate stream name(s) {', '.join(duplicates)}"
            raise TapPeakError(msg)
        return settings

    @override
    def discover_streams(self) -> list[PeakAttributesStream]:
        """One stream per configured table, typed by reflecting it."""
        shapes: dict[str, type[PeakAttributesStream]] = {
            "wide": WideAttributesStream,
            "long": LongAttributesStream,
        }
        return [shapes[s.shape](self, s, self.warehouse) for s in self.stream_settings()]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unparsable_variable(schema: dict[str, t.Any]) -> str | None:
    """The `TAP_PEAK_ATTRIBUTES_*` integer variable `--config ENV` could not parse, if any.

    singer-sdk parses such variables with a bare `int()`, whose ValueError names nothing.
    """
    for name, prop in schema.get("properties", {}).items():
        variable = f"TAP_PEAK_ATTRIBUTES_{name.upper()}"
        value = os.environ.get(variable)
        if value is None or "integer" not in (prop.get("type") or []):
            continue
        try:
            int(value)
        except ValueError:
            return f"{name}: {value!r} (from {variable}) is not a whole number; give one, e.g. 60"
    return None


def _is_json_file(path: str) -> bool:
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _checked_json(stream: t.IO[str] | None, option: str, what: str) -> t.IO[str] | None:
    """The same stream, read once and checked: invalid JSON becomes one clear line."""
    if stream is None:
        return None
    text = stream.read()
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"{option} {getattr(stream, 'name', '')} is not valid JSON ({exc}); give {what}"
        raise TapPeakError(msg) from None
    return io.StringIO(text)


__all__: t.Sequence[str] = ["SAMPLE_DATABASE", "TapPeakAttributes"]
