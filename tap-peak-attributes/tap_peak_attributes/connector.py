"""The warehouse connection: engines, name resolution, column typing, secret masking.

Peak's warehouse is Snowflake or Redshift (PostgreSQL protocol); the bundled sample and
tests use SQLite. Everything dialect-specific the streams need lives here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import typing as t
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from tap_peak_attributes.errors import TapPeakError
from tap_peak_attributes.timestamps import normalise, sqlite_text, to_utc
from tap_peak_attributes.transport import LIBPQ_DIALECTS, safe_connect_args

#: URL query parameters that carry credentials (Snowflake OAuth tokens, key passphrases).
SECRET_QUERY_KEYS = frozenset(
    {"token", "password", "private_key", "private_key_file_pwd", "passcode", "access_token"}
)
#: Query parameter names that suggest a secret (sslpassword, proxy_password, client_secret).
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|credential", re.IGNORECASE)
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%f"
#: JSON Schema of Snowflake's semi-structured types, by reflected type name. A VARIANT
#: holds any JSON value (Peak's nested attributes are objects, but nothing enforces it).
SEMI_STRUCTURED: dict[str, list[str]] = {
    "VARIANT": ["object", "array", "string", "number", "boolean", "null"],
    "OBJECT": ["object", "null"],
    "MAP": ["object", "null"],
    "ARRAY": ["array", "null"],
}


def mask_url(url: URL | str) -> str:
    """Render a URL for logs and errors: the password and every query value hidden.

    Every value, not a list of known secret names: drivers keep adding parameters that
    carry one (libpq's `sslpassword`, Snowflake's `proxy_password`, ...).
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except sa.exc.ArgumentError:
        return "<unparseable sqlalchemy_url>"
    query = dict.fromkeys(parsed.query, "***")
    rendered = parsed.set(query=query).render_as_string(hide_password=True)
    return rendered.replace("=%2A%2A%2A", "=***")  # SQLAlchemy percent-encodes the mask


def url_secrets(url: URL) -> list[str]:
    """The secret strings inside a URL, to scrub them from driver error messages.

    The password, and the values of query parameters whose names say they hold one.
    """
    found = [url.password] if url.password else []
    for key, value in url.query.items():
        if key.lower() in SECRET_QUERY_KEYS or _SECRET_NAME.search(key):
            found.extend([value] if isinstance(value, str) else list(value))
    return [str(s) for s in found if s]


def scrub(text: str, secrets: t.Iterable[str]) -> str:
    """Remove secrets from a message and keep only its first line."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    for secret in secrets:
        if secret:
            first = first.replace(secret, "***")
    return first


def resolve_name(configured: str, available: t.Iterable[str], what: str) -> str:
    """Find `configured` among `available` names, ignoring case.

    Snowflake folds unquoted names to UPPER case and Redshift/PostgreSQL to lower case,
    so a user's `customer_id` must find `CUSTOMER_ID` (and vice versa). An exact match
    wins when names differ only by case.
    """
    names = list(available)
    if configured in names:
        return configured
    matches = [name for name in names if name.lower() == configured.lower()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        msg = f"{what} {configured!r} is ambiguous: {', '.join(sorted(matches))} all match"
        raise TapPeakError(msg)
    listing = ", ".join(sorted(names)) or "none"
    msg = f"{what} {configured!r} not found; available: {listing}"
    raise TapPeakError(msg)


def json_schema_for(sql_type: sa.types.TypeEngine) -> dict[str, t.Any]:
    """JSON Schema (nullable) for a reflected column type, for any of the three dialects.

    Snowflake's TIMESTAMP_NTZ/LTZ/TZ types are not SQLAlchemy DateTime subclasses, hence
    the fallback on the type's name; its VARIANT, OBJECT and ARRAY columns, like
    PostgreSQL's json and jsonb, are JSON (objects, arrays, any JSON value), not text.
    """
    name = type(sql_type).__name__.upper()
    if is_semi_structured(sql_type):
        return {"type": list(SEMI_STRUCTURED.get(name, SEMI_STRUCTURED["VARIANT"]))}
    if isinstance(sql_type, sa.Boolean):
        return {"type": ["boolean", "null"]}
    if isinstance(sql_type, sa.Integer):
        return {"type": ["integer", "null"]}
    # SQLAlchemy 2.1 no longer makes Float a Numeric subclass: test Float first.
    if isinstance(sql_type, sa.Float):
        return {"type": ["number", "null"]}
    if isinstance(sql_type, sa.Numeric):
        if sql_type.scale == 0:
            return {"type": ["integer", "null"]}
        return {"type": ["number", "null"]}
    if isinstance(sql_type, sa.DateTime) or "TIMESTAMP" in name or "DATETIME" in name:
        return {"type": ["string", "null"], "format": "date-time"}
    if isinstance(sql_type, sa.Date):
        return {"type": ["string", "null"], "format": "date"}
    if "DECFLOAT" in name or name in {"REAL", "DOUBLE", "DOUBLE_PRECISION"}:
        return {"type": ["number", "null"]}
    return {"type": ["string", "null"]}


def is_semi_structured(sql_type: sa.types.TypeEngine) -> bool:
    """Whether a column holds any JSON value, arriving as its JSON text.

    Snowflake's VARIANT, OBJECT and ARRAY; PostgreSQL's json and jsonb (read as text, see
    `_prepare_postgres_session`).
    """
    return isinstance(sql_type, sa.JSON) or type(sql_type).__name__.upper() in SEMI_STRUCTURED


def json_scalar(value: t.Any) -> t.Any:
    """The value a semi-structured column's JSON text holds, as a long table's value.

    A string, number or boolean becomes itself (`"low"` is `low`, not its quoted text);
    an object or array stays JSON text (a long table's values are scalars); null is None.
    """
    if value.__class__ is not str:
        return value  # None, or a driver that decoded it already
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    if isinstance(decoded, dict | list):
        return json.dumps(decoded, separators=(",", ":"), sort_keys=True)
    return decoded


def is_timezone_aware(sql_type: sa.types.TypeEngine) -> bool:
    """Whether a timestamp column stores an instant (timestamptz, TIMESTAMP_TZ/LTZ)."""
    name = type(sql_type).__name__.upper()
    if name in {"TIMESTAMP_TZ", "TIMESTAMP_LTZ"}:
        return True
    return bool(getattr(sql_type, "timezone", False))


def is_temporal(sql_type: sa.types.TypeEngine) -> bool:
    """Whether values of this column arrive from the driver as datetimes."""
    return json_schema_for(sql_type).get("format") in {"date-time", "date"}


_TRUE_TEXT = frozenset({"true", "t", "1", "yes", "y"})


def _to_datetime_text(value: t.Any) -> str | None:
    if value is None:
        return None
    return normalise(value if isinstance(value, dt.datetime | str) else str(value))


def _to_date_text(value: t.Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _to_boolean(value: t.Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_TEXT
    return bool(value)


def _to_integer(value: t.Any) -> int | None:
    return value if value is None or value.__class__ is int else int(value)


def _to_number(value: t.Any) -> t.Any:
    # Drivers return float, int or Decimal already; only text needs parsing.
    return decimal.Decimal(value) if value.__class__ is str else value


def _to_json(value: t.Any) -> t.Any:
    # The Snowflake connector returns VARIANT/OBJECT/ARRAY values as JSON text.
    return json.loads(value) if value.__class__ is str else value


def _to_string(value: t.Any) -> str | None:
    return value if value is None or value.__class__ is str else str(value)


def value_converter(schema: dict[str, t.Any]) -> t.Callable[[t.Any], t.Any]:
    """A function turning a driver value into the JSON value `schema` promises.

    Columns are selected untyped (raw driver values) so SQLAlchemy's SQLite DATETIME and
    Numeric processors can neither choke on text formats nor warn about decimals. One
    small function per type, chosen once: this runs for every value of every row.
    """
    kinds = set(schema.get("type", [])) - {"null"}
    fmt = schema.get("format")
    if fmt == "date-time":
        return _to_datetime_text
    if fmt == "date":
        return _to_date_text
    if kinds & {"object", "array"}:
        return _to_json
    if "boolean" in kinds:
        return _to_boolean
    if "integer" in kinds:
        return _to_integer
    if "number" in kinds:
        return _to_number
    return _to_string


@dataclass(frozen=True)
class ResolvedTable:
    """A table as it really exists: actual schema, table and column names and types."""

    schema: str | None
    name: str
    columns: dict[str, sa.types.TypeEngine]

    def column(self, configured: str, setting: str) -> str:
        """The actual name of a configured column (case-insensitive), or a clear error."""
        where = f"{setting}: column of {self.display}"
        return resolve_name(configured, self.columns, where)

    @property
    def display(self) -> str:
        """`schema.table` for messages."""
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def sql(self, *columns: str) -> sa.TableClause:
        """A lightweight, untyped table clause (raw driver values, no result processing)."""
        return sa.table(self.name, *(sa.column(c) for c in columns), schema=self.schema)


class Warehouse:
    """One engine over the warehouse, with masking and friendly errors built in."""

    def __init__(
        self,
        url: URL | str,
        *,
        connect_timeout: int = 30,
        source: str = "sqlalchemy_url",
        allow_insecure_postgres: bool = False,
    ) -> None:
        """Parse and validate the URL; the engine connects lazily.

        `source` names where the URL came from (a setting, or the variable one names).
        Off loopback, PostgreSQL is reached with TLS and SCRAM only (`transport.py`) unless
        `allow_insecure_postgres`.
        """
        try:
            self.url = make_url(url) if isinstance(url, str) else url
        except sa.exc.ArgumentError as exc:
            msg = f"{source} is not a valid SQLAlchemy URL (dialect://user@host/db)"
            raise TapPeakError(msg) from exc
        self.masked_url = mask_url(self.url)
        self.secrets = url_secrets(self.url)
        self.dialect_name = self.url.get_backend_name()
        if self.dialect_name == "sqlite":
            database = self.url.database or ""
            in_file = database not in {"", ":memory:"} and not database.startswith("file:")
            if in_file and not Path(database).is_file():
                msg = f"SQLite database file not found: {database}"
                raise TapPeakError(msg)
        connect_args = self._connect_args(connect_timeout)
        if self.dialect_name in LIBPQ_DIALECTS and not allow_insecure_postgres:
            connect_args.update(safe_connect_args(self.url.host, self.url.query, source))
        try:
            self.engine = sa.create_engine(self.url, connect_args=connect_args)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            hint = (
                " (install tap-peak-attributes[snowflake])"
                if "snowflake" in str(self.dialect_name)
                else ""
            )
            msg = f"cannot use {self.masked_url}: {scrub(str(exc), self.secrets)}{hint}"
            raise TapPeakError(msg) from exc
        if self.dialect_name == "postgresql":
            sa.event.listen(self.engine, "connect", _prepare_postgres_session)

    def _connect_args(self, timeout: int) -> dict[str, t.Any]:
        if self.dialect_name == "postgresql":
            return {"connect_timeout": timeout}
        if self.dialect_name == "snowflake":
            # Sessions in UTC: casts of zone-less text (a text updated-at column) then read
            # as UTC. Given as the connector's `timezone` argument: connect_args override a
            # `timezone=` in the URL, and the connector sets it over session_parameters.
            return {"timezone": "UTC", "login_timeout": timeout}
        return {}

    def connect(self) -> sa.Connection:
        """Open a connection; unreachable hosts and refused logins become one clear line."""
        try:
            return self.engine.connect()
        except sa.exc.DBAPIError as exc:
            raise self.error("cannot connect to the warehouse", exc) from exc

    def error(self, what: str, exc: BaseException) -> TapPeakError:
        """Wrap a driver error: masked URL, first line of the reason, secrets scrubbed."""
        reason = str(getattr(exc, "orig", None) or exc)
        return TapPeakError(f"{what} at {self.masked_url}: {scrub(reason, self.secrets)}")

    def resolve_table(self, conn: sa.Connection, schema: str | None, table: str) -> ResolvedTable:
        """Find a configured table (case-insensitively) and reflect its columns.

        SQLite has no schemas: `schema` is used only when it names an attached database
        (`main`, `temp` or an ATTACHed one) and is otherwise ignored, so the default
        `publish` works against the bundled sample file.
        """
        inspector = sa.inspect(conn)
        actual_schema: str | None
        if self.dialect_name == "sqlite":
            attached = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
            lowered = {name.lower(): name for name in attached}
            actual_schema = lowered.get((schema or "").lower())
        elif schema:
            actual_schema = resolve_name(schema, inspector.get_schema_names(), "schema")
        else:
            actual_schema = None
        names = [
            *inspector.get_table_names(actual_schema),
            *inspector.get_view_names(actual_schema),
        ]
        where = f"table in schema {actual_schema}" if actual_schema else "table"
        name = resolve_name(table, names, where)
        columns = {c["name"]: c["type"] for c in inspector.get_columns(name, actual_schema)}
        return ResolvedTable(actual_schema, name, columns)

    def timestamp_expression(
        self, column: sa.ColumnClause, sql_type: sa.types.TypeEngine
    ) -> tuple[sa.ColumnElement[t.Any], t.Callable[[dt.datetime], t.Any]]:
        """The SQL expression to filter and sort by, and how to bind a UTC datetime to it.

        SQLite stores timestamps as text in whatever format the writer chose
        (`2024-01-01 05:00:00`, `...T...Z`, `...+02:00`), and comparing that text with
        an ISO bookmark silently skips rows. So on SQLite both sides are normalised by
        `strftime('%Y-%m-%d %H:%M:%f', ...)`: UTC text with a fixed width (millisecond
        precision) that sorts correctly. Text columns elsewhere are cast to a zoned
        timestamp; real timestamp columns are compared natively.
        """
        if self.dialect_name == "sqlite":
            expression = sa.func.strftime(SQLITE_TIMESTAMP_FORMAT, column)
            return expression, sqlite_text
        if not is_temporal(sql_type):
            return sa.cast(column, sa.DateTime(timezone=True)), to_utc
        if is_timezone_aware(sql_type):
            return column, to_utc
        return column, lambda value: to_utc(value).replace(tzinfo=None)


def _prepare_postgres_session(dbapi_connection: t.Any, _record: t.Any) -> None:
    """Sessions in UTC, and json/jsonb values as text.

    UTC: casts of text and timestamptz arithmetic agree with Python; a SET (not the
    `options` startup parameter) also works on Redshift. Text: psycopg decodes json and
    jsonb itself, Snowflake's connector returns JSON text; one decoding serves both.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET TIME ZONE 'UTC'")
    finally:
        cursor.close()
    dbapi_connection.commit()
    adapters = getattr(dbapi_connection, "adapters", None)
    if adapters is not None:
        from psycopg.types.string import TextLoader  # noqa: PLC0415 - PostgreSQL only

        for name in ("json", "jsonb"):
            adapters.register_loader(name, TextLoader)


_IDENTIFIER = re.compile(r"[^0-9a-zA-Z_]+")


def attribute_key(prefix: str, name: str) -> str:
    """Record key of an attribute: prefix + lower-case name, odd characters as `_`.

    Lower case makes the same output named `CHURN_PROBABILITY` on Snowflake and
    `churn_probability` on Redshift land on one Braze attribute.
    """
    return prefix + _IDENTIFIER.sub("_", name.strip()).lower()
