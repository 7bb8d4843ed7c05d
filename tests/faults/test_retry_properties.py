"""Scenario 9, retries and timeouts: hundreds (thousands in the full version) of tasks whose
attempts fail, crash, hang or crawl at random (seeded), on an async Python agent and on a
shell agent whose hanging attempts are real processes.

Properties checked against the journal and against what the agents really executed:

* no task is attempted more than ``1 + retries`` times (attempts above the maximum: 0);
* a task that always fails, or always hangs, stops after its retries (no poison loops);
* a task whose first attempt is quick and healthy runs once (unless the loaded machine
  delayed it past its timeout: counted as ``retries.quick_first_attempts_timed_out``);
* a timed-out attempt is marked timed out soon after its deadline, its process killed:
  the overshoot (attempt end minus start minus timeout, journal clock) has a p99 under
  ``poll_s + kill_grace_s`` (after the deadline the run cancels the attempt: an async
  agent stops at its next await, a process gets SIGTERM and SIGKILL after the kill grace
  at the latest; the run notices the ending at its next wake, at most a poll later).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from net_helpers import FULL, Journal, figure, percentile, pid_alive, read_journal
from run_helpers import Collect, quick_options

from counterpoint.runtime.session import start_run

TASKS = 3000 if FULL else 300
SHELL_SHARE = 0.2
RETRIES = 2
MAX_ATTEMPTS = 1 + RETRIES
TIME_SCALE = 0.001
TIMEOUT_S = 0.5  # real seconds: the plan says 500s, the run's time scale is 0.001
POLL_S = 0.05
KILL_GRACE_S = 1.0
#: Each attempt's behaviour, drawn with these weights.
MODES = {"ok": 0.45, "slow": 0.10, "fail": 0.20, "crash": 0.10, "hang": 0.15}
POISON = {"poison-fail-py": "fail", "poison-hang-py": "hang", "poison-crash-py": "crash"}
POISON_SH = {"poison-fail-sh": "fail", "poison-hang-sh": "hang"}

AGENT = r"""
import asyncio, json, time

from counterpoint.agents.base import TaskFailed


def record(ctx, event):
    with open(ctx.workdir / "records.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": event, "task": ctx.task_id, "attempt": ctx.attempt,
                            "t": time.time()}) + "\n")


async def work(task, ctx):
    mode = task.inputs["modes"].split(",")[ctx.attempt - 1]
    record(ctx, "start")
    try:
        if mode == "fail":
            raise TaskFailed("failed on purpose")
        if mode == "crash":
            raise RuntimeError("an unexpected crash")
        if mode == "hang":
            await asyncio.sleep(3600)
        await asyncio.sleep(float(task.inputs["slow"]) if mode == "slow" else 0.005)
    except asyncio.CancelledError:
        record(ctx, "cancelled")
        raise
    record(ctx, "end")
    return {"task": task.id, "attempt": ctx.attempt}
"""

#: The shell agent: $1 the modes, $2 the attempt, $3 the task, $4 the pid folder.
SHELL = (
    'mode=$(echo "$1" | cut -d, -f"$2"); '
    'echo "$3 $2" >> "$4/started"; '
    'case "$mode" in '
    "fail|crash) exit 1;; "
    'hang) echo $$ > "$4/$3.$2"; exec sleep 3600;; '
    "slow) sleep 0.2;; "
    "esac; "
    'printf \'{{"task": "%s", "attempt": %s}}\\n\' "$3" "$2"'
)


def _modes(rng: random.Random) -> list[str]:
    return rng.choices(list(MODES), weights=list(MODES.values()), k=MAX_ATTEMPTS)


def _plan(tmp_path: Path, module: str, pids: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    rng = random.Random(9)
    tasks, modes = [], {}
    for i in range(TASKS):
        tid = f"t{i:04d}"
        shell = rng.random() < SHELL_SHARE
        modes[tid] = _modes(rng)
        tasks.append((tid, "shell" if shell else "py"))
    for tid, mode in POISON.items():
        modes[tid] = [mode] * MAX_ATTEMPTS
        tasks.append((tid, "py"))
    for tid, mode in POISON_SH.items():
        modes[tid] = [mode] * MAX_ATTEMPTS
        tasks.append((tid, "shell"))
    plan = {
        "version": 1,
        "name": "retry-properties",
        "settings": {"retry_backoff": 0.01, "retry_backoff_max": 0.05},
        "defaults": {
            "retries": RETRIES,
            "timeout": f"{TIMEOUT_S / TIME_SCALE:g}s",
            "estimate": "1s",
        },
        "agents": {
            "py": {"capabilities": ["py"], "capacity": 64, "runner": {"python": f"{module}:work"}},
            "sh": {
                "capabilities": ["shell"],
                "capacity": 8,
                "runner": {
                    "shell": [
                        "/bin/sh",
                        "-c",
                        SHELL,
                        "sh",
                        "{inputs.modes}",
                        "{attempt}",
                        "{task_id}",
                        str(pids),
                    ]
                },
            },
        },
        "phases": [
            {
                "id": "p1",
                "milestones": [
                    {
                        "id": "m1",
                        "tasks": [
                            {
                                "id": tid,
                                "requires": [cap],
                                "inputs": {"modes": ",".join(modes[tid]), "slow": 0.2},
                            }
                            for tid, cap in tasks
                        ],
                    }
                ],
            }
        ],
    }
    return plan, modes


def _check_tasks(j: Journal, modes: dict[str, list[str]]) -> int:
    """Every task whose attempts all fail or hang fails after exactly its retries; a task
    whose first attempt is quick and healthy runs once; every hang times out. Returns how
    many quick first attempts the loaded machine still let time out."""
    healthy_timed_out = 0
    for tid, ms in modes.items():
        rows = j.attempts_of(tid)
        state = j.tasks[tid]["state"]
        if all(m in ("fail", "crash", "hang") for m in ms):
            assert state == "failed" and len(rows) == MAX_ATTEMPTS, (tid, ms, rows)
        if ms[0] == "ok":  # runs once (unless the loaded machine let it time out)
            assert rows[0]["status"] in ("completed", "timed_out"), (tid, ms, rows)
            if rows[0]["status"] == "completed":
                assert state == "completed" and len(rows) == 1, (tid, ms, rows)
            else:
                healthy_timed_out += 1
        if state == "completed":
            assert j.tasks[tid]["result"] == {"task": tid, "attempt": len(rows)}, j.tasks[tid]
        for row, mode in zip(rows, ms, strict=False):
            if mode == "hang":
                assert row["status"] == "timed_out", (tid, row)

    return healthy_timed_out


def test_attempts_never_exceed_the_maximum_timeouts_stop_on_time_and_poison_stops(
    tmp_path: Path,
) -> None:
    module = f"chaos_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module}.py").write_text(AGENT, encoding="utf-8")
    pids = tmp_path / "pids"
    pids.mkdir()
    plan, modes = _plan(tmp_path, module, pids)
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    seen = Collect()
    options = quick_options(time_scale=TIME_SCALE, poll_s=POLL_S, kill_grace_s=KILL_GRACE_S)
    code = start_run(plan_path, tmp_path / "state", options, [seen], sync="normal")
    assert code == 1, code  # some tasks fail for good: the run says so
    j = read_journal(tmp_path / "state")

    # What really executed: the Python agent's records and the shell agent's start lines.
    executed: Counter[str] = Counter()
    for line in (tmp_path / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["event"] == "start":
            executed[r["task"]] += 1
    for line in (pids / "started").read_text().splitlines():
        executed[line.split()[0]] += 1

    journaled = Counter(a["task"] for a in j.attempts)
    over = sum(1 for t in modes if max(journaled[t], executed[t]) > MAX_ATTEMPTS)
    assert journaled == executed  # every execution journaled, nothing journaled unexecuted

    poison_loops = 0
    for tid in [*POISON, *POISON_SH]:
        rows = j.attempts_of(tid)
        if len(rows) != MAX_ATTEMPTS or j.tasks[tid]["state"] != "failed":
            poison_loops += 1
    healthy_timed_out = _check_tasks(j, modes)

    overshoot = [
        a["finished"] - a["started"] - TIMEOUT_S for a in j.attempts if a["status"] == "timed_out"
    ]
    shell_overshoot = [
        a["finished"] - a["started"] - TIMEOUT_S
        for a in j.attempts
        if a["status"] == "timed_out" and a["agent"] == "sh"
    ]
    survivors = [p for p in pids.glob("*.*") if pid_alive(int(p.read_text()))]
    bound = POLL_S + KILL_GRACE_S
    p99 = percentile(overshoot, 99)

    figure("retries.tasks", len(modes))
    figure("retries.attempts", len(j.attempts))
    figure("retries.timed_out_attempts", len(overshoot))
    figure("retries.attempts_above_maximum", over, max_attempts=MAX_ATTEMPTS)
    figure("retries.poison_loops", poison_loops)
    figure("retries.timeout_overshoot_p99_s", p99, "s", bound_s=bound, timeout_s=TIMEOUT_S)
    figure("retries.timeout_overshoot_max_s", max(overshoot), "s")
    figure("retries.timeout_overshoot_p99_s.shell", percentile(shell_overshoot, 99), "s")
    figure("retries.hung_processes_left", len(survivors))
    figure("retries.quick_first_attempts_timed_out", healthy_timed_out)

    assert over == 0
    assert poison_loops == 0
    assert min(overshoot) > -0.01, min(overshoot)  # never before the deadline
    assert p99 < bound, (p99, bound)
    assert survivors == []
    assert len(shell_overshoot) > 0
