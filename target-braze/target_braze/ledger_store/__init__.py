"""Where the delivery ledger lives: a SQLite file or a PostgreSQL database, same four tables.

The store knows nothing about attributes or events: it keeps rows keyed by 64-bit integers
(`KeySpace` derives them from a workspace identity and a user or event identity) with an
opaque `entries` blob, and reads and writes them in large batches. What those blobs mean,
and when a row may be written (only after Braze confirmed), is the caller's business.

Every failure a user can meet (unreadable, locked or corrupt file, unreachable server,
refused login, unknown scheme, schema newer than this release) is one `LedgerError` line
that names the masked `ledger_url` and says what to do. A password never reaches a message:
URLs are masked and driver messages are scrubbed before they are wrapped, and wrapped
driver exceptions are not chained (their text could hold what the scrub must remove).
"""

from __future__ import annotations

from target_braze.ledger_store.base import (
    _POSTGRES_SCHEMES,
    _SQLITE_PREFIX,
    CONFIRMED,
    IN_FLIGHT,
    SCHEMA_VERSION,
    UNKNOWN,
    KeySpace,
    LedgerError,
    LedgerStore,
    Migration,
    UnsettledEvent,
    WorkspaceInfo,
    default_ledger_url,
    mask_url,
    workspace_identity,
)
from target_braze.ledger_store.postgres import PostgresLedgerStore
from target_braze.ledger_store.sqlite import SqliteLedgerStore, sqlite_ledger_path

__all__ = [
    "CONFIRMED",
    "IN_FLIGHT",
    "SCHEMA_VERSION",
    "UNKNOWN",
    "KeySpace",
    "LedgerError",
    "LedgerStore",
    "Migration",
    "PostgresLedgerStore",
    "SqliteLedgerStore",
    "UnsettledEvent",
    "WorkspaceInfo",
    "default_ledger_url",
    "mask_url",
    "open_store",
    "sqlite_ledger_path",
    "workspace_identity",
]


def open_store(url: str | None, *, busy_timeout: float = 30.0) -> LedgerStore:
    """The ledger at `url` (None: `default_ledger_url()`), created or migrated if needed.

    `sqlite:///relative/path`, `sqlite:////absolute/path`, `postgresql://...` (also
    `postgres://` and `postgresql+psycopg://`). `busy_timeout` (seconds) is how long a SQLite
    write waits for another process's write before failing.
    """
    url = url or default_ledger_url()
    if url.startswith(_SQLITE_PREFIX):
        return SqliteLedgerStore(url, busy_timeout=busy_timeout)
    if url.startswith(_POSTGRES_SCHEMES):
        return PostgresLedgerStore(url)
    raise LedgerError(
        f"ledger_url {mask_url(url)} has an unknown scheme: use sqlite:///PATH (a file) or "
        "postgresql://USER@HOST/DATABASE"
    )
