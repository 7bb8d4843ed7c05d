"""Best-of-N: one attempt of a task runs N candidates and keeps the best (``attempts: N``).

Each candidate runs in a worktree of its own (``TASK-ATTEMPT-cK``, branch
``...-tasks/TASK-ATTEMPT-cK``), all from the attempt's base commit, on an agent slot of
its own: the attempt's slot, and extra slots the run lends when they are free (a slot is
reused for the next candidate when its candidate ends). Setup, the worktree check, the
agent and the ``check`` command run in each; its work is committed and measured
(``git diff --shortstat`` against the base). The winner is a candidate that succeeded
and passed its check, with the smallest diff, then the earliest finished; its commit
becomes the attempt's branch (the attempt's own worktree is reset to it), which the run
then merges as any attempt's. Succeeded losers are removed; failed ones are kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from counterpoint.agents.base import RateLimited, TaskFailed
from counterpoint.agents.merging import run_command
from counterpoint.agents.worktree import WorktreeError, WorktreeManager, commit_all, git, slug
from counterpoint.plan.model import Command, Plan

if TYPE_CHECKING:
    from counterpoint.agents.base import TaskContext

#: How often (seconds) a best-of-N attempt looks for a free slot for its next candidate.
POLL_S = 0.05

SCHEMA = """
CREATE TABLE IF NOT EXISTS candidates (
    run_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    candidate INTEGER NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    check_result TEXT NOT NULL,
    diff_lines INTEGER,
    finished REAL,
    chosen INTEGER NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (run_id, task, attempt, candidate)
) WITHOUT ROWID;
"""
_COLUMNS = "candidate, agent, status, check_result, diff_lines, finished, chosen, reason, error"
_SHORTSTAT = re.compile(r"(\d+) (?:insertion|deletion)")


class Slots(Protocol):
    """Extra agent slots (with the task's resources) lent to a best-of-N attempt."""

    def take(self) -> str | None:
        """A free slot now, by agent name; None when none is free."""

    def give_back(self, agent: str) -> None:
        """Return a slot taken with :meth:`take`."""


@dataclass
class Candidate:
    """One candidate of a best-of-N attempt, as journaled in the ``candidates`` table."""

    number: int
    agent: str = ""
    status: str = "pending"  # running, succeeded, failed, rate_limited, cancelled
    check: str = "skipped"  # passed, failed, none (no check command), skipped (not reached)
    diff_lines: int | None = None
    finished: float | None = None
    chosen: bool = False
    reason: str = ""  # why it lost ("" for the winner)
    error: str = ""
    commit: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    retry_after_s: float = 0.0

    @property
    def qualified(self) -> bool:
        return self.status == "succeeded" and self.check in ("passed", "none")

    def to_json(self) -> dict[str, Any]:
        keys = ("number", "agent", "status", "check", "diff_lines", "chosen", "reason", "error")
        return {"candidate" if k == "number" else k: getattr(self, k) for k in keys}


RunAgent = Callable[["TaskContext"], Awaitable[Any]]
Emit = Callable[..., None]
#: Journals a candidate's coding usage: (candidate, agent, its log folder).
RecordUsage = Callable[[int, str, Path], None]


class BestOfN:
    """Runs the N candidates of one attempt and adopts the best one's work."""

    def __init__(
        self,
        manager: WorktreeManager,
        plan: Plan,
        ctx: TaskContext,
        check: Command | None,
        hooks: CandidateHooks,
    ) -> None:
        self.manager, self.plan, self.ctx, self.check = manager, plan, ctx, check
        self.hooks = hooks
        self.task, self.attempt = ctx.task_id, ctx.attempt
        self.base = manager.bases[(self.task, self.attempt)]
        self.candidates = [Candidate(k) for k in range(1, ctx.task.attempts + 1)]

    def path(self, number: int) -> Path:
        return self.manager.root / f"{slug(self.task, self.attempt)}-c{number}"

    def branch(self, number: int) -> str:
        return f"{self.manager.task_branch(self.task, self.attempt)}-c{number}"

    async def run(self) -> dict[str, Any]:
        """Run every candidate; the winner's result (its work is on the attempt's branch)."""
        if self.manager.ledger is not None:
            self.manager.ledger.set_status(self.task, self.attempt, "running")
        await self._run_all()
        winner = self._choose()
        await asyncio.to_thread(self._tidy, winner)
        self.hooks.journal(self.task, self.attempt, self.candidates)
        if winner is None:
            raise self._no_winner()
        await asyncio.to_thread(self._adopt, winner)
        self.hooks.emit(
            "candidate_chosen",
            attempt=self.attempt,
            candidate=winner.number,
            agent=winner.agent,
            diff_lines=winner.diff_lines,
            candidates=[c.to_json() for c in self.candidates],
        )
        chosen = {"candidate": winner.number, "agent": winner.agent}
        return {**winner.result, "best_of": {**chosen, "of": len(self.candidates)}}

    # -- running the candidates ---------------------------------------------------------

    async def _run_all(self) -> None:
        """Start candidates on free slots (the attempt's own first) until all have run."""
        pending = list(self.candidates)
        idle: list[tuple[str, bool]] = [(self.ctx.agent or "", True)]  # (agent, lent?)
        running: dict[asyncio.Task[None], tuple[str, bool]] = {}
        try:
            while pending or running:
                while pending:
                    slot = idle.pop() if idle else self._borrow()
                    if slot is None:
                        break
                    job = asyncio.create_task(self._candidate(pending.pop(0), slot[0]))
                    running[job] = slot
                if not pending:  # nothing left to start: lent slots go back at once
                    for agent, lent in idle:
                        if lent:
                            self.hooks.slots.give_back(agent)
                    idle = [s for s in idle if not s[1]]
                done, _ = await asyncio.wait(
                    running, timeout=POLL_S if pending else None, return_when="FIRST_COMPLETED"
                )
                for job in done:
                    idle.append(running.pop(job))
        finally:
            for job in running:
                job.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            for agent, lent in [*idle, *running.values()]:
                if lent:
                    self.hooks.slots.give_back(agent)

    def _borrow(self) -> tuple[str, bool] | None:
        agent = self.hooks.slots.take()
        return None if agent is None else (agent, False)

    async def _candidate(self, c: Candidate, agent: str) -> None:
        c.agent, c.status = agent, "running"
        path = self.path(c.number)
        log_dir = self.ctx.log_dir / f"candidate-{c.number}"
        self.hooks.emit(
            "candidate_started", attempt=self.attempt, candidate=c.number, agent=agent,
            worktree=str(path),
        )  # fmt: skip
        try:
            await self._attempt(c, path, log_dir)
        except asyncio.CancelledError:
            c.status, c.error = "cancelled", "cancelled"
            raise
        except RateLimited as exc:
            c.status, c.error, c.retry_after_s = "rate_limited", str(exc), exc.retry_after_s
        except TaskFailed as exc:
            c.status, c.error = "failed", str(exc)
        except WorktreeError as exc:
            c.status, c.error = "failed", f"could not prepare or commit its worktree: {exc}"
        except Exception as exc:
            c.status, c.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            c.finished = time.time()
            self.hooks.record_usage(c.number, agent, log_dir)
            self.hooks.emit(
                "candidate_finished", attempt=self.attempt, candidate=c.number, agent=agent,
                status=c.status, check=c.check, diff_lines=c.diff_lines, error=c.error or None,
            )  # fmt: skip

    async def _attempt(self, c: Candidate, path: Path, log_dir: Path) -> None:
        branch = self.branch(c.number)
        await asyncio.to_thread(self._prepare, path, branch)
        setup = self.plan.settings.worktree.setup
        if setup is not None:
            done = await run_command(setup, path, self.plan.settings.worktree.setup_timeout)
            if not done.ok:
                raise TaskFailed(done.failure("the worktree setup command", setup))
        await asyncio.to_thread(self.manager.verify_at, path, branch)
        log_dir.mkdir(parents=True, exist_ok=True)
        cctx = dataclasses.replace(
            self.ctx, agent=c.agent, workdir=path, log_dir=log_dir, workspace=None,
            spawner=None, decider=None,
        )  # fmt: skip
        result = await self.hooks.run_agent(cctx)
        c.result = result if isinstance(result, dict) else {"value": result}
        c.check = "none"
        if self.check is not None:
            done = await run_command(self.check, path, self.plan.settings.worktree.check_timeout)
            c.check = "passed" if done.ok else "failed"
            if not done.ok:
                c.error = done.failure("the check command", self.check)
        c.commit, c.diff_lines, files = await asyncio.to_thread(
            self._commit, c.number, path, branch
        )
        c.status = "succeeded"
        if self.hooks.expects_changes and files == 0:
            c.status, c.error = "failed", "expect_changes: the candidate changed nothing"

    def _prepare(self, path: Path, branch: str) -> None:
        manager = self.manager
        manager.remove_worktree(path, branch)  # left by a run that stopped: start afresh
        git("worktree", "add", "--quiet", "-b", branch, str(path), self.base, cwd=manager.repo)
        manager.copy_included(path)

    def _commit(self, number: int, path: Path, branch: str) -> tuple[str, int, int]:
        """Commit what the candidate left; its commit, and the lines and files changed
        since the base (``git diff --shortstat``)."""
        head = commit_all(path, f"counterpoint: task {self.task} (attempt {self.attempt}, "
                          f"candidate {number})")  # fmt: skip
        git("update-ref", f"refs/heads/{branch}", head, cwd=path)
        stat = git("diff", "--shortstat", self.base, head, cwd=path).stdout
        files = re.search(r"(\d+) files? changed", stat)
        return head, sum(int(n) for n in _SHORTSTAT.findall(stat)), int(files[1]) if files else 0

    # -- choosing --------------------------------------------------------------------------

    def _choose(self) -> Candidate | None:
        """The qualified candidate with the smallest diff, then the earliest finished; every
        other candidate gets the reason it lost."""
        ranked = sorted(
            (c for c in self.candidates if c.qualified),
            key=lambda c: (c.diff_lines or 0, c.finished or 0.0, c.number),
        )
        winner = ranked[0] if ranked else None
        for c in self.candidates:
            c.reason = _why_lost(c, winner)
        if winner is not None:
            winner.chosen = True
        return winner

    def _no_winner(self) -> Exception:
        said = "; ".join(f"candidate {c.number} ({c.agent}): {c.reason}" for c in self.candidates)
        message = f"best-of-{len(self.candidates)}: no candidate qualified: {said}"
        limited = [c for c in self.candidates if c.status == "rate_limited"]
        if len(limited) == len(self.candidates):  # nothing but rate limits: wait, do not fail
            return RateLimited(max(c.retry_after_s for c in limited), message)
        return TaskFailed(message)

    def _adopt(self, winner: Candidate) -> None:
        """The attempt's branch (checked out in its worktree) moves to the winner's commit."""
        vehicle = self.manager.worktree(self.task, self.attempt)
        try:
            git("reset", "--quiet", "--hard", winner.commit or self.base, cwd=vehicle)
        except WorktreeError as exc:
            raise TaskFailed(f"could not take candidate {winner.number}'s work: {exc}") from None

    def _tidy(self, winner: Candidate | None) -> None:
        """Remove the worktrees of candidates that succeeded (the winner's work is adopted);
        keep those of failed ones, as for failed attempts."""
        for c in self.candidates:
            if c.status == "succeeded" and (c is winner or c.check != "failed"):
                self.manager.remove_worktree(self.path(c.number), self.branch(c.number))


def _why_lost(c: Candidate, winner: Candidate | None) -> str:
    if c is winner:
        return ""
    if c.status != "succeeded":
        return f"{c.status}: {c.error}" if c.error else c.status
    if c.check == "failed":
        return f"its check failed: {c.error}"
    if winner is None:
        return "not chosen"
    if (c.diff_lines or 0) > (winner.diff_lines or 0):
        return f"larger diff ({c.diff_lines} lines changed, the winner {winner.diff_lines})"
    return f"same diff size ({c.diff_lines} lines), finished after the winner"


@dataclass
class CandidateHooks:
    """What a best-of-N attempt needs from the run."""

    slots: Slots
    run_agent: RunAgent
    emit: Emit
    record_usage: RecordUsage
    journal: Callable[[str, int, list[Candidate]], None]
    expects_changes: bool


# -- the journal -------------------------------------------------------------------------------


def journal_candidates(
    store: Any, run_id: int, task: str, attempt: int, cs: list[Candidate]
) -> None:
    """Record every candidate of an attempt in the ``candidates`` table."""
    store.ensure_schema(SCHEMA)
    for c in cs:
        store.write(
            "INSERT OR REPLACE INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, task, attempt, c.number, c.agent, c.status, c.check, c.diff_lines,
             c.finished, int(c.chosen), c.reason, c.error),
        )  # fmt: skip


def read_candidates(store: Any, run_id: int, task: str | None = None) -> list[dict[str, Any]]:
    """The journaled candidates of a run (or of one task), by task, attempt and number."""
    store.ensure_schema(SCHEMA)
    where, params = ("AND task = ?", (run_id, task)) if task else ("", (run_id,))
    rows = store.query(
        f"SELECT task, attempt, {_COLUMNS} FROM candidates WHERE run_id = ? {where} "
        "ORDER BY task, attempt, candidate",
        params,
    )
    keys = ("task", "attempt", *(k.strip() for k in _COLUMNS.split(",")))
    found = [dict(zip(keys, row, strict=True)) for row in rows]
    for row in found:
        row["chosen"] = bool(row["chosen"])
        row["check"] = row.pop("check_result")
    return found


def candidate_line(c: dict[str, Any]) -> str:
    """``candidate calc #2 (attempt 1) on codex: succeeded, check passed, 2 lines: chosen``."""
    diff = "-" if c["diff_lines"] is None else f"{c['diff_lines']} lines"
    verdict = "chosen" if c["chosen"] else f"lost: {c['reason']}"
    return (
        f"candidate {c['task']} #{c['candidate']} (attempt {c['attempt']}) on {c['agent']}: "
        f"{c['status']}, check {c['check']}, {diff}: {verdict}"
    )
