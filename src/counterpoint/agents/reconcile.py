"""Bringing a run's worktree ledger and git back in line after a crash.

:class:`Reconciling` is a part of :class:`~counterpoint.agents.worktree.WorktreeManager`:
when a resumed run first needs its worktrees, what the ledger
(:mod:`counterpoint.agents.ledger`) says of each attempt is checked against
``git worktree list`` and the integration branch, and both are made to agree.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from counterpoint.agents.git import _ok, _out, git

if TYPE_CHECKING:
    from counterpoint.agents.ledger import LedgerEntry, WorktreeLedger
    from counterpoint.agents.worktree import _Started

log = logging.getLogger("counterpoint.run")


class Reconciling:
    """The ledger side of a :class:`~counterpoint.agents.worktree.WorktreeManager`."""

    if TYPE_CHECKING:
        ledger: WorktreeLedger | None
        bases: dict[tuple[str, int], str]
        merged_at: dict[str, str]

        @property
        def repo(self) -> Path: ...
        @property
        def integration_dir(self) -> Path: ...
        def start(self) -> _Started: ...

    def _load_ledger(self) -> None:
        """What earlier sessions of this run merged (for :meth:`base_for`), from the ledger."""
        if self.ledger is None:
            return
        for entry in self.ledger.entries():
            self.bases[(entry.task, entry.attempt)] = entry.base
            if entry.status == "merged" and entry.merge_commit:
                self.merged_at[entry.task] = entry.merge_commit

    def reconcile(self) -> list[str]:
        """After a crash: make the ledger and git agree again; what was found, in words.

        A merge left in progress in the integration worktree is aborted. An attempt the
        ledger shows as created or running (the run stopped under it) is ``merged`` if
        its branch is already in the integration branch, ``failed`` if its worktree is
        still there (kept, as after a failure), and ``discarded`` if its worktree vanished
        (its branch is deleted when it holds nothing beyond its base). Worktrees git lists
        but whose folders are gone are pruned.
        """
        if self.ledger is None:
            return []
        started = self.start()
        notes: list[str] = []
        integ = self.integration_dir
        if (integ / ".git").exists() and _ok(
            "rev-parse", "--verify", "-q", "MERGE_HEAD", cwd=integ
        ):
            git("merge", "--abort", cwd=integ)
            notes.append(f"aborted a merge left in progress in {integ}")
        git("worktree", "prune", cwd=started.repo)  # forget the worktrees whose folder is gone
        listed = self._listed_worktrees()
        tip = _out("rev-parse", f"refs/heads/{started.branch}", cwd=started.repo)
        for entry in self.ledger.entries():
            if entry.status in ("created", "running") and not str(entry.worktree).startswith(
                "remote:"
            ):
                notes.append(self._reconcile_entry(entry, listed, tip))
        for note in notes:
            log.info("resume: %s", note)
        return notes

    def _reconcile_entry(self, entry: LedgerEntry, listed: set[Path], tip: str) -> str:
        repo, ledger = self.repo, self.ledger
        assert ledger is not None  # reconcile() runs only with a ledger
        what = f"{entry.task} attempt {entry.attempt}"
        branch = git(
            "rev-parse", "--verify", "-q", f"refs/heads/{entry.branch}", cwd=repo, check=False
        )
        head = branch.stdout.strip() if branch.returncode == 0 else None
        if head and head != entry.base and _ok("merge-base", "--is-ancestor", head, tip, cwd=repo):
            point = self._merge_commit_of(head, tip) or tip
            ledger.set_status(entry.task, entry.attempt, "merged", point)
            self.merged_at[entry.task] = point
            return f"{what}: its branch was already merged ({point[:12]})"
        if entry.worktree.resolve() in listed and entry.worktree.is_dir():
            ledger.set_status(entry.task, entry.attempt, "failed")
            return f"{what}: interrupted, its worktree {entry.worktree} is kept"
        if head == entry.base:
            git("branch", "-D", entry.branch, cwd=repo, check=False)
        ledger.set_status(entry.task, entry.attempt, "discarded")
        kept = f", its branch {entry.branch} is kept" if head and head != entry.base else ""
        return f"{what}: its worktree {entry.worktree} vanished{kept}"

    def _listed_worktrees(self) -> set[Path]:
        lines = _out("worktree", "list", "--porcelain", cwd=self.repo).splitlines()
        return {
            Path(x.removeprefix("worktree ")).resolve() for x in lines if x.startswith("worktree ")
        }

    def _merge_commit_of(self, commit: str, tip: str) -> str | None:
        """The first-parent commit of the integration branch that merged ``commit``."""
        log_ = _out("log", "--first-parent", "--format=%H %P", tip, cwd=self.repo)
        for line in log_.splitlines():
            sha, *parents = line.split()
            if commit in parents[1:]:
                return sha
        return None
