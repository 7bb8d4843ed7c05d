"""Where merge conflicts are resolved: mechanically in the integration worktree, or
in a resolution worktree beside it (``TASK-ATTEMPT.resolve``) with the merge in progress.

:class:`Resolutions` is a part of :class:`~counterpoint.agents.worktree.WorktreeManager`;
the policies (which rule, which agent, when a conflict counts as resolved) are in
:mod:`counterpoint.agents.merging` and :mod:`counterpoint.agents.attempt`. Whether a
conflict is resolved is read from git's state alone, never from what an agent says.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from counterpoint.agents.git import WorktreeError, _failure, _ok, _out, copy_included, git, slug

if TYPE_CHECKING:
    from counterpoint.agents.ledger import LedgerEntry
    from counterpoint.plan.model import MechanicalRule, Settings


class Resolutions:
    """The conflict-resolution side of a :class:`~counterpoint.agents.worktree.WorktreeManager`."""

    if TYPE_CHECKING:
        root: Path
        settings: Settings | None

        @property
        def repo(self) -> Path: ...
        def tip(self) -> str: ...
        def _remove_folder(self, path: Path) -> None: ...

    @property
    def rules(self) -> list[MechanicalRule]:
        return [] if self.settings is None else self.settings.conflicts.mechanical

    def _merge_mechanically(
        self, integ: Path, source: str, message: str, mechanical: dict[str, MechanicalRule]
    ) -> tuple[str | None, str]:
        """Merge with every conflicting path resolved by its rule, in the integration
        worktree; (the merge commit, "") or (None, why) with the merge aborted."""
        from counterpoint.agents.merging import resolve_mechanically, unresolved

        git("merge", "--no-ff", "--no-commit", "--no-verify", source, cwd=integ, check=False)
        problems = resolve_mechanically(integ, mechanical)
        left = unresolved(integ, list(mechanical))
        if problems or left:
            git("merge", "--abort", cwd=integ, check=False)
            why = "; ".join(problems) or f"still in conflict: {', '.join(left)}"
            return None, f"the mechanical rules did not resolve it: {why}"
        body = "conflicts resolved mechanically: " + ", ".join(
            f"{path} ({rule.strategy})" for path, rule in mechanical.items()
        )
        git("commit", "--quiet", "--no-verify", "-m", message, "-m", body, cwd=integ, identity=True)
        return _out("rev-parse", "HEAD", cwd=integ), ""

    def resolution(self, task: str, attempt: int) -> Path:
        """``TASK-ATTEMPT.resolve``: where the attempt's conflict is resolved."""
        return self.root / f"{slug(task, attempt)}.resolve"

    def open_resolution(self, task: str, attempt: int, theirs: str) -> Path:
        """A fresh worktree at the integration branch's tip (detached), with the attempt's
        commit being merged into it: the merge in progress, its conflicts in the files."""
        path = self.resolution(task, attempt)
        self._remove_folder(path)
        ours = self.tip()
        git("worktree", "add", "--quiet", "--detach", str(path), ours, cwd=self.repo)
        include = None if self.settings is None else self.settings.worktree.include
        if include:
            copy_included(self.repo, path, include, (self.root.resolve(),))
        args = ("merge", "--no-ff", "--no-commit", "--no-verify", theirs)
        proc = git(*args, cwd=path, check=False, identity=True)
        if proc.returncode not in (0, 1) or not _ok(
            "rev-parse", "-q", "--verify", "MERGE_HEAD", cwd=path
        ):
            raise WorktreeError(_failure(args, path, proc))
        return path

    def resolution_left(self, path: Path, paths: list[str], ours: str, theirs: str) -> list[str]:
        """What is still in conflict in the resolution worktree, from git's state; raises if
        the merge was abandoned or ``HEAD`` moved anywhere but to a merge of both sides."""
        from counterpoint.agents.merging import unresolved

        head = _out("rev-parse", "HEAD", cwd=path)
        if _ok("rev-parse", "-q", "--verify", "MERGE_HEAD", cwd=path):
            if head != ours:
                raise WorktreeError(f"HEAD moved to {head[:12]} during the merge")
        elif self._parents(path, head) != [ours, theirs]:
            raise WorktreeError("the merge is no longer in progress and HEAD is not its commit")
        return unresolved(path, paths)

    def close_resolution(self, task: str, attempt: int, how: list[str]) -> str:
        """Commit the resolved merge (unless the resolver did); the merge commit."""
        path = self.resolution(task, attempt)
        if _ok("rev-parse", "-q", "--verify", "MERGE_HEAD", cwd=path):
            message = f"counterpoint: merge task {task} (attempt {attempt})"
            body = "conflicts resolved: " + ", ".join(how)
            git(
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                message,
                "-m",
                body,
                cwd=path,
                identity=True,
            )
        head = _out("rev-parse", "HEAD", cwd=path)
        if len(self._parents(path, head)) != 2:
            raise WorktreeError(f"the resolution in {path} is not a merge commit")
        return head

    def drop_resolution(self, task: str, attempt: int) -> None:
        self._remove_folder(self.resolution(task, attempt))

    def tasks_between(
        self, theirs: str, ours: str, paths: list[str], entries: list[LedgerEntry]
    ) -> list[str]:
        """The tasks merged into the integration branch since ``theirs`` branched off that
        changed ``paths``: the other side of a conflict (``entries``: the ledger's rows)."""
        base = _out("merge-base", ours, theirs, cwd=self.repo)
        line = set(_out("rev-list", "--first-parent", f"{base}..{ours}", cwd=self.repo).split())
        found = []
        for entry in entries:
            merge = entry.merge_commit
            if entry.status != "merged" or merge is None or merge not in line:
                continue
            changed = _out("diff", "--name-only", f"{merge}^1", merge, "--", *paths, cwd=self.repo)
            if changed:
                found.append(entry.task)
        return found

    def _parents(self, cwd: Path, commit: str) -> list[str]:
        return _out("rev-list", "--parents", "-n", "1", commit, cwd=cwd).split()[1:]
