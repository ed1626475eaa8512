r"""Settings: the target's settings, defaults and checks; a wrong type or unknown name in one line.

Settings problems as one line: which setting, what is wrong, and what to do.

singer-sdk validates the config against the JSON Schema with jsonschema's raw messages
(`'abc' does not match '^[0-9]*\.?[0-9]+$'`), and ignores a setting it does not know: a
misspelled `rejected_record_path` silently sends rejects nowhere. Here the config is
checked again, and the first problem is said in words naming the setting, the value
(never a secret's) and the expected type or the closest known name, e.g.

    setting max_rejected_ratio: 'abc' is not a number; give a number, e.g. 0.05
    setting stream_mappings.events.identifer_property is not a stream setting; did you
    mean identifier_property?

target-braze's settings, declared once: `--about --format=markdown` documents them.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from singer_sdk import typing as th
from singer_sdk.helpers.capabilities import (
    TARGET_BATCH_SIZE_ROWS_CONFIG,
    TARGET_VALIDATE_RECORDS_CONFIG,
)
from singer_sdk.typing import DEFAULT_JSONSCHEMA_VALIDATOR

from target_braze.errors import ConfigError
from target_braze.objects import IDENTIFIER_TYPES, OBJECT_TYPES, USER_DATA_OBJECT_TYPES

#: How each JSON type is named to the user, with an example of a valid value.
_TYPE_WORDS: dict[str, tuple[str, str]] = {
    "integer": ("a whole number", "8"),
    "number": ("a number", "0.05"),
    "boolean": ("true or false", "true"),
    "string": ("text", ""),
    "array": ("a list", '["a", "b"]'),
    "object": ("an object", '{"key": "value"}'),
}

_SHOWN = 60

#: The setting that lets a config carry names target-braze does not know, on purpose.
ESCAPE_HATCH = "ignore_unknown_settings"


def unknown_setting(
    config: Mapping[str, Any], known: Iterable[str], stream_known: Iterable[str]
) -> str | None:
    """The first setting name target-braze does not know, in one line, or None.

    Names listed in `ignore_unknown_settings` are deliberate extras and pass; so does any
    name Meltano adds for itself (none today).
    """
    known = set(known)
    stream_known = set(stream_known)
    allowed = config.get(ESCAPE_HATCH) or []
    extras = {str(name) for name in allowed} if isinstance(allowed, list) else set()
    for name in config:
        if name not in known and name not in extras:
            return _unknown(name, known, "a target-braze setting") + (
                f" (a deliberate extra: list it in {ESCAPE_HATCH})"
            )
    mappings = config.get("stream_mappings")
    if isinstance(mappings, Mapping):
        for stream, entry in mappings.items():
            if not isinstance(entry, Mapping):
                continue
            for name in entry:
                if name not in stream_known:
                    where = f"stream_mappings.{stream}.{name}"
                    return _unknown(where, stream_known, "a stream setting", name)
    return None


def _unknown(where: str, known: set[str], what: str, name: str | None = None) -> str:
    close = difflib.get_close_matches(name or where, sorted(known), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else "; `target-braze --about` lists the settings"
    return f"setting {where} is not {what}{hint}"


def schema_problem(
    config: Mapping[str, Any], schema: dict[str, Any], secret: Iterable[str]
) -> str | None:
    """The first problem of `config` against `schema`, in one line, or None if it is valid.

    Validated on a copy, as singer-sdk validates (its validator writes defaults into what
    it checks). A secret setting's value is never shown.
    """
    validator = DEFAULT_JSONSCHEMA_VALIDATOR(schema)
    errors = sorted(
        validator.iter_errors(copy.deepcopy(dict(config))),
        key=lambda error: [str(part) for part in error.absolute_path],
    )
    if not errors:
        return None
    text = _explain(errors[0], set(secret))
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def _explain(error: Any, secret: set[str]) -> str:
    path: Sequence[Any] = list(error.absolute_path)
    where = ".".join(str(part) for part in path) or "config"
    shown = "(value hidden)" if path and str(path[0]) in secret else _shown(error.instance)
    validator = error.validator
    if validator == "enum":
        allowed = ", ".join(str(value) for value in error.validator_value)
        return f"setting {where}: {shown} is not allowed; use one of: {allowed}"
    kinds = _expected_kinds(error)
    if kinds:
        words = " or ".join(_TYPE_WORDS.get(kind, (kind, ""))[0] for kind in kinds)
        example = _TYPE_WORDS.get(kinds[0], ("", ""))[1]
        hint = f", e.g. {example}" if example else ""
        return f"setting {where}: {shown} is not {words}; give {words}{hint}"
    return f"setting {where}: {error.message}"


def _expected_kinds(error: Any) -> list[str]:
    """The JSON types a value was expected to have ([] if the problem is not its type)."""
    if error.validator == "type":
        wanted = error.validator_value
        kinds = [wanted] if isinstance(wanted, str) else list(wanted)
        return [kind for kind in kinds if kind != "null"]
    if error.validator == "pattern" and isinstance(error.schema, Mapping):
        # A number setting accepts numeric strings too (Meltano passes environment
        # variables as text): a string that is no number is a number's problem.
        declared = error.schema.get("type")
        if isinstance(declared, list) and "number" in declared:
            return ["number"]
    return []


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


# Meltano has no number kind that survives environment variables (its `decimal` kind
# crashes on them), so number settings also accept numeric strings ("0.05"). One schema
# with a type list, not an anyOf: singer-sdk appends "null" to a property's type, and to an
# anyOf it appended a bare "null" that crashed jsonschema on any invalid value.
NUMBER = th.CustomType({"type": ["number", "string"], "pattern": r"^[0-9]*\.?[0-9]+$"})


def _mapping_properties(*, with_defaults: bool) -> list[th.Property]:
    """The mapping settings: at the top level (defaults) and per stream (overrides)."""

    def default(value: object) -> object:
        return value if with_defaults else None

    return [
        th.Property(
            "identifier_property",
            th.StringType,
            default=default("customer_id"),
            title="Identifier property",
            description="The record property that identifies the Braze user.",
        ),
        th.Property(
            "identifier_type",
            th.StringType,
            default=default("external_id"),
            allowed_values=list(IDENTIFIER_TYPES),
            title="Identifier type",
            description=(
                "What the identifier is in Braze: external_id, user_alias (needs "
                "alias_label), braze_id, email or phone (email/phone only look users up)."
            ),
        ),
        th.Property(
            "alias_label",
            th.StringType,
            title="Alias label",
            description="For identifier_type user_alias: the alias_label stored with each alias.",
        ),
        th.Property(
            "object_type",
            th.StringType,
            default=default("attributes"),
            allowed_values=[*OBJECT_TYPES, *USER_DATA_OBJECT_TYPES],
            title="Object type",
            description=(
                "Send records as user attributes, custom events or purchases (/users/track), "
                "or as deletes (/users/delete: one user per record), aliases "
                "(/users/alias/new, and /users/identify with identify_property) or "
                "subscriptions (a subscription group state per record)."
            ),
        ),
        th.Property(
            "exclude_properties",
            th.ArrayType(th.StringType),
            title="Exclude properties",
            description=(
                "Properties never sent. Default: the identifier property and the stream's "
                "replication key (each would cost a data point per user per sync)."
            ),
        ),
        th.Property(
            "include_properties",
            th.ArrayType(th.StringType),
            title="Include properties",
            description="If set, only these properties are sent (besides the identifier).",
        ),
        th.Property(
            "update_existing_only",
            th.BooleanType,
            title="Update existing only",
            description=(
                "Send _update_existing_only: true to never create users. Unset: Braze's "
                "default (false for external_id, true for user_alias)."
            ),
        ),
        th.Property(
            "null_values",
            th.StringType,
            default=default("unset"),
            allowed_values=["unset", "skip"],
            title="Null values",
            description=(
                "unset: a null removes the attribute from the profile, so Braze mirrors the "
                "source (a stale churn score is not left behind). skip: nulls are not sent."
            ),
        ),
        th.Property(
            "colliding_fields",
            th.StringType,
            default=default("reject"),
            allowed_values=["reject", "drop"],
            title="Colliding fields",
            description=(
                "What happens to a record field that would replace the user's identity or "
                "steer Braze: external_id, braze_id, user_alias, a Braze control key "
                "(_update_existing_only, _merge_objects) and, when identifier_type is email "
                "or phone, email and phone; for events and purchases, the property keys "
                "Braze reserves (time, event_name, and for purchases product_id, price, "
                "currency, quantity). reject: the record is rejected (IDENTIFIER_COLLISION) "
                "naming the field. drop: the field is not sent, with one warning per stream "
                "and field. The identity always comes from identifier_property alone."
            ),
        ),
        th.Property(
            "property_types",
            th.ObjectType(additional_properties=th.StringType),
            title="Property types",
            description=(
                "The Braze type of properties a tap sends as text (a CSV tap types every "
                'column as a string), by name: {"churn_score": "number", "vip": "boolean", '
                '"signed_up": "time", "prefs": "json"}; also "integer". Each value is '
                "converted before it is sent; one that is not of its type rejects the record "
                "naming the property; an empty string is null."
            ),
        ),
        th.Property(
            "change_thresholds",
            th.ObjectType(additional_properties=th.NumberType),
            title="Change thresholds",
            description=(
                "For attributes, with the ledger on: send a number only once it moved by at "
                'least this much from the value Braze holds, by attribute name; "*" for '
                'every other number: {"peak_churn_probability": 0.02, "*": 0.01}. A smaller '
                "move is not sent (no data point) and counts as unchanged, so Braze's value "
                "may be off by up to the threshold; the moves add up, and the value is sent "
                "once it is that far from Braze's. Retention still resends it. Whole numbers "
                "and decimals only (never true/false or text)."
            ),
        ),
        th.Property(
            "properties_property",
            th.StringType,
            title="Properties property",
            description=(
                "For events and purchases: the property holding a JSON object (as text or "
                "an object) sent as the event's or purchase's properties; the stream's other "
                "properties are then not sent as properties."
            ),
        ),
        th.Property(
            "event_name",
            th.StringType,
            title="Event name",
            description="For object_type events: one name for every event of the stream.",
        ),
        th.Property(
            "event_name_property",
            th.StringType,
            title="Event name property",
            description="For object_type events: the property holding the event name.",
        ),
        th.Property(
            "time_property",
            th.StringType,
            title="Time property",
            description="For events and purchases: the property holding when it happened.",
        ),
        th.Property(
            "product_id_property",
            th.StringType,
            title="Product id property",
            description="For purchases: the property holding the product id.",
        ),
        th.Property(
            "currency",
            th.StringType,
            title="Currency",
            description="For purchases: one ISO 4217 code for every purchase.",
        ),
        th.Property(
            "currency_property",
            th.StringType,
            title="Currency property",
            description="For purchases: the property holding the ISO 4217 code.",
        ),
        th.Property(
            "price_property",
            th.StringType,
            title="Price property",
            description="For purchases: the property holding the price.",
        ),
        th.Property(
            "quantity_property",
            th.StringType,
            title="Quantity property",
            description="For purchases: the property holding the quantity (1-100).",
        ),
        th.Property(
            "deleted_property",
            th.StringType,
            title="Deleted property",
            description=(
                "For attributes streams: a record whose value of this property is set (not "
                "null, empty or false) deletes the user (/users/delete) instead of updating "
                "it. Singer's is _sdc_deleted_at. Unset: no record of the stream deletes."
            ),
        ),
        th.Property(
            "identify_property",
            th.StringType,
            title="Identify property",
            description=(
                "For aliases: the property holding the external_id the alias is identified "
                "into (/users/identify). A record without a value there creates the alias "
                "(an alias-only user, /users/alias/new); identifier_property holds the alias "
                "name and alias_label its label."
            ),
        ),
        th.Property(
            "merge_behavior",
            th.StringType,
            default=default("merge"),
            allowed_values=["merge", "none"],
            title="Merge behavior",
            description=(
                "For aliases identified into an external_id that already has a profile: "
                "merge: the attributes, events and purchases only the alias user has move to "
                "the identified user; none: only the alias moves (Braze's merge_behavior)."
            ),
        ),
        th.Property(
            "subscription_group_id",
            th.StringType,
            title="Subscription group id",
            description="For subscriptions: one subscription group id for every record.",
        ),
        th.Property(
            "subscription_group_id_property",
            th.StringType,
            title="Subscription group id property",
            description="For subscriptions: the property holding the subscription group id.",
        ),
        th.Property(
            "subscription_state_property",
            th.StringType,
            title="Subscription state property",
            description=(
                "For subscriptions: the property holding the state, subscribed or "
                "unsubscribed (any case); another value rejects the record before sending."
            ),
        ),
    ]


CONFIG_SCHEMA = th.PropertiesList(
    th.Property(
        "ignore_unknown_settings",
        th.ArrayType(th.StringType),
        title="Ignore unknown settings",
        description=(
            "Setting names target-braze does not know that the config carries on purpose "
            "(shared config files). Any other unknown name stops the run with one line "
            "naming it and the closest known setting."
        ),
    ),
    th.Property(
        "api_key",
        th.StringType,
        secret=True,
        title="Braze REST API key",
        description="A REST API key with the users.track permission. Not needed for dry_run.",
    ),
    th.Property(
        "api_key_env",
        th.StringType,
        default="BRAZE_API_KEY",
        title="API key environment variable",
        description=(
            "When api_key is not set, the key is read from this environment variable at run "
            "time. The production way: Meltano never writes it to disk (unlike api_key, "
            "which it puts in a config file under .meltano/run/ for the length of a run)."
        ),
    ),
    th.Property(
        "rest_endpoint",
        th.StringType,
        title="REST endpoint",
        description=(
            "The Braze instance (US-01..US-08, US-10, EU-01, EU-02, AU-01, ID-01) or the REST "
            "URL. https is required except for loopback test servers."
        ),
    ),
    *_mapping_properties(with_defaults=True),
    th.Property(
        "stream_mappings",
        th.ObjectType(
            additional_properties=th.ObjectType(*_mapping_properties(with_defaults=False))
        ),
        title="Per-stream mappings",
        description=(
            "Overrides of the mapping settings by stream name, e.g. "
            '{"orders": {"object_type": "purchases", ...}}.'
        ),
    ),
    th.Property(
        "max_objects_per_request",
        th.IntegerType,
        default=75,
        title="Max objects per request",
        description="Braze's limit: 75 objects per request, all arrays combined.",
    ),
    th.Property(
        "legacy_per_array_limits",
        th.BooleanType,
        default=False,
        title="Legacy per-array limits",
        description="Accounts on legacy limits may send max_objects_per_request per array.",
    ),
    th.Property(
        "max_request_bytes",
        th.IntegerType,
        default=3_900_000,
        title="Max request bytes",
        description="Body size cap, under Braze's 4 MB limit.",
    ),
    th.Property(
        "bulk_header",
        th.BooleanType,
        default=True,
        title="Bulk header",
        description="Send X-Braze-Bulk: true (routes backfill-style traffic as bulk).",
    ),
    th.Property(
        "max_requests_per_window",
        th.IntegerType,
        default=3000,
        title="Max requests per window",
        description=(
            "Client-side rate limit: at most this many requests per rate_limit_window_seconds "
            "(Braze: 3,000 per 3 s, shared with all other traffic). 0 turns it off."
        ),
    ),
    th.Property(
        "rate_limit_window_seconds",
        th.IntegerType,
        default=3,
        title="Rate limit window (seconds)",
        description="The window of max_requests_per_window.",
    ),
    th.Property(
        "rate_limit_margin_seconds",
        NUMBER,
        default=0.1,
        title="Rate limit margin (seconds)",
        description=(
            "A request's slot of max_requests_per_window is reused no sooner than "
            "window + this margin after its send (and never before its answer): it covers "
            "variation in the one-way network delay to Braze, so no window of Braze's sees "
            "more than the limit."
        ),
    ),
    th.Property(
        "user_data_requests_per_window",
        th.IntegerType,
        default=20_000,
        title="User-data requests per window",
        description=(
            "Client-side rate limit shared by /users/delete, /users/alias/new and "
            "/users/identify: at most this many requests per "
            "user_data_rate_window_seconds (Braze: 20,000 per minute, shared). 0 turns it off."
        ),
    ),
    th.Property(
        "subscription_requests_per_window",
        th.IntegerType,
        default=5_000,
        title="Subscription requests per window",
        description=(
            "Client-side rate limit of /v2/subscription/status/set: at most this many "
            "requests per user_data_rate_window_seconds (Braze: 5,000 per minute). 0 turns "
            "it off."
        ),
    ),
    th.Property(
        "user_data_rate_window_seconds",
        th.IntegerType,
        default=60,
        title="User-data rate window (seconds)",
        description=(
            "The window of user_data_requests_per_window and subscription_requests_per_window."
        ),
    ),
    th.Property(
        "alias_wait_seconds",
        NUMBER,
        default=300,
        title="Alias wait (seconds)",
        description=(
            "Braze asks for a pause (up to 5 minutes) between creating or identifying an "
            "alias and using it: a /users/track request of the same run for a user an "
            "alias or identify of this run names waits this long after Braze confirmed it."
        ),
    ),
    th.Property(
        "max_deletes_per_run",
        th.IntegerType,
        default=0,
        title="Max deletes per run",
        description=(
            "Above this many deletes the run stops before deleting anything, saying how "
            "many would go (STATE stays before them, so a rerun after a check deletes "
            "them). 0: no limit."
        ),
    ),
    th.Property(
        "max_delete_ratio",
        NUMBER,
        default=1.0,
        title="Max delete ratio",
        description=(
            "Above this share of the run's records being deletes (0.1 = 10%) the run stops "
            "before deleting anything, saying how many would go. 1: no limit."
        ),
    ),
    th.Property(
        "max_requests_per_hour",
        th.IntegerType,
        default=0,
        title="Max requests per hour",
        description=(
            "An hourly /users/track budget (Braze's MAU contracts), counted per clock hour "
            "(UTC): once spent, requests wait for the next hour and the log says so once "
            "an hour. 0 turns it off."
        ),
    ),
    th.Property(
        "max_concurrent_requests",
        th.IntegerType,
        default=400,
        title="Max concurrent requests",
        description=(
            "The most requests in flight at once. In flight is sized by rate x latency "
            "(Little's law): the rate the limits allow times the latency Braze answers "
            "with (3,000 per 3 s at 300 ms needs about 300); 4 open at once, more as the "
            "latency asks. The progress line and run report show in flight now and at the "
            "peak, and the summary says when this ceiling held the run back. Two in-flight "
            "requests never share a user."
        ),
    ),
    th.Property(
        "request_timeout_seconds",
        th.IntegerType,
        default=30,
        title="Request timeout (seconds)",
        description="A request with no answer by then is retried.",
    ),
    th.Property(
        "max_retries",
        th.IntegerType,
        default=8,
        title="Max retries",
        description="Retries of a request after 429, 5xx, timeouts or dropped connections.",
    ),
    th.Property(
        "retry_backoff_seconds",
        NUMBER,
        default=1.0,
        title="Retry backoff (seconds)",
        description="First retry delay; doubles per retry (with jitter) up to 60 s.",
    ),
    th.Property(
        "flush_interval_seconds",
        NUMBER,
        default=1.0,
        title="Flush interval (seconds)",
        description=(
            "When a STATE arrives, partly filled requests older than this are sent, so a "
            "checkpoint waits at most about this long for a request to fill up."
        ),
    ),
    th.Property(
        "rejected_records_path",
        th.StringType,
        title="Rejected records path",
        description=(
            "JSONL file of records Braze will not get (stream, identifier, record, reason). "
            "Unset: each rejection is logged as a warning."
        ),
    ),
    th.Property(
        "max_record_bytes",
        th.IntegerType,
        default=4_000_000,
        title="Max record bytes",
        description=(
            "A Singer line (or BATCH file line) longer than this is rejected unread "
            "(RECORD_TOO_LARGE), never held whole in memory: Braze takes at most 4 MB per "
            "request. A longer line that is not a RECORD ends the run with one line."
        ),
    ),
    th.Property(
        "batch_files_dir",
        th.StringType,
        title="BATCH files directory",
        description=(
            "BATCH messages are read only from files under this directory (real paths: "
            "'..' and symbolic links cannot leave it), regular files only. Default: "
            "batch_files_cleanup_dir; with neither set, a BATCH message ends the run with "
            "one line. meltano.yml sets both to tap-peak-attributes' private BATCH directory."
        ),
    ),
    th.Property(
        "batch_files_cleanup_dir",
        th.StringType,
        title="BATCH files cleanup directory",
        description=(
            "A BATCH file under this directory is deleted once its records are settled (it "
            "holds customer data): the directory of a tap whose files the target owns once "
            "announced, such as tap-peak-attributes' private one. Files elsewhere are read "
            "and left in place for their writer to clean up. Unset: nothing is deleted."
        ),
    ),
    th.Property(
        "max_batch_file_bytes",
        th.IntegerType,
        default=1 << 30,
        title="Max BATCH file bytes",
        description=(
            "The most bytes read from one BATCH file, after decompression (default 1 GiB): "
            "a larger file ends the run with one line naming it."
        ),
    ),
    th.Property(
        "max_rejected_ratio",
        NUMBER,
        default=0.0,
        title="Max rejected ratio",
        description=(
            "The run fails, and STATE is held back, while rejected records exceed this share "
            "of the records received (0.05 = 5%). Default 0: any rejection fails the run."
        ),
    ),
    th.Property(
        "dry_run",
        th.BooleanType,
        default=False,
        title="Dry run",
        description="Build and validate requests and write them to dry_run_path; send nothing "
        "and emit no STATE.",
    ),
    th.Property(
        "dry_run_path",
        th.StringType,
        default="output/braze-dry-run.jsonl",
        title="Dry run path",
        description="Where dry_run writes one request body per line.",
    ),
    th.Property(
        "run_report_path",
        th.StringType,
        title="Run report path",
        description="If set, a JSON report of the run's counts and data points is written.",
    ),
    th.Property(
        "progress_interval_seconds",
        NUMBER,
        default=5.0,
        title="Progress interval (seconds)",
        description="How often a progress line is logged on long runs.",
    ),
    th.Property(
        "send_only_changes",
        th.BooleanType,
        default=True,
        title="Send only changes",
        description=(
            "Attributes whose value Braze already confirmed (per user, per attribute, in the "
            "delivery ledger) are not sent again; a user with nothing changed is not sent "
            "at all. Each attribute sent is a billed data point."
        ),
    ),
    th.Property(
        "deduplicate_events",
        th.BooleanType,
        default=True,
        title="Deduplicate events",
        description=(
            "Each event and purchase is delivered at most once per workspace (Braze never "
            "deduplicates them). Identity: the stream's key properties, or else the whole "
            "object (identifier, name or product, time, properties)."
        ),
    ),
    th.Property(
        "ledger_url",
        th.StringType,
        secret=True,  # a postgresql:// URL may carry a password
        title="Delivery ledger URL",
        description=(
            "Where the delivery ledger lives: sqlite:///path or postgresql://... (several "
            "workers or machines; needs target-braze[postgres]). Default: "
            "sqlite:///$XDG_STATE_HOME/target-braze/ledger.sqlite (~/.local/state/...)."
        ),
    ),
    th.Property(
        "allow_insecure_postgres",
        th.BooleanType,
        default=False,
        title="Allow insecure PostgreSQL",
        description=(
            "For a PostgreSQL ledger_url whose host is not loopback, the connection uses "
            "sslmode=verify-full and require_auth=scram-sha-256 (libpq 16+), and a URL asking "
            "for less is refused: libpq's default sends the password to a server that "
            "refuses TLS. true: connect exactly as the URL says."
        ),
    ),
    th.Property(
        "ledger_workspace",
        th.StringType,
        title="Ledger workspace name",
        description=(
            "A name for the Braze workspace in the ledger. Default: derived from "
            "rest_endpoint and a one-way hash of api_key. A new key on an endpoint the ledger "
            "knows stops the run until `target-braze-ledger move-workspace` moves the "
            "workspace to it (a rotation) or this names another workspace. Needed for dry "
            "runs without a key."
        ),
    ),
    th.Property(
        "require_existing_ledger",
        th.BooleanType,
        default=False,
        title="Require an existing ledger",
        description=(
            "Fail, before anything is sent, when the ledger at ledger_url is new or holds "
            "nothing for this workspace (a moved file, a wrong URL), instead of warning and "
            "sending every attribute, event and purchase again. For production; create a "
            "ledger deliberately with `target-braze-ledger init`."
        ),
    ),
    th.Property(
        "full_resync",
        th.BooleanType,
        default=False,
        title="Full resync",
        description=(
            "For this run, send every attribute whatever the ledger says, and refresh the "
            "ledger's entries (events are still deduplicated)."
        ),
    ),
    th.Property(
        "ledger_retention_days",
        th.IntegerType,
        default=90,
        title="Ledger retention (days)",
        description=(
            "Attribute values Braze confirmed longer ago than this are sent again (so "
            "profiles changed by other tools, or deleted in Braze, heal); event identities "
            "older than this are forgotten. 0 keeps entries forever."
        ),
    ),
).to_dict()

#: Each setting's default, read from the schemas (ours above, and singer-sdk's built-in
#: target settings the target declares): the one place defaults live.
DEFAULTS: dict[str, object] = {
    name: prop["default"]
    for schema in (CONFIG_SCHEMA, TARGET_VALIDATE_RECORDS_CONFIG, TARGET_BATCH_SIZE_ROWS_CONFIG)
    for name, prop in schema["properties"].items()
    if "default" in prop
}

#: Settings whose values are secret: never shown, not even in a settings error.
SECRET_SETTINGS: frozenset[str] = frozenset(
    name for name, prop in CONFIG_SCHEMA["properties"].items() if prop.get("secret")
)

#: Settings that may be given at the top level (defaults) and per stream (stream_mappings).
MAPPING_SETTINGS: tuple[str, ...] = tuple(
    prop.name for prop in _mapping_properties(with_defaults=False)
)


def apply_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with every unset setting at its default (as singer-sdk fills them in)."""
    return {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}


def resolve_api_key(config: Mapping[str, Any]) -> str | None:
    """The API key: `api_key`, or else the environment variable `api_key_env` names.

    Raises:
        ConfigError: the key holds a control character (CR/LF would add HTTP headers),
            naming where it came from, never the key.

    """
    if config.get("api_key"):
        key, source = str(config["api_key"]), "api_key"
    else:
        name = str(config.get("api_key_env") or DEFAULTS["api_key_env"])
        key, source = os.environ.get(name) or "", f"the variable {name} (api_key_env)"
    if _CONTROL.search(key):
        raise ConfigError(
            f"{source} holds a control character (such as CR or LF, often a pasted line "
            "end); give the Braze REST API key alone"
        )
    return key or None


# Settings no value check reads: stream maps are expressions, and their own business.
_FREE_FORM = frozenset({"stream_maps", "stream_map_config"})

# Settings that are URLs of services other than the ledger: a password does not belong
# there (it would reach logs and error messages); the ledger URL may carry one (secret).
_URL_SETTINGS = ("rest_endpoint",)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_setting_values(config: Mapping[str, Any]) -> None:
    """Refuse control characters anywhere and userinfo in URL settings, naming the setting.

    The value is never echoed: it may be a key or hold a password.

    Raises:
        ConfigError: one line naming the setting and what to do.

    """
    for name, value in _strings(config, ""):
        if _CONTROL.search(value):
            raise ConfigError(
                f"{name} holds a control character (such as CR or LF, often a pasted line "
                "end); remove it"
            )
    for setting in _URL_SETTINGS:
        url = config.get(setting)
        if not isinstance(url, str):
            continue
        try:
            netloc = urlsplit(url.strip()).netloc
        except ValueError:
            raise ConfigError(
                f"{setting} is not a valid URL (nor a Braze instance code such as US-03)"
            ) from None
        if "@" in netloc:
            raise ConfigError(
                f"{setting} holds a user name or password (user:password@host); give the URL "
                "without it: the API key is the only credential Braze takes"
            )


def _strings(value: Any, where: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, Mapping):
        return [
            found
            for key, item in value.items()
            if not (where == "" and key in _FREE_FORM)
            for found in _strings(item, f"{where}.{key}" if where else str(key))
        ]
    if isinstance(value, list | tuple):
        return [found for i, item in enumerate(value) for found in _strings(item, f"{where}[{i}]")]
    return []
