"""Best-of-N (``attempts: N``): candidates in parallel worktrees, the best one merged.

Fake ``claude`` and ``codex`` CLIs do different edits (``fake[CLI]: ...``), real git."""

from __future__ import annotations

from pathlib import Path

import pytest
from coding_helpers import CodingWorld, coder, coding_task, coding_world, events, git

from counterpoint.agents.best_of import read_candidates
from counterpoint.plan import check_text
from counterpoint.runtime.governor import read_usage
from counterpoint.store.sqlite import SqliteStore

INTEGRATION = "counterpoint/run-1"
LONG = (
    "fake[claude]: write calc.py def add(a, b):\\n    total = a\\n    total += b\\n    return total"
)
SHORT = "fake[codex]: write calc.py def add(a, b):\\n    return a + b"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CodingWorld:
    return coding_world(tmp_path, monkeypatch)


def two_agents(capacity: int = 1) -> dict[str, dict]:
    return {
        "claude": {**coder("claude"), "capacity": capacity},
        "codex": {**coder("codex"), "capacity": capacity},
    }


def journal(world: CodingWorld) -> tuple[list[dict], list]:
    store = SqliteStore(world.state, create=False)
    try:
        return read_candidates(store, 1), read_usage(store, 1)
    finally:
        store.close()


def test_two_candidates_run_on_two_agents_and_the_smaller_diff_is_merged(
    world: CodingWorld,
) -> None:
    world.write_plan([coding_task("calc", "Write add().", LONG, SHORT, attempts=2)], two_agents())
    code, seen = world.run()
    assert code == 0
    assert world.show(INTEGRATION, "calc.py") == "def add(a, b):\n    return a + b"
    started = events(seen, "candidate_started")
    assert sorted(e["agent"] for e in started) == ["claude", "codex"]
    (chosen,) = events(seen, "candidate_chosen")
    assert chosen["agent"] == "codex" and chosen["diff_lines"] == 2
    loser = next(c for c in chosen["candidates"] if not c["chosen"])
    assert loser["agent"] == "claude" and loser["reason"].startswith("larger diff (4 lines")
    rows, usage = journal(world)
    assert [(r["agent"], r["chosen"], r["diff_lines"]) for r in rows] == sorted(
        [("claude", False, 4), ("codex", True, 2)], key=lambda r: rows[0]["agent"] != r[0]
    )
    assert sorted(u.task for u in usage) == ["calc#1", "calc#2"]  # both were paid for
    left = git(world.repo, "worktree", "list")
    assert "-c1" not in left and "-c2" not in left  # succeeded candidates are removed
    assert "-c" not in git(world.repo, "branch", "--list", "counterpoint/*")


def test_the_check_command_outranks_the_diff_size(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("calc", LONG, SHORT, attempts=2, check="grep -q total calc.py")],
        two_agents(),
    )
    code, seen = world.run()
    assert code == 0
    assert "total += b" in world.show(INTEGRATION, "calc.py")  # claude's, the bigger one
    (chosen,) = events(seen, "candidate_chosen")
    loser = next(c for c in chosen["candidates"] if not c["chosen"])
    assert loser["check"] == "failed" and "its check failed" in loser["reason"]
    kept = git(world.repo, "worktree", "list")
    assert "calc-1-c" in kept  # the candidate whose check failed is kept, as a failure


def test_candidates_share_one_slot_one_after_the_other(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("calc", "fake: write calc.py x", attempts=3)],
        {"claude": {**coder("claude"), "capacity": 1}},
    )
    code, seen = world.run()
    assert code == 0
    calls = world.calls("claude")
    assert len(calls) == 3 and len({c["cwd"] for c in calls}) == 3  # three worktrees
    (chosen,) = events(seen, "candidate_chosen")
    assert chosen["candidate"] == 1  # same diff: the earliest finished wins
    reasons = [c["reason"] for c in chosen["candidates"] if not c["chosen"]]
    assert all(r.startswith("same diff size") for r in reasons)


def test_no_qualifying_candidate_fails_the_attempt_and_a_retry_runs_them_all_again(
    world: CodingWorld,
) -> None:
    world.write_plan(
        [coding_task("calc", "fake: write calc.py x", "fake: is-error", attempts=2, retries=1)],
        two_agents(),
    )
    code, seen = world.run()
    assert code == 1
    assert len(world.calls()) == 4  # two attempts of two candidates
    (failed,) = events(seen, "task_failed")
    assert failed["error"].startswith("best-of-2: no candidate qualified: candidate 1 (")
    assert "api_error" in failed["error"]
    assert not events(seen, "candidate_chosen")
    rows, _ = journal(world)
    assert [(r["attempt"], r["status"]) for r in rows] == [
        (1, "failed"), (1, "failed"), (2, "failed"), (2, "failed"),
    ]  # fmt: skip


PLAN = """\
version: 1
name: p
agents:
  a: {capabilities: [code], workspace: %s, runner: {shell: "true"}}
phases:
  - id: p
    milestones:
      - id: m
        tasks:
          - {id: t, requires: [code], attempts: %s}
"""


def test_attempts_below_one_is_refused_where_it_is_written() -> None:
    report = check_text(PLAN % ("worktree", "0"), "plan.yaml")
    (problem,) = [p for p in report.problems if "attempts" in p.render()]
    assert problem.render().startswith("plan.yaml:10:49: error: ")
    assert "tasks[0].attempts: must be >= 1, got number 0" in problem.render()


def test_attempts_needs_worktree_agents() -> None:
    report = check_text(PLAN % ("tempdir", "2"), "plan.yaml")
    (problem,) = [p for p in report.problems if "attempts" in p.render()]
    text = problem.render()
    assert text.startswith("plan.yaml:10:49: error: ")
    assert "the able agent 'a' does not have workspace: worktree" in text
