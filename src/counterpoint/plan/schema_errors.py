"""Turning pydantic's validation errors into plan problems a person can act on.

Each error names the key path, says what was expected in plain words and, for
misspellings, the nearest valid word ("did you mean ...").
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from enum import Enum
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from counterpoint.errors import Path, Problem
from counterpoint.plan.model import ID_PATTERN, Plan

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "int_parsing": "a whole number",
    "float_parsing": "a number",
}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'?"`` for the closest choice, or ``""`` when nothing is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {found[0]!r}?" if found else ""


def describe(value: Any) -> str:
    """A short, type-aware rendering of an offending value."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    """One problem per wrong value (the branches of ``str | list[str]`` merged into one)."""
    problems: list[Problem] = []
    branches: dict[Path, list[tuple[Path, ErrorDetails]]] = {}
    for err in exc.errors(include_url=False):
        path, branch_at = _data_path(tuple(err["loc"]))
        if branch_at is None:
            problems.append(_translate(err, path))
        else:
            branches.setdefault(path[:branch_at], []).append((path, err))
    for base, found in branches.items():
        path, err = max(found, key=lambda item: len(item[0]))
        if len(path) > len(base):  # a bad item inside the list: say which
            problems.append(_translate(err, path))
            continue
        value = describe(err.get("input"))
        problems.append(Problem(f"expected a string or a list of strings, got {value}", base))
    return problems


def _translate(err: ErrorDetails, path: Path) -> Problem:
    loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        return Problem(
            f"unknown key {key!r}",
            path,
            hint=did_you_mean(key, _keys_at(loc[:-1])),
            at_key=True,
        )
    if kind == "missing":
        return Problem(f"missing required key {str(loc[-1])!r}", path[:-1] if path else path)
    if loc and loc[-1] == "[key]":
        return _bad_key(err, path)
    message, hint = _message(kind, err["msg"], value, ctx, loc)
    return Problem(message, path, hint=hint)


def _message(
    kind: str, msg: str, value: Any, ctx: dict[str, Any], loc: tuple[Any, ...]
) -> tuple[str, str]:
    if kind in _TYPE_WORDS:
        return _type_message(_TYPE_WORDS[kind], value)
    if kind in ("enum", "literal_error"):
        return _choice_message(value, ctx, loc)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        choices = _tags_at(loc)
        if kind == "union_tag_not_found":
            return f"missing key 'kind' (one of {', '.join(choices)})", ""
        return (
            f"unknown kind {value if not isinstance(value, dict) else ctx.get('tag')!r}; "
            f"expected one of {', '.join(choices)}",
            did_you_mean(str(ctx.get("tag", "")), choices),
        )
    if kind == "value_error":
        return str(ctx.get("error", msg)), ""
    if kind == "string_pattern_mismatch":
        return _pattern_message(value, str(ctx.get("pattern", "")))
    return _bound_message(kind, msg, value, ctx)


def _type_message(expected: str, value: Any) -> tuple[str, str]:
    hint = ""
    if expected == "a string" and isinstance(value, int | float) and not isinstance(value, bool):
        hint = f'quote it: "{value}"'
    return f"expected {expected}, got {describe(value)}", hint


def _choice_message(value: Any, ctx: dict[str, Any], loc: tuple[Any, ...]) -> tuple[str, str]:
    choices = re.findall(r"'([^']*)'|(\d+)", str(ctx.get("expected", "")))
    options = [a or b for a, b in choices]
    if loc == ("version",):
        return f"unsupported plan format version {value!r}; this counterpoint reads version 1", ""
    return (
        f"bad value {describe(value)}; expected one of {', '.join(options)}",
        did_you_mean(str(value), options),
    )


def _pattern_message(value: Any, pattern: str) -> tuple[str, str]:
    if pattern == ID_PATTERN:
        return (
            f"bad id {describe(value)}: ids start with a letter, digit or _ and use only "
            "letters, digits and _ . : @ -",
            "",
        )
    if ":" in pattern and "A-Za-z_" in pattern:
        return f"bad callable {describe(value)}", "expected module:function, e.g. agents:discover"
    return f"{describe(value)} does not match the pattern {pattern}", ""


_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def _bound_message(kind: str, msg: str, value: Any, ctx: dict[str, Any]) -> tuple[str, str]:
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return f"must be {op} {ctx.get(key)}, got {describe(value)}", ""
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)", ""
    if kind == "string_too_short":
        return "must not be empty", ""
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters", ""
    return msg[0].lower() + msg[1:] if msg else "invalid value", ""


def _bad_key(err: ErrorDetails, path: Path) -> Problem:
    key = err.get("input")
    if err["type"] == "string_pattern_mismatch":
        message, hint = _pattern_message(key, ID_PATTERN)
    else:
        message, hint = f"a key must be a string, got {describe(key)}", ""
    return Problem(message, path, hint=hint, at_key=True)


def _data_path(loc: tuple[Any, ...]) -> tuple[Path, int | None]:
    """Pydantic's ``loc`` as a data path, without the union branch names it inserts.

    The second value is where the path went through an untagged union (``str | list[str]``),
    whose branches each report an error of their own for the same value (None if it did not).
    """
    path: list[str | int] = []
    tp: Any = Plan
    branch_at: int | None = None
    for part in loc:
        if part == "[key]":
            break
        union = _union_args(tp)
        if union and isinstance(part, str):
            tagged = [a for a in union if _tag_of(a) == part]
            if not tagged and branch_at is None:
                branch_at = len(path)
            tp = tagged[0] if tagged else _branch(union, part)
            continue
        path.append(part)
        tp = _step(tp, part) if tp is not None else None
    return tuple(path), branch_at


def _branch(union: tuple[Any, ...], name: str) -> Any:
    """The union member pydantic names ``name`` (``str``, ``list[str]``), for walking on."""
    for arg in union:
        if name in (getattr(arg, "__name__", None), str(arg)):
            return arg
    return None


def _tags_at(loc: tuple[Any, ...]) -> list[str]:
    """The ``kind`` values of the tagged union at ``loc`` (the kinds a gate condition can have)."""
    current: Any = Plan
    for part in loc:
        if current is None:
            return []
        current = _step(current, part)
    return [tag for arg in _union_args(current) if (tag := _tag_of(arg)) is not None]


def _union_args(tp: Any) -> tuple[Any, ...]:
    tp = _strip(tp)
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else ()


# ---------------------------------------------------------------------------
# Valid keys at a location, for "did you mean"


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    current: Any = Plan
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    model = _as_model(current)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _step(tp: Any, part: Any) -> Any:
    model = _as_model(tp)
    if model is not None and isinstance(part, str):
        for name, field in model.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    tp = _strip(tp)
    origin = get_origin(tp)
    if origin is list and isinstance(part, int):
        return get_args(tp)[0]
    if origin is dict:
        return get_args(tp)[1]
    if origin in (Union, types.UnionType) and isinstance(part, str):
        for arg in get_args(tp):
            if _tag_of(arg) == part:
                return arg
    return None


def _strip(tp: Any) -> Any:
    """Unwrap ``Annotated[...]`` and ``X | None``."""
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return tp


def _as_model(tp: Any) -> type[BaseModel] | None:
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _tag_of(tp: Any) -> str | None:
    model = _as_model(tp)
    if model is None or "kind" not in model.model_fields:
        return None
    args = get_args(model.model_fields["kind"].annotation)
    return str(args[0]) if args and not isinstance(args[0], Enum) else None
