"""A Braze stand-in that costs almost nothing: every request gets 201 `{"message":"success"}`.

For measuring a target's own CPU without a sandbox taking a core: no storage, no checks,
keep-alive HTTP/1.1 on asyncio, Content-Length framing only. `--latency-ms N` answers
each request N ms after it arrived, as a distant Braze would. Stdlib only; the benchmark
starts it with `python -I -S null_braze.py --ready-file PATH` (`harness.null_braze`).
"""

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

_ANSWER = b'{"message":"success"}'
_RESPONSE = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
    b"X-RateLimit-Limit: 1000000\r\nX-RateLimit-Remaining: 1000000\r\n"
    b"Content-Length: " + str(len(_ANSWER)).encode() + b"\r\n\r\n" + _ANSWER
)


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
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(buffer[:end]).lower()
            start = head.find(b"content-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15 : stop if stop > 0 else None])
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            assert self.transport is not None
            if self.latency:  # equal delays fire in arrival order
                asyncio.get_running_loop().call_later(self.latency, self.transport.write, _RESPONSE)
            else:
                self.transport.write(_RESPONSE)


async def _serve(ready_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", 0)
    Path(ready_file).write_text(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    _Protocol.latency = args.latency_ms / 1000
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.ready_file))


if __name__ == "__main__":
    main()
