"""What the delivery ledger's storage costs the target: CPU (and wall) per row, per backend.

    .venv/bin/python benchmarks/ledger_store.py --rows 100000
    .venv/bin/python benchmarks/ledger_store.py --rows 100000 --postgres "$(scripts/postgres)"

CPU is this process's own (`time.process_time`: the caller's cost; PostgreSQL's server CPU is
not in it), the best of `--repeat` runs because the machine is shared. Each run starts from
an empty ledger: a fresh SQLite file, or a database created in the given PostgreSQL server
and dropped afterwards. Rows are like the target's: ~130-byte entries, random 64-bit keys.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from target_braze.ledger_store import KeySpace, LedgerStore, SqliteLedgerStore, open_store

ENTRY_BYTES = 130


def _timed(work: Callable[[], Any], rows: int) -> tuple[float, float]:
    """(CPU us/row, wall us/row) of `work()`."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return (
        (time.process_time() - cpu) / rows * 1e6,
        (time.perf_counter() - wall) / rows * 1e6,
    )


def _batches(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def one_run(store: LedgerStore, rows: int, batch: int, read_chunk: int) -> dict[str, Any]:
    """Every measured operation once, on an empty ledger."""
    rng = random.Random(7)
    keys = KeySpace("key:0123456789abcdef0123456789abcdef")
    ids = [f"customer-{i:09d}" for i in range(rows)]
    figures: dict[str, Any] = {}

    user_keys: list[tuple[int, int]] = []
    figures["keyspace.user"] = _timed(
        lambda: user_keys.extend(keys.user("external_id", i) for i in ids), rows
    )
    ws = store.register_workspace("key:0123456789abcdef0123456789abcdef", "https://x", None)
    users = [(k, c, rng.randbytes(ENTRY_BYTES)) for k, c in user_keys]
    rng.shuffle(users)  # the tap's order is not key order

    def write_all(data: list[Any], size: int, as_events: bool = False) -> None:
        for part in _batches(data, size):
            store.write(ws, [], part) if as_events else store.write(ws, part, [])

    figures[f"write new users, {batch}/call"] = _timed(lambda: write_all(users, batch), rows)
    if isinstance(store, SqliteLedgerStore):
        figures["_file bytes per user"] = _checkpointed_size(store.path) / rows
    # New entries on every pass: SQLite skips the page write of a row rewritten unchanged,
    # and the ledger is only ever written for values that changed.
    changed = [(k, c, rng.randbytes(ENTRY_BYTES)) for k, c, _ in users]
    figures[f"write known users, {batch}/call"] = _timed(lambda: write_all(changed, batch), rows)
    changed = [(k, c, rng.randbytes(ENTRY_BYTES)) for k, c, _ in users]
    figures["write known users, 500/call"] = _timed(lambda: write_all(changed, 500), rows)

    lookup = [k for k, _, _ in users]
    rng.shuffle(lookup)

    def read_all(key_list: list[int], reader: Callable[[list[int]], dict[int, Any]]) -> None:
        found = 0
        for part in _batches(key_list, read_chunk):
            found += len(reader(part))
        figures.setdefault("_found", []).append(found)

    figures[f"read_users hits, {read_chunk}/call"] = _timed(
        lambda: read_all(lookup, store.read_users), rows
    )
    misses = [rng.getrandbits(64) - 2**63 for _ in range(rows)]
    figures[f"read_users misses, {read_chunk}/call"] = _timed(
        lambda: read_all(misses, store.read_users), rows
    )

    events = [(*keys.event(f"order-{i}".encode()), user_keys[i][0], 20_000) for i in range(rows)]
    figures[f"write new events, {batch}/call"] = _timed(
        lambda: write_all(events, batch, as_events=True), rows
    )
    event_keys = [k for k, _, _, _ in events]
    figures[f"read_events hits, {read_chunk}/call"] = _timed(
        lambda: read_all(event_keys, store.read_events), rows
    )
    if isinstance(store, SqliteLedgerStore):
        figures["_file bytes per user + event"] = _checkpointed_size(store.path) / rows
    found = figures.pop("_found")
    assert found == [rows, 0, rows], found  # the benchmark checks itself
    return figures


def floor_run(rows: int, batch: int) -> dict[str, Any]:
    """What any ledger of one SQLite row per user pays, whatever its code: the floor.

    A bare `sqlite3` insert of `rows` random keys with an 8-byte value (no upsert, no
    entries, the ledger's pragmas), and the digests of a Peak-shaped user's 9 attribute
    values by the ledger's rule (canonical JSON, xxh3 seeded by the name). Against
    target-braze's CPU per record with the ledger off, these two alone bound from below
    what the ledger can cost a first sync (issue 8's 15% goal).
    """
    # The ledger's own rule (target_braze.ledger), not a copy of it.
    from target_braze.ledger import _SORT_KEYS, _digest, _dumps

    rng = random.Random(11)
    keys = sorted(rng.getrandbits(63) for _ in range(rows))
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ledger-floor-") as work:
        conn = sqlite3.connect(Path(work) / "floor.sqlite", isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=10000"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("CREATE TABLE users (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        value = bytes(8)

        def insert_all() -> None:
            for part in _batches(keys, batch):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO users VALUES (?, ?)", [(k, value) for k in part])
                conn.execute("COMMIT")

        figures[f"bare sqlite3 insert, {batch}/commit"] = _timed(insert_all, rows)
        conn.close()
    attributes = [
        {
            "p": rng.random(),
            "risk": rng.choice(["low", "high"]),
            "v": rng.random() * 1e3,
            "q": rng.random(),
            "nbp": "smart_watch",
            "seg": "new",
            "vip": rng.random() < 0.5,
            "n": rng.randrange(50),
            "at": "2026-11-21T06:03:29Z",
        }
        for _ in range(rows)
    ]
    seeds = [_digest(name.encode()) for name in attributes[0]]

    def digest_all() -> None:
        for body in attributes:
            [
                _digest(_dumps(v, None, _SORT_KEYS), s)
                for v, s in zip(body.values(), seeds, strict=True)
            ]

    figures["9 value digests (per user)"] = _timed(digest_all, rows)
    return figures


def _checkpointed_size(path: Path) -> int:
    """The ledger file's size once its WAL is copied in (the WAL is scratch space)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


@contextmanager
def sqlite_ledger() -> Iterator[LedgerStore]:
    with (
        tempfile.TemporaryDirectory(prefix="ledger-bench-") as work,
        open_store(f"sqlite:///{work}/ledger.sqlite") as store,
    ):
        yield store


@contextmanager
def postgres_ledger(server_url: str) -> Iterator[LedgerStore]:
    import psycopg

    admin_url = "postgresql://" + server_url.split("://", 1)[1]
    name = f"ledger_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with open_store(f"{server_url.rsplit('/', 1)[0]}/{name}") as store:
            yield store
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000, help="rows per write() call")
    parser.add_argument("--read-chunk", type=int, default=500, help="keys per read call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TEST_POSTGRES_URL", "off"),
        help="a PostgreSQL server URL (a database is created and dropped in it), or off",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    backends: dict[str, Callable[[], Any]] = {"sqlite": sqlite_ledger}
    if args.postgres != "off":
        backends["postgresql"] = lambda: postgres_ledger(args.postgres)
    results: dict[str, dict[str, Any]] = {}
    for backend, ledger in backends.items():
        runs = []
        for _ in range(args.repeat):
            with ledger() as store:
                runs.append(one_run(store, args.rows, args.batch, args.read_chunk))
        best = {name: min(run[name] for run in runs) for name in runs[0]}
        if backend == "sqlite":
            floors = [floor_run(args.rows, args.batch) for _ in range(args.repeat)]
            best.update({name: min(run[name] for run in floors) for name in floors[0]})
        results[backend] = best
        print(f"\n{backend}: {args.rows:,} rows, best of {args.repeat}")
        print(f"  {'operation':<34} {'CPU us/row':>10} {'wall us/row':>11}")
        for name, value in best.items():
            if name.startswith("_"):
                print(f"  {name.strip('_'):<34} {value:>10.0f}")
            else:
                print(f"  {name:<34} {value[0]:>10.2f} {value[1]:>11.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
