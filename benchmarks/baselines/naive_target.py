"""The naive baseline: one `/users/track` request per record, sent one after another.

Reads Singer messages on stdin and POSTs each RECORD alone (`requests.Session`, so the
connection is reused: the cost measured is per request, not per TCP connect). No
batching, no concurrency, no validation, no rate limit. Stops after `--limit` records.

Usage: `python benchmarks/baselines/naive_target.py --url URL --api-key KEY [--limit N]`
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

IDENTIFIER = "customer_id"
SKIPPED = {IDENTIFIER, "updated_at"}


def main(argv: list[str] | None = None) -> int:
    """Send every record of stdin as its own request; print the count on stdout."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="REST endpoint (sandbox URL)")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--limit", type=int, default=0, help="stop after N records (0: all)")
    args = parser.parse_args(argv)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {args.api_key}"}
    endpoint = args.url.rstrip("/") + "/users/track"
    sent = 0
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("type") != "RECORD":
            continue
        record = message["record"]
        attributes = {k: v for k, v in record.items() if k not in SKIPPED}
        attributes["external_id"] = str(record[IDENTIFIER])
        response = session.post(
            endpoint, json={"attributes": [attributes]}, headers=headers, timeout=30
        )
        response.raise_for_status()
        sent += 1
        if args.limit and sent >= args.limit:
            break
    print(json.dumps({"records": sent}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
