"""Where the warehouse secret comes from: a setting, or an environment variable a setting names.

Meltano writes every setting it knows, passwords included, into
`.meltano/run/<plugin>/*.config.json` (mode 0644) for the length of a run, and a kill -9
leaves the file behind. Variables it does not know are passed to the plugin's process but
never written. So the production way is to leave `sqlalchemy_url` and `peak_api_key` unset
and give the secret in the variable `sqlalchemy_url_env` (default `PEAK_WAREHOUSE_URL`) or
`peak_api_key_env` (default `PEAK_API_KEY`) names; the settings hold only names.

For PostgreSQL/Redshift there is also libpq's own way: a URL without a password, and the
password in `PGPASSWORD` (or `~/.pgpass`), which psycopg reads when connecting.
"""

from __future__ import annotations

import os
import typing as t
from dataclasses import dataclass

from tap_peak_attributes.errors import TapPeakError

DEFAULT_URL_VARIABLE = "PEAK_WAREHOUSE_URL"
DEFAULT_KEY_VARIABLE = "PEAK_API_KEY"


@dataclass(frozen=True)
class WarehouseSecret:
    """The one source of the warehouse: a URL or a Peak API key, and where it was found."""

    url: str | None = None
    peak_api_key: str | None = None
    #: How messages name the source: `sqlalchemy_url`, `PEAK_WAREHOUSE_URL (sqlalchemy_url_env)`.
    source: str = ""

    @property
    def is_configured(self) -> bool:
        """False when nothing names a warehouse (the tap then stops, or reads its sample)."""
        return bool(self.url or self.peak_api_key)


def resolve(
    config: t.Mapping[str, t.Any], environ: t.Mapping[str, str] | None = None
) -> WarehouseSecret:
    """The warehouse's source: the settings, else the variables the `*_env` settings name.

    The variables are read only when neither `sqlalchemy_url` nor `peak_api_key` is set;
    two sources at one level is an error, never a silent choice.
    """
    environ = os.environ if environ is None else environ
    url, key = config.get("sqlalchemy_url"), config.get("peak_api_key")
    if config.get("peak_model_workflow_id"):
        # With the model-run guard the Peak key is needed anyway: a URL then names the
        # warehouse, and the key only asks Peak when the model last finished.
        key = None if url or environ.get(url_variable_of(config)) else key
    if url and key:
        msg = "set either sqlalchemy_url or peak_api_key, not both"
        raise TapPeakError(msg)
    if url:
        return WarehouseSecret(url=url, source="sqlalchemy_url")
    if key:
        return WarehouseSecret(peak_api_key=key, source="peak_api_key")
    url_variable, key_variable = url_variable_of(config), key_variable_of(config)
    url, key = environ.get(url_variable), environ.get(key_variable)
    if url and config.get("peak_model_workflow_id"):
        key = None
    if url and key:
        msg = (
            f"both {url_variable} (sqlalchemy_url_env) and {key_variable} (peak_api_key_env) "
            "are set: unset one; the tap reads the warehouse from a URL or from Peak's API, "
            "not both"
        )
        raise TapPeakError(msg)
    if url:
        return WarehouseSecret(url=url, source=f"{url_variable} (sqlalchemy_url_env)")
    if key:
        return WarehouseSecret(peak_api_key=key, source=f"{key_variable} (peak_api_key_env)")
    return WarehouseSecret(
        source=f"none of sqlalchemy_url, peak_api_key, {url_variable}, {key_variable}"
    )


def url_variable_of(config: t.Mapping[str, t.Any]) -> str:
    """The variable the warehouse URL is read from (`sqlalchemy_url_env`)."""
    return str(config.get("sqlalchemy_url_env") or DEFAULT_URL_VARIABLE)


def key_variable_of(config: t.Mapping[str, t.Any]) -> str:
    """The variable Peak's API key is read from (`peak_api_key_env`)."""
    return str(config.get("peak_api_key_env") or DEFAULT_KEY_VARIABLE)


def peak_key(
    config: t.Mapping[str, t.Any], environ: t.Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The Peak API key and where it came from, for Peak's APIs beyond the credentials.

    `peak_api_key`, else the variable `peak_api_key_env` names; the key is never echoed.
    """
    environ = os.environ if environ is None else environ
    if config.get("peak_api_key"):
        return str(config["peak_api_key"]), "peak_api_key"
    variable = key_variable_of(config)
    key = environ.get(variable)
    if not key:
        msg = (
            f"peak_model_workflow_id needs a Peak API key: export {variable} "
            "(peak_api_key_env) or set peak_api_key"
        )
        raise TapPeakError(msg)
    return key, f"{variable} (peak_api_key_env)"
