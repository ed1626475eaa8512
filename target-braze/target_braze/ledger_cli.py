"""`target-braze-ledger`: the delivery ledger's command, with export and import.

`target-braze-ledger`: look after the delivery ledger.

`stats` (size per workspace), `init` (create it deliberately), `move-workspace` (after an
API key rotation), `clear-workspace` and `clear-user` (each says what it will delete and
asks, or needs `--yes`), `unknown` (the events and purchases of unknown delivery) and
`release` (forget chosen ones once a person has checked Braze), `export` and `import`
(JSON lines, to move a ledger between SQLite and PostgreSQL or between machines).

Settings are read the way target-braze reads them: `--config` JSON files (later files win),
then, for keys they lack, the environment variables Meltano exports for the plugin
(`TARGET_BRAZE_LEDGER_URL`, ...); the API key, as target-braze finds it, may also be in the
variable `api_key_env` names. It is only ever fed to the one-way workspace derivation:
never printed, nor is a ledger password.

Export and import of a whole delivery ledger, as JSON lines.

A ledger moves between SQLite and PostgreSQL, or between machines, without a run sending
anything again: every table is copied row for row (workspaces keep their ids and the
identities their keys were derived from). The file holds no API key and no identifier in
clear, but it does say what Braze holds for each (hashed) user: keep it as private as
the ledger itself (it is written 0600).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from target_braze.errors import TargetBrazeError
from target_braze.ledger_store import (
    SCHEMA_VERSION,
    KeySpace,
    LedgerStore,
    SqliteLedgerStore,
    UnsettledEvent,
    WorkspaceInfo,
    default_ledger_url,
    mask_url,
    open_store,
    sqlite_ledger_path,
    workspace_identity,
)
from target_braze.ledger_store.base import TABLES
from target_braze.ledger_store.transport import secure_postgres_url

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


SETTINGS = (
    "ledger_url",
    "rest_endpoint",
    "api_key",
    "api_key_env",
    "ledger_workspace",
    "allow_insecure_postgres",
)

PROG = "target-braze-ledger"


class LedgerCommandError(TargetBrazeError):
    """A problem with the command's own input (config files, settings, workspace id)."""


def load_settings(config_files: Sequence[str]) -> dict[str, str]:
    """The ledger settings from `config_files`, then `TARGET_BRAZE_<NAME>` for missing keys."""
    settings: dict[str, str] = {}
    for name in config_files:
        try:
            data = json.loads(Path(name).read_text(encoding="utf-8"))
        except OSError as exc:
            raise LedgerCommandError(f"cannot read --config {name}: {exc.strerror}") from None
        except ValueError:
            raise LedgerCommandError(f"--config {name} is not valid JSON") from None
        if not isinstance(data, dict):
            raise LedgerCommandError(f"--config {name} is not a JSON object")
        settings.update({k: str(data[k]) for k in SETTINGS if data.get(k) not in (None, "")})
    for key in SETTINGS:
        value = os.environ.get(f"TARGET_BRAZE_{key.upper()}")
        if key not in settings and value:
            settings[key] = value
    return settings


def config_identity(settings: dict[str, str]) -> str:
    """The workspace identity of these settings, exactly as target-braze derives it."""
    if settings.get("ledger_workspace"):
        return workspace_identity("", None, settings["ledger_workspace"])
    # Imported here: they pull in requests and singer-sdk, which stats does not need.
    from target_braze.client import resolve_rest_endpoint  # noqa: PLC0415
    from target_braze.settings import resolve_api_key  # noqa: PLC0415

    api_key = resolve_api_key(settings)
    if not settings.get("rest_endpoint") or not api_key:
        raise LedgerCommandError(
            "the config's workspace needs rest_endpoint and api_key (or ledger_workspace), "
            "from --config, TARGET_BRAZE_REST_ENDPOINT / TARGET_BRAZE_API_KEY or the "
            "variable api_key_env names; or pass --workspace ID (see stats)"
        )
    endpoint = resolve_rest_endpoint(settings["rest_endpoint"])
    return workspace_identity(endpoint, api_key, None)


def _open_existing(url: str) -> LedgerStore:
    """The ledger at `url`; a SQLite file that does not exist yet is an error, not created."""
    path = sqlite_ledger_path(url)
    if path is not None and not path.exists():
        raise LedgerCommandError(
            f"ledger_url {mask_url(url)} does not exist: no run has written a ledger there "
            "(check ledger_url)"
        )
    return open_store(url)


def _target_workspace(
    store: LedgerStore, settings: dict[str, str], workspace_id: int | None
) -> WorkspaceInfo:
    """The workspace `--workspace` names, or else the one the settings derive."""
    known = store.workspaces()
    if workspace_id is not None:
        found = [w for w in known if w.id == workspace_id]
        if not found:
            raise LedgerCommandError(
                f"ledger_url {store.url_display} has no workspace {workspace_id} "
                f"({PROG} stats lists them)"
            )
        return found[0]
    identity = config_identity(settings)
    found = [w for w in known if w.identity == identity]
    if not found:
        raise LedgerCommandError(
            f"ledger_url {store.url_display} has no entries for this config's workspace "
            f"(nothing to clear; {PROG} stats lists the workspaces it has)"
        )
    return found[0]


def _size(store: LedgerStore) -> str:
    if not isinstance(store, SqliteLedgerStore):
        return ""
    wal = Path(f"{store.path}-wal")
    size = float(store.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0))
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f" ({size:.0f} {unit} on disk)" if unit == "bytes" else f" ({size:.1f} {unit} on disk)"


def _describe(w: WorkspaceInfo) -> str:
    label = f" ({w.label})" if w.label else ""
    return f"workspace {w.id} {w.endpoint}{label}"


def stats(store: LedgerStore) -> None:
    """Print the ledger URL (masked), its size, and one line per workspace."""
    print(f"ledger {store.url_display}{_size(store)}")
    known = store.workspaces()
    if not known:
        print("no workspaces yet")
        return
    rows = [("id", "endpoint", "label", "users", "events", "last used")] + [
        (str(w.id), w.endpoint, w.label or "-", f"{w.users:,}", f"{w.events:,}", w.last_used or "-")
        for w in known
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _confirm(what: str, question: str, *, yes: bool, ask: Callable[[str], str] = input) -> bool:
    """Say what will change first; then ask, unless `--yes`. False: nothing is to be done.

    With no answer to read (standard input closed or empty, as under a scheduler), nothing
    changes: the command fails with one line asking for `--yes`.
    """
    print(what)
    if yes:
        return True
    try:
        answer = ask(f"{question} [y/N] ")
    except EOFError:
        print()
        raise LedgerCommandError(
            "nothing changed: no answer on standard input; confirm with --yes"
        ) from None
    if answer.strip().lower() not in ("y", "yes"):
        print("Nothing changed.")
        return False
    return True


def clear_workspace(
    store: LedgerStore, settings: dict[str, str], workspace_id: int | None, *, yes: bool
) -> None:
    """Delete one workspace and everything the ledger holds for it (after confirmation)."""
    target = _target_workspace(store, settings, workspace_id)
    what = (
        f"{_describe(target)}: {target.users:,} users' attribute entries and {target.events:,} "
        "event and purchase identities (the next run sends every attribute again, and "
        "delivers again every event and purchase the tap re-emits)"
    )
    if not _confirm(f"This deletes {what}.", "Delete?", yes=yes):
        return
    users, events = store.clear_workspace(target.id)
    print(f"cleared {_describe(target)}: {users:,} users and {events:,} events deleted")


def clear_user(
    store: LedgerStore,
    settings: dict[str, str],
    workspace_id: int | None,
    identifier_type: str,
    identifier: str,
    *,
    events: bool,
    yes: bool,
) -> None:
    """Delete one user's attribute entries (and with `events`, its event identities)."""
    target = _target_workspace(store, settings, workspace_id)
    key, _check = KeySpace(target.keyspace or target.identity).user(identifier_type, identifier)
    who = f"{identifier_type} {identifier!r}"
    what = f"the attribute entries of {who} in {_describe(target)}" + (
        " and its event and purchase identities (re-emitted ones are delivered again)"
        if events
        else " (its event and purchase identities are kept: --events deletes them too)"
    )
    if not _confirm(f"This deletes {what}.", "Delete?", yes=yes):
        return
    users, event_rows = store.clear_user(target.id, key, events=events)
    if not users and not event_rows:
        print(f"{who} has no entries in {_describe(target)}: nothing deleted")
    else:
        print(
            f"cleared {who} in {_describe(target)}: {users} user row and {event_rows:,} events "
            "deleted"
        )


def event_id(key: int) -> str:
    """How the commands name an event identity: its 64-bit ledger key as 16 hex digits.

    Hex of the unsigned value, so an id never starts with `-` (argparse would take it for
    an option).
    """
    return f"{key & 0xFFFFFFFFFFFFFFFF:016x}"


def _event_key(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFFFFFFFFFFFFFF or len(text) != 16:
        raise LedgerCommandError(
            f"{text!r} is not an event id (16 hex digits, as `{PROG} unknown` lists them)"
        )
    return value - (1 << 64) if value >= 1 << 63 else value


def _describe_event(event: UnsettledEvent) -> str:
    """One line: id, state, when it was sent, stream, user and the object sent."""
    try:
        detail = json.loads(event.detail or "{}")
    except ValueError:
        detail = {}
    body = json.dumps(detail.get("object"), sort_keys=True, separators=(",", ":"))
    return (
        f"{event_id(event.key)}  {event.state}  sent {event.sent_at or '?'}  "
        f"{detail.get('stream', '?')}  {detail.get('array', 'event')} of {detail.get('user', '?')}"
        f"  {body}"
    )


def list_unknown(store: LedgerStore, settings: dict[str, str], workspace_id: int | None) -> None:
    """Print the events and purchases of unknown delivery (and any still in flight)."""
    target = _target_workspace(store, settings, workspace_id)
    events = store.unsettled_events(target.id)
    if not events:
        print(f"no events or purchases of unknown delivery in {_describe(target)}")
        return
    print(
        f"{len(events):,} events/purchases of unknown delivery in {_describe(target)}: Braze "
        "may hold them. Check Braze for each; `release` those it lacks, and the tap's next "
        "emission of them is sent"
    )
    for event in events:
        print(_describe_event(event))


def release(
    store: LedgerStore,
    settings: dict[str, str],
    workspace_id: int | None,
    ids: Sequence[str],
    *,
    everything: bool,
    yes: bool,
    ask: Callable[[str], str] = input,
) -> None:
    """Forget chosen (or all) events of unknown delivery, so their next emission is sent."""
    if everything == bool(ids):
        raise LedgerCommandError("name the events to release (ids from `unknown`), or --all")
    target = _target_workspace(store, settings, workspace_id)
    unsettled = {event.key: event for event in store.unsettled_events(target.id)}
    keys = list(unsettled) if everything else [_event_key(text) for text in ids]
    missing = [event_id(key) for key in keys if key not in unsettled]
    if missing:
        raise LedgerCommandError(
            f"{', '.join(missing)}: not of unknown delivery in {_describe(target)} (`{PROG} "
            "unknown` lists those that are); nothing released"
        )
    if not keys:
        print(
            f"no events or purchases of unknown delivery in {_describe(target)}: nothing to release"
        )
        return
    lines = "\n".join(_describe_event(unsettled[key]) for key in keys)
    what = f"releasing {len(keys):,} events/purchases in {_describe(target)}:\n{lines}"
    question = "Their next emission will be sent to Braze again. Release them?"
    if not _confirm(what, question, yes=yes, ask=ask):
        return
    released = store.release_events(target.id, None if everything else keys)
    print(f"released {released:,} events/purchases: the tap's next emission of them is sent")


def init(store: LedgerStore, settings: dict[str, str]) -> None:
    """Create the ledger (done by opening it) and the config's workspace, deliberately."""
    identity = config_identity(settings)
    found = store.find_workspace(identity)
    if found is not None:
        print(f"ledger {store.url_display}: workspace {found} already exists; nothing to do")
        return
    workspace = store.register_workspace(identity, _config_endpoint(settings), _label(settings))
    print(
        f"ledger {store.url_display}: workspace {workspace} created; its first run sends every "
        "attribute, event and purchase the tap emits"
    )


def move_workspace(store: LedgerStore, settings: dict[str, str], from_id: int) -> None:
    """Make the config's (rotated) API key name workspace `from_id`, keeping its entries."""
    known = {w.id: w for w in store.workspaces()}
    if from_id not in known:
        raise LedgerCommandError(
            f"ledger_url {store.url_display} has no workspace {from_id} ({PROG} stats lists them)"
        )
    identity = config_identity(settings)
    if known[from_id].identity == identity:
        print(f"{_describe(known[from_id])} already belongs to this config's key: nothing to do")
        return
    store.move_workspace(from_id, identity)
    print(
        f"moved {_describe(known[from_id])} to this config's API key: its "
        f"{known[from_id].users:,} users and {known[from_id].events:,} events stay known, so "
        "the next run sends only changes (the old key no longer names it)"
    )


def _config_endpoint(settings: dict[str, str]) -> str:
    if not settings.get("rest_endpoint"):
        return ""
    from target_braze.client import resolve_rest_endpoint  # noqa: PLC0415

    return resolve_rest_endpoint(settings["rest_endpoint"])


def _label(settings: dict[str, str]) -> str | None:
    return settings.get("ledger_workspace") or None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Show and clear target-braze's delivery ledger. After a clear, the next "
        "run sends those users' attributes in full, and events the cleared entries held may "
        "be delivered again.",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="target-braze config JSON (repeatable; later files win); missing keys come from "
        "TARGET_BRAZE_LEDGER_URL, TARGET_BRAZE_REST_ENDPOINT, TARGET_BRAZE_API_KEY (or the "
        "variable api_key_env names), TARGET_BRAZE_LEDGER_WORKSPACE",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stats", help="size of the ledger per workspace")
    clear_ws = commands.add_parser("clear-workspace", help="delete one workspace's entries")
    clear_ws.add_argument(
        "--workspace", type=int, metavar="ID", help="id from stats (default: the config's)"
    )
    user = commands.add_parser("clear-user", help="delete one user's entries")
    user.add_argument("identifier", metavar="IDENTIFIER")
    user.add_argument("--identifier-type", default="external_id")
    user.add_argument(
        "--workspace", type=int, metavar="ID", help="id from stats (default: the config's)"
    )
    user.add_argument(
        "--events",
        action="store_true",
        help="also forget the user's event and purchase identities (re-emitted ones are "
        "then delivered again)",
    )
    for command in (clear_ws, user):
        command.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    commands.add_parser(
        "init", help="create the ledger and the config's workspace (require_existing_ledger)"
    )
    move = commands.add_parser(
        "move-workspace", help="after an API key rotation: the config's new key takes over"
    )
    move.add_argument("--from", dest="from_id", type=int, required=True, metavar="ID",
                      help="the workspace the old key named (see stats)")  # fmt: skip
    export = commands.add_parser("export", help="write the whole ledger as JSON lines")
    export.add_argument("file", metavar="FILE", help="output file (- for standard output)")
    load = commands.add_parser("import", help="read an export into this (empty) ledger")
    load.add_argument("file", metavar="FILE", help="a file written by export")
    unknown = commands.add_parser(
        "unknown", help="list events and purchases of unknown delivery (Braze may hold them)"
    )
    unknown.add_argument(
        "--workspace", type=int, metavar="ID", help="id from stats (default: the config's)"
    )
    freed = commands.add_parser(
        "release",
        help="forget events of unknown delivery (after checking Braze): their next emission "
        "is sent",
    )
    freed.add_argument("ids", nargs="*", metavar="ID", help="event ids from `unknown`")
    freed.add_argument("--all", action="store_true", help="release every one")
    freed.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    freed.add_argument(
        "--workspace", type=int, metavar="ID", help="id from stats (default: the config's)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command; any error is one `target-braze-ledger: error:` line and exit 1."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        url = secure_postgres_url(
            settings.get("ledger_url") or default_ledger_url(),
            allow_insecure=settings.get("allow_insecure_postgres", "").lower() == "true",
        )
        # init and import create the ledger; every other command reads an existing one.
        opener = open_store if args.command in ("init", "import") else _open_existing
        with opener(url) as store:
            if args.command == "stats":
                stats(store)
            elif args.command == "clear-workspace":
                clear_workspace(store, settings, args.workspace, yes=args.yes)
            elif args.command == "clear-user":
                clear_user(
                    store,
                    settings,
                    args.workspace,
                    args.identifier_type,
                    args.identifier,
                    events=args.events,
                    yes=args.yes,
                )
            elif args.command == "init":
                init(store, settings)
            elif args.command == "move-workspace":
                move_workspace(store, settings, args.from_id)
            elif args.command == "export":
                export_ledger(store, args.file)
            elif args.command == "unknown":
                list_unknown(store, settings, args.workspace)
            elif args.command == "release":
                release(
                    store, settings, args.workspace, args.ids, everything=args.all, yes=args.yes
                )
            else:
                import_ledger(store, args.file)
    except TargetBrazeError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
