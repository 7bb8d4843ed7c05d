"""Reading plan documents: YAML or JSON text to plain data, and data paths back to positions.

Parsing takes the fast path (the Rust ``yaml_rs`` parser, or ``json``) and only
when something is wrong re-reads the text with PyYAML's composer, whose nodes
carry line and column marks, to say exactly where. Both YAML readers use the
YAML 1.2 core schema, so ``yes``/``on`` stay strings and ``017`` is seventeen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import yaml

from counterpoint.errors import Path, PathPart, Problem

_yaml_rs: ModuleType | None
try:  # the fast parser; PyYAML's C loader is the fallback where no wheel exists
    import yaml_rs as _yaml_rs
except ImportError:  # pragma: no cover - exercised only on platforms without the wheel
    _yaml_rs = None

_CLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourceError(Exception):
    """The text is not a readable document; carries the problems (positions included)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems[0].render())
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Position:
    line: int
    column: int


# ---------------------------------------------------------------------------
# YAML 1.2 core schema for PyYAML (used for diagnostics and as a fallback parser)


class _CoreLoader(_CLoader):  # type: ignore[valid-type,misc]
    """PyYAML's C loader with YAML 1.2 core-schema scalars and duplicate-key reporting."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, yaml.Mark]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            if key in seen:
                self.duplicates.append((str(key), key_node.start_mark))
            seen.add(key)
        return dict(super().construct_mapping(node, deep=deep))


def _add_core_resolvers() -> None:
    core = [
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        (
            "tag:yaml.org,2002:int",
            r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$",
            "-+0123456789",
        ),
        (
            "tag:yaml.org,2002:float",
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            "-+.0123456789",
        ),
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ]
    for tag, pattern, first in core:
        _CoreLoader.add_implicit_resolver(tag, re.compile(pattern), list(first))


def _construct_core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _construct_core_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return str(loader.construct_scalar(node)).lower() == "true"


_add_core_resolvers()
_CoreLoader.add_constructor("tag:yaml.org,2002:int", _construct_core_int)
_CoreLoader.add_constructor("tag:yaml.org,2002:bool", _construct_core_bool)


# ---------------------------------------------------------------------------
# Parsing


def is_json(name: str, text: str) -> bool:
    """JSON by extension, or by content when the name says nothing (``-``, no suffix)."""
    lowered = name.lower()
    if lowered.endswith(".json"):
        return True
    if lowered.endswith((".yaml", ".yml")):
        return False
    return text.lstrip().startswith("{")


def parse_document(text: str, name: str) -> tuple[Any, list[Problem]]:
    """Parse ``text`` to plain data and the problems that do not stop reading it.

    Raises :class:`SourceError` (with positions) when the text cannot be read at all.
    Duplicate keys are reported, all of them, while the rest of the document is still read.
    """
    text = text.removeprefix("\ufeff")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        column = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
        raise SourceError(
            [_problem(name, "the plan is not valid UTF-8 text", line, column)]
        ) from None
    if is_json(name, text):
        return _parse_json(text, name)
    if _yaml_rs is not None:
        try:
            return _yaml_rs.loads(text, parse_datetime=False), []
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            message = str(exc)
            if "alias" in message and "limit" in message:
                raise SourceError([_problem(name, message.splitlines()[0], 1, 1)]) from None
    return _parse_yaml_marked(text, name)


def _parse_json(text: str, name: str) -> tuple[Any, list[Problem]]:
    duplicated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            duplicated.append("x")
        return obj

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise SourceError(
            [_problem(name, f"invalid JSON: {exc.msg}", exc.lineno, exc.colno)]
        ) from None
    except RecursionError:
        raise SourceError([_problem(name, "invalid JSON: nested too deeply", 1, 1)]) from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise SourceError([_problem(name, f"invalid JSON: {exc}", 1, 1)]) from None
    if not duplicated:
        return data, []
    try:  # JSON is YAML: the marked reader says where each duplicate is
        return data, _parse_yaml_marked(text, name)[1]
    except SourceError:
        return data, [_problem(name, "duplicate keys in a JSON object", 1, 1)]


def _parse_yaml_marked(text: str, name: str) -> tuple[Any, list[Problem]]:
    """The slow, precise path: PyYAML with marks, reporting every duplicate key."""
    loader = _CoreLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise SourceError([_marked_problem(name, exc)]) from None
    except yaml.YAMLError as exc:
        raise SourceError([_problem(name, f"invalid YAML: {exc}", 1, 1)]) from None
    except RecursionError:
        raise SourceError([_problem(name, "invalid YAML: nested too deeply", 1, 1)]) from None
    finally:
        loader.dispose()
    duplicates = [
        _problem(name, f"duplicate key {key!r}", mark.line + 1, mark.column + 1)
        for key, mark in loader.duplicates
    ]
    return data, duplicates


def _marked_problem(name: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    what = " ".join(part for part in (exc.context, exc.problem) if part)
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return _problem(name, f"invalid YAML: {what or 'unreadable document'}", line, column)


def _problem(name: str, message: str, line: int, column: int) -> Problem:
    return Problem(message=message, file=name, line=line, column=column)


# ---------------------------------------------------------------------------
# Positions


class Locator:
    """Maps data paths (``("phases", 0, "id")``) to line and column in the source text.

    Built lazily: composing the node tree costs a second parse, paid only when a
    problem needs a position.
    """

    def __init__(self, text: str) -> None:
        self._text = text.removeprefix("\ufeff")
        self._root: yaml.Node | None = None
        self._failed = False

    def _tree(self) -> yaml.Node | None:
        if self._root is None and not self._failed:
            try:
                self._root = yaml.compose(self._text, Loader=_CoreLoader)
            except (yaml.YAMLError, RecursionError):
                self._failed = True
        return self._root

    def find(self, path: Path, *, at_key: bool = False) -> Position:
        """The position of the deepest node along ``path`` that exists (1-based)."""
        node = self._tree()
        if node is None:
            return Position(1, 1)
        mark = node.start_mark
        for i, part in enumerate(path):
            last = i == len(path) - 1
            step = _child(node, part)
            if step is None:
                break
            key_node, node = step
            mark = (
                key_node.start_mark
                if (last and at_key and key_node is not None)
                else node.start_mark
            )
        return Position(mark.line + 1, mark.column + 1)


def _child(node: yaml.Node, part: PathPart) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        return (None, node.value[part]) if 0 <= part < len(node.value) else None
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in _pairs(node):
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                return key_node, value_node
    return None


def _pairs(node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    yield from node.value
