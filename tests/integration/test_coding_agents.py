"""Coding CLIs as agents, against fake ``claude``, ``codex``, ``gemini`` and ``aider``
executables that speak each CLI's JSON protocol and edit files in their worktree, with
real git repositories and ``workspace: worktree``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from coding_helpers import CodingWorld, coder, coding_task, coding_world, events, git
from run_helpers import pid_alive, wait_for

from counterpoint.store.sqlite import SqliteStore

INTEGRATION = "counterpoint/run-1"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CodingWorld:
    return coding_world(tmp_path, monkeypatch)


def task_record(world: CodingWorld, task: str) -> tuple[str, str | None, dict | None]:
    store = SqliteStore(world.state, create=False)
    try:
        rec = store.tasks(1)[task]
    finally:
        store.close()
    return rec.state, rec.error, rec.result


@pytest.mark.parametrize("cli", ["claude", "codex", "gemini", "aider"])
def test_each_cli_edits_files_in_its_worktree_and_the_work_is_merged(
    world: CodingWorld, cli: str
) -> None:
    world.write_plan(
        [coding_task("feature", "Add the feature.", "fake: write feature.txt added")],
        {"coder": coder(cli)},
    )
    code, seen = world.run()
    assert code == 0
    assert world.show(INTEGRATION, "feature.txt") == "added"
    (call,) = world.calls(cli)
    assert Path(call["cwd"]).name == "feature-1"  # its own worktree, not the repository
    assert Path(call["cwd"]).parent.parent.name == "worktrees"
    state, _, result = task_record(world, "feature")
    assert state == "completed" and result is not None
    assert result["cli"] == cli and result["text"]
    assert result["usage"]["tokens"] > 0
    listed = git(world.repo, "ls-tree", "-r", "--name-only", INTEGRATION).split()
    assert not [name for name in listed if name.startswith(".aider")]  # caches stay out
    assert [e["cli"] for e in events(seen, "coding_usage")] == [cli]


def test_the_session_id_of_each_attempt_is_recorded_in_the_journal(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: write a.txt a"), coding_task("u", "fake: write b.txt b")],
        {"claude": coder("claude")},
    )
    assert world.run()[0] == 0
    store = SqliteStore(world.state, create=False)
    try:
        rows = store.query("SELECT task, attempt, cli, session_id, status FROM coding_usage")
        worktrees = store.query("SELECT task, attempt, session_id FROM worktree_attempts")
    finally:
        store.close()
    assert sorted(rows) == [
        ("t", 1, "claude", "claude-t-1", "success"),
        ("u", 1, "claude", "claude-u-1", "success"),
    ]
    # ... and in the run's worktree ledger, beside the attempt's worktree and branch.
    assert sorted(worktrees) == [("t", 1, "claude-t-1"), ("u", 1, "claude-u-1")]


def test_a_rate_limit_makes_the_task_wait_without_using_a_retry_then_resumes_the_session(
    world: CodingWorld,
) -> None:
    world.write_plan(
        [coding_task("t", "fake: rate-limit-once", "fake: write a.txt a", retries=0)],
        {"claude": coder("claude")},
    )
    code, seen = world.run()
    assert code == 0, events(seen, "task_failed")
    (limited,) = events(seen, "task_rate_limited")
    assert limited["retry_after_s"] == pytest.approx(0.3)
    first, second = world.calls("claude")
    assert "--resume" not in first["argv"]
    assert second["argv"][second["argv"].index("--resume") + 1] == "claude-t-1"
    assert world.show(INTEGRATION, "a.txt") == "a"


@pytest.mark.parametrize("cli", ["codex", "gemini"])
def test_a_rate_limit_in_codex_or_gemini_also_makes_the_task_wait(
    world: CodingWorld, cli: str
) -> None:
    world.write_plan(
        [coding_task("t", "fake: rate-limit-once", "fake: write a.txt a", retries=0)],
        {"coder": coder(cli)},
        resources={"account": {"rate": 100, "per": "1s"}},
    )
    code, seen = world.run()
    assert code == 0
    assert [(e["task"], e["retry_after_s"]) for e in events(seen, "task_rate_limited")] == [
        ("t", 1.0)
    ]
    assert len(world.calls(cli)) == 2


def test_a_usage_limit_waits_until_the_reset_time_it_names(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: usage-limit-once", "fake: write a.txt a", retries=0)],
        {"claude": coder("claude")},
    )
    started = time.monotonic()
    code, seen = world.run()
    assert code == 0
    (limited,) = events(seen, "task_rate_limited")
    assert 0 <= limited["retry_after_s"] <= 1.5
    assert len(world.calls("claude")) == 2
    assert time.monotonic() - started < 20


def test_a_retry_continues_the_codex_thread_by_its_id(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: fail-once", "fake: write a.txt a", retries=1)],
        {"codex": coder("codex", sandbox="workspace-write")},
    )
    code, seen = world.run()
    assert code == 0
    first, second = world.calls("codex")
    assert "resume" not in first["argv"]
    assert second["argv"][second["argv"].index("resume") + 1] == "codex-t-1"
    (retrying,) = events(seen, "task_retrying")
    assert "codex failed (api_error)" in retrying["error"]


def test_resume_false_starts_every_attempt_afresh(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: fail-once", "fake: write a.txt a", retries=1)],
        {"claude": coder("claude", resume=False)},
    )
    assert world.run()[0] == 0
    assert all("--resume" not in c["argv"] for c in world.calls("claude"))


def test_an_is_error_result_with_subtype_success_fails_the_task(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: is-error", "fake: write a.txt a")], {"claude": coder("claude")}
    )
    code, _ = world.run()
    assert code == 1
    state, error, _ = task_record(world, "t")
    assert state == "failed"
    assert error is not None and "failed (api_error): API Error: 529 overloaded_error" in error
    assert "a.txt" not in git(world.repo, "ls-tree", "-r", "--name-only", INTEGRATION)


@pytest.mark.parametrize("cli", ["claude", "codex", "gemini", "aider"])
def test_a_crash_fails_the_task_with_the_last_stderr_lines(world: CodingWorld, cli: str) -> None:
    world.write_plan([coding_task("t", "fake: crash")], {"coder": coder(cli)})
    code, _ = world.run()
    assert code == 1
    state, error, _ = task_record(world, "t")
    assert state == "failed" and error is not None
    assert "crashed" in error
    assert "the fake" in error and "crashed" in error.split("crashed", 1)[1]


@pytest.mark.parametrize(
    ("cli", "version"),
    [("claude", "2.0.14 (Claude Code)"), ("codex", "codex-cli 0.46.0"), ("gemini", "0.9.0")],
)
def test_unknown_output_fails_naming_the_cli_and_its_version(
    world: CodingWorld, cli: str, version: str
) -> None:
    world.write_plan([coding_task("t", "fake: unknown-output")], {"coder": coder(cli)})
    code, _ = world.run()
    assert code == 1
    state, error, _ = task_record(world, "t")
    assert state == "failed"
    assert error is not None and f"{cli} (version {version}) printed unknown output" in error


def test_command_names_the_executable_instead_of_path(
    world: CodingWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the fakes are not on PATH any more
    world.write_plan(
        [coding_task("t", "fake: write a.txt a")],
        {"claude": coder("claude", command=str(world.bin / "claude"))},
    )
    assert world.run()[0] == 0
    assert world.show(INTEGRATION, "a.txt") == "a"


def test_a_timeout_kills_the_cli_and_its_process_group(world: CodingWorld) -> None:
    world.write_plan(
        [coding_task("t", "fake: sleep 30", timeout="1s")], {"claude": coder("claude")}
    )
    started = time.monotonic()
    code, seen = world.run()
    assert code == 1
    assert time.monotonic() - started < 15
    (call,) = world.calls("claude")
    wait_for(lambda: not pid_alive(call["pid"]), timeout=5, what="the fake CLI to be gone")
    (failed,) = events(seen, "task_failed")
    assert "timed out" in failed["error"]
    ledger = world.state / "logs" / "run-1" / "t" / "1.coding.json"
    assert json.loads(ledger.read_text())["error_class"] == "cancelled"
