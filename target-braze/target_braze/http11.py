"""`Http11Connection`: one keep-alive HTTP/1.1 connection that POSTs a body and reads the answer.

Why not `http.client`: per request it builds the headers line by line, reads the answer
through a buffered file object and parses its headers with the `email` package; measured
sequentially on loopback for a 75-object body, 98 µs of CPU against 35 µs for one `sendall`
and one `recv` here. It also blocks in more system calls, and each one lets another
thread take the GIL: with 16 sender threads, every extra hand-over costs the main thread.

What it does, and nothing else: TCP_NODELAY; TLS through the caller's `ssl.SSLContext`
(certificate and host name always verified: the context is `ssl.create_default_context`);
an http:// proxy through a CONNECT tunnel; answers framed by Content-Length, chunked
transfer encoding or the end of the connection; 1xx interim answers skipped. Every
failure is an `OSError` (a `ConnectionError` for a connection that closed too early, a
`ProtocolError` for an answer that is not HTTP), so the caller retries them alike.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from typing_extensions import override

_HEAD_END = b"\r\n\r\n"
#: A connection idle this long is checked before reuse (has the server closed it?). One
#: used just before is not: servers close idle keep-alive connections after seconds
#: (Braze's load balancers, aiohttp 75 s), and the check is a system call that lets
#: another thread take the GIL, on every request. A close in between still fails the
#: request as a dropped connection, which is retried.
IDLE_CHECK_SECONDS = 1.0
_MAX_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 64 * 1024


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class ResponseHeaders(dict[str, str]):
    """Response headers by lower-cased name; `get` takes any case."""

    @override
    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The header's value (the last one, if repeated), whatever the name's case."""
        return super().get(name.lower(), default)


@dataclass(frozen=True, slots=True)
class Response:
    """One final answer."""

    status: int
    reason: str
    headers: ResponseHeaders
    body: bytes
    will_close: bool


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go, decided once: the origin, TLS, the proxy tunnel, the timeout."""

    host: str
    port: int
    path: str
    timeout: float
    context: ssl.SSLContext | None = None  # https
    proxy: tuple[str, int] | None = None
    proxy_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def authority(self) -> str:
        """`host[:port]`, as the Host header and CONNECT name it (default ports left out)."""
        default = 443 if self.context is not None else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Http11Connection:
    """A keep-alive connection, opened on first use and after the server closed it."""

    def __init__(self, endpoint: Endpoint, headers: Mapping[str, str]) -> None:
        """`headers` go on every request; Host and Content-Length are added here."""
        self.endpoint = endpoint
        lines = [f"POST {endpoint.path} HTTP/1.1", f"Host: {endpoint.authority}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["Accept-Encoding: identity", "Content-Length: "]
        # Everything up to the length, encoded once: a request is then one concatenation.
        self._head = "\r\n".join(lines).encode("latin-1")
        self.sock: socket.socket | None = None
        self._last_used = 0.0
        self._sent = False  # a request is sent and its answer not read yet

    def answer_state(self) -> int:
        """0: no request out; 1: one sent, no answer yet; 2: its answer is arriving (any thread)."""
        sock = self.sock
        if not self._sent or sock is None:
            return 0
        return 2 if _readable(sock) else 1

    def post(self, body: bytes) -> Response:
        """Send `body` and return the final answer; the connection closes on any error."""
        now = time.monotonic()
        if (
            self.sock is not None
            and now - self._last_used >= IDLE_CHECK_SECONDS
            and _readable(self.sock)
        ):
            self.close()  # the server closed it while idle: reconnect, nothing was sent
        self._last_used = now
        if self.sock is None:
            self.sock = self._connect()
        try:
            self.sock.sendall(self._head + str(len(body)).encode() + _HEAD_END + body)
            self._sent = True
            response = _read_response(self.sock)
        except BaseException:
            self.close()
            raise
        finally:
            self._sent = False
        if response.will_close:
            self.close()
        return response

    def close(self) -> None:
        """Close the socket (the next request reconnects)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def _connect(self) -> socket.socket:
        endpoint = self.endpoint
        target = endpoint.proxy or (endpoint.host, endpoint.port)
        sock = socket.create_connection(target, timeout=endpoint.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if endpoint.proxy is not None:
                _tunnel(sock, endpoint)
            if endpoint.context is not None:
                return endpoint.context.wrap_socket(sock, server_hostname=endpoint.host)
        except BaseException:
            sock.close()
            raise
        return sock


def _tunnel(sock: socket.socket, endpoint: Endpoint) -> None:
    """Ask the proxy for a tunnel to the origin (CONNECT), as curl and http.client do."""
    lines = [f"CONNECT {endpoint.authority} HTTP/1.1", f"Host: {endpoint.authority}"]
    lines += [f"{name}: {value}" for name, value in endpoint.proxy_headers.items()]
    sock.sendall(("\r\n".join(lines)).encode("latin-1") + _HEAD_END)
    status, reason, _, _, _ = _read_head(sock, bytearray())
    if status != 200:
        # The proxy's own answer (407, 403, 502): no retry fixes a refused tunnel quickly,
        # but it is a connection failure like any other to the caller.
        raise ConnectionRefusedError(f"the proxy answered {status} {reason} to CONNECT")


def _readable(sock: socket.socket) -> bool:
    """Whether the socket is readable.

    An idle keep-alive socket is readable only if the server closed it (or sent junk); one
    awaiting an answer, once the answer begins to arrive.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _read_head(
    sock: socket.socket, buffer: bytearray
) -> tuple[int, str, ResponseHeaders, bool, bytearray]:
    """Read up to the end of a response head: status, reason, headers, HTTP/1.0, the rest."""
    while (end := buffer.find(_HEAD_END)) < 0:
        if len(buffer) > _MAX_HEAD_BYTES:
            raise ProtocolError("the answer's head is longer than 64 kB")
        chunk = sock.recv(_RECV_BYTES)
        if not chunk:
            raise ConnectionResetError("the server closed the connection without an answer")
        buffer += chunk
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = ResponseHeaders()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return int(code), reason.strip(), headers, version == "HTTP/1.0", buffer[end + 4 :]


def _read_response(sock: socket.socket) -> Response:
    rest = bytearray()
    while True:
        status, reason, headers, http10, rest = _read_head(sock, rest)
        if status >= 200:
            break  # 1xx (100 Continue, 103 Early Hints) precede the final answer
    connection = (headers.get("connection") or "").lower()
    will_close = "close" in connection or (http10 and "keep-alive" not in connection)
    if status in (204, 304):
        return Response(status, reason, headers, b"", will_close)
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        return Response(status, reason, headers, _read_chunked(sock, rest), will_close)
    length = headers.get("content-length")
    if length is None:
        return Response(status, reason, headers, _read_to_close(sock, rest), True)
    if not length.isdigit():
        raise ProtocolError(f"Content-Length {length[:40]!r} is not a number")
    size = int(length)
    while len(rest) < size:
        rest += _recv_more(sock)
    # Bytes beyond the answer (never asked for: requests are not pipelined) make the
    # connection untrustworthy, not the answer: it is kept, the connection is not.
    return Response(status, reason, headers, bytes(rest[:size]), will_close or len(rest) > size)


def _read_to_close(sock: socket.socket, buffer: bytearray) -> bytes:
    while chunk := sock.recv(_RECV_BYTES):
        buffer += chunk
    return bytes(buffer)


def _read_chunked(sock: socket.socket, buffer: bytearray) -> bytes:
    body = bytearray()
    while True:
        while (end := buffer.find(b"\r\n")) < 0:
            buffer += _recv_more(sock)
        size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"a bad chunk size {size_text[:20]!r}") from None
        del buffer[: end + 2]
        if size == 0:
            # Trailers (rare) end with an empty line, like the head.
            while not (buffer.startswith(b"\r\n") or _HEAD_END in buffer):
                buffer += _recv_more(sock)
            return bytes(body)
        while len(buffer) < size + 2:
            buffer += _recv_more(sock)
        body += buffer[:size]
        del buffer[: size + 2]


def _recv_more(sock: socket.socket) -> bytes:
    chunk = sock.recv(_RECV_BYTES)
    if not chunk:
        raise ConnectionResetError("the server closed the connection mid-answer")
    return chunk
