"""Typed config values: a JSON value or a command-line string read as a field's type hint.

`from_json` checks what `config.json` holds (an int is a valid float, a list a tuple);
`from_text` reads `--set key=value` strings (`none` for None, commas between tuple items,
`true`/`false` and their kin for booleans). Either raises a one-line `ConfigError` naming the key.
"""

from __future__ import annotations

import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


def json_type(value: Any) -> str:
    """A short description of a JSON value for an error message: its type and repr."""
    return f"{type(value).__name__} {value!r}"[:80]


def from_json(value: Any, hint: Any, key: str) -> Any:
    """`value` from JSON as the type `hint` (int for float, a list for a tuple), else an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_json(value, inner, key)
    if origin is tuple:
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if not isinstance(value, list | tuple) or (fixed and len(value) != len(args)):
            count = f"{len(args)} " if fixed else ""
            expected = f"a list of {count}{args[0].__name__}"
            raise ConfigError(f"{key}: expected {expected}, got {json_type(value)}")
        item_types = args if fixed else [args[0]] * len(value)
        return tuple(from_json(v, t, key) for v, t in zip(value, item_types, strict=True))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{key}: expected {hint.__name__}, got {json_type(value)}")
    return float(value) if hint is float else value


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def from_text(text: str, hint: Any, key: str) -> Any:
    """A command-line string `text` as the type `hint` (`none` for None, commas for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_text(text, inner, key)
    if origin is tuple:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_text(item, args[0], key) for item in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {text!r}")
        return tuple(from_text(item, t, key) for item, t in zip(items, args, strict=True))
    try:
        if hint is bool:
            return _BOOLEANS[text.lower()]
        if hint is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        return hint(text)
    except (KeyError, ValueError, OverflowError):
        raise ConfigError(f"{key}: cannot read {text!r} as {hint.__name__}") from None
