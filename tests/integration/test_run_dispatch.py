"""Dispatch: order, priority, routing and limits, checked from what the agents recorded."""

from __future__ import annotations

from pathlib import Path

from run_helpers import (
    Workspace,
    agent_spec,
    cli,
    max_overlap,
    one_phase,
    plan,
    run_in_process,
    spans,
    status_json,
    task,
)


def test_every_task_starts_only_after_all_of_its_needs_have_finished(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    needs = {
        "a": [],
        "b": [],
        "c": ["a"],
        "d": ["a", "b"],
        "e": ["c", "d"],
        "f": ["b"],
        "g": ["e", "f"],
        "h": [],
        "i": ["h", "c"],
    }
    sleeps = {"a": 0.15, "b": 0.05, "h": 0.2, "d": 0.1}
    ws.write_plan(
        one_phase(
            [task(t, sleep=sleeps.get(t, 0.03), needs=n) for t, n in needs.items()],
            agents={"w": agent_spec(ws, capacity=4)},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    done = ws.finished()
    assert set(done) == set(needs)
    for t, deps in needs.items():
        for dep in deps:
            assert done[t].start >= done[dep].end, f"{t} started before its need {dep} finished"
    assert all(len(ws.runs_of(t)) == 1 for t in needs)


def test_a_quick_chain_runs_on_while_a_slow_task_in_another_branch_is_still_busy(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    chain = [task("a1", sleep=0.05)] + [
        task(f"a{i}", sleep=0.05, needs=[f"a{i - 1}"]) for i in range(2, 6)
    ]
    ws.write_plan(
        one_phase(
            [*chain, task("b_slow", sleep=1.0)],
            agents={"w": agent_spec(ws, capacity=2)},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    done = ws.finished()
    slow = done["b_slow"]
    assert slow.end is not None
    for i in range(2, 6):
        assert done[f"a{i}"].start < slow.end, f"a{i} waited for the slow task (lock-step)"
    assert done["a5"].end is not None and done["a5"].end < slow.end


def test_when_one_agent_slot_is_contended_critical_work_goes_first_and_low_last(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    # Listed least urgent first, so plan order cannot explain the result.
    order = ["low", "medium", "high", "critical"]
    ws.write_plan(
        one_phase(
            [task(f"t_{p}", sleep=0.03, priority=p) for p in order],
            agents={"solo": agent_spec(ws, capacity=1)},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    started = [e.task for e in ws.executions()]
    assert started == ["t_critical", "t_high", "t_medium", "t_low"]


def test_a_task_requiring_a_capability_only_ever_runs_on_agents_that_have_it(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    caps = {
        "generalist": ["code", "security", "docs"],
        "specialist": ["security"],
        "coder": ["code"],
        "writer": ["docs"],
    }
    needed = {
        f"{cap}{i}": cap for cap, n in (("security", 6), ("code", 6), ("docs", 3)) for i in range(n)
    }
    tasks = [task(tid, sleep=0.05, requires=[cap]) for tid, cap in needed.items()]
    ws.write_plan(
        one_phase(tasks, agents={name: agent_spec(ws, c, capacity=2) for name, c in caps.items()})
    )
    code, _ = run_in_process(ws)
    assert code == 0
    runs = ws.executions()
    assert len(runs) == len(tasks)
    for e in runs:
        assert e.agent is not None and needed[e.task] in caps[e.agent], (e.task, e.agent)
    # The security work really was spread, so the routing was tested under contention.
    assert {e.agent for e in runs if needed[e.task] == "security"} == {"generalist", "specialist"}


def test_a_specialist_is_preferred_over_a_generalist_when_both_are_free(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("audit", sleep=0.02, requires=["security"])],
            # The generalist comes first in the plan and could run the task too.
            agents={
                "generalist": agent_spec(ws, ["code", "security", "docs"], capacity=4),
                "specialist": agent_spec(ws, ["security"], capacity=1),
            },
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    (run,) = ws.executions()
    assert run.agent == "specialist"


def test_agent_capacities_and_an_exclusive_lock_are_never_exceeded(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    tasks = [
        task(f"t{i}", sleep=0.08, resources={"lock": 1} if i % 3 == 0 else {}) for i in range(15)
    ]
    ws.write_plan(
        one_phase(
            tasks,
            agents={"big": agent_spec(ws, capacity=3), "small": agent_spec(ws, capacity=1)},
            resources={"lock": {"capacity": 1}},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    runs = ws.executions()
    assert len(runs) == 15
    assert max_overlap(spans(e for e in runs if e.agent == "big")) <= 3
    assert max_overlap(spans(e for e in runs if e.agent == "small")) <= 1
    locked = [e for e in runs if int(e.task[1:]) % 3 == 0]
    assert max_overlap(spans(locked)) == 1
    # The limits were actually reached, so the checks above mean something.
    assert max_overlap(spans(runs)) == 4


def test_settings_max_concurrency_caps_the_tasks_running_at_once(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task(f"t{i}", sleep=0.08) for i in range(8)],
            agents={f"w{k}": agent_spec(ws, capacity=4) for k in range(3)},
            settings={"max_concurrency": 2},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    runs = ws.executions()
    assert len(runs) == 8
    assert max_overlap(spans(runs)) == 2


def test_milestone_after_and_phase_order_are_honoured(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        plan(
            [
                {
                    "id": "p1",
                    "milestones": [
                        {"id": "m1", "tasks": [task("a", sleep=0.2), task("b", sleep=0.1)]},
                        {"id": "m2", "after": ["m1"], "tasks": [task("c", sleep=0.05)]},
                        {"id": "m3", "tasks": [task("d", sleep=0.05)]},
                    ],
                },
                {"id": "p2", "milestones": [{"id": "m4", "tasks": [task("e", sleep=0.02)]}]},
            ],
            agents={"w": agent_spec(ws, capacity=4)},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    done = ws.finished()
    assert set(done) == {"a", "b", "c", "d", "e"}
    first = max(done[t].end or 0 for t in ("a", "b"))
    assert done["c"].start >= first, "milestone m2 started before m1 (its `after`) ended"
    assert done["d"].start < first, "milestone m3 (no `after`) waited for m1"
    last_p1 = max(done[t].end or 0 for t in ("a", "b", "c", "d"))
    assert done["e"].start >= last_p1, "phase p2 started before phase p1 ended"


def test_the_cli_exits_0_and_status_json_reports_every_task_completed(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ids = ["x", "y", "z", "w"]
    ws.write_plan(
        one_phase(
            [
                task("x"),
                task("y", needs=["x"]),
                task("z", needs=["x"]),
                task("w", needs=["y", "z"]),
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert result.code == 0, str(result)
    assert "completed" in result.stdout
    report = status_json(ws.state)
    assert report["status"] == "completed"
    assert report["exit_code"] == 0
    assert report["counts"] == {"completed": len(ids)}
    assert report["failed"] == [] and report["blocked"] == [] and report["running"] == []
    assert sorted(e.task for e in ws.executions()) == sorted(ids)


def test_the_flagship_example_runs_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = cli(
        "run",
        Path("examples/cloud-migration/plan.yaml"),
        "--state",
        state,
        "--time-scale",
        "0.000002",
        "--approve-as",
        "demo",
        "--quiet",
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.code == 0, str(result)
    report = status_json(state)
    assert report["status"] == "completed"
    assert set(report["counts"]) == {"completed"}
    assert report["counts"]["completed"] == 56
