"""The tap's stdout: buffered between checkpoints, identical to singer-sdk's lines, and no
line lost or torn on exit, on SIGTERM or on a broken pipe."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.singerlib import RecordMessage, StateMessage
from tap_peak_attributes import output, sample
from tap_peak_attributes.errors import TapStopped
from tap_peak_attributes.output import SingerOutput, record_prefix, record_suffix
from tap_peak_attributes.tap import TapPeakAttributes

STREAM = "customer_attributes"
TAP_CLI = Path(sys.executable).with_name("tap-peak-attributes")


def parse_messages(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class CountingStdout(io.TextIOWrapper):
    """A replaced sys.stdout whose binary buffer counts the writes it receives."""

    def __init__(self) -> None:
        self.raw_bytes = io.BytesIO()
        super().__init__(self.raw_bytes, encoding="utf-8")
        self.writes = 0
        original = self.raw_bytes.write

        def write(data):
            self.writes += 1
            return original(data)

        self.raw_bytes.write = write  # type: ignore[method-assign]


def _lines(stdout: CountingStdout) -> list[dict]:
    return parse_messages(stdout.raw_bytes.getvalue().decode())


def test_records_reach_stdout_only_with_the_next_state():
    writer = SingerOutput()
    stdout = CountingStdout()
    with contextlib.redirect_stdout(stdout):
        for n in range(100):
            writer.write_message(RecordMessage(stream="s", record={"n": n}))
        assert stdout.writes == 0
        writer.write_message(StateMessage(value={"bookmarks": {"s": {"n": 99}}}))
        assert stdout.writes == 1
    lines = _lines(stdout)
    assert [m["record"]["n"] for m in lines[:-1]] == list(range(100))
    assert lines[-1] == {"type": "STATE", "value": {"bookmarks": {"s": {"n": 99}}}}


def test_a_full_block_is_written_before_the_next_state():
    writer = SingerOutput()
    stdout = CountingStdout()
    big = "x" * 1000
    prefix, suffix = record_prefix("s"), record_suffix(output.dt.datetime.now(output.dt.UTC))
    with contextlib.redirect_stdout(stdout):
        for _ in range(output.BLOCK_BYTES // 1000 + 10):
            writer.write_record(prefix, {"big": big}, suffix)
        assert stdout.writes == 1
    assert all(m["type"] == "RECORD" for m in _lines(stdout))


def test_a_record_that_cannot_be_encoded_leaves_no_partial_line():
    writer = SingerOutput()
    stdout = CountingStdout()
    prefix, suffix = record_prefix("s"), record_suffix(output.dt.datetime.now(output.dt.UTC))
    with contextlib.redirect_stdout(stdout):
        writer.write_record(prefix, {"n": 1}, suffix)
        endless: dict = {}
        endless["itself"] = endless
        with pytest.raises(RecursionError):
            writer.write_record(prefix, endless, suffix)
        writer.write_message(StateMessage(value={}))
    assert [m["type"] for m in _lines(stdout)] == ["RECORD", "STATE"]


def _run_in_process(tap: TapPeakAttributes) -> list[dict]:
    stdout = CountingStdout()
    with contextlib.redirect_stdout(stdout):
        tap.sync_all()
    stdout.flush()
    return _lines(stdout)


def _without_time_extracted(messages: list[dict]) -> list[dict]:
    cleaned = []
    for original in messages:
        message = dict(original)
        if message["type"] == "RECORD":
            stamp = message.pop("time_extracted")
            assert stamp.endswith("Z")
        cleaned.append(message)
    return cleaned


STREAM_MAPS = {
    "no map": {},
    "alias and a computed property": {
        "stream_maps": {
            STREAM: {"__alias__": "customers", "peak_segment": "peak_segment.upper()"},
        }
    },
    "filter": {"stream_maps": {STREAM: {"__filter__": "peak_churn_risk == 'high'"}}},
    "a second stream from the same source": {
        "stream_maps": {
            STREAM: {"peak_next_best_product": "__NULL__"},
            "risky": {"__source__": STREAM, "__filter__": "peak_churn_probability > 0.5"},
        }
    },
    "stream removed": {"stream_maps": {STREAM: None}},
    "flattening": {"flattening_enabled": True, "flattening_max_depth": 1},
}


@pytest.mark.parametrize("extra", STREAM_MAPS.values(), ids=STREAM_MAPS.keys())
def test_record_lines_are_exactly_singer_sdk_messages(sqlite_url, extra):
    # The tap writes RECORD lines itself (`_write_record_message`); handed singer-sdk's own
    # msgspec writer, it falls back to singer-sdk's message path: both must agree.
    sample.generate(sqlite_url, 40, seed=5)
    config = {"sqlalchemy_url": sqlite_url, "state_message_frequency": 15, **extra}
    ours = _run_in_process(TapPeakAttributes(config=config, parse_env_config=False))
    sdk = _run_in_process(
        TapPeakAttributes(config=config, parse_env_config=False, message_writer=MsgSpecWriter())
    )
    assert _without_time_extracted(ours) == _without_time_extracted(sdk)
    if extra != {"stream_maps": {STREAM: None}}:
        assert any(m["type"] == "RECORD" for m in ours)


def test_deselected_properties_are_left_out_as_singer_sdk_leaves_them_out(sqlite_url):
    sample.generate(sqlite_url, 10)
    config = {"sqlalchemy_url": sqlite_url}
    catalog = TapPeakAttributes(config=config, parse_env_config=False).catalog.to_dict()
    for entry in catalog["streams"][0]["metadata"]:
        if entry["breadcrumb"] == ["properties", "peak_segment"]:
            entry["metadata"]["selected"] = False
    ours = _run_in_process(TapPeakAttributes(config=config, catalog=catalog))
    sdk = _run_in_process(
        TapPeakAttributes(config=config, catalog=catalog, message_writer=MsgSpecWriter())
    )
    records = [m["record"] for m in ours if m["type"] == "RECORD"]
    assert len(records) == 10
    assert all("peak_segment" not in r and "peak_churn_risk" in r for r in records)
    assert _without_time_extracted(ours) == _without_time_extracted(sdk)


def test_the_fast_record_path_is_the_one_singer_sdk_calls(sqlite_url, monkeypatch):
    # If singer-sdk stopped calling `_write_record_message`, records would still be written
    # (by its own path) and this would be the only sign.
    sample.generate(sqlite_url, 25)
    calls = []
    original = SingerOutput.write_record

    def spy(self, prefix, record, suffix):
        calls.append(record["customer_id"])
        return original(self, prefix, record, suffix)

    monkeypatch.setattr(SingerOutput, "write_record", spy)
    messages = _run_in_process(TapPeakAttributes(config={"sqlalchemy_url": sqlite_url}))
    assert calls == [m["record"]["customer_id"] for m in messages if m["type"] == "RECORD"]
    assert len(calls) == 25


def test_records_after_the_last_state_are_written_when_the_stream_ends(sqlite_url):
    # A look-back re-read repeats the previous STATE, so singer-sdk writes none: the
    # records must still reach stdout.
    sample.generate(sqlite_url, 5)
    config = {"sqlalchemy_url": sqlite_url}
    first = _run_in_process(TapPeakAttributes(config=config))
    state = next(m["value"] for m in reversed(first) if m["type"] == "STATE")
    again = _run_in_process(
        TapPeakAttributes(config={**config, "lookback_window_minutes": 60}, state=state)
    )
    assert len([m for m in again if m["type"] == "RECORD"]) == 5


# --- real processes: signals and broken pipes ----------------------------------------


def _start_tap(config_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(TAP_CLI), "--config", str(config_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _blocked_writing_stdout(pid: int) -> bool:
    """Whether the process sits in write(1, ...) (/proc/PID/syscall: `1 0x1 ...`)."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        return fields[:2] == ["1", "0x1"]
    return False


def _signal_pending(pid: int, signum: int) -> bool:
    """Whether `signum` waits to be delivered (/proc/PID/status: SigPnd, ShdPnd masks)."""
    bit = 1 << (signum - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigPnd", "ShdPnd") and int(value, 16) & bit:
            return True
    return False


def _wait_until(condition, what: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:  # a safety net, not the test's decision
            pytest.fail(f"gave up waiting until {what}")
        time.sleep(0.005)


def _config_file(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_sigterm_while_blocked_on_a_full_pipe_loses_no_line(tmp_path, run_tap):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sample.generate(url, 30_000, long_table=False)
    tap = _start_tap(_config_file(tmp_path, {"sqlalchemy_url": url}))
    assert tap.stdout is not None
    assert tap.stderr is not None
    head = [tap.stdout.readline() for _ in range(5_000)]
    # Stop reading: the tap fills the pipe and blocks in a write to stdout.
    _wait_until(lambda: _blocked_writing_stdout(tap.pid), "the tap blocks writing stdout")

    tap.send_signal(signal.SIGTERM)
    rest = tap.stdout.read()
    stderr = tap.stderr.read().decode()
    returncode = tap.wait()

    assert returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        "tap-peak-attributes: stopped by SIGTERM; the last STATE written covers every "
        "record written before it"
    )
    messages = [json.loads(line) for line in b"".join(head).splitlines() + rest.splitlines()]
    ids = [m["record"]["customer_id"] for m in messages if m["type"] == "RECORD"]
    assert 5_000 <= len(ids) < 30_000
    assert ids == [sample.customer_id(n) for n in range(1, len(ids) + 1)]
    assert messages[-1]["type"] == "STATE"
    bookmark = messages[-1]["value"]["bookmarks"][STREAM]
    # The STATE covers the records written (the very last may be re-sent, never lost).
    assert bookmark["replication_key_last_id"] in ids[-2:]
    resumed = run_tap({"sqlalchemy_url": url}, messages[-1]["value"]).ids()
    done = ids.index(bookmark["replication_key_last_id"]) + 1
    assert ids[:done] + resumed == [sample.customer_id(n) for n in range(1, 30_001)]


def test_sigterm_is_handled_by_the_tap_not_by_singer_sdk(sqlite_url):
    # The override only works if singer-sdk registers `_handle_termination` as the handler.
    sample.generate(sqlite_url, 1)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        tap = TapPeakAttributes(config={"sqlalchemy_url": sqlite_url})
        handler = signal.getsignal(signal.SIGTERM)
        assert getattr(handler, "__func__", None) is TapPeakAttributes._handle_termination
        assert handler.__self__ is tap  # type: ignore[union-attr]
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_broken_pipe_ends_the_tap_with_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sample.generate(url, 20_000, long_table=False)
    tap = _start_tap(_config_file(tmp_path, {"sqlalchemy_url": url}))
    assert tap.stdout is not None
    assert tap.stderr is not None
    tap.stdout.readline()
    tap.stdout.close()  # the reader goes away
    stderr = tap.stderr.read().decode()
    returncode = tap.wait()

    assert returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert stderr.splitlines()[-1] == (
        "tap-peak-attributes: error: stdout was closed by its reader (broken pipe): the "
        "target stopped reading; rerun to resume from the last STATE it stored"
    )


def test_records_buffered_before_a_failure_are_still_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sample.generate(url, 30)
    # Customer C0000030's segment is not an integer: the run fails on its record, after
    # the 29 before it (all buffered, no STATE since the first).
    stream = {
        "name": "changes",
        "table": "customer_attribute_changes",
        "shape": "long",
        "attributes": ["segment"],
        "attribute_types": {"segment": "integer"},
    }
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE customer_attribute_changes SET attribute_value = '7' "
            "WHERE attribute_name = 'segment' AND customer_id != 'C0000030'"
        )
    engine.dispose()
    config = _config_file(tmp_path, {"sqlalchemy_url": url, "streams": [stream]})
    done = subprocess.run(
        [str(TAP_CLI), "--config", str(config)],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 1
    messages = parse_messages(done.stdout.decode())
    assert len([m for m in messages if m["type"] == "RECORD"]) == 29
    assert (
        done.stderr.decode()
        .splitlines()[-1]
        .startswith(
            "tap-peak-attributes: error: stream changes: attribute 'segment' of customer C0000030"
        )
    )


def test_a_second_sigterm_gives_up_on_a_pipe_nobody_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    sample.generate(url, 30_000, long_table=False)
    tap = _start_tap(_config_file(tmp_path, {"sqlalchemy_url": url}))
    assert tap.stdout is not None
    assert tap.stderr is not None
    tap.stdout.readline()
    _wait_until(lambda: _blocked_writing_stdout(tap.pid), "the tap blocks writing stdout")
    tap.send_signal(signal.SIGTERM)
    # Nobody reads: the first stop waits for its write, which never completes. Until the
    # kernel delivers the first SIGTERM, the tap still sits in that write, and a second
    # one sent then merges with it (a pending signal is not queued twice). Once delivered,
    # Python runs the handler before it retries the write: delivered and in the write
    # again means the first stop was handled.
    _wait_until(
        lambda: not _signal_pending(tap.pid, signal.SIGTERM) and _blocked_writing_stdout(tap.pid),
        "the first SIGTERM is handled and the tap is back in its write",
    )

    tap.send_signal(signal.SIGTERM)
    returncode = tap.wait(timeout=120)  # a safety net; the exit is immediate

    stderr = tap.stderr.read().decode()
    assert returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        "tap-peak-attributes: error: stopped by a second SIGTERM while writing the last "
        "lines; rerun to resume from the last STATE the target stored"
    )


def test_a_stop_inside_holding_stop_waits_for_its_end_and_writes_go_on(monkeypatch):
    # What closing and announcing a batch relies on: a stop (the signal handler calls
    # `stop`) inside the hold is raised only at its end, after its writes.
    stdout = CountingStdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    writer = SingerOutput()
    stopped = TapStopped(signal.SIGTERM, lambda: None)
    steps: list[str] = []

    def held() -> None:
        with writer.holding_stop():
            writer.stop(stopped)  # held: not raised here
            steps.append("stopped")
            writer.write_message(StateMessage(value={"n": 1}))  # a flush: not raised
            with writer.holding_stop():  # nested: only the outermost end raises
                steps.append("nested")
            steps.append("end")

    with pytest.raises(TapStopped) as raised:
        held()

    assert raised.value is stopped
    assert steps == ["stopped", "nested", "end"]
    assert _lines(stdout) == [{"type": "STATE", "value": {"n": 1}}]
    with pytest.raises(TapStopped):  # outside a hold, a stop is raised at once
        writer.stop(stopped)


def test_a_failure_inside_holding_stop_is_what_is_raised():
    writer = SingerOutput()

    def failing() -> None:
        with writer.holding_stop():
            writer.stop(TapStopped(signal.SIGTERM, lambda: None))
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        failing()
