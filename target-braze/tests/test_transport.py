"""The transport against real local servers: TLS verified, both proxy kinds, reuse, one write."""

from __future__ import annotations

import datetime as dt
import http.client
import http.server
import ipaddress
import select
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from target_braze.client import BrazeClient, RateLimiter, RetryPolicy
from target_braze.errors import BrazeFatalError
from target_braze.report import RunStats

KEY = "transport-test-key-5150"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy", "NO_PROXY", "no_proxy")  # fmt: skip


# --- certificates ---------------------------------------------------------------------------


def _cert(name: str, issuer: x509.Name, signer: Any, *, ca: bool, sans: Any) -> tuple[Any, Any]:
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
    return key, builder.sign(signer or key, hashes.SHA256())


def _pem(cert: Any, key: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A test CA, certificates it signed for 127.0.0.1 and for another name, and one a
    stranger CA signed for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("pki")
    paths = {}
    for ca_label, leaf_label in (("ca", "loopback"), ("stranger_ca", "stranger")):
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {ca_label}")])
        ca_key, ca_cert = _cert(f"test {ca_label}", ca_name, None, ca=True, sans=None)
        paths[ca_label] = folder / f"{ca_label}.pem"
        paths[ca_label].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        key, cert = _cert(leaf_label, ca_name, ca_key, ca=False, sans=sans)
        paths[leaf_label] = folder / f"{leaf_label}.pem"
        paths[leaf_label].write_bytes(_pem(cert, key))
        if ca_label == "ca":  # the trusted CA, for another host name than 127.0.0.1
            other_key, other = _cert(
                "other", ca_name, ca_key, ca=False, sans=[x509.DNSName("braze.example")]
            )
            paths["other_name"] = folder / "other_name.pem"
            paths["other_name"].write_bytes(_pem(other, other_key))
    return paths


def server_context(pem: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


# --- servers ------------------------------------------------------------------------------


class _RefusalsKept(socketserver.BaseServer):
    """A client refusing our certificate (the verification tests) is expected: the error
    is kept in `refused`, not printed as a traceback into the suite's output. Any other
    error is printed as socketserver does."""

    refused: list[BaseException]

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError | ConnectionError):
            self.refused.append(error)
            return
        super().handle_error(request, client_address)


class BrazeStandIn(_RefusalsKept, http.server.ThreadingHTTPServer):
    """Answers every POST with 201; counts connections and requests (keep-alive: HTTP/1.1)."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _BrazeHandler)
        self.tls = tls
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self.refused: list[BaseException] = []

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"


class _BrazeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: BrazeStandIn

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.request.close()
                raise
        self.server.connections += 1
        super().setup()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(dict(self.headers))
        body = b'{"message":"success"}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ConnectProxy(_RefusalsKept, socketserver.ThreadingTCPServer):
    """A CONNECT-only proxy, over TLS itself when given a context; counts tunnels."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.tls = tls
        self.refused = []
        self.tunnels: list[str] = []

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        client = self.request
        if self.server.tls is not None:
            client = self.server.tls.wrap_socket(client, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _relay(client, upstream)


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes (TLS records pass through untouched)."""
    while True:
        pending = client.pending() if isinstance(client, ssl.SSLSocket) else 0
        readable = [client] if pending else select.select([client, upstream], [], [], 30)[0]
        if not readable:
            return
        for source in readable:
            sink = upstream if source is client else client
            try:
                data = source.recv(65536)
            except (ssl.SSLError, OSError):
                return
            if not data:
                return
            sink.sendall(data)


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    servers: list[socketserver.BaseServer] = []

    def start(server: socketserver.BaseServer) -> Any:
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def environment(monkeypatch, pki) -> pytest.MonkeyPatch:
    """No proxy from the machine; the test CA is the bundle."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    return monkeypatch


def client(url: str, **kwargs: Any) -> BrazeClient:
    return BrazeClient(
        url,
        KEY,
        RateLimiter(0, 3.0),
        RunStats(60.0),
        retry=RetryPolicy(max_retries=1, base_seconds=0.01),
        **kwargs,
    )


# --- tests --------------------------------------------------------------------------------


def test_https_is_verified_against_the_ca_bundle_and_one_connection_is_reused(
    serve, pki, environment
):
    braze = serve(BrazeStandIn(server_context(pki["loopback"])))
    sender = client(braze.url)
    for _ in range(5):
        assert sender.send(b'{"attributes":[]}', 1).status == 201
    assert len(braze.requests) == 5
    assert braze.connections == 1  # keep-alive: five requests, one connection
    assert braze.requests[0]["Authorization"] == f"Bearer {KEY}"


def test_connections_are_shared_by_threads_up_to_the_pool_size(serve, pki, environment):
    braze = serve(BrazeStandIn(server_context(pki["loopback"])))
    sender = client(braze.url, max_connections=4)
    barrier = threading.Barrier(4)

    def send_many() -> None:
        barrier.wait()
        for _ in range(10):
            sender.send(b"{}", 1)

    threads = [threading.Thread(target=send_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(braze.requests) == 40
    assert 1 <= braze.connections <= 4


def test_a_certificate_no_trusted_ca_signed_fails_the_run_with_one_line(serve, pki, environment):
    braze = serve(BrazeStandIn(server_context(pki["stranger"])))
    with pytest.raises(BrazeFatalError) as caught:
        client(braze.url).send(b"{}", 1)
    message = str(caught.value)
    assert message.startswith(f"rest_endpoint {braze.url}: the TLS certificate does not verify")
    assert "\n" not in message
    assert KEY not in message
    assert braze.requests == []


def test_a_certificate_for_another_host_name_fails_the_run_with_one_line(serve, pki, environment):
    braze = serve(BrazeStandIn(server_context(pki["other_name"])))
    with pytest.raises(BrazeFatalError, match=r"^rest_endpoint .*does not verify") as caught:
        client(braze.url).send(b"{}", 1)
    assert "\n" not in str(caught.value)
    assert braze.requests == []


@pytest.mark.parametrize("proxy_tls", [False, True], ids=["http-proxy", "https-proxy"])
def test_https_goes_through_the_environments_proxy_in_a_verified_tunnel(
    serve, pki, environment, proxy_tls
):
    braze = serve(BrazeStandIn(server_context(pki["loopback"])))
    proxy = serve(ConnectProxy(server_context(pki["loopback"]) if proxy_tls else None))
    environment.setenv("HTTPS_PROXY", proxy.url)
    sender = client(braze.url)
    for _ in range(3):
        assert sender.send(b"{}", 1).status == 201
    port = braze.server_address[1]
    assert proxy.tunnels == [f"127.0.0.1:{port}"]  # one tunnel, reused
    assert len(braze.requests) == 3
    assert braze.connections == 1


def test_no_proxy_sends_straight_to_braze(serve, pki, environment):
    braze = serve(BrazeStandIn(server_context(pki["loopback"])))
    proxy = serve(ConnectProxy(None))
    environment.setenv("HTTPS_PROXY", proxy.url)
    environment.setenv("NO_PROXY", "127.0.0.1")
    assert client(braze.url).send(b"{}", 1).status == 201
    assert proxy.tunnels == []
    assert len(braze.requests) == 1


def test_a_proxy_that_verifies_against_no_trusted_ca_fails_with_one_line(serve, pki, environment):
    braze = serve(BrazeStandIn(server_context(pki["loopback"])))
    proxy = serve(ConnectProxy(server_context(pki["stranger"])))
    environment.setenv("HTTPS_PROXY", proxy.url)
    with pytest.raises(BrazeFatalError, match=r"^rest_endpoint .*proxy") as caught:
        client(braze.url).send(b"{}", 1)
    assert "\n" not in str(caught.value)
    assert braze.requests == []


# --- the direct path: http.client's connections in a pool of our own -------------------------


class ClosingStandIn(BrazeStandIn):
    """Answers like `BrazeStandIn`, then closes the connection without saying so first (no
    `Connection: close`), as a load balancer closing an idle keep-alive connection does."""

    def __init__(self, tls: ssl.SSLContext | None, *, say_so: bool = False) -> None:
        super().__init__(tls)
        self.RequestHandlerClass = _ClosingHandler
        self.say_so = say_so
        self.closed = threading.Event()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.set()


class _ClosingHandler(_BrazeHandler):
    server: ClosingStandIn

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(dict(self.headers))
        body = b'{"message":"success"}'
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        if self.server.say_so:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


def test_a_request_goes_out_in_one_write(serve, environment, monkeypatch):
    """The head and the body are one `send` (one system call): http.client writes the
    head with a single `send` ending in an empty line, which `_Connection` relies on."""
    braze = serve(BrazeStandIn(None))
    writes: list[bytes] = []
    library_send = http.client.HTTPConnection.send

    def counted(self: http.client.HTTPConnection, data: Any) -> None:
        writes.append(bytes(data))
        library_send(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", counted)
    sender = client(braze.url)
    body = b'{"attributes":[{"external_id":"u1","peak_segment":"gold"}]}'
    for _ in range(3):
        assert sender.send(body, 1).status == 201
    assert len(writes) == 3  # one write per request
    head, _, sent_body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /users/track HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert sent_body == body
    assert braze.connections == 1


def test_a_connection_the_server_closed_while_idle_is_not_used(serve, environment):
    """A kept-alive connection Braze closed meanwhile is seen before anything is written on
    it: the request goes out on a new connection, and no event becomes of unknown delivery."""
    braze = serve(ClosingStandIn(None))
    sender = client(braze.url)
    assert sender.send(b'{"events":[]}', 1, resend_safe=False).status == 201
    assert braze.closed.wait(10)
    outcome = sender.send(b'{"events":[]}', 1, resend_safe=False)
    assert (outcome.status, outcome.ambiguous) == (201, False)
    assert braze.connections == 2
    assert len(braze.requests) == 2


def test_a_connection_the_server_says_it_closes_is_not_kept(serve, pki, environment):
    braze = serve(ClosingStandIn(server_context(pki["loopback"]), say_so=True))
    sender = client(braze.url)
    for _ in range(3):
        assert sender.send(b"{}", 1, resend_safe=False).status == 201
    assert braze.connections == 3
    assert len(braze.requests) == 3


def test_plain_http_through_a_proxy_is_forwarded_to_it(serve, environment):
    """With a proxy, urllib3's pool carries the request (here the proxy refuses anything
    but CONNECT, so the answer is its own 405, not Braze's)."""
    braze = serve(BrazeStandIn(None))
    proxy = serve(ConnectProxy(None))
    environment.setenv("HTTP_PROXY", proxy.url)
    outcome_status = client(braze.url, timeout=5.0)._transport.post(b"{}").status
    assert outcome_status == 405
    assert braze.requests == []


class GatedStandIn(BrazeStandIn):
    """Answers like `BrazeStandIn` once `gate` is set (a distant Braze, held at will)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.RequestHandlerClass = _GatedHandler
        self.gate = threading.Event()
        self.arrived = threading.Event()


class _GatedHandler(_BrazeHandler):
    server: GatedStandIn

    def do_POST(self) -> None:
        self.server.arrived.set()
        self.server.gate.wait(30)
        super().do_POST()


def test_requests_whose_answer_has_not_arrived_are_counted_as_awaiting_braze(serve, environment):
    braze = serve(GatedStandIn())
    sender = client(braze.url)
    assert sender.awaiting_braze() == 0
    answered = threading.Thread(target=sender.send, args=(b"{}", 1))
    answered.start()
    assert braze.arrived.wait(10)
    assert sender.awaiting_braze() == 1  # written, no answer yet: Braze's to give
    braze.gate.set()
    answered.join(10)
    assert sender.awaiting_braze() == 0
    assert len(braze.requests) == 1
