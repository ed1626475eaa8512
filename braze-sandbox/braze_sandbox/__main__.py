"""Command line: ``braze-sandbox [serve] [options]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence

from aiohttp import web

from braze_sandbox.contract import ContractLimits
from braze_sandbox.faults import FaultSettings, parse_error_mapping, parse_latency
from braze_sandbox.ratelimit import RESET_STYLES, RETRY_AFTER_STYLES, RateLimitSettings
from braze_sandbox.server import (
    ADMIN_TOKEN_HEADER,
    ADMIN_TOKEN_VARIABLE,
    Sandbox,
    SandboxOptions,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``braze-sandbox`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="braze-sandbox",
        description=(
            "A local stand-in for Braze's /users/track, /users/export/ids and user-data "
            "endpoints (/users/delete, /users/alias/new, /users/identify, "
            "/v2/subscription/status/set)."
        ),
    )
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=0, help="port; 0 picks a free one (default 0)")
    add("--db", default=":memory:", help="SQLite file for profiles (default :memory:)")
    add("--api-key", action="append", dest="api_keys", metavar="KEY",
        help="a valid key with every permission; repeatable (default sandbox-key)")  # fmt: skip
    add("--permissionless-key", action="append", default=[], metavar="KEY",
        help="a valid key without users.track / users.export.ids (answers 403)")  # fmt: skip
    add("--rate-limit", type=int, default=3000, metavar="N",
        help="requests per --rate-window (sliding window); 0 = off (default 3000)")  # fmt: skip
    add("--rate-window", type=float, default=3.0, metavar="SECONDS", help="(default 3)")
    add("--user-data-rate-limit", type=int, default=20_000, metavar="N",
        help="requests per --user-data-rate-window shared by /users/delete, /users/alias/new "
        "and /users/identify; 0 = off (default 20000)")  # fmt: skip
    add("--user-data-rate-window", type=float, default=60.0, metavar="SECONDS",
        help="(default 60)")  # fmt: skip
    add("--subscription-rate-limit", type=int, default=5_000, metavar="N",
        help="/v2/subscription/status/set requests per --subscription-rate-window; 0 = off "
        "(default 5000)")  # fmt: skip
    add("--subscription-rate-window", type=float, default=60.0, metavar="SECONDS",
        help="(default 60)")  # fmt: skip
    add("--hourly-limit", type=int, default=0, metavar="N",
        help="requests per clock hour; 0 = off (default 0)")  # fmt: skip
    add("--reset-style", choices=RESET_STYLES, default="epoch",
        help="X-RateLimit-Reset as epoch seconds or seconds remaining (default epoch)")  # fmt: skip
    add("--retry-after-style", choices=RETRY_AFTER_STYLES, default="none",
        help="retry header on 429: none, X-Ratelimit-Retry-After or Retry-After")  # fmt: skip
    add("--max-objects", type=int, default=75, help="objects per request (default 75)")
    add("--legacy-per-array-limits", action="store_true",
        help="apply --max-objects per array instead of combined")  # fmt: skip
    add("--max-body-bytes", type=int, default=4_000_000, help="413 above (default 4000000)")
    add("--max-array-length", type=int, default=25, help="string array cap (default 25)")
    add("--fault-429", type=float, default=0.0, metavar="P", help="probability of a 429")
    add("--fault-5xx", type=float, default=0.0, metavar="P",
        help="probability of a 500/502/503")  # fmt: skip
    add("--fault-drop", type=float, default=0.0, metavar="P",
        help="probability of closing the connection before processing")  # fmt: skip
    add("--fault-drop-after-apply", type=float, default=0.0, metavar="P",
        help="probability of applying the data, then closing without a response")  # fmt: skip
    add("--fault-5xx-after-apply", type=float, default=0.0, metavar="P",
        help="probability of applying the data, then answering 502 (a load balancer "
             "that lost Braze's answer)")  # fmt: skip
    add("--fault-unindexed-error", type=float, default=0.0, metavar="P",
        help="probability of 201 with an unindexed errors[] entry (nothing applied)")  # fmt: skip
    add("--fault-queued", type=float, default=0.0, metavar="P",
        help="probability of 202 {'message': 'queued'} (data applied)")  # fmt: skip
    add("--latency-ms", default="0", metavar="MS|MIN-MAX", help="added response latency")
    add("--error", action="append", default=[], metavar="ID=TYPE",
        help="objects of this identifier get an indexed error of TYPE; repeatable")  # fmt: skip
    add("--fail-after-requests", type=int, default=0, metavar="N",
        help="answer every /users/track request after the first N with 500; 0 = off")  # fmt: skip
    add("--seed", type=int, default=None, help="seed of the fault decisions")
    add("--ready-file", default=None, metavar="PATH",
        help="write the URL there once listening")  # fmt: skip
    add("--allow-host", action="append", default=[], metavar="NAME",
        help="a Host header name /_sandbox/ answers besides loopback's (and --host); "
        "repeatable")  # fmt: skip
    return parser


def options_from_args(args: argparse.Namespace) -> SandboxOptions:
    """Translate parsed arguments into :class:`SandboxOptions`."""
    for name in ("fault_429", "fault_5xx", "fault_drop", "fault_drop_after_apply",
                 "fault_5xx_after_apply", "fault_unindexed_error", "fault_queued"):  # fmt: skip
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be a probability within 0..1")
    if args.fail_after_requests < 0:
        raise ValueError("--fail-after-requests must be 0 (off) or a positive count")
    token = os.environ.get(ADMIN_TOKEN_VARIABLE) or secrets.token_urlsafe(24)
    return SandboxOptions(
        admin_token=token,
        allowed_hosts=[*args.allow_host, args.host],
        db_path=args.db,
        api_keys=args.api_keys or ["sandbox-key"],
        permissionless_keys=args.permissionless_key,
        limits=ContractLimits(
            max_objects=args.max_objects,
            legacy_per_array_limits=args.legacy_per_array_limits,
            max_body_bytes=args.max_body_bytes,
            max_array_length=args.max_array_length,
        ),
        rate=RateLimitSettings(
            limit=args.rate_limit,
            window=args.rate_window,
            hourly_limit=args.hourly_limit,
            reset_style=args.reset_style,
            retry_after_style=args.retry_after_style,
        ),
        user_data_rate=RateLimitSettings(
            limit=args.user_data_rate_limit,
            window=args.user_data_rate_window,
            reset_style=args.reset_style,
            retry_after_style=args.retry_after_style,
        ),
        subscription_rate=RateLimitSettings(
            limit=args.subscription_rate_limit,
            window=args.subscription_rate_window,
            reset_style=args.reset_style,
            retry_after_style=args.retry_after_style,
        ),
        faults=FaultSettings(
            p_429=args.fault_429,
            p_5xx=args.fault_5xx,
            p_drop=args.fault_drop,
            p_drop_after_apply=args.fault_drop_after_apply,
            p_5xx_after_apply=args.fault_5xx_after_apply,
            p_unindexed_error=args.fault_unindexed_error,
            p_queued=args.fault_queued,
            latency_ms=parse_latency(args.latency_ms),
            errors=parse_error_mapping(args.error),
            seed=args.seed,
            fail_after_requests=args.fail_after_requests,
        ),
    )


async def start(sandbox: Sandbox, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start serving; return the runner and the base URL (with the real port)."""
    runner = web.AppRunner(sandbox.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}"


def write_ready_file(path: str, url: str) -> None:
    """Write the URL atomically, so a reader never sees half of it."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(url + "\n")
    os.replace(partial, path)


async def serve(options: SandboxOptions, host: str, port: int, ready_file: str | None) -> None:
    """Run until SIGTERM or SIGINT."""
    sandbox = Sandbox(options)
    runner, url = await start(sandbox, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"braze-sandbox listening on {url}", flush=True)
    if not os.environ.get(ADMIN_TOKEN_VARIABLE):
        print(
            f"braze-sandbox: /_sandbox/ admin token (header {ADMIN_TOKEN_HEADER}): "
            f"{options.admin_token} (set {ADMIN_TOKEN_VARIABLE} to choose it)",
            flush=True,
        )
    if not _is_loopback(host):
        sys.stderr.write(
            f"braze-sandbox: warning: listening on {host}, not loopback: other machines can "
            "reach it (its admin API needs the token); use --host 127.0.0.1 unless you "
            "mean it\n"
        )
    if ready_file:
        write_ready_file(ready_file, url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        sandbox.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``braze-sandbox`` and ``python -m braze_sandbox``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as problem:
        parser.error(str(problem))
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        try:
            runner.run(serve(options, args.host, args.port, args.ready_file))
        except OSError as problem:
            # Port taken, address not local: one line, not a traceback.
            sys.stderr.write(
                f"braze-sandbox: error: cannot listen on {args.host}:{args.port}: "
                f"{problem.strerror or problem}; pick another --port\n"
            )
            return 1
    return 0


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Uvloop where installed: it roughly halves the per-request cost of the HTTP layer."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    sys.exit(main())
