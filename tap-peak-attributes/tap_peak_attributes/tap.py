"""TapPeakAttributes: settings, warehouse resolution and stream construction."""

from __future__ import annotations

import functools
import typing as t
from pathlib import Path

from singer_sdk import Tap
from singer_sdk import typing as th
from typing_extensions import override

from tap_peak_attributes import peak_api
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

#: The bundled sample warehouse: the tap's default source, so it runs with no config.
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


class TapPeakAttributes(Tap):
    """Customers whose Peak predictions changed since the last sync, from the warehouse."""

    name = "tap-peak-attributes"
    # msgspec-encoded, buffered between checkpoints (see `output.py`).
    message_writer_class = SingerOutput

    config_jsonschema = th.PropertiesList(
        th.Property(
            "sqlalchemy_url",
            th.StringType,
            secret=True,
            title="SQLAlchemy URL",
            description="Any SQLAlchemy URL of the warehouse (postgresql+psycopg://, "
            "snowflake://, sqlite:///). Default: the sample warehouse bundled in the "
            "package. Do not combine with `peak_api_key`.",
        ),
        th.Property(
            "peak_api_key",
            th.StringType,
            secret=True,
            title="Peak API key",
            description="Peak tenant API key or personal access token: the tap asks "
            "Peak's connections API for the warehouse credentials (Snowflake or "
            "Redshift) instead of using `sqlalchemy_url`.",
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
    ).to_dict()

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop by unwinding; write nothing from inside the handler.

        Private in singer-sdk, replaced: its handler writes STATE and calls sys.exit from
        within the signal handler, which re-enters stdout when the signal lands during a
        write to a full pipe.
        `TapStopped` unwinds the sync instead (at once, or after the write in progress);
        `__main__` then calls `finish_after_stop`. Pinned by
        test_sigterm_while_blocked_on_a_full_pipe_loses_no_line.
        """
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
        """The warehouse from `sqlalchemy_url`, Peak's API, or the bundled sample."""
        url = self.config.get("sqlalchemy_url")
        api_key = self.config.get("peak_api_key")
        timeout = int(self.config.get("connect_timeout_seconds") or 30)
        if url and api_key:
            msg = "set either sqlalchemy_url or peak_api_key, not both"
            raise TapPeakError(msg)
        if api_key:
            answer = peak_api.fetch_credentials(
                api_key,
                stage=self.config.get("peak_stage") or "prod",
                override=self.config.get("peak_api_url"),
                timeout=timeout,
            )
            return Warehouse(peak_api.warehouse_url(answer), connect_timeout=timeout)
        return Warehouse(url or f"sqlite:///{SAMPLE_DATABASE}", connect_timeout=timeout)

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

    def discover_streams(self) -> list[PeakAttributesStream]:
        """One stream per configured table, typed by reflecting it."""
        shapes: dict[str, type[PeakAttributesStream]] = {
            "wide": WideAttributesStream,
            "long": LongAttributesStream,
        }
        return [shapes[s.shape](self, s, self.warehouse) for s in self.stream_settings()]


__all__: t.Sequence[str] = ["SAMPLE_DATABASE", "TapPeakAttributes"]
