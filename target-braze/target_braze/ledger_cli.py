"""`target-braze-ledger`: the delivery ledger's size per workspace; clear a workspace or a user.

Settings are read the way target-braze reads them: `--config` JSON files (later files win),
then, for keys they lack, the environment variables Meltano exports for the plugin
(`TARGET_BRAZE_LEDGER_URL`, ...); the API key, as target-braze finds it, may also be in the
variable `api_key_env` names. It is only ever fed to the one-way workspace derivation:
never printed, nor is a ledger password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from target_braze.errors import TargetBrazeError
from target_braze.ledger_store import (
    KeySpace,
    LedgerStore,
    SqliteLedgerStore,
    WorkspaceInfo,
    default_ledger_url,
    mask_url,
    open_store,
    sqlite_ledger_path,
    workspace_identity,
)
from target_braze.ledger_store.transport import secure_postgres_url

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


def clear_workspace(store: LedgerStore, settings: dict[str, str], workspace_id: int | None) -> None:
    """Delete one workspace and everything the ledger holds for it."""
    target = _target_workspace(store, settings, workspace_id)
    users, events = store.clear_workspace(target.id)
    print(f"cleared {_describe(target)}: {users:,} users and {events:,} events deleted")


def clear_user(
    store: LedgerStore,
    settings: dict[str, str],
    workspace_id: int | None,
    identifier_type: str,
    identifier: str,
) -> None:
    """Delete one user's entries (and its events) in one workspace."""
    target = _target_workspace(store, settings, workspace_id)
    key, _check = KeySpace(target.identity).user(identifier_type, identifier)
    users, events = store.clear_user(target.id, key)
    who = f"{identifier_type} {identifier!r}"
    if not users and not events:
        print(f"{who} has no entries in {_describe(target)}: nothing deleted")
    else:
        print(
            f"cleared {who} in {_describe(target)}: {users} user row and {events:,} events deleted"
        )


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
        with _open_existing(url) as store:
            if args.command == "stats":
                stats(store)
            elif args.command == "clear-workspace":
                clear_workspace(store, settings, args.workspace)
            else:
                clear_user(store, settings, args.workspace, args.identifier_type, args.identifier)
    except TargetBrazeError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
