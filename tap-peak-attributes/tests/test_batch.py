"""BATCH messages: private files of msgspec JSON lines, exact bookmarks, stream maps applied,
leftovers removed, and a kill in the middle of a batch loses and repeats nothing."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from tap_peak_attributes import sample
from tap_peak_attributes.batch_files import BatchDirectory, BatchSettings
from tap_peak_attributes.incremental import LAST_ID_KEY

STREAM = "customer_attributes"
TAP_CLI = Path(sys.executable).with_name("tap-peak-attributes")
LEFTOVER = "tap-peak-attributes-0123456789abcdef0123456789abcdef-customer_attributes-000003.jsonl"


def batch_config(root: Path, compression: str = "none", size: int = 7, **storage) -> dict:
    return {
        "encoding": {"format": "jsonl", "compression": compression},
        "storage": {"root": root.as_uri(), **storage},
        "batch_size": size,
    }


def read_batch_file(url: str, compression: str) -> list[dict]:
    path = Path(urlsplit(url).path)
    data = path.read_bytes()
    if compression == "gzip":
        data = gzip.decompress(data)
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def batches(messages: list[dict]) -> list[tuple[dict, dict]]:
    """(BATCH message, the STATE that follows it) pairs."""
    pairs = []
    for index, message in enumerate(messages):
        if message["type"] == "BATCH":
            following = next(m for m in messages[index + 1 :] if m["type"] in {"STATE", "BATCH"})
            pairs.append((message, following))
    return pairs


def bookmark_of(state: dict, stream: str = STREAM) -> tuple[str, str]:
    entry = state["bookmarks"][stream]
    return entry["replication_key_value"], entry[LAST_ID_KEY]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_each_batch_file_holds_exactly_the_rows_between_two_bookmarks(
    warehouse_url, run_tap, tmp_path, compression
):
    sample.generate(warehouse_url, 50, seed=11)
    changed = sample.model_run(warehouse_url, 9, seed=2)  # two timestamps, ties in each
    root = tmp_path / "batches"
    config = {"sqlalchemy_url": warehouse_url}
    expected = run_tap(config).records()  # the same sync as RECORD messages
    assert len(expected) == 50

    run = run_tap({**config, "batch_config": batch_config(root, compression)})

    assert run.records() == []
    pairs = batches(run.messages)
    assert len(pairs) == 8  # 50 records, 7 per file
    previous: tuple[str, str] | None = None
    position = 0
    for batch, state in pairs:
        assert batch == {
            "type": "BATCH",
            "stream": STREAM,
            "encoding": {"format": "jsonl", "compression": compression},
            "manifest": batch["manifest"],
        }
        (url,) = batch["manifest"]
        assert url.startswith("file:///")
        assert url.endswith(".jsonl.gz" if compression == "gzip" else ".jsonl")
        records = read_batch_file(url, compression)
        assert records == expected[position : position + len(records)]
        position += len(records)
        # The STATE after the BATCH is the last row of its file; the file holds exactly
        # the rows after the previous STATE's bookmark.
        assert state["type"] == "STATE"
        current = bookmark_of(state["value"])
        assert current == (records[-1]["updated_at"], records[-1]["customer_id"])
        keys = [(r["updated_at"], r["customer_id"]) for r in expected]
        after_previous = [k for k in keys if previous is None or k > previous]
        assert [(r["updated_at"], r["customer_id"]) for r in records] == [
            k for k in after_previous if k <= current
        ]
        previous = current
    assert position == 50
    assert {r["customer_id"] for r in expected[-9:]} == set(changed)
    assert run.final_state == run_tap(config).final_state


def test_batch_files_are_private(run_tap, sqlite_url, tmp_path):
    sample.generate(sqlite_url, 10)
    root = tmp_path / "new" / "batches"
    run = run_tap({"sqlalchemy_url": sqlite_url, "batch_config": batch_config(root)})

    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    files = [
        Path(urlsplit(url).path) for batch, _ in batches(run.messages) for url in batch["manifest"]
    ]
    assert len(files) == 2
    for path in files:
        assert path.parent == root
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_directory_open_to_others_is_refused(run_cli, sqlite_url, tmp_path):
    sample.generate(sqlite_url, 3)
    root = tmp_path / "shared"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    run = run_cli({"sqlalchemy_url": sqlite_url, "batch_config": batch_config(root)})

    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1] == (
        f"tap-peak-attributes: error: batch_config.storage.root {root} is open to other users "
        "(mode 0755) and batch files hold customer data: chmod 700 it or name a new directory"
    )
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"storage": {"root": "s3://bucket/batches"}},
            "batch_config.storage.root must be a file:// URL of a local directory "
            "(e.g. file:///var/lib/peak/batches), not 's3://bucket/batches'",
        ),
        (
            {"storage": {"root": "/srv/plain/path"}},
            "batch_config.storage.root must be a file:// URL of a local directory "
            "(e.g. file:///var/lib/peak/batches), not '/srv/plain/path'",
        ),
        (
            {"encoding": {"format": "parquet"}},
            "batch_config.encoding.format: 'parquet' is not allowed; use one of: jsonl",
        ),
        (
            {"encoding": {"format": "jsonl", "compression": "zstd"}},
            "batch_config.encoding.compression: 'zstd' is not allowed; use one of: none, gzip",
        ),
    ],
)
def test_batch_settings_the_tap_cannot_honour_are_refused_in_one_line(
    run_cli, sqlite_url, tmp_path, change, expected
):
    sample.generate(sqlite_url, 3)
    config = {**batch_config(tmp_path / "b"), **change}
    run = run_cli({"sqlalchemy_url": sqlite_url, "batch_config": config})

    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1] == f"tap-peak-attributes: error: {expected}"


def test_files_a_stopped_run_left_are_removed_at_start_and_nothing_else(
    run_tap, sqlite_url, tmp_path
):
    sample.generate(sqlite_url, 3)
    root = tmp_path / "batches"
    root.mkdir(mode=0o700)
    ours = [
        LEFTOVER,
        LEFTOVER.replace("000003.jsonl", "000004.jsonl.gz"),
        LEFTOVER.replace("customer_attributes", "other_stream"),
    ]
    others = [
        "notes.txt",
        "tap-other-0123456789abcdef0123456789abcdef-x-000001.jsonl",
        LEFTOVER + ".bak",
        "x" + LEFTOVER,
    ]
    for name in ours + others:
        (root / name).write_text("{}\n")

    run = run_tap({"sqlalchemy_url": sqlite_url, "batch_config": batch_config(root)})

    left = {p.name for p in root.iterdir()}
    assert not left & set(ours)
    assert set(others) <= left
    written = {Path(urlsplit(u).path).name for b, _ in batches(run.messages) for u in b["manifest"]}
    assert left == set(others) | written | {"tap-peak-attributes.lock"}


def test_a_prefix_starts_every_file_name_and_bounds_the_cleanup(run_tap, sqlite_url, tmp_path):
    sample.generate(sqlite_url, 3)
    root = tmp_path / "batches"
    root.mkdir(mode=0o700)
    (root / LEFTOVER).write_text("{}\n")  # another pipeline's, without the prefix
    (root / f"acme-{LEFTOVER}").write_text("{}\n")
    run = run_tap(
        {"sqlalchemy_url": sqlite_url, "batch_config": batch_config(root, prefix="acme-")}
    )
    names = [Path(urlsplit(u).path).name for b, _ in batches(run.messages) for u in b["manifest"]]
    assert names
    assert all(n.startswith("acme-tap-peak-attributes-") for n in names)
    assert (root / LEFTOVER).exists()
    assert not (root / f"acme-{LEFTOVER}").exists()


def test_two_taps_never_share_a_directory(run_cli, sqlite_url, tmp_path):
    sample.generate(sqlite_url, 3)
    root = tmp_path / "batches"
    root.mkdir(mode=0o700)
    with (root / "tap-peak-attributes.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another tap writing there
        run = run_cli({"sqlalchemy_url": sqlite_url, "batch_config": batch_config(root)})
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == (
        f"tap-peak-attributes: error: another tap-peak-attributes is writing batch files to "
        f"{root}; give each pipeline its own batch_config.storage.root"
    )


STREAM_MAPS = {
    "alias and a computed property": {
        STREAM: {"__alias__": "customers", "peak_segment": "peak_segment.upper()"}
    },
    "filter": {STREAM: {"__filter__": "peak_churn_risk == 'high'"}},
    "a second stream from the same source": {
        STREAM: {"peak_next_best_product": "__NULL__"},
        "risky": {"__source__": STREAM, "__filter__": "peak_churn_probability > 0.5"},
    },
    "stream removed": {STREAM: None},
}


@pytest.mark.parametrize("stream_maps", STREAM_MAPS.values(), ids=STREAM_MAPS.keys())
def test_stream_maps_apply_to_batch_records_exactly_as_to_record_messages(
    run_tap, sqlite_url, tmp_path, stream_maps
):
    sample.generate(sqlite_url, 40, seed=3)
    config = {"sqlalchemy_url": sqlite_url, "stream_maps": stream_maps}
    as_records = run_tap(config)
    as_batches = run_tap({**config, "batch_config": batch_config(tmp_path / "b", size=6)})

    def schemas(run):
        return [m for m in run.messages if m["type"] == "SCHEMA"]

    assert schemas(as_batches) == schemas(as_records)
    expected: dict[str, list[dict]] = {}
    for message in as_records.messages:
        if message["type"] == "RECORD":
            expected.setdefault(message["stream"], []).append(message["record"])
    found: dict[str, list[dict]] = {}
    for batch, _ in batches(as_batches.messages):
        for url in batch["manifest"]:
            found.setdefault(batch["stream"], []).extend(read_batch_file(url, "none"))
    assert found == expected
    assert {m["stream"] for m in schemas(as_records)} >= set(found)
    assert as_batches.final_state == as_records.final_state


def test_batch_mode_is_reached_through_sync(run_tap, sqlite_url, tmp_path, monkeypatch):
    # The tap's batch writer replaces singer-sdk's `_sync_batches`; if singer-sdk stopped
    # calling it, its own batch mode (unmapped simplejson files) would run unnoticed.
    from tap_peak_attributes import streams

    sample.generate(sqlite_url, 5)
    calls = []
    original = streams.PeakAttributesStream._write_batches

    def spy(self, directory, context):
        calls.append(self.name)
        yield from original(self, directory, context)

    monkeypatch.setattr(streams.PeakAttributesStream, "_write_batches", spy)
    run = run_tap({"sqlalchemy_url": sqlite_url, "batch_config": batch_config(tmp_path / "b")})
    assert calls == [STREAM]
    assert len(batches(run.messages)) == 1


def test_a_stream_with_nothing_new_writes_no_file(run_tap, sqlite_url, tmp_path):
    sample.generate(sqlite_url, 5)
    root = tmp_path / "b"
    config = {"sqlalchemy_url": sqlite_url, "batch_config": batch_config(root)}
    first = run_tap(config)
    for batch, _ in batches(first.messages):
        for url in batch["manifest"]:
            os.unlink(urlsplit(url).path)  # the target settled them
    again = run_tap(config, first.final_state)
    assert batches(again.messages) == []
    assert [p.name for p in root.iterdir()] == ["tap-peak-attributes.lock"]


def test_relative_file_urls_are_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = BatchSettings.from_config({"storage": {"root": "file://output/batches"}})
    assert settings is not None
    assert settings.root == tmp_path / "output" / "batches"
    directory = BatchDirectory(settings)
    assert stat.S_IMODE(directory.path.stat().st_mode) == 0o700


# --- a killed or stopped run ---------------------------------------------------------


class TapProcess:
    """The tap's console script in batch mode, its stdout read without blocking."""

    def __init__(self, config_path: Path, state_path: Path | None = None) -> None:
        args = [str(TAP_CLI), "--config", str(config_path)]
        if state_path is not None:
            args += ["--state", str(state_path)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.process.stdout is not None
        self.fd = self.process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.pending = b""
        self.messages: list[dict] = []
        self.eof = False

    def read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self.eof = True
                return
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            self.messages.extend(json.loads(line) for line in lines if line)

    def announced(self) -> set[str]:
        return {
            Path(urlsplit(url).path).name
            for m in self.messages
            if m["type"] == "BATCH"
            for url in m["manifest"]
        }

    def stopped(self) -> bool:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] == "T"

    def freeze_mid_batch(self, root: Path, after_batches: int) -> str:
        """SIGSTOP the tap while it writes a file no BATCH announced yet; that file's name.

        Decided by progress: the tap is frozen when such a file exists, then everything it
        wrote to the pipe is read; if the file was announced in the meantime, or the tap no
        longer holds it open (closed, its BATCH message not yet written), it goes on.
        """
        deadline = time.monotonic() + 120  # a safety net only
        while time.monotonic() < deadline:
            self.read_available()
            assert not self.eof, "the tap finished before a batch could be interrupted"
            batches_seen = sum(m["type"] == "BATCH" for m in self.messages)
            open_files = self._unannounced(root)
            if batches_seen >= after_batches and open_files:
                self.process.send_signal(signal.SIGSTOP)
                while not self.stopped():
                    time.sleep(0.001)
                self.read_available()
                # Still open in the tap: being written, not a closed file whose BATCH
                # message is on its way (stopped there, the file outlives the run until
                # the next run removes it as a leftover, which this test is not about).
                still_open = [n for n in self._unannounced(root) if n in self.open_files()]
                if still_open:
                    (name,) = still_open
                    return name
                self.process.send_signal(signal.SIGCONT)
            time.sleep(0.001)
        pytest.fail("never saw a batch file being written")

    def open_files(self) -> set[str]:
        """Names of the files the tap holds open (its /proc fd links)."""
        names = set()
        for link in Path(f"/proc/{self.process.pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                names.add(Path(os.readlink(link)).name)
        return names

    def _unannounced(self, root: Path) -> list[str]:
        if not root.exists():
            return []
        announced = self.announced()
        return [
            p.name
            for p in root.iterdir()
            if p.name.startswith("tap-peak-attributes-") and p.name not in announced
        ]

    def finish(self) -> tuple[int, str]:
        os.set_blocking(self.fd, True)
        while not self.eof:
            self.read_available()
            if not self.eof:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    self.eof = True
                self.pending += chunk
                *lines, self.pending = self.pending.split(b"\n")
                self.messages.extend(json.loads(line) for line in lines if line)
        assert self.process.stderr is not None
        stderr = self.process.stderr.read().decode()
        return self.process.wait(), stderr

    def last_state(self) -> dict:
        return next(m["value"] for m in reversed(self.messages) if m["type"] == "STATE")

    def batch_records(self, compression: str = "none") -> list[dict]:
        """Records of the files announced before the last STATE, in order."""
        last_state_at = max(i for i, m in enumerate(self.messages) if m["type"] == "STATE")
        return [
            record
            for m in self.messages[:last_state_at]
            if m["type"] == "BATCH"
            for url in m["manifest"]
            for record in read_batch_file(url, compression)
        ]


def _write_json(path: Path, value: dict) -> Path:
    path.write_text(json.dumps(value))
    return path


@pytest.fixture
def big_warehouse(tmp_path) -> tuple[str, list[str]]:
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sample.generate(url, 60_000, long_table=False)
    return url, [sample.customer_id(n) for n in range(1, 60_001)]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_kill_9_in_the_middle_of_a_batch_resumes_with_nothing_lost_or_repeated(
    tmp_path, big_warehouse, compression
):
    url, everyone = big_warehouse
    root = tmp_path / "batches"
    config = {"sqlalchemy_url": url, "batch_config": batch_config(root, compression, 4_000)}
    config_path = _write_json(tmp_path / "config.json", config)
    tap = TapProcess(config_path)
    open_file = tap.freeze_mid_batch(root, after_batches=2)
    tap.process.kill()
    tap.finish()
    assert tap.process.returncode == -signal.SIGKILL
    delivered = tap.batch_records(compression)
    assert len(delivered) % 4_000 == 0
    assert len(delivered) >= 8_000
    state = tap.last_state()
    assert bookmark_of(state)[1] == delivered[-1]["customer_id"]
    assert (root / open_file).exists()  # the kill left a half-written file

    rerun = TapProcess(config_path, _write_json(tmp_path / "state.json", state))
    returncode, stderr = rerun.finish()

    assert returncode == 0, stderr
    assert not (root / open_file).exists()
    assert "Removed" in stderr
    resumed = rerun.batch_records(compression)
    assert [r["customer_id"] for r in delivered + resumed] == everyone


def test_sigterm_in_the_middle_of_a_batch_ends_at_the_last_announced_batch(tmp_path, big_warehouse):
    url, everyone = big_warehouse
    root = tmp_path / "batches"
    config = {"sqlalchemy_url": url, "batch_config": batch_config(root, "none", 4_000)}
    config_path = _write_json(tmp_path / "config.json", config)
    tap = TapProcess(config_path)
    open_file = tap.freeze_mid_batch(root, after_batches=1)
    state_before = tap.last_state()

    tap.process.send_signal(signal.SIGTERM)
    tap.process.send_signal(signal.SIGCONT)
    returncode, stderr = tap.finish()

    assert returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("tap-peak-attributes: stopped by SIGTERM")
    # The frozen file was being written, or its batch being closed and announced (a stop
    # waits for that to end). Written: it is removed, unannounced, and the last STATE is
    # the one after the last batch announced before the freeze. Closed: it is announced,
    # with the STATE after it. Either way no unannounced file is left, and the last STATE
    # covers exactly the records announced.
    announced = tap.announced()
    if open_file in announced:
        assert tap.last_state() != state_before
    else:
        assert not (root / open_file).exists()
        assert tap.last_state() == state_before
    assert tap.messages[-1]["type"] == "STATE"
    delivered = tap.batch_records()
    assert bookmark_of(tap.last_state())[1] == delivered[-1]["customer_id"]
    assert [r["customer_id"] for r in delivered] == everyone[: len(delivered)]
    with contextlib.suppress(FileNotFoundError):
        files = {p.name for p in root.iterdir() if p.name.startswith("tap-peak-attributes-")}
        assert files <= announced


def test_an_empty_batch_config_means_record_messages(sqlite_url, run_cli):
    # meltano.yml makes BATCH the default; `{}` (which singer-sdk fills with batch_size's
    # default) must switch it off, not fail for a missing storage root.
    sample.generate(sqlite_url, 5)
    run = run_cli({"sqlalchemy_url": sqlite_url, "batch_config": {}})
    assert run.returncode == 0, run.stderr
    assert len(run.records()) == 5
    assert not [m for m in run.messages if m["type"] == "BATCH"]
