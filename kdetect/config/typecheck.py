"""Checking plain mappings (parsed YAML) against dataclasses: the engine behind the recipe schema.

:func:`from_dict` builds a dataclass from a mapping and stops at the first problem with a
:class:`~kdetect.plumbing.errors.RecipeError` whose one-line message names the dotted key, what was
expected and what was received (a misspelt key or choice gets the closest valid one). A field's
metadata gives its bounds (``ge``, ``gt``, ``le``, ``lt``) and list rules (``length``,
``min_items``, ``positive_items``). It knows nothing of recipes: ``schema`` declares the classes.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal

from kdetect.plumbing.errors import RecipeError, did_you_mean
from kdetect.plumbing.parsing import parse_bool

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of dataclass ``cls``."""
    return typing.get_type_hints(cls)


def describe(tp: Any) -> str:
    """Human wording of a type annotation, for messages and docs."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_plural(args[0])}"
    if dataclasses.is_dataclass(tp) or origin is dict:
        return "a mapping"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    if typing.get_origin(tp) in (list, tuple):
        return f"lists of {_plural(typing.get_args(tp)[0])}"
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, "values")


def _check_value(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """Validate and normalise one value against its annotation; return the clean value."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _check_union(key, value, tp, meta)
    if origin is Literal:
        args = typing.get_args(tp)
        if value in args and not isinstance(value, bool):
            return value
        choices = ", ".join(str(a) for a in args)
        hint = did_you_mean(value, [str(a) for a in args]) if isinstance(value, str) else ""
        raise RecipeError(f"{key}: expected one of {choices}, got {_show(value)}{hint}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {_show(value)}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        return _check_list(key, value, tp, meta)
    if origin is dict:  # free settings, checked where they are used (e.g. model.options)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RecipeError(f"{key}: expected a mapping, got {_show(value)}")
        return dict(value)
    return _check_scalar(key, value, tp, meta)


def _check_union(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """``X | Y | None``: null where allowed, else the first option that accepts the value."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"{key}: expected {describe(tp)}, got null")
    inner = [a for a in args if a is not type(None)]
    errors = []
    for option in inner:
        try:
            return _check_value(key, value, option, meta)
        except RecipeError as exc:
            errors.append(exc)
    if len(inner) == 1:
        raise errors[0]
    raise RecipeError(f"{key}: expected {describe(tp)}, got {_show(value)}")


def _check_list(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> list:
    """A list: its length (``length``, ``min_items``), each item, ``positive_items``."""
    if not isinstance(value, (list, tuple)):
        raise RecipeError(f"{key}: expected {describe(tp)}, got {_show(value)}")
    length = meta.get("length")
    if length is not None and len(value) != length:
        raise RecipeError(f"{key}: expected {length} values, got {len(value)}")
    if len(value) < meta.get("min_items", 0):
        raise RecipeError(f"{key}: needs at least {meta['min_items']} value(s), got {len(value)}")
    item_type = typing.get_args(tp)[0]
    items = [_check_value(f"{key}[{i}]", v, item_type, {}) for i, v in enumerate(value)]
    numbers = [v for v in items if isinstance(v, (int, float))]
    if meta.get("positive_items") and any(v <= 0 for v in numbers):
        raise RecipeError(f"{key}: every value must be > 0, got {list(value)}")
    return items


def _check_scalar(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """``bool`` (:func:`~kdetect.plumbing.parsing.parse_bool`: true/false, yes/no, 1/0), ``int`` (a
    whole float is accepted), ``float`` (YAML 1.1's ``1e-3`` string too) and ``str``; numbers within
    their bounds."""
    if tp is bool:
        if isinstance(value, (bool, int, str)):
            return parse_bool(value, key, RecipeError)
        raise RecipeError(f"{key}: expected true or false (yes/no, 1/0), got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_bounds(key, value, meta)
        if isinstance(value, float) and value.is_integer():
            return _check_bounds(key, int(value), meta)
        raise RecipeError(f"{key}: expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _check_bounds(key, float(value), meta)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            # PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string.
            return _check_bounds(key, float(value), meta)
        raise RecipeError(f"{key}: expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{key}: expected a string, got {_show(value)}")
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in the schema


def _check_bounds(key: str, value: float, meta: dict[str, Any]) -> float:
    if not math.isfinite(value):
        raise RecipeError(f"{key}: expected a finite number, got {value}")
    for name, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise RecipeError(f"{key}: must be {word} {bound}, got {_show(value)}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key and value.

    Raises:
        RecipeError: on the first unknown key (with the closest valid key), wrong type or bad
            value; the message names the dotted key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix or 'recipe'}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    annotations = hints(cls)
    for key in data:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            valid = ", ".join(fields)
            raise RecipeError(f"{dotted}: unknown key{hint}; valid keys: {valid}")
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _check_value(dotted, data[name], annotations[name], dict(f.metadata))
        elif dataclasses.is_dataclass(annotations[name]):
            kwargs[name] = from_dict(annotations[name], {}, prefix=dotted)
    return cls(**kwargs)


def check_field(cls: type, name: str, value: Any, key: str) -> Any:
    """``value`` checked as field ``name`` of ``cls`` would be, errors naming ``key``."""
    meta = {f.name: dict(f.metadata) for f in dataclasses.fields(cls)}[name]
    return _check_value(key, value, hints(cls)[name], meta)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list values (YAML-ready)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
