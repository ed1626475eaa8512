"""property_types and properties_property through the target's CLI, against the sandbox."""

from __future__ import annotations

from braze_target_harness import error_lines, read_jsonl, run_target, target_config

TEXT = {"type": ["string", "null"]}


def schema(stream: str, *names: str) -> dict:
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"type": "object", "properties": {name: TEXT for name in names}},
        "key_properties": [names[0]],
    }


def record(stream: str, **values: str) -> dict:
    return {"type": "RECORD", "stream": stream, "record": values}


def test_text_values_are_sent_as_their_declared_type(braze, tmp_path):
    types = {"score": "number", "vip": "boolean", "seen": "time", "prefs": "json"}
    config = target_config(braze, tmp_path, stream_mappings={"scores": {"property_types": types}})
    messages = [
        schema("scores", "customer_id", "score", "vip", "seen", "prefs"),
        record(
            "scores",
            customer_id="c1",
            score="0.25",
            vip="TRUE",
            seen="2026-11-01 06:00:00",
            prefs='{"channel": "email", "tags": ["a"]}',
        ),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    (profile,) = braze.profiles()
    assert profile["custom_attributes"] == {
        "score": 0.25,
        "vip": True,
        "seen": "2026-11-01T06:00:00+00:00",
        "prefs": {"channel": "email", "tags": ["a"]},
    }


def test_a_value_not_of_its_declared_type_rejects_the_record_naming_the_property(braze, tmp_path):
    config = target_config(
        braze,
        tmp_path,
        max_rejected_ratio=1.0,
        stream_mappings={"scores": {"property_types": {"score": "number"}}},
    )
    messages = [
        schema("scores", "customer_id", "score"),
        record("scores", customer_id="c1", score="high"),
        record("scores", customer_id="c2", score="7"),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    (reject,) = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["identifier"] == "c1"
    assert reject["reason"] == "property 'score': 'high' is not a number (property_types)"
    assert [p["external_id"] for p in braze.profiles()] == ["c2"]


def test_a_json_column_is_the_events_properties(braze, tmp_path):
    config = target_config(
        braze,
        tmp_path,
        max_rejected_ratio=1.0,
        stream_mappings={
            "events": {
                "object_type": "events",
                "event_name_property": "name",
                "time_property": "at",
                "properties_property": "props",
            }
        },
    )
    messages = [
        schema("events", "customer_id", "name", "at", "props", "note"),
        record(
            "events",
            customer_id="c1",
            name="upgraded",
            at="2026-11-28T06:00:00Z",
            props='{"plan": "pro", "seats": 5}',
            note="not sent: the properties are the JSON column's",
        ),
        record("events", customer_id="c2", name="x", at="2026-11-28T06:00:00Z", props="[1]"),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    (event,) = braze.events()
    assert event["properties"] == {"plan": "pro", "seats": 5}
    (reject,) = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["reason"] == "'props' (properties_property) is not a JSON object"


def test_an_unknown_type_or_property_is_one_line(braze, tmp_path):
    for mapping, expected in (
        (
            {"property_types": {"score": "float"}},
            "property_types.score is 'float' (in stream_mappings.scores); use one of: "
            "number, integer, boolean, time, json",
        ),
        (
            {"property_types": {"scor": "number"}},
            "stream 'scores' has no property 'scor' for property_types",
        ),
        (
            {"properties_property": "score"},
            "properties_property is for events and purchases (in stream_mappings.scores)",
        ),
    ):
        config = target_config(braze, tmp_path, stream_mappings={"scores": mapping})
        run = run_target(
            config, [schema("scores", "customer_id", "score"), record("scores")], tmp_path
        )
        assert run.returncode == 1
        (line,) = error_lines(run.stderr)
        assert expected in line, line
