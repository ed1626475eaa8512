"""The profile store: Braze's attribute semantics, kept in memory and written to SQLite.

Profiles live in memory (the hot path reads and edits them there). Every request's
changes are written to SQLite in one transaction: the changed profiles as one row of
``profile_journal`` (one insert per request instead of one per profile: rewriting 75
indexed rows cost more than everything else a request does), events and purchases with
``executemany``. When the sandbox is idle, and on shutdown, the journal is folded into the
``profiles`` table, so the database survives a restart (``--db PATH``) and can be read by
any SQLite client (``profiles`` plus any newer ``profile_journal`` rows).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from braze_sandbox.contract import (
    CONTROL_KEYS,
    STANDARD_FIELDS,
    SUBSCRIPTION_STATES,
    is_operation,
    parse_time,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    braze_id TEXT PRIMARY KEY,
    external_id TEXT UNIQUE,
    email TEXT,
    phone TEXT,
    user_aliases BLOB NOT NULL,
    standard BLOB NOT NULL,
    custom_attributes BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS profile_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    changes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    braze_id TEXT NOT NULL,
    external_id TEXT,
    name TEXT NOT NULL,
    time TEXT NOT NULL,
    properties BLOB,
    app_id TEXT,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS purchases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    braze_id TEXT NOT NULL,
    external_id TEXT,
    product_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    price REAL NOT NULL,
    quantity INTEGER NOT NULL,
    time TEXT NOT NULL,
    properties BLOB,
    app_id TEXT,
    received_at REAL NOT NULL
);
"""

_UPSERT = (
    "INSERT OR REPLACE INTO profiles (braze_id, external_id, email, phone, user_aliases,"
    " standard, custom_attributes, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (braze_id, external_id, name, time, properties, app_id, received_at)"
    " VALUES (?,?,?,?,?,?,?)"
)
_INSERT_PURCHASE = (
    "INSERT INTO purchases (braze_id, external_id, product_id, currency, price, quantity,"
    " time, properties, app_id, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


# How apply_attributes routes a key: absent = custom attribute.
_CONTROL, _STANDARD, _INDEXED = 0, 1, 2
_ROUTE: dict[str, int] = {key: _STANDARD for key in STANDARD_FIELDS}
_ROUTE.update({"email": _INDEXED, "phone": _INDEXED})
_ROUTE.update({key: _CONTROL for key in CONTROL_KEYS})


@dataclass(slots=True)
class Profile:
    """One Braze user: identifiers, standard fields and custom attributes."""

    braze_id: str
    external_id: str | None = None
    user_aliases: list[dict[str, str]] = field(default_factory=list)
    standard: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The admin API's view of the profile."""
        doc: dict[str, Any] = {"braze_id": self.braze_id}
        if self.external_id is not None:
            doc["external_id"] = self.external_id
        if self.user_aliases:
            doc["user_aliases"] = self.user_aliases
        doc.update(self.standard)
        doc["custom_attributes"] = self.custom
        return doc


def _merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep-merge for ``_merge_objects``: dicts merge, ``null`` removes, the rest replaces."""
    for key, value in update.items():
        if value is None:
            target.pop(key, None)
        elif type(value) is dict and not _is_time(value) and type(target.get(key)) is dict:
            _merge(target[key], value)
        else:
            target[key] = _normalise_nested(value)


def _is_time(value: dict[str, Any]) -> bool:
    return len(value) == 1 and "$time" in value


def _normalise_nested(value: Any) -> Any:
    """Copy a nested value, normalising ``{"$time": iso}`` dates to UTC."""
    if type(value) is dict:
        if _is_time(value):
            return {"$time": parse_time(value["$time"])}
        return {k: _normalise_nested(v) for k, v in value.items()}
    if type(value) is list:
        return [_normalise_nested(v) for v in value]
    return value


class ProfileStore:
    """Profiles, events and purchases; one SQLite transaction per applied request."""

    def __init__(self, db_path: str = ":memory:", max_array_length: int = 25) -> None:
        self.db_path = db_path
        self.max_array_length = max_array_length
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        self.profiles: dict[str, Profile] = {}
        self._by_key: dict[str, str] = {}
        self._next_id = 1
        self._dirty: dict[str, Profile] = {}
        self._events: list[tuple[Any, ...]] = []
        self._purchases: list[tuple[Any, ...]] = []
        self._unfolded: set[str] = set()
        self._load()

    # -- lookup -------------------------------------------------------------------

    def _load(self) -> None:
        rows = self._db.execute(
            "SELECT braze_id, external_id, email, phone, user_aliases, standard,"
            " custom_attributes, created_at, updated_at FROM profiles"
        ).fetchall()
        for bid, ext, _email, _phone, aliases, standard, custom, created, updated in rows:
            profile = Profile(
                bid, ext, orjson.loads(aliases), orjson.loads(standard), orjson.loads(custom)
            )
            profile.created_at, profile.updated_at = created, updated
            self.profiles[bid] = profile
        for (changes,) in self._db.execute("SELECT changes FROM profile_journal ORDER BY seq"):
            for bid, ext, aliases, standard, custom, created, updated in orjson.loads(changes):
                self.profiles[bid] = Profile(bid, ext, aliases, standard, custom, created, updated)
                self._unfolded.add(bid)
        for profile in self.profiles.values():
            self._index(profile)
        self._next_id = len(self.profiles) + 1
        self.fold_journal()

    def _index(self, profile: Profile) -> None:
        keys = self._by_key
        keys["b:" + profile.braze_id] = profile.braze_id
        if profile.external_id is not None:
            keys["e:" + profile.external_id] = profile.braze_id
        for alias in profile.user_aliases:
            keys["a:" + alias["alias_label"] + "\x1f" + alias["alias_name"]] = profile.braze_id
        email = profile.standard.get("email")
        if type(email) is str:
            keys.setdefault("m:" + email.lower(), profile.braze_id)
        phone = profile.standard.get("phone")
        if type(phone) is str:
            keys.setdefault("p:" + phone, profile.braze_id)

    def find(self, user_key: str) -> Profile | None:
        """The profile an identifier key (see :func:`contract.identify`) points at."""
        bid = self._by_key.get(user_key)
        return None if bid is None else self.profiles.get(bid)

    def resolve(self, user_key: str, obj: dict[str, Any], create: bool) -> Profile | None:
        """Find the user of an object, creating it when allowed (never for ``braze_id``)."""
        bid = self._by_key.get(user_key)
        if bid is not None:
            return self.profiles[bid]
        if not create or user_key[0] == "b":
            return None
        while True:
            new_id = f"{0x5E0000000000000000000000 + self._next_id:024x}"
            self._next_id += 1
            if new_id not in self.profiles:
                break
        now = time.time()
        profile = Profile(new_id, created_at=now, updated_at=now)
        kind = user_key[0]
        if kind == "e":
            profile.external_id = user_key[2:]
        elif kind == "a":
            alias = obj["user_alias"]
            profile.user_aliases.append(
                {"alias_name": alias["alias_name"], "alias_label": alias["alias_label"]}
            )
        elif kind == "m":
            profile.standard["email"] = obj["email"]
        elif kind == "p":
            profile.standard["phone"] = obj["phone"]
        self.profiles[new_id] = profile
        self._index(profile)
        self._dirty[new_id] = profile
        return profile

    # -- user data: delete, aliases, identify, subscription groups ----------------------

    def delete(self, profile: Profile) -> None:
        """Remove a profile and every identifier pointing at it (events stay, as in Braze).

        The journal is folded first, so no journalled copy brings the profile back when
        the database is loaded again.
        """
        if self._unfolded or self._dirty:
            self.commit()
            self.fold_journal()
        self.profiles.pop(profile.braze_id, None)
        for key in [k for k, bid in self._by_key.items() if bid == profile.braze_id]:
            del self._by_key[key]
        self._db.execute("DELETE FROM profiles WHERE braze_id = ?", (profile.braze_id,))

    def create_alias_user(self, name: str, label: str) -> Profile:
        """An alias-only profile (no external_id), as ``/users/alias/new`` creates."""
        profile = self.resolve(
            "a:" + label + "\x1f" + name,
            {"user_alias": {"alias_name": name, "alias_label": label}},
            create=True,
        )
        assert profile is not None  # noqa: S101 - created when absent
        return profile

    def add_alias(self, profile: Profile, name: str, label: str) -> bool:
        """Give a profile another alias; False when it already has one with that label."""
        if any(alias["alias_label"] == label for alias in profile.user_aliases):
            return False
        profile.user_aliases.append({"alias_name": name, "alias_label": label})
        self._by_key["a:" + label + "\x1f" + name] = profile.braze_id
        self._dirty[profile.braze_id] = profile
        return True

    def identify(self, alias_profile: Profile, external_id: str, *, merge: bool) -> bool:
        """``/users/identify`` of one alias-only profile into ``external_id``.

        No profile has that external_id: the alias profile takes it. Otherwise the alias
        moves to the identified profile (unless it already has an alias of that label:
        then nothing changes); with ``merge`` the custom attributes and standard fields
        only the alias profile has, and its events and purchases, go with it; the alias
        profile is removed. Returns whether anything changed.
        """
        if alias_profile.external_id is not None:
            return False
        known = self.find("e:" + external_id)
        if known is None:
            alias_profile.external_id = external_id
            self._by_key["e:" + external_id] = alias_profile.braze_id
            self._dirty[alias_profile.braze_id] = alias_profile
            return True
        labels = {alias["alias_label"] for alias in known.user_aliases}
        if any(alias["alias_label"] in labels for alias in alias_profile.user_aliases):
            return False
        if merge:
            for key, value in alias_profile.custom.items():
                known.custom.setdefault(key, value)
            for key, value in alias_profile.standard.items():
                known.standard.setdefault(key, value)
            for table in ("events", "purchases"):
                self._db.execute(
                    f"UPDATE {table} SET braze_id = ?, external_id = ? WHERE braze_id = ?",
                    (known.braze_id, external_id, alias_profile.braze_id),
                )
        aliases = list(alias_profile.user_aliases)
        self.delete(alias_profile)
        for alias in aliases:
            self.add_alias(known, alias["alias_name"], alias["alias_label"])
        known.updated_at = time.time()
        self._dirty[known.braze_id] = known
        return True

    def set_subscription(self, profile: Profile, group_id: str, state: str) -> None:
        """Set one subscription group's state; the profile's other groups are untouched."""
        groups = profile.standard.get("subscription_groups")
        if type(groups) is not dict:
            groups = profile.standard["subscription_groups"] = {}
        groups[group_id] = state
        profile.updated_at = time.time()
        self._dirty[profile.braze_id] = profile

    # -- attribute semantics ---------------------------------------------------------

    def apply_attributes(
        self, profile: Profile, obj: dict[str, Any], skip_nested: bool = False
    ) -> None:
        """Apply one attributes object to a profile with Braze's semantics.

        ``skip_nested`` drops nested-object updates: Braze discards every nested update of
        a request when one nested value in it is invalid.
        """
        merge = obj.get("_merge_objects") is True
        max_len = self.max_array_length
        standard = profile.standard
        custom = profile.custom
        route = _ROUTE
        for key, value in obj.items():
            where = route.get(key)
            if key == "subscription_groups" and type(value) is list:
                # Braze sets each listed group's state; the user's other groups stay.
                for item in value:
                    if type(item) is dict:
                        group, state = (
                            item.get("subscription_group_id"),
                            item.get("subscription_state"),
                        )
                        if type(group) is str and state in SUBSCRIPTION_STATES:
                            self.set_subscription(profile, group, str(state))
                continue
            if where is None:
                target = custom
            elif where == _CONTROL:
                continue
            else:
                target = standard
                if where == _INDEXED and standard.get(key) != value:
                    self._index_secondary(key, value, profile)
            kind = type(value)
            if kind is str or kind is int or kind is bool or kind is float:
                target[key] = value
                continue
            if value is None:
                target.pop(key, None)
            elif kind is dict:
                if is_operation(value):
                    if "inc" in value:
                        current = target.get(key)
                        base = current if type(current) is int else 0
                        target[key] = base + value["inc"]
                    else:
                        current = target.get(key)
                        items = list(current) if type(current) is list else []
                        for item in value.get("add", ()):
                            items.append(item)
                        removed = value.get("remove")
                        if removed:
                            drop = set(removed)
                            items = [i for i in items if i not in drop]
                        # Over the cap, Braze keeps the newest elements.
                        target[key] = items[-max_len:] if len(items) > max_len else items
                elif skip_nested:
                    continue
                elif merge and type(target.get(key)) is dict:
                    _merge(target[key], value)
                else:
                    target[key] = _normalise_nested(value)
            elif kind is list:
                strings = True
                for item in value:
                    if type(item) is not str:
                        strings = False
                        break
                if strings:
                    target[key] = value if len(value) <= max_len else value[:max_len]
                elif not skip_nested:
                    target[key] = _normalise_nested(value)
            else:
                target[key] = value
        profile.updated_at = time.time()
        self._dirty[profile.braze_id] = profile

    def _index_secondary(self, key: str, value: str, profile: Profile) -> None:
        """Make a newly written email or phone usable as a lookup identifier."""
        if type(value) is str:
            prefix = "m:" + value.lower() if key == "email" else "p:" + value
            self._by_key.setdefault(prefix, profile.braze_id)

    def record_event(self, profile: Profile, obj: dict[str, Any], when: str) -> None:
        """Append an event; Braze never deduplicates, so neither does this."""
        props = obj.get("properties")
        self._events.append(
            (
                profile.braze_id,
                profile.external_id,
                obj["name"],
                when,
                None if props is None else orjson.dumps(props),
                obj.get("app_id"),
                time.time(),
            )
        )

    def record_purchase(self, profile: Profile, obj: dict[str, Any], when: str) -> None:
        """Append a purchase; never deduplicated."""
        props = obj.get("properties")
        self._purchases.append(
            (
                profile.braze_id,
                profile.external_id,
                obj["product_id"],
                obj["currency"],
                float(obj["price"]),
                obj.get("quantity", 1),
                when,
                None if props is None else orjson.dumps(props),
                obj.get("app_id"),
                time.time(),
            )
        )

    def commit(self) -> None:
        """Write this request's changes in one transaction."""
        if not (self._dirty or self._events or self._purchases):
            return
        db = self._db
        db.execute("BEGIN")
        if self._dirty:
            changes = [
                (p.braze_id, p.external_id, p.user_aliases, p.standard, p.custom,
                 p.created_at, p.updated_at)
                for p in self._dirty.values()
            ]  # fmt: skip
            db.execute("INSERT INTO profile_journal (changes) VALUES (?)", (orjson.dumps(changes),))
            self._unfolded.update(self._dirty)
            self._dirty.clear()
        if self._events:
            db.executemany(_INSERT_EVENT, self._events)
            self._events.clear()
        if self._purchases:
            db.executemany(_INSERT_PURCHASE, self._purchases)
            self._purchases.clear()
        db.execute("COMMIT")

    @property
    def journal_pending(self) -> bool:
        """Whether changed profiles wait to be folded into the ``profiles`` table."""
        return bool(self._unfolded)

    def fold_journal(self) -> None:
        """Write the current state of journalled profiles to ``profiles``; empty the journal."""
        dumps = orjson.dumps
        rows = [
            (p.braze_id, p.external_id, p.standard.get("email"), p.standard.get("phone"),
             dumps(p.user_aliases), dumps(p.standard), dumps(p.custom), p.created_at,
             p.updated_at)
            for p in (self.profiles.get(bid) for bid in self._unfolded)
            if p is not None
        ]  # fmt: skip
        db = self._db
        db.execute("BEGIN")
        db.executemany(_UPSERT, rows)
        db.execute("DELETE FROM profile_journal")
        db.execute("COMMIT")
        self._unfolded.clear()

    # -- reading back ----------------------------------------------------------------

    def events(self, braze_id: str | None = None) -> list[dict[str, Any]]:
        """Recorded events, oldest first, optionally for one user."""
        sql = "SELECT seq, braze_id, external_id, name, time, properties, app_id FROM events"
        rows = self._query(sql, braze_id)
        return [
            {
                "seq": seq,
                "braze_id": bid,
                "external_id": ext,
                "name": name,
                "time": when,
                "properties": None if props is None else orjson.loads(props),
                "app_id": app,
            }
            for seq, bid, ext, name, when, props, app in rows
        ]

    def purchases(self, braze_id: str | None = None) -> list[dict[str, Any]]:
        """Recorded purchases, oldest first, optionally for one user."""
        sql = (
            "SELECT seq, braze_id, external_id, product_id, currency, price, quantity, time,"
            " properties, app_id FROM purchases"
        )
        rows = self._query(sql, braze_id)
        return [
            {
                "seq": seq,
                "braze_id": bid,
                "external_id": ext,
                "product_id": product,
                "currency": currency,
                "price": price,
                "quantity": quantity,
                "time": when,
                "properties": None if props is None else orjson.loads(props),
                "app_id": app,
            }
            for seq, bid, ext, product, currency, price, quantity, when, props, app in rows
        ]

    def _query(self, sql: str, braze_id: str | None) -> list[tuple[Any, ...]]:
        if braze_id is None:
            return self._db.execute(sql + " ORDER BY seq").fetchall()
        return self._db.execute(sql + " WHERE braze_id = ? ORDER BY seq", (braze_id,)).fetchall()

    def reset(self) -> None:
        """Forget every profile, event and purchase."""
        self.profiles.clear()
        self._by_key.clear()
        self._dirty.clear()
        self._events.clear()
        self._purchases.clear()
        self._unfolded.clear()
        self._next_id = 1
        self._db.execute("BEGIN")
        for table in ("profiles", "profile_journal", "events", "purchases"):
            self._db.execute(f"DELETE FROM {table}")
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Fold the journal and close the database."""
        if self._unfolded:
            self.fold_journal()
        self._db.close()
