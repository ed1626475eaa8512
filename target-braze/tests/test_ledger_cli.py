"""`target-braze-ledger` as a user runs it: a subprocess on real ledgers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cli_forkserver
import psycopg
import pytest
from target_braze.ledger_store import KeySpace, open_store, workspace_identity

REPO = Path(__file__).resolve().parents[2]
US03 = "https://rest.iad-03.braze.com"
EU01 = "https://rest.fra-01.braze.eu"
KEY_A = "api-key-aaaa-0123456789"
KEY_B = "api-key-bbbb-9876543210"


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def ledger_cli(
    *args: str, configs: list[dict[str, str]] | None = None, env: dict[str, str] | None = None
) -> Done:
    """Run the command with config files written from `configs` (TARGET_BRAZE_* cleared)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TARGET_BRAZE_") and k != "BRAZE_API_KEY"
    }
    config_args: list[str] = []
    for config in configs or []:
        path = Path(os.environ["LEDGER_CLI_TMP"]) / f"config-{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(config))
        config_args += ["--config", str(path)]
    # Through the session's fork server; stdin empty: nobody answers a question.
    done = cli_forkserver.run(
        "target_braze.ledger_cli",
        [*config_args, *args],
        input="",
        timeout=120,
        env={**clean, **(env or {})},
    )
    return Done(done.returncode, done.stdout, done.stderr)


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_CLI_TMP", str(tmp_path))


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """A ledger with two workspaces: A (US-03, KEY_A: 3 users, 2 events), B (EU-01: 1 user)."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    fill(url)
    return url


def fill(url: str) -> None:
    identity_a = workspace_identity(US03, KEY_A, None)
    identity_b = workspace_identity(EU01, KEY_B, None)
    a, b = KeySpace(identity_a), KeySpace(identity_b)
    with open_store(url) as store:
        ws_a = store.register_workspace(identity_a, US03, "prod")
        ws_b = store.register_workspace(identity_b, EU01, None)
        users_a = [(*a.user("external_id", f"c{i}"), b"entries") for i in range(3)]
        c0 = users_a[0][0]
        events = [(*a.event(b"e1"), c0, 1), (*a.event(b"e2"), c0, 1)]
        store.write(ws_a, users_a, events)
        store.write(ws_b, [(*b.user("external_id", "c0"), b"entries")], [])


def counts(url: str) -> dict[str, tuple[int, int]]:
    with open_store(url) as store:
        return {w.endpoint: (w.users, w.events) for w in store.workspaces()}


def assert_one_error_line(done: Done) -> str:
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("target-braze-ledger: error: ")
    return lines[0]


# --- stats -----------------------------------------------------------------------------------


def test_stats_lists_each_workspace_with_its_users_events_and_last_use(ledger_url: str) -> None:
    done = ledger_cli("stats", env={"TARGET_BRAZE_LEDGER_URL": ledger_url})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["id", "endpoint", "label", "users", "events", "last", "used"]
    first, second = lines[2].split(), lines[3].split()
    assert first[:5] == ["1", US03, "prod", "3", "2"]
    assert first[5].startswith("20")
    assert second[:5] == ["2", EU01, "-", "1", "0"]


def test_stats_names_the_ledger_and_its_size_on_disk(ledger_url: str) -> None:
    done = ledger_cli("stats", configs=[{"ledger_url": ledger_url}])
    assert done.stdout.splitlines()[0].startswith(f"ledger {ledger_url} (")
    assert "KiB on disk)" in done.stdout.splitlines()[0]


def test_stats_of_an_empty_ledger_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    open_store(url).close()
    done = ledger_cli("stats", env={"TARGET_BRAZE_LEDGER_URL": url})
    assert done.stdout.splitlines()[1] == "no workspaces yet"


def test_stats_of_a_ledger_file_that_does_not_exist_is_an_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "typo.sqlite"
    line = assert_one_error_line(ledger_cli("stats", configs=[{"ledger_url": f"sqlite:///{path}"}]))
    assert "does not exist" in line
    assert not path.exists()


def test_without_ledger_url_the_default_ledger_is_used(tmp_path: Path) -> None:
    fill(f"sqlite:///{tmp_path / 'target-braze' / 'ledger.sqlite'}")
    done = ledger_cli("stats", env={"XDG_STATE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "target-braze" / "ledger.sqlite") in done.stdout


def test_corrupt_ledger_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"garbage, not sqlite" * 300)
    line = assert_one_error_line(ledger_cli("stats", configs=[{"ledger_url": f"sqlite:///{path}"}]))
    assert f"ledger_url sqlite:///{path} is not a SQLite database" in line


# --- clear-workspace -------------------------------------------------------------------------


def test_clear_workspace_clears_the_configs_workspace_only(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    done = ledger_cli("clear-workspace", "--yes", configs=[config])
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.splitlines()[-1]
        == f"cleared workspace 1 {US03} (prod): 3 users and 2 events deleted"
    )
    assert counts(ledger_url) == {EU01: (1, 0)}


def test_an_instance_code_and_its_url_name_one_workspace(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": f"{US03}/", "api_key": KEY_A}
    assert ledger_cli("clear-workspace", "--yes", configs=[config]).returncode == 0
    assert counts(ledger_url) == {EU01: (1, 0)}


def test_clear_workspace_by_id(ledger_url: str) -> None:
    done = ledger_cli(
        "clear-workspace", "--yes", "--workspace", "2", configs=[{"ledger_url": ledger_url}]
    )
    assert done.returncode == 0, done.stderr
    assert counts(ledger_url) == {US03: (3, 2)}


def test_clear_workspace_with_an_unknown_id_is_an_error(ledger_url: str) -> None:
    done = ledger_cli(
        "clear-workspace", "--yes", "--workspace", "9", configs=[{"ledger_url": ledger_url}]
    )
    assert "has no workspace 9" in assert_one_error_line(done)
    assert counts(ledger_url) == {US03: (3, 2), EU01: (1, 0)}


def test_clear_workspace_of_a_config_the_ledger_does_not_know_is_an_error(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": "other-key"}
    line = assert_one_error_line(ledger_cli("clear-workspace", "--yes", configs=[config]))
    assert "no entries for this config's workspace" in line
    assert "other-key" not in line


def test_clear_workspace_without_api_key_is_one_error_line(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03"}
    line = assert_one_error_line(ledger_cli("clear-workspace", "--yes", configs=[config]))
    assert "rest_endpoint and api_key (or ledger_workspace)" in line


def test_ledger_workspace_names_the_workspace(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with open_store(url) as store:
        ws = store.register_workspace("name:staging", US03, None)
        store.write(ws, [(1, 1, b"x")], [])
    config = {"ledger_url": url, "ledger_workspace": "staging"}
    done = ledger_cli("clear-workspace", "--yes", configs=[config])
    assert done.returncode == 0, done.stderr
    assert counts(url) == {}


def test_bad_rest_endpoint_is_one_error_line(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "XX-99", "api_key": KEY_A}
    line = assert_one_error_line(ledger_cli("clear-workspace", "--yes", configs=[config]))
    assert "rest_endpoint" in line
    assert KEY_A not in line


# --- clear-user ------------------------------------------------------------------------------


def test_clear_user_with_events_deletes_that_users_entries_and_events(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    done = ledger_cli("clear-user", "--yes", "--events", "c0", configs=[config])
    assert done.returncode == 0, done.stderr
    expected = f"cleared external_id 'c0' in workspace 1 {US03} (prod): 1 user row and 2 events"
    first, last = done.stdout.splitlines()
    assert first.startswith("This deletes the attribute entries of external_id 'c0'")
    assert "and its event and purchase identities" in first
    assert last == f"{expected} deleted"
    assert counts(ledger_url) == {US03: (2, 0), EU01: (1, 0)}


def test_clear_user_keeps_the_users_event_identities_by_default(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    done = ledger_cli("clear-user", "--yes", "c0", configs=[config])
    assert done.returncode == 0, done.stderr
    assert "identities are kept" in done.stdout.splitlines()[0]
    assert counts(ledger_url) == {US03: (2, 2), EU01: (1, 0)}


@pytest.mark.parametrize("command", [["clear-workspace"], ["clear-user", "c0"]])
def test_a_delete_without_yes_deletes_nothing(ledger_url: str, command: list[str]) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    done = ledger_cli(*command, configs=[config])
    assert done.returncode == 1
    assert done.stdout.startswith("This deletes ")  # what it would delete, said first
    assert "nothing changed: no answer on standard input; confirm with --yes" in done.stderr
    assert counts(ledger_url) == {US03: (3, 2), EU01: (1, 0)}


def test_clear_workspace_says_how_many_users_and_events_it_deletes(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    done = ledger_cli("clear-workspace", configs=[config])
    assert "3 users' attribute entries and 2 event and purchase identities" in done.stdout


def test_clear_user_of_an_unknown_user_deletes_nothing(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    done = ledger_cli("clear-user", "--yes", "c0", "--identifier-type", "email", configs=[config])
    assert done.returncode == 0, done.stderr
    assert "nothing deleted" in done.stdout
    assert counts(ledger_url) == {US03: (3, 2), EU01: (1, 0)}


def test_clear_user_in_a_workspace_given_by_id(ledger_url: str) -> None:
    done = ledger_cli(
        "clear-user", "--yes", "c0", "--workspace", "2", configs=[{"ledger_url": ledger_url}]
    )
    assert done.returncode == 0, done.stderr
    assert counts(ledger_url) == {US03: (3, 2), EU01: (0, 0)}


# --- settings --------------------------------------------------------------------------------


def test_settings_come_from_the_environment_when_no_config_has_them(ledger_url: str) -> None:
    env = {
        "TARGET_BRAZE_LEDGER_URL": ledger_url,
        "TARGET_BRAZE_REST_ENDPOINT": "EU-01",
        "TARGET_BRAZE_API_KEY": KEY_B,
    }
    assert ledger_cli("clear-workspace", "--yes", env=env).returncode == 0
    assert counts(ledger_url) == {US03: (3, 2)}


def test_the_api_key_may_come_from_the_variable_api_key_env_names(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key_env": "PROD_KEY"}
    assert (
        ledger_cli("clear-workspace", "--yes", configs=[config], env={"PROD_KEY": KEY_A}).returncode
        == 0
    )
    assert counts(ledger_url) == {EU01: (1, 0)}


def test_the_api_key_defaults_to_braze_api_key(ledger_url: str) -> None:
    env = {"TARGET_BRAZE_REST_ENDPOINT": "EU-01", "BRAZE_API_KEY": KEY_B}
    assert (
        ledger_cli(
            "clear-workspace", "--yes", configs=[{"ledger_url": ledger_url}], env=env
        ).returncode
        == 0
    )
    assert counts(ledger_url) == {US03: (3, 2)}


def test_config_files_win_over_the_environment_and_later_files_win(ledger_url: str) -> None:
    env = {"TARGET_BRAZE_REST_ENDPOINT": "EU-01", "TARGET_BRAZE_API_KEY": KEY_B}
    configs = [
        {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": "stale"},
        {"api_key": KEY_A},
    ]
    assert ledger_cli("clear-workspace", "--yes", configs=configs, env=env).returncode == 0
    assert counts(ledger_url) == {EU01: (1, 0)}


def test_unreadable_config_file_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    done = subprocess.run(
        [sys.executable, "-m", "target_braze.ledger_cli", "--config", str(bad), "stats"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == f"target-braze-ledger: error: --config {bad} is not valid JSON\n"


def test_the_api_key_is_never_printed(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    outputs = [
        ledger_cli(*args, configs=[config])
        for args in (
            ["stats"],
            ["clear-user", "--yes", "c1"],
            ["clear-workspace", "--yes"],
            ["clear-workspace", "--yes"],
        )
    ]
    assert outputs[-1].returncode == 1  # already cleared: the error line names no key either
    for done in outputs:
        assert KEY_A not in done.stdout + done.stderr


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database per test, reached with a password (the test server trusts any)."""
    name = f"ledger_cli_{uuid.uuid4().hex[:12]}"
    admin_url = "postgresql://" + postgres_server_url.split("://", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host = postgres_server_url.split("@", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql://postgres:pw-hunter2@{host}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_stats_and_clear_on_postgres_never_print_the_password(postgres_url: str) -> None:
    fill(postgres_url)
    config = {"ledger_url": postgres_url, "rest_endpoint": "US-03", "api_key": KEY_A}
    stats = ledger_cli("stats", configs=[config])
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.splitlines()[0] == f"ledger {postgres_url.replace('pw-hunter2', '***')}"
    cleared = ledger_cli("clear-workspace", "--yes", configs=[config])
    assert cleared.returncode == 0, cleared.stderr
    assert counts(postgres_url) == {EU01: (1, 0)}
    for done in (stats, cleared):
        assert "hunter2" not in done.stdout + done.stderr


def test_unreachable_postgres_is_one_error_line_without_the_password() -> None:
    url = "postgresql://postgres:pw-hunter2@127.0.0.1:1/ledger"
    line = assert_one_error_line(ledger_cli("stats", configs=[{"ledger_url": url}]))
    assert "ledger_url postgresql://postgres:***@127.0.0.1:1/ledger is unreachable" in line
    assert "hunter2" not in line


# --- unknown and release -----------------------------------------------------------------------

CONFIG_A = {"rest_endpoint": US03, "api_key": KEY_A}


def with_unknown_events(url: str) -> list[int]:
    """Three events of workspace A left of unknown delivery (keys returned), one in flight."""
    identity = workspace_identity(US03, KEY_A, None)
    keys = KeySpace(identity)
    rows = [
        (
            *keys.event(f"u{i}".encode()),
            1,
            100,
            json.dumps(
                {
                    "stream": "orders",
                    "user": f"cust-{i}",
                    "array": "purchases",
                    "object": {"external_id": f"cust-{i}", "product_id": f"sku-{i}"},
                }
            ),
        )
        for i in range(4)
    ]
    with open_store(url) as store:
        ws = store.register_workspace(identity, US03, "prod")
        store.add_intent(ws, [], rows)
        store.write(ws, [], [], unknown_events=[row[0] for row in rows[:3]])
    return [row[0] for row in rows]


def unsettled(url: str) -> set[int]:
    with open_store(url) as store:
        return {e.key for e in store.unsettled_events(1)}


def test_unknown_lists_each_event_with_its_stream_user_object_and_when_sent(
    ledger_url: str,
) -> None:
    keys = with_unknown_events(ledger_url)

    done = ledger_cli("unknown", configs=[{**CONFIG_A, "ledger_url": ledger_url}])

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("4 events/purchases of unknown delivery in workspace 1")
    listed = {line.split()[0]: line for line in lines[1:]}
    assert set(listed) == {f"{key & 0xFFFFFFFFFFFFFFFF:016x}" for key in keys}
    line = listed[f"{keys[2] & 0xFFFFFFFFFFFFFFFF:016x}"]
    assert " unknown  sent 20" in line
    assert "orders  purchases of cust-2" in line
    assert '"product_id":"sku-2"' in line
    assert " in_flight " in listed[f"{keys[3] & 0xFFFFFFFFFFFFFFFF:016x}"]


def test_unknown_says_when_there_is_none(ledger_url: str) -> None:
    done = ledger_cli("unknown", configs=[{**CONFIG_A, "ledger_url": ledger_url}])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no events or purchases of unknown delivery in workspace 1")


def test_release_of_chosen_ids_forgets_only_them_and_prints_them(ledger_url: str) -> None:
    keys = with_unknown_events(ledger_url)
    chosen = f"{keys[1] & 0xFFFFFFFFFFFFFFFF:016x}"

    done = ledger_cli("release", chosen, "--yes", configs=[{**CONFIG_A, "ledger_url": ledger_url}])

    assert done.returncode == 0, done.stderr
    assert chosen in done.stdout
    assert "purchases of cust-1" in done.stdout
    assert "released 1 events/purchases" in done.stdout
    assert unsettled(ledger_url) == {keys[0], keys[2], keys[3]}
    assert counts(ledger_url)[US03] == (3, 5)  # confirmed events stay


def test_release_all_forgets_every_unknown_event_of_the_workspace(ledger_url: str) -> None:
    with_unknown_events(ledger_url)

    done = ledger_cli("release", "--all", "--yes", configs=[{**CONFIG_A, "ledger_url": ledger_url}])

    assert done.returncode == 0, done.stderr
    assert "released 4 events/purchases" in done.stdout
    assert unsettled(ledger_url) == set()
    assert counts(ledger_url)[US03] == (3, 2)


def test_release_asks_for_confirmation_and_a_no_releases_nothing(ledger_url: str) -> None:
    with_unknown_events(ledger_url)
    config = Path(os.environ["LEDGER_CLI_TMP"]) / "a.json"
    config.write_text(json.dumps({**CONFIG_A, "ledger_url": ledger_url}))

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "target_braze.ledger_cli",
            "--config",
            str(config),
            "release",
            "--all",
        ],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "Release them? [y/N]" in done.stdout
    assert "Nothing changed." in done.stdout
    assert len(unsettled(ledger_url)) == 4


def test_release_of_an_id_not_unknown_is_one_error_line_and_releases_nothing(
    ledger_url: str,
) -> None:
    keys = with_unknown_events(ledger_url)
    config = [{**CONFIG_A, "ledger_url": ledger_url}]

    line = assert_one_error_line(ledger_cli("release", "0123456789abcdef", "--yes", configs=config))

    assert "not of unknown delivery" in line
    assert len(unsettled(ledger_url)) == len(keys)
    assert "not an event id" in assert_one_error_line(ledger_cli("release", "xyz", configs=config))
    assert "--all" in assert_one_error_line(ledger_cli("release", configs=config))


# --- init, move-workspace, export and import ---------------------------------------------------


def test_init_creates_the_ledger_and_the_configs_workspace(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'ledger.sqlite'}"
    config = {"ledger_url": url, "rest_endpoint": "US-03", "api_key": KEY_A}
    done = ledger_cli("init", configs=[config])
    assert done.returncode == 0, done.stderr
    assert "workspace 1 created" in done.stdout
    with open_store(url) as store:
        assert store.find_workspace(workspace_identity(US03, KEY_A, None)) == 1
    again = ledger_cli("init", configs=[config])
    assert "already exists" in again.stdout


def test_move_workspace_keeps_every_entry_under_the_rotated_key(ledger_url: str) -> None:
    new_key = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_B}
    done = ledger_cli("move-workspace", "--from", "1", configs=[new_key])
    assert done.returncode == 0, done.stderr
    assert "3 users and 2 events stay known" in done.stdout
    assert KEY_B not in done.stdout + done.stderr
    with open_store(ledger_url) as store:
        assert store.find_workspace(workspace_identity(US03, KEY_A, None)) is None
        ws = store.find_workspace(workspace_identity(US03, KEY_B, None))
        assert ws == 1
        # The keys stay those derived from the first key's identity: the rows are found.
        keys = KeySpace(store.workspace_keyspace(ws))
        assert keys.user("external_id", "c0") == KeySpace(
            workspace_identity(US03, KEY_A, None)
        ).user("external_id", "c0")
        found = store.read_users([keys.user("external_id", f"c{i}")[0] for i in range(3)])
        assert len(found) == 3
    # clear-user by the new key's config finds the moved user
    cleared = ledger_cli("clear-user", "--yes", "c0", configs=[new_key])
    assert "1 user row" in cleared.stdout, cleared.stdout + cleared.stderr


def test_move_workspace_from_an_unknown_id_is_one_error_line(ledger_url: str) -> None:
    config = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_B}
    line = assert_one_error_line(ledger_cli("move-workspace", "--from", "9", configs=[config]))
    assert "has no workspace 9" in line


@pytest.mark.postgres
def test_export_then_import_into_postgres_keeps_every_row(
    ledger_url: str, postgres_url: str, tmp_path: Path
) -> None:
    target = {"ledger_url": ledger_url, "rest_endpoint": "US-03", "api_key": KEY_B}
    assert ledger_cli("move-workspace", "--from", "1", configs=[target]).returncode == 0
    export = tmp_path / "ledger.jsonl"
    done = ledger_cli("export", str(export), configs=[{"ledger_url": ledger_url}])
    assert done.returncode == 0, done.stderr
    assert export.stat().st_mode & 0o777 == 0o600
    loaded = ledger_cli("import", str(export), configs=[{"ledger_url": postgres_url}])
    assert loaded.returncode == 0, loaded.stderr
    assert "4 users, 2 events" in loaded.stdout
    with open_store(ledger_url) as source, open_store(postgres_url) as copy:
        assert [(w.id, w.identity, w.keyspace, w.users, w.events) for w in copy.workspaces()] == [
            (w.id, w.identity, w.keyspace, w.users, w.events) for w in source.workspaces()
        ]
        keys = KeySpace(copy.workspace_keyspace(1))
        key = keys.user("external_id", "c1")[0]
        assert copy.read_users([key]) == source.read_users([key])
    again = ledger_cli("import", str(export), configs=[{"ledger_url": postgres_url}])
    assert "already holds workspaces" in again.stderr
