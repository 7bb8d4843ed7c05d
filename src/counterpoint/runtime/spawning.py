"""Tasks that add tasks: ``ctx.spawn`` and ``ctx.wait_for_children``.

A mixin of the orchestrator (like :mod:`counterpoint.runtime.steering`): state lives on
the orchestrator. A running task may add child tasks to the run. They are validated
like plan tasks (known ids, satisfiable requirements and resources, no cycle), join
their parent's milestone (which does not end before they do), are journaled before
they can start (so a resumed run keeps them), and are bounded by
``settings.max_spawn_depth`` and ``settings.max_tasks``.

Children belong to their parent:

* the parent may wait for the children its attempt spawned; while it waits, its agent
  slot is lent to others (so a child may run on the same agent);
* when a parent's attempt stops without completing, its unfinished children (and
  theirs) are cancelled. If the parent is retried, they wait, cancelled, for the new
  attempt: spawning the same id again wakes a waiting child and returns a completed
  one as it is (a completed child is never run again); the children the completing
  attempt did not spawn again are dropped (cancelled, and no longer held against the
  milestone). If the parent fails for good, they stay cancelled.

Task numbers never change when tasks are added (spawned tasks come after the plan's);
the barrier nodes of phases and milestones move up, and everything keyed by them is
moved with them (:meth:`Spawning._grow`).
"""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from counterpoint.agents.base import TaskFailed
from counterpoint.errors import PlanError
from counterpoint.plan.graph import Graph, SpawnedTask
from counterpoint.plan.model import Plan, Task
from counterpoint.runtime.events import Completion, TaskState
from counterpoint.runtime.handles import LoopBound
from counterpoint.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from counterpoint.allocation import AgentPool
    from counterpoint.runtime.orchestrator import RunOptions
    from counterpoint.runtime.runners import Runners

#: How many tasks a run may spawn when ``settings.max_tasks`` is not set.
DEFAULT_SPAWN_ROOM = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS spawned_tasks (
    run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    task TEXT NOT NULL,
    parent TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    milestone TEXT NOT NULL,
    spec TEXT NOT NULL,
    ts REAL NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""

SETTLED = frozenset(
    {
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.BLOCKED,
        TaskState.CANCELLED,
        TaskState.ROLLED_BACK,
    }
)


class SpawnError(TaskFailed):
    """A spawn the run refuses (the message says which task and why). Uncaught, it fails
    the parent's attempt like any task failure."""


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    """How a spawned task ended (what :meth:`TaskContext.wait_for_children` returns)."""

    task: str
    state: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == TaskState.COMPLETED.value


@dataclass(frozen=True, slots=True)
class SpawnRecord:
    task: Task
    parent: str
    attempt: int
    depth: int
    milestone: str
    dropped: bool


def read_spawned(store: SqliteStore, run_id: int) -> list[SpawnRecord]:
    """The tasks a run spawned, in the order they were added."""
    store.ensure_schema(SCHEMA)
    rows = store.query(
        "SELECT task, parent, attempt, depth, milestone, spec, dropped FROM spawned_tasks "
        "WHERE run_id = ? ORDER BY seq",
        (run_id,),
    )
    return [
        SpawnRecord(Task.model_validate(json.loads(spec)), parent, attempt, depth, ms, bool(d))
        for _, parent, attempt, depth, ms, spec, d in rows
    ]


def run_graph(plan: Plan, store: SqliteStore, run_id: int) -> Graph:
    """The plan's graph with the tasks the run spawned (for reports and status)."""
    graph = plan.compile(check=False)
    extra = _placed(graph, read_spawned(store, run_id))
    if extra:
        graph.extend(extra)
    return graph


def _placed(graph: Graph, records: Iterable[SpawnRecord]) -> list[SpawnedTask]:
    index = {m.id: j for j, m in enumerate(graph.milestones)}
    return [SpawnedTask(r.task, r.parent, index[r.milestone], r.depth) for r in records]


class SpawnHandle(LoopBound):
    """What one attempt of a task uses to spawn children and wait for them.

    Safe to call from the thread a plain (non-async) Python agent runs in.
    """

    def __init__(self, orch: Spawning, task: int, attempt: int) -> None:
        super().__init__()
        self.orch = orch
        self.task = task
        self.attempt = attempt
        self.spawned: list[str] = []  # by this attempt, in order

    def spawn(self, specs: Sequence[dict[str, Any] | Task]) -> list[str]:
        if self.on_loop():
            return self.orch.spawn_children(self, specs)
        return self.blocking(self.spawn_async(list(specs)), "spawn")

    async def spawn_async(self, specs: list[Any]) -> list[str]:
        """:meth:`spawn` on the run's loop (the control channel of a program uses it)."""
        return self.orch.spawn_children(self, specs)

    async def wait(self, ids: Sequence[str] | None = None) -> dict[str, ChildOutcome]:
        return await self.orch.wait_for_children(self, ids)

    def wait_blocking(self, ids: Sequence[str] | None = None) -> dict[str, ChildOutcome]:
        return self.blocking(self.wait(ids), "wait_for_children")


class Spawning:
    """Spawned tasks; see the module docstring."""

    g: Graph
    plan: Plan
    plan_dir: Path
    run_id: int
    store: SqliteStore
    options: RunOptions
    runners: Runners
    agents: AgentPool
    state: list[TaskState]
    attempts: list[int]
    failures: list[int]
    losses: list[int]
    agent_of: list[int | None]
    started: list[float | None]
    done: bytearray
    blocked: bytearray
    waiting: list[int]
    running: dict[int, asyncio.Task[None]]
    gates_running: dict[int, asyncio.Task[None]]
    gates_waiting: set[int]
    gate_rechecks: dict[int, float]
    completions: deque[Completion]
    wake: asyncio.Event
    cancelling: str | None
    error: dict[int, str]

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        raise NotImplementedError

    def _save(self, t: int, result: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def _on_ready(self, v: int) -> None:
        raise NotImplementedError

    def _finish_attempt(self, done: Completion, status: str) -> None:
        raise NotImplementedError

    def _init_spawn(self) -> None:
        self.store.ensure_schema(SCHEMA)
        self.parent_of: dict[int, int] = {}
        self.children: dict[int, list[int]] = {}
        self.spawn_depth: dict[int, int] = {}
        self.dormant: set[int] = set()  # cancelled with their parent, until spawned again
        self.withdrawing: dict[int, str] = {}  # running child being cancelled -> "retry"/"failed"
        self.child_results: dict[int, dict[str, Any]] = {}
        self.child_waits: dict[int, tuple[set[int], asyncio.Future[None]]] = {}
        self.lent: dict[int, tuple[asyncio.Future[None], int]] = {}  # waiting parent -> slot
        self._spawn_seq = 0

    # -- start and resume ----------------------------------------------------------------

    def _restore_spawned(self) -> list[int]:
        """Put the journaled spawned tasks back (before the tasks' states are restored);
        returns the dropped ones."""
        records = read_spawned(self.store, self.run_id)
        self._spawn_seq = len(records)
        if not records:
            return []
        for record in records:
            self._build_runners(record.task)
        self._grow(_placed(self.g, records))
        dropped = []
        for record in records:
            c = self.g.index[record.task.id]
            self._adopt(c, self.g.index[record.parent], record.depth)
            if record.dropped:
                dropped.append(c)
        return dropped

    def _settle_restored(self, previous: dict[str, Any], dropped: list[int]) -> None:
        """After a resume: dropped children stay dropped, and the unfinished children of a
        parent that did not complete wait for it to spawn them again."""
        for c in dropped:
            self.state[c] = TaskState.CANCELLED
            self.done[c] = 1
        for c, p in self.parent_of.items():
            rec = previous.get(self.g.task_ids[c])
            if rec is not None and rec.state == TaskState.COMPLETED and rec.result is not None:
                self.child_results[c] = rec.result
            if self.done[c] or self.state[p] is TaskState.COMPLETED:
                continue
            if self.state[c] in (TaskState.PENDING, TaskState.CANCELLED):
                self.state[c] = TaskState.PENDING
                self.dormant.add(c)

    # -- spawning ------------------------------------------------------------------------

    def spawn_children(
        self, handle: SpawnHandle, specs: Sequence[dict[str, Any] | Task]
    ) -> list[str]:
        """Validate and add ``specs`` as children of ``handle``'s task; returns their ids."""
        t = handle.task
        parent = self.g.task_ids[t]
        if self.attempts[t] != handle.attempt or self.state[t] is not TaskState.RUNNING:
            raise SpawnError(f"{parent}: attempt {handle.attempt} is over; it cannot spawn")
        if self.cancelling is not None:
            raise SpawnError(f"{parent}: the run is stopping; nothing can be spawned")
        if isinstance(specs, dict | Task):
            specs = [specs]
        depth = self.spawn_depth.get(t, 0) + 1
        limit = self.plan.settings.max_spawn_depth
        if depth > limit:
            raise SpawnError(
                f"{parent}: cannot spawn: its children would be {depth} levels deep "
                f"(settings.max_spawn_depth is {limit})"
            )
        tasks: list[Task] = []
        again: list[int] = []
        for i, spec in enumerate(specs):
            auto = f"{parent}.{len(handle.spawned) + i + 1}"
            task = self._child_spec(parent, t, spec, auto, i)
            known = self.g.index.get(task.id)
            if known is not None:
                again.append(self._spawned_again(t, known, task))
            elif any(other.id == task.id for other in tasks):
                raise SpawnError(f"{parent}: spawns task {task.id!r} twice")
            else:
                tasks.append(task)
        if tasks:
            self._check_new(parent, tasks)
            self._add(t, depth, handle.attempt, tasks)
        ids = []
        for spec_task in [*(self.g.tasks[c] for c in again), *tasks]:
            ids.append(spec_task.id)
        for c in again:
            self._wake(c)
        handle.spawned.extend(i for i in ids if i not in handle.spawned)
        order = {(s.id if isinstance(s, Task) else s.get("id")): n for n, s in enumerate(specs)}
        ids.sort(key=lambda i: order.get(i, len(order)))
        return ids

    def _child_spec(
        self, parent: str, t: int, spec: dict[str, Any] | Task, auto: str, i: int
    ) -> Task:
        if isinstance(spec, Task):
            return spec
        if not isinstance(spec, dict):
            raise SpawnError(
                f"{parent}: spawn takes task definitions (dicts), got {type(spec).__name__}"
            )
        data = dict(spec)
        data.setdefault("id", auto)
        if "priority" not in data:
            data["priority"] = self.plan.effective(self.g.tasks[t]).priority.value
        try:
            return Task.model_validate(data)
        except ValidationError as exc:
            name = data.get("id", f"#{i + 1}")
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg']}" for e in exc.errors()
            )
            raise SpawnError(f"{parent}: spawned task {name!r}: {problems}") from None

    def _spawned_again(self, t: int, c: int, task: Task) -> int:
        """``task`` names an existing task: only the same child of the same parent."""
        parent = self.g.task_ids[t]
        if self.parent_of.get(c) != t:
            raise SpawnError(f"{parent}: task id {task.id!r} is already a task of the run")
        before = self.g.tasks[c].model_dump(exclude_defaults=True)
        if task.model_dump(exclude_defaults=True) != before:
            raise SpawnError(
                f"{parent}: {task.id!r} was spawned before with another definition; "
                "give the new task another id"
            )
        return c

    def _check_new(self, parent: str, tasks: list[Task]) -> None:
        limit = self.plan.settings.max_tasks or self.g.n_plan_tasks + DEFAULT_SPAWN_ROOM
        if self.g.n_tasks + len(tasks) > limit:
            raise SpawnError(
                f"{parent}: cannot spawn {len(tasks)} task(s): the run would have "
                f"{self.g.n_tasks + len(tasks)} tasks, more than settings.max_tasks ({limit})"
            )
        batch = {task.id for task in tasks}
        for task in tasks:
            where = f"{parent}: spawned task {task.id!r}"
            for need in task.needs:
                if need not in self.g.index and need not in batch:
                    close = difflib.get_close_matches(need, [*self.g.task_ids, *batch], n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise SpawnError(f"{where}: needs {need!r}, which is no task of the run{hint}")
            self._check_agents(where, task)
            self._check_resources(where, task)

    def _check_agents(self, where: str, task: Task) -> None:
        if task.run is not None:
            return
        need = set(task.requires)
        able = [
            name
            for name, a in self.plan.agents.items()
            if need <= set(a.capabilities) and a.capacity > 0
        ]
        if not able:
            closest = max(
                self.plan.agents,
                key=lambda n: len(need & set(self.plan.agents[n].capabilities)),
                default=None,
            )
            missing = sorted(need - set(self.plan.agents[closest].capabilities)) if closest else []
            hint = f"; the closest, {closest!r}, lacks {missing}" if closest else ""
            raise SpawnError(f"{where}: no agent can run it (requires {sorted(need)}){hint}")
        bare = [name for name in able if name not in self.runners.by_agent]
        if bare:
            raise SpawnError(
                f"{where}: it could be given to agent {bare[0]!r}, which has no runner; "
                "give the task its own run:"
            )

    def _check_resources(self, where: str, task: Task) -> None:
        for name, units in task.resources.items():
            spec = self.plan.resources.get(name)
            if spec is None:
                close = difflib.get_close_matches(name, list(self.plan.resources), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpawnError(f"{where}: resource {name!r} is not in the plan{hint}")
            if spec.capacity is not None and units > spec.capacity:
                raise SpawnError(
                    f"{where}: needs {units} {name}, more than its capacity {spec.capacity}"
                )
            if spec.rate is not None and units > spec.rate:
                raise SpawnError(f"{where}: needs {units} {name}, more than its rate {spec.rate:g}")

    def _build_runners(self, task: Task) -> None:
        from counterpoint.runtime.runners import build_runner

        try:
            if task.run is not None:
                self.runners.by_task[task.id] = build_runner(
                    task.run, self.plan_dir, self.options.kill_grace_s
                )
            if task.rollback is not None:
                if task.rollback.remote:
                    raise SpawnError(f"spawned task {task.id!r}: a remote rollback: is not allowed")
                self.runners.rollback_by_task[task.id] = build_runner(
                    task.rollback, self.plan_dir, self.options.kill_grace_s
                )
        except SpawnError:
            raise
        except Exception as exc:  # e.g. a python runner that does not import
            raise SpawnError(f"spawned task {task.id!r}: {exc}") from None

    def _add(self, t: int, depth: int, attempt: int, tasks: list[Task]) -> None:
        parent = self.g.task_ids[t]
        m = self.g.milestone_of_task[t]
        milestone = self.g.milestones[m].id
        placed = [SpawnedTask(task, parent, m, depth) for task in tasks]
        runners_before = (dict(self.runners.by_task), dict(self.runners.rollback_by_task))
        try:
            for task in tasks:
                self._build_runners(task)
            self._grow(placed)
        except PlanError as exc:
            self.runners.by_task, self.runners.rollback_by_task = runners_before
            raise SpawnError(f"{parent}: the spawned tasks would close a cycle: {exc}") from None
        except SpawnError:
            self.runners.by_task, self.runners.rollback_by_task = runners_before
            raise
        now = time.time()
        for task in tasks:
            self.store.write(
                "INSERT INTO spawned_tasks (run_id, seq, task, parent, attempt, depth, "
                "milestone, spec, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.run_id,
                    self._spawn_seq,
                    task.id,
                    parent,
                    attempt,
                    depth,
                    milestone,
                    json.dumps(task.model_dump(mode="json", by_alias=True, exclude_defaults=True)),
                    now,
                ),
            )
            self._spawn_seq += 1
        phase = self.plan.phases[self.g.phase_of_task[t]].id
        ready = []
        for task in tasks:
            c = self.g.index[task.id]
            self._adopt(c, t, depth)
            self._save(c)
            self.emit(
                "task_spawned",
                c,
                parent=parent,
                depth=depth,
                milestone=milestone,
                phase=phase,
                needs=task.needs,
                requires=task.requires,
            )
            ps, pred = self.g.pred_start, self.g.pred
            self.waiting[c] = sum(1 for i in range(ps[c], ps[c + 1]) if not self.done[pred[i]])
            if self.waiting[c] == 0:
                ready.append(c)
        end = self.g.milestone_end(m)
        self.waiting[end] += len(tasks)
        for c in ready:
            self._on_ready(c)
        self.wake.set()

    def _adopt(self, c: int, parent: int, depth: int) -> None:
        self.parent_of[c] = parent
        self.children.setdefault(parent, []).append(c)
        self.spawn_depth[c] = depth

    def _grow(self, placed: list[SpawnedTask]) -> None:
        """Extend the graph by ``placed`` and everything sized or keyed by its nodes."""
        old = self.g.n_tasks
        self.g.extend(placed)  # raises PlanError before anything changes
        k = self.g.n_tasks - old

        def up(v: int) -> int:
            return v + k if v >= old else v

        self.state.extend([TaskState.PENDING] * k)
        for array in (self.attempts, self.failures, self.losses):
            array.extend([0] * k)
        self.agent_of.extend([None] * k)
        self.started.extend([None] * k)
        self.done[old:old] = bytes(k)
        self.blocked[old:old] = bytes(k)
        self.waiting[old:old] = [0] * k
        self.gates_running = {up(v): task for v, task in self.gates_running.items()}
        self.gates_waiting = {up(v) for v in self.gates_waiting}
        self.gate_rechecks = {up(v): when for v, when in self.gate_rechecks.items()}
        for done in self.completions:
            if done.kind == "gate":
                done.node = up(done.node)

    # -- children that wait, wake or go -------------------------------------------------

    def _wake(self, c: int) -> None:
        if c not in self.dormant:
            return
        self.dormant.discard(c)
        self.emit("task_respawned", c, parent=self.g.task_ids[self.parent_of[c]])
        if self.waiting[c] == 0 and not self.blocked[c]:
            self._on_ready(c)

    def _descendants_spawned(self, t: int) -> list[int]:
        out: list[int] = []
        stack = list(self.children.get(t, ()))
        while stack:
            c = stack.pop()
            out.append(c)
            stack.extend(self.children.get(c, ()))
        return out

    def parent_stopped(self, t: int, how: str) -> None:
        """``t``'s attempt ended without completing: ``retry`` (it runs again) or ``failed``
        (for good); its unfinished children, and theirs, are cancelled."""
        reason = f"its parent {self.g.task_ids[t]} " + (
            "stopped; it waits to be spawned again" if how == "retry" else "did not complete"
        )
        for c in self._descendants_spawned(t):
            st = self.state[c]
            if (st in SETTLED and st is not TaskState.CANCELLED) or self.done[c]:
                continue
            if c in self.running:
                self.withdrawing[c] = how
                self.running[c].cancel()
            elif c not in self.dormant or how == "failed":
                self._withdrawn(c, how, reason)

    def _withdrawn(self, c: int, how: str, reason: str) -> None:
        if how == "retry":
            self.state[c] = TaskState.PENDING
            self.dormant.add(c)
        else:
            self.dormant.discard(c)
            self.state[c] = TaskState.CANCELLED
            self.blocked[c] = 1
        self._save(c)
        self.emit("task_cancelled", c, reason=reason)

    def withdrawn_ended(self, done: Completion) -> None:
        """A running child cancelled with its parent has stopped."""
        c = done.node
        how = self.withdrawing.pop(c)
        self._finish_attempt(done, "cancelled")
        parent = self.g.task_ids[self.parent_of[c]]
        self._withdrawn(c, how, f"its parent {parent} stopped")

    def parent_completed(self, t: int) -> None:
        """Children ``t`` did not spawn again in the attempt that completed are dropped."""
        for c in self.children.get(t, ()):
            if c in self.dormant:
                self._drop(c, f"its parent {self.g.task_ids[t]} completed without spawning it")

    def _drop(self, c: int, reason: str) -> None:
        if self.done[c]:
            return
        self.dormant.discard(c)
        self.state[c] = TaskState.CANCELLED
        self.done[c] = 1  # it holds nothing back any more
        self._save(c)
        self.store.write(
            "UPDATE spawned_tasks SET dropped = 1 WHERE run_id = ? AND task = ?",
            (self.run_id, self.g.task_ids[c]),
        )
        self.emit("task_dropped", c, reason=reason)
        cid = self.g.task_ids[c]
        for gc in self.children.get(c, ()):
            self._drop(gc, f"its parent {cid} was dropped")
        ss, succ = self.g.succ_start, self.g.succ
        for i in range(ss[c], ss[c + 1]):
            w = succ[i]
            if w < self.g.n_tasks:
                self._drop(w, f"it needs {cid}, which was dropped")
                continue
            self.waiting[w] -= 1
            if self.waiting[w] == 0 and not self.blocked[w] and not self.done[w]:
                self._on_ready(w)

    # -- waiting for children ------------------------------------------------------------

    async def wait_for_children(
        self, handle: SpawnHandle, ids: Sequence[str] | None
    ) -> dict[str, ChildOutcome]:
        t = handle.task
        parent = self.g.task_ids[t]
        names = list(handle.spawned if ids is None else ids)
        kids: list[int] = []
        for name in names:
            c = self.g.index.get(name)
            if c is None or self.parent_of.get(c) != t:
                raise SpawnError(f"{parent}: {name!r} is not a task it spawned")
            kids.append(c)
        after = self.g.descendants(t)
        stuck = [self.g.task_ids[c] for c in kids if c in after]
        if stuck:
            raise SpawnError(
                f"{parent}: cannot wait for {stuck[0]!r}: it waits (through its needs) "
                "for its parent to complete"
            )
        if not all(self._settled(c) for c in kids):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.child_waits[t] = (set(kids), future)
            agent = self.agent_of[t]
            if agent is not None:  # the slot is lent to others while the parent waits
                self.agents.release(agent)
                self.lent[t] = (future, agent)
                self.wake.set()
            self.emit("task_waiting_for_children", t, children=names)
            try:
                await future
            finally:
                self._stop_waiting(t, future)
        return {self.g.task_ids[c]: self._outcome(c) for c in kids}

    def _stop_waiting(self, t: int, future: asyncio.Future[None] | None = None) -> None:
        """End ``t``'s wait for its children (``future``'s, or any when None): the lent
        agent slot is taken back."""
        waiting = self.child_waits.get(t)
        if waiting is not None and (future is None or waiting[1] is future):
            del self.child_waits[t]
            if not waiting[1].done():
                waiting[1].cancel()  # a plain function's thread stops waiting too
        lent = self.lent.get(t)
        if lent is not None and (future is None or lent[0] is future):
            del self.lent[t]
            self.agents.take(lent[1])

    def _settled(self, c: int) -> bool:
        return self.state[c] in SETTLED and c not in self.dormant

    def _outcome(self, c: int) -> ChildOutcome:
        return ChildOutcome(
            self.g.task_ids[c],
            self.state[c].value,
            self.child_results.get(c, {}),
            self.error.get(c),
        )

    def child_changed(self, c: int) -> None:
        """A child's state changed: wake its parent when all it waits for have settled."""
        waiting = self.child_waits.get(self.parent_of[c])
        if waiting is None:
            return
        kids, future = waiting
        if not future.done() and all(self._settled(k) for k in kids):
            future.set_result(None)
