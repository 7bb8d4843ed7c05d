"""``workspace: worktree`` against real git: isolation, merge order, conflicts, cleanup, resume.

Every test makes its own repository in a temporary folder and runs plans whose agents
are the example's fake coding agent (``examples/coding-agents/fake-agent.py``), which
edits files as each task's ``inputs.edits`` say (the example itself is run by
test_coding_example.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from run_helpers import ROOT, Collect, cli, quick_options

from counterpoint.agents.worktree import (
    MergeConflict,
    WorktreeError,
    WorktreeManager,
    check_worktree_agent,
    slug,
)
from counterpoint.plan.load import load_plan
from counterpoint.runtime.session import resume_run, start_run

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

EXAMPLE = ROOT / "examples" / "coding-agents"
FAKE = EXAMPLE / "fake-agent.py"
INTEGRATION = "counterpoint/run-1"


# -- helpers -------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=env
    )
    return proc.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "--quiet")
    git(path, "symbolic-ref", "HEAD", "refs/heads/main")
    for name, text in (files or {"shared.txt": "one\ntwo\nthree\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text, encoding="utf-8")
    git(path, "add", "--all")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "start")
    return path


def show(repo: Path, ref: str, name: str) -> str:
    return git(repo, "show", f"{ref}:{name}")


def branches(repo: Path) -> set[str]:
    return set(git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split())


def worktrees(repo: Path) -> list[Path]:
    lines = git(repo, "worktree", "list", "--porcelain").splitlines()
    found = [line.removeprefix("worktree ") for line in lines if line.startswith("worktree ")]
    return [Path(p).resolve() for p in found]


def edits(*steps: list[Any]) -> dict[str, Any]:
    return {"edits": [list(s) for s in steps]}


def coding_task(tid: str, *steps: list[Any], **fields: Any) -> dict[str, Any]:
    return {"id": tid, "requires": ["code"], "inputs": edits(*steps), **fields}


def write_plan(folder: Path, tasks: list[dict[str, Any]], **top: Any) -> Path:
    plan: dict[str, Any] = {
        "version": 1,
        "name": "worktrees",
        "defaults": {"retries": 0, "timeout": "60s", "estimate": "1m"},
        "settings": {"repository": "repo", "retry_backoff": "0.1s"},
        "agents": {
            "coder": {
                "capabilities": ["code"],
                "capacity": 4,
                "workspace": "worktree",
                "runner": {"shell": [sys.executable, str(FAKE)]},
            }
        },
        "phases": [{"id": "p", "milestones": [{"id": "m", "tasks": tasks}]}],
    }
    plan.update(top)
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def run(plan: Path, state: Path) -> tuple[int, Collect]:
    seen = Collect()
    code = start_run(plan, state, quick_options(), [seen], sync="normal")
    return code, seen


def resume(state: Path, **options: Any) -> tuple[int, Collect]:
    seen = Collect()
    code = resume_run(state, quick_options(**options), [seen], sync="normal")
    return code, seen


def times(seen: Collect, kind: str) -> dict[str, float]:
    return {e.task: e.ts for e in seen.kinds(kind) if e.task}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


# -- isolation and order -------------------------------------------------------------------


def test_parallel_tasks_are_isolated_and_a_dependent_sees_the_merged_work(
    tmp_path: Path, repo: Path
) -> None:
    # The user's own uncommitted work stays where it is and no task sees it.
    (repo / "shared.txt").write_text("user edit\n", encoding="utf-8")
    (repo / "notes.txt").write_text("mine\n", encoding="utf-8")
    plan = write_plan(
        tmp_path,
        [
            coding_task("a", ["write", "a.txt", "from a"], ["sleep", 0.8]),
            coding_task(
                "b",
                ["sleep", 0.3],
                ["absent", "a.txt"],  # a wrote it, uncommitted, in its own worktree
                ["absent", "notes.txt"],
                ["require", "shared.txt", "one"],
                ["write", "b.txt", "from b"],
            ),
            coding_task(
                "c",
                ["require", "a.txt", "from a"],
                ["require", "b.txt", "from b"],
                ["append-line", "shared.txt", "four"],
                needs=["a", "b"],
            ),
        ],
    )
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    started, completed = times(seen, "task_started"), times(seen, "task_completed")
    assert started["b"] < completed["a"] and started["a"] < completed["b"]  # in parallel
    assert started["c"] > max(completed["a"], completed["b"])
    assert show(repo, INTEGRATION, "a.txt") == "from a"
    assert show(repo, INTEGRATION, "shared.txt") == "one\ntwo\nthree\nfour"
    # The user's branch and working tree are as they were.
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(repo, "log", "--format=%s", "main") == "start"
    assert (repo / "shared.txt").read_text() == "user edit\n"
    assert (repo / "notes.txt").read_text() == "mine\n"
    assert not (repo / "a.txt").exists()


def test_branches_merge_in_dependency_order_one_merge_commit_per_task(
    tmp_path: Path, repo: Path
) -> None:
    plan = write_plan(
        tmp_path,
        [
            coding_task("one", ["append-line", "log.txt", "one"]),
            coding_task("two", ["append-line", "log.txt", "two"], needs=["one"]),
            coding_task("three", ["append-line", "log.txt", "three"], needs=["two"]),
            coding_task("side", ["sleep", 0.2], ["write", "side.txt", "side"]),
            coding_task("nothing", ["require", "shared.txt"]),  # changes nothing
        ],
    )
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    assert show(repo, INTEGRATION, "log.txt") == "one\ntwo\nthree"
    merges = git(repo, "log", "--first-parent", "--reverse", "--format=%s", INTEGRATION)
    order = [line.split()[3] for line in merges.splitlines() if "merge task" in line]
    assert sorted(order) == ["one", "side", "three", "two"]  # nothing: no merge commit
    assert order.index("one") < order.index("two") < order.index("three")
    author = git(repo, "log", "-1", "--format=%an <%ae>", INTEGRATION)
    assert author == "counterpoint <counterpoint@localhost>"
    # Each task commit holds exactly that task's work, on top of what it depended on.
    two = git(repo, "log", "--format=%H", "--grep=^counterpoint: task two ", INTEGRATION)
    assert git(repo, "show", "--format=", "--name-only", two) == "log.txt"
    assert [e.data["branch"] for e in seen.kinds("integration_branch")] == [INTEGRATION]


def test_an_agent_that_commits_itself_is_merged_with_its_commits(
    tmp_path: Path, repo: Path
) -> None:
    plan = write_plan(
        tmp_path,
        [
            coding_task(
                "committer",
                ["write", "c.txt", "first"],
                ["commit", "agent commit"],
                ["append-line", "c.txt", "left uncommitted"],
            )
        ],
    )
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    merge = git(repo, "log", "-1", "--format=%an: %s", INTEGRATION)
    assert merge == "counterpoint: counterpoint: merge task committer (attempt 1)"
    work = git(repo, "log", "--format=%an: %s", f"{INTEGRATION}^1..{INTEGRATION}^2")
    assert work.splitlines() == [
        "counterpoint: counterpoint: task committer (attempt 1)",
        "fake-agent: agent commit",
    ]
    assert show(repo, INTEGRATION, "c.txt") == "first\nleft uncommitted"


def test_a_python_agent_gets_its_worktree_as_ctx_workdir(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "wt_agent.py").write_text(
        "def work(task, ctx):\n"
        "    (ctx.workdir / 'py.txt').write_text(str(ctx.workdir.name))\n"
        "    return {'workdir': str(ctx.workdir)}\n",
        encoding="utf-8",
    )
    plan = write_plan(tmp_path, [{"id": "py", "requires": ["code"]}])
    spec = yaml.safe_load(plan.read_text())
    spec["agents"]["coder"]["runner"] = {"python": "wt_agent:work"}
    plan.write_text(yaml.safe_dump(spec), encoding="utf-8")
    code, seen = run(plan, tmp_path / "state")
    assert code == 0, seen.events
    assert show(repo, INTEGRATION, "py.txt") == "py-1"


def test_work_whose_state_writes_are_refused_is_not_merged(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "wt_bad.py").write_text(
        "def work(task, ctx):\n"
        "    (ctx.workdir / 'bad.txt').write_text('should not land')\n"
        "    ctx.state.set('undeclared.key', 1)\n"
        "    return {}\n",
        encoding="utf-8",
    )
    plan = write_plan(tmp_path, [{"id": "bad", "requires": ["code"], "writes": ["ok.*"]}])
    spec = yaml.safe_load(plan.read_text())
    spec["agents"]["coder"]["runner"] = {"python": "wt_bad:work"}
    plan.write_text(yaml.safe_dump(spec), encoding="utf-8")
    code, seen = run(plan, tmp_path / "state")
    assert code == 1
    (failed,) = seen.kinds("task_failed")
    assert "'undeclared.key'" in failed.data["error"], failed
    assert "bad.txt" not in git(repo, "ls-tree", "--name-only", INTEGRATION)
    assert not seen.kinds("state_written")


# -- conflicts, failures, cleanup ----------------------------------------------------------


def test_two_tasks_editing_the_same_line_the_second_to_finish_conflicts(
    tmp_path: Path, repo: Path
) -> None:
    plan = write_plan(
        tmp_path,
        [
            coding_task("early", ["replace-line", "shared.txt", 2, "TWO (early)"]),
            coding_task("late", ["sleep", 1.0], ["replace-line", "shared.txt", 2, "2 (late)"]),
            coding_task("after-late", ["write", "x.txt", "x"], needs=["late"]),
        ],
    )
    state = tmp_path / "state"
    code, seen = run(plan, state)
    assert code == 1
    assert show(repo, INTEGRATION, "shared.txt") == "one\nTWO (early)\nthree"
    (conflict,) = seen.kinds("merge_conflict")
    kept_tree = state / "worktrees" / "run-1" / "late-1"
    diff = state / "worktrees" / "run-1" / "late-1.conflict.diff"
    assert conflict.task == "late"
    assert conflict.data["paths"] == ["shared.txt"]
    assert conflict.data["diff_path"] == str(diff)
    assert conflict.data["worktree"] == str(kept_tree)
    (failed,) = seen.kinds("task_failed")
    assert failed.task == "late"
    assert "merge conflict" in failed.data["error"] and "shared.txt" in failed.data["error"]
    assert str(diff) in failed.data["error"]
    assert [e.task for e in seen.kinds("task_blocked")] == ["after-late"]
    # A merge conflict on the files, open, and gone up the escalation ladder.
    (detected,) = seen.kinds("conflict_detected")
    assert detected.data["conflict_kind"] == "merge" and detected.data["key"] == "files:shared.txt"
    assert detected.data["status"] == "open" and detected.data["tasks"] == ["late"]
    opened = [e.data["subject"] for e in seen.kinds("escalation_opened")]
    assert opened == ["conflict:1", "dependency:late"]  # late failed: after-late is blocked
    # The task's diff, its worktree (with its work committed) and its branch are kept.
    text = diff.read_text()
    assert "-two" in text and "+2 (late)" in text and "shared.txt" in text
    assert (kept_tree / "shared.txt").read_text() == "one\n2 (late)\nthree\n"
    assert git(kept_tree, "status", "--porcelain") == ""
    assert show(repo, "counterpoint/run-1-tasks/late-1", "shared.txt") == "one\n2 (late)\nthree"
    # The merge was aborted: the integration branch's history has no trace of late.
    assert "late" not in git(repo, "log", "--format=%s", INTEGRATION)
    assert worktrees(repo) == [
        repo.resolve(),
        kept_tree.resolve(),
    ]
    assert branches(repo) == {"main", INTEGRATION, "counterpoint/run-1-tasks/late-1"}
    # `logs` shows the error too.
    result = cli("logs", "late", "--state", state)
    assert "merge conflict with counterpoint/run-1 in shared.txt" in result.stdout, result


def test_a_failed_task_keeps_its_worktree_and_branch_and_merges_nothing(
    tmp_path: Path, repo: Path
) -> None:
    plan = write_plan(
        tmp_path,
        [
            coding_task("fine", ["write", "fine.txt", "ok"]),
            coding_task("broken", ["write", "half.txt", "half done"], ["fail", "boom"]),
        ],
    )
    state = tmp_path / "state"
    code, seen = run(plan, state)
    assert code == 1
    (failed,) = seen.kinds("task_failed")
    assert failed.task == "broken" and "boom" in failed.data["error"]
    kept = state / "worktrees" / "run-1" / "broken-1"
    assert (kept / "half.txt").read_text() == "half done\n"
    assert git(kept, "status", "--porcelain") == "?? half.txt"  # left as the agent left it
    assert worktrees(repo) == [repo.resolve(), kept.resolve()]
    assert branches(repo) == {"main", INTEGRATION, "counterpoint/run-1-tasks/broken-1"}
    assert "half.txt" not in git(repo, "ls-tree", "--name-only", INTEGRATION)
    assert show(repo, INTEGRATION, "fine.txt") == "ok"


def test_success_removes_every_task_worktree_and_branch(tmp_path: Path, repo: Path) -> None:
    plan = write_plan(
        tmp_path,
        [coding_task(f"t{i}", ["write", f"f{i}.txt", str(i)]) for i in range(4)],
    )
    state = tmp_path / "state"
    code, seen = run(plan, state)
    assert code == 0, seen.events
    assert worktrees(repo) == [repo.resolve()]
    assert branches(repo) == {"main", INTEGRATION}
    assert sorted(p.name for p in (state / "worktrees" / "run-1").iterdir()) == ["run.json"]
    # The integration branch is free: the user can check it out.
    git(repo, "checkout", "--quiet", INTEGRATION)
    assert sorted(p.name for p in repo.glob("f*.txt")) == [f"f{i}.txt" for i in range(4)]


# -- resume and repeated runs --------------------------------------------------------------


def test_resume_reuses_the_integration_branch(tmp_path: Path, repo: Path) -> None:
    flag = tmp_path / "go"
    plan = write_plan(
        tmp_path,
        [
            coding_task("first", ["append-line", "shared.txt", "first"]),
            coding_task(
                "second",
                ["require", str(flag)],
                ["require", "shared.txt", "first"],  # first's merged work
                ["append-line", "shared.txt", "second"],
                needs=["first"],
            ),
        ],
    )
    state = tmp_path / "state"
    code, _ = run(plan, state)
    assert code == 1
    merged_first = git(repo, "rev-parse", INTEGRATION)
    flag.write_text("go")
    code, again = resume(state, retry_failed=True)
    assert code == 0, again.events
    assert [e.data["branch"] for e in again.kinds("integration_branch")] == [INTEGRATION]
    assert git(repo, "merge-base", "--is-ancestor", merged_first, INTEGRATION) == ""
    assert show(repo, INTEGRATION, "shared.txt") == "one\ntwo\nthree\nfirst\nsecond"
    assert branches(repo) == {"main", INTEGRATION, "counterpoint/run-1-tasks/second-1"}
    assert git(repo, "log", "--format=%s", "--grep=merge task second", INTEGRATION) == (
        "counterpoint: merge task second (attempt 2)"
    )


def test_a_new_run_never_reuses_an_earlier_runs_branch(tmp_path: Path, repo: Path) -> None:
    plan = write_plan(tmp_path, [coding_task("t", ["append-line", "shared.txt", "again"])])
    assert run(plan, tmp_path / "state-1")[0] == 0
    first = git(repo, "rev-parse", INTEGRATION)
    code, seen = run(plan, tmp_path / "state-2")  # run 1 of another state directory
    assert code == 0
    assert [e.data["branch"] for e in seen.kinds("integration_branch")] == ["counterpoint/run-1-2"]
    assert git(repo, "rev-parse", INTEGRATION) == first
    assert show(repo, "counterpoint/run-1-2", "shared.txt") == "one\ntwo\nthree\nagain"


def test_the_manager_recovers_from_leftovers_of_a_crash(tmp_path: Path, repo: Path) -> None:
    state = tmp_path / "state"
    manager = WorktreeManager(repo, state, 7)
    path = manager.prepare("t", 1)
    (path / "junk.txt").write_text("from the crashed attempt")
    again = WorktreeManager(repo, state, 7)  # a resumed run: same attempt prepared again
    assert again.prepare("t", 1) == path
    assert not (path / "junk.txt").exists()
    assert again.branch == "counterpoint/run-7"
    (path / "new.txt").write_text("new\n")
    # A merge interrupted half way through leaves the integration worktree dirty.
    integ = again.integration_dir
    git(repo, "worktree", "add", "--quiet", str(integ), again.branch)
    (integ / "shared.txt").write_text("dirty\n")
    result = again.merge("t", 1)
    assert result.merged and result.commit is not None
    assert show(repo, "counterpoint/run-7", "new.txt") == "new"
    assert show(repo, "counterpoint/run-7", "shared.txt") == "one\ntwo\nthree"


def test_merge_conflict_is_structured_for_policies(tmp_path: Path, repo: Path) -> None:
    manager = WorktreeManager(repo, tmp_path / "state", 1)
    a, b = manager.prepare("a", 1), manager.prepare("b", 3)
    (a / "shared.txt").write_text("A\n")
    (b / "shared.txt").write_text("B\n")
    (b / "other.txt").write_text("fine\n")
    assert manager.finish("a", 1, succeeded=True).merged
    result = manager.finish("b", 3, succeeded=True)
    conflict = result.conflict
    assert isinstance(conflict, MergeConflict) and not result.merged
    assert result.error == conflict.message
    assert conflict.paths == ("shared.txt",)
    assert (conflict.task, conflict.attempt, conflict.branch) == (
        "b",
        3,
        "counterpoint/run-1-tasks/b-3",
    )
    assert conflict.base == git(repo, "rev-parse", "main")
    assert conflict.ours == git(repo, "rev-parse", INTEGRATION)
    assert conflict.theirs == git(repo, "rev-parse", conflict.branch)
    assert manager.conflicts == {"b": conflict}
    assert "other.txt" not in conflict.diff_path.read_text()  # only the conflicting paths
    assert conflict.worktree.is_dir()
    assert slug("a/b:c", 2).endswith("-2") and "/" not in slug("a/b:c", 2)


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("none", "is not in a git repository"),
        ("empty", "has no commit yet"),
        ("missing", "does not exist"),
    ],
)
def test_a_plan_without_a_usable_repository_is_refused_with_exit_2(
    tmp_path: Path, setup: str, expected: str
) -> None:
    folder = tmp_path / "repo"
    if setup == "none":
        folder.mkdir()
    elif setup == "empty":
        folder.mkdir()
        git(folder, "init", "--quiet")
    plan = write_plan(tmp_path, [coding_task("t", ["write", "x", "y"])])
    result = cli("run", plan, "--state", tmp_path / "state", "--quiet")
    assert result.code == 2, result
    assert "agent 'coder': workspace: worktree needs a git repository" in result.stderr
    assert expected in result.stderr, result
    assert not (tmp_path / "state" / "state.db").exists()


def test_a_runner_cwd_is_refused(tmp_path: Path, repo: Path) -> None:
    plan_path = write_plan(tmp_path, [coding_task("t", ["write", "x", "y"])])
    spec = yaml.safe_load(plan_path.read_text())
    spec["agents"]["coder"]["runner"] = {"shell": "true", "cwd": "."}
    plan_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(WorktreeError, match="cannot set cwd"):
        check_worktree_agent(load_plan(plan_path), "coder")
    spec["agents"]["coder"]["runner"] = {"remote": True}  # remote agents are fine
    plan_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    check_worktree_agent(load_plan(plan_path), "coder")
