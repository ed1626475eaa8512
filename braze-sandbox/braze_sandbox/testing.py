"""Run a sandbox from tests, benchmarks or scripts, and read back what it received.

Framework-independent (stdlib only on the client side)::

    with SandboxProcess(rate_limit=100, rate_window=1, fault_429=0.1, seed=7) as sandbox:
        run_my_pipeline(url=sandbox.url, api_key=sandbox.api_key)
        assert sandbox.profile("user-1")["custom_attributes"]["plan"] == "pro"
        assert sandbox.stats()["max_arrivals_in_window"] <= 100

Keyword options are the CLI flags with ``_`` for ``-``: ``True`` adds a bare flag, a list
repeats the flag, ``errors={"id": "TYPE"}`` becomes ``--error id=TYPE`` and
``latency_ms=(20, 80)`` becomes ``--latency-ms 20-80``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from braze_sandbox.__main__ import build_parser, options_from_args, start
from braze_sandbox.server import ADMIN_TOKEN_HEADER, ADMIN_TOKEN_VARIABLE, Sandbox

DEFAULT_API_KEY = "sandbox-key"


class SandboxError(RuntimeError):
    """The sandbox did not start, or answered an admin call with an error."""


def cli_arguments(options: dict[str, Any]) -> list[str]:
    """Turn keyword options into ``braze-sandbox serve`` arguments."""
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        if key == "errors":
            for ident, kind in dict(value).items():
                args += ["--error", f"{ident}={kind}"]
            continue
        flag = "--" + key.replace("_", "-")
        if key == "api_keys":
            flag = "--api-key"
        if value is True:
            args.append(flag)
        elif key == "latency_ms" and isinstance(value, list | tuple):
            args += [flag, f"{value[0]}-{value[1]}"]
        elif isinstance(value, list | tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


class SandboxClient:
    """Admin and read-back calls against a running sandbox at ``url``.

    Admin calls (``/_sandbox/``) carry ``admin_token``: by default the one in
    ``BRAZE_SANDBOX_ADMIN_TOKEN``, which the sandbox also reads at start.
    """

    def __init__(
        self, url: str, api_key: str = DEFAULT_API_KEY, admin_token: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.admin_token = admin_token or os.environ.get(ADMIN_TOKEN_VARIABLE, "")

    def _call(self, method: str, path: str, body: Any = None, auth: bool = False) -> Any:
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if path.startswith("/_sandbox/") and self.admin_token:
            headers[ADMIN_TOKEN_HEADER] = self.admin_token
        request = urllib.request.Request(  # noqa: S310 - URL is the sandbox's own
            self.url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return orjson.loads(response.read())
        except urllib.error.HTTPError as failure:
            detail = failure.read().decode(errors="replace")
            raise SandboxError(f"{method} {path} answered {failure.code}: {detail}") from None

    def track(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /users/track`` with this client's key; raises on a non-2xx answer."""
        result: dict[str, Any] = self._call("POST", "/users/track", body, auth=True)
        return result

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a Braze endpoint (``/users/delete``, ...) with this client's key."""
        result: dict[str, Any] = self._call("POST", path, body, auth=True)
        return result

    def profiles(self) -> list[dict[str, Any]]:
        """Every stored profile (admin view: identifiers, standard fields, custom_attributes)."""
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/profiles")
        return result

    def profile(self, external_id: str) -> dict[str, Any] | None:
        """One user as ``/users/export/ids`` returns it, or ``None`` if unknown."""
        answer = self._call("POST", "/users/export/ids", {"external_ids": [external_id]}, True)
        users: list[dict[str, Any]] = answer["users"]
        return users[0] if users else None

    def export(self, **request: Any) -> dict[str, Any]:
        """``POST /users/export/ids`` with the given body fields."""
        result: dict[str, Any] = self._call("POST", "/users/export/ids", request, auth=True)
        return result

    def events(self, external_id: str | None = None) -> list[dict[str, Any]]:
        """Recorded events, oldest first."""
        return self._recorded("events", external_id)

    def purchases(self, external_id: str | None = None) -> list[dict[str, Any]]:
        """Recorded purchases, oldest first."""
        return self._recorded("purchases", external_id)

    def _recorded(self, kind: str, external_id: str | None) -> list[dict[str, Any]]:
        query = (
            ""
            if external_id is None
            else "?" + urllib.parse.urlencode({"external_id": external_id})
        )
        result: list[dict[str, Any]] = self._call("GET", f"/_sandbox/{kind}" + query)
        return result

    def stats(self) -> dict[str, Any]:
        """``GET /_sandbox/stats``."""
        result: dict[str, Any] = self._call("GET", "/_sandbox/stats")
        return result

    def requests_log(self) -> list[dict[str, Any]]:
        """``GET /_sandbox/requests``: one entry per ``/users/track`` request."""
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/requests")
        return result

    def config(self) -> dict[str, Any]:
        """Current runtime settings."""
        result: dict[str, Any] = self._call("GET", "/_sandbox/config")
        return result

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change runtime settings (``fault_429=0.2``, ``latency_ms=[10, 50]``, ...)."""
        result: dict[str, Any] = self._call("PATCH", "/_sandbox/config", settings)
        return result

    def reset(self) -> None:
        """Forget all data and counters."""
        self._call("POST", "/_sandbox/reset", {})


class SandboxProcess(SandboxClient):
    """A sandbox in its own process (``python -m braze_sandbox serve``), as a context manager.

    ``db_path`` defaults to a fresh temporary file, removed on :meth:`stop`.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        db_path: str | None = None,
        startup_timeout: float = 15.0,
        python: str = sys.executable,
        admin_token: str | None = None,
        **options: Any,
    ) -> None:
        # A token of its own (not the caller's environment's), handed to the process.
        super().__init__("", api_key, admin_token or secrets.token_urlsafe(24))
        self._workdir = tempfile.TemporaryDirectory(prefix="braze-sandbox-")
        self.db_path = db_path or str(Path(self._workdir.name) / "sandbox.db")
        self.startup_timeout = startup_timeout
        self.options = options
        self.options.setdefault("api_keys", [api_key])
        self._python = python
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr_path = Path(self._workdir.name) / "stderr.log"

    def start(self) -> SandboxProcess:
        """Start the process and wait until it listens."""
        ready = Path(self._workdir.name) / "ready"
        command = [
            self._python,
            "-m",
            "braze_sandbox",
            "serve",
            "--host",
            str(self.options.pop("host", "127.0.0.1")),
            "--port",
            str(self.options.pop("port", 0)),
            "--db",
            self.db_path,
            "--ready-file",
            str(ready),
            *cli_arguments(self.options),
        ]
        with open(self._stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                # In the environment, not on the command line where `ps` shows it.
                env={**os.environ, ADMIN_TOKEN_VARIABLE: self.admin_token},
            )
        deadline = time.monotonic() + self.startup_timeout
        while not ready.exists():
            if self._process.poll() is not None:
                raise SandboxError(
                    f"braze-sandbox exited with {self._process.returncode} before it was"
                    f" ready: {self._stderr()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise SandboxError(
                    f"braze-sandbox not ready after {self.startup_timeout} s: {self._stderr()}"
                )
            time.sleep(0.02)
        self.url = ready.read_text(encoding="utf-8").strip()
        return self

    def _stderr(self) -> str:
        try:
            return self._stderr_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr so far (last 4,000 characters)."""
        return self._stderr()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``) and clean up."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._workdir.cleanup()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class SandboxThread(SandboxClient):
    """A sandbox on a background thread of this process: cheaper, less isolated.

    Shares this process's CPU and GIL, so do not use it for benchmarks.
    """

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, db_path: str = ":memory:",
                 admin_token: str | None = None, **options: Any) -> None:  # fmt: skip
        super().__init__("", api_key, admin_token or secrets.token_urlsafe(24))
        options.setdefault("api_keys", [api_key])
        args = build_parser().parse_args(["serve", "--db", db_path, *cli_arguments(options)])
        self.db_path = db_path
        self._options = options_from_args(args)
        self._options.admin_token = self.admin_token
        self._host = args.host
        self._port = args.port
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> SandboxThread:
        """Start serving on a daemon thread; return once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def run() -> None:
            sandbox = Sandbox(self._options)
            try:
                runner, self.url = await start(sandbox, self._host, self._port)
            except BaseException as problem:
                failure.append(problem)
                ready.set()
                raise
            self._stopped = asyncio.Event()
            ready.set()
            await self._stopped.wait()
            await runner.cleanup()
            sandbox.close()

        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(run(),), daemon=True
        )
        self._thread.start()
        ready.wait(15)
        if failure:
            raise SandboxError(f"braze-sandbox thread failed to start: {failure[0]!r}")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._thread is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
            self._loop.close()
        self._thread = None

    def __enter__(self) -> SandboxThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = [
    "DEFAULT_API_KEY",
    "SandboxClient",
    "SandboxError",
    "SandboxProcess",
    "SandboxThread",
    "cli_arguments",
]
