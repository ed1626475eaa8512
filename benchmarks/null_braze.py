"""A Braze stand-in that costs almost nothing: every POST /users/track gets 201 success.

For measuring a target's own CPU and wall time without a sandbox taking a core: no
profile storage, no checks, keep-alive HTTP/1.1 on asyncio (one `data_received` per
request body, Content-Length framing only). `--latency-ms N` answers each request N ms
after it arrived, as a distant Braze would (0: at once). It counts requests and bytes and prints
them on SIGTERM. Not a fidelity test: use braze-sandbox for that.

    python benchmarks/null_braze.py --port 0 --ready-file /tmp/url

The benchmark starts it with `NullBrazeProcess` (a context manager: its URL, its pid so
its CPU can be read beside the measured process's, and the counts it printed at exit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_ANSWER = b'{"message":"success"}'
_RESPONSE = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
    b"X-RateLimit-Limit: 1000000\r\nX-RateLimit-Remaining: 1000000\r\n"
    b"Content-Length: " + str(len(_ANSWER)).encode() + b"\r\n\r\n" + _ANSWER
)


class Counts:
    """What the stand-in received."""

    requests = 0
    bytes = 0


class _Protocol(asyncio.Protocol):
    latency = 0.0  # seconds before each answer

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            start = head.find(b"content-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15 : stop if stop > 0 else None])
            total = end + 4 + length
            if len(buffer) < total:
                return
            del buffer[:total]
            Counts.requests += 1
            Counts.bytes += length
            assert self.transport is not None
            if self.latency:
                # Equal delays fire in arrival order: answers stay in request order.
                asyncio.get_running_loop().call_later(self.latency, self.transport.write, _RESPONSE)
            else:
                self.transport.write(_RESPONSE)


async def _serve(port: int, ready_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    if ready_file:
        Path(ready_file).write_text(url)
    print(url, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    print(json.dumps({"requests": Counts.requests, "bytes": Counts.bytes}), file=sys.stderr)


class NullBrazeProcess:
    """This stand-in in its own process (its CPU is never the measured process's)."""

    def __init__(self, python: str = sys.executable, latency_ms: float = 0.0) -> None:
        """Not started yet; `python` runs it (stdlib only: `-I -S` keeps it small)."""
        self._python = python
        self.latency_ms = latency_ms
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="null-braze-")
        self.url = ""
        self.counts: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        """The server's process id."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> NullBrazeProcess:
        ready = Path(self._tmp.name) / "url"
        self._stderr = Path(self._tmp.name) / "stderr"
        with self._stderr.open("wb") as stderr:
            self._process = subprocess.Popen(
                [
                    *(self._python, "-I", "-S", __file__, "--ready-file", str(ready)),
                    *("--latency-ms", str(self.latency_ms)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._stop()
                msg = f"null_braze did not start: {self._stderr.read_text()[-2000:]}"
                raise RuntimeError(msg)
            time.sleep(0.02)
        self.url = ready.read_text().strip()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        lines = self._stderr.read_text().strip().splitlines() if self._stderr.exists() else []
        with contextlib.suppress(ValueError, IndexError):
            self.counts = json.loads(lines[-1])
        self._tmp.cleanup()


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    _Protocol.latency = args.latency_ms / 1000
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.ready_file))


if __name__ == "__main__":
    main()
