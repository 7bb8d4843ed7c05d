"""Scenario 10, approval gates under crash: killed while a gate waits for an approval, and
at each commit right after an approval is recorded, then resumed.

Targets: approvals lost 0 (the gate passes on resume with no new approval); gates passed
without a recorded approval 0 (the task behind the gate never starts before it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fault_helpers import (
    KILLED,
    figure,
    forked,
    kill_env,
    resume_forked,
    run_forked,
    size,
    snapshot,
    workspace,
)
from run_helpers import Workspace, agent_spec, plan, task


def gated(ws: Workspace) -> None:
    gate = {"conditions": [{"kind": "approval", "approvers": ["lead"], "name": "ok"}]}
    ws.write_plan(
        plan(
            [
                {
                    "id": "p1",
                    "milestones": [
                        {"id": "m1", "exit_gate": gate, "tasks": [task("a"), task("b")]},
                        {"id": "m2", "after": ["m1"], "tasks": [task("c")]},
                    ],
                }
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )


def approve(ws: Workspace) -> float:
    def child() -> int:
        from counterpoint.cli import main

        sys.argv = ["counterpoint", "approve", "m1.exit", "--as", "lead", "--state", str(ws.state)]
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    at = time.time()
    assert forked(child) == 0
    return at


def test_approvals_survive_kills_and_gates_never_pass_without_one(tmp_path: Path) -> None:
    probe = workspace(tmp_path / "probe")
    gated(probe)
    # the run stops itself at the commit that journals the gate waiting, then the trace
    # of a resume after an approval gives the commits that follow an approval
    lines = trace_commits_until_waiting(probe, tmp_path / "t1.txt")
    waiting_at = next(int(x.split()[0]) for x in lines if "event:gate_evaluated" in x)
    approve(probe)
    trace = tmp_path / "t2.txt"
    assert resume_forked(probe, {"COUNTERPOINT_FAULT_TRACE": str(trace)}) == 0
    after = len(trace.read_text().splitlines())
    points = [(w, k) for k in range(1, after + 1) for w in ("before", "after")]
    points = points[: size(4, len(points))]
    kills = lost = passed_without = 0
    for i, (when, k) in enumerate(points):
        ws = workspace(tmp_path / f"g{i}")
        gated(ws)
        assert run_forked(ws, kill_env("after", waiting_at)) == KILLED  # waiting, killed
        journaled = snapshot(ws.state).completed()  # commit numbers vary a little per run
        # killed while pending, again: nothing may pass without the approval
        code = resume_forked(ws, kill_env(when, min(k, 3)))
        kills += 2
        assert code == KILLED, code
        passed_without += len(ws.runs_of("c"))
        assert snapshot(ws.state).tasks["c"][0] != "completed"
        approved_at = approve(ws)
        code = resume_forked(ws, kill_env(when, k))  # killed just after the approval
        kills += code == KILLED
        if code == KILLED:
            code = resume_forked(ws)  # no new approval given
        if code != 0:
            lost += 1
        runs = ws.runs_of("c")
        passed_without += sum(1 for e in runs if e.start < approved_at)
        assert code == 0 and runs, f"the approval was lost after a kill at {when}:{k}"
        redone = [t for t in journaled if len(ws.runs_of(t)) != 1]
        assert redone == [], f"completed tasks run again after kills at {when}:{k}: {redone}"
    figure("gates_crash.kill_points", len(points))
    figure("gates_crash.kills", kills)
    figure("gates_crash.approvals_lost", lost)
    figure("gates_crash.passed_without_approval", passed_without)
    assert lost == 0 and passed_without == 0


def trace_commits_until_waiting(ws: Workspace, trace: Path) -> list[str]:
    """Run until the gate waits (the run would wait forever): killed once it is journaled."""
    for k in range(1, 200):
        if (ws.state / "state.db").exists():
            import shutil

            shutil.rmtree(ws.state)
        trace.unlink(missing_ok=True)
        env = {"COUNTERPOINT_FAULT_TRACE": str(trace), **kill_env("after", k)}
        assert run_forked(ws, env) == KILLED
        lines = trace.read_text().splitlines()
        if any("event:gate_evaluated" in x for x in lines):
            (ws.dir / "records.jsonl").unlink(missing_ok=True)
            return lines
    raise AssertionError("the gate never waited")
