"""Properties of random valid plans: schedules are always feasible, CPM is always consistent.

Plans are random DAGs: tasks need only earlier tasks, milestones come ``after`` only
earlier milestones, resources have capacities and demands within them, and every
task's ``requires`` is covered by some agent. The schedule is verified with the
independent checker of ``test_schedule``; the CPM values with an independent
fixpoint computation of earliest starts.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_schedule import assert_feasible, barrier_times, estimate_of

from counterpoint.plan import Graph, Plan, parse_plan, schedule

CAPABILITIES = ["build", "test", "deploy", "review"]
EPS = 1e-6
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def agent_pools(draw: st.DrawFn) -> dict[str, Any]:
    agents: dict[str, Any] = {}
    for i in range(draw(st.integers(0, 3))):
        agents[f"agent{i}"] = {
            "capabilities": draw(st.lists(st.sampled_from(CAPABILITIES), unique=True, max_size=3)),
            "capacity": draw(st.integers(1, 3)),
            "runner": {"shell": "work"},
        }
    return agents


@st.composite
def resource_pools(draw: st.DrawFn) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for i in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            resources[f"res{i}"] = {"capacity": draw(st.integers(1, 3))}
        else:
            resources[f"rate{i}"] = {
                "rate": draw(st.integers(1, 3)),
                "per": draw(st.sampled_from(["1s", "30s", "1m", "2h"])),
            }
    return resources


def demands(draw: st.DrawFn, resources: dict[str, Any]) -> dict[str, int]:
    chosen = draw(st.lists(st.sampled_from(sorted(resources)), unique=True, max_size=2))
    out = {}
    for name in chosen:
        spec = resources[name]
        limit = spec["capacity"] if "capacity" in spec else spec["rate"]
        out[name] = draw(st.integers(1, limit))
    return out


@st.composite
def random_task(
    draw: st.DrawFn,
    ident: str,
    earlier: list[str],
    agents: dict[str, Any],
    resources: dict[str, Any],
) -> dict[str, Any]:
    task: dict[str, Any] = {"id": ident}
    if earlier:
        task["needs"] = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3))
    estimate = draw(
        st.one_of(
            st.none(),
            st.integers(0, 8).map(lambda h: h * 1800),
            st.sampled_from(["90s", "1.5h", "2h", "1d"]),
        )
    )
    if estimate is not None:
        task["estimate"] = estimate
    priority = draw(st.sampled_from([None, "critical", "high", "medium", "low"]))
    if priority is not None:
        task["priority"] = priority
    if agents:
        owner = agents[draw(st.sampled_from(sorted(agents)))]
        task["requires"] = draw(
            st.lists(st.sampled_from(owner["capabilities"] or ["-"]), unique=True, max_size=2)
        )
        task["requires"] = [c for c in task["requires"] if c != "-"]
    if resources:
        task["resources"] = demands(draw, resources)
    return task


@st.composite
def random_plan_data(draw: st.DrawFn) -> dict[str, Any]:
    agents = draw(agent_pools())
    resources = draw(resource_pools())
    task_ids: list[str] = []
    milestone_ids: list[str] = []
    phases = []
    for p in range(draw(st.integers(1, 3))):
        milestones = []
        for _ in range(draw(st.integers(0, 3))):
            mid = f"m{len(milestone_ids)}"
            after: list[str] = []
            if milestone_ids:
                after = draw(st.lists(st.sampled_from(milestone_ids), unique=True, max_size=2))
            tasks = []
            for _ in range(draw(st.integers(0, 4))):
                tid = f"t{len(task_ids)}"
                tasks.append(draw(random_task(tid, list(task_ids), agents, resources)))
                task_ids.append(tid)
            milestones.append({"id": mid, "after": after, "tasks": tasks})
            milestone_ids.append(mid)
        phases.append({"id": f"p{p}", "overlap": draw(st.booleans()), "milestones": milestones})
    data: dict[str, Any] = {"version": 1, "name": "random", "phases": phases}
    if agents:
        data["agents"] = agents
    if resources:
        data["resources"] = resources
    limit = draw(st.one_of(st.none(), st.integers(1, 3)))
    if limit is not None:
        data["settings"] = {"max_concurrency": limit}
    if draw(st.booleans()):
        data["defaults"] = {"estimate": draw(st.sampled_from(["30m", "2h", 0, 45]))}
    return data


def load(data: dict[str, Any]) -> tuple[Plan, Graph]:
    plan = parse_plan(json.dumps(data), "plan.json")
    return plan, plan.compile()


def independent_earliest_starts(plan: Plan) -> dict[str, float]:
    """Earliest starts by relaxation until nothing moves, using the checker's barrier rules."""
    tasks = [(m.id, t) for p in plan.phases for m in p.milestones for t in m.tasks]
    start = {t.id: 0.0 for _, t in tasks}
    for _ in range(len(tasks) + 2):
        finish = {t.id: start[t.id] + estimate_of(plan, t) for _, t in tasks}
        ready = barrier_times(plan, finish)
        new = {t.id: max([ready[mid], *(finish[n] for n in t.needs)]) for mid, t in tasks}
        if new == start:
            return start
        start = new
    raise AssertionError("earliest starts did not settle: the plan is not a DAG")


# ---------------------------------------------------------------------------
# Schedules


@PROPERTY_SETTINGS
@given(random_plan_data())
def test_every_random_plan_gets_a_feasible_schedule(data: dict[str, Any]) -> None:
    plan, graph = load(data)
    result = schedule(graph)
    assert_feasible(plan, result)
    assert result.makespan_s >= graph.critical_path_s - EPS


@PROPERTY_SETTINGS
@given(random_plan_data())
def test_without_limits_the_schedule_is_the_critical_path_schedule(data: dict[str, Any]) -> None:
    data.pop("agents", None)
    data.pop("settings", None)
    data.pop("resources", None)
    for phase in data["phases"]:
        for milestone in phase["milestones"]:
            for task in milestone["tasks"]:
                task.pop("resources", None)
    plan, graph = load(data)
    result = schedule(graph)
    assert_feasible(plan, result)
    assert result.start_s == pytest.approx(graph.es[: graph.n_tasks], abs=EPS)
    assert result.makespan_s == pytest.approx(graph.critical_path_s, abs=EPS)


# ---------------------------------------------------------------------------
# Critical path method


@PROPERTY_SETTINGS
@given(random_plan_data())
def test_cpm_values_are_consistent(data: dict[str, Any]) -> None:
    _, graph = load(data)
    for v in range(graph.n_nodes):
        assert graph.es[v] + graph.duration[v] == pytest.approx(graph.ef[v], abs=EPS)
        assert graph.ls[v] + graph.duration[v] == pytest.approx(graph.lf[v], abs=EPS)
        assert graph.ls[v] >= graph.es[v] - EPS
        assert graph.es[v] >= 0.0
        assert graph.lf[v] <= graph.critical_path_s + EPS
    assert graph.critical_path_s == pytest.approx(max(graph.ef, default=0.0), abs=EPS)
    for t in graph.task_ids:
        assert graph.slack(t) >= 0.0


@PROPERTY_SETTINGS
@given(random_plan_data())
def test_earliest_starts_match_an_independent_computation(data: dict[str, Any]) -> None:
    plan, graph = load(data)
    expected = independent_earliest_starts(plan)
    assert {t: graph.earliest_start(t) for t in graph.task_ids} == pytest.approx(expected)
    finishes = [expected[t.id] + estimate_of(plan, t) for t in plan.tasks()]
    assert graph.critical_path_s == pytest.approx(max(finishes, default=0.0), abs=EPS)


@PROPERTY_SETTINGS
@given(random_plan_data())
def test_the_critical_path_is_a_tight_chain_of_zero_slack_tasks(data: dict[str, Any]) -> None:
    plan, graph = load(data)
    path = graph.critical_path()
    if not path:
        assert graph.critical_path_s == 0.0 or graph.n_tasks == 0
        return
    for t in path:
        assert graph.slack(t) == pytest.approx(0.0, abs=EPS)
    ef = {t: graph.ef[graph.index[t]] for t in path}
    assert graph.earliest_start(path[0]) == pytest.approx(0.0, abs=EPS)
    for before, after in itertools.pairwise(path):
        assert graph.earliest_start(after) == pytest.approx(ef[before], abs=EPS)
    assert ef[path[-1]] == pytest.approx(graph.critical_path_s, abs=EPS)
    by_id = {t.id: t for t in plan.tasks()}
    total = sum(estimate_of(plan, by_id[t]) for t in path)
    assert total == pytest.approx(graph.critical_path_s, abs=EPS)


@PROPERTY_SETTINGS
@given(random_plan_data())
def test_order_and_levels_respect_every_needs(data: dict[str, Any]) -> None:
    plan, graph = load(data)
    order = graph.topological_order()
    assert sorted(order) == sorted(graph.task_ids)
    position = {t: i for i, t in enumerate(order)}
    level = dict(zip(graph.task_ids, graph.levels(), strict=True))
    for task in plan.tasks():
        for need in task.needs:
            assert position[need] < position[task.id]
            assert level[need] < level[task.id]
