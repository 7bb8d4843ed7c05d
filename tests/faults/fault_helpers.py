"""Helpers of the fault-injection suite (tests/faults/, docs/reliability.md).

Runs are driven in forked children of the test process (the library's ``start_run`` /
``resume_run``, as ``counterpoint run`` / ``resume`` call them): a child starts in
milliseconds, so a scenario can crash a run at many points within the suite's budget.
The store's fault hook (``COUNTERPOINT_FAULT_KILL_AT``, ``_IO_AT``, ``_TRACE``) is
armed in the child only. What agents really did comes from the recording agent's
records (tests/integration/run_helpers.py), never from the engine's counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run_helpers import Workspace, quick_options

from counterpoint.runtime.session import resume_run, start_run
from counterpoint.store import sqlite as store_sqlite

FULL = os.environ.get("COUNTERPOINT_FAULTS", "") == "full"
FIGURES_NAME = "fault-figures.json"
FAULT_VARS = ("COUNTERPOINT_FAULT_KILL_AT", "COUNTERPOINT_FAULT_IO_AT", "COUNTERPOINT_FAULT_TRACE")
KILLED = -signal.SIGKILL

_default_figures: Path | None = None


def set_default_figures_path(path: Path) -> None:
    global _default_figures
    _default_figures = path


def figures_path() -> Path | None:
    given = os.environ.get("COUNTERPOINT_FAULT_FIGURES")
    return Path(given) if given else _default_figures


def figure(name: str, value: Any) -> None:
    """Report a scenario's figure: a ``FIGURE name=value`` line and an entry in the
    figures file (a JSON object; the latest value of a name wins)."""
    print(f"FIGURE {name}={value}")
    path = figures_path()
    if path is None:
        return
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
    data[name] = value
    data.setdefault("_mode", "full" if FULL else "short")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")


def size(short: int, full: int) -> int:
    return full if FULL else short


def workspace(folder: Path) -> Workspace:
    """A run_helpers Workspace in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Workspace.create(folder)


# -- forked runs ---------------------------------------------------------------------------


def forked(fn: Callable[[], int], env: dict[str, str] | None = None, timeout: float = 300) -> int:
    """``fn()`` in a forked child with ``env`` added (the fault variables cleared unless
    given): its exit code, or ``-signal`` when a signal ended it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 98
        try:
            for name in FAULT_VARS:
                os.environ.pop(name, None)
            os.environ.update(env or {})
            store_sqlite._faults = store_sqlite._UNREAD  # armed afresh from env
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):  # exiting anyway
                    stream.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked run still going after {timeout}s")
        time.sleep(0.01)


def kill_env(when: str, at: int) -> dict[str, str]:
    return {"COUNTERPOINT_FAULT_KILL_AT": f"{when}:{at}"}


def run_forked(ws: Workspace, env: dict[str, str] | None = None, **options: Any) -> int:
    return forked(
        lambda: start_run(ws.plan, ws.state, quick_options(**options), sync="normal"), env
    )


def resume_forked(ws: Workspace, env: dict[str, str] | None = None, **options: Any) -> int:
    return forked(lambda: resume_run(ws.state, quick_options(**options), sync="normal"), env)


# -- reading the journal directly (what the engine will act on) -------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The journal's view of the latest run: task -> (state, attempts), attempt outcomes."""

    run_status: str
    tasks: dict[str, tuple[str, int]]
    attempts: dict[tuple[str, int], str]

    def completed(self) -> set[str]:
        return {t for t, (s, _) in self.tasks.items() if s == "completed"}


def snapshot(state: Path) -> Snapshot:
    """Read with plain sqlite3 (read-only), so reading never arms or counts the fault hook."""
    db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        run_id, status = db.execute(
            "SELECT id, status FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        tasks = {
            r[0]: (r[1], r[2])
            for r in db.execute(
                "SELECT task, state, attempts FROM tasks WHERE run_id = ?", (run_id,)
            )
        }
        attempts = {
            (r[0], r[1]): r[2]
            for r in db.execute(
                "SELECT task, attempt, status FROM attempts WHERE run_id = ?", (run_id,)
            )
        }
    finally:
        db.close()
    return Snapshot(status, tasks, attempts)


# -- crash chains -----------------------------------------------------------------------------


@dataclass
class Crash:
    """One process of a crash chain: its kill point and the journal right after it."""

    point: str
    code: int
    pids: set[int] = field(default_factory=set)
    after: Snapshot | None = None


@dataclass
class Chain:
    """A run driven to its end through crashes: what each process left in the journal."""

    crashes: list[Crash] = field(default_factory=list)
    final_code: int = -1


def crash_chain(
    ws: Workspace,
    points: list[tuple[str, int]],
    *,
    start: bool = True,
    max_clean: int = 3,
    **options: Any,
) -> Chain:
    """Start (or resume) the run once per kill point, each process killed at its point
    (``(before|after, N)``: the N-th commit of that process), then resume without faults
    until it ends. A process that ends before its kill point ends the chain early."""
    chain = Chain()
    first = start
    seen_pids = {r["pid"] for r in ws.records()}
    for when, at in points:
        go = run_forked if first else resume_forked
        first = False
        code = go(ws, kill_env(when, at), **options)
        pids = {r["pid"] for r in ws.records()} - seen_pids
        seen_pids |= pids
        crash = Crash(f"{when}:{at}", code, pids, snapshot(ws.state))
        chain.crashes.append(crash)
        if code != KILLED:
            chain.final_code = code
            return chain
    for _ in range(max_clean):
        code = (run_forked if first else resume_forked)(ws, **options)
        first = False
        if code != KILLED:
            chain.final_code = code
            return chain
    raise AssertionError("the run never finished without faults")


@dataclass
class Audit:
    """What the agents' records say about a chain (see each field)."""

    #: executions started after a kill of tasks the journal showed completed at that kill
    completed_reexecuted: list[str] = field(default_factory=list)
    #: tasks with no successful execution at the end (among those expected to complete)
    lost: list[str] = field(default_factory=list)
    #: per kill: (tasks re-run after it, tasks in flight at it)
    reruns: list[tuple[int, int]] = field(default_factory=list)
    #: re-runs of a task whose attempt at the kill was already concluded in the journal
    reruns_beyond_in_flight: list[str] = field(default_factory=list)


def audit(ws: Workspace, chain: Chain, must_complete: set[str]) -> Audit:
    out = Audit()
    execs = ws.executions()
    for i, crash in enumerate(chain.crashes):
        if crash.code != KILLED or crash.after is None:
            continue
        earlier = set().union(*(c.pids for c in chain.crashes[: i + 1]))
        later = [e for e in execs if e.pid not in earlier]
        done = crash.after.completed()
        out.completed_reexecuted += [f"{e.task}@{crash.point}" for e in later if e.task in done]
        mine = [e for e in execs if e.pid in crash.pids]
        # in flight: started by the killed process, its attempt not concluded in the journal
        in_flight = {
            e.task
            for e in mine
            if crash.after.attempts.get((e.task, e.attempt)) in (None, "running")
        }
        # re-run: work of the killed process (finished by the agent, or in flight) done again
        redone = {e.task for e in mine if e.outcome == "end"} | in_flight
        rerun = {e.task for e in later} & redone
        out.reruns_beyond_in_flight += sorted(rerun - in_flight)
        out.reruns.append((len(rerun), len(in_flight)))
    finished = {e.task for e in execs if e.outcome == "end"}
    out.lost = sorted(must_complete - finished)
    return out


def final_view(state: Path) -> dict[str, Any]:
    """What must be equal between a crash-free run and a crashed-and-resumed one: the run's
    status, each task's state and its result's task id (attempt numbers may differ)."""
    from counterpoint.store.sqlite import SqliteStore

    store = SqliteStore(state, create=False)
    try:
        record = store.latest_run()
        assert record is not None
        tasks = store.tasks(record.id)
    finally:
        store.close()
    return {
        "status": record.status,
        "exit_code": record.exit_code,
        "tasks": {
            t: (r.state, (r.result or {}).get("task"), r.blocked_by is not None)
            for t, r in sorted(tasks.items())
        },
    }


def trace_commits(ws: Workspace, trace: Path, **options: Any) -> list[str]:
    """A crash-free run with the commit trace on: one line per commit of the run."""
    code = run_forked(ws, {"COUNTERPOINT_FAULT_TRACE": str(trace)}, **options)
    assert code in (0, 1), code
    return trace.read_text(encoding="utf-8").splitlines()
