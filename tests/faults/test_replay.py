"""Scenario 7, replay: journals of many generated plans, written through random kills and
resumes, read back by the current code give the same final state as a crash-free run;
and a journal written by the previous release (``tests/faults/data/``) still loads.

What "the same final state" means here, as the commands report it (``status --json`` and
``report --json``, called in-process through the CLI, and the journal's task rows that
both read, since neither prints a task's result):

- exactly equal: the run's status and exit code, the counts per state, the blocked tasks
  with their reasons, the failed tasks with their errors, the gates with their
  conditions, the report's task totals and its rollbacks (status, compensated tasks),
  and every task's state, blocked reason and result (the result without the
  ``attempt`` the recording agent adds), and a failed task's error;
- attempts: never fewer than the crash-free run's, and more only for a task that was in
  flight (started, its attempt not concluded in the journal) at one of the kills; a
  completed task's result names the attempt the journal counts.

Timestamps, pids and elapsed times are not compared. Reading a finished journal twice
must give the same ``status --json`` output and task rows byte for byte, and the same
``report --json`` but for its timing figures (``kpis``, ``makespan``, ``utilization``,
each phase's ``actual_s``): an attempt cut short by a kill stays in the journal without
an end, and the report counts it as running until now, so those grow with the clock.
"""

from __future__ import annotations

import json
import random
import shutil
import tarfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from fault_helpers import KILLED, crash_chain, figure, size, trace_commits, workspace
from run_helpers import Workspace, agent_spec, plan, task
from run_helpers import cli as subprocess_cli

import counterpoint.cli_report
import counterpoint.cli_run
import counterpoint.cli_state  # noqa: F401 - registers state
from counterpoint.cli import cli
from counterpoint.store.sqlite import SqliteStore

DATA = Path(__file__).resolve().parent / "data"
SAMPLE_HOME = Path("/tmp/counterpoint-replay-sample")  # as in data/make_sample.py


# -- generated plans ----------------------------------------------------------------------------


def generated_plan(ws: Workspace, seed: int) -> None:
    """A seeded random plan in three milestones of one phase:

    - ``gated``: a random DAG, some tasks failing once (retried), holding a counted
      resource, behind an exit gate with a metric condition (sometimes one that fails);
    - ``next`` (after ``gated``): tasks that wait for that gate;
    - ``risky``: independent tasks, some failing for good with ``on_failure: block``
      (their dependents blocked) or ``rollback_milestone`` (the milestone's completed
      tasks compensated). A rolling-back task needs every other task of its milestone,
      so nothing of the scope is still running when it fails (what a rollback cancels
      would otherwise depend on timing, crash or no crash).
    """
    rng = random.Random(seed)

    def some(prefix: str, n: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            picks = rng.randint(0, 2) if i else 0
            needs = sorted({f"{prefix}{rng.randrange(i)}" for _ in range(picks)})
            inputs: dict[str, Any] = {}
            if rng.random() < 0.25:
                inputs["fail_times"] = 1
            extra: dict[str, Any] = {}
            if rng.random() < 0.4:
                extra["resources"] = {"db": 1}
            out.append(
                task(
                    f"{prefix}{i}",
                    sleep=rng.uniform(0.005, 0.03),
                    needs=needs,
                    inputs=inputs,
                    **extra,
                )
            )
        return out

    gated = some("g", rng.randint(3, 6))
    threshold = len(gated) if rng.random() < 0.8 else len(gated) + 1  # + 1: the gate fails
    nxt = some("n", rng.randint(1, 3))
    risky = some("r", rng.randint(2, 5))
    milestones: list[dict[str, Any]] = [
        {
            "id": "gated",
            "exit_gate": {
                "conditions": [
                    {
                        "kind": "metric",
                        "metric": "milestone.completed",
                        "op": ">=",
                        "value": threshold,
                        "name": "enough",
                    }
                ]
            },
            "tasks": gated,
        },
        {"id": "next", "after": ["gated"], "tasks": nxt},
    ]
    policy = rng.choice(("block", "rollback_milestone", "none"))
    if policy == "block":
        victim = rng.choice(risky)
        victim["inputs"] = {**victim.get("inputs", {}), "fail": True}
        victim["on_failure"] = "block"
    elif policy == "rollback_milestone":
        for t in risky:
            t["rollback"] = {"python": ws.agent}
        risky.append(
            task(
                "r-check",
                needs=[str(t["id"]) for t in risky],
                inputs={"fail": True},
                on_failure="rollback_milestone",
                retries=rng.randint(0, 1),
            )
        )
    milestones.append({"id": "risky", "tasks": risky})
    ws.write_plan(
        plan(
            [{"id": "p1", "milestones": milestones}],
            agents={"w": agent_spec(ws, capacity=4)},
            resources={"db": {"capacity": 2}},
            defaults={"retries": 2, "timeout": "60s", "estimate": "1s"},
            settings={"retry_backoff": 0.01, "retry_backoff_max": 0.03},
        )
    )


# -- what the commands report -------------------------------------------------------------------


def command(*args: str | Path) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def task_rows(state: Path) -> dict[str, dict[str, Any]]:
    store = SqliteStore(state, create=False)
    try:
        record = store.latest_run()
        assert record is not None
        return {
            t: {
                "state": r.state,
                "attempts": r.attempts,
                "error": r.error,
                "blocked_by": r.blocked_by,
                "result": r.result,
                "agent": r.agent,
                "started": r.started,
                "finished": r.finished,
            }
            for t, r in sorted(store.tasks(record.id).items())
        }
    finally:
        store.close()


def reported(state: Path) -> dict[str, Any]:
    """The final state, as the commands report it (the raw texts too, for the replay)."""
    status_text = command("status", "--json", "--state", state)
    report_text = command("report", "--format", "json", "--state", state)
    return {
        "status_text": status_text,
        "report_text": report_text,
        "status": json.loads(status_text),
        "report": json.loads(report_text),
        "rows": task_rows(state),
    }


def comparable(view: dict[str, Any]) -> dict[str, Any]:
    """What must be exactly equal between a crash-free and a crashed run (module doc)."""
    status = dict(view["status"])
    for key in ("plan", "running"):
        status.pop(key)
    report = view["report"]
    rollbacks = [
        {k: v for k, v in r.items() if k in ("scope_kind", "scope", "status", "compensated")}
        for r in report["rollbacks"]
    ]
    tasks = {}
    for t, row in view["rows"].items():
        result = dict(row["result"] or {})
        result.pop("attempt", None)
        # a task that ended otherwise keeps the error of its last failed attempt, which
        # depends on which attempts a kill cut short: only a failed task's error counts
        error = row["error"] if row["state"] == "failed" else None
        tasks[t] = (row["state"], error, row["blocked_by"], result)
    return {
        "status": status,
        "report": {"status": report["status"], "tasks": report["tasks"], "rollbacks": rollbacks},
        "tasks": tasks,
    }


def _untimed(view: Any) -> Any:
    """A report without its timing figures (others pass through)."""
    if isinstance(view, dict) and "kpis" in view:
        out = {k: v for k, v in view.items() if k not in ("kpis", "makespan", "utilization")}
        out["phases"] = [{k: v for k, v in p.items() if k != "actual_s"} for p in view["phases"]]
        return out
    return view


def _diff(a: Any, b: Any) -> str:
    import difflib

    lines = difflib.unified_diff(str(a).splitlines(), str(b).splitlines(), lineterm="", n=0)
    return "\n".join(list(lines)[:12])


def in_flight_at_kills(ws: Workspace, chain: Any) -> set[str]:
    """Tasks started by a killed process whose attempt the journal had not concluded."""
    execs = ws.executions()
    out: set[str] = set()
    for crash in chain.crashes:
        if crash.code != KILLED or crash.after is None:
            continue
        out |= {
            e.task
            for e in execs
            if e.pid in crash.pids
            and crash.after.attempts.get((e.task, e.attempt)) in (None, "running")
        }
    return out


# -- 1. replay of generated plans through random kills ----------------------------------------


def test_generated_plans_replayed_through_kills_give_the_crash_free_final_state(
    tmp_path: Path,
) -> None:
    plans, per_chain = size(5, 60), size(3, 5)
    rng = random.Random(7)
    mismatches: list[str] = []
    kills = extra_attempts = rereads = 0
    for p in range(plans):
        seed = 1000 + p
        reference = workspace(tmp_path / f"p{p}" / "reference")
        generated_plan(reference, seed)
        commits = len(trace_commits(reference, tmp_path / f"p{p}" / "trace.txt"))
        expected = reported(reference.state)

        ws = workspace(tmp_path / f"p{p}" / "crashed")
        generated_plan(ws, seed)
        span = max(2, commits // (per_chain + 1))
        points = [(rng.choice(("before", "after")), rng.randint(1, span)) for _ in range(per_chain)]
        # the first process writes the run's row at its third commit: kill it after that
        points[0] = (points[0][0], points[0][1] + 3)
        chain = crash_chain(ws, points)
        assert chain.final_code == expected["status"]["exit_code"], (seed, chain)
        kills += sum(1 for c in chain.crashes if c.code == KILLED)
        got = reported(ws.state)

        if comparable(got) != comparable(expected):
            mismatches.append(f"plan {seed}: {comparable(got)} != {comparable(expected)}")
        in_flight = in_flight_at_kills(ws, chain)
        for t, row in got["rows"].items():
            before = expected["rows"][t]["attempts"]
            if row["attempts"] < before or (row["attempts"] > before and t not in in_flight):
                mismatches.append(f"plan {seed}: {t} attempts {row['attempts']} vs {before}")
            extra_attempts += row["attempts"] - before
            if row["state"] == "completed" and (row["result"] or {}).get("attempt") not in (
                None,
                row["attempts"],
            ):
                mismatches.append(f"plan {seed}: {t} result {row['result']} vs {row['attempts']}")

        for view, state in ((expected, reference.state), (got, ws.state)):
            again = reported(state)  # the same journal read again: byte for byte
            rereads += 1
            for key in ("status_text", "report", "rows"):
                if _untimed(again[key]) != _untimed(view[key]):
                    diff = _diff(view[key], again[key])
                    mismatches.append(f"plan {seed}: {key} differs when read again: {diff}")

    figure("replay.plans", plans)
    figure("replay.kills", kills)
    figure("replay.attempts_added_by_kills", extra_attempts)
    figure("replay.journals_read_twice", rereads)
    figure("replay.mismatches", len(mismatches))
    assert mismatches == [], "\n".join(mismatches)
    assert kills >= size(5, 100)


# -- 2. the previous release's journal ----------------------------------------------------


def unpack(into: Path) -> None:
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    with tarfile.open(DATA / "sample.tar.gz") as tar:
        tar.extractall(into, filter="data")


def records(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_a_journal_of_the_previous_release_still_loads_reports_and_resumes(
    tmp_path: Path,
) -> None:
    expected = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
    copy = tmp_path / "sample"
    unpack(copy)
    state = copy / "state"

    status = json.loads(command("status", "--json", "--state", state))
    for key in ("status", "exit_code", "counts", "blocked", "failed", "gates", "running"):
        assert status[key] == expected["status"][key], key
    journal = expected["journal"]
    rows = task_rows(state)
    assert set(rows) == set(journal["tasks"])
    for t, want in journal["tasks"].items():
        got = {k: rows[t][k] for k in want}
        assert got == want, t
    shared = json.loads(command("state", "--json", "--state", state))
    assert shared["state"] == expected["shared_state"]["state"]
    report = json.loads(command("report", "--format", "json", "--state", state))
    assert report["status"] == journal["status"]
    assert report["tasks"]["completed"] == status["counts"]["completed"]
    assert "build.exit" in command("report", "--state", state)  # markdown renders too

    # resume where the journal says the plan is: nothing completed runs again
    unpack(SAMPLE_HOME)
    try:
        before = records(SAMPLE_HOME)
        done = {t for t, row in journal["tasks"].items() if row["state"] == "completed"}
        result = subprocess_cli("resume", "--state", SAMPLE_HOME / "state", "--quiet")
        assert result.code == journal["exit_code"], str(result)
        new = records(SAMPLE_HOME)[len(before) :]
        rerun = sorted({r["task"] for r in new} & done)
        assert rerun == [], rerun
        assert not any(r["event"] == "rollback" for r in new)  # done compensations stay done
        after = task_rows(SAMPLE_HOME / "state")
        for t in done:
            assert after[t]["state"] == "completed" and after[t]["attempts"] == rows[t]["attempts"]
    finally:
        shutil.rmtree(SAMPLE_HOME, ignore_errors=True)
    figure("replay.previous_release_sample_loads", 1)
    figure("replay.previous_release_completed_rerun", len(rerun))
