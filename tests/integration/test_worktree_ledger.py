"""The worktree ledger: one durable row per attempt, reconciled with git after a crash."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from run_helpers import Background, wait_for
from test_worktrees import INTEGRATION, branches, coding_task, git, make_repo, resume, run
from test_worktrees import write_plan as write_worktree_plan

from counterpoint.agents.ledger import LedgerEntry, WorktreeLedger
from counterpoint.store.sqlite import SqliteStore

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

AGENT = """\
import json, os, sys, time
from pathlib import Path
payload = json.load(sys.stdin)
task, attempt = payload["task"]["id"], payload["attempt"]
folder = Path(sys.argv[1])
(folder / "pids").mkdir(exist_ok=True)
(folder / "pids" / f"{task}-{attempt}").write_text(str(os.getpid()))
Path(f"{task}.txt").write_text(f"{task}\\n")
if payload["task"]["inputs"].get("wait"):
    while not (folder / "go").exists():
        time.sleep(0.05)
Path(os.environ["COUNTERPOINT_RESULT_FILE"]).write_text(
    json.dumps({"session_id": f"session-{task}-{attempt}"})
)
"""


def ledger_of(state: Path) -> dict[tuple[str, int], LedgerEntry]:
    store = SqliteStore(state, create=False)
    try:
        return {(e.task, e.attempt): e for e in WorktreeLedger(store, 1).entries()}
    finally:
        store.close()


def crash_plan(tmp_path: Path) -> Path:
    script = tmp_path / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    waiting = {"wait": True}
    plan = {
        "version": 1,
        "name": "crash",
        "defaults": {"retries": 0, "timeout": "60s", "estimate": "1m"},
        "settings": {"repository": "repo", "retry_backoff": "0.1s"},
        "agents": {
            "coder": {
                "capabilities": ["code"],
                "capacity": 4,
                "workspace": "worktree",
                "runner": {"shell": [sys.executable, str(script), str(tmp_path)]},
            }
        },
        "phases": [
            {
                "id": "p",
                "milestones": [
                    {
                        "id": "m",
                        "tasks": [
                            {"id": "first", "requires": ["code"]},
                            {
                                "id": "a",
                                "requires": ["code"],
                                "needs": ["first"],
                                "inputs": waiting,
                            },
                            {
                                "id": "b",
                                "requires": ["code"],
                                "needs": ["first"],
                                "inputs": waiting,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def kill_agents(tmp_path: Path) -> None:
    for pid_file in (tmp_path / "pids").iterdir():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_every_attempt_is_in_the_ledger_with_its_base_branch_and_session(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "agent.py").write_text(AGENT, encoding="utf-8")
    plan = write_worktree_plan(
        tmp_path,
        [coding_task("one", ["write", "one.txt", "1"]), coding_task("two", needs=["one"])],
    )
    spec = yaml.safe_load(plan.read_text())
    spec["agents"]["coder"]["runner"] = {
        "shell": [sys.executable, str(tmp_path / "agent.py"), str(tmp_path)]
    }
    plan.write_text(yaml.safe_dump(spec), encoding="utf-8")
    state = tmp_path / "state"
    code, seen = run(plan, state)
    assert code == 0, seen.events
    ledger = ledger_of(state)
    one, two = ledger[("one", 1)], ledger[("two", 1)]
    assert one.status == two.status == "merged"
    assert one.base == git(repo, "rev-parse", "main")
    assert two.base == one.merge_commit  # two branched from one's merge
    assert two.merge_commit == git(repo, "rev-parse", INTEGRATION)
    assert one.branch == "counterpoint/run-1-tasks/one-1"
    assert one.worktree == state / "worktrees" / "run-1" / "one-1"
    assert (one.session_id, two.session_id) == ("session-one-1", "session-two-1")


def test_an_adapter_records_its_session_while_the_attempt_runs(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo")
    (tmp_path / "sess_agent.py").write_text(
        "from counterpoint.agents.ledger import record_session\n"
        "from counterpoint.agents.base import TaskFailed\n"
        "def work(task, ctx):\n"
        "    assert record_session(ctx.state_dir, ctx.run_id, ctx.task_id, ctx.attempt, 'S1')\n"
        "    raise TaskFailed('the CLI crashed mid-stream')\n",
        encoding="utf-8",
    )
    plan = write_worktree_plan(tmp_path, [{"id": "t", "requires": ["code"]}])
    spec = yaml.safe_load(plan.read_text())
    spec["agents"]["coder"]["runner"] = {"python": "sess_agent:work"}
    plan.write_text(yaml.safe_dump(spec), encoding="utf-8")
    state = tmp_path / "state"
    code, _ = run(plan, state)
    assert code == 1
    entry = ledger_of(state)[("t", 1)]
    assert (entry.status, entry.session_id) == ("failed", "S1")
    store = SqliteStore(state, create=False)
    try:
        assert WorktreeLedger(store, 1).session("t") == "S1"
    finally:
        store.close()


def test_resume_after_kill_9_reconciles_the_ledger_with_git_and_finishes(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = crash_plan(tmp_path)
    state = tmp_path / "state"
    root = state / "worktrees" / "run-1"
    bg = Background(tmp_path, "run", plan, "--state", state, "--quiet")
    try:
        pids = tmp_path / "pids"
        wait_for(
            lambda: (pids / "a-1").exists() and (pids / "b-1").exists(),
            what="a and b to be running",
        )
        os.kill(bg.pid, signal.SIGKILL)
        assert bg.wait(timeout=10).code == -signal.SIGKILL
    finally:
        bg.stop()
        kill_agents(tmp_path)
    before = ledger_of(state)
    assert before[("first", 1)].status == "merged"
    assert before[("a", 1)].status == before[("b", 1)].status == "running"
    # What a crash can leave: a worktree gone, and a merge half done in the integration
    # worktree (here, of a side branch).
    shutil.rmtree(root / "b-1")
    git(repo, "branch", "side", "main")
    side = root / "side"
    git(repo, "worktree", "add", "--quiet", str(side), "side")
    (side / "side.txt").write_text("side\n")
    git(side, "add", "side.txt")
    git(side, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "side")
    git(repo, "worktree", "remove", str(side))
    integ = root / "integration"
    git(integ, "merge", "--no-ff", "--no-commit", "side")
    (tmp_path / "go").write_text("go")

    code, seen = resume(state)
    assert code == 0, seen.events
    (reconciled,) = seen.kinds("worktrees_reconciled")
    notes = reconciled.data["notes"]
    assert f"aborted a merge left in progress in {integ}" in notes
    assert f"a attempt 1: interrupted, its worktree {root / 'a-1'} is kept" in notes
    assert f"b attempt 1: its worktree {root / 'b-1'} vanished" in notes
    after = ledger_of(state)
    assert after[("a", 1)].status == "failed" and after[("b", 1)].status == "discarded"
    assert after[("a", 2)].status == after[("b", 2)].status == "merged"
    assert after[("a", 2)].base == after[("first", 1)].merge_commit
    files = git(repo, "ls-tree", "--name-only", INTEGRATION).split()
    assert {"a.txt", "b.txt", "first.txt"} <= set(files) and "side.txt" not in files
    # b's first branch held nothing and is gone; a's first attempt keeps worktree and branch.
    assert branches(repo) == {"main", "side", INTEGRATION, "counterpoint/run-1-tasks/a-1"}
    assert (root / "a-1" / "a.txt").read_text() == "a\n"
    listed = git(repo, "worktree", "list", "--porcelain")
    assert str(root / "b-1") not in listed and str(root / "a-1") in listed
    proc = subprocess.run(
        ["git", "rev-parse", "-q", "--verify", "MERGE_HEAD"], cwd=repo, capture_output=True
    )
    assert proc.returncode != 0
