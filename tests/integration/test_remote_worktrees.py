"""``workspace: worktree`` for remote agents, with real git over the server's HTTP endpoint:
each attempt on its own branch in the agent's own clone, pushed back and merged by the
run; a merge conflict kept with its diff; an agent never reaches another's branches."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from run_helpers import PY, Background, cli, wait_for
from test_worktrees import FAKE, branches, coding_task, git, make_repo, show

from counterpoint.net.tokens import TokenStore

INTEGRATION = "counterpoint/run-1"


def remote_plan(folder: Path, tasks: list[dict[str, Any]], agents: tuple[str, ...]) -> Path:
    plan: dict[str, Any] = {
        "version": 1,
        "name": "remote-worktrees",
        "defaults": {"retries": 0, "timeout": "60s", "estimate": "1m"},
        "settings": {"repository": "repo", "heartbeat": "1s"},
        "agents": {
            name: {
                "capabilities": ["code"],
                "capacity": 2,
                "workspace": "worktree",
                "runner": {"remote": True},
            }
            for name in agents
        },
        "phases": [{"id": "p", "milestones": [{"id": "m", "tasks": tasks}]}],
    }
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


class Served:
    """A served run of ``plan`` and the remote agents started for it."""

    def __init__(self, folder: Path, plan: Path, agents: tuple[str, ...]) -> None:
        self.folder = folder
        self.state = folder / "state"
        store = TokenStore(self.state)  # a served run needs its agents' tokens first
        self.tokens = {name: store.create(name) for name in agents}
        self.run = Background(
            folder, "run", plan, "--state", self.state, "--serve", "--port", "0", "--json"
        )
        self.url = wait_for(self._url, what="the hub to listen")
        self.agents: list[Background] = []

    def _url(self) -> str | None:
        for line in self.run.out_path.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "hub_listening":
                return str(event["url"])
        if not self.run.running():
            raise AssertionError(f"the run ended before listening: {self.run.wait(1)}")
        return None

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://")

    def agent(self, name: str) -> str:
        token = self.tokens[name]
        self.agents.append(
            Background(
                self.folder,
                "agent",
                "--connect",
                self.url,
                "--id",
                name,
                "--token",
                token,
                "--capabilities",
                "code",
                "--capacity",
                "2",
                "--state",
                self.folder / f"agent-{name}",
                "--once",
                "--",
                PY,
                str(FAKE),
            )
        )
        return token

    def stop(self) -> None:
        for proc in [*self.agents, self.run]:
            proc.stop()


def test_remote_agents_work_on_their_own_branches_and_the_run_merges_them(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "1\n2\n3\n", "b.txt": "x\n"})
    main_before = git(repo, "rev-parse", "main")
    plan = remote_plan(
        tmp_path,
        [
            coding_task("first", ["replace-line", "a.txt", "1", "one"]),
            coding_task("third", ["replace-line", "a.txt", "3", "three"]),
            coding_task(
                "then", ["require", "a.txt", "one"], ["write", "b.txt", "y"], needs=["first"]
            ),
        ],
        ("alpha", "beta"),
    )
    served = Served(tmp_path, plan, ("alpha", "beta"))
    try:
        served.agent("alpha")
        served.agent("beta")
        result = served.run.wait(timeout=60)
    finally:
        served.stop()
    assert result.code == 0, str(result)
    assert show(repo, INTEGRATION, "a.txt") == "one\n2\nthree"
    assert show(repo, INTEGRATION, "b.txt") == "y"
    assert git(repo, "rev-parse", "main") == main_before  # the user's branch is untouched
    merges = git(repo, "log", "--merges", "--format=%s", INTEGRATION).splitlines()
    assert sorted(merges) == [
        f"counterpoint: merge task {t} (attempt 1)" for t in ("first", "then", "third")
    ]
    assert branches(repo) == {"main", INTEGRATION}  # task branches go after their merge
    exchange = tmp_path / "state" / "worktrees" / "run-1" / "exchange"
    for name in ("alpha", "beta"):
        left = git(exchange / f"{name}.git", "for-each-ref", "refs/heads/")
        assert left == ""
    started = [json.loads(x) for x in result.stdout.splitlines()]
    ran_on = {e["task"]: e["agent"] for e in started if e["event"] == "task_started"}
    assert set(ran_on) == {"first", "third", "then"}
    for name in set(ran_on.values()):  # each agent's worktrees are gone after its pushes
        assert list((tmp_path / f"agent-{name}" / "worktrees").iterdir()) == []


def test_a_remote_merge_conflict_is_kept_with_its_diff(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "1\n2\n3\n"})
    plan = remote_plan(
        tmp_path,
        [
            coding_task("early", ["replace-line", "a.txt", "2", "early"]),
            coding_task("late", ["sleep", "0.8"], ["replace-line", "a.txt", "2", "late"]),
        ],
        ("alpha",),
    )
    served = Served(tmp_path, plan, ("alpha",))
    try:
        served.agent("alpha")
        result = served.run.wait(timeout=30)
    finally:
        served.stop()
    assert result.code == 1, str(result)  # late's work could not be merged: it failed
    (failed,) = [json.loads(x) for x in result.stdout.splitlines() if '"task_failed"' in x]
    assert failed["task"] == "late" and "merge conflict" in failed["error"]
    conflicts = json.loads(cli("conflicts", "--json", "--state", served.state).stdout)
    (conflict,) = conflicts["conflicts"]
    assert conflict["kind"] == "merge" and conflict["key"] == "files:a.txt"
    assert show(repo, INTEGRATION, "a.txt") == "1\nearly\n3"
    diff = tmp_path / "state" / "worktrees" / "run-1" / "late-1.conflict.diff"
    assert "+late" in diff.read_text()
    assert f"{INTEGRATION}-tasks/late-1" in branches(repo)  # the work is kept


def _get(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_agent_reaches_only_its_own_exchange_repository(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo")
    plan = remote_plan(
        tmp_path,
        [coding_task("slow", ["sleep", "3"], ["write", "s.txt", "s"])],
        ("alpha", "beta"),
    )
    served = Served(tmp_path, plan, ("alpha", "beta"))
    try:
        token = served.agent("alpha")
        beta = served.tokens["beta"]
        refs = "/info/refs?service=git-upload-pack"
        exchange = tmp_path / "state" / "worktrees" / "run-1" / "exchange" / "alpha.git"
        wait_for(lambda: exchange.is_dir(), what="alpha's exchange repository")
        assert _get(served.http + "/git/alpha" + refs, token) == 200
        assert _get(served.http + "/git/alpha" + refs, beta) == 401
        assert _get(served.http + "/git/alpha" + refs, None) == 401
        assert _get(served.http + "/git/beta" + refs, beta) == 404  # beta has no branches
        assert _get(served.http + "/git/alpha/config", token) == 404  # smart HTTP only
        clone = subprocess.run(
            ["git", "ls-remote", served.http + "/git/alpha"],
            capture_output=True,
            text=True,
            check=False,
            env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"},
        )
        assert clone.returncode != 0  # no token: git is refused too
        result = served.run.wait(timeout=30)
    finally:
        served.stop()
    assert result.code == 0, str(result)
