"""The dispatch order: queue keys from the schedule, drift, reservations, peaks."""

from __future__ import annotations

import json

from counterpoint.plan import parse_plan
from counterpoint.runtime.dispatch_order import DispatchOrder, peak


def graph(tasks: list[dict[str, object]], capacity: int = 3):  # type: ignore[no-untyped-def]
    data = {
        "version": 1,
        "name": "x",
        "resources": {"R": {"capacity": capacity}},
        "agents": {"w": {"capacity": 8, "runner": {"python": "m:f"}}},
        "phases": [{"id": "p", "milestones": [{"id": "m", "tasks": tasks}]}],
    }
    return parse_plan(json.dumps(data), "plan.json").compile()


TASKS: list[dict[str, object]] = [
    {"id": "t0", "estimate": 1, "resources": {"R": 3}},
    {"id": "t1", "estimate": 2, "resources": {"R": 2}},
    {"id": "t2", "estimate": 4, "resources": {"R": 2}},
    {"id": "t3", "estimate": 4, "resources": {"R": 3}, "needs": ["t2"]},
    {"id": "t4", "estimate": 4, "resources": {"R": 1}, "needs": ["t1"]},
]


def test_keys_are_the_planned_starts_and_order_tasks_as_the_schedule_does() -> None:
    g = graph(TASKS)
    order = DispatchOrder(g, "schedule", 1.0, seed=0)
    planned = order.plan()
    assert planned is not None and planned.makespan_s == 11
    keys = {tid: order.key(t, 0.0) for t, tid in enumerate(g.task_ids)}
    for t, tid in enumerate(g.task_ids):
        assert keys[tid][0] == planned.start_s[t]
    # the critical-path order would put the long chain t2 -> t3 first; the schedule does not
    assert keys["t1"] < keys["t2"]


def test_critical_path_mode_keys_are_latest_starts_and_plan_nothing() -> None:
    g = graph(TASKS)
    order = DispatchOrder(g, "critical-path", 1.0, seed=0)
    assert order.plan() is None and not order.follows
    assert [order.key(t, 0.0) for t in range(g.n_tasks)] == [
        (g.ls[t], 0.0) for t in range(g.n_tasks)
    ]


def test_a_task_spawned_after_planning_goes_in_at_the_current_plan_time() -> None:
    order = DispatchOrder(graph(TASKS), "schedule", 1.0, seed=0)
    order.plan()
    assert order.key(99, now_plan=7.5) == (7.5, 7.5)


def test_drift_needs_a_tenth_of_the_estimate_and_two_percent_of_the_makespan() -> None:
    g = graph(TASKS)
    order = DispatchOrder(g, "schedule", 1.0, seed=0)
    planned = order.plan()
    assert planned is not None
    t2 = g.task_ids.index("t2")
    finish = planned.finish_s[t2]
    assert not order.drifted(t2, finish + 0.2)  # 5% of its 4 s estimate
    assert order.drifted(t2, finish + 1.0)
    assert order.drifted(t2, finish - 1.0)  # early counts too


def test_reserved_lists_waiting_tasks_planned_before_a_time_and_skips_started_ones() -> None:
    g = graph(TASKS)
    order = DispatchOrder(g, "schedule", 1.0, seed=0)
    planned = order.plan()
    assert planned is not None
    started = {g.task_ids.index("t0")}
    found = list(
        order.reserved(
            g.task_ids.index("t3"),
            until=planned.makespan_s,
            started=lambda u: u in started,
            imminent=lambda u: True,
        )
    )
    names = [g.task_ids[u] for u, _ in found]
    assert "t0" not in names and "t3" not in names
    assert names == sorted(names, key=lambda n: planned.start_s[g.task_ids.index(n)])
    assert all(start < planned.makespan_s for _, start in found)


def test_peak_is_the_most_units_held_at_once() -> None:
    assert peak([]) == 0
    assert peak([(0, 2, 1), (1, 3, 2), (2, 4, 1)]) == 3
    assert peak([(0, 1, 2), (1, 2, 2)]) == 2  # one ends as the other starts
    assert peak([(0, 0, 5), (0, 1, 1)]) == 1  # an empty interval holds nothing
