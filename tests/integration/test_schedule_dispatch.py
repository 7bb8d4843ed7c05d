"""Schedule-aware dispatch: a real run follows the plan's searched schedule.

The plan below (one resource of 3 units) is one where the critical-path order, the
run engine's order before, loses: it starts the longest chain (t2 then t3) first,
and nothing else fits beside it, so the plan takes 15 time units; the search finds
11 (t0, then t1, then t2 beside t4, then t3). Every task sleeps exactly its
estimate (one unit is ``UNIT`` real seconds, the run's time scale), so a run that
follows its schedule ends near 11 units and one that does not near 15.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from run_helpers import Workspace, agent_spec, journal, one_phase, run_in_process, task

UNIT = 0.15  # real seconds per plan second (the run's --time-scale)

SHAPE = {  # task: (estimate, units of R, needs)
    "t0": (1, 3, []),
    "t1": (2, 2, []),
    "t2": (4, 2, []),
    "t3": (4, 3, ["t2"]),
    "t4": (4, 1, ["t1"]),
}


def write(ws: Workspace, dispatch: str | None, actual: dict[str, float] | None = None) -> None:
    tasks = []
    for tid, (estimate, units, needs) in SHAPE.items():
        took = (actual or {}).get(tid, estimate)
        tasks.append(
            task(tid, sleep=took * UNIT, estimate=estimate, resources={"R": units}, needs=needs)
        )
    top: dict[str, Any] = {
        "agents": {"w": agent_spec(ws, capacity=8)},
        "resources": {"R": {"capacity": 3}},
    }
    if dispatch is not None:
        top["settings"] = {"dispatch": dispatch}
    ws.write_plan(one_phase(tasks, **top))


def makespan_units(ws: Workspace) -> float:
    runs = ws.finished()
    assert sorted(runs) == sorted(SHAPE)
    return (max(e.end for e in runs.values()) - min(e.start for e in runs.values())) / UNIT


def test_a_run_follows_the_searched_schedule_where_the_critical_path_order_loses(
    tmp_path: Path,
) -> None:
    (tmp_path / "schedule").mkdir()
    (tmp_path / "critical-path").mkdir()
    ws = Workspace.create(tmp_path / "schedule")
    write(ws, dispatch=None)  # the default: schedule
    code, seen = run_in_process(ws, time_scale=UNIT)
    assert code == 0
    planned = seen.kinds("schedule_planned")
    assert len(planned) == 1 and planned[0].data["makespan_s"] == 11
    assert planned[0].data["method"] == "genetic"
    followed = makespan_units(ws)
    assert followed < 12.5, f"the run took {followed:.2f} units, its schedule 11"

    ws = Workspace.create(tmp_path / "critical-path")
    write(ws, dispatch="critical-path")
    code, seen = run_in_process(ws, time_scale=UNIT)
    assert code == 0
    assert seen.kinds("schedule_planned") == []
    greedy = makespan_units(ws)
    assert greedy > 14.5, f"the critical-path order took {greedy:.2f} units (expected 15)"


def test_a_task_far_over_its_estimate_has_the_rest_rescheduled(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    write(ws, dispatch="schedule", actual={"t0": 4})  # t0 takes 4 units, not 1
    code, _ = run_in_process(ws, time_scale=UNIT)
    assert code == 0
    refreshed = journal(ws, "schedule_refreshed")
    assert refreshed, "no refresh after t0 ran 3 units late"
    # the rest was planned from when t0 finished (4 units in): 4 + 10 at the least
    assert refreshed[0]["makespan_s"] >= 14
    assert sorted(ws.finished()) == sorted(SHAPE)


def test_a_resumed_run_schedules_only_what_is_left(tmp_path: Path) -> None:
    from run_helpers import resume_in_process

    ws = Workspace.create(tmp_path)
    write(ws, dispatch="schedule")
    assert run_in_process(ws, time_scale=UNIT)[0] == 0
    before = len(ws.executions())
    code, seen = resume_in_process(ws, time_scale=UNIT)
    assert code == 0
    assert len(ws.executions()) == before  # nothing ran again
    planned = seen.kinds("schedule_planned")
    assert len(planned) == 1 and planned[0].data["makespan_s"] == 0
