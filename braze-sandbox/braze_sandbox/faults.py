"""Injected faults: the failures a Braze client must survive, on demand and reproducibly.

Every random decision draws from one seeded ``random.Random``, so a run with ``--seed``
makes the same decisions for the same sequence of requests. The fail point is not random:
after ``fail_after_requests`` requests Braze is "down" until the setting changes, which is
what a crash-safety test needs ("fails after N requests, heals, the run is repeated").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class FaultSettings:
    """Probabilities (0..1) of each fault, latency, and chosen errors for chosen ids."""

    p_429: float = 0.0
    p_5xx: float = 0.0
    p_drop: float = 0.0
    p_drop_after_apply: float = 0.0
    p_5xx_after_apply: float = 0.0
    p_unindexed_error: float = 0.0
    p_queued: float = 0.0
    latency_ms: tuple[float, float] = (0.0, 0.0)
    errors: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    fail_after_requests: int | None = None  # 0 or None: off


def parse_latency(value: object) -> tuple[float, float]:
    """``50``, ``"50"``, ``"20-80"`` or ``[20, 80]`` to a (min, max) range in ms."""
    if isinstance(value, list | tuple):
        low, high = float(value[0]), float(value[1])
    elif isinstance(value, str) and "-" in value.strip("-"):
        first, second = value.split("-", 1)
        low, high = float(first), float(second)
    elif isinstance(value, int | float | str):
        low = high = float(value)
    else:
        raise ValueError(f"latency must be MS or MIN-MAX, not {value!r}")
    if low < 0 or high < low:
        raise ValueError(f"latency range must satisfy 0 <= min <= max, not {value!r}")
    return low, high


def parse_error_mapping(items: list[str]) -> dict[str, str]:
    """``["cust-7=BLACKLISTED_EXTERNAL_USER_ID"]`` to ``{"cust-7": "BLACKLISTED_..."}``."""
    mapping = {}
    for item in items:
        ident, sep, kind = item.rpartition("=")
        if not sep or not ident or not kind:
            raise ValueError(f"--error expects ID=TYPE, not {item!r}")
        mapping[ident] = kind
    return mapping


class FaultInjector:
    """Decides, request by request, which fault (if any) to inject."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)  # noqa: S311 - simulation, not security
        self._counted_since_set = 0

    def reseed(self, seed: int | None) -> None:
        """Restart the random sequence."""
        self.settings.seed = seed
        self.rng = random.Random(seed)  # noqa: S311

    def set_fail_after(self, requests: int | None) -> None:
        """Arm the fail point (``0``/``None``: disarm); counting starts again from now."""
        self.settings.fail_after_requests = requests
        self._counted_since_set = 0

    def restart_failpoint_count(self) -> None:
        """Count requests toward the fail point from zero again (the setting stays)."""
        self._counted_since_set = 0

    def failpoint(self) -> bool:
        """Count this request; True once more than ``fail_after_requests`` were counted.

        Every ``/users/track`` request counts, whatever it is answered, so "the first N
        requests are handled normally" holds exactly. Nothing is drawn from the seeded
        random sequence.
        """
        limit = self.settings.fail_after_requests
        if not limit:
            return False
        self._counted_since_set += 1
        return self._counted_since_set > limit

    def failpoint_remaining(self) -> int | None:
        """Requests still handled normally before the fail point fails them; None when off."""
        limit = self.settings.fail_after_requests
        if not limit:
            return None
        return max(0, limit - self._counted_since_set)

    def _roll(self, probability: float) -> bool:
        return probability > 0.0 and self.rng.random() < probability

    def drop_before(self) -> bool:
        """Close the connection without answering, before processing."""
        return self._roll(self.settings.p_drop)

    def inject_429(self) -> bool:
        """Answer 429 although the limiter admitted the request."""
        return self._roll(self.settings.p_429)

    def inject_5xx(self) -> int:
        """A 500, 502 or 503 status to answer with, or 0."""
        if self._roll(self.settings.p_5xx):
            return self.rng.choice((500, 502, 503))
        return 0

    def unindexed_error(self) -> bool:
        """Answer 201 with an errors[] entry without index, applying nothing."""
        return self._roll(self.settings.p_unindexed_error)

    def queued(self) -> bool:
        """Answer 202 ``queued`` (Braze's maintenance answer: still a success)."""
        return self._roll(self.settings.p_queued)

    def drop_after_apply(self) -> bool:
        """Apply the data, then close the connection: a lost response."""
        return self._roll(self.settings.p_drop_after_apply)

    def error_after_apply(self) -> bool:
        """Apply the data, then answer 502: a load balancer that lost Braze's answer."""
        return self._roll(self.settings.p_5xx_after_apply)

    def latency_seconds(self) -> float:
        """How long to hold this response."""
        low, high = self.settings.latency_ms
        if high <= 0.0:
            return 0.0
        if high == low:
            return low / 1000.0
        return self.rng.uniform(low, high) / 1000.0

    def chosen_error(self, obj: dict[str, object]) -> str:
        """The error type chosen for this object's identifier (``--error ID=TYPE``), or ``""``."""
        errors = self.settings.errors
        if not errors:
            return ""
        for key in ("external_id", "braze_id", "email", "phone"):
            value = obj.get(key)
            if type(value) is str and value in errors:
                return errors[value]
        alias = obj.get("user_alias")
        if type(alias) is dict:
            name = alias.get("alias_name")
            if type(name) is str and name in errors:
                return errors[name]
        return ""
