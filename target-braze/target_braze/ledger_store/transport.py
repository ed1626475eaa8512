"""How a PostgreSQL ledger is reached: TLS with a verified server, and SCRAM, off loopback.

libpq's default (`sslmode=prefer`) falls back to plain TCP when the server refuses TLS,
and then answers any password request: a server (or anyone in between) that refuses TLS
and asks for a cleartext password gets it. So for a host that is not loopback, the
ledger URL gets `sslmode=verify-full` (TLS, certificate and host name checked) and
`require_auth=scram-sha-256` (libpq 16 and later: the password never crosses the wire,
and a server that asks for it in clear is refused). A URL asking for less is refused
with one line, unless `allow_insecure_postgres` says to use it as given.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode

from target_braze.errors import ConfigError

logger = logging.getLogger("target_braze")

SAFE_SSLMODE = "verify-full"
SAFE_AUTH = "scram-sha-256"
_SETTING = "allow_insecure_postgres"


def secure_postgres_url(url: str, *, allow_insecure: bool, setting: str = "ledger_url") -> str:
    """`url` with the safe transport parameters added where its hosts are not loopback.

    Raises:
        ConfigError: the URL asks for a weaker sslmode or authentication than the safe
            defaults, for a host that is not loopback, and `allow_insecure` is false.

    """
    if allow_insecure or not url.startswith("postgres"):
        return url
    base, _, query = url.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    remote = [h for h in _hosts(base, params) if not _is_loopback(h)]
    if not remote:
        return url
    where = f"{setting} (host {remote[0]})"
    sslmode = params.get("sslmode") or os.environ.get("PGSSLMODE")
    if sslmode and sslmode != SAFE_SSLMODE:
        raise ConfigError(
            f"{where} asks for sslmode={sslmode}, which can send the password unencrypted or "
            f"to an unverified server: use sslmode={SAFE_SSLMODE} (the default off loopback), "
            f"or set {_SETTING}: true to connect as the URL says"
        )
    auth = params.get("require_auth") or os.environ.get("PGREQUIREAUTH")
    if auth and auth != SAFE_AUTH:
        raise ConfigError(
            f"{where} asks for require_auth={auth}: use {SAFE_AUTH} (the default off "
            f"loopback), or set {_SETTING}: true to connect as the URL says"
        )
    extra = {"sslmode": SAFE_SSLMODE}
    if libpq_version() >= 160000:  # libpq 16: require_auth and sslrootcert=system
        extra["require_auth"] = SAFE_AUTH
        if (
            not (params.get("sslrootcert") or os.environ.get("PGSSLROOTCERT"))
            and not (Path.home() / ".postgresql" / "root.crt").exists()
        ):
            extra["sslrootcert"] = "system"  # the operating system's trusted CAs
    else:
        logger.warning(
            "libpq %s is older than 16: the ledger connection verifies the server's "
            "certificate (sslmode=%s) but cannot also refuse non-SCRAM password requests",
            libpq_version(),
            SAFE_SSLMODE,
        )
    params.update({k: v for k, v in extra.items() if k not in params})
    return f"{base}?{urlencode(params, quote_via=quote)}"


def libpq_version() -> int:
    """The libpq psycopg uses (160000 for 16.0), or 0 when psycopg is not installed."""
    try:
        import psycopg  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return 0
    return int(psycopg.pq.version())


def _hosts(base: str, params: dict[str, str]) -> list[str]:
    """The hosts libpq would connect to: URL netloc, `host`/`hostaddr` parameters, PGHOST."""
    netloc = base.partition("://")[2].partition("/")[0].rpartition("@")[2]
    hosts = []
    for part in netloc.split(","):
        host = part
        if host.startswith("["):
            host = host[1 : host.find("]")]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        hosts.append(unquote(host))
    for key in ("host", "hostaddr"):
        if params.get(key):
            hosts = params[key].split(",")
    if not any(hosts):
        hosts = (os.environ.get("PGHOST") or "").split(",")
    return hosts


def _is_loopback(host: str) -> bool:
    host = host.strip()
    if not host or host.startswith(("/", "@")) or host.lower() == "localhost":
        return True  # a Unix-domain socket (libpq's default) or the local host by name
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
