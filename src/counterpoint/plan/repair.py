"""Finding the cross-reference problems of a plan that also has schema errors.

When the model rejects a plan, the checks that need a whole plan (unique ids,
references, who can run what) would otherwise stay silent until the schema
errors are fixed, and a user would fix a file in several rounds. Instead the
offending values are taken out of a copy of the data (an invalid value falls
back to its default, an invalid id becomes a placeholder) and the checks run
on what remains. Problems that only exist because of the repair are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from counterpoint.errors import Path, Problem
from counterpoint.plan.model import Plan
from counterpoint.plan.schema_errors import problems_from_validation

PLACEHOLDER = "__invalid_"
_ROOT_REQUIRED = ("version", "name", "phases")
_ROUNDS = 4


_REMOVED = object()
_ID_LISTS = ("phases", "milestones", "tasks")


class Repair:
    """A plan rebuilt from data whose invalid values were taken out, and where they were."""

    def __init__(self, data: dict[str, Any], problems: list[Problem]) -> None:
        self.touched: set[Path] = set()
        self.plan: Plan | None = None
        try:
            self.plan = self._rebuild(copy.deepcopy(data), problems)
        except RecursionError:
            self.plan = None

    def _rebuild(self, fixed: dict[str, Any], problems: list[Problem]) -> Plan | None:
        counter = [0]
        for _ in range(_ROUNDS):
            for problem in problems:
                self.touched.add(problem.path)
                if not _repair(fixed, problem, counter):
                    return None
            _compact(fixed)
            try:
                return Plan.model_validate(fixed)
            except ValidationError as exc:
                problems = problems_from_validation(exc)
        return None

    def is_artifact(self, problem: Problem) -> bool:
        """True for a problem that only exists because a value was taken out."""
        if PLACEHOLDER in problem.message:
            return True
        path = problem.path
        return bool(path) and any(t[: len(path)] == path for t in self.touched)


def is_artifact(problem: Problem) -> bool:
    """True for a problem about a placeholder the repair invented."""
    return PLACEHOLDER in problem.message


def _repair(data: dict[str, Any], problem: Problem, counter: list[int]) -> bool:
    path = problem.path
    if problem.message.startswith("missing required key"):
        key = problem.message.split("'")[1]
        if not path and key in _ROOT_REQUIRED:
            return False
        return _take_out(data, path, counter, missing=key)
    if not path or (len(path) == 1 and path[0] in _ROOT_REQUIRED):
        return False
    return _take_out(data, path, counter)


def _take_out(data: dict[str, Any], path: Path, counter: list[int], missing: str = "") -> bool:
    """Remove the value at ``path`` (an id or an item of an id list becomes a placeholder)."""
    if missing == "id":
        target = _walk(data, path)
        if isinstance(target, dict):
            target["id"] = _placeholder(counter)
        return True
    parent = _walk(data, path[:-1]) if path else None
    leaf = path[-1] if path else None
    if isinstance(parent, dict) and leaf in parent:
        if leaf == "id" and not missing:
            parent["id"] = _placeholder(counter)
        else:
            del parent[leaf]
    elif isinstance(parent, list) and isinstance(leaf, int) and 0 <= leaf < len(parent):
        in_id_list = len(path) >= 2 and path[-2] in _ID_LISTS
        parent[leaf] = {"id": _placeholder(counter)} if in_id_list else _REMOVED
    return True


def _compact(node: Any) -> None:
    """Drop the removal markers a round of repairs left in lists."""
    if isinstance(node, dict):
        for value in node.values():
            _compact(value)
    elif isinstance(node, list):
        node[:] = [item for item in node if item is not _REMOVED]
        for item in node:
            _compact(item)


def _placeholder(counter: list[int]) -> str:
    counter[0] += 1
    return f"{PLACEHOLDER}{counter[0]}"


def _walk(data: Any, path: Path) -> Any:
    node = data
    for part in path:
        if not _has(node, part):
            return None
        node = node[part]
    return node


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
