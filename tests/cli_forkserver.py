"""Run a plugin's CLI many times in a test session without paying its imports each time.

`python -m target_braze` spends about 0.8 CPU-s importing singer-sdk (numpy, joblib,
fsspec, jsonschema) before it reads a line; the tap about 1.0. Hundreds of CLI runs made
that most of the unit and integration tests' time. A fork server imports the plugins once;
each run is then a child forked from it: a real process with its own pid, its own stdin,
stdout and stderr (the caller's file descriptors, passed over a Unix socket), its own
environment and working directory, running the module as `python -m` would
(`runpy.run_module(..., run_name="__main__")`), and exiting with its code.

What it does not give a run: a fresh interpreter. A plugin that read the environment at
import time would see the server's. Neither plugin does: test_cli_forkserver.py (in
target-braze/tests) checks that a run through the server and one of `python -m` answer
alike, environment included. A run whose PYTHON* variables differ from the server's gets a
fresh interpreter; CLI_FORKSERVER=0 runs every CLI as a fresh `python -m`.

Only the test helpers' simple runs (messages in, outputs out) come through here. Runs a
test signals or talks to (SIGTERM, kill -9, a conversation on stdin) stay plain
subprocesses, as do the end-to-end tests' `meltano run`.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<I")
_MAX_FDS = 3


def enabled() -> bool:
    """Whether CLI runs go through a fork server (CLI_FORKSERVER=0 turns it off)."""
    return os.environ.get("CLI_FORKSERVER", "1") != "0"


# --- the server (its own process) ---------------------------------------------------------


def _serve(path: str, modules: list[str]) -> None:
    for module in modules:
        importlib.import_module(module)
    # The imports' objects out of the collector's reach: a child's collections would
    # otherwise touch every one of them, copying the server's memory page by page.
    gc.collect()
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    # stdin is a pipe from the client that is never written to: readable (its end of file)
    # once the client's process is gone, however it ended. The server then ends too.
    selector.register(0, selectors.EVENT_READ, "client gone")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    while True:
        for key, _ in selector.select():
            if key.data == "client gone":
                os._exit(0)
            if key.data is None:
                conn, _ = listener.accept()
                request, fds = _receive(conn)
                pid = os.fork()
                if pid == 0:
                    _child(request, fds, listener, conn, children)  # never returns
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
                conn.sendall(f"{pid}\n".encode())
            else:
                pidfd = key.fd
                selector.unregister(pidfd)
                pid, conn = children.pop(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):  # the client may be gone
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A request: its length, its JSON, and the descriptors sent with its first bytes."""
    message, fds, _, _ = socket.recv_fds(conn, 1 << 16, _MAX_FDS)
    (length,) = _HEADER.unpack_from(message)
    while len(message) < _HEADER.size + length:
        more = conn.recv(1 << 16)
        if not more:
            raise RuntimeError("the CLI fork server's client went away mid-request")
        message += more
    return json.loads(message[_HEADER.size :]), fds


def _child(
    request: dict[str, Any],
    fds: list[int],
    listener: socket.socket,
    conn: socket.socket,
    children: dict[int, tuple[int, socket.socket]],
) -> None:
    """Become `python -m module args`; never returns into the server's loop.

    Anything the module raises reaches the interpreter's top level as in `python -m`: a
    SystemExit's code is the exit status, another exception prints its traceback and exits
    1; at exit the interpreter joins non-daemon threads and runs the atexit handlers.
    """
    listener.close()
    conn.close()
    for pidfd, (_, other) in children.items():
        os.close(pidfd)
        other.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = [request["module"], *request["args"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)


# --- the client (the test process) ---------------------------------------------------------


class ForkServer:
    """One server process per test process, started on first use, stopped at exit."""

    _instance: ForkServer | None = None
    _lock = threading.Lock()

    def __init__(self, modules: list[str]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cli-forkserver-")
        self.path = str(Path(self._dir.name) / "socket")
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import cli_forkserver; "
            "cli_forkserver._serve(sys.argv[2], sys.argv[3:])"
        )
        #: The variables that shape an interpreter's imports, as the server started with them.
        self.interpreter = _interpreter_settings(os.environ)
        self.log = Path(self._dir.name) / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(Path(__file__).parent), self.path, *modules],
                stdin=subprocess.PIPE,  # the server ends when this process does (see _serve)
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if ready != "ready\n":
            self.process.kill()
            raise RuntimeError(f"the CLI fork server did not start: {self.log_tail()}")
        atexit.register(self.close)

    def log_tail(self) -> str:
        """The end of the server's own stderr (its traceback, if it failed)."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    @classmethod
    def shared(cls) -> ForkServer:
        """This process's server, with both plugins imported."""
        with cls._lock:
            if cls._instance is None or cls._instance.process.poll() is not None:
                cls._instance = cls(["target_braze.target", "tap_peak_attributes.tap"])
            return cls._instance

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._dir.cleanup()

    def spawn(
        self,
        module: str,
        args: list[str],
        stdio: tuple[int, int, int],
        env: dict[str, str],
        cwd: str | None = None,
    ) -> Child:
        """Start `python -m module args` as a child of the server, on these descriptors."""
        request = {"module": module, "args": args, "env": env, "cwd": cwd or os.getcwd()}
        body = json.dumps(request).encode()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        socket.send_fds(conn, [_HEADER.pack(len(body)) + body], list(stdio))
        return Child(conn, self.log_tail)


class Child:
    """A run forked by the server: its pid, and its exit code once it ends."""

    def __init__(self, conn: socket.socket, log_tail: Callable[[], str]) -> None:
        self._conn = conn
        self._log_tail = log_tail
        self._reader = conn.makefile("r")
        self.pid = int(self._reader.readline())
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        """The exit code (negative: killed by that signal); TimeoutError after `timeout`."""
        if self.returncode is None:
            self._conn.settimeout(timeout)
            line = self._reader.readline()  # TimeoutError after `timeout`
            if not line:
                raise RuntimeError(f"the CLI fork server died during a run: {self._log_tail()}")
            self.returncode = int(line)
            self._reader.close()
            self._conn.close()
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _interpreter_settings(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith("PYTHON")}


def _text(data: bytes) -> str:
    """Bytes read as `subprocess.run(..., text=True)` reads them (universal newlines)."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


def run(
    module: str,
    args: list[str],
    *,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: str | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run([python, -m, module, *args], capture_output=True, text=text)`.

    Through this process's fork server, or as a fresh interpreter when CLI_FORKSERVER=0.
    Raises `subprocess.TimeoutExpired` (the run killed) as `subprocess.run` does.
    """
    environment = dict(os.environ if env is None else env)
    command = [sys.executable, "-m", module, *args]
    server = ForkServer.shared() if enabled() else None
    if server is None or _interpreter_settings(environment) != server.interpreter:
        # PYTHONPATH and the like shape the imports the server already made: a fresh one.
        if text and isinstance(input, bytes):
            input = input.decode()
        elif not text and isinstance(input, str):
            input = input.encode()
        return subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            env=environment,
            cwd=cwd,
            check=False,
        )
    data = input.encode() if isinstance(input, str) else (input or b"")
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        stdin.write(data)
        stdin.seek(0)
        child = server.spawn(
            module, args, (stdin.fileno(), stdout.fileno(), stderr.fileno()), environment, cwd
        )
        try:
            code = child.wait(timeout)
        except TimeoutError:
            child.kill()  # the server reaps it
            raise subprocess.TimeoutExpired(command, timeout or 0) from None
        stdout.seek(0)
        stderr.seek(0)
        out: str | bytes = stdout.read()
        err: str | bytes = stderr.read()
    if text:
        out, err = _text(out), _text(err)  # type: ignore[arg-type]
    return subprocess.CompletedProcess(command, code, out, err)
