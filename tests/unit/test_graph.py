"""The critical-path method on small graphs checked by hand, and the barriers it honours."""

from __future__ import annotations

import json
from typing import Any

import pytest

from counterpoint.plan import Graph, Plan, parse_plan
from counterpoint.plan.analysis import EarlyStart, overlap_opportunities, parallel_matrix

H = 3600.0


def task(ident: str, hours: float, *needs: str, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "estimate": f"{hours}h", "needs": list(needs), **extra}


def milestone(ident: str, *tasks: dict[str, Any], after: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"id": ident, "after": list(after), "tasks": list(tasks)}


def phase(ident: str, *milestones: dict[str, Any], overlap: bool = False) -> dict[str, Any]:
    return {"id": ident, "overlap": overlap, "milestones": list(milestones)}


def make_plan(*phases: dict[str, Any]) -> Plan:
    data = {"version": 1, "name": "graph-test", "phases": list(phases)}
    return parse_plan(json.dumps(data), "plan.json")


def compile_phases(*phases: dict[str, Any]) -> Graph:
    return make_plan(*phases).compile()


def es(graph: Graph) -> dict[str, float]:
    return {t: graph.earliest_start(t) / H for t in graph.task_ids}


def diamond() -> Graph:
    """a(1h) -> b(2h) and c(5h) -> d(1h)."""
    return compile_phases(
        phase(
            "p1",
            milestone(
                "m1",
                task("a", 1),
                task("b", 2, "a"),
                task("c", 5, "a"),
                task("d", 1, "b", "c"),
            ),
        )
    )


# ---------------------------------------------------------------------------
# Critical path method


def test_earliest_starts_of_a_diamond_wait_for_the_longest_branch() -> None:
    assert es(diamond()) == {"a": 0.0, "b": 1.0, "c": 1.0, "d": 6.0}


def test_earliest_finish_is_earliest_start_plus_duration() -> None:
    graph = diamond()
    ef = {t: graph.ef[graph.index[t]] / H for t in graph.task_ids}
    assert ef == {"a": 1.0, "b": 3.0, "c": 6.0, "d": 7.0}


def test_the_critical_path_of_a_diamond_takes_the_long_branch() -> None:
    graph = diamond()
    assert graph.critical_path() == ["a", "c", "d"]
    assert graph.critical_path_s == 7 * H


def test_slack_is_zero_on_the_critical_path_and_the_spare_time_elsewhere() -> None:
    graph = diamond()
    assert {t: graph.slack(t) / H for t in graph.task_ids} == {
        "a": 0.0,
        "b": 3.0,
        "c": 0.0,
        "d": 0.0,
    }


def test_latest_start_is_as_late_as_possible_without_delaying_the_end() -> None:
    graph = diamond()
    assert {t: graph.latest_start(t) / H for t in graph.task_ids} == {
        "a": 0.0,
        "b": 4.0,
        "c": 1.0,
        "d": 6.0,
    }


def test_independent_tasks_all_start_at_zero_and_the_longest_is_critical() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("short", 1), task("long", 4), task("mid", 2)))
    )
    assert es(graph) == {"short": 0.0, "long": 0.0, "mid": 0.0}
    assert graph.critical_path() == ["long"]
    assert graph.critical_path_s == 4 * H
    assert graph.slack("short") == 3 * H
    assert graph.slack("mid") == 2 * H


def test_a_task_without_an_estimate_takes_the_plan_default() -> None:
    data = {
        "version": 1,
        "name": "defaults",
        "defaults": {"estimate": "30m"},
        "phases": [phase("p1", milestone("m1", {"id": "a"}, task("b", 1, "a")))],
    }
    graph = parse_plan(json.dumps(data), "plan.json").compile()
    assert graph.earliest_start("b") == 1800.0
    assert graph.critical_path_s == 1800.0 + H


def test_without_a_default_a_task_takes_one_hour() -> None:
    graph = compile_phases(phase("p1", milestone("m1", {"id": "a"})))
    assert graph.critical_path_s == H


def test_the_critical_path_crosses_phases() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 2), task("b", 1))),
        phase("p2", milestone("m2", task("c", 3), task("d", 1))),
    )
    assert graph.critical_path() == ["a", "c"]
    assert graph.critical_path_s == 5 * H
    assert graph.slack("b") == 1 * H
    assert graph.slack("d") == 2 * H


def test_a_plan_without_tasks_has_an_empty_critical_path() -> None:
    graph = compile_phases(phase("p1"), phase("p2", milestone("m")))
    assert graph.critical_path() == []
    assert graph.critical_path_s == 0.0
    assert graph.topological_order() == []


# ---------------------------------------------------------------------------
# Barriers: milestones and phases


def test_a_milestone_after_another_waits_for_all_of_its_tasks() -> None:
    graph = compile_phases(
        phase(
            "p1",
            milestone("m1", task("x", 2), task("y", 3)),
            milestone("m2", task("z", 1), after=("m1",)),
        )
    )
    assert es(graph) == {"x": 0.0, "y": 0.0, "z": 3.0}
    assert graph.critical_path() == ["y", "z"]


def test_milestones_without_after_run_in_parallel() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("x", 2)), milestone("m2", task("z", 1)))
    )
    assert es(graph) == {"x": 0.0, "z": 0.0}


def test_after_chains_through_an_empty_milestone() -> None:
    graph = compile_phases(
        phase(
            "p1",
            milestone("m1", task("x", 2)),
            milestone("gate", after=("m1",)),
            milestone("m3", task("z", 1), after=("gate",)),
        )
    )
    assert es(graph)["z"] == 2.0


def test_after_may_name_a_milestone_of_an_earlier_phase() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("x", 2)), milestone("m1b", task("w", 5))),
        phase("p2", milestone("m2", task("z", 1), after=("m1",))),
    )
    # the phase barrier is the later constraint: z waits for all of p1 (w, 5h)
    assert es(graph)["z"] == 5.0


def test_a_phase_starts_when_every_task_of_the_previous_phase_is_done() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 4)), milestone("m2", task("b", 1))),
        phase("p2", milestone("m3", task("c", 1), task("d", 2))),
        phase("p3", milestone("m4", task("e", 1))),
    )
    assert es(graph) == {"a": 0.0, "b": 0.0, "c": 4.0, "d": 4.0, "e": 6.0}
    assert graph.critical_path() == ["a", "d", "e"]
    assert graph.critical_path_s == 7 * H


def test_overlap_lets_the_next_phase_start_before_the_previous_one_ends() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 10)), overlap=True),
        phase("p2", milestone("m2", task("b", 2), task("c", 1, "a"))),
    )
    assert es(graph) == {"a": 0.0, "b": 0.0, "c": 10.0}
    assert graph.critical_path_s == 11 * H


def test_an_overlapping_phase_still_ends_before_the_phase_after_next_starts() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 10)), overlap=True),
        phase("p2", milestone("m2", task("b", 2))),
        phase("p3", milestone("m3", task("c", 1))),
    )
    assert es(graph) == {"a": 0.0, "b": 0.0, "c": 10.0}


def test_forward_with_an_overlap_phase_shows_the_early_starts_it_would_allow() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 10))),
        phase("p2", milestone("m2", task("b", 2), task("c", 1, "a"))),
    )
    assert es(graph) == {"a": 0.0, "b": 10.0, "c": 10.0}
    early, finish = graph.forward(overlap_phase=0)
    assert early[graph.index["b"]] == 0.0
    assert early[graph.index["c"]] == 10 * H
    assert max(finish) == 11 * H
    # the graph itself is unchanged
    assert graph.earliest_start("b") == 10 * H


def test_forward_without_overlap_reproduces_the_earliest_starts() -> None:
    graph = diamond()
    early, finish = graph.forward()
    assert early == graph.es
    assert finish == graph.ef


def test_forward_with_the_last_phase_as_overlap_changes_nothing() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 10))),
        phase("p2", milestone("m2", task("b", 2))),
    )
    early, _ = graph.forward(overlap_phase=1)
    assert early == graph.es


def test_overlap_opportunities_list_the_tasks_that_could_start_early() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 10))),
        phase("p2", milestone("m2", task("b", 2), task("c", 1, "a"))),
    )
    [found] = overlap_opportunities(graph)
    assert found.phase == "p1"
    assert found.next_phase == "p2"
    assert found.tasks == [EarlyStart("b", 10 * H, 0.0)]
    assert found.tasks[0].saved_s == 10 * H
    assert found.makespan_saved_s == 1 * H


def test_a_phase_that_already_overlaps_offers_no_opportunity() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 10)), overlap=True),
        phase("p2", milestone("m2", task("b", 2))),
    )
    assert overlap_opportunities(graph) == []


def test_no_opportunity_when_every_next_phase_task_needs_the_previous_phase() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 10))),
        phase("p2", milestone("m2", task("b", 2, "a"))),
    )
    assert overlap_opportunities(graph) == []


def test_overlap_opportunities_are_listed_per_phase_boundary() -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 3))),
        phase("p2", milestone("m2", task("b", 2))),
        phase("p3", milestone("m3", task("c", 1))),
    )
    found = overlap_opportunities(graph)
    assert [(o.phase, o.next_phase, [t.task for t in o.tasks]) for o in found] == [
        ("p1", "p2", ["b"]),
        ("p2", "p3", ["c"]),
    ]
    # p2 overlapping p3: c may start with p2 (3h) instead of after it (5h): the plan ends at
    # 5h (p3 still ends after p2) instead of 6h
    assert found[1].tasks == [EarlyStart("c", 5 * H, 3 * H)]
    assert found[1].makespan_saved_s == 1 * H
    assert found[0].makespan_saved_s == 2 * H


# ---------------------------------------------------------------------------
# Levels, order and the parallel matrix


def test_levels_count_the_tasks_on_the_longest_chain_before_each_task() -> None:
    assert diamond().levels() == [0, 1, 1, 2]


def test_levels_continue_across_milestones_and_phases() -> None:
    graph = compile_phases(
        phase(
            "p1",
            milestone("m1", task("a", 1), task("b", 1, "a")),
            milestone("m2", task("c", 1), after=("m1",)),
            milestone("m3", task("free", 1)),
        ),
        phase("p2", milestone("m4", task("d", 1))),
    )
    levels = dict(zip(graph.task_ids, graph.levels(), strict=True))
    assert levels == {"a": 0, "b": 1, "c": 2, "free": 0, "d": 3}


def edges_of(graph: Graph) -> list[tuple[str, str]]:
    """Every (before, after) pair of tasks the plan orders, from the plan text alone."""
    plan = graph.plan
    pairs = [(n, t.id) for t in plan.tasks() for n in t.needs]
    owner = {
        t.id: (pi, m.id) for pi, p in enumerate(plan.phases) for m in p.milestones for t in m.tasks
    }
    for p in plan.phases:
        for m in p.milestones:
            for name in m.after:
                pairs += [
                    (u, t.id) for t in m.tasks for u, (_, mid) in owner.items() if mid == name
                ]
    for u, (pu, _) in owner.items():
        for t, (pt, _) in owner.items():
            if pu < pt and not any(plan.phases[k].overlap for k in range(pu, pt)):
                pairs.append((u, t))
    return pairs


def test_topological_order_puts_every_task_after_everything_it_waits_for() -> None:
    graph = compile_phases(
        phase(
            "p1",
            milestone("m1", task("e", 1, "b"), task("b", 1), task("a", 1, "e")),
            milestone("m2", task("c", 1), after=("m1",)),
        ),
        phase("p2", milestone("m3", task("d", 1), task("f", 1, "c"))),
    )
    order = graph.topological_order()
    assert sorted(order) == sorted(graph.task_ids)
    position = {t: i for i, t in enumerate(order)}
    pairs = edges_of(graph)
    assert ("b", "e") in pairs and ("c", "d") in pairs
    for before, after in pairs:
        assert position[before] < position[after], (before, after)


def test_the_parallel_matrix_groups_each_milestone_into_waves() -> None:
    graph = compile_phases(
        phase(
            "p1",
            milestone(
                "m1",
                task("a", 1, requires=["build"]),
                task("b", 2, "a", resources={}),
                task("c", 5, "a", requires=["test", "build"]),
                task("d", 1, "b", "c"),
            ),
            milestone("m2", task("e", 1), task("f", 1), after=("m1",)),
        )
    )
    rows = parallel_matrix(graph)
    assert [(r.milestone, r.waves) for r in rows] == [
        ("m1", [["a"], ["b", "c"], ["d"]]),
        ("m2", [["e", "f"]]),
    ]
    first, second = rows
    assert first.phase == "p1"
    assert first.title == "m1"
    assert first.capabilities == ["build", "test"]
    assert (first.start_s, first.finish_s) == (0.0, 7 * H)
    assert second.after == ["m1"]
    assert (second.start_s, second.finish_s) == (7 * H, 8 * H)


def test_the_parallel_matrix_lists_the_resources_a_milestone_uses() -> None:
    data = {
        "version": 1,
        "name": "res",
        "resources": {"db": {"capacity": 1}, "api": {"rate": 5, "per": "1m"}},
        "phases": [
            phase(
                "p1",
                milestone(
                    "m1", task("a", 1, resources={"db": 1}), task("b", 1, resources={"api": 2})
                ),
            )
        ],
    }
    graph = parse_plan(json.dumps(data), "plan.json").compile()
    [row] = parallel_matrix(graph)
    assert row.resources == ["api", "db"]
    assert row.waves == [["a", "b"]]


@pytest.mark.parametrize("k", [0, 1])
def test_forward_with_overlap_never_starts_anything_later(k: int) -> None:
    graph = compile_phases(
        phase("p1", milestone("m1", task("a", 3), task("a2", 1))),
        phase("p2", milestone("m2", task("b", 2, "a2"))),
        phase("p3", milestone("m3", task("c", 1))),
    )
    early, _ = graph.forward(overlap_phase=k)
    assert all(x <= y for x, y in zip(early, graph.es, strict=True))


def test_spawned_tasks_come_after_the_plans_and_the_barriers_move_up() -> None:
    from counterpoint.errors import PlanError
    from counterpoint.plan.graph import NodeKind, SpawnedTask
    from counterpoint.plan.model import Task

    g = compile_phases(
        phase("p1", milestone("m1", task("a", 1)), milestone("m2", task("b", 1), after=("m1",)))
    )
    end_m1 = g.milestone_end(0)
    assert end_m1 == 2 + 2 * 1 + 1
    kids = [
        SpawnedTask(Task.model_validate({"id": "k1", "estimate": "3h", "needs": ["a"]}), "a", 0, 1),
        SpawnedTask(
            Task.model_validate({"id": "k2", "estimate": "1h", "needs": ["k1"]}), "a", 0, 1
        ),
    ]
    g.extend(kids)
    assert g.task_ids == ["a", "b", "k1", "k2"] and g.n_plan_tasks == 2
    assert g.milestone_end(0) == end_m1 + 2  # barriers moved up by the two tasks
    assert g.kind(2) is NodeKind.TASK and g.kind(g.milestone_end(0)) is NodeKind.MILESTONE_END
    # m1 now ends after a (1h) + k1 (3h) + k2 (1h): m2's b starts at 5h
    assert es(g) == {"a": 0.0, "b": 5.0, "k1": 1.0, "k2": 4.0}
    assert g.critical_path() == ["a", "k1", "k2", "b"]
    # a cycle is refused and changes nothing
    loop = Task.model_validate({"id": "k3", "needs": ["b"]})  # b waits for m1's end
    with pytest.raises(PlanError):
        g.extend([SpawnedTask(loop, "a", 0, 1)])
    assert g.task_ids == ["a", "b", "k1", "k2"]
