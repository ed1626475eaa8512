"""`Transport`: the HTTP connections to Braze (http.client, urllib3), what a failure meant.

Two paths, both well-kept libraries, no hand-written HTTP:

- Straight to Braze (no proxy, the usual case): `http.client`'s connections, kept alive
  in a small pool of our own (`_DirectConnections`). http.client formats each request
  and parses each answer; the pool takes the most recent idle connection, checks it with
  `poll()` for a server close before reusing it (never `select()`, which fails on file
  descriptors of 1024 and above), and keeps it after a complete answer unless the
  server said it closes. The head and body of a request go out in one write
  (`_Connection.send`) and the read timeout is set once per connection, not per request:
  each system call in a sender thread is a point where the main thread takes the GIL.
- Through a proxy (HTTPS_PROXY, HTTP_PROXY; NO_PROXY honoured): urllib3's connection pool,
  which tunnels TLS through http:// and https:// proxies alike (TLS in TLS). urllib3 is
  requests' engine, so already installed.

Why not urllib3's pool for every request: its price in CPU. Measured sequentially (POSTs
of a 75-object body to a loopback stand-in, CPU per request, medians of 7 interleaved
rounds of 1,000 on a 2-core machine busy with other work, load average 10 to 16): the
former hand-written client (bd2b5ec) 51 µs, this direct path 173 µs, urllib3's pool 372
µs. Of this path's, about 100 µs is http.client's answer (its `email`-based header
parser alone ~36 µs) and ~45 µs writing the request (system call included). Per 100k
records (1,334 requests) that is +0.16 CPU-s over the hand-written client, where
urllib3's pool cost +0.43 (BENCHMARKS.md, "The send path on urllib3"). An async client
(aiohttp) would need its own event loop thread beside the sender threads, and https://
proxies there are not as settled.

Certificates are always verified (`ssl.create_default_context`: CERT_REQUIRED, host names
checked; urllib3 with CERT_REQUIRED through a proxy): certifi's bundle, or the one
REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE names. Proxies come from the environment, as
requests reads them.

A failure says whether anything of the request can have reached Braze: `ConnectFailed`
(no connection was made: refused, unknown host, connect timeout, a TLS handshake that
failed, the proxy) is certainly not applied; `AnswerLost` (the connection broke or timed
out after the request went out, or while it went out) may have been applied. On the
direct path the connection is made before anything is written, so a broken handshake is
known to be a `ConnectFailed`; through a proxy urllib3 does not say, so it is an
`AnswerLost` with `tls` set.

`awaiting_braze` counts, on the direct path, the requests written whose answer has not
begun to arrive (one `poll()` over their sockets): the in-flight sizing uses it to tell a
wait for Braze from a wait for our own threads.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import certifi
import requests
import urllib3
from typing_extensions import override
from urllib3 import exceptions as errors
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool

from target_braze.errors import ConfigError

_written = threading.local()  # when the calling thread's request was last written out


class _Timed:
    """Notes when a request has been written out (headers and body handed to the kernel).

    The rate limiter counts a request from that moment, not from when its slot was
    granted: in between lie a new connection's handshakes and waits for the GIL, which
    vary by far more than the network's delay does (the first request on each of a
    hundred new connections arrived later than the reused ones after it, and a 0.1 s
    margin was not enough on a busy machine).
    """

    def request(self, *args: Any, **kwargs: Any) -> None:
        """urllib3's own request, then the time."""
        super().request(*args, **kwargs)  # type: ignore[misc]
        _written.at = time.monotonic()


class _TimedHTTPConnection(_Timed, HTTPConnection):
    pass


class _TimedHTTPSConnection(_Timed, HTTPSConnection):
    pass


class _Connection(http.client.HTTPConnection):
    """One keep-alive connection of the direct path: http.client, the head and body in one write.

    http.client writes a request's head (request line and headers) with one `send` and
    its body with another: two system calls, each after a poll (the socket has a
    timeout), each a point where the main thread takes the GIL from the sender thread
    and the sender then waits to get it back. `send` (public, documented for use after
    `endheaders`) is overridden to append the pending body to the head: http.client
    formats the request and parses the answer; only the writes are joined.
    `test_transport.py::test_a_request_goes_out_in_one_write` fails if http.client ever
    writes the head otherwise (the body would then go out on its own, correct but slower).
    """

    _body: bytes | None = None

    def post(self, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write one POST; the connection must be open (`connect`)."""
        self.putrequest("POST", target, skip_accept_encoding=True)
        for name, value in headers:
            self.putheader(name, value)
        self.putheader("Content-Length", str(len(body)))
        self._body = body or None
        try:
            self.endheaders()
            if self._body is not None:  # the head did not end in one `send`: the body alone
                self.send(self._body)
        finally:
            self._body = None

    @override
    def send(self, data: Any) -> None:
        """http.client's `send`; the head (it ends with an empty line) takes the body along."""
        body = self._body
        if body is not None and isinstance(data, bytes) and data.endswith(b"\r\n\r\n"):
            self._body = None
            data += body
        super().send(data)


class _TLSConnection(_Connection, http.client.HTTPSConnection):
    """`_Connection` over TLS (the context verifies the certificate and the host name)."""


class _DirectConnections:
    """Keep-alive connections straight to Braze (no proxy), most recently used first.

    What urllib3's pool does for this case, with less Python per request: a connection
    is taken (the most recent idle one, else a new one), checked for a server close
    before reuse (a poll: an idle keep-alive connection the server closed reads as
    ready), and given back after a complete answer unless the server said it closes.
    Thread-safe: a deque's append and pop are atomic.
    """

    def __init__(
        self,
        host: str,
        port: int | None,
        context: ssl.SSLContext | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int,
    ) -> None:
        """Nothing is connected yet."""
        self._host = host
        self._port = port
        self._context = context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: deque[_Connection] = deque()
        self._awaiting: set[_Connection] = set()  # a request out, its answer not read

    def sending(self, connection: _Connection) -> None:
        """`connection` carries a request (from just before it is written) until `answered`."""
        self._awaiting.add(connection)

    def answered(self, connection: _Connection) -> None:
        """`connection`'s answer was read (or will never be)."""
        self._awaiting.discard(connection)

    def awaiting_braze(self) -> int:
        """Requests written whose answer has not started to arrive (a snapshot).

        One poll over their sockets: a readable one has its answer (or a close) waiting
        for our own thread to read it, so that request waits for this process, not Braze.
        """
        poller = select.poll()
        count = 0
        for connection in list(self._awaiting):
            sock = connection.sock
            try:
                if sock is not None and sock.fileno() >= 0:
                    poller.register(sock, select.POLLIN)
                    count += 1
            except (OSError, ValueError):  # closed meanwhile by its thread
                continue
        return count - len(poller.poll(0)) if count else 0

    def take(self) -> _Connection:
        """An open connection (reused, or new).

        Raises:
            ConnectFailed: no connection could be made.

        """
        idle = self._idle
        while idle:
            try:
                connection = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if connection.sock is not None and not _closed_by_server(connection.sock):
                return connection
            connection.close()
        connection = (
            _Connection(self._host, self._port, timeout=self._connect_timeout)
            if self._context is None
            else _TLSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._context
            )
        )
        try:
            connection.connect()
        except BaseException as exc:
            connection.close()
            if isinstance(exc, Exception):
                raise _connect_failed(exc) from None
            raise
        if connection.sock is not None:  # set by `connect`
            connection.sock.settimeout(self._read_timeout)  # once: each is a system call
        return connection

    def give_back(self, connection: _Connection) -> None:
        """Keep `connection` for reuse, unless it closed or enough are kept."""
        if connection.sock is None or len(self._idle) >= self._max_idle:
            connection.close()
        else:
            self._idle.append(connection)

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether an idle connection is readable: the server closed it (or broke the protocol).

    Either way it must not carry a request.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _connect_failed(exc: Exception) -> ConnectFailed:
    """What a failure to connect (nothing of the request was written) was."""
    if isinstance(exc, socket.gaierror):
        return ConnectFailed("unknown host (the DNS lookup failed)")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailed("connection refused")
    if isinstance(exc, TimeoutError):
        return ConnectFailed("no connection within the connect timeout")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectFailed(
            f"the TLS certificate does not verify ({_reason(exc)})", certificate=True
        )
    if isinstance(exc, ssl.SSLError):
        # The handshake broke (an https URL at a plain-HTTP port, say) before any request.
        return ConnectFailed(f"TLS failed ({_reason(exc)})")
    return ConnectFailed(f"no connection ({_reason(exc)})")


def _answer_lost(exc: Exception) -> AnswerLost:
    """What a failure after the connection was made (the request may have gone out) was."""
    if isinstance(exc, TimeoutError):
        return AnswerLost("no answer within request_timeout_seconds (read timeout)")
    if isinstance(exc, ssl.SSLError):
        return AnswerLost(f"TLS failed ({_reason(exc)})", tls=True)
    return AnswerLost(f"the connection broke before the answer ({_reason(exc)})")


class Answer(NamedTuple):
    """One HTTP answer: status, reason, headers (any case), body."""

    status: int
    reason: str
    headers: Any
    body: bytes


class ConnectFailed(Exception):
    """No connection to Braze was made, so nothing of the request reached it."""

    def __init__(self, what: str, *, certificate: bool = False) -> None:
        """`what`: one phrase; `certificate`: TLS verification refused the server."""
        super().__init__(what)
        self.what = what
        self.certificate = certificate


class AnswerLost(Exception):
    """The request may have reached Braze, and no answer came back."""

    def __init__(self, what: str, *, tls: bool = False) -> None:
        """`what`: one phrase; `tls`: TLS itself failed (not a certificate refused)."""
        super().__init__(what)
        self.what = what
        self.tls = tls


def ca_bundle() -> str:
    """The CA bundle to verify Braze with: the environment's choice, else certifi's."""
    return (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    )


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (NO_PROXY honoured), or None."""
    proxy: str | None = requests.utils.get_environ_proxies(url).get(urlsplit(url).scheme)
    if not proxy:
        return None
    return proxy if "//" in proxy else f"http://{proxy}"


class Transport:
    """POSTs bodies to one URL; thread-safe; keeps up to `max_connections` alive for reuse."""

    def __init__(
        self, url: str, headers: dict[str, str], *, timeout: float, max_connections: int
    ) -> None:
        """Read the environment's CA bundle and proxy once; connect on the first request."""
        parts = urlsplit(url)
        self.url = url
        self.proxy = environment_proxy(url)
        self._headers = dict(headers)
        self._target = parts.path or "/"
        self._direct: _DirectConnections | None = None
        connect_timeout = min(timeout, 10.0)
        if not self.proxy:
            self.proxy_name = ""
            context = None
            if parts.scheme == "https":
                # Certificate and host name verified (CERT_REQUIRED, check_hostname).
                context = ssl.create_default_context(cafile=ca_bundle())
            self._direct = _DirectConnections(
                parts.hostname or "",
                parts.port,
                context,
                connect_timeout=connect_timeout,
                read_timeout=timeout,
                max_idle=max(1, max_connections),
            )
            self._header_items = list(headers.items())
            return
        options: dict[str, Any] = {
            "maxsize": max(1, max_connections),
            "timeout": urllib3.Timeout(connect=connect_timeout, read=timeout),
            "retries": False,
            "cert_reqs": ssl.CERT_REQUIRED,
            "ca_certs": ca_bundle(),
        }
        proxy = urlsplit(self.proxy)
        if proxy.scheme not in ("http", "https") or not proxy.hostname:
            raise ConfigError(
                "the proxy in HTTPS_PROXY/HTTP_PROXY must be an http:// or https:// URL"
            )
        proxy_headers = {}
        if proxy.username:
            proxy_headers = urllib3.make_headers(
                proxy_basic_auth=f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
            )
        # Named without its credentials in any message.
        self.proxy_name = f"{proxy.scheme}://{proxy.hostname}:{proxy.port or ''}".rstrip(":")
        self._manager = urllib3.ProxyManager(self.proxy, proxy_headers=proxy_headers, **options)
        if parts.scheme == "http":
            # Plain http (loopback test servers only) is forwarded, not tunnelled: the
            # proxy gets the absolute URL and its credentials with the request.
            self._target = url
            self._headers.update(proxy_headers)
        self._pool: HTTPConnectionPool = self._manager.connection_from_url(url)
        self._pool.ConnectionCls = (
            _TimedHTTPSConnection if parts.scheme == "https" else _TimedHTTPConnection
        )

    def awaiting_braze(self) -> int | None:
        """Requests out whose answer has not arrived yet; None through a proxy (unknown)."""
        return None if self._direct is None else self._direct.awaiting_braze()

    @staticmethod
    def written_at() -> float | None:
        """When the calling thread's last `post` had written its request (monotonic), if it did."""
        at: float | None = getattr(_written, "at", None)
        return at

    def post(self, body: bytes) -> Answer:
        """POST `body`; any HTTP answer is returned, whatever its status.

        Raises:
            ConnectFailed: nothing reached Braze.
            AnswerLost: the request may have reached Braze; no answer came back.

        """
        _written.at = None
        direct = self._direct
        if direct is None:
            return self._post_through_proxy(body)
        connection = direct.take()
        direct.sending(connection)
        try:
            connection.post(self._target, self._header_items, body)
            _written.at = time.monotonic()
            response = connection.getresponse()
            data = response.read()
        except Exception as exc:
            connection.close()
            raise _answer_lost(exc) from None
        except BaseException:
            connection.close()
            raise
        finally:
            direct.answered(connection)
        direct.give_back(connection)
        return Answer(response.status, response.reason or "", response.headers, data)

    def _post_through_proxy(self, body: bytes) -> Answer:
        """urllib3's pool, which tunnels through http:// and https:// proxies alike."""
        try:
            response = self._pool.urlopen(
                "POST",
                self._target,
                body=body,
                headers=self._headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=True,
            )
        except errors.NameResolutionError:
            raise ConnectFailed("unknown host (the DNS lookup failed)") from None
        except errors.NewConnectionError as exc:
            raise ConnectFailed(_connect_problem(exc)) from None
        except errors.ConnectTimeoutError:
            raise ConnectFailed("no connection within the connect timeout") from None
        except errors.ProxyError as exc:
            raise ConnectFailed(f"the proxy {self.proxy_name} failed: {_reason(exc)}") from None
        except errors.SSLError as exc:
            if _certificate_refused(exc):
                raise ConnectFailed(
                    f"the TLS certificate does not verify ({_reason(exc)})", certificate=True
                ) from None
            # Mostly a handshake that broke (an https URL at a plain-HTTP port, say); urllib3
            # does not say whether the request had gone out, so it may have.
            raise AnswerLost(f"TLS failed ({_reason(exc)})", tls=True) from None
        except errors.ReadTimeoutError:
            raise AnswerLost("no answer within request_timeout_seconds (read timeout)") from None
        except (errors.HTTPError, OSError) as exc:
            raise AnswerLost(f"the connection broke before the answer ({_reason(exc)})") from None
        return Answer(response.status, response.reason or "", response.headers, response.data)

    def close(self) -> None:
        """Close every kept-alive connection."""
        if self._direct is not None:
            self._direct.close()
        else:
            self._manager.clear()


def _reason(exc: BaseException) -> str:
    """The innermost cause's words, on one line (never headers: no key can be in them)."""
    inner: BaseException = exc
    while True:
        nested = getattr(inner, "reason", None) or inner.__context__
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    text = str(inner) or type(inner).__name__
    return " ".join(text.split())[:200]


def _connect_problem(exc: errors.NewConnectionError) -> str:
    inner = exc.__context__
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    return f"no connection ({_reason(exc)})"


def _certificate_refused(exc: errors.SSLError) -> bool:
    """Whether verification refused the server (not a handshake that broke otherwise)."""
    inner: BaseException | None = exc
    for _ in range(6):  # urllib3 nests the ssl error one or two levels deep
        if inner is None:
            break
        if isinstance(inner, ssl.SSLCertVerificationError | ssl.CertificateError):
            return True
        nested = inner.args[0] if inner.args else None
        inner = nested if isinstance(nested, BaseException) else inner.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)
