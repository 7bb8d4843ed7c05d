"""Capacity planning: the makespan under other capacities, and the plan's bottleneck.

* :func:`parse_change` reads ``agents.NAME.capacity=N``, ``resources.NAME.capacity=N``,
  ``resources.NAME.rate=X`` or ``settings.max_concurrency=N`` against a plan, with a
  did-you-mean for a misspelt name; :func:`what_if` schedules the plan with each change
  alone and with all of them together.
* :func:`bottleneck` tries one more slot for every agent and one more unit for every
  counted resource, and ranks them by how much shorter the schedule gets. When the
  search ran, its best activity lists are scheduled again (serial schedule generation
  and justification) under the larger capacity, which is quick; otherwise the
  single-pass scheduler runs again, for plans of up to :data:`SINGLE_PASS_MAX_TASKS`
  tasks.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from counterpoint.errors import ScheduleError
from counterpoint.plan.graph import Graph
from counterpoint.plan.model import Plan
from counterpoint.plan.schedule import EPS, Schedule, schedule

#: Plans with more tasks get no bottleneck analysis when the search did not run.
SINGLE_PASS_MAX_TASKS = 2_000
#: Activity lists of the search re-scheduled per candidate.
ELITE = 12

FORMS = (
    "agents.NAME.capacity",
    "resources.NAME.capacity",
    "resources.NAME.rate",
    "settings.max_concurrency",
)


class WhatIfError(ValueError):
    """A ``--what-if`` that does not name a changeable capacity of the plan."""


@dataclass(frozen=True)
class Change:
    path: str  # as given, e.g. agents.security.capacity
    section: str  # agents | resources | settings
    name: str  # the agent or resource ("" for settings)
    key: str  # capacity | rate | max_concurrency
    value: float

    @property
    def text(self) -> str:
        value = int(self.value) if self.value == int(self.value) else self.value
        return f"{self.path}={value}"


@dataclass(frozen=True)
class Scenario:
    changes: tuple[Change, ...]
    makespan_s: float | None  # None: no schedule exists (see ``error``)
    lower_bound_s: float | None
    optimal: bool
    error: str = ""


@dataclass(frozen=True)
class Relief:
    """One more unit of an agent's or a resource's capacity, and what it gains."""

    kind: str  # agent | resource
    name: str
    capacity: int  # the current capacity (the candidate has one more)
    makespan_s: float
    saved_s: float


@dataclass
class Bottleneck:
    reliefs: list[Relief] = field(default_factory=list)
    computed: bool = True  # False: the plan is too large for the analysis


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_change(plan: Plan, text: str) -> Change:
    """``PATH=VALUE`` checked against ``plan``; raises :class:`WhatIfError`."""
    path, sep, raw = text.partition("=")
    path, raw = path.strip(), raw.strip()
    if not sep or not path or not raw:
        raise WhatIfError(f"{text!r}: expected PATH=VALUE, e.g. agents.NAME.capacity=3")
    parts = path.split(".")
    section = parts[0]
    if section == "settings":
        if len(parts) != 2 or parts[1] != "max_concurrency":
            key = parts[1] if len(parts) > 1 else ""
            raise WhatIfError(
                f"{path}: only settings.max_concurrency can be changed"
                f"{_suggest(key, ['max_concurrency'])}"
            )
        return Change(path, section, "", "max_concurrency", _integer(path, raw, minimum=1))
    if section not in ("agents", "resources"):
        hint = _suggest(section, ["agents", "resources", "settings"])
        raise WhatIfError(
            f"{path}: unknown section {section!r}{hint}; use one of {', '.join(FORMS)}"
        )
    if len(parts) != 3:
        raise WhatIfError(f"{path}: expected {section}.NAME.KEY; use one of {', '.join(FORMS)}")
    if section == "agents":
        return _agent_change(plan, path, parts[1], parts[2], raw)
    return _resource_change(plan, path, parts[1], parts[2], raw)


def _agent_change(plan: Plan, path: str, name: str, key: str, raw: str) -> Change:
    if name not in plan.agents:
        hint = _suggest(name, list(plan.agents))
        raise WhatIfError(f"{path}: the plan has no agent {name!r}{hint}")
    if key != "capacity":
        hint = _suggest(key, ["capacity"])
        raise WhatIfError(f"{path}: unknown key {key!r}{hint}; use agents.{name}.capacity")
    return Change(path, "agents", name, key, _integer(path, raw, minimum=0))


def _resource_change(plan: Plan, path: str, name: str, key: str, raw: str) -> Change:
    spec = plan.resources.get(name)
    if spec is None:
        hint = _suggest(name, list(plan.resources))
        raise WhatIfError(f"{path}: the plan has no resource {name!r}{hint}")
    if key not in ("capacity", "rate"):
        hint = _suggest(key, ["capacity", "rate"])
        raise WhatIfError(f"{path}: unknown key {key!r}{hint}; use capacity or rate")
    if key == "capacity" and spec.rate is not None:
        raise WhatIfError(f"{path}: {name!r} is a rate limit; change resources.{name}.rate")
    if key == "capacity":
        return Change(path, "resources", name, key, _integer(path, raw, minimum=0))
    if spec.rate is None:
        raise WhatIfError(
            f"{path}: {name!r} is a counted resource; change resources.{name}.capacity"
        )
    try:
        value = float(raw)
    except ValueError:
        raise WhatIfError(f"{path}: {raw!r} is not a number") from None
    if not value > 0:
        raise WhatIfError(f"{path}: the rate must be above 0, not {raw}")
    return Change(path, "resources", name, key, value)


def _integer(path: str, raw: str, *, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise WhatIfError(f"{path}: {raw!r} is not a whole number") from None
    if value < minimum:
        raise WhatIfError(f"{path}: must be at least {minimum}, not {value}")
    return value


def current_value(plan: Plan, change: Change) -> float | None:
    if change.section == "agents":
        return plan.agents[change.name].capacity
    if change.section == "resources":
        spec = plan.resources[change.name]
        return spec.rate if change.key == "rate" else spec.capacity
    return plan.settings.max_concurrency


def apply(plan: Plan, changes: tuple[Change, ...]) -> Plan:
    """A copy of ``plan`` with ``changes`` made."""
    out = plan.model_copy(deep=True)
    for c in changes:
        if c.section == "agents":
            out.agents[c.name].capacity = int(c.value)
        elif c.section == "resources" and c.key == "rate":
            out.resources[c.name].rate = c.value
        elif c.section == "resources":
            out.resources[c.name].capacity = int(c.value)
        else:
            out.settings.max_concurrency = int(c.value)
    return out


def what_if(
    graph: Graph,
    current: Schedule,
    changes: list[Change],
    *,
    time_limit: float,
    seed: int,
) -> list[Scenario]:
    """Each change alone, then (with more than one) all of them together."""
    sets: list[tuple[Change, ...]] = [(c,) for c in changes]
    if len(changes) > 1:
        sets.append(tuple(changes))
    out: list[Scenario] = []
    for chosen in sets:
        plan = apply(graph.plan, chosen)
        try:
            other = plan.compile(check=False)
            sched = schedule(other, time_limit=time_limit, seed=seed, warm=current)
        except ScheduleError as exc:
            out.append(Scenario(chosen, None, None, False, str(exc)))
            continue
        makespan, optimal = sched.makespan_s, sched.optimal
        more = all((current_value(graph.plan, c) or 0) <= c.value for c in chosen)
        if more and makespan > current.makespan_s:
            makespan = current.makespan_s  # the current schedule still fits
            optimal = makespan <= sched.lower_bound_s + EPS
        out.append(Scenario(chosen, makespan, sched.lower_bound_s, optimal))
    return out


def bottleneck(graph: Graph, current: Schedule, *, seed: int = 0) -> Bottleneck:
    """Agents and counted resources whose one more unit shortens the schedule, best first."""
    if current.makespan_s <= graph.critical_path_s + EPS:
        return Bottleneck()  # already as short as the dependencies allow
    plan = graph.plan
    used = {name for t in graph.tasks for name in t.resources}
    candidates: list[tuple[str, str, int]] = [
        ("resource", name, spec.capacity)
        for name, spec in plan.resources.items()
        if spec.capacity is not None and name in used
    ]
    needs = {frozenset(t.requires) for t in graph.tasks}
    for name, spec in plan.agents.items():
        if any(need <= set(spec.capabilities) for need in needs):
            candidates.append(("agent", name, spec.capacity))
    if current.elite:
        makespans = _by_search(graph, current, candidates, seed)
    elif graph.n_tasks <= SINGLE_PASS_MAX_TASKS:
        makespans = _by_single_pass(graph, candidates)
    else:
        return Bottleneck(computed=False)
    reliefs = [
        Relief(kind, name, cap, makespan, current.makespan_s - makespan)
        for (kind, name, cap), makespan in zip(candidates, makespans, strict=True)
        if makespan is not None and makespan < current.makespan_s - EPS
    ]
    reliefs.sort(key=lambda r: (-r.saved_s, r.kind, r.name))
    return Bottleneck(reliefs)


def _by_search(
    graph: Graph, current: Schedule, candidates: list[tuple[str, str, int]], seed: int
) -> list[float | None]:
    from counterpoint.plan.problem import build
    from counterpoint.plan.rcpsp import Search

    out: list[float | None] = []
    lists = [list(order) for order in current.elite[:ELITE]]
    for kind, name, cap in candidates:
        pp = build(graph, capacities={(kind, name): cap + 1})
        if pp is None:
            out.append(None)
            continue
        search = Search(pp.problem, seed=seed)
        best: float | None = None
        for order in lists:
            sol = search.decode(order)
            start, finish = pp.to_seconds(sol)
            if pp.rate_limited and not pp.rates_ok(start):
                continue
            makespan = max(finish, default=0.0)
            if best is None or makespan < best:
                best = makespan
        out.append(best)
    return out


def _by_single_pass(graph: Graph, candidates: list[tuple[str, str, int]]) -> list[float | None]:
    out: list[float | None] = []
    for kind, name, cap in candidates:
        section, key = ("agents", "capacity") if kind == "agent" else ("resources", "capacity")
        change = Change(f"{section}.{name}.{key}", section, name, key, cap + 1)
        try:
            other = apply(graph.plan, (change,)).compile(check=False)
            out.append(schedule(other).makespan_s)
        except ScheduleError:
            out.append(None)
    return out
