"""The governor: cost and tokens of coding agents, per-task limits, the run's budget, and
attempts that were expected to change code. Fake CLIs, real git (examples/coding-agents/fakes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coding_helpers import CodingWorld, coder, coding_task, coding_world, events, git
from run_helpers import cli

from counterpoint.runtime.governor import read_usage, usage_totals
from counterpoint.store.sqlite import SqliteStore

INTEGRATION = "counterpoint/run-1"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CodingWorld:
    return coding_world(tmp_path, monkeypatch)


def tasks_of(world: CodingWorld) -> dict[str, tuple[str, str | None, str | None]]:
    store = SqliteStore(world.state, create=False)
    try:
        return {t: (r.state, r.error, r.blocked_by) for t, r in store.tasks(1).items()}
    finally:
        store.close()


def totals(world: CodingWorld) -> dict[str, object]:
    store = SqliteStore(world.state, create=False)
    try:
        return usage_totals(read_usage(store, 1))
    finally:
        store.close()


def two_phases(world: CodingWorld, budget: dict[str, float] | None = None) -> None:
    """claude builds in phase one, codex tests in phase two; failed attempts cost too."""
    world.write_plan(
        [],
        {"claude": coder("claude"), "codex": {**coder("codex"), "capabilities": ["test"]}},
        settings={"budget": budget} if budget else {},
        phases=[
            {
                "id": "build",
                "milestones": [
                    {
                        "id": "m1",
                        "tasks": [
                            coding_task("a", "fake: write a.txt a", "fake: cost 0.25"),
                            coding_task(
                                "b",
                                "fake: fail-once",
                                "fake: write b.txt b",
                                "fake: cost 0.5",
                                retries=1,
                            ),
                        ],
                    }
                ],
            },
            {
                "id": "test",
                "milestones": [
                    {
                        "id": "m2",
                        "tasks": [
                            {**coding_task("c", "fake: write c.txt c"), "requires": ["test"]},
                        ],
                    }
                ],
            },
        ],
    )


def test_cost_and_tokens_are_summed_per_task_agent_phase_and_run(world: CodingWorld) -> None:
    two_phases(world)
    code, _ = world.run()
    assert code == 0
    summed = totals(world)
    assert summed["run"] == {
        "attempts": 4,
        "cost_usd": 1.25,  # 0.25 + 0.5 (the failed attempt) + 0.5; codex reports no cost
        "input_tokens": 3 * 160 + 200,
        "output_tokens": 3 * 20 + 30,
    }
    assert summed["by_task"]["b"]["attempts"] == 2 and summed["by_task"]["b"]["cost_usd"] == 1.0
    assert summed["by_agent"]["claude"]["cost_usd"] == 1.25
    assert summed["by_agent"]["codex"]["input_tokens"] == 200
    assert summed["by_phase"]["build"]["attempts"] == 3
    assert summed["by_phase"]["test"]["output_tokens"] == 30


def test_report_and_status_show_the_cost_and_tokens(world: CodingWorld) -> None:
    two_phases(world)
    assert world.run()[0] == 0
    report = cli("report", "--state", world.state)
    assert report.code == 0, str(report)
    assert "Coding agents: cost and tokens" in report.stdout
    assert "| run | all | $1.2500, 680 in / 90 out tokens, 4 attempts |" in report.stdout
    assert "| agent | codex | $0.0000, 200 in / 30 out tokens, 1 attempt |" in report.stdout
    data = json.loads(cli("report", "--state", world.state, "--format", "json").stdout)
    assert data["coding"]["by_phase"]["build"]["cost_usd"] == 1.25
    status = cli("status", "--state", world.state)
    assert "coding agents: $1.2500, 680 in / 90 out tokens, 4 attempts" in status.stdout
    assert "task b: $1.0000" in status.stdout
    assert json.loads(cli("status", "--json", "--state", world.state).stdout)["coding"]


def test_no_cost_section_when_no_coding_agent_ran(world: CodingWorld) -> None:
    world.write_plan(
        [{"id": "t", "requires": ["code"]}],
        {"sh": {"capabilities": ["code"], "runner": {"shell": "true"}}},
    )
    assert world.run()[0] == 0
    assert "Coding agents" not in cli("report", "--state", world.state).stdout
    assert "coding agents" not in cli("status", "--state", world.state).stdout


def test_a_result_over_the_tasks_max_cost_fails_it_and_is_not_merged(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: write a.txt a", "fake: cost 2.5", max_cost_usd=1, retries=2)],
        {"claude": coder("claude")},
    )
    code, seen = world.run()
    assert code == 1
    first = events(seen, "task_retrying")[0]
    assert first["error"].startswith("budget: this attempt cost $2.5000")
    state, error, _ = tasks_of(world)["t"]
    assert state == "failed"
    # Later attempts are refused before they start: the task has spent its allowance.
    assert error == "budget: the task's attempts already cost $2.5000 of its max_cost_usd $1"
    assert len(world.calls("claude")) == 1
    assert "a.txt" not in git(world.repo, "ls-tree", "-r", "--name-only", INTEGRATION)
    store = SqliteStore(world.state, create=False)
    try:
        (row,) = store.query("SELECT error_class, cost_usd FROM coding_usage WHERE task = 't'")
    finally:
        store.close()
    assert row == ("budget", 2.5)


def test_max_turns_is_passed_to_claude(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: write a.txt a", max_turns=4)], {"claude": coder("claude")}
    )
    assert world.run()[0] == 0
    (call,) = world.calls("claude")
    assert call["argv"][call["argv"].index("--max-turns") + 1] == "4"


def test_the_run_budget_stops_new_work_escalates_and_fails_the_run(world: CodingWorld) -> None:
    world.write_plan(
        [
            coding_task("first", "fake: write a.txt a", "fake: cost 0.8"),
            coding_task("slow", "fake: sleep 1", "fake: write s.txt s", "fake: cost 0.1"),
            coding_task("second", "fake: write b.txt b", "fake: cost 0.8", needs=["first"]),
            coding_task("third", "fake: write c.txt c", needs=["second"]),
        ],
        {"claude": coder("claude")},
        settings={"budget": {"max_cost_usd": 1.5}},
    )
    code, seen = world.run()
    assert code == 1
    states = tasks_of(world)
    assert states["first"][0] == states["second"][0] == "completed"
    assert states["slow"][0] == "completed"  # it was running: it finishes
    state, _, blocked_by = states["third"]
    assert state == "blocked"
    assert blocked_by is not None and "the run's budget of $1.5 was reached" in blocked_by
    assert [c["task"] for c in world.calls("claude")].count("third") == 0
    (reached,) = events(seen, "budget_reached")
    assert reached["not_started"] == ["third"] and reached["spent_usd"] == pytest.approx(1.6)
    assert totals(world)["run"]["cost_usd"] == pytest.approx(1.7)  # with the one that ran on
    opened = [e for e in events(seen, "escalation_opened") if e.get("subject") == "run:budget"]
    assert opened and opened[0]["case_kind"] == "budget"
    assert "budget of $1.5 was reached" in opened[0]["summary"]
    assert [e["status"] for e in events(seen, "run_finished")] == ["failed"]


def test_the_cli_says_the_budget_was_reached(world: CodingWorld) -> None:
    world.write_plan(
        [
            coding_task("first", "fake: write a.txt a", "fake: cost 3"),
            coding_task("second", "fake: write b.txt b", needs=["first"]),
        ],
        {"claude": coder("claude")},
        settings={"budget": {"max_cost_usd": 2}},
    )
    result = cli("run", world.plan, "--state", world.state, "--quiet")
    assert result.code == 1, str(result)
    assert "budget reached" in result.stdout
    assert "the run's budget of $2 was reached ($3.0000 spent" in result.stdout
    resumed = cli("resume", "--state", world.state, "--quiet")
    assert resumed.code == 1  # still over budget: nothing new starts
    assert [c["task"] for c in world.calls("claude")] == ["first"]


def test_an_attempt_that_changed_nothing_fails_instead_of_being_merged(world: CodingWorld) -> None:
    world.write_plan(
        [
            coding_task("lazy", "Do the work, but the fake does nothing."),
            coding_task("review", "Only read the code.", expect_changes=False),
        ],
        {"claude": coder("claude")},
    )
    code, _ = world.run()
    assert code == 1
    states = tasks_of(world)
    assert states["review"][0] == "completed"
    state, error, _ = states["lazy"]
    assert state == "failed"
    assert error is not None and error.startswith("expect_changes: the attempt changed nothing")
    assert git(world.repo, "rev-list", "--count", f"main..{INTEGRATION}") == "0"


def test_an_agent_that_commits_its_own_work_counts_as_a_change(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: write a.txt a", "fake: commit add a")],
        {"aider": coder("aider")},
    )
    assert world.run()[0] == 0
    assert world.show(INTEGRATION, "a.txt") == "a"
    assert "add a" in git(world.repo, "log", "--format=%s", INTEGRATION)
