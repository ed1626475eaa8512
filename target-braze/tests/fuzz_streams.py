"""Seeded adversarial Singer streams, and a worker that runs them through the target's CLI.

`generate(seed)` makes one case: the target's settings and the input lines (bytes: some
are not valid JSON or UTF-8). Run as a script, the module runs cases through
`target_braze.__main__.main` in this one process, each with its input on file descriptor
0 as a pipeline gives it, and writes one JSON line per case to the results file: its
exit code, its `target-braze: error:` lines and its rejects. A line "start N" goes to the
results file before each case, so a case that hangs is named by the last one started.

    python fuzz_streams.py RESULTS WORKDIR SANDBOX_URL API_KEY FIRST_SEED COUNT
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

STREAM = "customer_attributes"

# Values a record may hold that a target must survive.
ODD_VALUES: list[Any] = [
    2**64,
    -(2**70),
    10**30,
    9223372036854775807,
    1e308,
    -0.0,
    1.5,
    "",
    "x" * 300,
    "\u0000nul",
    "emoji \U0001f600",
    "2026-13-45T99:00:00",
    True,
    None,
    [],
    [1, "a"],
    ["a", "b"],
    [{"a": 1}, {"b": [1]}],
    {"$bad": 1},
    {"a.b": 1},
    {"sp ace": 1},
    {"ok": {"nested": "yes"}},
    "y" * 70_000,
]
COLLIDING = ["external_id", "braze_id", "user_alias", "_update_existing_only", "_merge_objects"]
JUNK_LINES = [
    b"{",
    b"[]",
    b"null",
    b'"RECORD"',
    b'{"type": "RECORD"}',
    b'{"type": "RECORDS", "stream": "x"}',
    b'{"type": "RECORD", "stream": "customer_attributes", "record": {"customer_id": NaN}}',
    b'{"type": "RECORD", "stream": "customer_attributes", "record": {"customer_id": "\xff"}}',
    b'{"type": "RECORD", "stream": "customer_attributes", "record": []}',
    b'{"type": "SCHEMA", "stream": "s2", "schema": 5, "key_properties": []}',
    b'{"type": "STATE", "value": 5}',
    b'{"type": "BATCH", "stream": "customer_attributes"}',
    b'{"type": "RECORD", "stream": "nowhere", "record": {"customer_id": "a"}}',
    b"",
    b"   ",
]
SCHEMA_PROPERTY_VARIANTS: list[Any] = [
    {"type": "string"},
    {"type": ["string", "null"]},
    {"type": "integer"},
    {"type": "number"},
    {"type": "object"},
    {"type": "array", "items": {"type": "string"}},
    {"type": "string", "format": "date-time"},
    {"anyOf": [{"type": "string"}, {"type": "null"}]},
    {},
    5,  # malformed
    {"type": 7},  # malformed
    {"anyOf": "x"},  # malformed
    {"type": ["string", 3]},  # malformed
]
BAD_EXPRESSIONS = ["1/0", "int(plan)", "plan.upper()", "undefined_name", "plan + 1"]


def _deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _record(fields: dict[str, Any]) -> bytes:
    return _line({"type": "RECORD", "stream": STREAM, "record": fields})


def generate(seed: int, batch_dir: Path) -> tuple[dict[str, Any], list[bytes]]:
    """One adversarial case: target settings (besides the endpoint) and input lines."""
    rng = random.Random(seed)
    config: dict[str, Any] = {"max_rejected_ratio": rng.choice([0, 0.5, 1, 1])}
    if rng.random() < 0.2:
        config["colliding_fields"] = "drop"
    if rng.random() < 0.2:
        config["validate_records"] = False
    if rng.random() < 0.3:
        config["max_record_bytes"] = rng.choice([200, 2000, 100_000])
    if rng.random() < 0.15:
        config["stream_maps"] = {STREAM: {"plan": rng.choice(BAD_EXPRESSIONS)}}
    if rng.random() < 0.15:
        config.update(object_type="events", event_name="fuzzed", time_property="updated_at")
    if rng.random() < 0.1:
        config["identifier_type"] = rng.choice(["email", "phone", "braze_id"])
    config["batch_files_dir"] = str(batch_dir)

    properties: dict[str, Any] = {
        "customer_id": {"type": "string"},
        "updated_at": {"type": "string", "format": "date-time"},
        "plan": {},
    }
    for i in range(rng.randint(0, 4)):
        variants = SCHEMA_PROPERTY_VARIANTS if rng.random() < 0.3 else SCHEMA_PROPERTY_VARIANTS[:9]
        properties[f"p{i}"] = rng.choice(variants)
    if rng.random() < 0.2:
        properties[rng.choice([*COLLIDING, "email", "phone"])] = {}
    schema = {"type": "SCHEMA", "stream": STREAM, "schema": {"properties": properties}}
    schema["key_properties"] = ["customer_id"]
    lines = [_line(schema)]
    names = list(properties)

    batch_dir.mkdir(parents=True, exist_ok=True)
    for n in range(rng.randint(1, 25)):
        kind = rng.random()
        customer = f"f{seed}-{n}"
        if kind < 0.35:
            fields = {"customer_id": customer, "updated_at": "2026-11-28T06:00:00+00:00"}
            for name in rng.sample(names, k=min(len(names), rng.randint(0, 3))):
                fields[name] = rng.choice(ODD_VALUES) if rng.random() < 0.7 else "fine"
            lines.append(_record(fields))
        elif kind < 0.45:
            odd_id = rng.choice([None, "", 5, 2**70, {"a": 1}, [1], True, "x" * 1000])
            lines.append(_record({"customer_id": odd_id, "plan": "p"}))
        elif kind < 0.55:
            lines.append(rng.choice(JUNK_LINES))
        elif kind < 0.62:
            levels = rng.choice([5, 40, 300, 1200, 5000])
            lines.append(
                b'{"type": "RECORD", "stream": "customer_attributes", "record": '
                b'{"customer_id": "'
                + customer.encode()
                + b'", "plan": '
                + _deep(levels).encode()
                + b"}}"
            )
        elif kind < 0.70:
            size = rng.choice([300, 5000, 200_000])
            lines.append(_record({"customer_id": customer, "plan": "z" * size}))
        elif kind < 0.80:
            value: Any = rng.choice([{"bookmarks": {}}, {"n": n}, {"deep": json.loads(_deep(50))}])
            lines.append(_line({"type": "STATE", "value": value}))
        elif kind < 0.92:
            file = batch_dir / f"case-{seed}-{n}.jsonl"
            body = [
                {"customer_id": f"{customer}-b{i}", "plan": rng.choice(ODD_VALUES)}
                for i in range(3)
            ]
            file.write_text("".join(json.dumps(r) + "\n" for r in body))
            uri = rng.choice(
                [
                    file.as_uri(),
                    file.as_uri(),
                    file.as_uri().replace(str(batch_dir.name), f"{batch_dir.name}/../x"),
                    file.as_uri() + "%00",
                    file.as_uri().replace("/case", "/%2e%2e/case"),
                    "file:relative.jsonl",
                    "http://example.com/x.jsonl",
                    "file:///dev/zero",
                    "file:///etc/passwd",
                    "%zz",
                ]
            )
            encoding = {"format": rng.choice(["jsonl", "jsonl", "parquet"]), "compression": "none"}
            lines.append(
                _line({"type": "BATCH", "stream": STREAM, "encoding": encoding, "manifest": [uri]})
            )
        else:
            lines.append(_line({"type": "ACTIVATE_VERSION", "stream": STREAM, "version": n}))
    lines.append(_line({"type": "STATE", "value": {"bookmarks": {STREAM: {"end": seed}}}}))
    return config, lines


def run_case(seed: int, workdir: Path, url: str, api_key: str) -> dict[str, Any]:
    """Run one case through the CLI's entry point, in this process; say how it ended."""
    from target_braze.__main__ import main

    case_dir = workdir / f"case-{seed}"
    case_dir.mkdir(parents=True, exist_ok=True)
    config, lines = generate(seed, case_dir / "batches")
    rejects = case_dir / "rejects.jsonl"
    config.update(
        api_key=api_key,
        rest_endpoint=url,
        retry_backoff_seconds=0.01,
        max_retries=1,
        rejected_records_path=str(rejects),
        ledger_url=f"sqlite:///{workdir / 'ledger.sqlite'}",
    )
    config_path = case_dir / "config.json"
    config_path.write_text(json.dumps(config))
    input_path = case_dir / "input.jsonl"
    input_path.write_bytes(b"".join(line + b"\n" for line in lines))
    stderr = io.StringIO()
    sys.argv = ["target-braze", "--config", str(config_path)]
    with open(input_path, "rb") as source, open(os.devnull, "w") as devnull:
        saved = os.dup(0)
        os.dup2(source.fileno(), 0)
        try:
            with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(stderr):
                main()
            code: Any = 0
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            code = f"escaped {type(exc).__name__}: {exc}"
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    output = stderr.getvalue()
    errors = [line for line in output.splitlines() if line.startswith("target-braze: error:")]
    rejected = []
    if rejects.exists():
        rejected = [json.loads(line) for line in rejects.read_text().splitlines() if line]
    return {
        "seed": seed,
        "code": code,
        "errors": errors,
        "traceback": "Traceback" in output,
        "rejects": [
            {"reason": r.get("reason"), "error_type": r.get("error_type")} for r in rejected
        ],
    }


if __name__ == "__main__":
    results, workdir, url, key, first, count = sys.argv[1:7]
    with open(results, "a", buffering=1) as out:
        for seed in range(int(first), int(first) + int(count)):
            out.write(f"start {seed}\n")
            out.write(json.dumps(run_case(seed, Path(workdir), url, key)) + "\n")
