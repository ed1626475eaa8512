"""Settings that ``PUT/PATCH /_sandbox/config`` may change while the sandbox runs.

Keys are the CLI option names with ``_`` for ``-`` (``--fault-429`` is ``fault_429``).
A change is all or nothing: every value is checked before any is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from braze_sandbox.faults import parse_latency
from braze_sandbox.ratelimit import RESET_STYLES, RETRY_AFTER_STYLES

if TYPE_CHECKING:
    from braze_sandbox.server import Sandbox

_PROBABILITIES = {
    "fault_429": "p_429",
    "fault_5xx": "p_5xx",
    "fault_drop": "p_drop",
    "fault_drop_after_apply": "p_drop_after_apply",
    "fault_5xx_after_apply": "p_5xx_after_apply",
    "fault_unindexed_error": "p_unindexed_error",
    "fault_queued": "p_queued",
}
_LIMITS = (
    "max_objects",
    "max_body_bytes",
    "max_array_length",
    "max_string_length",
    "max_key_length",
    "external_id_max_bytes",
    "max_nested_bytes",
    "max_quantity",
    "max_export_ids",
)


# The user-data endpoints' limits: setting -> the limiter of `UserDataEndpoints` it sets.
_USER_DATA_RATES = {
    "user_data_rate_limit": "user_data_limiter",
    "user_data_rate_window": "user_data_limiter",
    "subscription_rate_limit": "subscription_limiter",
    "subscription_rate_window": "subscription_limiter",
}


def current_config(sandbox: Sandbox) -> dict[str, Any]:
    """Every changeable setting with its current value."""
    faults = sandbox.faults.settings
    rate = sandbox.limiter.settings
    limits = sandbox.limits
    doc: dict[str, Any] = {key: getattr(faults, attr) for key, attr in _PROBABILITIES.items()}
    doc["latency_ms"] = list(faults.latency_ms)
    doc["errors"] = dict(faults.errors)
    doc["seed"] = faults.seed
    doc["fail_after_requests"] = faults.fail_after_requests
    doc["rate_limit"] = rate.limit
    doc["rate_window"] = rate.window
    doc["hourly_limit"] = rate.hourly_limit
    doc["reset_style"] = rate.reset_style
    doc["retry_after_style"] = rate.retry_after_style
    user_data = sandbox.user_data
    doc["user_data_rate_limit"] = user_data.user_data_limiter.settings.limit
    doc["user_data_rate_window"] = user_data.user_data_limiter.settings.window
    doc["subscription_rate_limit"] = user_data.subscription_limiter.settings.limit
    doc["subscription_rate_window"] = user_data.subscription_limiter.settings.window
    doc["legacy_per_array_limits"] = limits.legacy_per_array_limits
    for key in _LIMITS:
        doc[key] = getattr(limits, key)
    return doc


def _probability(value: Any) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"a probability must be within 0..1, not {value!r}")
    return number


def _non_negative_int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a non-negative integer, not {value!r}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, not {value!r}")
        return str(value)

    return check


def apply_config(sandbox: Sandbox, changes: dict[str, Any]) -> None:
    """Check every change, then apply them all; raise ``ValueError`` on any bad one."""
    faults = sandbox.faults.settings
    rate = sandbox.limiter.settings
    limits = sandbox.limits
    steps: list[Callable[[], None]] = []

    def setter(target: object, attr: str, value: Any) -> Callable[[], None]:
        return lambda: setattr(target, attr, value)

    for key, value in changes.items():
        if key in _PROBABILITIES:
            steps.append(setter(faults, _PROBABILITIES[key], _probability(value)))
        elif key == "latency_ms":
            steps.append(setter(faults, "latency_ms", parse_latency(value)))
        elif key == "errors":
            if type(value) is not dict or not all(type(v) is str for v in value.values()):
                raise ValueError("errors must map identifiers to error types")
            steps.append(setter(faults, "errors", {str(k): v for k, v in value.items()}))
        elif key == "seed":
            if value is not None and type(value) is not int:
                raise ValueError(f"seed must be an integer or null, not {value!r}")
            steps.append(partial(sandbox.faults.reseed, value))
        elif key == "fail_after_requests":
            # Setting it (even to the same N) restarts the count: "N more from now".
            count = None if value is None else _non_negative_int(value)
            steps.append(partial(sandbox.faults.set_fail_after, count))
        elif key == "rate_limit":
            steps.append(setter(rate, "limit", _non_negative_int(value)))
        elif key == "hourly_limit":
            steps.append(setter(rate, "hourly_limit", _non_negative_int(value)))
        elif key == "rate_window":
            window = float(value)
            if window <= 0:
                raise ValueError("rate_window must be positive")
            steps.append(setter(rate, "window", window))
            steps.append(partial(sandbox.stats.set_window, window))
            steps.append(sandbox.limiter.reset)
        elif key in _USER_DATA_RATES:
            limiter = getattr(sandbox.user_data, _USER_DATA_RATES[key])
            if key.endswith("_limit"):
                steps.append(setter(limiter.settings, "limit", _non_negative_int(value)))
            else:
                window = float(value)
                if window <= 0:
                    raise ValueError(f"{key} must be positive")
                steps.append(setter(limiter.settings, "window", window))
            steps.append(limiter.reset)
        elif key == "reset_style":
            steps.append(setter(rate, "reset_style", _choice(RESET_STYLES)(value)))
        elif key == "retry_after_style":
            steps.append(setter(rate, "retry_after_style", _choice(RETRY_AFTER_STYLES)(value)))
        elif key == "legacy_per_array_limits":
            if type(value) is not bool:
                raise ValueError("legacy_per_array_limits must be true or false")
            steps.append(setter(limits, key, value))
        elif key in _LIMITS:
            steps.append(setter(limits, key, _non_negative_int(value)))
            if key == "max_array_length":
                steps.append(setter(sandbox.store, key, value))
        else:
            known = sorted([*current_config(sandbox)])
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(known)}")
    steps.append(limits.valid_keys.clear)
    for step in steps:
        step()
