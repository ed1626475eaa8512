"""Measure how many /users/track requests per second a sandbox absorbs (loopback only).

Usage: python braze-sandbox/scripts/load.py [--requests 20000] [--connections 32]
       [--objects 75] [--url URL]   (without --url it starts its own SandboxProcess)

The client is a minimal keep-alive HTTP/1.1 writer on raw asyncio streams with prebuilt
request bytes, so that the client, not the sandbox, costs as little CPU as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import urlsplit

import orjson
from braze_sandbox.testing import SandboxProcess


def build_requests(count: int, objects: int, key: str, host: str) -> list[bytes]:
    """Distinct bodies, each with ``objects`` attribute objects for distinct users."""
    out = []
    for n in range(count):
        body = orjson.dumps(
            {
                "attributes": [
                    {
                        "external_id": f"user-{n}-{i}",
                        "first_name": "Ada",
                        "email": f"user{n}.{i}@example.com",
                        "peak_score": n * i,
                        "peak_plan": "pro",
                        "peak_active": True,
                        "peak_tags": ["a", "b"],
                    }
                    for i in range(objects)
                ]
            }
        )
        head = (
            f"POST /users/track HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def worker(
    host: str, port: int, payloads: list[bytes], quota: list[int], statuses: dict[int, int]
) -> None:
    """Send requests one at a time on one keep-alive connection until the quota is spent."""
    reader, writer = await asyncio.open_connection(host, port)
    while quota[0] > 0:
        quota[0] -= 1
        # The shared countdown also picks the payload: workers send different users.
        writer.write(payloads[quota[0] % len(payloads)])
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        statuses[status] = statuses.get(status, 0) + 1
    writer.close()


async def run(url: str, key: str, total: int, connections: int, objects: int) -> None:
    """Run the load and print the result."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = build_requests(min(total, 500), objects, key, f"{host}:{port}")
    quota = [total]
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(
        *(worker(host, port, payloads, quota, statuses) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    print(
        f"{total} requests x {objects} objects in {elapsed:.2f} s: "
        f"{total / elapsed:.0f} requests/s, {total * objects / elapsed:.0f} objects/s, "
        f"statuses {statuses}"
    )


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--objects", type=int, default=75)
    parser.add_argument("--url")
    parser.add_argument("--api-key", default="sandbox-key")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.api_key, args.requests, args.connections, args.objects))
        return
    with SandboxProcess(rate_limit=0) as sandbox:
        asyncio.run(run(sandbox.url, args.api_key, args.requests, args.connections, args.objects))
        stats = sandbox.stats()
        print(f"sandbox stored {stats['profiles']} profiles, applied {stats['objects_applied']}")


if __name__ == "__main__":
    main()
