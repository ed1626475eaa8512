r"""Settings problems as one line: which setting, what is wrong, and what to do.

singer-sdk validates the config against the JSON Schema with jsonschema's raw messages
(`'abc' does not match '^[0-9]*\.?[0-9]+$'`), and ignores a setting it does not know: a
misspelled `rejected_record_path` silently sends rejects nowhere. Here the config is
checked again, and the first problem is said in words naming the setting, the value
(never a secret's) and the expected type or the closest known name, e.g.

    setting max_rejected_ratio: 'abc' is not a number; give a number, e.g. 0.05
    setting stream_mappings.events.identifer_property is not a stream setting; did you
    mean identifier_property?
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from singer_sdk.typing import DEFAULT_JSONSCHEMA_VALIDATOR

#: How each JSON type is named to the user, with an example of a valid value.
_TYPE_WORDS: dict[str, tuple[str, str]] = {
    "integer": ("a whole number", "8"),
    "number": ("a number", "0.05"),
    "boolean": ("true or false", "true"),
    "string": ("text", ""),
    "array": ("a list", '["a", "b"]'),
    "object": ("an object", '{"key": "value"}'),
}
_SHOWN = 60
#: The setting that lets a config carry names target-braze does not know, on purpose.
ESCAPE_HATCH = "ignore_unknown_settings"


def unknown_setting(
    config: Mapping[str, Any], known: Iterable[str], stream_known: Iterable[str]
) -> str | None:
    """The first setting name target-braze does not know, in one line, or None.

    Names listed in `ignore_unknown_settings` are deliberate extras and pass; so does any
    name Meltano adds for itself (none today).
    """
    known = set(known)
    stream_known = set(stream_known)
    allowed = config.get(ESCAPE_HATCH) or []
    extras = {str(name) for name in allowed} if isinstance(allowed, list) else set()
    for name in config:
        if name not in known and name not in extras:
            return _unknown(name, known, "a target-braze setting") + (
                f" (a deliberate extra: list it in {ESCAPE_HATCH})"
            )
    mappings = config.get("stream_mappings")
    if isinstance(mappings, Mapping):
        for stream, entry in mappings.items():
            if not isinstance(entry, Mapping):
                continue
            for name in entry:
                if name not in stream_known:
                    where = f"stream_mappings.{stream}.{name}"
                    return _unknown(where, stream_known, "a stream setting", name)
    return None


def _unknown(where: str, known: set[str], what: str, name: str | None = None) -> str:
    close = difflib.get_close_matches(name or where, sorted(known), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else "; `target-braze --about` lists the settings"
    return f"setting {where} is not {what}{hint}"


def schema_problem(
    config: Mapping[str, Any], schema: dict[str, Any], secret: Iterable[str]
) -> str | None:
    """The first problem of `config` against `schema`, in one line, or None if it is valid.

    Validated on a copy, as singer-sdk validates (its validator writes defaults into what
    it checks). A secret setting's value is never shown.
    """
    validator = DEFAULT_JSONSCHEMA_VALIDATOR(schema)
    errors = sorted(
        validator.iter_errors(copy.deepcopy(dict(config))),
        key=lambda error: [str(part) for part in error.absolute_path],
    )
    if not errors:
        return None
    text = _explain(errors[0], set(secret))
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def _explain(error: Any, secret: set[str]) -> str:
    path: Sequence[Any] = list(error.absolute_path)
    where = ".".join(str(part) for part in path) or "config"
    shown = "(value hidden)" if path and str(path[0]) in secret else _shown(error.instance)
    validator = error.validator
    if validator == "enum":
        allowed = ", ".join(str(value) for value in error.validator_value)
        return f"setting {where}: {shown} is not allowed; use one of: {allowed}"
    kinds = _expected_kinds(error)
    if kinds:
        words = " or ".join(_TYPE_WORDS.get(kind, (kind, ""))[0] for kind in kinds)
        example = _TYPE_WORDS.get(kinds[0], ("", ""))[1]
        hint = f", e.g. {example}" if example else ""
        return f"setting {where}: {shown} is not {words}; give {words}{hint}"
    return f"setting {where}: {error.message}"


def _expected_kinds(error: Any) -> list[str]:
    """The JSON types a value was expected to have ([] if the problem is not its type)."""
    if error.validator == "type":
        wanted = error.validator_value
        kinds = [wanted] if isinstance(wanted, str) else list(wanted)
        return [kind for kind in kinds if kind != "null"]
    if error.validator == "pattern" and isinstance(error.schema, Mapping):
        # A number setting accepts numeric strings too (Meltano passes environment
        # variables as text): a string that is no number is a number's problem.
        declared = error.schema.get("type")
        if isinstance(declared, list) and "number" in declared:
            return ["number"]
    return []


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
