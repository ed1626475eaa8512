"""``POST /users/export/ids``: read profiles back the way a real Braze client would."""

from __future__ import annotations

from typing import Any

from braze_sandbox.contract import ContractLimits, RequestRejected
from braze_sandbox.profiles import Profile, ProfileStore

# The subset of Braze's exportable fields that the sandbox models.
EXPORT_FIELDS = (
    "external_id",
    "user_aliases",
    "braze_id",
    "first_name",
    "last_name",
    "email",
    "dob",
    "home_city",
    "country",
    "phone",
    "language",
    "time_zone",
    "gender",
    "push_subscribe",
    "email_subscribe",
    "custom_attributes",
    "custom_events",
    "purchases",
    "total_revenue",
    "subscription_groups",
)


def export_ids(store: ProfileStore, body: object, limits: ContractLimits) -> dict[str, Any]:
    """Answer an export request; unknown identifiers go to ``invalid_user_ids``."""
    if type(body) is not dict:
        raise RequestRejected(400, "Invalid request: body must be a JSON object")
    keys: list[tuple[str, str]] = []  # (user key, identifier as reported if invalid)
    external_ids = body.get("external_ids") or []
    aliases = body.get("user_aliases") or []
    if type(external_ids) is not list or type(aliases) is not list:
        raise RequestRejected(400, "'external_ids' and 'user_aliases' must be arrays")
    if len(external_ids) + len(aliases) > limits.max_export_ids:
        raise RequestRejected(
            400, f"at most {limits.max_export_ids} external_ids or user_aliases per request"
        )
    for ext in external_ids:
        keys.append(("e:" + str(ext), str(ext)))
    for alias in aliases:
        if type(alias) is not dict:
            raise RequestRejected(400, "'user_aliases' must hold user alias objects")
        name, label = str(alias.get("alias_name", "")), str(alias.get("alias_label", ""))
        keys.append(("a:" + label + "\x1f" + name, name))
    for field, prefix in (("braze_id", "b:"), ("email_address", "m:"), ("phone", "p:")):
        value = body.get(field)
        if value is not None:
            ident = str(value).lower() if field == "email_address" else str(value)
            keys.append((prefix + ident, str(value)))
    if not keys:
        raise RequestRejected(400, "No identifiers given")
    fields = body.get("fields_to_export")
    wanted = set(EXPORT_FIELDS if fields is None else fields)

    users: list[dict[str, Any]] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for key, reported in keys:
        profile = store.find(key)
        if profile is None:
            invalid.append(reported)
        elif profile.braze_id not in seen:
            seen.add(profile.braze_id)
            users.append(_export_user(store, profile, wanted))
    answer: dict[str, Any] = {"users": users}
    if invalid:
        answer["invalid_user_ids"] = invalid
    answer["message"] = "success"
    return answer


def _export_user(store: ProfileStore, profile: Profile, wanted: set[str]) -> dict[str, Any]:
    # Braze includes "the least data possible": a missing field means null/false/empty.
    user: dict[str, Any] = {}
    if "external_id" in wanted and profile.external_id is not None:
        user["external_id"] = profile.external_id
    if "user_aliases" in wanted and profile.user_aliases:
        user["user_aliases"] = profile.user_aliases
    if "braze_id" in wanted:
        user["braze_id"] = profile.braze_id
    for key, value in profile.standard.items():
        if key == "subscription_groups" and type(value) is dict:
            if key in wanted:  # the sandbox's view: each group's id and state
                user[key] = [{"id": group, "status": state} for group, state in value.items()]
        elif key in wanted:
            user[key] = value
    if "custom_attributes" in wanted and profile.custom:
        user["custom_attributes"] = profile.custom
    if "custom_events" in wanted:
        events = _aggregate((e["name"], e["time"]) for e in store.events(profile.braze_id))
        if events:
            user["custom_events"] = events
    if "purchases" in wanted or "total_revenue" in wanted:
        bought = store.purchases(profile.braze_id)
        if "purchases" in wanted and bought:
            user["purchases"] = _aggregate((p["product_id"], p["time"]) for p in bought)
        if "total_revenue" in wanted and bought:
            user["total_revenue"] = round(sum(p["price"] * p["quantity"] for p in bought), 2)
    return user


def _aggregate(rows: Any) -> list[dict[str, Any]]:
    """Braze's per-name summary: first and last time and count."""
    summary: dict[str, dict[str, Any]] = {}
    for name, when in rows:
        entry = summary.get(name)
        if entry is None:
            summary[name] = {"name": name, "first": when, "last": when, "count": 1}
        else:
            entry["first"] = min(entry["first"], when)
            entry["last"] = max(entry["last"], when)
            entry["count"] += 1
    return list(summary.values())
