"""Events and purchases are recorded with their user and never deduplicated."""

from __future__ import annotations

EVENT = {
    "external_id": "u",
    "name": "played",
    "time": "2024-01-01T00:00:00Z",
    "properties": {"n": 1},
}
PURCHASE = {
    "external_id": "u",
    "product_id": "sku-1",
    "currency": "USD",
    "price": 9.5,
    "quantity": 2,
    "time": "2024-01-02T00:00:00Z",
}


def test_resent_event_is_a_second_event(sandbox, track):
    for _ in range(2):
        assert track(sandbox, {"events": [EVENT]}).json() == {
            "message": "success",
            "events_processed": 1,
        }
    events = sandbox.events("u")
    assert len(events) == 2
    assert events[0]["name"] == "played"
    assert events[0]["properties"] == {"n": 1}


def test_resent_purchase_is_a_second_purchase(sandbox, track):
    track(sandbox, {"purchases": [PURCHASE]})
    track(sandbox, {"purchases": [PURCHASE]})
    assert len(sandbox.purchases("u")) == 2
    assert sandbox.profile("u")["total_revenue"] == 38.0


def test_event_without_time_is_rejected(sandbox, track):
    event = {k: v for k, v in EVENT.items() if k != "time"}
    response = track(sandbox, {"events": [event, EVENT]})
    assert response.json()["errors"] == [
        {"type": "TIME_REQUIRED", "input_array": "events", "index": 0}
    ]
    assert len(sandbox.events()) == 1


def test_purchase_quantity_over_100_is_rejected(sandbox, track):
    response = track(sandbox, {"purchases": [{**PURCHASE, "quantity": 101}]})
    assert response.json()["errors"][0]["type"] == "INVALID_QUANTITY"
    assert sandbox.purchases() == []
