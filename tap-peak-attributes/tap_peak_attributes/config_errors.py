"""Configuration problems as one line: which setting, what is wrong, what to do.

singer-sdk validates the config against the JSON Schema and, on failure, logs jsonschema's
raw messages (`'wider' is not one of ['wide', 'long'] in config['streams'][0]['shape']`)
and then `Config validation failed`. Here the same schema is checked again and the first
problem is explained in the tap's own words, naming the setting, the allowed values or
the expected type, e.g.

    streams[customer_attributes].shape: 'wider' is not allowed; use one of: wide, long
    lookback_window_minutes: 'abc' is not a whole number; give a whole number, e.g. 60
"""

from __future__ import annotations

import copy
import difflib
import typing as t

from singer_sdk.typing import DEFAULT_JSONSCHEMA_VALIDATOR

if t.TYPE_CHECKING:
    from jsonschema import ValidationError

#: How each JSON type is named to the user, and an example of a valid value.
TYPE_WORDS: dict[str, tuple[str, str]] = {
    "integer": ("a whole number", "60"),
    "number": ("a number", "0.5"),
    "boolean": ("true or false", "true"),
    "string": ("text", '"publish"'),
    "array": ("a list", '["a", "b"]'),
    "object": ("an object", '{"key": "value"}'),
}
_SHOWN = 60


def setting_path(path: t.Sequence[str | int], config: t.Mapping[str, t.Any]) -> str:
    """`streams[customer_attributes].shape`: list entries of `streams` by their name."""
    text = ""
    node: t.Any = config
    for part in path:
        if isinstance(part, int):
            name = None
            if isinstance(node, list) and part < len(node) and isinstance(node[part], dict):
                name = node[part].get("name") or node[part].get("table")
            text += f"[{name if isinstance(name, str) and name else part}]"
        else:
            text += f".{part}" if text else str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return text


def _shown(value: t.Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def explain(error: ValidationError, config: t.Mapping[str, t.Any]) -> str:
    """One problem, in words: the setting, what is wrong with it, what to do."""
    path = list(error.absolute_path)
    where = setting_path(path, config) or "config"
    validator = error.validator
    if validator == "enum":
        allowed = ", ".join(str(v) for v in t.cast("list[t.Any]", error.validator_value))
        return f"{where}: {_shown(error.instance)} is not allowed; use one of: {allowed}"
    if validator == "type":
        wanted = error.validator_value
        kinds = [wanted] if isinstance(wanted, str) else [k for k in wanted if k != "null"]
        words = " or ".join(TYPE_WORDS.get(k, (k, ""))[0] for k in kinds)
        example = TYPE_WORDS.get(kinds[0], ("", ""))[1] if kinds else ""
        hint = f", e.g. {example}" if example else ""
        return f"{where}: {_shown(error.instance)} is not {words}; give {words}{hint}"
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{where}: {missing!r} is required"
    if validator == "additionalProperties":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


#: The setting that lets a config carry names the tap does not know, on purpose.
ESCAPE_HATCH = "ignore_unknown_settings"


def unknown_setting_problem(config: t.Mapping[str, t.Any], schema: dict[str, t.Any]) -> str | None:
    """The first setting name the tap does not know (top level or in a stream), or None.

    singer-sdk ignores unknown names, so a misspelled setting would silently not apply.
    Names listed in `ignore_unknown_settings` are deliberate extras.
    """
    known = set(schema.get("properties", {}))
    allowed = config.get(ESCAPE_HATCH)
    extras = {str(name) for name in allowed} if isinstance(allowed, list) else set()
    for name in config:
        if name not in known and name not in extras:
            return _unknown(str(name), str(name), known, "a tap-peak-attributes setting") + (
                f" (a deliberate extra: list it in {ESCAPE_HATCH})"
            )
    stream_schema = schema.get("properties", {}).get("streams", {}).get("items", {})
    stream_known = set(stream_schema.get("properties", {}))
    streams = config.get("streams")
    if stream_known and isinstance(streams, list):
        for index, entry in enumerate(streams):
            if not isinstance(entry, dict):
                continue
            for name in entry:
                if name not in stream_known:
                    where = setting_path(["streams", index, name], config)
                    return _unknown(where, str(name), stream_known, "a stream setting")
    return None


def _unknown(where: str, name: str, known: set[str], what: str) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else "; `tap-peak-attributes --about` lists them"
    return f"{where} is not {what}{hint}"


def describe_config_problems(config: t.Mapping[str, t.Any], schema: dict[str, t.Any]) -> str | None:
    """The first problem of `config` against `schema` in one line, or None if it is valid.

    Validated as singer-sdk validates (same validator class, no format checks), on a copy:
    singer-sdk's validator writes defaults into the config it checks.
    """
    unknown = unknown_setting_problem(config, schema)
    if unknown:
        return unknown
    validator = DEFAULT_JSONSCHEMA_VALIDATOR(schema)
    errors = list(validator.iter_errors(copy.deepcopy(dict(config))))
    if not errors:
        return None
    text = explain(errors[0], config)
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text
