"""The bundled sample warehouse: clean, two model runs, regenerable by `peak-sample`."""

from __future__ import annotations

import datetime as dt
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
