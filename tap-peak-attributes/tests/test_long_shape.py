"""Long tables: one record per customer per updated-at, holding only what changed."""

from __future__ import annotations

import sqlalchemy as sa
from tap_peak_attributes import sample

LONG_STREAM = {
    "name": "attribute_changes",
    "table": "customer_attribute_changes",
    "shape": "long",
}


def _long_rows(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT customer_id, attribute_name, attribute_value, updated_at "
            "FROM customer_attribute_changes WHERE updated_at > '2026-11-22'"
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_each_customer_run_becomes_one_record_with_only_its_changes(sqlite_url, run_tap):
    sample.generate(sqlite_url, 30)
    changed = sample.model_run(sqlite_url, 5)
    run = run_tap({"sqlalchemy_url": sqlite_url, "streams": [LONG_STREAM]})
    records = run.records()
    assert len(records) == 35
    second_run = [r for r in records if r["updated_at"].startswith("2026-11-28")]
    assert [r["customer_id"] for r in second_run] == changed
    expected: dict[str, set[str]] = {}
    for customer, name, _value, _ts in _long_rows(sqlite_url):
        expected.setdefault(customer, set()).add(f"peak_{name}")
    for record in second_run:
        attributes = set(record) - {"customer_id", "updated_at"}
        assert attributes == expected[record["customer_id"]]
    first_run = [r for r in records if r["updated_at"].startswith("2026-11-21")]
    assert all(len(r) == 2 + len(sample.ATTRIBUTES) for r in first_run)


def test_long_stream_keys_on_customer_and_updated_at(sqlite_url, run_tap):
    sample.generate(sqlite_url, 3)
    run = run_tap({"sqlalchemy_url": sqlite_url, "streams": [LONG_STREAM]})
    schema = next(m for m in run.messages if m["type"] == "SCHEMA")
    assert schema["key_properties"] == ["customer_id", "updated_at"]


def test_long_values_are_typed_by_inference_and_by_the_type_map(sqlite_url, run_tap):
    sample.generate(sqlite_url, 10)
    inferred = run_tap({"sqlalchemy_url": sqlite_url, "streams": [LONG_STREAM]})
    schema = next(m for m in inferred.messages if m["type"] == "SCHEMA")["schema"]["properties"]
    assert schema["peak_churn_probability"]["type"][0] == "number"
    assert schema["peak_is_high_value"]["type"][0] == "boolean"
    assert schema["peak_segment"]["type"][0] == "string"
    record = inferred.records()[0]
    assert isinstance(record["peak_is_high_value"], bool)
    assert isinstance(record["peak_churn_probability"], float)

    mapped = run_tap(
        {
            "sqlalchemy_url": sqlite_url,
            "streams": [{**LONG_STREAM, "attribute_types": {"LIFETIME_VALUE": "string"}}],
        }
    )
    assert isinstance(mapped.records()[0]["peak_lifetime_value"], str)


def test_integer_values_are_inferred_and_a_map_can_widen_them(sqlite_url, run_tap, execute):
    execute(
        sqlite_url,
        "CREATE TABLE changes (customer_id TEXT, attribute_name TEXT, attribute_value TEXT,"
        " updated_at TEXT)",
    )
    execute(
        sqlite_url,
        "INSERT INTO changes VALUES ('a', 'visits', :v, '2026-11-21 06:00:00')",
        params=[{"v": "3"}],
    )
    stream = {"name": "changes", "table": "changes", "shape": "long", "attribute_prefix": ""}
    run = run_tap({"sqlalchemy_url": sqlite_url, "streams": [stream]})
    assert run.records() == [
        {"customer_id": "a", "updated_at": "2026-11-21T06:00:00.000000+00:00", "visits": 3}
    ]
    widened = {**stream, "attribute_types": {"visits": "number"}}
    run = run_tap({"sqlalchemy_url": sqlite_url, "streams": [widened]})
    schema = next(m for m in run.messages if m["type"] == "SCHEMA")["schema"]["properties"]
    assert schema["visits"]["type"][0] == "number"


def test_long_shape_resumes_between_customer_groups(postgres_url, run_tap):
    sample.generate(postgres_url, 12)
    config = {
        "sqlalchemy_url": postgres_url,
        "streams": [LONG_STREAM],
        "state_message_frequency": 5,
    }
    full = run_tap(config)
    ids = full.ids()
    assert len(ids) == 12
    checkpoint = full.states()[0]
    assert full.ids()[:5] + run_tap(config, checkpoint).ids() == ids
