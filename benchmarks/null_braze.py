"""A Braze stand-in that costs almost nothing: every POST /users/track gets 201 success.

For measuring a target's own CPU and wall time without a sandbox taking a core: no
profile storage, no checks, keep-alive HTTP/1.1 on asyncio (one `data_received` per
request body, Content-Length framing only). It counts requests and bytes and prints
them on SIGTERM. Not a fidelity test: use braze-sandbox for that.

    python benchmarks/null_braze.py --port 0 --ready-file /tmp/url
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

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


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.ready_file))


if __name__ == "__main__":
    main()
