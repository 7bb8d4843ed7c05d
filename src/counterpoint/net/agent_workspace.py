"""The remote agent's side of ``workspace: worktree``: a worktree per attempt, pushed back.

An assignment whose payload has a ``workspace`` of kind ``worktree`` names a branch of
the run and the agent's git endpoint on the server (``/git/AGENT``). The agent keeps a
bare mirror under its state folder, fetches the branch into it, runs the task in a new
worktree of it, commits whatever the task left, pushes the branch back and reports the
commit in its result (``result["workspace"]["commit"]``); the run engine merges it.
The worktree is removed after a successful push and kept after a failure. Git gets the
agent's token as an ``Authorization`` header through its environment, never on its
command line.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from counterpoint.agents.base import TaskFailed
from counterpoint.agents.worktree import WorktreeError, commit_all, git, slug


def http_base(ws_url: str) -> str:
    """``ws://host:port/...`` -> ``http://host:port`` (``wss`` -> ``https``)."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class AgentWorkspaces:
    """Worktrees of one remote agent, in ``state_dir/worktrees``, from ``state_dir/repo.git``."""

    def __init__(self, ws_url: str, token: str, state_dir: Path, tls_ca: str | None = None) -> None:
        self.base = http_base(ws_url)
        self.mirror = state_dir / "repo.git"
        self.root = state_dir / "worktrees"
        self._lock = threading.Lock()
        self._auth = {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {token}",
        }
        if tls_ca:  # a wss:// hub whose certificate a private CA signed
            self._auth["GIT_SSL_CAINFO"] = str(Path(tls_ca).resolve())

    def _git(self, *args: str, cwd: Path) -> str:
        return git(*args, cwd=cwd, env=self._auth).stdout.strip()

    @staticmethod
    def _spec(spec: dict[str, Any]) -> tuple[str, str]:
        if spec.get("error"):
            raise TaskFailed(str(spec["error"]))
        repository, branch = spec.get("repository"), spec.get("branch")
        if not isinstance(repository, str) or not isinstance(branch, str):
            raise TaskFailed(f"the hub sent a workspace without repository and branch: {spec}")
        return repository, branch

    def checkout(self, task: str, attempt: int, spec: dict[str, Any]) -> Path:
        """Fetch the attempt's branch and make its worktree; TaskFailed when git fails."""
        repository, branch = self._spec(spec)
        with self._lock:  # attempts run side by side; their mirror is one repository
            return self._checkout(task, attempt, repository, branch)

    def _checkout(self, task: str, attempt: int, repository: str, branch: str) -> Path:
        try:
            if not (self.mirror / "HEAD").exists():
                self.mirror.mkdir(parents=True, exist_ok=True)
                self._git("init", "--quiet", "--bare", str(self.mirror), cwd=self.mirror)
            self._git(
                "fetch",
                "--quiet",
                "--no-tags",
                self.base + repository,
                f"+refs/heads/{branch}:refs/heads/{branch}",
                cwd=self.mirror,
            )
            path = self.root / slug(task, attempt)
            if path.exists():  # left by an agent that stopped mid-attempt
                shutil.rmtree(path, ignore_errors=True)
                self._git("worktree", "prune", cwd=self.mirror)
            self.root.mkdir(parents=True, exist_ok=True)
            self._git("worktree", "add", "--quiet", "--force", str(path), branch, cwd=self.mirror)
        except WorktreeError as exc:
            raise TaskFailed(f"could not check out the task's branch {branch}: {exc}") from None
        return path

    def push(self, task: str, attempt: int, spec: dict[str, Any], path: Path) -> dict[str, str]:
        """Commit what the attempt left, push the branch back; what the result reports."""
        repository, branch = self._spec(spec)
        try:
            head = commit_all(path, f"counterpoint: task {task} (attempt {attempt})")
            self._git(
                "push",
                "--quiet",
                "--force",
                self.base + repository,
                f"{head}:refs/heads/{branch}",
                cwd=path,
            )
        except WorktreeError as exc:
            raise TaskFailed(f"could not push the task's branch {branch}: {exc}") from None
        self.remove(path, branch)
        return {"branch": branch, "commit": head}

    def remove(self, path: Path, branch: str) -> None:
        with self._lock:
            git("worktree", "remove", "--force", str(path), cwd=self.mirror, check=False)
            git("branch", "-D", branch, cwd=self.mirror, check=False)
