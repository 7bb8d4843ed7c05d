"""Static check: tasks that can run at the same time and declare overlapping ``writes``.

Such tasks are a data conflict waiting to happen (the run decides it by the key's
policy, and by default asks a person). ``check`` and ``plan`` warn about each pair,
unless ``settings.serialize_conflicting_writes`` makes the run order them.
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Iterable

from counterpoint.errors import Problem, Severity
from counterpoint.plan.checks import task_paths
from counterpoint.plan.graph import Graph
from counterpoint.plan.model import Plan

MAX_WARNINGS = 20
MAX_PAIRS = 20_000
_WILD = re.compile(r"[*?\[]")


def overlap(a: str, b: str) -> bool:
    """Whether two key patterns (``*`` any run of characters) can name the same key."""
    return a == b or fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a)


def matches(key: str, patterns: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``patterns`` or matches one."""
    return any(key == p or fnmatch.fnmatchcase(key, p) for p in patterns)


def _stem(pattern: str) -> str:
    """The literal text before the first wildcard (patterns with different stems' first
    characters cannot overlap unless one starts with a wildcard)."""
    match = _WILD.search(pattern)
    return pattern[: match.start()] if match else pattern


def parallel_writes(plan: Plan, graph: Graph) -> list[Problem]:
    if plan.settings.serialize_conflicting_writes:
        return []
    writers: dict[str, list[tuple[int, str]]] = defaultdict(list)  # stem's first char
    wild: list[tuple[int, str]] = []
    for t, task in enumerate(graph.tasks):
        for key in task.writes:
            stem = _stem(key)
            (writers[stem[:1]] if stem else wild).append((t, key))
    pairs: set[tuple[int, int, str, str]] = set()
    for bucket in writers.values():
        _pairs(bucket + wild, pairs)
    if wild:
        _pairs(wild + [w for b in writers.values() for w in b], pairs)
    paths = {task.id: path for path, task in task_paths(plan)}
    reach: dict[int, set[int]] = {}
    problems: list[Problem] = []
    for a, b, ka, kb in sorted(pairs)[:MAX_PAIRS]:
        if _reaches(graph, reach, a, b) or _reaches(graph, reach, b, a):
            continue
        ta, tb = graph.tasks[a], graph.tasks[b]
        key = ka if ka == kb else f"{ka} / {kb}"
        problems.append(
            Problem(
                f"tasks {ta.id!r} and {tb.id!r} can run at the same time and both write "
                f"{key!r}: different values are a data conflict",
                (*paths[tb.id], "writes"),
                severity=Severity.WARNING,
                hint="order them with needs, or set settings.serialize_conflicting_writes",
            )
        )
        if len(problems) >= MAX_WARNINGS:
            break
    return problems


def _pairs(entries: list[tuple[int, str]], out: set[tuple[int, int, str, str]]) -> None:
    for i, (ta, ka) in enumerate(entries):
        for tb, kb in entries[i + 1 :]:
            if ta != tb and overlap(ka, kb):
                a, b = (ta, tb) if ta < tb else (tb, ta)
                out.add((a, b, ka if a == ta else kb, kb if a == ta else ka))
        if len(out) > MAX_PAIRS:
            return


def _reaches(graph: Graph, memo: dict[int, set[int]], a: int, b: int) -> bool:
    seen = memo.get(a)
    if seen is None:
        seen = memo[a] = graph.descendants(a)
    return b in seen
