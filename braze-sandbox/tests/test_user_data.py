"""/users/delete, /users/alias/new, /users/identify and /v2/subscription/status/set.

Each is checked through its effect on `/users/export/ids`, as a client of Braze would
check it, plus its limits and error answers.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from braze_sandbox.testing import SandboxProcess

from .conftest import API_KEY, NO_PERMISSION_KEY


def _post(sandbox: SandboxProcess, path: str, body: Any, key: str = API_KEY) -> requests.Response:
    return requests.post(
        f"{sandbox.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def _users(sandbox: SandboxProcess, *external_ids: str) -> None:
    sandbox.track({"attributes": [{"external_id": e, "plan": "pro"} for e in external_ids]})


def test_deleted_user_is_gone_from_export(sandbox):
    _users(sandbox, "a", "b", "c")
    response = _post(sandbox, "/users/delete", {"external_ids": ["a", "c", "unknown"]})
    assert response.status_code == 201
    assert response.json() == {"deleted": 2, "message": "success"}
    answer = sandbox.export(external_ids=["a", "b", "c"])
    assert [u["external_id"] for u in answer["users"]] == ["b"]
    assert answer["invalid_user_ids"] == ["a", "c"]


def test_delete_by_alias_and_braze_id(sandbox):
    alias = {"alias_name": "n1", "alias_label": "crm"}
    sandbox.track({"attributes": [{"user_alias": alias, "x": 1, "_update_existing_only": False}]})
    _users(sandbox, "b")
    braze_id = sandbox.profile("b")["braze_id"]
    assert _post(sandbox, "/users/delete", {"user_aliases": [alias]}).json()["deleted"] == 1
    assert _post(sandbox, "/users/delete", {"braze_ids": [braze_id]}).json()["deleted"] == 1
    assert sandbox.profiles() == []


def test_delete_refuses_more_than_50_identifiers(sandbox):
    _users(sandbox, "a")
    response = _post(sandbox, "/users/delete", {"external_ids": [f"u{i}" for i in range(51)]})
    assert response.status_code == 400
    assert "at most 50" in response.json()["message"]
    assert _post(sandbox, "/users/delete", {"external_ids": ["a"] * 50}).status_code == 201


def test_delete_takes_one_kind_of_identifier_per_request(sandbox):
    response = _post(sandbox, "/users/delete", {"external_ids": ["a"], "braze_ids": ["b"]})
    assert response.status_code == 400
    assert "Exactly one of" in response.json()["message"]


def test_delete_refuses_a_malformed_identifier_whole(sandbox):
    _users(sandbox, "a")
    response = _post(sandbox, "/users/delete", {"external_ids": ["a", 7]})
    assert response.status_code == 400
    assert "external_ids[1]" in response.json()["message"]
    assert sandbox.profile("a") is not None


def test_delete_reports_a_chosen_error_by_index_and_deletes_the_rest(sandbox):
    _users(sandbox, "a", "cust-7", "b")
    response = _post(sandbox, "/users/delete", {"external_ids": ["a", "cust-7", "b"]})
    assert response.json() == {
        "deleted": 2,
        "message": "success",
        "errors": [
            {"type": "BLACKLISTED_EXTERNAL_USER_ID", "input_array": "external_ids", "index": 1}
        ],
    }
    assert sandbox.export(external_ids=["a", "b"])["invalid_user_ids"] == ["a", "b"]


def test_delete_needs_the_users_delete_permission(sandbox):
    response = _post(sandbox, "/users/delete", {"external_ids": ["a"]}, key=NO_PERMISSION_KEY)
    assert response.status_code == 403
    assert "users.delete" in response.json()["message"]


def test_alias_new_creates_an_alias_only_user(sandbox):
    alias = {"alias_name": "n1", "alias_label": "crm"}
    response = _post(sandbox, "/users/alias/new", {"user_aliases": [alias]})
    assert response.json() == {"aliases_processed": 1, "message": "success"}
    (user,) = sandbox.export(user_aliases=[alias])["users"]
    assert user["user_aliases"] == [alias]
    assert "external_id" not in user


def test_alias_new_with_external_id_adds_the_alias_to_that_user(sandbox):
    _users(sandbox, "a")
    alias = {"alias_name": "n1", "alias_label": "crm"}
    _post(sandbox, "/users/alias/new", {"user_aliases": [{**alias, "external_id": "a"}]})
    assert sandbox.profile("a")["user_aliases"] == [alias]
    missing = _post(sandbox, "/users/alias/new", {"user_aliases": [{**alias, "external_id": "z"}]})
    assert missing.json()["errors"][0]["index"] == 0
    assert len(sandbox.profiles()) == 1


def test_alias_new_refuses_more_than_50(sandbox):
    aliases = [{"alias_name": f"n{i}", "alias_label": "crm"} for i in range(51)]
    assert _post(sandbox, "/users/alias/new", {"user_aliases": aliases}).status_code == 400
    assert sandbox.profiles() == []


def _aliased_user(sandbox: SandboxProcess, name: str, **attributes: Any) -> dict[str, str]:
    alias = {"alias_name": name, "alias_label": "crm"}
    _post(sandbox, "/users/alias/new", {"user_aliases": [alias]})
    sandbox.track({"attributes": [{"user_alias": alias, **attributes}]})
    return alias


def test_identify_gives_the_alias_user_an_unknown_external_id(sandbox):
    alias = _aliased_user(sandbox, "n1", score=3)
    body = {"aliases_to_identify": [{"external_id": "a", "user_alias": alias}]}
    assert _post(sandbox, "/users/identify", body).json()["aliases_processed"] == 1
    user = sandbox.profile("a")
    assert user["custom_attributes"] == {"score": 3}
    assert user["user_aliases"] == [alias]


def test_identify_merges_into_a_known_user(sandbox):
    sandbox.track({"attributes": [{"external_id": "a", "plan": "pro", "score": 1}]})
    alias = _aliased_user(sandbox, "n1", score=3, segment="vip")
    body = {
        "aliases_to_identify": [{"external_id": "a", "user_alias": alias}],
        "merge_behavior": "merge",
    }
    _post(sandbox, "/users/identify", body)
    (user,) = sandbox.export(user_aliases=[alias])["users"]
    assert user["external_id"] == "a"
    # Only what the identified user lacks comes from the alias user.
    assert user["custom_attributes"] == {"plan": "pro", "score": 1, "segment": "vip"}
    assert len(sandbox.profiles()) == 1


def test_identify_with_merge_behavior_none_keeps_only_the_alias(sandbox):
    _users(sandbox, "a")
    alias = _aliased_user(sandbox, "n1", segment="vip")
    body = {
        "aliases_to_identify": [{"external_id": "a", "user_alias": alias}],
        "merge_behavior": "none",
    }
    _post(sandbox, "/users/identify", body)
    user = sandbox.profile("a")
    assert user["custom_attributes"] == {"plan": "pro"}
    assert user["user_aliases"] == [alias]
    assert len(sandbox.profiles()) == 1


def test_identify_refuses_an_unknown_merge_behavior_and_a_missing_external_id(sandbox):
    alias = _aliased_user(sandbox, "n1")
    bad = {
        "aliases_to_identify": [{"external_id": "a", "user_alias": alias}],
        "merge_behavior": "x",
    }
    assert _post(sandbox, "/users/identify", bad).status_code == 400
    no_id = {"aliases_to_identify": [{"user_alias": alias}]}
    assert "external_id" in _post(sandbox, "/users/identify", no_id).json()["message"]


def test_subscription_status_set_changes_only_the_named_group(sandbox):
    _users(sandbox, "a", "b")
    body = {
        "subscription_groups": [
            {
                "subscription_group_id": "g1",
                "subscription_state": "subscribed",
                "external_ids": ["a", "b"],
            },
            {
                "subscription_group_id": "g2",
                "subscription_state": "unsubscribed",
                "external_ids": ["a"],
            },
        ]
    }
    assert _post(sandbox, "/v2/subscription/status/set", body).status_code == 201
    assert sandbox.profile("a")["subscription_groups"] == [
        {"id": "g1", "status": "subscribed"},
        {"id": "g2", "status": "unsubscribed"},
    ]
    assert sandbox.profile("b")["subscription_groups"] == [{"id": "g1", "status": "subscribed"}]


def test_subscription_groups_in_users_track_set_each_group(sandbox):
    _users(sandbox, "a")
    group = {"subscription_group_id": "g1", "subscription_state": "unsubscribed"}
    sandbox.track({"attributes": [{"external_id": "a", "subscription_groups": [group]}]})
    assert sandbox.profile("a")["subscription_groups"] == [{"id": "g1", "status": "unsubscribed"}]


_G = {"subscription_group_id": "g", "subscription_state": "subscribed"}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"subscription_state": "subscribed", "external_ids": ["a"]}, "subscription_group_id"),
        ({**_G, "subscription_state": "on", "external_ids": ["a"]}, "subscription_state"),
        ({**_G, "emails": ["x@y.z"], "phones": ["+1"]}, "cannot be combined"),
        ({**_G, "external_ids": [f"u{i}" for i in range(51)]}, "at most 50"),
    ],
)
def test_subscription_status_set_refuses_bad_requests(sandbox, entry, problem):
    response = _post(sandbox, "/v2/subscription/status/set", {"subscription_groups": [entry]})
    assert response.status_code == 400
    assert problem in response.json()["message"]


def test_user_endpoints_share_one_rate_limit_and_subscriptions_have_their_own():
    with SandboxProcess(
        user_data_rate_limit=2, user_data_rate_window=60, subscription_rate_limit=1
    ) as sandbox:
        alias = {"alias_name": "n1", "alias_label": "crm"}
        assert _post(sandbox, "/users/delete", {"external_ids": ["a"]}).status_code == 201
        assert _post(sandbox, "/users/alias/new", {"user_aliases": [alias]}).status_code == 201
        refused = _post(
            sandbox,
            "/users/identify",
            {"aliases_to_identify": [{"external_id": "a", "user_alias": alias}]},
        )
        assert refused.status_code == 429
        assert refused.headers["X-RateLimit-Limit"] == "2"
        sub = {
            "subscription_group_id": "g",
            "subscription_state": "subscribed",
            "external_ids": ["a"],
        }
        assert (
            _post(
                sandbox, "/v2/subscription/status/set", {"subscription_groups": [sub]}
            ).status_code
            == 201
        )
        assert (
            _post(
                sandbox, "/v2/subscription/status/set", {"subscription_groups": [sub]}
            ).status_code
            == 429
        )
        assert sandbox.track({"attributes": [{"external_id": "a", "x": 1}]})["message"] == "success"
        stats = sandbox.stats()["user_data"]
        assert stats["/users/identify"]["by_status"] == {"429": 1}
        assert stats["max_arrivals_in_window"] == {"user_data": 2, "subscription": 1}
