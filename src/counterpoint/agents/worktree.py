"""Git worktree workspaces: every task attempt in its own worktree and branch, merged back.

An agent with ``workspace: worktree`` runs each attempt of a task in a git worktree of
the plan's repository (``settings.repository``, default: the repository holding the
plan file), on a branch of its own, created from an explicit commit: the integrated work
of the task's own dependencies on the run's **integration branch** ``counterpoint/run-N``
(:meth:`WorktreeManager.base_for`). The integration branch starts at the repository's
``HEAD`` when the run first needs a worktree; the user's checked-out branch and working
tree are never touched. When an attempt succeeds, whatever it left uncommitted is
committed on its branch, the merge is predicted (``git merge-tree``), and the branch is
merged (``git merge --no-ff``) into the integration branch, in a worktree of its own. A
task starts only after its dependencies completed, and they completed only once merged,
so branches merge in dependency order.

A conflict that no policy resolved (:mod:`counterpoint.agents.merging`,
:mod:`counterpoint.agents.attempt`) moves no ref: the task's branch and worktree are
kept, and the task's diff of the conflicting paths is written next to them; the attempt
fails with a :class:`MergeConflict` that says all of it. Worktrees are removed after a
successful merge and kept after a failure. Each attempt has a row in the run's ledger
(:mod:`counterpoint.agents.ledger`), which :meth:`WorktreeManager.reconcile` brings back
in line with git when a run resumes after a crash.

Layout (``STATE`` is the run's state directory)::

    STATE/worktrees/run-N/run.json                   the repository, branch and base commit
    STATE/worktrees/run-N/integration/               the integration branch's worktree
    STATE/worktrees/run-N/TASK-ATTEMPT/              a task attempt's worktree
    STATE/worktrees/run-N/TASK-ATTEMPT.conflict.diff a conflicting attempt's diff
    STATE/worktrees/run-N/TASK-ATTEMPT.resolve/      where its conflict is resolved
    STATE/worktrees/run-N/exchange/AGENT.git/        a remote agent's exchange repository

Every git failure is a :class:`WorktreeError` naming the command, the folder and git's
own message. Git runs synchronously: each call takes milliseconds on a small repository,
but ``git worktree add`` checks out the whole tree, which takes as long as on any clone.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from counterpoint.agents.git import (
    BRANCH_PREFIX,
    EXCHANGE,
    INTEGRATION,
    RECORD,
    UNSAFE,
    WorktreeError,
    _ok,
    _out,
    check_worktree_agent,
    commit_all,
    copy_included,
    find_repository,
    git,
    repository_folder,
    slug,
)
from counterpoint.agents.reconcile import Reconciling
from counterpoint.agents.resolution import Resolutions

if TYPE_CHECKING:
    from counterpoint.agents.ledger import WorktreeLedger
    from counterpoint.plan.model import Settings

log = logging.getLogger("counterpoint.run")


__all__ = [
    "MergeConflict",
    "MergeResult",
    "WorktreeError",
    "WorktreeManager",
    "check_worktree_agent",
    "commit_all",
    "copy_included",
    "find_repository",
    "git",
    "repository_folder",
    "slug",
]

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
    #: Why it was not resolved automatically (a resolver that failed, a mechanical rule
    #: that could not apply); empty when no policy applied.
    note: str = ""

    @property
    def message(self) -> str:
        why = f" ({self.note})" if self.note else ""
        return (
            f"merge conflict with {self.integration} in {', '.join(self.paths)}{why}: "
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
            "note": self.note,
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
    #: A conflict that appeared only at the merge (another task merged meanwhile) and
    #: that the mechanical rules resolved there: the paths, and how each was resolved.
    resolved: tuple[list[str], list[str]] | None = None

    @property
    def merged(self) -> bool:
        return self.error is None


# -- the manager ---------------------------------------------------------------------------


@dataclass
class _Started:
    repo: Path
    branch: str
    base: str


class WorktreeManager(Reconciling, Resolutions):
    """The worktrees and branches of one run in one repository.

    ``repo`` is a folder inside the repository (its top is found when first needed).
    Nothing touches git before the first :meth:`prepare`; on resume the integration
    branch recorded under ``STATE/worktrees/run-N/run.json`` is reused.
    """

    def __init__(
        self,
        repo: Path,
        state_dir: Path,
        run_id: int,
        settings: Settings | None = None,
        ledger: WorktreeLedger | None = None,
    ) -> None:
        self.folder = Path(repo)
        self.settings = settings
        self.ledger = ledger
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
        #: The integration commit holding each merged task's work (see :meth:`base_for`).
        self.merged_at: dict[str, str] = {}
        #: The base commit of each attempt with a worktree or branch.
        self.bases: dict[tuple[str, int], str] = {}
        #: Conflicts resolved before the merge: (task, attempt) -> the resolved merge commit.
        self.resolved: dict[tuple[str, int], str] = {}
        #: Why a conflict could not be resolved automatically: (task, attempt) -> why.
        self.notes: dict[tuple[str, int], str] = {}
        #: What :meth:`reconcile` found and did when the run resumed.
        self.reconciled: list[str] = []

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
            self._started = started
            self._load_ledger()
            self.reconciled = self.reconcile()
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

    def base_for(self, task: str, deps: Iterable[str] = ()) -> str:
        """The commit a new attempt of ``task`` starts from: its dependencies' merged work.

        No dependency merged anything: the run's base commit. Otherwise the latest of the
        integration commits that hold a dependency's work (its merge, or for one that
        changed nothing, the commit it started from): merges happen in dependency order
        on one first-parent line, so that commit holds every dependency's work. A retry
        after a merge conflict starts from the integration branch's tip instead, so it
        builds on the work it conflicted with.
        """
        started = self.start()
        if self._conflicted_before(task):
            return _out("rev-parse", f"refs/heads/{started.branch}", cwd=started.repo)
        points = [self.merged_at[d] for d in dict.fromkeys(deps) if d in self.merged_at]
        best = started.base
        for point in points:
            if point != best and _ok("merge-base", "--is-ancestor", best, point, cwd=started.repo):
                best = point
        return best

    def _conflicted_before(self, task: str) -> bool:
        if self.ledger is None:
            return task in self.conflicts
        mine = [e for e in self.ledger.entries() if e.task == task]
        return bool(mine) and max(mine, key=lambda e: e.attempt).status == "conflict"

    def prepare(self, task: str, attempt: int, deps: Iterable[str] = ()) -> Path:
        """A new worktree for the attempt, on a new branch from :meth:`base_for`'s commit,
        with the include file's untracked files copied in."""
        started = self.start()
        path = self.worktree(task, attempt)
        branch = self.task_branch(task, attempt)
        # Left by a run that stopped before the journal recorded this attempt: start afresh.
        self._remove(path, branch, quiet=True)
        self.root.mkdir(parents=True, exist_ok=True)
        base = self.base_for(task, deps)
        git("worktree", "add", "--quiet", "-b", branch, str(path), base, cwd=started.repo)
        self.bases[(task, attempt)] = base
        if self.ledger is not None:
            self.ledger.created(task, attempt, base, path, branch)
        self.prepared[task] = attempt
        include = None if self.settings is None else self.settings.worktree.include
        if include:
            copy_included(started.repo, path, include, (self.root.resolve(),))
        return path

    def verify(self, task: str, attempt: int) -> None:
        """Refuse an attempt whose folder is not its worktree of the repository on its branch
        (checked right before the agent starts, after the setup command)."""
        self.verify_at(self.worktree(task, attempt), self.task_branch(task, attempt))

    def verify_at(self, path: Path, branch: str) -> None:
        """Refuse ``path`` unless it is a worktree of the repository on ``branch``."""
        refuse = f"refusing to start the agent in {path}"
        top = git("rev-parse", "--show-toplevel", cwd=path, check=False)
        if top.returncode != 0:
            said = top.stderr.strip() or "no message"
            raise WorktreeError(
                f"{refuse}: it is not a git worktree (`git rev-parse "
                f"--show-toplevel` failed: {said})"
            )
        if Path(top.stdout.strip()).resolve() != path.resolve():
            raise WorktreeError(f"{refuse}: git says its worktree's top is {top.stdout.strip()}")
        mine = Path(_out("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=path))
        common = Path(
            _out("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=self.repo)
        )
        if mine.resolve() != common.resolve():
            raise WorktreeError(f"{refuse}: it is a worktree of {mine}, not of {self.repo}")
        head = git("rev-parse", "--abbrev-ref", "HEAD", cwd=path).stdout.strip()
        if head != branch:
            raise WorktreeError(f"{refuse}: it is on {head}, not on its branch {branch}")

    def workdir(self, task: str, attempt: int, deps: Iterable[str] = ()) -> Path:
        """:meth:`prepare`, but a failure is recorded instead of raised (see :meth:`finish`).

        The path returned then does not exist, so a shell agent cannot start in it.
        """
        try:
            return self.prepare(task, attempt, deps)
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
        return self.exchange_root / f"{UNSAFE.sub('_', agent)}.git"

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

    def prepare_remote(
        self, task: str, attempt: int, agent: str, deps: Iterable[str] = ()
    ) -> dict[str, Any]:
        """A branch for an attempt a remote agent runs: what its assignment carries.

        The branch starts at :meth:`base_for`'s commit, in the plan's repository and in
        the agent's exchange repository; the agent fetches it, works in a worktree of its
        own and pushes the branch back (``counterpoint agent`` does all of it).
        """
        started = self.start()
        branch = self.task_branch(task, attempt)
        tip = self.base_for(task, deps)
        git("branch", "--force", "--no-track", branch, tip, cwd=started.repo)
        exchange = self.exchange(agent)
        git("update-ref", f"refs/heads/{branch}", tip, cwd=exchange)
        self.bases[(task, attempt)] = tip
        if self.ledger is not None:
            self.ledger.created(task, attempt, tip, Path(f"remote:{agent}"), branch)
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
        The merge is predicted first (``git merge-tree``); a conflict whose paths all have
        a mechanical rule is resolved by the rules in the integration worktree. Any other
        conflict returns a :class:`MergeConflict` with no ref moved (the branch and
        worktree are kept); git failures raise :class:`WorktreeError`. A conflict already
        resolved for this attempt (:attr:`resolved`) merges that resolution instead.
        """
        from counterpoint.agents.merging import classify, predict

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
        resolved = self.resolved.pop((task, attempt), None)
        if _ok("merge-base", "--is-ancestor", theirs, ours, cwd=integ):
            return self._merged(task, attempt, None)  # nothing new on the task's branch
        if resolved is not None and _out("rev-parse", f"{resolved}^1", cwd=integ) == ours:
            git("merge", "--ff-only", "--quiet", resolved, cwd=integ)  # resolved on this tip
            return self._merged(task, attempt, resolved)
        source = resolved or theirs
        prediction = predict(started.repo, ours, source)  # before any ref moves
        message = f"counterpoint: merge task {task} (attempt {attempt})"
        if prediction.clean:
            args = ("merge", "--no-ff", "--no-verify", "--no-edit", "-m", message, source)
            git(*args, cwd=integ, identity=True)
            return self._merged(task, attempt, _out("rev-parse", "HEAD", cwd=integ))
        mechanical, others = classify(prediction.paths, self.rules)
        note = self.notes.pop((task, attempt), "")
        if not others:
            commit, note = self._merge_mechanically(integ, source, message, mechanical)
            if commit is not None:
                done = self._merged(task, attempt, commit)
                how = [f"{path} ({rule.strategy})" for path, rule in mechanical.items()]
                return replace(done, resolved=(list(prediction.paths), how))
        conflict = self._conflict(task, attempt, prediction.paths, ours, theirs, started, note)
        self.conflicts[task] = conflict
        if self.ledger is not None:
            self.ledger.set_status(task, attempt, "conflict")
        return MergeResult(task, attempt, conflict=conflict, error=conflict.message)

    def _merged(self, task: str, attempt: int, commit: str | None) -> MergeResult:
        """Record where the attempt's work is on the integration branch."""
        point = commit or self.bases.get((task, attempt)) or self.base
        self.merged_at[task] = point
        if self.ledger is not None:
            self.ledger.set_status(task, attempt, "merged", point)
        return MergeResult(task, attempt, commit=commit)

    # -- conflict resolution before the merge (see counterpoint.agents.attempt) --------------

    def tip(self) -> str:
        """The integration branch's commit now."""
        return _out("rev-parse", f"refs/heads/{self.branch}", cwd=self.repo)

    def commit_attempt(self, task: str, attempt: int) -> str:
        """Commit what the attempt left in its worktree; the commit its branch is then at."""
        path = self.worktree(task, attempt)
        return self._commit(path, self.task_branch(task, attempt), task, attempt)

    def _remove_folder(self, path: Path) -> None:
        if path.exists() and not _ok("worktree", "remove", "--force", str(path), cwd=self.repo):
            shutil.rmtree(path, ignore_errors=True)
            git("worktree", "prune", cwd=self.repo)

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
        note: str = "",
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
            note=note,
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
            self._status(task, attempt, "failed")  # its worktree may exist (include failed)
            return MergeResult(task, attempt, error=unprepared)
        if self.remote.get(task, (None,))[0] == attempt:
            return self._finish_remote(task, attempt, succeeded, commit)
        if not succeeded:
            self.discard(task, attempt, keep=True)
            self._status(task, attempt, "failed")
            return None
        try:
            result = self.merge(task, attempt)
        except WorktreeError as exc:
            self._status(task, attempt, "failed")
            return MergeResult(task, attempt, error=f"could not merge the task's work: {exc}")
        self.discard(task, attempt, keep=result.error is not None)
        return result

    def _status(self, task: str, attempt: int, status: str) -> None:
        if self.ledger is not None:
            self.ledger.set_status(task, attempt, status)

    def _finish_remote(
        self, task: str, attempt: int, succeeded: bool, commit: str | None
    ) -> MergeResult | None:
        """A remote attempt ended: fetch and merge its pushed branch after success.

        The branch stays in the agent's exchange repository (and the plan's repository)
        after a failure or a conflict, for inspection; it goes after a merge.
        """
        _, agent = self.remote.pop(task)
        if not succeeded:
            self._status(task, attempt, "failed")
            return None
        try:
            self._fetch_remote(task, attempt, agent, commit)
            result = self.merge(task, attempt, remote=True)
        except WorktreeError as exc:
            self._status(task, attempt, "failed")
            return MergeResult(task, attempt, error=f"could not merge the task's work: {exc}")
        if result.error is None:
            branch = self.task_branch(task, attempt)
            git("update-ref", "-d", f"refs/heads/{branch}", cwd=self.exchange(agent), check=False)
            git("branch", "-D", branch, cwd=self.repo, check=False)
        return result

    def remove_worktree(self, path: Path, branch: str) -> None:
        """Remove a worktree of the run and its branch (a warning if git refuses)."""
        self._remove(path, branch, quiet=False)

    def copy_included(self, path: Path) -> None:
        """Copy the include file's untracked files into the new worktree at ``path``."""
        include = None if self.settings is None else self.settings.worktree.include
        if include:
            copy_included(self.repo, path, include, (self.root.resolve(),))

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
