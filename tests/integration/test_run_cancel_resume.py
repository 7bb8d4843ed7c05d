"""Stopping and continuing runs: cancel, SIGINT, kill -9 then resume, changed plans."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from run_helpers import (
    Background,
    Workspace,
    agent_spec,
    cli,
    kill_quietly,
    one_phase,
    pid_alive,
    status_json,
    task,
    wait_for,
)

from counterpoint.store.sqlite import SqliteStore

# The shell starts `sleep 300` in the background (a grandchild of counterpoint),
# writes "its own pid and the sleep's pid" to the pidfile, then waits for it.
SLEEPER = ["sh", "-c", 'sleep 300 & echo "$$ $!" > "$1.tmp"; mv "$1.tmp" "$1"; wait', "sh"]


def sleeper_plan(ws: Workspace, pidfile: Path) -> Path:
    return ws.write_plan(
        one_phase(
            [task("hang", inputs={"pidfile": str(pidfile)}), task("after", needs=["hang"])],
            agents={
                "sh": {"capacity": 1, "runner": {"shell": [*SLEEPER, "{inputs.pidfile}"]}},
            },
        )
    )


@contextmanager
def running_sleeper(ws: Workspace) -> Iterator[tuple[Background, list[int]]]:
    """`counterpoint run` of the sleeper plan in the background, once its processes exist."""
    pidfile = ws.dir / "pids"
    sleeper_plan(ws, pidfile)
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    pids: list[int] = []
    try:
        text = wait_for(
            lambda: pidfile.exists() and pidfile.read_text().strip(),
            what="the shell task to start",
        )
        pids = [int(p) for p in text.split()]
        assert all(pid_alive(p) for p in pids)
        yield bg, pids
    finally:
        bg.stop()
        for pid in pids:
            kill_quietly(pid)


def test_cancel_from_another_process_stops_the_run_with_exit_3_and_kills_the_grandchild(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    with running_sleeper(ws) as (bg, pids):
        cancel = cli("cancel", "--state", ws.state)
        assert cancel.code == 0, str(cancel)
        assert "cancel requested" in cancel.stdout
        result = bg.wait(timeout=20)
        assert result.code == 3, str(result)
        wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="the processes")
    report = status_json(ws.state)
    assert report["status"] == "cancelled" and report["exit_code"] == 3
    assert report["running"] == []
    assert report["counts"].get("completed", 0) == 0


def test_sigint_to_the_run_stops_it_with_exit_3_and_kills_the_grandchild(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    with running_sleeper(ws) as (bg, pids):
        bg.proc.send_signal(signal.SIGINT)
        result = bg.wait(timeout=20)
        assert result.code == 3, str(result)
        assert "Traceback" not in result.stderr
        wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="the processes")
    assert status_json(ws.state)["status"] == "cancelled"


def test_a_second_run_in_a_busy_state_dir_is_refused_and_status_shows_the_running_task(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    with running_sleeper(ws) as (bg, _):
        report = status_json(ws.state)
        assert report["status"] == "running"
        assert [r["task"] for r in report["running"]] == ["hang"]
        for args in (["run", ws.plan], ["resume"]):
            refused = cli(*args, "--state", ws.state, "--quiet")
            assert refused.code == 2, str(refused)
            assert "already active" in refused.stderr and str(bg.pid) in refused.stderr
            assert "Traceback" not in refused.stderr
        assert bg.running()
        assert cli("cancel", "--state", ws.state).code == 0
        assert bg.wait(timeout=20).code == 3


def crash_plan(ws: Workspace) -> list[dict[str, object]]:
    """30 tasks of ~0.3 s: six chains of five, the last links joined by a final chain."""
    tasks: list[dict[str, object]] = []
    for k in range(6):
        for i in range(5):
            needs = [f"c{k}_{i - 1}"] if i else []
            if k == 5 and i:
                needs.append(f"c{i - 1}_4")
            tasks.append(task(f"c{k}_{i}", sleep=0.3, needs=needs))
    ws.write_plan(one_phase(tasks, agents={"w": agent_spec(ws, capacity=4)}))
    return tasks


# A completion the agent recorded this long before the kill has surely been journaled.
MARGIN_S = 0.25


def test_after_kill_9_resume_completes_the_run_without_redoing_completed_tasks(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    tasks = crash_plan(ws)
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:

        def midway() -> bool:
            runs, now = ws.executions(), time.time()
            settled = sum(1 for e in runs if e.outcome == "end" and (e.end or now) < now - MARGIN_S)
            in_flight = sum(1 for e in runs if e.outcome is None)
            return settled >= 6 and in_flight >= 1

        wait_for(midway, what="the run to be midway")
        killed_at = time.time()
        os.kill(bg.pid, signal.SIGKILL)
        assert bg.wait(timeout=10).code == -signal.SIGKILL
    finally:
        bg.stop()
    before = ws.executions()
    assert all(e.pid == bg.pid for e in before)
    assert len(before) < len(tasks), "the run finished before it could be killed"

    assert status_json(ws.state)["status"] == "interrupted"
    resumed = cli("resume", "--state", ws.state, "--quiet")
    assert resumed.code == 0, str(resumed)

    runs = ws.executions()
    ids = [str(t["id"]) for t in tasks]
    per_task = {t: [e for e in runs if e.task == t] for t in ids}
    assert all(any(e.outcome == "end" for e in per_task[t]) for t in ids), "not all tasks ran"
    # Completed (and journaled) well before the kill: must not run again.
    safe = {e.task for e in before if e.outcome == "end" and e.end and e.end < killed_at - MARGIN_S}
    assert len(safe) >= 6
    ran_twice = {t: len(per_task[t]) for t in safe if len(per_task[t]) != 1}
    assert ran_twice == {}, f"completed tasks executed again after resume: {ran_twice}"
    # Only tasks in flight at the kill (or finishing right then) may run twice.
    repeated = {t for t in ids if len(per_task[t]) > 1}
    in_flight = {
        e.task for e in before if e.outcome is None or (e.end or 0) >= killed_at - MARGIN_S
    }
    assert repeated <= in_flight
    # Dependencies still held across the crash.
    for t in tasks:
        first_start = min(e.start for e in per_task[str(t["id"])])
        for need in t.get("needs", []):  # type: ignore[attr-defined]
            need_done = min(e.end or 0 for e in per_task[need] if e.outcome == "end")
            assert first_start >= need_done, f"{t['id']} started before {need} completed"
    report = status_json(ws.state)
    assert report["status"] == "completed" and report["counts"] == {"completed": 30}


def test_after_kill_9_and_resume_logs_no_longer_show_the_killed_attempt_as_running(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task(f"t{i}", sleep=4.0) for i in range(2)], agents={"w": agent_spec(ws, capacity=2)}
        )
    )
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        # Killed once the journal shows the attempt running (not before it was recorded).
        wait_for(
            lambda: "running" in cli("logs", "t0", "--state", ws.state).stdout,
            what="t0's attempt in the journal",
        )
        os.kill(bg.pid, signal.SIGKILL)
        bg.wait(timeout=10)
    finally:
        bg.stop()
    killed = [e.task for e in ws.executions() if e.outcome is None]
    assert killed
    assert cli("resume", "--state", ws.state, "--quiet").code == 0
    assert status_json(ws.state)["status"] == "completed"
    for tid in killed:
        logs = cli("logs", tid, "--state", ws.state)
        assert logs.code == 0, str(logs)
        attempts = re.findall(r"attempt (\d+) on \S+: (\w+)", logs.stdout)
        assert attempts[-1][1] == "completed", logs.stdout
        assert all(outcome != "running" for _, outcome in attempts), (
            f"the run is over but {tid}'s killed attempt is still shown as running:\n{logs.stdout}"
        )


def small_plan(ws: Workspace) -> dict[str, object]:
    data = one_phase(
        [task("a", sleep=0.01, estimate="1s"), task("b", sleep=0.01, needs=["a"], estimate="1s")],
        agents={"dev": agent_spec(ws)},
    )
    ws.write_plan(data)
    return data


def _change_estimate(data: dict[str, object]) -> None:
    data["phases"][0]["milestones"][0]["tasks"][1]["estimate"] = "5s"  # type: ignore[index]


def _add_task(data: dict[str, object]) -> None:
    tasks = data["phases"][0]["milestones"][0]["tasks"]  # type: ignore[index]
    tasks.append(task("extra", sleep=0.01, needs=["b"]))


@pytest.mark.parametrize(
    ("edit", "named", "new_work"),
    [
        (_change_estimate, "tasks changed: b", []),
        (_add_task, "tasks added: extra", ["extra"]),
    ],
    ids=["estimate-changed", "task-added"],
)
def test_resume_refuses_a_changed_plan_naming_the_change_unless_allowed(
    tmp_path: Path, edit: object, named: str, new_work: list[str]
) -> None:
    ws = Workspace.create(tmp_path)
    data = small_plan(ws)
    first = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert first.code == 0, str(first)
    edit(data)  # type: ignore[operator]
    ws.plan.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    refused = cli("resume", "--state", ws.state, "--quiet")
    assert refused.code == 2, str(refused)
    assert "plan changed" in refused.stderr and named in refused.stderr
    assert "--allow-changed-plan" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(e.task for e in ws.executions()) == ["a", "b"]

    accepted = cli("resume", "--state", ws.state, "--quiet", "--allow-changed-plan")
    assert accepted.code == 0, str(accepted)
    assert sorted(e.task for e in ws.executions()) == sorted(["a", "b", *new_work])
    report = status_json(ws.state)
    assert report["status"] == "completed"
    assert report["counts"] == {"completed": 2 + len(new_work)}


def test_resuming_a_finished_run_does_nothing_and_exits_0(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    small_plan(ws)
    assert cli("run", ws.plan, "--state", ws.state, "--quiet").code == 0
    before = ws.records()
    again = cli("resume", "--state", ws.state, "--quiet")
    assert again.code == 0, str(again)
    assert ws.records() == before
    report = status_json(ws.state)
    assert report["status"] == "completed" and report["counts"] == {"completed": 2}


def test_a_cancelled_run_resumes_to_completion_without_redoing_finished_tasks(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                task("quick1", sleep=0.01),
                task("quick2", sleep=0.01, needs=["quick1"]),
                # Hangs on its first attempt only, so the resumed run can finish it.
                task("hangs_once", sleep=0.01, inputs={"first_sleep": 60}),
                task("last", sleep=0.01, needs=["hangs_once", "quick2"]),
            ],
            agents={"w": agent_spec(ws, capacity=2)},
        )
    )
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: {"quick1", "quick2"} <= set(ws.finished()), what="the quick tasks")
        wait_for(lambda: ws.runs_of("hangs_once"), what="the hanging task")
        assert cli("cancel", "--state", ws.state).code == 0
        assert bg.wait(timeout=20).code == 3
    finally:
        bg.stop()
    assert [e.outcome for e in ws.runs_of("hangs_once")] == ["cancelled"]
    assert ws.runs_of("last") == []

    resumed = cli("resume", "--state", ws.state, "--quiet")
    assert resumed.code == 0, str(resumed)
    assert [e.outcome for e in ws.runs_of("hangs_once")] == ["cancelled", "end"]
    for tid in ("quick1", "quick2", "last"):
        assert [e.outcome for e in ws.runs_of(tid)] == ["end"], tid
    assert status_json(ws.state)["counts"] == {"completed": 4}


def test_resume_with_retry_failed_runs_the_failed_task_and_what_it_blocked(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                task("ok", sleep=0.01),
                task("shaky", sleep=0.01, inputs={"fail_times": 1}),
                task("child", sleep=0.01, needs=["shaky", "ok"]),
            ],
            agents={"w": agent_spec(ws, capacity=2)},
        )
    )
    first = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert first.code == 1, str(first)
    assert ws.runs_of("child") == []

    plain = cli("resume", "--state", ws.state, "--quiet")
    assert plain.code == 1, str(plain)
    assert [e.outcome for e in ws.runs_of("shaky")] == ["fail"], "resume re-ran a failed task"

    again = cli("resume", "--state", ws.state, "--quiet", "--retry-failed")
    assert again.code == 0, str(again)
    assert [e.outcome for e in ws.runs_of("shaky")] == ["fail", "end"]
    assert [e.outcome for e in ws.runs_of("ok")] == ["end"]
    assert [e.outcome for e in ws.runs_of("child")] == ["end"]
    assert status_json(ws.state)["counts"] == {"completed": 3}


def test_cancel_stops_promptly_even_while_a_plain_function_agent_is_blocked(
    tmp_path: Path,
) -> None:
    """A sync agent cannot be interrupted, but the run must not wait for it to end."""
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("blocking", sleep=60)],
            agents={"w": {"capacity": 1, "runner": {"python": f"{ws.module}:work_sync"}}},
        )
    )
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: ws.runs_of("blocking"), what="the blocking task to start")
        assert cli("cancel", "--state", ws.state).code == 0
        cancelled_at = time.monotonic()
        try:
            code: int | None = bg.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - cancelled_at
        assert code == 3, f"`counterpoint run` still running {took:.1f}s after cancel"
    finally:
        (ws.dir / "stop").write_text("stop")  # release the agent's thread
        bg.stop()


def test_a_resume_does_not_give_a_task_waiting_to_retry_a_fresh_retry_budget(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("flaky", sleep=0.01, retries=2, inputs={"fail": True})],
            agents={"w": agent_spec(ws)},
            settings={"retry_backoff": "3s", "retry_backoff_max": "3s"},
        )
    )
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        # two failed attempts: the task now waits (3 s) for its last retry
        wait_for(lambda: len(ws.runs_of("flaky")) >= 2, what="two failed attempts")
        os.kill(bg.pid, signal.SIGKILL)
        assert bg.wait(timeout=10).code == -signal.SIGKILL
    finally:
        bg.stop()
    assert len(ws.runs_of("flaky")) == 2
    resumed = cli("resume", "--state", ws.state, "--quiet")
    assert resumed.code == 1, str(resumed)  # the task failed for good
    # 1 + retries attempts in all, across the crash: one more, not three more
    assert len(ws.runs_of("flaky")) == 3
    store = SqliteStore(ws.state, create=False)
    try:
        assert [row[4] for row in store.attempts(1, "flaky")] == ["failed"] * 3
    finally:
        store.close()
