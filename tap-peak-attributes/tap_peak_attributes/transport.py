"""How a PostgreSQL (or Redshift) warehouse is reached off loopback: verified TLS, SCRAM.

libpq's default (`sslmode=prefer`) falls back to plain TCP when the server refuses TLS,
and then answers any password request: a server (or anyone in between) that refuses TLS
and asks for a cleartext password gets it. So for a host that is not loopback the
connection gets `sslmode=verify-full` (TLS, certificate and host name checked) and
`require_auth=scram-sha-256` (libpq 16 and later: the password never crosses the wire).
A URL asking for less is refused with one line, unless `allow_insecure_postgres` says
to connect as it says.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from tap_peak_attributes.errors import TapPeakError

logger = logging.getLogger("tap-peak-attributes")

SAFE_SSLMODE = "verify-full"
SAFE_AUTH = "scram-sha-256"
#: Dialects whose driver is libpq (psycopg, psycopg2), where these parameters apply.
LIBPQ_DIALECTS = frozenset({"postgresql", "redshift"})


def safe_connect_args(host: str | None, query: Mapping[str, object], source: str) -> dict[str, str]:
    """Connection parameters to add for `host` (None: libpq's default), or {} on loopback.

    Raises:
        TapPeakError: the URL asks for a weaker sslmode or authentication off loopback.

    """
    hosts = _hosts(host, query)
    remote = [h for h in hosts if not _is_loopback(h)]
    if not remote:
        return {}
    where = f"{source} (host {remote[0]})"
    sslmode = _text(query.get("sslmode")) or os.environ.get("PGSSLMODE")
    if sslmode and sslmode != SAFE_SSLMODE:
        msg = (
            f"{where} asks for sslmode={sslmode}, which can send the password unencrypted or "
            f"to an unverified server: use sslmode={SAFE_SSLMODE} (the default off loopback), "
            "or set allow_insecure_postgres: true to connect as the URL says"
        )
        raise TapPeakError(msg)
    auth = _text(query.get("require_auth")) or os.environ.get("PGREQUIREAUTH")
    if auth and auth != SAFE_AUTH:
        msg = (
            f"{where} asks for require_auth={auth}: use {SAFE_AUTH} (the default off "
            "loopback), or set allow_insecure_postgres: true to connect as the URL says"
        )
        raise TapPeakError(msg)
    extra = {"sslmode": SAFE_SSLMODE}
    if libpq_version() >= 160000:  # libpq 16: require_auth and sslrootcert=system
        extra["require_auth"] = SAFE_AUTH
        has_root = query.get("sslrootcert") or os.environ.get("PGSSLROOTCERT")
        if not has_root and not (Path.home() / ".postgresql" / "root.crt").exists():
            extra["sslrootcert"] = "system"  # the operating system's trusted CAs
    else:
        logger.warning(
            "libpq %s is older than 16: the warehouse connection verifies the server's "
            "certificate (sslmode=%s) but cannot also refuse non-SCRAM password requests",
            libpq_version(),
            SAFE_SSLMODE,
        )
    return {k: v for k, v in extra.items() if k not in query}


def libpq_version() -> int:
    """The libpq psycopg uses (160000 for 16.0), or 0 when psycopg is not installed."""
    try:
        import psycopg  # noqa: PLC0415 (the PostgreSQL extra)
    except ImportError:
        return 0
    return int(psycopg.pq.version())


def _text(value: object) -> str | None:
    if isinstance(value, tuple | list):
        value = value[-1] if value else None
    return None if value is None else str(value)


def _hosts(host: str | None, query: Mapping[str, object]) -> list[str]:
    hosts = [host or ""]
    for key in ("host", "hostaddr"):
        value = _text(query.get(key))
        if value:
            hosts = value.split(",")
    if not any(hosts):
        hosts = (os.environ.get("PGHOST") or "").split(",")
    return hosts


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if not host or host.startswith(("/", "@")) or host.lower() == "localhost":
        return True  # a Unix-domain socket (libpq's default) or the local host by name
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
