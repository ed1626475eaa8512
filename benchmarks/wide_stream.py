"""A Peak-shaped wide Singer stream, generated: what the tap writes, with 9 typed attributes.

`python -m benchmarks stream --records N [--variant rescored] > stream.jsonl` writes it.
One SCHEMA (as tap-peak-attributes writes it: `customer_id` key, `updated_at` bookmark),
one RECORD per customer, a STATE every 10,000 records and one at the end. Each record
holds `customer_id`, `updated_at` and nine attributes of every JSON type a Peak output
table carries: three floats (`peak_churn_probability`, `peak_lifetime_value`,
`peak_propensity`), three strings (`peak_churn_risk`, `peak_next_best_product`,
`peak_segment`), a boolean `peak_is_vip`, an integer `peak_orders_count` and a date-time
`peak_last_scored_at` (one of the 3,600 seconds of the model run's hour).

`variant="rescored"` writes the same customers with 2 of the 9 values changed (the churn
probability and the time scored, as a daily model run does): the ledger's "every record
changed" case. The same seed and variant always give the same bytes.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

STREAM = "customer_attributes"
STATE_EVERY = 10_000
ATTRIBUTES = 9
RUN_AT = dt.datetime(2026, 11, 21, 6, 0, tzinfo=dt.UTC)
PRODUCTS = (
    "running_shoes",
    "smart_watch",
    "yoga_mat",
    "wireless_headphones",
    "coffee_maker",
    "denim_jacket",
    "air_fryer",
    "desk_lamp",
    "backpack",
    "sunglasses",
)
SEGMENTS = ("loyal_high_value", "occasional", "dormant", "new", "at_risk")

_NULLABLE = ["null"]
SCHEMA: dict[str, Any] = {
    "type": "SCHEMA",
    "stream": STREAM,
    "schema": {
        "type": "object",
        "properties": {
            "customer_id": {"type": ["string"]},
            "updated_at": {"type": ["string"], "format": "date-time"},
            "peak_churn_probability": {"type": ["number", *_NULLABLE]},
            "peak_churn_risk": {"type": ["string", *_NULLABLE]},
            "peak_lifetime_value": {"type": ["number", *_NULLABLE]},
            "peak_propensity": {"type": ["number", *_NULLABLE]},
            "peak_next_best_product": {"type": ["string", *_NULLABLE]},
            "peak_segment": {"type": ["string", *_NULLABLE]},
            "peak_is_vip": {"type": ["boolean", *_NULLABLE]},
            "peak_orders_count": {"type": ["integer", *_NULLABLE]},
            "peak_last_scored_at": {"type": ["string", *_NULLABLE], "format": "date-time"},
        },
        "required": ["customer_id", "updated_at"],
    },
    "key_properties": ["customer_id"],
    "bookmark_properties": ["updated_at"],
}


def _stamp(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _risk(probability: float) -> str:
    return "high" if probability >= 0.6 else "medium" if probability >= 0.3 else "low"


def records(count: int, *, seed: int = 7, variant: str = "first") -> Iterator[dict[str, Any]]:
    """The stream's records (`variant`: "first" or "rescored")."""
    rng = random.Random(seed)  # benchmark data: reproducible, not secret
    updated_at = _stamp(RUN_AT if variant == "first" else RUN_AT + dt.timedelta(days=1))
    scored = [_stamp(RUN_AT + dt.timedelta(seconds=s)) for s in range(3600)]
    for number in range(1, count + 1):
        draw = rng.random
        probability = round(draw() ** 2.5, 4)
        ltv = round(60.0 / (0.02 + draw() ** 1.5), 2)
        propensity = round(draw(), 4)
        product = int(draw() * len(PRODUCTS))
        segment = int(draw() * len(SEGMENTS))
        orders = int(draw() * 40)
        scored_at = int(draw() * 3600)
        risk = _risk(probability)
        vip = ltv >= 2000.0
        if variant == "rescored":
            # A model run's daily case: the churn probability recomputed, the customer
            # stamped again; the other 7 values as before (2 of 9 changed).
            probability = round(probability * 0.5 + 0.5, 4) if probability < 0.999 else 0.1
            scored_at = (scored_at + 1) % 3600
        yield {
            "customer_id": f"C{number:07d}",
            "updated_at": updated_at,
            "peak_churn_probability": probability,
            "peak_churn_risk": risk,
            "peak_lifetime_value": ltv,
            "peak_propensity": propensity,
            "peak_next_best_product": PRODUCTS[product],
            "peak_segment": SEGMENTS[segment],
            "peak_is_vip": vip,
            "peak_orders_count": orders,
            "peak_last_scored_at": scored[scored_at],
        }


def write(out: IO[bytes], count: int, *, seed: int = 7, variant: str = "first") -> int:
    """Write the whole stream; returns the number of RECORD messages."""
    encode = msgspec.json.Encoder().encode
    extracted = "2026-11-21T07:00:00.000000Z"
    out.write(encode(SCHEMA) + b"\n")
    written = 0
    last: dict[str, Any] | None = None
    for record in records(count, seed=seed, variant=variant):
        out.write(
            encode(
                {"type": "RECORD", "stream": STREAM, "record": record, "time_extracted": extracted}
            )
            + b"\n"
        )
        written += 1
        last = record
        if written % STATE_EVERY == 0:
            out.write(encode(_state(last)) + b"\n")
    if last is not None and written % STATE_EVERY:
        out.write(encode(_state(last)) + b"\n")
    return written


def _state(last: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "STATE",
        "value": {
            "bookmarks": {
                STREAM: {
                    "replication_key": "updated_at",
                    "replication_key_value": last["updated_at"],
                    "replication_key_last_id": last["customer_id"],
                }
            }
        },
    }


def write_file(path: Path, count: int, *, seed: int = 7, variant: str = "first") -> int:
    """`write` into a file."""
    with path.open("wb") as out:
        return write(out, count, seed=seed, variant=variant)
