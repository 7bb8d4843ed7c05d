"""Which compensation waits for which: the reverse of the dependencies among the
completed tasks of a scope, through tasks without compensations and milestones."""

from __future__ import annotations

import pytest

from counterpoint.plan.load import parse_plan
from counterpoint.runtime.compensation import Compensation, order, scope_members

PLAN = """
version: 1
name: c
agents: {a: {capabilities: [], runner: {shell: "true"}}}
phases:
  - id: p1
    milestones:
      - id: m1
        tasks:
          - {id: a}
          - {id: b, needs: [a]}
          - {id: c, needs: [b]}
          - {id: d}
      - id: m2
        after: [m1]
        tasks:
          - {id: e}
  - id: p2
    milestones:
      - id: m3
        tasks:
          - {id: f}
"""


def test_each_compensation_waits_for_those_of_the_tasks_that_depended_on_it() -> None:
    g = parse_plan(PLAN, "plan.yaml").compile()
    comps = {g.index[t]: Compensation(g.index[t], t) for t in ("a", "c", "d", "e")}
    order(g, comps)  # b is not among them: a still waits for c through it
    waits = {c.tid: sorted(g.task_ids[w] for w in c.waits_for) for c in comps.values()}
    assert waits == {"a": ["c", "e"], "c": ["e"], "d": ["e"], "e": []}


def test_scopes_name_their_tasks_and_unknown_ones_say_what_exists() -> None:
    g = parse_plan(PLAN, "plan.yaml").compile()
    names = lambda kind, scope: sorted(g.task_ids[t] for t in scope_members(g, kind, scope))  # noqa: E731
    assert names("milestone", "m1") == ["a", "b", "c", "d"]
    assert names("phase", "p1") == ["a", "b", "c", "d", "e"]
    assert names("task", "f") == ["f"]
    assert len(names("run", "run")) == 6
    with pytest.raises(LookupError, match="no phase 'p9'; phases: p1, p2"):
        scope_members(g, "phase", "p9")
    with pytest.raises(LookupError, match="no milestone 'x'; milestones: m1, m2, m3"):
        scope_members(g, "milestone", "x")
