"""The governor: what coding agents cost, summed, and the run's budget.

Every attempt of a coding runner leaves a ledger (``<attempt>.coding.json`` in its log
folder, see agents/coding.py) whatever its outcome; when the attempt ends the run
records it here, in the ``coding_usage`` table of the journal (session id, tokens, cost,
status), so cost and tokens can be summed per task, agent, phase and run
(:func:`usage_totals`, shown by ``counterpoint report`` and ``status``).

``settings.budget.max_cost_usd`` is the run's budget: once the recorded cost reaches it,
no new task starts (those running finish), the run says so, opens an escalation and
ends failed. A task's own ``max_cost_usd`` is enforced by its runner.

:func:`unchanged` tells whether an attempt in a worktree changed nothing (``expect_changes``).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.agents.coding import read_ledger

if TYPE_CHECKING:
    from counterpoint.plan.model import Budget
    from counterpoint.store.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS coding_usage (
    run_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent TEXT,
    phase TEXT NOT NULL,
    cli TEXT NOT NULL,
    session_id TEXT,
    status TEXT NOT NULL,
    error_class TEXT,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    turns INTEGER,
    recorded REAL NOT NULL,
    PRIMARY KEY (run_id, task, attempt)
) WITHOUT ROWID;
"""
_UPSERT = """
INSERT INTO coding_usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, task, attempt) DO UPDATE SET
    session_id = excluded.session_id, status = excluded.status,
    error_class = excluded.error_class, input_tokens = excluded.input_tokens,
    cached_input_tokens = excluded.cached_input_tokens, output_tokens = excluded.output_tokens,
    cost_usd = excluded.cost_usd, turns = excluded.turns, recorded = excluded.recorded
"""
_COLUMNS = (
    "task, attempt, agent, phase, cli, session_id, status, error_class, input_tokens,"
    " cached_input_tokens, output_tokens, cost_usd, turns"
)


@dataclass(frozen=True)
class Usage:
    """One coding attempt as recorded."""

    task: str
    attempt: int
    agent: str | None
    phase: str
    cli: str
    session_id: str | None
    status: str
    error_class: str | None
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: float
    turns: int | None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Governor:
    """Records coding attempts in the journal and watches the run's budget."""

    def __init__(self, store: SqliteStore, run_id: int, budget: Budget | None) -> None:
        self.store = store
        self.run_id = run_id
        self.budget = budget
        self.spent_usd = 0.0
        self.stopped = False  # the budget was reached and the run told
        store.ensure_schema(SCHEMA)

    def restore(self) -> None:
        """What the run's coding agents spent before a resume."""
        self.spent_usd = sum(u.cost_usd for u in read_usage(self.store, self.run_id))

    def record(
        self, task: str, attempt: int, agent: str | None, phase: str, log_dir: Path
    ) -> Usage | None:
        """Journal the attempt's ledger, if it was a coding attempt (None otherwise)."""
        entry = read_ledger(log_dir, attempt)
        if entry is None:
            return None
        usage = _usage(task, attempt, agent, phase, entry)
        self.store.write(_UPSERT, (self.run_id, *_row(usage), time.time()))
        self.spent_usd += usage.cost_usd
        return usage

    @property
    def reached(self) -> bool:
        """The run's budget is spent (there is one, and the recorded cost reached it)."""
        return self.budget is not None and self.spent_usd >= self.budget.max_cost_usd

    def message(self) -> str:
        limit = self.budget.max_cost_usd if self.budget is not None else 0.0
        return (
            f"the run's budget of ${limit:g} was reached (${self.spent_usd:.4f} spent by "
            "coding agents): no new task starts"
        )


def _usage(task: str, attempt: int, agent: str | None, phase: str, e: dict[str, Any]) -> Usage:
    def num(key: str) -> float:
        value = e.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    turns = e.get("turns")
    return Usage(
        task=task,
        attempt=attempt,
        agent=agent,
        phase=phase,
        cli=str(e.get("cli", "?")),
        session_id=e.get("session_id") if isinstance(e.get("session_id"), str) else None,
        status=str(e.get("status", "error")),
        error_class=e.get("error_class") if isinstance(e.get("error_class"), str) else None,
        input_tokens=int(num("input_tokens")),
        cached_input_tokens=int(num("cached_input_tokens")),
        output_tokens=int(num("output_tokens")),
        cost_usd=num("cost_usd"),
        turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
    )


def _row(u: Usage) -> tuple[Any, ...]:
    return (
        u.task, u.attempt, u.agent, u.phase, u.cli, u.session_id, u.status, u.error_class,
        u.input_tokens, u.cached_input_tokens, u.output_tokens, u.cost_usd, u.turns,
    )  # fmt: skip


def read_usage(store: SqliteStore, run_id: int) -> list[Usage]:
    """Every coding attempt the run recorded, in the order of tasks and attempts."""
    store.ensure_schema(SCHEMA)
    rows = store.query(
        f"SELECT {_COLUMNS} FROM coding_usage WHERE run_id = ? ORDER BY task, attempt", (run_id,)
    )
    return [Usage(*row) for row in rows]


def usage_totals(records: list[Usage]) -> dict[str, Any]:
    """Cost, tokens and attempts summed per task, agent, phase and for the whole run."""
    totals: dict[str, Any] = {"run": _zero(), "by_task": {}, "by_agent": {}, "by_phase": {}}
    for u in records:
        for bucket in (
            totals["run"],
            totals["by_task"].setdefault(u.task, _zero()),
            totals["by_agent"].setdefault(u.agent or "(none)", _zero()),
            totals["by_phase"].setdefault(u.phase, _zero()),
        ):
            bucket["attempts"] += 1
            bucket["cost_usd"] = round(bucket["cost_usd"] + u.cost_usd, 6)
            bucket["input_tokens"] += u.input_tokens
            bucket["output_tokens"] += u.output_tokens
    return totals


def _zero() -> dict[str, Any]:
    return {"attempts": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}


def usage_text(bucket: dict[str, Any]) -> str:
    """``$0.0300, 450 in / 60 out tokens, 3 attempts``."""
    n = bucket["attempts"]
    return (
        f"${bucket['cost_usd']:.4f}, {bucket['input_tokens']} in / {bucket['output_tokens']} "
        f"out tokens, {n} attempt{'s' * (n != 1)}"
    )


# -- expect_changes ------------------------------------------------------------------------------


def unchanged(worktree: Path, integration: str) -> bool:
    """The worktree holds nothing to commit and no commit the integration branch lacks."""
    status = _git(worktree, "status", "--porcelain", "--untracked-files=all")
    if status is None or status.strip():
        return False
    ahead = _git(worktree, "rev-list", "--count", f"{integration}..HEAD")
    return ahead is not None and ahead.strip() == "0"


def _git(cwd: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None
