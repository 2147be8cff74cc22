"""Schema types, read from dataclass annotations: whether plain YAML data has a type, a type in
words for an error message, and a value written as a user types it on the command line.

    conforms(0.5, float | None)   # True
    in_words(list[int] | None)    # 'a list of integers or null'
    show([1, 2])                  # '[1,2]'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def conforms(value: Any, hint: Any) -> bool:
    """Whether `value` (plain YAML data) has the schema type `hint` (int for float is fine)."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(conforms(v, item) for v in value)
    if typing.get_origin(hint) is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            conforms(k, key) and conforms(v, item) for k, v in value.items()
        )
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def in_words(hint: Any) -> str:
    """'an integer', 'a list of strings or null', ...: a schema type in words."""
    if hint is Any:
        return "any value"
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(in_words(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return "a list of " + {str: "strings", int: "integers", float: "numbers"}.get(item, "items")
    if typing.get_origin(hint) is dict:
        return "a mapping of names to " + in_words(typing.get_args(hint)[1]).removeprefix("a ")
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def show(value: Any) -> str:
    """A value as a user writes it on the command line (null, true, [a,b], 0.5, name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)
