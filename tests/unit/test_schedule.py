"""The resource-feasible schedule, verified by an independent feasibility checker.

:func:`assert_feasible` reads only the plan model and the schedule's times and agents;
it re-derives every rule of the plan format (needs, milestone ``after``, phase order
and ``overlap``, counted resources, rate limits, agent capabilities and capacities,
``max_concurrency``, estimates with defaults) without using any scheduling code.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from counterpoint.plan import Plan, Schedule, check_file, parse_plan, schedule

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cloud-migration" / "plan.yaml"
H = 3600.0
EPS = 1e-6


# ---------------------------------------------------------------------------
# The independent checker


def _plan_tasks(plan: Plan) -> list[tuple[int, str, Any]]:
    """(phase index, milestone id, task) for every task in plan order."""
    return [
        (pi, m.id, t) for pi, p in enumerate(plan.phases) for m in p.milestones for t in m.tasks
    ]


def estimate_of(plan: Plan, task: Any) -> float:
    return float(plan.defaults.estimate if task.estimate is None else task.estimate)


def barrier_times(plan: Plan, finish: dict[str, float]) -> dict[str, float]:
    """When each milestone may start, given when tasks actually finished.

    A phase starts at 0 (the first) or when the previous phase ends (or starts, if the
    previous phase overlaps). A phase ends when it has started, all its milestones have
    ended and the previous phase has ended. A milestone starts when its phase has started
    and every milestone in ``after`` has ended; it ends when it has started and all its
    tasks have finished.
    """
    phase_of = {m.id: k for k, p in enumerate(plan.phases) for m in p.milestones}
    by_id = {m.id: m for p in plan.phases for m in p.milestones}
    memo: dict[tuple[str, Any], float] = {}

    def phase_start(k: int) -> float:
        if k == 0:
            return 0.0
        return phase_start(k - 1) if plan.phases[k - 1].overlap else phase_end(k - 1)

    def phase_end(k: int) -> float:
        key = ("phase_end", k)
        if key not in memo:
            ends = [milestone_end(m.id) for m in plan.phases[k].milestones]
            previous = [phase_end(k - 1)] if k else []
            memo[key] = max([phase_start(k), *ends, *previous])
        return memo[key]

    def milestone_start(mid: str) -> float:
        key = ("milestone_start", mid)
        if key not in memo:
            waits = [milestone_end(a) for a in by_id[mid].after]
            memo[key] = max([phase_start(phase_of[mid]), *waits])
        return memo[key]

    def milestone_end(mid: str) -> float:
        key = ("milestone_end", mid)
        if key not in memo:
            done = [finish[t.id] for t in by_id[mid].tasks]
            memo[key] = max([milestone_start(mid), *done])
        return memo[key]

    return {mid: milestone_start(mid) for mid in by_id}


def _active(start: dict[str, float], finish: dict[str, float], at: float) -> list[str]:
    """Tasks holding their slot at instant ``at`` (a zero-length task holds nothing)."""
    return [
        t for t in start if finish[t] - start[t] > EPS and start[t] - EPS <= at < finish[t] - EPS
    ]


def _check_rates(plan: Plan, tasks: list[Any], start: dict[str, float]) -> None:
    """Simulate each rate limit as a token bucket that starts full."""
    for name, spec in plan.resources.items():
        if spec.rate is None:
            continue
        window = spec.per if spec.per is not None else 1.0
        refill = spec.rate / window
        takers = sorted(
            (start[t.id], t.resources[name], t.id) for t in tasks if name in t.resources
        )
        level, last = float(spec.rate), 0.0
        for when, units, tid in takers:
            level = min(float(spec.rate), level + (when - last) * refill)
            last = when
            level -= units
            assert level >= -1e-6 * max(1.0, spec.rate), (
                f"rate limit {name!r} exceeded when {tid!r} starts at {when}"
            )


def assert_feasible(plan: Plan, sched: Schedule) -> None:
    """Fail unless ``sched`` obeys every ordering and capacity rule of ``plan``."""
    placed = _plan_tasks(plan)
    tasks = [t for _, _, t in placed]
    ids = [t.id for t in tasks]
    assert list(sched.task_ids) == ids
    assert len(sched.start_s) == len(sched.finish_s) == len(sched.agent) == len(ids)
    start = dict(zip(ids, sched.start_s, strict=True))
    finish = dict(zip(ids, sched.finish_s, strict=True))
    agent = dict(zip(ids, sched.agent, strict=True))

    for t in tasks:
        assert start[t.id] >= -EPS, t.id
        assert finish[t.id] - start[t.id] == pytest.approx(estimate_of(plan, t), abs=EPS), t.id
    assert sched.makespan_s == pytest.approx(max(finish.values(), default=0.0), abs=EPS)

    for t in tasks:
        for need in t.needs:
            assert start[t.id] >= finish[need] - EPS, f"{t.id} starts before {need} finishes"
    ready = barrier_times(plan, finish)
    for _, mid, t in placed:
        assert start[t.id] >= ready[mid] - EPS, f"{t.id} starts before milestone {mid} may"

    if plan.agents:
        for t in tasks:
            spec = plan.agents.get(agent[t.id] or "")
            assert spec is not None, f"{t.id} has no agent"
            assert set(t.requires) <= set(spec.capabilities), f"{agent[t.id]} cannot run {t.id}"
            assert spec.capacity >= 1
    else:
        assert all(a is None for a in agent.values())

    by_id = {t.id: t for t in tasks}
    counted = {n: s.capacity for n, s in plan.resources.items() if s.capacity is not None}
    for t in tasks:
        running = _active(start, finish, start[t.id])
        if not running:
            continue
        limit = plan.settings.max_concurrency
        assert limit is None or len(running) <= limit, f"max_concurrency exceeded at {t.id}"
        for name, capacity in counted.items():
            held = sum(by_id[u].resources.get(name, 0) for u in running)
            assert held <= capacity, f"{name!r} over capacity when {t.id} starts"
        for name, spec in plan.agents.items():
            busy = sum(1 for u in running if agent[u] == name)
            assert busy <= spec.capacity, f"agent {name!r} over capacity when {t.id} starts"
    _check_rates(plan, tasks, start)


# ---------------------------------------------------------------------------
# Plan builders


def task(ident: str, hours: float = 1.0, *needs: str, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "estimate": hours * H, "needs": list(needs), **extra}


def make_plan(
    *tasks: dict[str, Any], phases: list[dict[str, Any]] | None = None, **top: Any
) -> Plan:
    """A plan of ``tasks`` in one milestone (or the given ``phases``) plus top-level keys."""
    if phases is None:
        phases = [{"id": "p1", "milestones": [{"id": "m1", "tasks": list(tasks)}]}]
    data = {"version": 1, "name": "schedule-test", **top, "phases": phases}
    return parse_plan(json.dumps(data), "plan.json")


def run(plan: Plan) -> Schedule:
    result = schedule(plan.compile())
    assert_feasible(plan, result)
    return result


def starts(result: Schedule) -> dict[str, float]:
    return {t: s / H for t, s in zip(result.task_ids, result.start_s, strict=True)}


def agents(result: Schedule) -> dict[str, str | None]:
    return dict(zip(result.task_ids, result.agent, strict=True))


def agent(capabilities: list[str], capacity: int = 1) -> dict[str, Any]:
    return {"capabilities": capabilities, "capacity": capacity, "runner": {"shell": "run"}}


# ---------------------------------------------------------------------------
# The checker itself catches broken schedules


def broken(result: Schedule, **changes: Callable[[list[float]], list[float]]) -> Schedule:
    fields = {
        "task_ids": result.task_ids,
        "start_s": list(result.start_s),
        "finish_s": list(result.finish_s),
        "agent": list(result.agent),
        "makespan_s": result.makespan_s,
    }
    for key, change in changes.items():
        fields[key] = change(fields[key])
    fields["makespan_s"] = max(fields["finish_s"], default=0.0)
    return Schedule(**fields)


def test_the_checker_rejects_a_task_starting_before_its_needs_finish() -> None:
    plan = make_plan(task("a"), task("b", 1, "a"))
    result = run(plan)
    early = broken(result, start_s=lambda s: [0.0, 0.0], finish_s=lambda f: [H, H])
    with pytest.raises(AssertionError, match="b starts before a finishes"):
        assert_feasible(plan, early)


def test_the_checker_rejects_an_overbooked_lock() -> None:
    plan = make_plan(
        task("a", resources={"lock": 1}),
        task("b", resources={"lock": 1}),
        resources={"lock": {"capacity": 1}},
    )
    result = run(plan)
    together = broken(result, start_s=lambda s: [0.0, 0.0], finish_s=lambda f: [H, H])
    with pytest.raises(AssertionError, match="'lock' over capacity"):
        assert_feasible(plan, together)


def test_the_checker_rejects_a_wrong_duration() -> None:
    plan = make_plan(task("a", 2))
    result = run(plan)
    with pytest.raises(AssertionError):
        assert_feasible(plan, broken(result, finish_s=lambda f: [H]))


def test_the_checker_rejects_a_task_ignoring_phase_order() -> None:
    plan = make_plan(
        phases=[
            {"id": "p1", "milestones": [{"id": "m1", "tasks": [task("a")]}]},
            {"id": "p2", "milestones": [{"id": "m2", "tasks": [task("b")]}]},
        ]
    )
    result = run(plan)
    together = broken(result, start_s=lambda s: [0.0, 0.0], finish_s=lambda f: [H, H])
    with pytest.raises(AssertionError, match="before milestone m2"):
        assert_feasible(plan, together)


def test_the_checker_rejects_a_too_fast_rate_limited_start() -> None:
    plan = make_plan(
        task("a", 0.01, resources={"api": 1}),
        task("b", 0.01, resources={"api": 1}),
        resources={"api": {"rate": 1, "per": "1m"}},
    )
    result = run(plan)
    quick = broken(result, start_s=lambda s: [0.0, 1.0], finish_s=lambda f: [36.0, 37.0])
    with pytest.raises(AssertionError, match="rate limit 'api'"):
        assert_feasible(plan, quick)


# ---------------------------------------------------------------------------
# Hand-checked schedules


def test_without_agents_or_resources_every_task_starts_at_its_earliest_start() -> None:
    plan = make_plan(task("a", 1), task("b", 2, "a"), task("c", 5, "a"), task("d", 1, "b", "c"))
    result = run(plan)
    assert starts(result) == {"a": 0.0, "b": 1.0, "c": 1.0, "d": 6.0}
    assert result.makespan_s == 7 * H
    assert all(a is None for a in result.agent)


def test_an_exclusive_lock_serialises_two_otherwise_parallel_tasks() -> None:
    plan = make_plan(
        task("a", 1, resources={"iam": 1}),
        task("b", 2, resources={"iam": 1}),
        task("free", 1),
        resources={"iam": {"capacity": 1}},
    )
    result = run(plan)
    # b is longer, so its latest start is earlier: it takes the lock first
    assert starts(result) == {"a": 2.0, "b": 0.0, "free": 0.0}
    assert result.makespan_s == 3 * H


def test_a_counted_resource_runs_as_many_tasks_as_its_units_allow() -> None:
    plan = make_plan(
        task("a", 1, resources={"aws": 1}),
        task("b", 1, resources={"aws": 1}),
        task("c", 1, resources={"aws": 1}),
        resources={"aws": {"capacity": 2}},
    )
    assert sorted(starts(run(plan)).values()) == [0.0, 0.0, 1.0]


def test_a_task_takes_all_its_units_at_once_or_waits() -> None:
    plan = make_plan(
        task("small", 1, resources={"aws": 1}),
        task("big", 1, resources={"aws": 2}),
        resources={"aws": {"capacity": 2}},
    )
    result = run(plan)
    assert sorted(starts(result).values()) == [0.0, 1.0]
    assert result.makespan_s == 2 * H


def test_an_agent_with_capacity_one_runs_one_task_at_a_time() -> None:
    plan = make_plan(
        task("a", 1, requires=["build"]),
        task("b", 1, requires=["build"]),
        agents={"builder": agent(["build"], capacity=1)},
    )
    result = run(plan)
    assert sorted(starts(result).values()) == [0.0, 1.0]
    assert agents(result) == {"a": "builder", "b": "builder"}


def test_an_agent_with_capacity_two_runs_two_tasks_side_by_side() -> None:
    plan = make_plan(
        task("a", 1, requires=["build"]),
        task("b", 1, requires=["build"]),
        agents={"builder": agent(["build"], capacity=2)},
    )
    assert starts(run(plan)) == {"a": 0.0, "b": 0.0}


def test_a_specialist_is_preferred_over_a_generalist() -> None:
    plan = make_plan(
        task("a", 1, requires=["build"]),
        agents={
            "generalist": agent(["build", "test", "deploy"]),
            "specialist": agent(["build"]),
        },
    )
    assert agents(run(plan)) == {"a": "specialist"}


def test_the_generalist_takes_work_when_the_specialist_is_busy() -> None:
    plan = make_plan(
        task("a", 1, requires=["build"]),
        task("b", 1, requires=["build"]),
        task("c", 1, requires=["test"]),
        agents={
            "generalist": agent(["build", "test"], capacity=2),
            "specialist": agent(["build"]),
        },
    )
    result = run(plan)
    assert starts(result) == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert sorted(a or "" for a in result.agent) == ["generalist", "generalist", "specialist"]
    assert agents(result)["c"] == "generalist"


def test_only_an_agent_with_every_required_capability_runs_a_task() -> None:
    plan = make_plan(
        task("both", 1, requires=["build", "test"]),
        agents={
            "builder": agent(["build"]),
            "tester": agent(["test"]),
            "all": agent(["build", "test"]),
        },
    )
    assert agents(run(plan)) == {"both": "all"}


def test_a_more_urgent_task_takes_the_only_slot_first() -> None:
    plan = make_plan(
        task("routine", 1, requires=["build"], priority="low"),
        task("urgent", 1, requires=["build"], priority="critical"),
        agents={"builder": agent(["build"])},
    )
    assert starts(run(plan)) == {"routine": 1.0, "urgent": 0.0}


@pytest.mark.parametrize(
    ("first", "second"),
    [("critical", "high"), ("high", "medium"), ("medium", "low")],
)
def test_priority_classes_are_served_in_order(first: str, second: str) -> None:
    plan = make_plan(
        task("second", 1, priority=second),
        task("first", 1, priority=first),
        settings={"max_concurrency": 1},
    )
    assert starts(run(plan)) == {"second": 1.0, "first": 0.0}


def test_the_default_priority_applies_to_tasks_without_one() -> None:
    plan = make_plan(
        task("plain", 1),
        task("low", 1, priority="low"),
        task("high", 1, priority="high"),
        settings={"max_concurrency": 1},
        defaults={"priority": "medium"},
    )
    assert starts(run(plan)) == {"plain": 1.0, "low": 2.0, "high": 0.0}


def test_max_concurrency_caps_tasks_running_at_once_across_agents() -> None:
    plan = make_plan(
        *(task(f"t{i}", 1) for i in range(5)),
        settings={"max_concurrency": 2},
    )
    result = run(plan)
    assert sorted(starts(result).values()) == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert result.makespan_s == 3 * H


def test_a_rate_limit_of_one_per_minute_delays_the_second_task_by_a_minute() -> None:
    plan = make_plan(
        task("first", 10 / H, resources={"api": 1}),
        task("second", 10 / H, resources={"api": 1}),
        resources={"api": {"rate": 1, "per": "1m"}},
    )
    result = run(plan)
    assert sorted(result.start_s) == pytest.approx([0.0, 60.0])
    assert result.makespan_s == pytest.approx(70.0)


def test_a_rate_limit_refills_continuously() -> None:
    plan = make_plan(
        *(task(f"t{i}", 1 / H, resources={"api": 1}) for i in range(4)),
        resources={"api": {"rate": 2, "per": "1m"}},
    )
    result = run(plan)
    # two tokens at once, then one every 30s
    assert sorted(result.start_s) == pytest.approx([0.0, 0.0, 30.0, 60.0])


def test_rate_tokens_are_not_given_back_when_a_task_finishes() -> None:
    plan = make_plan(
        task("a", 1 / H, resources={"api": 1}),
        task("b", 1 / H, "a", resources={"api": 1}),
        resources={"api": {"rate": 1, "per": "1h"}},
    )
    assert run(plan).start_s == pytest.approx([0.0, H])


def test_a_milestone_after_another_waits_despite_free_agents() -> None:
    plan = make_plan(
        phases=[
            {
                "id": "p1",
                "milestones": [
                    {"id": "m1", "tasks": [task("a", 2)]},
                    {"id": "m2", "after": ["m1"], "tasks": [task("b", 1)]},
                    {"id": "m3", "tasks": [task("c", 1)]},
                ],
            }
        ]
    )
    assert starts(run(plan)) == {"a": 0.0, "b": 2.0, "c": 0.0}


def test_phases_run_in_order_unless_the_earlier_one_overlaps() -> None:
    phases = [
        {"id": "p1", "overlap": True, "milestones": [{"id": "m1", "tasks": [task("a", 3)]}]},
        {"id": "p2", "milestones": [{"id": "m2", "tasks": [task("b", 1), task("c", 1, "a")]}]},
        {"id": "p3", "milestones": [{"id": "m3", "tasks": [task("d", 1)]}]},
    ]
    result = run(make_plan(phases=phases))
    assert starts(result) == {"a": 0.0, "b": 0.0, "c": 3.0, "d": 4.0}


def test_zero_length_tasks_are_scheduled_instantly() -> None:
    plan = make_plan(task("mark", 0), task("next", 1, "mark"), settings={"max_concurrency": 1})
    result = run(plan)
    assert starts(result) == {"mark": 0.0, "next": 0.0}
    assert result.makespan_s == H


def test_a_plan_without_tasks_has_an_empty_schedule() -> None:
    plan = make_plan(phases=[{"id": "p1"}, {"id": "p2", "milestones": [{"id": "m"}]}])
    result = run(plan)
    assert result.task_ids == []
    assert result.makespan_s == 0.0
    assert result.to_json() == []


def test_schedule_entries_are_ordered_by_start_then_plan_order() -> None:
    plan = make_plan(
        task("late", 1, "b"),
        task("b", 1),
        task("a", 1),
        agents={"w": agent([], capacity=3)},
    )
    result = run(plan)
    assert [e.task for e in result.entries()] == ["b", "a", "late"]
    assert result.to_json()[0] == {"task": "b", "start_s": 0.0, "finish_s": H, "agent": "w"}


def test_schedule_json_omits_the_agent_when_the_plan_has_none() -> None:
    result = run(make_plan(task("a", 1)))
    assert result.to_json() == [{"task": "a", "start_s": 0.0, "finish_s": H}]


# ---------------------------------------------------------------------------
# The flagship example


@pytest.fixture(scope="module")
def example() -> tuple[Plan, Schedule, float]:
    report = check_file(EXAMPLE)
    assert report.plan is not None and report.graph is not None
    return report.plan, schedule(report.graph), report.graph.critical_path_s


def test_the_flagship_schedule_is_feasible(example: tuple[Plan, Schedule, float]) -> None:
    plan, result, _ = example
    assert_feasible(plan, result)


def test_the_flagship_makespan_is_at_least_its_critical_path(
    example: tuple[Plan, Schedule, float],
) -> None:
    plan, result, critical = example
    assert result.makespan_s >= critical - EPS
    assert len(result.task_ids) == len(plan.tasks()) == 56


def test_the_flagship_schedule_gives_every_task_an_able_agent(
    example: tuple[Plan, Schedule, float],
) -> None:
    plan, result, _ = example
    for t, name in zip(plan.tasks(), result.agent, strict=True):
        assert name is not None
        assert set(t.requires) <= set(plan.agents[name].capabilities)


def test_the_flagship_schedule_is_deterministic(example: tuple[Plan, Schedule, float]) -> None:
    _, result, _ = example
    again = schedule(check_file(EXAMPLE).graph)  # type: ignore[arg-type]
    assert again == result


@pytest.mark.timeout(5)
def test_a_rate_limit_late_in_a_long_plan_still_schedules() -> None:
    """After ~120 days, a refill that is not a whole number of seconds must still end."""
    plan = make_plan(
        task("long", 120 * 24),
        task("a", 1, "long", resources={"api": 2}),
        task("b", 1, "long", resources={"api": 3}),
        resources={"api": {"rate": 3, "per": "1s"}},
    )
    result = run(plan)
    late = 120 * 24 * H
    # two of the three tokens go first; the other task waits 2/3 s for its third token
    assert sorted(result.start_s[1:]) == pytest.approx([late, late + 2 / 3], abs=1e-3)
