"""Configuration data: ``KEY=VALUE`` assignments, canonical JSON and its sha256.

A value is JSON when it parses as JSON (``8080``, ``true``, ``[1, 2]``,
``{"a": 1}``, ``null``), else the text itself (``gpt-4``, ``"quoted"`` gives
the string ``quoted``). Keys may be dotted: ``db.pool.size=10`` sets
``{"db": {"pool": {"size": 10}}}``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from counterpoint.rollback.errors import Refused

Key = tuple[str, ...]


def canonical(data: Any) -> str:
    """The one JSON text of ``data``: sorted keys, no spaces, UTF-8 kept, no NaN."""
    try:
        return json.dumps(
            data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise Refused(f"the configuration is not JSON data: {exc}") from None


def checksum(text: str) -> str:
    """The sha256 (hex) of a canonical JSON text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_key(text: str) -> Key:
    parts = tuple(text.split("."))
    if not text or any(not p.strip() or p != p.strip() for p in parts):
        raise Refused(f"bad key {text!r}: write NAME or dotted names like db.pool.size")
    return parts


def parse_value(text: str) -> Any:
    """JSON when ``text`` parses as JSON (NaN and Infinity excluded), else ``text`` itself."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def parse_assignment(text: str) -> tuple[Key, Any]:
    """``KEY=VALUE`` (the value may contain ``=``)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise Refused(f"expected KEY=VALUE, got {text!r}")
    return parse_key(key), parse_value(value)


def apply(
    data: dict[str, Any], assignments: Sequence[tuple[Key, Any]], unset: Iterable[Key] = ()
) -> dict[str, Any]:
    """A copy of ``data`` with the keys of ``unset`` removed, then ``assignments`` made."""
    result = copy.deepcopy(data)
    for key in unset:
        parent = _walk(result, key, create=False)
        if parent is None or key[-1] not in parent:
            raise Refused(f"cannot unset {'.'.join(key)}: there is no such key")
        del parent[key[-1]]
    for key, value in assignments:
        parent = _walk(result, key, create=True)
        assert parent is not None
        parent[key[-1]] = copy.deepcopy(value)
    return result


def lookup(data: Any, key: Key) -> Any:
    """The value at a dotted key; KeyError when it is not there."""
    for part in key:
        if not isinstance(data, dict) or part not in data:
            raise KeyError(".".join(key))
        data = data[part]
    return data


def _walk(data: dict[str, Any], key: Key, *, create: bool) -> dict[str, Any] | None:
    """The object holding ``key``'s last part (created on the way when ``create``)."""
    node = data
    for depth, part in enumerate(key[:-1]):
        if part not in node:
            if not create:
                return None
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            if not create:
                return None
            where = ".".join(key[: depth + 1])
            raise Refused(
                f"cannot set {'.'.join(key)}: {where} holds {json.dumps(child)}, not an object"
            )
        node = child
    return node


__all__ = ["apply", "canonical", "checksum", "lookup", "parse_assignment", "parse_key"]
