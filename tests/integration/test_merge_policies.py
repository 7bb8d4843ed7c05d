"""Branching from the dependencies' work, worktree setup, checks and merge policies, real git.

Agents are the example's fake coding agent (edits listed in ``inputs.edits``) or small
shell scripts; every test makes its own repository in a temporary folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_worktrees import (
    INTEGRATION,
    branches,
    coding_task,
    git,
    make_repo,
    run,
    show,
    write_plan,
)

from counterpoint.agents.merging import predict
from counterpoint.agents.worktree import WorktreeManager
from counterpoint.plan.model import Settings

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def with_settings(plan: Path, **settings: Any) -> Path:
    spec = yaml.safe_load(plan.read_text())
    spec["settings"].update(settings)
    plan.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return plan


def add_agent(plan: Path, name: str, **spec: Any) -> Path:
    data = yaml.safe_load(plan.read_text())
    data["agents"][name] = spec
    plan.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return plan


def set_capacity(plan: Path, capacity: int) -> Path:
    data = yaml.safe_load(plan.read_text())
    data["agents"]["coder"]["capacity"] = capacity
    plan.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return plan


def error_of(seen: Any, task: str) -> str:
    (failed,) = [e for e in seen.kinds("task_failed") if e.task == task]
    return str(failed.data["error"])


# -- the base commit -----------------------------------------------------------------------


def test_a_task_without_dependencies_starts_from_the_runs_base_commit(
    tmp_path: Path, repo: Path
) -> None:
    plan = set_capacity(
        write_plan(
            tmp_path,
            [
                coding_task("a", ["write", "a.txt", "a"]),
                coding_task("b", ["absent", "a.txt"], ["write", "b.txt", "b"], priority="low"),
            ],
        ),
        1,  # b starts after a merged, and still does not see a's work
    )
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    started, merged = seen.kinds("task_started"), seen.kinds("task_completed")
    assert [e.task for e in started] == ["a", "b"] and merged[0].task == "a"
    assert show(repo, INTEGRATION, "a.txt") == "a" and show(repo, INTEGRATION, "b.txt") == "b"


def test_a_dependent_sees_its_dependencies_work_but_not_a_sibling_merged_meanwhile(
    tmp_path: Path, repo: Path
) -> None:
    plan = write_plan(
        tmp_path,
        [
            coding_task("dep", ["write", "dep.txt", "dep"]),
            coding_task("sibling", ["sleep", 0.4], ["write", "sib.txt", "sib"]),
            coding_task("slow", ["sleep", 1.0]),  # changes nothing
            coding_task(
                "dependent",
                ["require", "dep.txt", "dep"],
                ["absent", "sib.txt"],
                ["write", "out.txt", "out"],
                needs=["dep", "slow"],
            ),
        ],
    )
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    completed = {e.task: e.ts for e in seen.kinds("task_completed")}
    started = {e.task: e.ts for e in seen.kinds("task_started")}
    assert started["dependent"] >= completed["slow"] > completed["sibling"] > completed["dep"]
    assert show(repo, INTEGRATION, "out.txt") == "out"
    assert show(repo, INTEGRATION, "sib.txt") == "sib"  # merged, just not under dependent


# -- include, setup and the worktree check -------------------------------------------------


def test_the_include_file_copies_untracked_files_into_each_worktree(
    tmp_path: Path,
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {".gitignore": ".env\nsecrets/\n", ".worktreeinclude": "# env files\n.env\nsecrets/*\n"},
    )
    (repo / ".env").write_text("TOKEN=1\n")
    (repo / "secrets").mkdir()
    (repo / "secrets" / "key").write_text("k\n")
    plan = write_plan(
        tmp_path,
        [coding_task("t", ["require", ".env", "TOKEN=1"], ["require", "secrets/key", "k"])],
    )
    with_settings(plan, worktree={"include": ".worktreeinclude"})
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    tracked = git(repo, "ls-tree", "-r", "--name-only", INTEGRATION).split()
    assert ".env" not in tracked and "secrets/key" not in tracked  # ignored: never committed


def test_a_missing_include_file_fails_the_attempt_clearly(tmp_path: Path, repo: Path) -> None:
    plan = write_plan(tmp_path, [coding_task("t", ["write", "x.txt", "x"])])
    with_settings(plan, worktree={"include": ".nothing"})
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    error = error_of(seen, "t")
    assert "could not prepare the task's worktree" in error
    assert "cannot read the include file" in error and ".nothing" in error


def test_the_setup_command_runs_in_the_worktree_before_the_agent(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {".gitignore": ".ready\n", "a.txt": "a\n"})
    plan = write_plan(tmp_path, [coding_task("t", ["require", ".ready", "set up"])])
    with_settings(plan, worktree={"setup": "echo 'set up' > .ready"})
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    assert ".ready" not in git(repo, "ls-tree", "--name-only", INTEGRATION)


def test_a_failing_setup_command_fails_the_attempt_with_its_output(
    tmp_path: Path, repo: Path
) -> None:
    plan = write_plan(tmp_path, [coding_task("t", ["write", "never.txt", "x"])])
    with_settings(plan, worktree={"setup": "echo 'npm ci: no network' >&2; exit 3"})
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    error = error_of(seen, "t")
    assert error.startswith("the worktree setup command `echo 'npm ci: no network' >&2; exit 3`")
    assert "failed (exit 3): npm ci: no network" in error
    assert not (tmp_path / "state" / "worktrees" / "run-1" / "t-1" / "never.txt").exists()


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("git switch --quiet -c elsewhere", "it is on elsewhere, not on its branch"),
        ("rm .git", "it is not a git worktree"),
    ],
)
def test_an_agent_never_starts_outside_its_worktree(
    tmp_path: Path, repo: Path, setup: str, expected: str
) -> None:
    plan = write_plan(tmp_path, [coding_task("t", ["write", "never.txt", "x"])])
    with_settings(plan, worktree={"setup": setup})
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    error = error_of(seen, "t")
    assert error.startswith("refusing to start the agent in ") and expected in error, error
    assert not (tmp_path / "state" / "worktrees" / "run-1" / "t-1" / "never.txt").exists()


# -- the check command ---------------------------------------------------------------------


def test_a_failing_check_fails_the_attempt_and_nothing_is_merged(
    tmp_path: Path, repo: Path
) -> None:
    plan = write_plan(
        tmp_path,
        [
            coding_task("bad", ["write", "bad.txt", "x"], check="echo '1 test failed'; exit 1"),
            coding_task("good", ["write", "good.txt", "y"]),
        ],
    )
    with_settings(plan, worktree={"check": ["test", "-f", "good.txt"]})
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    assert error_of(seen, "bad") == (
        "the check command `echo '1 test failed'; exit 1` failed (exit 1): 1 test failed"
    )
    assert "bad.txt" not in git(repo, "ls-tree", "--name-only", INTEGRATION)
    assert show(repo, INTEGRATION, "good.txt") == "y"  # settings' check, passed
    assert "counterpoint/run-1-tasks/bad-1" in branches(repo)


def test_a_check_that_runs_too_long_is_stopped(tmp_path: Path, repo: Path) -> None:
    plan = write_plan(tmp_path, [coding_task("t", ["write", "t.txt", "x"], check="sleep 30")])
    with_settings(plan, worktree={"check_timeout": "0.5s"})
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    assert error_of(seen, "t") == "the check command `sleep 30` timed out after 0.5s"


# -- prediction and mechanical conflicts ---------------------------------------------------


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def test_a_predicted_conflict_moves_no_ref_and_touches_no_worktree(
    tmp_path: Path, repo: Path
) -> None:
    manager = WorktreeManager(repo, tmp_path / "state", 1)
    a, b = manager.prepare("a", 1), manager.prepare("b", 1)
    (a / "shared.txt").write_text("A\n")
    (b / "shared.txt").write_text("B\n")
    assert manager.finish("a", 1, succeeded=True).merged  # type: ignore[union-attr]
    theirs = manager.commit_attempt("b", 1)
    prediction = predict(repo, manager.tip(), theirs)
    assert prediction.paths == ("shared.txt",) and not prediction.clean
    before, integ = refs(repo), manager.integration_dir
    result = manager.finish("b", 1, succeeded=True)
    assert result is not None and result.conflict is not None
    assert refs(repo) == before
    assert git(integ, "status", "--porcelain") == ""
    git_dir = Path(git(integ, "rev-parse", "--absolute-git-dir"))
    assert not (git_dir / "MERGE_HEAD").exists()
    # The integration worktree's HEAD only ever merged a.
    moves = git(integ, "reflog", "--format=%gs", "HEAD").splitlines()
    assert len([m for m in moves if m.startswith("merge ")]) == 1


def test_a_lock_file_conflict_is_resolved_by_union_in_the_integration_worktree(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"deps.lock": "base\n", "shared.txt": "x\n"})
    settings = Settings.model_validate(
        {"conflicts": {"mechanical": [{"paths": ["*.lock"], "strategy": "union"}]}}
    )
    manager = WorktreeManager(repo, tmp_path / "state", 1, settings)
    a, b = manager.prepare("a", 1), manager.prepare("b", 1)
    (a / "deps.lock").write_text("base\nfrom-a\n")
    (b / "deps.lock").write_text("base\nfrom-b\n")
    (b / "b.txt").write_text("b\n")
    assert manager.finish("a", 1, succeeded=True).merged  # type: ignore[union-attr]
    result = manager.finish("b", 1, succeeded=True)
    assert result is not None and result.merged and result.commit is not None
    assert show(repo, INTEGRATION, "deps.lock") == "base\nfrom-a\nfrom-b"
    assert show(repo, INTEGRATION, "b.txt") == "b"
    body = git(repo, "log", "-1", "--format=%B", INTEGRATION)
    assert "counterpoint: merge task b (attempt 1)" in body and "deps.lock (union)" in body


def test_parallel_tasks_regenerate_a_generated_file_by_the_configured_command(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"deps/base.txt": "base\n", "deps.lock": "base\n"})
    regen = "cat deps/*.txt > deps.lock"
    plan = write_plan(
        tmp_path,
        [
            coding_task("a", ["write", "deps/a.txt", "a"], ["append-line", "deps.lock", "a"]),
            coding_task(
                "b", ["sleep", 0.5], ["write", "deps/b.txt", "b"], ["append-line", "deps.lock", "b"]
            ),
        ],
    )
    with_settings(
        plan,
        conflicts={
            "mechanical": [{"paths": ["deps.lock"], "strategy": "command", "command": regen}]
        },
    )
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    assert show(repo, INTEGRATION, "deps.lock") == "a\nb\nbase"
    (resolved,) = seen.kinds("merge_resolved")
    assert resolved.task == "b" and resolved.data["how"] == ["deps.lock (command)"]
    assert not seen.kinds("merge_conflict")
    assert branches(repo) == {"main", INTEGRATION}


# -- semantic conflicts: the resolver agent ------------------------------------------------


def resolver_plan(tmp_path: Path, script: str, **settings: Any) -> Path:
    plan = write_plan(
        tmp_path,
        [
            {
                **coding_task("early", ["replace-line", "shared.txt", 2, "TWO (early)"]),
                "instructions": "Make line two shout.",
            },
            {
                **coding_task(
                    "late", ["sleep", 0.8], ["replace-line", "shared.txt", 2, "2 (late)"]
                ),
                "instructions": "Make line two a digit.",
            },
        ],
    )
    add_agent(plan, "fixer", capabilities=["resolve"], runner={"shell": ["sh", "-c", script]})
    return with_settings(plan, conflicts={"resolver": "fixer"}, **settings)


def test_a_semantic_conflict_is_resolved_by_the_resolver_agent_then_checked(
    tmp_path: Path, repo: Path
) -> None:
    payload = tmp_path / "payload.json"
    script = (
        f"cat > {payload}; printf 'one\\nTWO (2)\\nthree\\n' > shared.txt && git add shared.txt"
    )
    plan = resolver_plan(tmp_path, script, worktree={"check": "grep -q one shared.txt"})
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    assert show(repo, INTEGRATION, "shared.txt") == "one\nTWO (2)\nthree"
    (resolved,) = seen.kinds("merge_resolved")
    assert resolved.task == "late" and resolved.data["how"] == ["shared.txt (resolver fixer)"]
    task = json.loads(payload.read_text())["task"]
    assert task["id"] == "late:resolve-1"
    assert "Make line two shout." in task["instructions"]
    assert "Make line two a digit." in task["instructions"]
    assert task["inputs"]["conflict"]["paths"] == ["shared.txt"]
    assert task["inputs"]["conflict"]["tasks"] == {
        "late": "Make line two a digit.",
        "early": "Make line two shout.",
    }
    merges = git(repo, "log", "--first-parent", "--format=%s", INTEGRATION).splitlines()
    assert merges[:2] == [
        "counterpoint: merge task late (attempt 1)",
        "counterpoint: merge task early (attempt 1)",
    ]
    assert branches(repo) == {"main", INTEGRATION}


def test_a_resolver_that_leaves_conflict_markers_goes_to_a_person(
    tmp_path: Path, repo: Path
) -> None:
    plan = resolver_plan(tmp_path, "cat > /dev/null; git add shared.txt; echo 'all fixed!'")
    state = tmp_path / "state"
    code, seen = run(plan, state)
    assert code == 1
    error = error_of(seen, "late")
    assert "merge conflict with counterpoint/run-1 in shared.txt" in error
    assert "the resolver agent 'fixer' left shared.txt unresolved" in error
    (unresolved,) = seen.kinds("merge_unresolved")
    assert unresolved.data["paths"] == ["shared.txt"]
    opened = [e.data["subject"] for e in seen.kinds("escalation_opened")]
    assert opened == ["conflict:1"]
    assert show(repo, INTEGRATION, "shared.txt") == "one\nTWO (early)\nthree"
    assert "counterpoint/run-1-tasks/late-1" in branches(repo)  # the attempt keeps its branch
    kept = state / "worktrees" / "run-1" / "late-1.resolve"
    assert "<<<<<<<" in (kept / "shared.txt").read_text()  # the resolver's attempt, kept


def test_a_failing_resolver_goes_to_a_person(tmp_path: Path, repo: Path) -> None:
    plan = resolver_plan(tmp_path, "cat > /dev/null; echo 'out of tokens' >&2; exit 1")
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    error = error_of(seen, "late")
    assert "the resolver agent 'fixer' failed" in error and "out of tokens" in error


def test_a_check_failing_after_the_resolution_blocks_the_merge(tmp_path: Path, repo: Path) -> None:
    script = "cat > /dev/null; printf 'one\\nbroken\\nthree\\n' > shared.txt; git add shared.txt"
    plan = resolver_plan(tmp_path, script, worktree={"check": "! grep -q broken shared.txt"})
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    error = error_of(seen, "late")
    kept = tmp_path / "state" / "worktrees" / "run-1" / "late-1.resolve"
    assert error == (
        f"after resolving the conflict (kept in {kept}): "
        "the check command `! grep -q broken shared.txt` failed (exit 1)"
    )
    assert show(repo, INTEGRATION, "shared.txt") == "one\nTWO (early)\nthree"
