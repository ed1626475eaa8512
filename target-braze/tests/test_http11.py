"""The HTTP/1.1 connection against real local servers: TLS verified, proxy tunnels, framing."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from target_braze import http11
from target_braze.client import BrazeClient, RetryPolicy
from target_braze.errors import BrazeFatalError
from target_braze.http11 import Endpoint, Http11Connection, ProtocolError
from target_braze.rate_limiter import RateLimiter
from target_braze.report import RunStats

KEY = "http11-test-key-5150"
ANSWER = b'{"message":"success"}'


# --- servers ------------------------------------------------------------------------------


def _cert(
    name: str, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey | None, *, ca: bool, sans
):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(signer or key, hashes.SHA256())
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A test CA and two server certificates: for 127.0.0.1, and for another name only."""
    folder = tmp_path_factory.mktemp("pki")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "target-braze test CA")])
    ca_key, ca_cert = _cert("target-braze test CA", ca_name, None, ca=True, sans=None)
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for label, sans in (
        ("loopback", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("other", [x509.DNSName("braze.example")]),
    ):
        key, cert = _cert(label, ca_name, ca_key, ca=False, sans=sans)
        pem = folder / f"{label}.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths[label] = pem
    return paths


class _Scripted(socketserver.ThreadingTCPServer):
    """Answers each request on a connection with the next scripted bytes (then closes if
    the script says so); keeps every request it read."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answers: list[bytes | None], tls: ssl.SSLContext | None = None):
        self.gate: threading.Event | None = None  # set: answers may go
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


class _ScriptedHandler(socketserver.BaseRequestHandler):
    server: _Scripted

    def handle(self) -> None:
        sock = self.request
        if self.server.tls is not None:
            try:
                sock = self.server.tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate
        self.server.connections += 1
        buffer = b""
        while self.server.answers:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                buffer += sock.recv(65536)
            self.server.requests.append(head + b"\r\n\r\n" + buffer[:length])
            buffer = buffer[length:]
            answer = self.server.answers.pop(0)
            if self.server.gate is not None:
                self.server.gate.wait(30)
            if answer is None:  # drop the connection without an answer
                return
            sock.sendall(answer)
            framed = b"Content-Length" in answer or b"chunked" in answer
            if b"Connection: close" in answer or b"X-Then: close" in answer or not framed:
                return


@contextlib.contextmanager
def running() -> Iterator[Callable[[socketserver.BaseServer], None]]:
    """Serve each server handed over in a thread of its own; stop them all at the end."""
    servers: list[socketserver.BaseServer] = []

    def run(server: socketserver.BaseServer) -> None:
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)

    yield run
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., _Scripted]]:
    with running() as run:

        def start(answers: list[bytes | None], tls: ssl.SSLContext | None = None) -> _Scripted:
            server = _Scripted(answers, tls)
            run(server)
            return server

        yield start


def tls_context(pem: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


def created(body: bytes = ANSWER, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def client(url: str, **kwargs) -> BrazeClient:
    return BrazeClient(
        url,
        KEY,
        RateLimiter(0, 3.0),
        RunStats(60.0),
        retry=RetryPolicy(max_retries=kwargs.pop("max_retries", 0), base_seconds=0.01),
        timeout=kwargs.pop("timeout", 5.0),
    )


# --- TLS ---------------------------------------------------------------------------------


def test_https_is_verified_against_the_ca_bundle_named_in_the_environment(serve, pki, monkeypatch):
    server = serve([created()], tls_context(pki["loopback"]))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    assert client(server.url).send(b'{"attributes":[]}', 0).status == 201
    assert server.requests[0].startswith(b"POST /users/track HTTP/1.1\r\n")


def test_a_certificate_no_trusted_ca_signed_is_refused(serve, pki, monkeypatch):
    server = serve([created()], tls_context(pki["loopback"]))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(BrazeFatalError, match="SSLCertVerificationError") as failure:
        client(server.url).send(b"{}", 1)
    assert KEY not in str(failure.value)
    assert server.requests == []


def test_a_certificate_for_another_host_name_is_refused(serve, pki, monkeypatch):
    server = serve([created()], tls_context(pki["other"]))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    with pytest.raises(BrazeFatalError, match="SSLCertVerificationError"):
        client(server.url).send(b"{}", 1)
    assert server.requests == []


# --- proxy -------------------------------------------------------------------------------


class _ConnectProxy(socketserver.ThreadingTCPServer):
    """A CONNECT-only proxy that records each tunnel's request head."""

    daemon_threads = True

    def __init__(self, refuse: bytes | None = None):
        self.heads: list[bytes] = []
        self.refuse = refuse
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _ConnectProxy

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        self.server.heads.append(head)
        if self.server.refuse is not None:
            self.request.sendall(self.server.refuse)
            return
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pipes = [
            threading.Thread(target=_pipe, args=(self.request, upstream), daemon=True),
            threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True),
        ]
        for pipe in pipes:
            pipe.start()
        for pipe in pipes:
            pipe.join()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy() -> Iterator[Callable[..., _ConnectProxy]]:
    with running() as run:

        def start(refuse: bytes | None = None) -> _ConnectProxy:
            server = _ConnectProxy(refuse)
            run(server)
            return server

        yield start


def test_https_goes_through_the_environments_proxy_in_a_verified_tunnel(
    serve, pki, proxy, monkeypatch
):
    server = serve([created(), created()], tls_context(pki["loopback"]))
    tunnel = proxy()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    monkeypatch.setenv("HTTPS_PROXY", f"http://ops:s3cret@127.0.0.1:{tunnel.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    braze = client(server.url)
    assert braze.send(b'{"attributes":[]}', 0).status == 201
    assert braze.send(b'{"attributes":[]}', 0).status == 201  # the same tunnel, kept alive
    port = server.server_address[1]
    (head,) = tunnel.heads
    assert head.startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"ops:s3cret") in head
    assert len(server.requests) == 2
    assert b"Proxy-Authorization" not in server.requests[0]  # only the proxy sees it


def test_no_proxy_sends_straight_to_braze(serve, proxy, monkeypatch):
    server = serve([created()])
    tunnel = proxy()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{tunnel.server_address[1]}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert client(server.url).send(b"{}", 1).status == 201
    assert tunnel.heads == []


def test_a_proxy_refusing_the_tunnel_fails_naming_its_answer(serve, pki, proxy, monkeypatch):
    server = serve([created()], tls_context(pki["loopback"]))
    tunnel = proxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{tunnel.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(BrazeFatalError, match="ConnectionRefusedError") as failure:
        client(server.url).send(b"{}", 1)
    assert KEY not in str(failure.value)
    assert server.requests == []


# --- framing -----------------------------------------------------------------------------


def connection_to(server: _Scripted) -> Http11Connection:
    endpoint = Endpoint("127.0.0.1", server.server_address[1], "/users/track", timeout=5.0)
    return Http11Connection(endpoint, {"Authorization": f"Bearer {KEY}"})


def test_one_request_carries_host_length_and_headers_and_the_connection_is_reused(serve):
    server = serve([created(), created(b'{"message":"queued"}')])
    connection = connection_to(server)
    assert connection.post(b"abc").body == ANSWER
    assert connection.post(b"defg").body == b'{"message":"queued"}'
    assert server.connections == 1
    head, _, body = server.requests[1].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /users/track HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.server_address[1]}".encode() in lines
    assert b"Content-Length: 4" in lines
    assert f"Authorization: Bearer {KEY}".encode() in lines
    assert body == b"defg"


def test_chunked_answers_interim_answers_and_header_case_are_read(serve):
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nx-ratelimit-remaining: 7\r\n\r\n"
        b'6;ext=1\r\n{"mess\r\n'
        b'f\r\nage":"success"}\r\n'
        b"0\r\nx-trailer: 1\r\n\r\n"
    )
    server = serve([chunked, created()])
    connection = connection_to(server)
    response = connection.post(b"{}")
    assert (response.status, response.body) == (201, ANSWER)
    assert response.headers.get("X-RateLimit-Remaining") == "7"
    assert connection.post(b"{}").status == 201  # the trailer was consumed, in step
    assert server.connections == 1


def test_an_answer_without_length_is_read_to_the_close_and_the_next_request_reconnects(serve):
    server = serve(
        [
            b"HTTP/1.0 201 Created\r\n\r\n" + ANSWER,
            created(extra=b"Connection: close\r\n"),
            created(),
        ]
    )
    connection = connection_to(server)
    assert connection.post(b"{}").body == ANSWER
    assert connection.post(b"{}").body == ANSWER
    assert connection.post(b"{}").body == ANSWER
    assert server.connections == 3


def test_a_connection_the_server_closed_while_idle_is_reopened_before_a_request(serve, monkeypatch):
    closing = created(extra=b"X-Then: close\r\n")
    server = serve([closing, created()])
    connection = connection_to(server)
    assert connection.post(b"{}").status == 201
    # The scripted server answered without "Connection: close", then dropped the connection
    # (as a server's idle timeout does): wait until the socket shows it.
    for _ in range(3000):
        if select.select([connection.sock], [], [], 0.01)[0]:
            break
    monkeypatch.setattr(http11, "IDLE_CHECK_SECONDS", 0.0)  # idle "long enough"
    assert connection.post(b"{}").status == 201  # not a dropped-connection error
    assert server.connections == 2


def test_a_connection_used_just_before_is_not_checked_and_a_close_then_fails_the_request(
    serve,
):
    server = serve([created(extra=b"X-Then: close\r\n"), created()])
    connection = connection_to(server)
    assert connection.post(b"{}").status == 201
    for _ in range(3000):
        if select.select([connection.sock], [], [], 0.01)[0]:
            break
    # Within IDLE_CHECK_SECONDS: sent on the closed connection, and failed as dropped (the
    # client retries that, as any dropped connection).
    with pytest.raises(ConnectionError):
        connection.post(b"{}")
    assert connection.sock is None


def test_a_dropped_connection_or_a_non_http_answer_is_an_oserror_and_closes(serve):
    server = serve([None, b"SMTP ready\r\n\r\n", created()])
    connection = connection_to(server)
    with pytest.raises(ConnectionResetError):
        connection.post(b"{}")
    assert connection.sock is None
    with pytest.raises(ProtocolError):
        connection.post(b"{}")
    assert connection.sock is None
    assert connection.post(b"{}").status == 201


def test_a_dropped_answer_is_retried_by_the_client(serve):
    server = serve([None, created()])
    braze = client(server.url, max_retries=1)
    assert braze.send(b"{}", 1).status == 201
    assert len(server.requests) == 2


def test_answer_state_says_whether_a_request_waits_for_its_answer_or_its_reader(serve):
    server = serve([created()])
    server.gate = threading.Event()
    connection = connection_to(server)
    assert connection.answer_state() == 0  # nothing out
    poster = threading.Thread(target=connection.post, args=(b"{}",))
    poster.start()
    for _ in range(3000):  # until the request is out (progress, not a deadline)
        if connection.answer_state() == 1:
            break
        threading.Event().wait(0.01)
    assert connection.answer_state() == 1  # sent; Braze has not answered
    server.gate.set()
    poster.join(30)
    assert connection.answer_state() == 0  # answered and read


def test_an_answer_arrived_but_unread_is_state_2():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        connection = connection_to_nowhere()
        connection.sock = ours
        connection._sent = True  # as post() leaves it between sendall and reading
        assert connection.answer_state() == 1
        theirs.sendall(created())
        for _ in range(3000):
            if connection.answer_state() == 2:
                break
            threading.Event().wait(0.01)
        assert connection.answer_state() == 2
        connection.sock = None


def connection_to_nowhere() -> Http11Connection:
    return Http11Connection(Endpoint("127.0.0.1", 9, "/users/track", timeout=5.0), {})
