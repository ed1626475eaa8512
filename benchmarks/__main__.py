"""`python -m benchmarks CASE [options]`: the one entry point of the benchmarks (BENCHMARKS.md).

Prints the figures as a markdown table (progress on stderr); `--json PATH` keeps every
run's raw numbers. `--old REF` (a git ref, or a checkout's directory) measures a frozen
copy of that commit's plugins beside this checkout, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import cases, harness, wide_stream


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The case and its options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repeat", type=int, default=3, help="interleaved repeats (default 3)")
    common.add_argument(
        "--old",
        help="also measure this git ref's (or checkout's) plugins, "
        "frozen, as the baseline (e.g. bd2b5ec)",
    )
    common.add_argument("--work-dir", type=Path, help="keep streams, configs and logs here")
    common.add_argument("--json", type=Path, help="write every run's numbers here")
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="CASE")

    def case(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    target = case(
        "target",
        "target-braze CPU-s per 100k records, records/s and peak memory on "
        "the wide stream into null_braze, beside the singer-sdk floor (or --old)",
    )
    target.add_argument("--records", type=int, default=100_000)
    target.add_argument("--latency-ms", type=float, default=0, help="null_braze's answer delay")
    for parser_ in (target, profile := case("profile", "py-spy over target-braze: top functions")):
        parser_.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a target-braze setting (a lever: validate_records=false)",
        )
    target.add_argument("--callgrind", action="store_true", help="count instructions (slow)")
    profile.add_argument("--records", type=int, default=100_000)
    profile.add_argument("--rate", type=int, default=250, help="samples per second")
    profile.add_argument("--top", type=int, default=20)
    profile.add_argument("--output", type=Path, help="keep py-spy's raw (collapsed) stacks")
    for name, text in (
        ("tap", "the tap alone: RECORD, BATCH and reading no row"),
        (
            "meltano",
            "`meltano run tap-peak-attributes target-braze` into "
            "null_braze, RECORD and BATCH, with Meltano's own share",
        ),
    ):
        parser_ = case(name, text)
        parser_.add_argument("--rows", type=int, default=100_000, help="warehouse customers")
        if name == "tap":
            parser_.add_argument("--postgres", help="a PostgreSQL URL: the tap there too")
    limit = case(
        "limit",
        "requests/s and share of the rate limit used against braze-sandbox "
        "(300 per 3 s at ~1 s; 3,000 per 3 s at 50 ms)",
    )
    limit.add_argument("--case", type=int, action="append", choices=range(len(cases.LIMIT_CASES)))
    limit.add_argument("--users", type=int, help="users per case (default: 45,000; 450,000)")
    limit.add_argument("--null", action="store_true", help="also 3,000/3 s into null_braze")
    ledger = case(
        "ledger",
        "the ledger's cost: off, first sync, nothing changed, 2 of 9 "
        "changed (ratios to ledger off per repeat)",
    )
    ledger.add_argument("--records", type=int, default=100_000)
    ledger.add_argument("--postgres", help="a PostgreSQL URL: the ledger there (else SQLite)")
    ledger.add_argument(
        "--cases",
        default=",".join(cases.LEDGER_CASES),
        help="a subset of %(default)s, comma-separated (ratios need off)",
    )
    ledger.add_argument(
        "--callgrind",
        action="store_true",
        help="instructions instead of CPU (~50x slower: 10k-20k records)",
    )
    stream = sub.add_parser("stream", help="write the Peak-shaped wide stream to stdout")
    stream.add_argument("--records", type=int, default=100_000)
    stream.add_argument("--variant", choices=["first", "rescored"], default="first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one case; print its table."""
    args = parse(argv)
    if args.command == "meltano" and args.old:
        raise SystemExit("--old: Meltano runs its own plugin venvs; compare with `tap --old`")
    if args.command == "stream":
        wide_stream.write(sys.stdout.buffer, args.records, variant=args.variant)
        return 0
    os.environ.pop("PYTHONPATH", None)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix=f"bench-{args.command}-"))
    work.mkdir(parents=True, exist_ok=True)
    about = harness.header()
    try:
        result = getattr(cases, args.command)(args, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    about["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    about["command"] = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"{about['command']}\ncommit {about['commit']}, {about['date']}, {about['cores']} cores "
        f"({about['cpu']}), load average {about['load_average_at_start']} at start, "
        f"{about['load_average_at_end']} at end\n\n{result.pop('table')}"
    )
    if "note" in result:
        print(f"\n{result['note']}")
    if args.json:
        args.json.write_text(json.dumps(about | result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
