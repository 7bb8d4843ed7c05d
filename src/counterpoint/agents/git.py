"""Git for worktree workspaces: running git, finding the repository, small operations.

Every git failure is a :class:`WorktreeError` naming the command, the folder and git's
own message. Git runs without a terminal, editor or prompt, and never sees variables
that would point it at another repository than the one asked for.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from counterpoint.errors import CounterpointError

if TYPE_CHECKING:
    from counterpoint.plan.model import Plan

BRANCH_PREFIX = "counterpoint/run-"
AUTHOR = ("counterpoint", "counterpoint@localhost")
INTEGRATION = "integration"
EXCHANGE = "exchange"
RECORD = "run.json"
STDERR_CHARS = 800
UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: Variables that would point git at another repository, index or work tree than ours.
_GIT_LOCATION_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)


class WorktreeError(CounterpointError):
    """A git worktree could not be set up, committed, merged or removed (git's message)."""


# -- git -----------------------------------------------------------------------------------


def _env(identity: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_MERGE_AUTOEDIT="no", GIT_EDITOR="true")
    env.update(extra or {})
    if identity:
        name, email = AUTHOR
        env.update(
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=email,
        )
    return env


def git(
    *args: str,
    cwd: Path,
    check: bool = True,
    identity: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``git ARGS`` in ``cwd``; with ``check`` a failure raises :class:`WorktreeError`.

    ``identity`` commits as ``counterpoint <counterpoint@localhost>``; ``env`` adds
    variables (never shown in git's messages).
    """
    command = ["git", "-c", "commit.gpgsign=false", *args]
    try:
        proc = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=_env(identity, env),
            check=False,
        )
    except FileNotFoundError as exc:
        missing = "git is not installed" if exc.filename == "git" else f"{cwd} does not exist"
        raise WorktreeError(f"cannot run `git {' '.join(args)}`: {missing}") from None
    except OSError as exc:
        raise WorktreeError(f"cannot run `git {' '.join(args)}` in {cwd}: {exc}") from None
    if check and proc.returncode != 0:
        raise WorktreeError(_failure(args, cwd, proc))
    return proc


def _failure(args: tuple[str, ...], cwd: Path, proc: subprocess.CompletedProcess[str]) -> str:
    said = (proc.stderr.strip() or proc.stdout.strip() or "no message")[-STDERR_CHARS:]
    return f"`git {' '.join(args)}` failed in {cwd} (exit {proc.returncode}): {said}"


def _out(*args: str, cwd: Path) -> str:
    return git(*args, cwd=cwd).stdout.strip()


def _ok(*args: str, cwd: Path) -> bool:
    return git(*args, cwd=cwd, check=False).returncode == 0


# -- the repository ------------------------------------------------------------------------


def repository_folder(plan: Plan) -> Path:
    """The folder ``settings.repository`` names (relative to the plan), or the plan's folder."""
    plan_dir = (plan.source_path or Path("plan.yaml")).resolve().parent
    if plan.settings.repository:
        return (plan_dir / plan.settings.repository).resolve()
    return plan_dir


def find_repository(folder: Path) -> Path:
    """The top of the git working tree holding ``folder``; refuses anything worktrees can't use."""
    hint = "set settings.repository to a git repository's folder (relative to the plan)"
    if not folder.is_dir():
        raise WorktreeError(f"the repository folder {folder} does not exist ({hint})")
    top = git("rev-parse", "--show-toplevel", cwd=folder, check=False)
    if top.returncode != 0:
        bare = git("rev-parse", "--is-bare-repository", cwd=folder, check=False)
        if bare.returncode == 0 and bare.stdout.strip() == "true":
            raise WorktreeError(
                f"{folder} is a bare git repository; point settings.repository at a clone "
                "with a working tree"
            )
        raise WorktreeError(f"{folder} is not in a git repository ({hint})")
    repo = Path(top.stdout.strip()).resolve()
    if not _ok("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=repo):
        raise WorktreeError(
            f"the git repository {repo} has no commit yet: worktrees start from a commit, "
            "so commit something first"
        )
    return repo


def check_worktree_agent(plan: Plan, agent: str) -> None:
    """Refuse, before a run starts, a ``workspace: worktree`` agent that cannot work.

    The repository must exist, be a git working tree and have a commit; a shell runner
    must run in the worktree (no ``cwd``). A remote agent gets its task branch over the
    server's git endpoint and works in a worktree of its own clone (see
    :meth:`WorktreeManager.prepare_remote`).
    """
    spec = plan.agents[agent].runner
    if spec is not None and spec.cwd is not None:
        raise WorktreeError(
            f"agent {agent!r}: workspace: worktree runs each task in its own worktree, "
            "so its runner cannot set cwd"
        )
    try:
        find_repository(repository_folder(plan))
    except WorktreeError as exc:
        raise WorktreeError(
            f"agent {agent!r}: workspace: worktree needs a git repository with a commit: {exc}"
        ) from None


def commit_all(path: Path, message: str) -> str:
    """Commit everything left in the worktree at ``path``; the commit its HEAD is then at."""
    if git("status", "--porcelain", "--untracked-files=all", cwd=path).stdout.strip():
        git("add", "--all", cwd=path)
        git("commit", "--quiet", "--no-verify", "-m", message, cwd=path, identity=True)
    return _out("rev-parse", "HEAD", cwd=path)


def slug(task: str, attempt: int) -> str:
    """``TASK-ATTEMPT``, safe as a folder and a branch name (an altered id gets a hash)."""
    safe = UNSAFE.sub("_", task).replace("..", "_.")
    if safe != task:
        safe = f"{safe}-{hashlib.sha1(task.encode()).hexdigest()[:8]}"
    return f"{safe}-{attempt}"


def copy_included(
    repo: Path, worktree: Path, include: str, skip: tuple[Path, ...] = ()
) -> list[str]:
    """Copy into ``worktree`` the untracked files of ``repo``'s checkout that the include
    file (relative to the repository's top) lists: globs, one a line, ``#`` comments.

    Tracked files are never copied (the worktree has them, as committed); a pattern that
    matches nothing is fine; a missing include file is an error.
    """
    listing = repo / include
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WorktreeError(
            f"cannot read the include file {listing} (settings.worktree.include): "
            f"{exc.strerror or exc}"
        ) from None
    tracked = set(git("ls-files", "-z", cwd=repo).stdout.split("\0"))
    copied: list[str] = []
    for pattern in (line.strip() for line in lines):
        if not pattern or pattern.startswith("#"):
            continue
        for found in sorted(repo.glob(pattern.lstrip("/"))):
            rel = found.relative_to(repo).as_posix()
            if not found.is_file() or rel in tracked or rel.split("/")[0] == ".git":
                continue
            if any(found.resolve().is_relative_to(s) for s in skip):
                continue  # the run's own state (worktrees) when it is inside the repository
            target = worktree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, target)
            copied.append(rel)
    return copied
