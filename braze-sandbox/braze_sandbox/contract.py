"""Validation of a ``/users/track`` body against Braze's published rules.

Two levels, as Braze answers them:

* request-level problems (too many objects, not JSON, wrong shape) reject the whole
  request with ``400``;
* object-level problems (identifiers, bad values) reject only that object: it is reported
  in ``errors[]`` with its ``input_array`` and ``index`` and every other object is applied.

The checks run on every object of every request, so they are written for speed: plain
loops, ``type(x) is`` tests, no schema library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

ARRAYS = ("attributes", "events", "purchases")
PRIMARY_IDENTIFIERS = ("external_id", "user_alias", "braze_id")

# Keys of an attributes object that steer processing or identify the user: never stored
# as attributes.
CONTROL_KEYS = frozenset(
    {
        "external_id",
        "user_alias",
        "braze_id",
        "_update_existing_only",
        "_merge_objects",
        "push_token_import",
        "app_id",
    }
)

# Braze's standard profile fields. They are stored beside, not inside, custom attributes.
STANDARD_FIELDS = frozenset(
    {
        "first_name",
        "last_name",
        "email",
        "phone",
        "country",
        "language",
        "home_city",
        "time_zone",
        "dob",
        "gender",
        "email_subscribe",
        "push_subscribe",
        "subscription_groups",
        "image_url",
        "current_location",
        "date_of_first_session",
        "date_of_last_session",
        "email_open_tracking_disabled",
        "email_click_tracking_disabled",
        "marked_email_as_spam_at",
        "facebook",
        "twitter",
        "bio",
        "push_tokens",
        "user_aliases",
        "external_id",
    }
)

# The states /v2/subscription/status/set and /users/track's subscription_groups accept.
SUBSCRIPTION_STATES = ("subscribed", "unsubscribed")

# Error types reported in errors[]. Braze's own where its documentation names them;
# otherwise a descriptive name in the same style (see README, "Fidelity").
IDENTIFIER_REQUIRED = "'external_id' or 'braze_id' or 'user_alias' is required"
MULTIPLE_PRIMARY_IDENTIFIERS = "MULTIPLE_PRIMARY_IDENTIFIERS"
EXTERNAL_USER_ID_TOO_LARGE = "EXTERNAL_USER_ID_TOO_LARGE"
INVALID_USER_ALIAS = "INVALID_USER_ALIAS"
INVALID_IDENTIFIER = "INVALID_IDENTIFIER"
EMAIL_BAD_FORMAT = "EMAIL_BAD_FORMAT"
INVALID_ATTRIBUTE_KEY = "INVALID_ATTRIBUTE_KEY"
ATTRIBUTE_VALUE_TOO_LONG = "ATTRIBUTE_VALUE_TOO_LONG"
INVALID_ATTRIBUTE_VALUE = "INVALID_ATTRIBUTE_VALUE"
INVALID_NESTED_ATTRIBUTE = "INVALID_NESTED_ATTRIBUTE"
EVENT_NAME_REQUIRED = "EVENT_NAME_REQUIRED"
TIME_REQUIRED = "TIME_REQUIRED"
INVALID_TIME = "INVALID_TIME"
PURCHASE_PRODUCT_ID_REQUIRED = "PURCHASE_PRODUCT_ID_REQUIRED"
INVALID_CURRENCY = "INVALID_CURRENCY"
INVALID_PRICE = "INVALID_PRICE"
INVALID_QUANTITY = "INVALID_QUANTITY"
INVALID_OBJECT = "INVALID_OBJECT"

MAX_INPUT_LENGTH_EXCEEDED = "Max Input Length Exceeded"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_NESTED_KEY_FORBIDDEN = re.compile(r"[.$ ]")


@dataclass
class ContractLimits:
    """Every number Braze has changed over the years, as a setting."""

    max_objects: int = 75
    legacy_per_array_limits: bool = False
    max_body_bytes: int = 4_000_000
    external_id_max_bytes: int = 987
    max_key_length: int = 255
    max_string_length: int = 255
    max_array_length: int = 25
    max_nested_bytes: int = 100_000
    max_quantity: int = 100
    max_export_ids: int = 50
    #: Identifiers per /users/delete, /users/alias/new, /users/identify and
    #: /v2/subscription/status/set request.
    max_user_data_ids: int = 50
    # Custom attribute keys already found valid: keys repeat across millions of objects,
    # so each is checked once. Cleared whenever a limit changes.
    valid_keys: set[str] = field(default_factory=set, repr=False, compare=False)


class RequestRejected(Exception):
    """The whole request is refused (status and Braze-style message)."""

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, object] = {"message": message, **extra}


def check_request(body: object, limits: ContractLimits) -> dict[str, list[object]]:
    """Return the arrays of a well-formed body or raise :class:`RequestRejected` (400)."""
    if type(body) is not dict:
        raise RequestRejected(400, "Invalid request: body must be a JSON object")
    arrays: dict[str, list[object]] = {}
    total = 0
    for name in ARRAYS:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not list:
            raise RequestRejected(400, f"Invalid request: '{name}' must be an array")
        arrays[name] = value
        total += len(value)
        if limits.legacy_per_array_limits and len(value) > limits.max_objects:
            raise RequestRejected(
                400,
                MAX_INPUT_LENGTH_EXCEEDED,
                errors=[f"'{name}' has {len(value)} objects; at most {limits.max_objects}"],
            )
    if not arrays:
        raise RequestRejected(
            400, "Invalid request: one of 'attributes', 'events' or 'purchases' is required"
        )
    if not limits.legacy_per_array_limits and total > limits.max_objects:
        raise RequestRejected(
            400,
            MAX_INPUT_LENGTH_EXCEEDED,
            errors=[f"{total} objects in the request; at most {limits.max_objects} combined"],
        )
    return arrays


def identify(obj: dict[str, object], limits: ContractLimits) -> tuple[str, str]:
    r"""Return ``(user_key, "")`` or ``("", error_type)`` for one object.

    The user key names the identifier used for lookup: ``e:<external_id>``,
    ``a:<label>\x1f<name>``, ``b:<braze_id>``, ``m:<email>`` or ``p:<phone>``.
    """
    ext = obj.get("external_id")
    alias = obj.get("user_alias")
    bid = obj.get("braze_id")
    primaries = (ext is not None) + (alias is not None) + (bid is not None)
    if primaries > 1:
        return "", MULTIPLE_PRIMARY_IDENTIFIERS
    if ext is not None:
        if type(ext) is not str or not ext:
            return "", INVALID_IDENTIFIER
        if len(ext) * 4 > limits.external_id_max_bytes and (
            len(ext.encode()) > limits.external_id_max_bytes
        ):
            return "", EXTERNAL_USER_ID_TOO_LARGE
        return "e:" + ext, ""
    if alias is not None:
        if type(alias) is not dict:
            return "", INVALID_USER_ALIAS
        name = alias.get("alias_name")
        label = alias.get("alias_label")
        if type(name) is not str or type(label) is not str or not name or not label:
            return "", INVALID_USER_ALIAS
        return "a:" + label + "\x1f" + name, ""
    if bid is not None:
        if type(bid) is not str or not bid:
            return "", INVALID_IDENTIFIER
        return "b:" + bid, ""
    email = obj.get("email")
    if email is not None:
        if type(email) is not str or not _EMAIL.match(email):
            return "", EMAIL_BAD_FORMAT
        return "m:" + email.lower(), ""
    phone = obj.get("phone")
    if phone is not None:
        if type(phone) is not str or not phone:
            return "", INVALID_IDENTIFIER
        return "p:" + phone, ""
    return "", IDENTIFIER_REQUIRED


def _nested_ok(value: object, depth: int = 0) -> bool:
    """Nested object keys must not contain ``.``, ``$`` or spaces (``$time`` aside)."""
    if depth > 50:
        return False
    if type(value) is dict:
        if len(value) == 1 and "$time" in value:
            return parse_time(value["$time"]) is not None
        for key, item in value.items():
            if type(key) is not str or _NESTED_KEY_FORBIDDEN.search(key):
                return False
            if not _nested_ok(item, depth + 1):
                return False
        return True
    if type(value) is list:
        return all(_nested_ok(item, depth + 1) for item in value)
    return True


def is_operation(value: dict[str, object]) -> bool:
    """Whether a dict value is ``{"inc": n}`` or ``{"add"/"remove": [...]}`` (not nested)."""
    if len(value) == 1 and "inc" in value:
        inc = value["inc"]
        return type(inc) is int
    if 0 < len(value) <= 2:
        for key, item in value.items():
            if key not in ("add", "remove") or type(item) is not list:
                return False
        return True
    return False


def check_attributes(obj: dict[str, object], limits: ContractLimits) -> tuple[str, bool]:
    """Return ``(error_type, nested_invalid)`` for an attributes object; ``""`` if valid.

    ``nested_invalid`` is reported separately because Braze drops every nested update of
    the request when one nested value is invalid.
    """
    max_str = limits.max_string_length
    email = obj.get("email")
    if type(email) is str and not _EMAIL.match(email):
        return EMAIL_BAD_FORMAT, False
    valid_keys = limits.valid_keys
    for key, value in obj.items():
        if key not in valid_keys:
            if key in CONTROL_KEYS:
                continue
            if not key or len(key) > limits.max_key_length or key[0] == "$":
                return INVALID_ATTRIBUTE_KEY, False
            if len(valid_keys) < 100_000:
                valid_keys.add(key)
        kind = type(value)
        if kind is str:
            if len(value) > max_str:  # type: ignore[arg-type]
                return ATTRIBUTE_VALUE_TOO_LONG, False
        elif kind is int or kind is float or kind is bool or value is None:
            continue
        elif kind is dict:
            if is_operation(value):  # type: ignore[arg-type]
                for items in value.values():  # type: ignore[attr-defined]
                    if type(items) is list and not all(
                        type(s) is str and len(s) <= max_str for s in items
                    ):
                        return INVALID_ATTRIBUTE_VALUE, False
                continue
            if len(orjson.dumps(value)) > limits.max_nested_bytes or not _nested_ok(value):
                return INVALID_NESTED_ATTRIBUTE, True
        elif kind is list:
            strings = True
            for item in value:  # type: ignore[attr-defined]
                if type(item) is str:
                    if len(item) > max_str:
                        return ATTRIBUTE_VALUE_TOO_LONG, False
                else:
                    strings = False
            if not strings and (
                len(orjson.dumps(value)) > limits.max_nested_bytes or not _nested_ok(value)
            ):
                return INVALID_NESTED_ATTRIBUTE, True
    return "", False


def parse_time(value: object) -> str | None:
    """Normalise an ISO 8601 time to UTC ``...Z``; no zone means UTC; future is clamped."""
    if type(value) is not str:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    now = datetime.now(UTC)
    moment = min(moment, now)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def check_event(obj: dict[str, object], limits: ContractLimits) -> str:
    """Return the error type of an event object, or ``""``."""
    name = obj.get("name")
    if type(name) is not str or not name:
        return EVENT_NAME_REQUIRED
    if len(name) > limits.max_string_length:
        return ATTRIBUTE_VALUE_TOO_LONG
    if "time" not in obj:
        return TIME_REQUIRED
    if parse_time(obj["time"]) is None:
        return INVALID_TIME
    props = obj.get("properties")
    if props is not None and type(props) is not dict:
        return INVALID_ATTRIBUTE_VALUE
    return ""


def check_purchase(obj: dict[str, object], limits: ContractLimits) -> str:
    """Return the error type of a purchase object, or ``""``."""
    product = obj.get("product_id")
    if type(product) is not str or not product:
        return PURCHASE_PRODUCT_ID_REQUIRED
    currency = obj.get("currency")
    if type(currency) is not str or not _CURRENCY.match(currency):
        return INVALID_CURRENCY
    price = obj.get("price")
    if type(price) not in (int, float):
        return INVALID_PRICE
    if "time" not in obj:
        return TIME_REQUIRED
    if parse_time(obj["time"]) is None:
        return INVALID_TIME
    quantity = obj.get("quantity", 1)
    if type(quantity) is not int or not 1 <= quantity <= limits.max_quantity:
        return INVALID_QUANTITY
    props = obj.get("properties")
    if props is not None and type(props) is not dict:
        return INVALID_ATTRIBUTE_VALUE
    return ""


def update_existing_only(obj: dict[str, object], user_key: str) -> bool:
    """``_update_existing_only`` with Braze's default: true for aliases, false otherwise."""
    flag = obj.get("_update_existing_only")
    if flag is None:
        return user_key.startswith("a:")
    return bool(flag)
