"""The bundled sample warehouse: clean, two model runs, regenerable by `peak-sample`."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from tap_peak_attributes.tap import SAMPLE_DATABASE

PEAK_SAMPLE = Path(sys.executable).with_name("peak-sample")


def _dump(path: Path) -> dict[str, list[tuple]]:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        tables = {
            name: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {name} ORDER BY 1, 2")]
            for name in ("customer_attributes", "customer_attribute_changes")
        }
    engine.dispose()
    return tables


def test_bundled_sample_is_exactly_what_the_generator_writes(tmp_path):
    url = f"sqlite:///{tmp_path / 'regenerated.sqlite'}"
    for args in (
        ["generate", "--customers", "1200", "--seed", "42"],
        ["model-run", "--changes", "150"],
    ):
        subprocess.run([str(PEAK_SAMPLE), *args, "--url", url], check=True, capture_output=True)
    assert _dump(tmp_path / "regenerated.sqlite") == _dump(SAMPLE_DATABASE)


def test_bundled_sample_has_1200_clean_customers_and_150_changed_in_run_2():
    wide = _dump(SAMPLE_DATABASE)["customer_attributes"]
    assert len(wide) == 1200
    assert all(row[0] is not None and row[-1] is not None for row in wide)
    stamps = sorted({row[-1] for row in wide})
    assert stamps == ["2026-11-21 06:00:00", "2026-11-28 06:00:00"]
    assert sum(row[-1] == "2026-11-28 06:00:00" for row in wide) == 150
    assert SAMPLE_DATABASE.stat().st_size < 1_000_000


def test_model_run_without_at_never_stamps_rows_in_the_future(tmp_path):
    # Newest row + 7 days would be after today for the bundled sample: the tap would hold
    # such rows back, so a demo model run must be stamped no later than now.
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(Path(SAMPLE_DATABASE).read_bytes())
    subprocess.run(
        [str(PEAK_SAMPLE), "model-run", "--url", f"sqlite:///{copy}", "--changes", "5"],
        check=True,
        capture_output=True,
    )
    engine = sa.create_engine(f"sqlite:///{copy}")
    with engine.connect() as conn:
        newest = conn.exec_driver_sql("SELECT max(updated_at) FROM customer_attributes").scalar()
    engine.dispose()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert "2026-11-28 06:00:00" < newest <= now


def _model_run_cli(url: str, *args: str) -> dict:
    done = subprocess.run(
        [str(PEAK_SAMPLE), "model-run", "--url", url, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    (line,) = done.stdout.splitlines()
    return json.loads(line)


def _wide(path: Path) -> dict[str, tuple]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT * FROM customer_attributes").fetchall()
    finally:
        connection.close()
    return {row[0]: row[1:] for row in rows}


def _long_rows(path: Path, stamp: str) -> list[tuple]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(
            "SELECT customer_id, attribute_name, attribute_value FROM "
            "customer_attribute_changes WHERE updated_at = ? ORDER BY 1, 2",
            (stamp,),
        ).fetchall()
    finally:
        connection.close()


def _copy_of_sample(tmp_path: Path) -> Path:
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(Path(SAMPLE_DATABASE).read_bytes())
    return copy


def test_model_run_reports_exactly_the_values_that_really_changed(tmp_path):
    copy = _copy_of_sample(tmp_path)
    before = _wide(copy)
    summary = _model_run_cli(f"sqlite:///{copy}", "--changes", "40", "--at", "2026-12-01T06:00:00Z")
    after = _wide(copy)

    rewritten = {c for c in after if after[c][-1] != before[c][-1]}
    differing = sum(
        1
        for c in rewritten
        for old, new in zip(before[c][:-1], after[c][:-1], strict=True)
        if old != new
    )
    assert summary == {
        "updated_at": "2026-12-01T06:00:00.000000+00:00",
        "customers_changed": 40,
        "values_changed": differing,
        "customers_restamped": 0,
    }
    assert len(rewritten) == 40
    # Recomputed equal values are no change: fewer than every attribute of every customer.
    assert 40 <= differing < 40 * 9
    # The long table has one row per value that changed, and no other.
    assert len(_long_rows(copy, "2026-12-01 06:00:00")) == differing


def test_rewrite_unchanged_restamps_other_customers_with_identical_values(tmp_path):
    plain, restamping = _copy_of_sample(tmp_path), tmp_path / "restamping.sqlite"
    restamping.write_bytes(plain.read_bytes())
    before = _wide(plain)
    at = ("--at", "2026-12-01T06:00:00Z", "--seed", "7")
    without = _model_run_cli(f"sqlite:///{plain}", "--changes", "20", *at)
    summary = _model_run_cli(
        f"sqlite:///{restamping}", "--changes", "20", "--rewrite-unchanged", "15", *at
    )

    assert summary == {**without, "customers_restamped": 15}
    changed_alone, both = _wide(plain), _wide(restamping)
    restamped = {c for c in both if both[c] != changed_alone[c]}
    assert len(restamped) == 15
    for customer in restamped:
        assert both[customer][:-1] == before[customer][:-1]  # identical values
        assert both[customer][-1] == "2026-12-01 06:00:00"  # a new updated-at
    # The 20 changed customers are the same with or without the option.
    assert {c for c in both if both[c][-1] == "2026-12-01 06:00:00"} - restamped == {
        c for c in changed_alone if changed_alone[c][-1] == "2026-12-01 06:00:00"
    }
    # In the long table each restamped customer has every attribute, with its own value.
    long_rows = _long_rows(restamping, "2026-12-01 06:00:00")
    for customer in restamped:
        mine = [row for row in long_rows if row[0] == customer]
        assert len(mine) == 9
        assert {name: value for _, name, value in mine}["segment"] == before[customer][7]
