"""Run the real pipeline (`meltano run`) against a Braze sandbox and check what arrived.

The end-to-end tests drive Meltano exactly as a user does: `.venv/bin/meltano run ...` as
a subprocess from the project root, configured through environment variables. Each
`Pipeline` gets its own warehouse copy, its own Meltano state (file backend under the
test's tmp_path, plus a unique `--state-id-suffix`) and its own output paths, so tests
never see each other's state or files.

The expected Braze profiles are computed here from the warehouse with the stdlib `sqlite3`
module, independently of the tap's code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
MELTANO = str(VENV_BIN / "meltano")
PEAK_SAMPLE = str(VENV_BIN / "peak-sample")
PROJECT_SYS_DIR = PROJECT_ROOT / ".meltano"
SAMPLE_WAREHOUSE = (
    PROJECT_ROOT / "tap-peak-attributes" / "tap_peak_attributes" / "data" / "peak_warehouse.sqlite"
)
WIDE_TABLE = "customer_attributes"
ATTRIBUTE_PREFIX = "peak_"
TAP = "tap-peak-attributes"
TARGET = "target-braze"
ENVIRONMENT = "dev"
# Plugin settings and Meltano settings of the caller's shell must not leak into a test run.
_SCRUBBED_PREFIXES = ("TAP_", "TARGET_", "MELTANO_")
RUN_TIMEOUT_SECONDS = 300


def postgres_server_url() -> str:
    """TEST_POSTGRES_URL, or the loopback server scripts/postgres starts (never skipped).

    scripts/test exports TEST_POSTGRES_URL; a test run on its own starts the server here.
    A failure to start it fails the test: a PostgreSQL test that silently skipped would
    prove nothing.
    """
    url = os.environ.get("TEST_POSTGRES_URL")
    if url:
        return url
    started = subprocess.run(
        [str(PROJECT_ROOT / "scripts" / "postgres")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if started.returncode != 0 or not started.stdout.strip():
        msg = f"no PostgreSQL server (scripts/postgres failed): {started.stderr[-2000:]}"
        raise RuntimeError(msg)
    return started.stdout.strip().splitlines()[-1]


def ensure_plugins_installed() -> None:
    """`meltano install` once, if the project's plugins are not installed yet."""
    if (PROJECT_SYS_DIR / "extractors" / TAP).is_dir() and (
        PROJECT_SYS_DIR / "loaders" / TARGET
    ).is_dir():
        return
    result = subprocess.run(
        [MELTANO, "install"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"meltano install failed:\n{result.stdout}\n{result.stderr}")


def session_directory(basetemp: Path) -> Path:
    """A directory every pytest-xdist worker of this session shares (and only this session).

    A worker's base temp is `<session's base temp>/popen-gwN`; without xdist it is the
    session's own.
    """
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built_once(basetemp: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`<session dir>/<name>`, made by `build(directory)` once per test session.

    Every xdist worker asks; the first builds under a file lock while the others wait, then
    all use the same directory (read only). A build that fails leaves nothing behind: the
    next test to ask tries again, and fails with its own error.
    """
    shared = session_directory(basetemp)
    directory = shared / name
    done = shared / f"{name}.built"
    with _exclusive(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            try:
                build(directory)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            done.touch()
    return directory


def init_ledger(
    ledger_url: str, rest_endpoint: str, api_key: str, workspace: str | None = None
) -> None:
    """`target-braze-ledger init`, as a production deployment does once before its first run.

    meltano.yml's `prod` environment sets `require_existing_ledger`: a run on a new ledger
    fails until it was created deliberately.
    """
    result = subprocess.run(
        [str(VENV_BIN / "target-braze-ledger"), "init"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)},
            "TARGET_BRAZE_LEDGER_URL": ledger_url,
            "TARGET_BRAZE_REST_ENDPOINT": rest_endpoint,
            "TARGET_BRAZE_API_KEY": api_key,
            **({"TARGET_BRAZE_LEDGER_WORKSPACE": workspace} if workspace else {}),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"target-braze-ledger init failed: {result.stderr}")


def private_meltano_directory(directory: Path) -> Path:
    """A `.meltano` system directory of this test session, sharing the installed plugins.

    Meltano writes each run's catalog, state and config files to `.meltano/run/<plugin>/`
    under fixed names, and keeps its run records in `.meltano/meltano.db`: two runs of the
    same plugin in one project at the same time overwrite each other's catalog (seen as
    "Invalid catalog" while someone else ran the tap). The session's runs get their own
    directory; the plugin virtualenvs are the project's, linked in.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for plugin_type in ("extractors", "loaders"):
        link = directory / plugin_type
        if not link.exists():
            link.symlink_to(PROJECT_SYS_DIR / plugin_type, target_is_directory=True)
    return directory


def base_environment(sys_dir: Path) -> dict[str, str]:
    """The caller's environment without plugin or Meltano settings, plus test defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["MELTANO_SYS_DIR_ROOT"] = str(sys_dir)
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["MELTANO_ENVIRONMENT"] = ENVIRONMENT
    return env


def _target_batch_directory(env: dict[str, str]) -> dict[str, str]:
    """Where a test moved the tap's BATCH files, target-braze reads (and cleans) them.

    meltano.yml points both at tap-peak-attributes' default directory; a test that sets
    another `storage.root` for its tap configures the target as a user would have to.
    """
    if "TARGET_BRAZE_BATCH_FILES_CLEANUP_DIR" in env:
        return {}
    for name, value in env.items():
        if name.startswith("TAP_") and name.endswith("_BATCH_CONFIG") and value.strip():
            root = (json.loads(value).get("storage") or {}).get("root")
            if root:
                parts = urlsplit(root)
                local = parts.netloc in ("", "localhost")
                directory = unquote(parts.path if local else parts.netloc + parts.path)
                return {
                    "TARGET_BRAZE_BATCH_FILES_DIR": directory,
                    "TARGET_BRAZE_BATCH_FILES_CLEANUP_DIR": directory,
                }
    return {}


@dataclass
class RunResult:
    """What one `meltano run` did."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr

    def describe(self) -> str:
        """The exit status and the end of the output, for assertion messages."""
        return f"exit {self.returncode}; output tail:\n{self.output[-6000:]}"


@dataclass
class Pipeline:
    """One isolated `tap -> target-braze` pipeline: warehouse, state, outputs, sandbox."""

    workdir: Path
    base_env: dict[str, str]
    sandbox_url: str
    api_key: str
    warehouse: Path | None = None
    tap: str = TAP
    suffix: str = field(default_factory=lambda: "e2e" + uuid.uuid4().hex[:12])
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.report_path = self.workdir / "run-report.json"
        self.rejects_path = self.workdir / "rejected-records.jsonl"
        self.ledger_path = self.workdir / "ledger.sqlite"

    @property
    def state_id(self) -> str:
        """Meltano's state id for this pipeline: `<env>:<tap>-to-<target>:<suffix>`."""
        return f"{ENVIRONMENT}:{self.tap}-to-{TARGET}:{self.suffix}"

    def env(self) -> dict[str, str]:
        """The environment of a run: sandbox, outputs, state backend, extra settings."""
        env = dict(self.base_env)
        # Meltano's system database, as meltano.yml has it: a SQLite transaction per state
        # write, which a kill -9 cannot leave half done. The local file backend (file://)
        # truncates, then writes, state.json: killed in between, every later run fails
        # on the empty file (README: "Where Meltano keeps the bookmark").
        env["MELTANO_STATE_BACKEND_URI"] = "systemdb"
        env["TARGET_BRAZE_REST_ENDPOINT"] = self.sandbox_url
        env["TARGET_BRAZE_API_KEY"] = self.api_key
        env["TARGET_BRAZE_RUN_REPORT_PATH"] = str(self.report_path)
        env["TARGET_BRAZE_REJECTED_RECORDS_PATH"] = str(self.rejects_path)
        env["TARGET_BRAZE_RETRY_BACKOFF_SECONDS"] = "0.05"
        env["TARGET_BRAZE_LEDGER_URL"] = f"sqlite:///{self.ledger_path}"
        if self.warehouse is not None:
            env["TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL"] = f"sqlite:///{self.warehouse}"
        env.update(self.settings)
        env.update(_target_batch_directory(env))
        return env

    def command(
        self, *options: str, force: bool = False, run_options: tuple[str, ...] = ()
    ) -> list[str]:
        """`meltano [options] run --state-id-suffix S [run options] [--force] <tap> <target>`."""
        command = [MELTANO, *options, "run", "--state-id-suffix", self.suffix, *run_options]
        if force:
            command.append("--force")
        return [*command, self.tap, TARGET]

    def run(
        self,
        *options: str,
        force: bool = False,
        extra_env: dict[str, str] | None = None,
        timeout: float = RUN_TIMEOUT_SECONDS,
        run_options: tuple[str, ...] = (),
    ) -> RunResult:
        """Run the pipeline to its end; remove the previous run's report first."""
        self.report_path.unlink(missing_ok=True)
        env = self.env() | (extra_env or {})
        completed = subprocess.run(
            self.command(*options, force=force, run_options=run_options),
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return RunResult(completed.returncode, completed.stdout, completed.stderr)

    def start(self, *, force: bool = False, log_path: Path) -> subprocess.Popen[bytes]:
        """Start the pipeline in its own process group (so all of it can be killed)."""
        self.report_path.unlink(missing_ok=True)
        with log_path.open("ab") as log:
            return subprocess.Popen(
                self.command(force=force),
                cwd=PROJECT_ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def system_database(self) -> Path:
        """Meltano's system database (`<sys dir>/meltano.db`): run records and state."""
        return Path(self.base_env["MELTANO_SYS_DIR_ROOT"]) / "meltano.db"

    def stored_state(self) -> dict[str, Any]:
        """Meltano's stored state for this pipeline (completed merged with partial).

        Read from the `systemdb` state backend: table `state`, one row per state id, its
        `partial_state` and `completed_state` JSON; Meltano resumes from partial merged
        over completed. Read-only, and consistent while a run writes it (a transaction).
        """
        if not self.system_database.exists():
            return {}
        uri = f"file:{self.system_database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as connection:
            has_table = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state'"
            ).fetchone()
            row = (
                has_table
                and connection.execute(
                    "SELECT partial_state, completed_state FROM state WHERE state_id = ?",
                    (self.state_id,),
                ).fetchone()
            )
        if not row:
            return {}
        partial, completed = (json.loads(text) if text else {} for text in row)
        merged = _deep_merge(partial or {}, completed or {})
        state: dict[str, Any] = merged.get("singer_state", {})
        return state

    def meltano_state_get(self) -> dict[str, Any]:
        """`meltano state get <state id>`: the state as Meltano itself reports it."""
        result = subprocess.run(
            [MELTANO, "state", "get", self.state_id],
            cwd=PROJECT_ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"meltano state get failed: {result.stderr[-2000:]}")
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded.get("singer_state", {})

    def bookmark(self, stream: str = WIDE_TABLE) -> tuple[str, str] | None:
        """The stored `(replication_key_value, replication_key_last_id)`, if any."""
        entry = self.stored_state().get("bookmarks", {}).get(stream)
        if not entry or "replication_key_value" not in entry:
            return None
        return entry["replication_key_value"], entry["replication_key_last_id"]

    def report(self) -> dict[str, Any]:
        """The run report target-braze wrote."""
        loaded: dict[str, Any] = json.loads(self.report_path.read_text())
        return loaded

    def rejects(self) -> list[dict[str, Any]]:
        """The rejected-records JSONL, parsed."""
        if not self.rejects_path.exists():
            return []
        return [json.loads(line) for line in self.rejects_path.read_text().splitlines() if line]


def _deep_merge(src: dict[str, Any], dest: dict[str, Any]) -> dict[str, Any]:
    result = json.loads(json.dumps(dest))
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_merge(value, result[key])
        else:
            result[key] = value
    return result


# Warehouse -------------------------------------------------------------------------------


def copy_sample_warehouse(destination: Path) -> Path:
    """A private copy of the bundled sample warehouse."""
    shutil.copyfile(SAMPLE_WAREHOUSE, destination)
    return destination


def generate_warehouse(destination: Path, customers: int, seed: int) -> Path:
    """`peak-sample generate` a wide table of `customers` customers (no long table)."""
    _peak_sample(
        "generate",
        "--url",
        f"sqlite:///{destination}",
        "--customers",
        str(customers),
        "--seed",
        str(seed),
        "--no-long",
    )
    return destination


def model_run(warehouse: Path, changes: int, seed: int) -> dt.datetime:
    """`peak-sample model-run`: `changes` customers get new values and updated_at = now.

    Stamped now, not at peak-sample's default (newest + 7 days): the tap leaves rows stamped
    after its sync started for the next run, and the sample's last model run is recent.
    Returns the stamp.
    """
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    _peak_sample(
        "model-run",
        "--url",
        f"sqlite:///{warehouse}",
        "--changes",
        str(changes),
        "--seed",
        str(seed),
        "--at",
        at.isoformat(),
    )
    return at


def _peak_sample(*args: str) -> None:
    result = subprocess.run(
        [PEAK_SAMPLE, *args], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"peak-sample {args[0]} failed: {result.stderr}")


@dataclass(frozen=True)
class WarehouseRow:
    """One customer as the warehouse holds it, with the profile Braze should end with."""

    customer_id: str
    updated_at: str
    attributes: dict[str, Any]


def read_warehouse(warehouse: Path) -> dict[str, WarehouseRow]:
    """Every customer of the wide table, by id, with the attributes Braze should hold.

    Attribute keys are the column names with the `peak_` prefix, without `customer_id`
    and `updated_at`; BOOLEAN columns (0/1 in SQLite) become true/false, numbers floats;
    a NULL is no attribute at all (a null removes the attribute in Braze).
    `updated_at` is normalised to `YYYY-MM-DD HH:MM:SS.ffffff` for ordering.
    """
    connection = sqlite3.connect(f"file:{warehouse}?mode=ro", uri=True)
    try:
        columns = connection.execute(f"PRAGMA table_info({WIDE_TABLE})").fetchall()
        names = [column[1] for column in columns]
        types = {column[1]: (column[2] or "").upper() for column in columns}
        rows = connection.execute(f"SELECT * FROM {WIDE_TABLE}").fetchall()
    finally:
        connection.close()
    customers: dict[str, WarehouseRow] = {}
    for row in rows:
        values = dict(zip(names, row, strict=True))
        customer = str(values.pop("customer_id"))
        updated_at = normalise_timestamp(str(values.pop("updated_at")))
        attributes: dict[str, Any] = {}
        for name, stored in values.items():
            if stored is None:
                continue
            value: Any = stored
            if types[name].startswith("BOOL"):
                value = bool(stored)
            elif isinstance(stored, int | float):
                value = float(stored)
            attributes[ATTRIBUTE_PREFIX + name.lower()] = value
        customers[customer] = WarehouseRow(customer, updated_at, attributes)
    return customers


def normalise_timestamp(value: str) -> str:
    """`2026-11-21 06:00:00`, `2026-11-21T06:00:00.000000+00:00` -> `2026-11-21 06:00:00.000000`.

    Both the warehouse's text and the tap's bookmark are UTC; the fixed-width form orders
    correctly as text.
    """
    text = value.replace("T", " ")
    for suffix in ("+00:00", "Z"):
        text = text.removesuffix(suffix)
    if "." not in text:
        text += ".000000"
    whole, fraction = text.split(".")
    return f"{whole}.{fraction.ljust(6, '0')[:6]}"


def rows_up_to(
    warehouse: dict[str, WarehouseRow], bookmark: tuple[str, str] | None
) -> list[WarehouseRow]:
    """The rows at or before a `(replication_key_value, last_id)` bookmark."""
    if bookmark is None:
        return []
    limit = (normalise_timestamp(bookmark[0]), bookmark[1])
    return [row for row in warehouse.values() if (row.updated_at, row.customer_id) <= limit]


# Sandbox read-back ---------------------------------------------------------------------


def sandbox_attributes(sandbox: Any) -> dict[str, dict[str, Any]]:
    """Custom attributes of every profile the sandbox holds, by external_id."""
    return {
        profile["external_id"]: profile.get("custom_attributes") or {}
        for profile in sandbox.profiles()
        if profile.get("external_id") is not None
    }


def same_value(expected: Any, actual: Any) -> bool:
    """Equal as Braze stores it: numbers as floats (exactly), everything else by type and value."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, float):
        return isinstance(actual, int | float) and math.isclose(
            expected, float(actual), rel_tol=1e-12, abs_tol=1e-12
        )
    return type(expected) is type(actual) and expected == actual


def profile_differences(expected: dict[str, Any], actual: dict[str, Any] | None) -> list[str]:
    """What differs between one expected profile and the sandbox's (empty: identical)."""
    if actual is None:
        return ["missing from the sandbox"]
    problems = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual:
            problems.append(f"{key}: missing (expected {expected[key]!r})")
        elif key not in expected:
            problems.append(f"{key}: unexpected attribute {actual[key]!r}")
        elif not same_value(expected[key], actual[key]):
            problems.append(f"{key}: {actual[key]!r} != expected {expected[key]!r}")
    return problems


def mismatches(
    expected: dict[str, dict[str, Any]],
    actual: dict[str, dict[str, Any]],
    *,
    exact_population: bool = True,
) -> list[str]:
    """Every customer whose sandbox profile differs from the expected one.

    With `exact_population` the sandbox must hold no other profile either.
    """
    problems = []
    for customer, attributes in sorted(expected.items()):
        for problem in profile_differences(attributes, actual.get(customer)):
            problems.append(f"{customer}: {problem}")
    if exact_population:
        problems.extend(
            f"{extra}: in the sandbox but not expected"
            for extra in sorted(actual.keys() - expected.keys())
        )
    return problems


def summarise(problems: list[str], limit: int = 20) -> str:
    """The first few problems and how many there are."""
    shown = "\n  ".join(problems[:limit])
    return f"{len(problems)} differences, first {min(limit, len(problems))}:\n  {shown}"


def expected_profiles(warehouse: Path) -> dict[str, dict[str, Any]]:
    """The attributes Braze should hold for each customer of the warehouse."""
    return {customer: row.attributes for customer, row in read_warehouse(warehouse).items()}


def exported_attributes(sandbox: Any, customers: list[str]) -> dict[str, dict[str, Any]]:
    """Custom attributes read back through Braze's `/users/export/ids` (50 ids a call)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(customers), 50):
        answer = sandbox.export(external_ids=customers[start : start + 50])
        for user in answer["users"]:
            found[user["external_id"]] = user.get("custom_attributes") or {}
    return found


def newest_row(warehouse: dict[str, WarehouseRow]) -> tuple[str, str]:
    """The greatest `(updated_at, customer_id)` of the warehouse."""
    return max((row.updated_at, row.customer_id) for row in warehouse.values())
