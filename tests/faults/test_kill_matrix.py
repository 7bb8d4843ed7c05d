"""Scenario 1, the kill matrix: SIGKILL at many journal commits of a plan with retries
(some tasks fail once), then resume until it ends.

Targets (docs/reliability.md): completed tasks re-executed 0, tasks lost 0, the final
state equal to a crash-free run's, re-runs no more than the tasks in flight at the kill.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from fault_helpers import (
    KILLED,
    audit,
    crash_chain,
    figure,
    final_view,
    run_forked,
    size,
    trace_commits,
    workspace,
)
from run_helpers import Workspace, agent_spec, one_phase, task


def layered_plan(ws: Workspace, n: int, seed: int, fail_share: float = 0.1) -> set[str]:
    """``n`` tasks, each needing up to two earlier ones; ``fail_share`` of them fail once
    (retried); returns the task ids."""
    rng = random.Random(seed)
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        needs = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        inputs: dict[str, Any] = {}
        if rng.random() < fail_share:
            inputs["fail_times"] = 1
        tasks.append(task(f"t{i}", sleep=rng.uniform(0.005, 0.03), needs=needs, inputs=inputs))
    ws.write_plan(
        one_phase(
            tasks,
            agents={"w": agent_spec(ws, capacity=8)},
            defaults={"retries": 2, "timeout": "120s", "estimate": "1s"},
            settings={"retry_backoff": 0.01, "retry_backoff_max": 0.05},
        )
    )
    return {str(t["id"]) for t in tasks}


def test_kill_at_many_commits_then_resume_loses_nothing_and_redoes_nothing_completed(
    tmp_path: Path,
) -> None:
    n = size(60, 500)
    chains, per_chain = size(1, 10), size(5, 12)
    reference = workspace(tmp_path / "reference")
    ids = layered_plan(reference, n, seed=11)
    commits = len(trace_commits(reference, tmp_path / "trace.txt"))
    expected = final_view(reference.state)
    assert expected["status"] == "completed"

    rng = random.Random(5)
    points_hit: set[tuple[int, str]] = set()
    kills = completed_redone = lost = beyond = 0
    reruns = in_flight = 0
    for c in range(chains):
        ws = workspace(tmp_path / f"chain{c}")
        layered_plan(ws, n, seed=11)
        span = max(2, commits // (per_chain + 2))
        points = [(rng.choice(("before", "after")), rng.randint(1, span)) for _ in range(per_chain)]
        chain = crash_chain(ws, points)
        assert chain.final_code == 0, chain
        result = audit(ws, chain, ids)
        position = 0  # where each kill fell in the journal's history (its first commit = 1)
        for crash in chain.crashes:
            if crash.code == KILLED:
                kills += 1
                position += int(crash.point.split(":")[1])
                points_hit.add((position, crash.point.split(":")[0]))
        completed_redone += len(result.completed_reexecuted)
        lost += len(result.lost)
        beyond += len(result.reruns_beyond_in_flight)
        reruns += sum(r for r, _ in result.reruns)
        in_flight += sum(f for _, f in result.reruns)
        assert result.completed_reexecuted == [], result
        assert result.lost == [], result
        assert result.reruns_beyond_in_flight == [], result
        assert all(r <= f for r, f in result.reruns), result.reruns
        assert final_view(ws.state) == expected

    figure("kill_matrix.tasks", n)
    figure("kill_matrix.commits_crash_free", commits)
    figure("kill_matrix.kills", kills)
    figure("kill_matrix.distinct_kill_points", len(points_hit))
    figure("kill_matrix.completed_reexecuted", completed_redone)
    figure("kill_matrix.tasks_lost", lost)
    figure("kill_matrix.reruns", reruns)
    figure("kill_matrix.in_flight_at_kills", in_flight)
    figure("kill_matrix.reruns_beyond_in_flight", beyond)
    assert kills >= size(4, 100)


def test_a_crash_free_run_commits_through_the_hook_without_a_fault(tmp_path: Path) -> None:
    """The trace alone changes nothing: the run completes and every commit is counted."""
    ws = Workspace.create(tmp_path)
    layered_plan(ws, 10, seed=3, fail_share=0)
    lines = trace_commits(ws, tmp_path / "trace.txt")
    assert [int(line.split()[0]) for line in lines] == list(range(1, len(lines) + 1))
    assert any("tasks" in line for line in lines)
    assert run_forked(ws) == 0  # a second run in the same state dir, no faults armed
