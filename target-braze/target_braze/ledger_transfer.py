"""Export and import of a whole delivery ledger, as JSON lines.

A ledger moves between SQLite and PostgreSQL, or between machines, without a run sending
anything again: every table is copied row for row (workspaces keep their ids and the
identities their keys were derived from). The file holds no API key and no identifier in
clear, but it does say what Braze holds for each (hashed) user: keep it as private as
the ledger itself (it is written 0600).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from target_braze.errors import TargetBrazeError
from target_braze.ledger_store import SCHEMA_VERSION, LedgerStore
from target_braze.ledger_store.base import TABLES

FORMAT = "target-braze-ledger-export"


class LedgerTransferError(TargetBrazeError):
    """An export file that cannot be imported here, or a ledger that cannot take it."""


def _plain(value: Any) -> Any:
    return {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


def _stored(value: Any) -> Any:
    return base64.b64decode(value["b64"]) if isinstance(value, dict) else value


@contextmanager
def _output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        yield out


def export_ledger(store: LedgerStore, path: str) -> None:
    """Write every table of `store` to `path` (a new file, 0600; `-`: standard output)."""
    counts = dict.fromkeys(TABLES, 0)
    try:
        with _output(path) as out:
            out.write(json.dumps({"format": FORMAT, "schema_version": SCHEMA_VERSION}) + "\n")
            for table in TABLES:
                for columns, rows in store.table_rows(table):
                    line = {"table": table, "columns": columns,
                            "rows": [[_plain(v) for v in row] for row in rows]}  # fmt: skip
                    out.write(json.dumps(line) + "\n")
                    counts[table] += len(rows)
    except FileExistsError:
        raise LedgerTransferError(f"export file {path} exists: name a new file") from None
    except OSError as exc:
        raise LedgerTransferError(f"cannot write export file {path}: {exc.strerror}") from None
    summary = ", ".join(f"{counts[t]:,} {t}" for t in TABLES)
    print(f"exported ledger {store.url_display}: {summary}", file=sys.stderr)


def import_ledger(store: LedgerStore, path: str) -> None:
    """Copy an export into `store`, which must hold no workspace yet."""
    if store.workspaces():
        raise LedgerTransferError(
            f"ledger_url {store.url_display} already holds workspaces: import only into a new, "
            "empty ledger (point ledger_url at a new file or database)"
        )
    counts = dict.fromkeys(TABLES, 0)
    try:
        with open(path, encoding="utf-8") as source:
            header = json.loads(source.readline() or "{}")
            if header.get("format") != FORMAT:
                raise LedgerTransferError(f"{path} is not a target-braze-ledger export")
            if header.get("schema_version") != SCHEMA_VERSION:
                raise LedgerTransferError(
                    f"{path} was exported at ledger schema {header.get('schema_version')}, "
                    f"this target-braze writes {SCHEMA_VERSION}: import with the release that "
                    "exported it, run it once to migrate, and export again"
                )
            for number, text in enumerate(source, start=2):
                chunk = json.loads(text)
                table = chunk.get("table")
                if table not in TABLES:
                    raise LedgerTransferError(f"{path} line {number}: unknown table {table!r}")
                rows = [tuple(_stored(v) for v in row) for row in chunk["rows"]]
                store.insert_rows(table, chunk["columns"], rows)
                counts[table] += len(rows)
    except OSError as exc:
        raise LedgerTransferError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise LedgerTransferError(f"{path} is not a readable export ({exc})") from None
    summary = ", ".join(f"{counts[t]:,} {t}" for t in TABLES)
    print(f"imported into ledger {store.url_display}: {summary}")
