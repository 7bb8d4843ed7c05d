"""Git worktree workspaces: every task attempt in its own worktree and branch, merged back.

An agent with ``workspace: worktree`` runs each attempt of a task in a git worktree of
the plan's repository (``settings.repository``, default: the repository holding the
plan file), on a branch of its own, created from the run's **integration branch**
``counterpoint/run-N``. The integration branch starts at the repository's ``HEAD`` when
the run first needs a worktree; the user's checked-out branch and working tree are never
touched. When an attempt succeeds, whatever it left uncommitted is committed on its
branch and the branch is merged (``git merge --no-ff``) into the integration branch, in
a worktree of its own. A task starts only after its dependencies completed, and they
completed only once merged, so every worktree starts from a state that holds its
dependencies' work, and branches merge in dependency order.

A merge that conflicts is aborted: the integration branch stays as it was, the task's
branch and worktree are kept, and the task's diff of the conflicting paths is written
next to them; the attempt fails with a :class:`MergeConflict` that says all of it.
Worktrees are removed after a successful merge and kept after a failure.

Layout (``STATE`` is the run's state directory)::

    STATE/worktrees/run-N/run.json                   the repository, branch and base commit
    STATE/worktrees/run-N/integration/               the integration branch's worktree
    STATE/worktrees/run-N/TASK-ATTEMPT/              a task attempt's worktree
    STATE/worktrees/run-N/TASK-ATTEMPT.conflict.diff a conflicting attempt's diff
    STATE/worktrees/run-N/exchange/AGENT.git/        a remote agent's exchange repository

Every git failure is a :class:`WorktreeError` naming the command, the folder and git's
own message. Git runs synchronously: each call takes milliseconds on a small repository,
but ``git worktree add`` checks out the whole tree, which takes as long as on any clone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from counterpoint.errors import CounterpointError

if TYPE_CHECKING:
    from counterpoint.plan.model import Plan

log = logging.getLogger("counterpoint.run")

BRANCH_PREFIX = "counterpoint/run-"
AUTHOR = ("counterpoint", "counterpoint@localhost")
INTEGRATION = "integration"
EXCHANGE = "exchange"
RECORD = "run.json"
STDERR_CHARS = 800
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
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
    safe = _UNSAFE.sub("_", task).replace("..", "_.")
    if safe != task:
        safe = f"{safe}-{hashlib.sha1(task.encode()).hexdigest()[:8]}"
    return f"{safe}-{attempt}"


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeConflict:
    """A task's branch could not be merged: its changes and the integration's overlap.

    The merge was aborted (the integration branch is as before); ``branch`` and
    ``worktree`` are kept, and ``diff_path`` holds the task's changes to ``paths`` since
    ``base``. ``ours`` is the integration branch's commit, ``theirs`` the task's.
    """

    task: str
    attempt: int
    paths: tuple[str, ...]
    diff_path: Path
    branch: str
    worktree: Path
    integration: str
    base: str
    ours: str
    theirs: str

    @property
    def message(self) -> str:
        return (
            f"merge conflict with {self.integration} in {', '.join(self.paths)}: "
            f"the diff is kept in {self.diff_path}, the task's work on branch "
            f"{self.branch} (worktree {self.worktree})"
        )

    def event(self) -> dict[str, Any]:
        """The fields of the ``merge_conflict`` event."""
        return {
            "paths": list(self.paths),
            "diff_path": str(self.diff_path),
            "branch": self.branch,
            "worktree": str(self.worktree),
            "integration": self.integration,
            "attempt": self.attempt,
        }


@dataclass(frozen=True)
class MergeResult:
    """What became of a successful attempt's branch.

    ``commit`` is the merge commit on the integration branch (None when the attempt
    changed nothing, or did not merge); ``conflict`` is set when the merge conflicted,
    ``error`` whenever the attempt must count as failed (a conflict or a git failure).
    """

    task: str
    attempt: int
    commit: str | None = None
    conflict: MergeConflict | None = None
    error: str | None = None

    @property
    def merged(self) -> bool:
        return self.error is None


# -- the manager ---------------------------------------------------------------------------


@dataclass
class _Started:
    repo: Path
    branch: str
    base: str


class WorktreeManager:
    """The worktrees and branches of one run in one repository.

    ``repo`` is a folder inside the repository (its top is found when first needed).
    Nothing touches git before the first :meth:`prepare`; on resume the integration
    branch recorded under ``STATE/worktrees/run-N/run.json`` is reused.
    """

    def __init__(self, repo: Path, state_dir: Path, run_id: int) -> None:
        self.folder = Path(repo)
        self.state_dir = Path(state_dir)
        self.run_id = run_id
        self.root = self.state_dir / "worktrees" / f"run-{run_id}"
        self._started: _Started | None = None
        #: Attempts with a worktree (task id -> attempt number).
        self.prepared: dict[str, int] = {}
        #: Attempts whose worktree could not be made ((task, attempt) -> why).
        self.unprepared: dict[tuple[str, int], str] = {}
        #: The latest merge conflict of each task.
        self.conflicts: dict[str, MergeConflict] = {}
        #: Attempts given to remote agents: task id -> (attempt, agent).
        self.remote: dict[str, tuple[int, str]] = {}

    # -- the integration branch ----------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started is not None

    @property
    def repo(self) -> Path:
        return self.start().repo

    @property
    def branch(self) -> str:
        """The integration branch: ``counterpoint/run-N`` (``-2``, ... when that was taken)."""
        return self.start().branch

    @property
    def base(self) -> str:
        """The commit the integration branch started from."""
        return self.start().base

    @property
    def integration_dir(self) -> Path:
        return self.root / INTEGRATION

    def start(self) -> _Started:
        """Create the integration branch at the repository's HEAD, or reuse the run's."""
        if self._started is not None:
            return self._started
        repo = find_repository(self.folder)
        record = self.root / RECORD
        if record.exists():
            started = self._reuse(repo, record)
        else:
            base = _out("rev-parse", "--verify", "HEAD^{commit}", cwd=repo)
            branch = self._free_branch_name(repo)
            git("branch", "--no-track", branch, base, cwd=repo)
            self.root.mkdir(parents=True, exist_ok=True)
            data = {"repository": str(repo), "branch": branch, "base": base}
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            tmp.replace(record)
            started = _Started(repo, branch, base)
        self._started = started
        return started

    def _reuse(self, repo: Path, record: Path) -> _Started:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            recorded, branch, base = Path(data["repository"]), data["branch"], data["base"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WorktreeError(f"cannot read {record}: {exc}") from None
        if recorded != repo:
            raise WorktreeError(
                f"run {self.run_id} started its worktrees in {recorded}, "
                f"but the plan's repository is now {repo}"
            )
        if not _ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repo):
            raise WorktreeError(
                f"the run's integration branch {branch} is gone from {repo}: it held the "
                "work of every task merged so far; restore it (git branch) to resume"
            )
        return _Started(repo, str(branch), str(base))

    def _free_branch_name(self, repo: Path) -> str:
        """``counterpoint/run-N``, or ``-2``, ``-3``... if an earlier run (with another
        state directory) left a branch of that name or its task branches."""
        stem = f"{BRANCH_PREFIX}{self.run_id}"
        taken = set(
            _out(
                "for-each-ref", "--format=%(refname:short)", "refs/heads/counterpoint/", cwd=repo
            ).splitlines()
        )
        name, n = stem, 1
        while name in taken or any(b.startswith(f"{name}-tasks/") for b in taken):
            n += 1
            name = f"{stem}-{n}"
        return name

    def task_branch(self, task: str, attempt: int) -> str:
        return f"{self.branch}-tasks/{slug(task, attempt)}"

    def worktree(self, task: str, attempt: int) -> Path:
        return self.root / slug(task, attempt)

    # -- attempts ------------------------------------------------------------------------------

    def prepare(self, task: str, attempt: int) -> Path:
        """A new worktree for the attempt, on a new branch from the integration branch's tip."""
        started = self.start()
        path = self.worktree(task, attempt)
        branch = self.task_branch(task, attempt)
        # Left by a run that stopped before the journal recorded this attempt: start afresh.
        self._remove(path, branch, quiet=True)
        self.root.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--quiet", "-b", branch, str(path), started.branch, cwd=started.repo)
        self.prepared[task] = attempt
        return path

    def workdir(self, task: str, attempt: int) -> Path:
        """:meth:`prepare`, but a failure is recorded instead of raised (see :meth:`finish`).

        The path returned then does not exist, so a shell agent cannot start in it.
        """
        try:
            return self.prepare(task, attempt)
        except WorktreeError as exc:
            self.unprepared[(task, attempt)] = f"could not prepare the task's worktree: {exc}"
            return self.root / f"{slug(task, attempt)}.unprepared"

    def holds(self, task: str, attempt: int) -> bool:
        """True when the attempt ran (or was meant to run) in a worktree of this run."""
        return (
            self.prepared.get(task) == attempt
            or (task, attempt) in self.unprepared
            or self.remote.get(task, (None,))[0] == attempt
        )

    # -- remote agents ---------------------------------------------------------------------

    @property
    def exchange_root(self) -> Path:
        """The folder of the agents' exchange repositories (served at ``/git/AGENT.git``)."""
        return self.root / EXCHANGE

    def exchange_path(self, agent: str) -> Path:
        return self.exchange_root / f"{_UNSAFE.sub('_', agent)}.git"

    def exchange(self, agent: str) -> Path:
        """``agent``'s own bare repository, through which it fetches and pushes its branches.

        It borrows the plan repository's objects (``objects/info/alternates``), so making
        it copies nothing; what an agent pushes lands there, never in the plan's
        repository, and only the branch of an attempt given to that agent is fetched back.
        """
        path = self.exchange_path(agent)
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True)
            git("init", "--quiet", "--bare", str(path), cwd=path)
            common = Path(_out("rev-parse", "--git-common-dir", cwd=self.repo))
            objects = (common if common.is_absolute() else self.repo / common).resolve()
            (path / "objects" / "info" / "alternates").write_text(
                f"{objects / 'objects'}\n", encoding="utf-8"
            )
            git("config", "receive.denyDeletes", "true", cwd=path)
            git("config", "http.receivepack", "true", cwd=path)  # the server authenticates
        return path

    def prepare_remote(self, task: str, attempt: int, agent: str) -> dict[str, Any]:
        """A branch for an attempt a remote agent runs: what its assignment carries.

        The branch starts at the integration branch's tip, in the plan's repository and in
        the agent's exchange repository; the agent fetches it, works in a worktree of its
        own and pushes the branch back (``counterpoint agent`` does all of it).
        """
        started = self.start()
        branch = self.task_branch(task, attempt)
        tip = _out("rev-parse", f"refs/heads/{started.branch}", cwd=started.repo)
        git("branch", "--force", "--no-track", branch, tip, cwd=started.repo)
        exchange = self.exchange(agent)
        git("update-ref", f"refs/heads/{branch}", tip, cwd=exchange)
        self.remote[task] = (attempt, agent)
        return {
            "kind": "worktree",
            "repository": f"/git/{quote(agent, safe='')}",
            "branch": branch,
            "base": tip,
        }

    def _fetch_remote(self, task: str, attempt: int, agent: str, commit: str | None) -> None:
        """Bring the branch the agent pushed into the plan's repository (checked first)."""
        branch = self.task_branch(task, attempt)
        exchange = self.exchange(agent)
        pushed = git(
            "rev-parse",
            "--verify",
            "--quiet",
            f"refs/heads/{branch}^{{commit}}",
            cwd=exchange,
            check=False,
        )
        if pushed.returncode != 0:
            raise WorktreeError(f"agent {agent!r} did not push the branch {branch}")
        head = pushed.stdout.strip()
        if commit is not None and commit != head:
            raise WorktreeError(
                f"agent {agent!r} reported commit {commit[:12]} but its branch {branch} is "
                f"at {head[:12]}"
            )
        git(
            "fetch",
            "--quiet",
            "--no-tags",
            str(exchange),
            f"+refs/heads/{branch}:refs/heads/{branch}",
            cwd=self.repo,
        )

    def merge(self, task: str, attempt: int, remote: bool = False) -> MergeResult:
        """Commit what the attempt left, then merge its branch into the integration branch.

        ``remote``: the branch came from a remote agent, already committed and fetched.
        On a conflict the merge is aborted and a :class:`MergeConflict` returned (the
        branch and worktree are kept); git failures raise :class:`WorktreeError`.
        """
        started = self.start()
        path = self.worktree(task, attempt)
        branch = self.task_branch(task, attempt)
        if remote:
            theirs = _out("rev-parse", f"refs/heads/{branch}", cwd=started.repo)
        elif not path.is_dir():
            raise WorktreeError(f"the worktree of {task} attempt {attempt} is gone ({path})")
        else:
            theirs = self._commit(path, branch, task, attempt)
        integ = self._integration()
        ours = _out("rev-parse", "HEAD", cwd=integ)
        if _ok("merge-base", "--is-ancestor", theirs, ours, cwd=integ):
            return MergeResult(task, attempt)  # nothing new on the task's branch
        message = f"counterpoint: merge task {task} (attempt {attempt})"
        args = ("merge", "--no-ff", "--no-verify", "--no-edit", "-m", message, branch)
        proc = git(*args, cwd=integ, check=False, identity=True)
        if proc.returncode == 0:
            return MergeResult(task, attempt, commit=_out("rev-parse", "HEAD", cwd=integ))
        listed = git("diff", "--name-only", "--diff-filter=U", "-z", cwd=integ, check=False)
        paths = tuple(p for p in listed.stdout.split("\0") if p)
        if _ok("rev-parse", "--verify", "--quiet", "MERGE_HEAD", cwd=integ):
            git("merge", "--abort", cwd=integ)
        if not paths:
            raise WorktreeError(_failure(args, integ, proc))
        conflict = self._conflict(task, attempt, paths, ours, theirs, started)
        self.conflicts[task] = conflict
        return MergeResult(task, attempt, conflict=conflict, error=conflict.message)

    def _commit(self, path: Path, branch: str, task: str, attempt: int) -> str:
        """Commit everything the attempt left in its worktree; the commit the branch ends at."""
        head = commit_all(path, f"counterpoint: task {task} (attempt {attempt})")
        # An agent that committed on another branch (or a detached HEAD): its work counts.
        if head != _out("rev-parse", f"refs/heads/{branch}", cwd=path):
            git("update-ref", f"refs/heads/{branch}", head, cwd=path)
        return head

    def _integration(self) -> Path:
        """The integration branch's worktree, created (or repaired after a crash) as needed."""
        started = self.start()
        integ = self.integration_dir
        if (integ / ".git").exists() and _ok("rev-parse", "--git-dir", cwd=integ):
            current = git("symbolic-ref", "--quiet", "HEAD", cwd=integ, check=False)
            if current.stdout.strip() == f"refs/heads/{started.branch}":
                if _ok("rev-parse", "--verify", "--quiet", "MERGE_HEAD", cwd=integ):
                    git("merge", "--abort", cwd=integ)
                git("reset", "--quiet", "--hard", "HEAD", cwd=integ)
                return integ
        shutil.rmtree(integ, ignore_errors=True)
        git("worktree", "prune", cwd=started.repo)
        self.root.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--quiet", str(integ), started.branch, cwd=started.repo)
        return integ

    def _conflict(
        self,
        task: str,
        attempt: int,
        paths: tuple[str, ...],
        ours: str,
        theirs: str,
        started: _Started,
    ) -> MergeConflict:
        name = slug(task, attempt)
        branch = self.task_branch(task, attempt)
        base = _out("merge-base", ours, theirs, cwd=started.repo)
        diff = git("diff", f"{ours}...{theirs}", "--", *paths, cwd=started.repo).stdout
        diff_path = self.root / f"{name}.conflict.diff"
        header = [
            f"# counterpoint run {self.run_id}: task {task} (attempt {attempt}) conflicts "
            f"with {started.branch}",
            f"# conflicting paths: {', '.join(paths)}",
            f"# kept: branch {branch}, worktree {self.worktree(task, attempt)}",
            f"# below: the task's changes to those paths since it branched "
            f"(git diff {base[:12]}..{theirs[:12]})",
        ]
        diff_path.write_text("\n".join(header) + "\n" + diff, encoding="utf-8")
        return MergeConflict(
            task=task,
            attempt=attempt,
            paths=paths,
            diff_path=diff_path,
            branch=branch,
            worktree=self.worktree(task, attempt),
            integration=started.branch,
            base=base,
            ours=ours,
            theirs=theirs,
        )

    def finish(
        self, task: str, attempt: int, succeeded: bool, commit: str | None = None
    ) -> MergeResult | None:
        """After an attempt: merge and remove its worktree on success, keep it otherwise.

        None for an attempt that did not succeed (its worktree is kept). A result with an
        ``error`` (a worktree that could not be made, a merge conflict, a git failure)
        means the attempt must count as failed; its worktree is then kept too.
        """
        unprepared = self.unprepared.pop((task, attempt), None)
        if self.prepared.get(task) == attempt:
            del self.prepared[task]
        if unprepared is not None:
            return MergeResult(task, attempt, error=unprepared)
        if self.remote.get(task, (None,))[0] == attempt:
            return self._finish_remote(task, attempt, succeeded, commit)
        if not succeeded:
            self.discard(task, attempt, keep=True)
            return None
        try:
            result = self.merge(task, attempt)
        except WorktreeError as exc:
            return MergeResult(task, attempt, error=f"could not merge the task's work: {exc}")
        self.discard(task, attempt, keep=result.error is not None)
        return result

    def _finish_remote(
        self, task: str, attempt: int, succeeded: bool, commit: str | None
    ) -> MergeResult | None:
        """A remote attempt ended: fetch and merge its pushed branch after success.

        The branch stays in the agent's exchange repository (and the plan's repository)
        after a failure or a conflict, for inspection; it goes after a merge.
        """
        _, agent = self.remote.pop(task)
        if not succeeded:
            return None
        try:
            self._fetch_remote(task, attempt, agent, commit)
            result = self.merge(task, attempt, remote=True)
        except WorktreeError as exc:
            return MergeResult(task, attempt, error=f"could not merge the task's work: {exc}")
        if result.error is None:
            branch = self.task_branch(task, attempt)
            git("update-ref", "-d", f"refs/heads/{branch}", cwd=self.exchange(agent), check=False)
            git("branch", "-D", branch, cwd=self.repo, check=False)
        return result

    def discard(self, task: str, attempt: int, keep: bool) -> None:
        """Remove the attempt's worktree and branch (after success), or keep them."""
        if keep:
            return
        self._remove(self.worktree(task, attempt), self.task_branch(task, attempt), quiet=False)

    def _remove(self, path: Path, branch: str, quiet: bool) -> None:
        repo = self.repo
        try:
            if path.exists() and not _ok("worktree", "remove", "--force", str(path), cwd=repo):
                shutil.rmtree(path, ignore_errors=True)
                git("worktree", "prune", cwd=repo)
            if _ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repo):
                git("branch", "-D", branch, cwd=repo)
        except WorktreeError as exc:
            if not quiet:
                log.warning("could not remove the worktree %s: %s", path, exc)

    def cleanup(self) -> None:
        """At the end of the run: remove the integration worktree (the branch stays, so it
        can be checked out or merged) and forget worktrees whose folders are gone."""
        if self._started is None:
            return
        repo = self._started.repo
        try:
            if self.integration_dir.exists():
                git("worktree", "remove", "--force", str(self.integration_dir), cwd=repo)
            git("worktree", "prune", cwd=repo)
        except WorktreeError as exc:
            log.warning("could not clean up the run's worktrees: %s", exc)
