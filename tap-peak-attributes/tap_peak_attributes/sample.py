"""`peak-sample`: write Peak-like Customer Intelligence outputs to SQLite or PostgreSQL.

Peak publishes no schema for its outputs, so this generator writes the two shapes its
solutions commonly produce (see README, "Sample warehouse"):

- `customer_attributes` (wide): one row per customer, one column per attribute.
- `customer_attribute_changes` (long): one row per changed attribute per model run.

`generate` writes model run 1 for every customer; `model-run` simulates a later run that
changes some customers: their wide row is rewritten with a new `updated_at`, and only the
attributes whose value really changed get a long row; `--rewrite-unchanged N` also stores N
others again with identical values and the new `updated_at` (Peak stores a recomputed
status even when it did not change). Each command prints one JSON line on stdout, e.g.
`{"updated_at": ..., "customers_changed": 25, "values_changed": 61, "customers_restamped": 0}`.
The bundled sample is exactly `generate --customers 1200 --seed 42` followed by
`model-run --changes 150`.

Writes use one transaction and the driver's bulk path (executemany on SQLite, COPY on
PostgreSQL): a million wide rows take seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa

from tap_peak_attributes.errors import TapPeakError
from tap_peak_attributes.timestamps import format_utc, to_utc

WIDE_TABLE = "customer_attributes"
LONG_TABLE = "customer_attribute_changes"
#: Model run 1 of the bundled sample; `generate --at` defaults to it so reruns are identical.
FIRST_RUN_AT = dt.datetime(2026, 11, 21, 6, 0, tzinfo=dt.UTC)
#: `model-run` without `--at` happens this long after the newest `updated_at`, or now if
#: that would be in the future (the tap holds back rows stamped after a sync starts).
MODEL_RUN_INTERVAL = dt.timedelta(days=7)

SEGMENTS = (
    "loyal_high_value",
    "at_risk",
    "new_customer",
    "bargain_hunter",
    "dormant",
    "occasional",
)
PRODUCTS = (
    "wireless_headphones",
    "running_shoes",
    "coffee_machine",
    "yoga_mat",
    "smart_watch",
    "denim_jacket",
    "air_fryer",
    "desk_lamp",
    "backpack",
    "sunglasses",
    "bed_linen_set",
    "bluetooth_speaker",
)
#: Attribute columns of the wide table, in table order (after `customer_id`).
ATTRIBUTES = (
    "churn_probability",
    "churn_risk",
    "lifetime_value",
    "propensity_electronics",
    "propensity_fashion",
    "propensity_home",
    "next_best_product",
    "segment",
    "is_high_value",
)
HIGH_VALUE_THRESHOLD = 2000.0


def _tables(metadata: sa.MetaData, schema: str | None, dialect: str) -> tuple[sa.Table, sa.Table]:
    # The tap orders SQLite rows by a normalising expression (see README), which no index
    # serves; leaving those indexes out keeps the bundled file small.
    ordered = dialect != "sqlite"
    wide = sa.Table(
        WIDE_TABLE,
        metadata,
        sa.Column("customer_id", sa.String(16)),
        sa.Column("churn_probability", sa.Float),
        sa.Column("churn_risk", sa.String(8)),
        sa.Column("lifetime_value", sa.Numeric(12, 2, asdecimal=False)),
        sa.Column("propensity_electronics", sa.Float),
        sa.Column("propensity_fashion", sa.Float),
        sa.Column("propensity_home", sa.Float),
        sa.Column("next_best_product", sa.String(64)),
        sa.Column("segment", sa.String(32)),
        sa.Column("is_high_value", sa.Boolean),
        sa.Column("updated_at", sa.DateTime),
        sa.Index(f"ix_{WIDE_TABLE}_customer_id", "customer_id", unique=True),
        *(
            [sa.Index(f"ix_{WIDE_TABLE}_updated_at", "updated_at", "customer_id")]
            if ordered
            else []
        ),
        schema=schema,
    )
    long = sa.Table(
        LONG_TABLE,
        metadata,
        sa.Column("customer_id", sa.String(16)),
        sa.Column("attribute_name", sa.String(64)),
        sa.Column("attribute_value", sa.String(256)),
        sa.Column("updated_at", sa.DateTime),
        *(
            [sa.Index(f"ix_{LONG_TABLE}_updated_at", "updated_at", "customer_id")]
            if ordered
            else []
        ),
        schema=schema,
    )
    return wide, long


@dataclass
class CustomerAttributes:
    """One customer's predictions from one model run."""

    customer_id: str
    churn_probability: float
    churn_risk: str
    lifetime_value: float
    propensity_electronics: float
    propensity_fashion: float
    propensity_home: float
    next_best_product: str
    segment: str
    is_high_value: bool

    def values(self) -> tuple[t.Any, ...]:
        """Attribute values in `ATTRIBUTES` order."""
        return (
            self.churn_probability,
            self.churn_risk,
            self.lifetime_value,
            self.propensity_electronics,
            self.propensity_fashion,
            self.propensity_home,
            self.next_best_product,
            self.segment,
            self.is_high_value,
        )


def churn_risk(probability: float) -> str:
    """Peak-style risk band derived from the churn probability."""
    if probability >= 0.6:
        return "high"
    if probability >= 0.3:
        return "medium"
    return "low"


def attribute_text(value: object) -> str:
    """How a value is written to the long table's text `attribute_value` column."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _new_customer(rng: random.Random, customer_id: str) -> CustomerAttributes:
    # Cheap skewed draws (most customers unlikely to churn, a long tail of high value):
    # a million customers must generate in seconds.
    draw = rng.random
    probability = round(draw() ** 2.5, 4)
    ltv = round(60.0 / (0.02 + draw() ** 1.5), 2)
    return CustomerAttributes(
        customer_id=customer_id,
        churn_probability=probability,
        churn_risk=churn_risk(probability),
        lifetime_value=ltv,
        propensity_electronics=round(draw(), 4),
        propensity_fashion=round(draw(), 4),
        propensity_home=round(draw(), 4),
        next_best_product=PRODUCTS[int(draw() * len(PRODUCTS))],
        segment=SEGMENTS[int(draw() * len(SEGMENTS))],
        is_high_value=ltv >= HIGH_VALUE_THRESHOLD,
    )


def _rerun(rng: random.Random, old: CustomerAttributes) -> CustomerAttributes:
    """A later model run: churn and value always move, the rest sometimes."""
    probability = round(min(0.999, max(0.001, old.churn_probability + rng.gauss(0, 0.15))), 4)
    ltv = round(old.lifetime_value * rng.uniform(0.9, 1.25), 2)

    def maybe(value: float) -> float:
        return round(rng.random(), 4) if rng.random() < 0.5 else value

    return CustomerAttributes(
        customer_id=old.customer_id,
        churn_probability=probability,
        churn_risk=churn_risk(probability),
        lifetime_value=ltv,
        propensity_electronics=maybe(old.propensity_electronics),
        propensity_fashion=maybe(old.propensity_fashion),
        propensity_home=maybe(old.propensity_home),
        next_best_product=(rng.choice(PRODUCTS) if rng.random() < 0.3 else old.next_best_product),
        segment=rng.choice(SEGMENTS) if rng.random() < 0.2 else old.segment,
        is_high_value=ltv >= HIGH_VALUE_THRESHOLD,
    )


def customer_id(number: int) -> str:
    """Fixed-width ids, so text order equals numeric order (C0000001 ...)."""
    return f"C{number:07d}"


def _naive_utc(at: dt.datetime) -> dt.datetime:
    return to_utc(at).replace(tzinfo=None)


def _stored_timestamp(engine: sa.Engine, at: dt.datetime) -> object:
    """SQLite gets the text a warehouse export typically holds: `2026-11-21 06:00:00`."""
    naive = _naive_utc(at)
    if engine.dialect.name == "sqlite":
        return naive.strftime("%Y-%m-%d %H:%M:%S")
    return naive


def _stored_bool(engine: sa.Engine, value: bool) -> object:
    return int(value) if engine.dialect.name == "sqlite" else value


def _bulk_insert(conn: sa.Connection, table: sa.Table, rows: t.Iterable[tuple]) -> None:
    """Insert through the driver's fastest path: COPY on PostgreSQL, executemany else."""
    columns = [c.name for c in table.columns]
    dialect = conn.dialect
    preparer = dialect.identifier_preparer
    target = preparer.format_table(table)
    column_list = ", ".join(preparer.quote(c) for c in columns)
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {target} ({column_list}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marker = _placeholder(conn)
    placeholders = ", ".join([marker] * len(columns))
    batch: list[tuple] = []
    statement = f"INSERT INTO {target} ({column_list}) VALUES ({placeholders})"
    for row in rows:
        batch.append(row)
        if len(batch) >= 50_000:
            conn.exec_driver_sql(statement, batch)
            batch = []
    if batch:
        conn.exec_driver_sql(statement, batch)


def _placeholder(conn: sa.Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _bulk_update(conn: sa.Connection, wide: sa.Table, rows: t.Iterable[tuple]) -> None:
    """Rewrite whole wide rows by customer id, through the driver (values already stored-form).

    SQLAlchemy's typed binds would reformat SQLite's text timestamps; the driver keeps the
    same storage form `generate` used.
    """
    preparer = conn.dialect.identifier_preparer
    marker = _placeholder(conn)
    assignments = ", ".join(
        f"{preparer.quote(name)} = {marker}" for name in (*ATTRIBUTES, "updated_at")
    )
    statement = (
        f"UPDATE {preparer.format_table(wide)} SET {assignments} "
        f"WHERE {preparer.quote('customer_id')} = {marker}"
    )
    conn.exec_driver_sql(statement, list(rows))


def _default_schema(engine: sa.Engine, schema: str | None) -> str | None:
    """SQLite has no schemas; elsewhere the tables go to `publish` like Peak's examples."""
    if engine.dialect.name == "sqlite":
        return None
    return schema or "publish"


def generate(
    url: str,
    customers: int,
    *,
    seed: int = 42,
    at: dt.datetime = FIRST_RUN_AT,
    schema: str | None = None,
    long_table: bool = True,
) -> None:
    """(Re)create both tables with model run 1 for `customers` customers."""
    engine = sa.create_engine(url)
    try:
        schema = _default_schema(engine, schema)
        metadata = sa.MetaData()
        wide, long = _tables(metadata, schema, engine.dialect.name)
        rng = random.Random(seed)  # noqa: S311 - reproducible sample data, not secrets
        stamp = _stored_timestamp(engine, at)
        with engine.begin() as conn:
            if schema:
                conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
            metadata.drop_all(conn)
            metadata.create_all(conn, tables=[wide, long] if long_table else [wide])
            people = [_new_customer(rng, customer_id(n)) for n in range(1, customers + 1)]
            _bulk_insert(
                conn,
                wide,
                (
                    (p.customer_id, *p.values()[:-1], _stored_bool(engine, p.is_high_value), stamp)
                    for p in people
                ),
            )
            if long_table:
                _bulk_insert(
                    conn,
                    long,
                    (
                        (p.customer_id, name, attribute_text(value), stamp)
                        for p in people
                        for name, value in zip(ATTRIBUTES, p.values(), strict=True)
                    ),
                )
    finally:
        engine.dispose()


def _read_customers(conn: sa.Connection, wide: sa.Table) -> list[CustomerAttributes]:
    columns = [wide.c.customer_id, *(wide.c[name] for name in ATTRIBUTES)]
    rows = conn.execute(sa.select(*columns).order_by(wide.c.customer_id)).all()
    return [
        CustomerAttributes(
            row[0],
            float(row[1]),
            row[2],
            float(row[3]),
            float(row[4]),
            float(row[5]),
            float(row[6]),
            row[7],
            row[8],
            bool(row[9]),
        )
        for row in rows
        if row[0] is not None
    ]


@dataclass(frozen=True)
class ModelRunResult:
    """What one simulated model run wrote."""

    at: dt.datetime
    #: Customers the model recomputed with new predictions (sorted).
    changed: list[str]
    #: Attribute values that really differ from before: a recomputed equal value is no
    #: change (Braze is billed a data point per value sent).
    values_changed: int
    #: Customers stored again with identical values and the new updated-at (sorted).
    restamped: list[str]

    def summary(self) -> dict[str, t.Any]:
        """The machine-readable line `peak-sample model-run` prints on stdout."""
        return {
            "updated_at": format_utc(self.at),
            "customers_changed": len(self.changed),
            "values_changed": self.values_changed,
            "customers_restamped": len(self.restamped),
        }


def model_run(
    url: str,
    changes: int,
    *,
    at: dt.datetime | None = None,
    seed: int = 0,
    schema: str | None = None,
) -> list[str]:
    """Simulate a new model run changing `changes` customers; return their ids (sorted)."""
    return simulate_model_run(url, changes, at=at, seed=seed, schema=schema).changed


def simulate_model_run(
    url: str,
    changes: int,
    *,
    rewrite_unchanged: int = 0,
    at: dt.datetime | None = None,
    seed: int = 0,
    schema: str | None = None,
) -> ModelRunResult:
    """A model run: new predictions for some customers, identical ones stored for others.

    `changes` customers get new predictions; `rewrite_unchanged` others are stored again
    with identical values and the new updated-at. Peak stores a recomputed status even
    when its value did not change; such a row is new to the tap (its updated-at moved) but
    holds nothing new for Braze. In the long table a changed customer gets a row per
    attribute whose value changed, a restamped one a row per attribute with its identical
    value.
    """
    engine = sa.create_engine(url)
    try:
        schema = _default_schema(engine, schema)
        metadata = sa.MetaData()
        wide, long = _tables(metadata, schema, engine.dialect.name)
        with engine.begin() as conn:
            has_long = sa.inspect(conn).has_table(LONG_TABLE, schema=schema)
            if at is None:
                latest = conn.execute(sa.select(sa.func.max(wide.c.updated_at))).scalar()
                if latest is None:
                    msg = f"{WIDE_TABLE} is empty: run `peak-sample generate` first"
                    raise TapPeakError(msg)
                now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
                at = min(to_utc(latest) + MODEL_RUN_INTERVAL, now)
            stamp = _stored_timestamp(engine, at)
            current = _read_customers(conn, wide)
            rng = random.Random(seed)  # noqa: S311 - reproducible sample data
            chosen = sorted(
                rng.sample(current, min(changes, len(current))), key=lambda c: c.customer_id
            )
            updated = [_rerun(rng, old) for old in chosen]
            # A separate draw, so `--changes N` alone writes what it always wrote.
            picked = {c.customer_id for c in chosen}
            others = [c for c in current if c.customer_id not in picked]
            restamp_rng = random.Random(f"restamp-{seed}")  # noqa: S311 - sample data
            restamped = sorted(
                restamp_rng.sample(others, min(max(rewrite_unchanged, 0), len(others))),
                key=lambda c: c.customer_id,
            )
            rewritten = [*updated, *restamped]
            if rewritten:
                _bulk_update(
                    conn,
                    wide,
                    (
                        (
                            *new.values()[:-1],
                            _stored_bool(engine, new.is_high_value),
                            stamp,
                            new.customer_id,
                        )
                        for new in rewritten
                    ),
                )
            changed_values = [
                (new.customer_id, name, value)
                for old, new in zip(chosen, updated, strict=True)
                for name, value, before in zip(ATTRIBUTES, new.values(), old.values(), strict=True)
                if value != before
            ]
            if has_long:
                same_values = [
                    (same.customer_id, name, value)
                    for same in restamped
                    for name, value in zip(ATTRIBUTES, same.values(), strict=True)
                ]
                _bulk_insert(
                    conn,
                    long,
                    (
                        (customer, name, attribute_text(value), stamp)
                        for customer, name, value in [*changed_values, *same_values]
                    ),
                )
        return ModelRunResult(
            at=to_utc(at),
            changed=[c.customer_id for c in chosen],
            values_changed=len(changed_values),
            restamped=[c.customer_id for c in restamped],
        )
    finally:
        engine.dispose()


def _parse_at(text: str) -> dt.datetime:
    try:
        return to_utc(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    """The `peak-sample` command line."""
    parser = argparse.ArgumentParser(
        prog="peak-sample", description="Write Peak-like customer attribute outputs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="(re)create the tables with model run 1")
    gen.add_argument(
        "--url", required=True, help="SQLAlchemy URL (sqlite:///x.db, postgresql+psycopg://...)"
    )
    gen.add_argument("--customers", type=int, required=True)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--at", type=_parse_at, default=FIRST_RUN_AT, help="model run time (ISO)")
    gen.add_argument("--schema", help="target schema (default publish; ignored for SQLite)")
    gen.add_argument("--no-long", action="store_true", help=f"skip the {LONG_TABLE} table")
    run = commands.add_parser("model-run", help="simulate a later model run")
    run.add_argument("--url", required=True)
    run.add_argument("--changes", type=int, required=True, help="customers whose attributes change")
    run.add_argument(
        "--rewrite-unchanged",
        type=int,
        default=0,
        metavar="N",
        help="also store N other customers again with identical values and the new "
        "updated-at, as Peak does when it stores a recomputed status",
    )
    run.add_argument(
        "--at",
        type=_parse_at,
        help="model run time (default: newest updated_at + 7 days, or now if that is later)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--schema", help="target schema (default publish; ignored for SQLite)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `peak-sample` console script."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if args.command == "generate":
            generate(
                args.url,
                args.customers,
                seed=args.seed,
                at=args.at,
                schema=args.schema,
                long_table=not args.no_long,
            )
            summary = f"generated {args.customers} customers"
            facts = {"customers": args.customers, "updated_at": format_utc(args.at)}
        else:
            result = simulate_model_run(
                args.url,
                args.changes,
                rewrite_unchanged=args.rewrite_unchanged,
                at=args.at,
                seed=args.seed,
                schema=args.schema,
            )
            facts = result.summary()
            summary = (
                f"model run changed {facts['customers_changed']} customers "
                f"({facts['values_changed']} attribute values) and restamped "
                f"{facts['customers_restamped']} unchanged"
            )
    except (TapPeakError, sa.exc.SQLAlchemyError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"peak-sample: error: {first_line}", file=sys.stderr)
        sys.exit(1)
    elapsed = time.perf_counter() - started
    print(f"peak-sample: {summary} in {elapsed:.1f}s", file=sys.stderr)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
