"""A refused setting as one line for people: which ``DIM_*`` variable (or flag), what is wrong
with its value, and what it expects — instead of pydantic's traceback."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode, SettingsError

from services.cli.masking import is_secret
from services.settings import Settings


def explain(exc: ValidationError, from_flags: set[str] | None = None) -> str:
    """The first problem of `exc` (and how many more), naming the variable; a secret's value is
    not repeated."""
    problems = exc.errors(include_url=False)
    first = problems[0]
    given = str(first["loc"][0]) if first["loc"] else ""
    name = _field_of(given)
    value = first.get("input")
    alias = Settings.model_fields[name].validation_alias if name in Settings.model_fields else None
    if isinstance(alias, AliasChoices):  # which of them was set, pydantic does not say
        line = " or ".join(map(str, alias.choices))
    elif name in Settings.model_fields:
        line = Settings.variable(name)
    else:
        line = given or "a setting"
    if not is_secret(name, value):
        line += f"={_short(value)}"
    if name in (from_flags or set()):
        line += " (from a flag)"
    why = str(first["msg"]).removeprefix("Value error, ").replace("Input should", "should")
    line += f": {why}"
    field = Settings.model_fields.get(name)
    what = expected(field) if field is not None else "text"
    if what != "text":  # for text, a validator's message says what it wants
        line += f"; expected {what}"
    if len(problems) > 1:
        line += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return line


def _field_of(given: str) -> str:
    """The field an error names: by its own name, or by the variable it is read from (OTEL_*)."""
    if given in Settings.model_fields:
        return given
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        if given in choices:
            return name
    return given


def explain_source(exc: SettingsError) -> str:
    """A value pydantic-settings could not decode (a JSON setting that is not JSON)."""
    m = re.search(r'field "(\w+)"', str(exc))
    if m is None:
        return f"the DIM_* settings cannot be read: {exc}"
    name = m.group(1)
    field = Settings.model_fields.get(name)
    what = expected(field) if field is not None else "a valid value"
    variable = Settings.variable(name) if field is not None else name
    return f"{variable}: not valid JSON; expected {what}"


def _short(value: object, most: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def expected(field: FieldInfo) -> str:
    """What a setting accepts, in words: its type and bounds."""
    kind = _kind(field.annotation)
    if typing.get_origin(field.annotation) is dict and NoDecode in field.metadata:
        kind = "'alias=model' pairs, comma-separated"
    bounds = {}
    for m in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(m, attr, None) is not None:
                bounds[attr] = getattr(m, attr)
    if "ge" in bounds and "le" in bounds:
        return f"{kind} from {bounds['ge']} to {bounds['le']}"
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " ".join([kind, *(f"{signs[k]} {v}" for k, v in bounds.items())])


def _kind(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        inner = _kind(args[0]) if len(args) == 1 else " or ".join(_kind(a) for a in args)
        return f"{inner}, or empty for unset"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _kind(args[0])
    if origin is tuple:
        if args and typing.get_origin(args[0]) is typing.Literal:
            return "a comma-separated list of " + ", ".join(map(str, typing.get_args(args[0])))
        return "a comma-separated list"
    if origin is dict:
        return "a JSON object"
    simple = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        Path: "a path",
        SecretStr: "text",
    }
    return simple.get(annotation, str(annotation))
