"""Warehouse credentials from Peak's connections API.

No Peak REST API returns table rows; Peak hands out the tenant's warehouse credentials,
and the tap then reads with SQL like any Peak user does. One GET, made with `requests`
(the `peak-sdk` package pins old dependencies):

    GET {base}/connections/api/v2/connections/credentials?type=data-warehouse
    Authorization: <token>            (raw: no "Bearer")
"""

from __future__ import annotations

import ipaddress
import re
import typing as t
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from tap_peak_attributes.errors import TapPeakError

CREDENTIALS_PATH = "/connections/api/v2/connections/credentials"
REDSHIFT_PORT = 5439
SNOWFLAKE_SUFFIX = ".snowflakecomputing.com"
#: Query parameters of a Snowflake `connectionString` that say where to connect.
ENDPOINT_KEYS = ("account", "host", "port", "protocol")
_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def base_url(stage: str = "prod", override: str | None = None) -> str:
    """Peak's service URL for a stage, or a validated override.

    The API key travels in a header, so anything but https is refused unless the host is
    loopback (a local test server).
    """
    if override:
        parts = urlsplit(override)
        host = parts.hostname or ""
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(host)):
            msg = (
                f"peak_api_url must use https (plain http only for localhost/127.0.0.0/8/::1), "
                f"not {parts.scheme}://{host}"
            )
            raise TapPeakError(msg)
        return override.rstrip("/")
    if stage == "prod":
        return "https://service.peak.ai"
    return f"https://service.{stage}.peak.ai"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_credentials(
    api_key: str,
    *,
    stage: str = "prod",
    override: str | None = None,
    timeout: float = 30,
    source: str = "peak_api_key",
) -> dict[str, t.Any]:
    """Return Peak's data-warehouse answer; refused or failed calls become one clear line.

    `source` names where the key came from (a setting, or the variable one names).
    """
    url = base_url(stage, override) + CREDENTIALS_PATH
    return get_json(
        url,
        {"type": "data-warehouse"},
        api_key,
        api="connections",
        base=base_url(stage, override),
        timeout=timeout,
        refused=(
            f"Peak refused {source} (HTTP {{status}}): the key is wrong, expired (tenant API "
            f"keys last 3 months) or lacks access; create a new API key in Peak and set {source}"
        ),
    )


def get_json(
    url: str,
    params: t.Mapping[str, str],
    api_key: str,
    *,
    api: str,
    base: str,
    timeout: float,
    refused: str,
    not_found: str | None = None,
) -> dict[str, t.Any]:
    """GET one JSON object from Peak's API, the token raw in `Authorization` (no "Bearer").

    Every failure is one `TapPeakError` line: unreachable, refused (`refused`, with
    `{status}`), unknown (`not_found`, for a 404), any other status, not JSON. The token
    never appears in a message.
    """
    try:
        response = requests.get(
            url,
            params=dict(params),
            headers={"Authorization": api_key, "Accept": "application/json"},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        msg = f"cannot reach Peak's API at {base}: {type(exc).__name__}"
        raise TapPeakError(msg) from None
    if response.status_code in {401, 403}:
        raise TapPeakError(refused.format(status=response.status_code))
    if response.status_code == 404 and not_found:
        raise TapPeakError(not_found)
    if not response.ok:
        msg = f"Peak's {api} API answered HTTP {response.status_code} for {url}"
        raise TapPeakError(msg)
    try:
        answer = response.json()
    except ValueError:
        msg = f"Peak's {api} API did not answer JSON at {url}"
        raise TapPeakError(msg) from None
    if not isinstance(answer, dict):
        msg = f"Peak's {api} API answered an unexpected document (not an object)"
        raise TapPeakError(msg)
    return answer


def _require(answer: t.Mapping[str, t.Any], *keys: str) -> None:
    missing = [k for k in keys if not answer.get(k)]
    if missing:
        msg = f"Peak's warehouse credentials lack {', '.join(missing)}"
        raise TapPeakError(msg)


def redshift_url(answer: t.Mapping[str, t.Any]) -> URL:
    """A psycopg URL for the Redshift answer (Redshift speaks PostgreSQL's protocol).

    No sslmode is forced: libpq's default (`prefer`) negotiates TLS with Redshift.
    """
    _require(answer, "host", "database", "user", "password")
    return URL.create(
        "postgresql+psycopg",
        username=str(answer["user"]),
        password=str(answer["password"]),
        host=str(answer["host"]),
        port=int(answer.get("port") or REDSHIFT_PORT),
        database=str(answer["database"]),
    )


def snowflake_endpoint(answer: t.Mapping[str, t.Any]) -> tuple[str, int | None, dict[str, str]]:
    """Where to connect: account (or host), port, and endpoint query parameters.

    Taken from `connectionString` when it is a `snowflake://` URL naming an account: it is
    the one place that can carry a non-default endpoint (`host`, `port`, `protocol`, e.g.
    a private link or a local emulator). Otherwise the account comes from `host`
    (`xy12345.eu-west-1.snowflakecomputing.com` -> `xy12345.eu-west-1`). A connection
    string whose credentials were not URL-quoted may not parse cleanly; then its host
    part is not a plain account name and `host` is used instead.
    """
    text = answer.get("connectionString")
    if text:
        try:
            parsed: URL | None = make_url(str(text))
        except (sa.exc.ArgumentError, ValueError):
            parsed = None
        if (
            parsed is not None
            and parsed.get_backend_name() == "snowflake"
            and parsed.host
            and _ACCOUNT.fullmatch(parsed.host)
        ):
            query = {
                key: value
                for key in ENDPOINT_KEYS
                if isinstance(value := parsed.query.get(key), str) and value
            }
            return parsed.host, parsed.port, query
    _require(answer, "host")
    host = str(answer["host"]).removeprefix("https://").split("/")[0]
    return host.removesuffix(SNOWFLAKE_SUFFIX), None, {}


def snowflake_url(answer: t.Mapping[str, t.Any]) -> URL:
    """A snowflake-sqlalchemy URL: endpoint, then OAuth token or password, names.

    The endpoint comes from `snowflake_endpoint`; user, password or `accessToken`,
    database, schema, warehouse and role always from their own fields, which need no
    URL quoting. `URL.create` percent-quotes user and password; the database/schema path
    and query values are quoted on rendering.
    """
    _require(answer, "database", "user")
    if not answer.get("password") and not answer.get("accessToken"):
        msg = "Peak's Snowflake credentials have neither password nor accessToken"
        raise TapPeakError(msg)
    host, port, query = snowflake_endpoint(answer)
    database = str(answer["database"])
    if answer.get("schema"):
        database = f"{database}/{answer['schema']}"
    for key in ("warehouse", "role"):
        if answer.get(key):
            query[key] = str(answer[key])
    password: str | None = str(answer["password"]) if answer.get("password") else None
    if answer.get("accessToken"):
        query |= {"authenticator": "oauth", "token": str(answer["accessToken"])}
        password = None
    return URL.create(
        "snowflake",
        username=str(answer["user"]),
        password=password,
        host=host,
        port=port,
        database=database,
        query=query,
    )


def warehouse_url(answer: t.Mapping[str, t.Any]) -> URL:
    """Dispatch on `dataWarehouseType`."""
    kind = str(answer.get("dataWarehouseType", "")).lower()
    if kind in {"amazon_redshift", "redshift"}:
        return redshift_url(answer)
    if kind == "snowflake":
        return snowflake_url(answer)
    msg = f"Peak reported an unsupported dataWarehouseType {kind or '(none)'!r}"
    raise TapPeakError(msg)
