"""The contract between the run engine and whatever executes a task.

A runner is an async callable taking a :class:`TaskContext` and returning the
task's result (a JSON-able dict). It signals failure by raising
:class:`TaskFailed` (or any exception), a rate limit by raising
:class:`RateLimited`, and must stop its work promptly when cancelled
(``asyncio.CancelledError``), killing anything it started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from counterpoint.errors import CounterpointError
from counterpoint.messaging.bus import Bus, Mailbox
from counterpoint.messaging.protocol import Message, now
from counterpoint.plan.model import Task


class TaskFailed(CounterpointError):
    """The task's work failed; the message says why (it is journaled and shown)."""


class RateLimited(CounterpointError):
    """The work hit a rate limit: re-queue the task after ``retry_after_s`` seconds.

    The buckets of the rate-limited resources the task holds are drained for the
    same time, so every other agent drawing on them backs off too. A rate limit
    does not use up one of the task's retries.
    """

    def __init__(self, retry_after_s: float, message: str = "") -> None:
        super().__init__(message or f"rate limited: retry after {retry_after_s:g}s")
        self.retry_after_s = max(0.0, float(retry_after_s))


class AgentLost(CounterpointError):
    """The agent running the task was lost (or is not connected): the task goes back to the
    queue without using up a retry, and a late result from that attempt is refused."""


ProgressSink = Callable[[str, float, str], None]


class StateView:
    """A task's view of the run's shared state: what it reads, and the writes it stages.

    Writes are not visible to other tasks until the task completes and the run engine
    commits them (conflicts are decided then); a failed attempt's writes are dropped.
    """

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self._values = dict(values or {})
        self.writes: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        """The key's value: this task's own write, else the committed value."""
        if key in self.writes:
            return self.writes[key]
        return self._values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Stage a write of a key the task declares in its ``writes``."""
        self.writes[key] = value

    def keys(self) -> list[str]:
        return sorted(set(self._values) | set(self.writes))

    def snapshot(self) -> dict[str, Any]:
        return {**self._values, **self.writes}


@dataclass
class TaskContext:
    """Everything a running task may know or do, handed to its runner."""

    run_id: str
    task: Task
    attempt: int
    agent: str | None
    state_dir: Path
    workdir: Path
    log_dir: Path
    time_scale: float = 1.0
    estimate_s: float = 0.0
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("counterpoint.task"))
    on_progress: ProgressSink | None = None
    bus: Bus | None = None
    response_sla_s: float = 3600.0
    state: StateView = field(default_factory=StateView)
    #: For a remote agent with ``workspace: worktree``: the branch to work on (see
    #: :meth:`counterpoint.agents.worktree.WorktreeManager.prepare_remote`).
    workspace: dict[str, Any] | None = None
    #: Set when this is the compensation (``rollback:`` action) of a completed task:
    #: ``{"rollback_id": N, "attempt": N}``; also in the payload and the environment.
    rollback: dict[str, Any] | None = None
    #: Spawns children for this attempt (a :class:`counterpoint.runtime.spawning.SpawnHandle`;
    #: None where tasks cannot spawn).
    spawner: Any = None
    #: Puts decisions to a vote for this attempt (a
    #: :class:`counterpoint.runtime.coordination.DecisionHandle`; None where it cannot).
    decider: Any = None

    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def inputs(self) -> dict[str, Any]:
        return self.task.inputs

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and resumes of the same task in the same run (a
        compensation has its own: ``RUN:TASK:rollback``)."""
        suffix = ":rollback" if self.rollback is not None else ""
        return f"{self.run_id}:{self.task.id}{suffix}"

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100): shown live and passed to every run observer."""
        if self.on_progress is not None:
            self.on_progress(self.task.id, max(0.0, min(100.0, float(percent))), message)

    @property
    def sender(self) -> str:
        return self.agent or f"task:{self.task.id}"

    async def send(
        self,
        recipient: str,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        severity: str = "info",
        priority: str = "medium",
    ) -> Message:
        """Send a notification to an agent, a group (a capability) or ``*`` (everyone)."""
        message = Message.model_validate(
            {
                "sender": self.sender,
                "recipient": recipient,
                "type": "notification",
                "timestamp": now(),
                "priority": priority,
                "content": {
                    "task_id": self.task.id,
                    "event_type": event_type,
                    "severity": severity,
                    "data": data or {},
                },
            }
        )
        await self._bus().publish(message)
        return message

    async def request(
        self, recipient: str, request_type: str, data: dict[str, Any], priority: str = "medium"
    ) -> Message:
        """Ask ``recipient`` and wait for its response (overdue after ``response_sla``)."""
        message = Message.model_validate(
            {
                "sender": self.sender,
                "recipient": recipient,
                "type": "request",
                "timestamp": now(),
                "priority": priority,
                "content": {"task_id": self.task.id, "request_type": request_type, "data": data},
            }
        )
        return await self._bus().request(message, self.response_sla_s)

    def inbox(self) -> Mailbox:
        """This agent's mailbox: messages sent to it, its groups, or everyone."""
        return self._bus().subscribe(self.sender)

    def _bus(self) -> Bus:
        if self.bus is None:
            raise TaskFailed("this task runs without a message bus")
        return self.bus

    def spawn(self, tasks: dict[str, Any] | Task | list[dict[str, Any] | Task]) -> list[str]:
        """Add child tasks to the run; returns their ids.

        Each is a task definition as in a plan file (``id`` defaults to
        ``PARENT.N``, ``priority`` to the parent's); it joins this task's milestone,
        may ``needs`` any task of the run or a sibling given in the same call, and is
        validated like a plan task (:class:`SpawnError` names what is wrong). Spawning
        the same child again (a retried parent) returns it as it is. Callable from a
        plain function's thread as well as from a coroutine.
        """
        if self.spawner is None:
            raise TaskFailed(f"{self.task.id}: this task cannot spawn subtasks here")
        batch = tasks if isinstance(tasks, list) else [tasks]
        return list(self.spawner.spawn(batch))

    async def wait_for_children(self, ids: list[str] | None = None) -> dict[str, Any]:
        """Wait until the children this attempt spawned (or ``ids``) have ended; returns a
        :class:`ChildOutcome` per child (``state``, ``result``, ``error``, ``ok``).

        While it waits, the task's agent slot is free for other tasks (its children
        among them).
        """
        if self.spawner is None:
            raise TaskFailed(f"{self.task.id}: this task has no children to wait for")
        outcomes: dict[str, Any] = await self.spawner.wait(ids)
        return outcomes

    def wait_for_children_sync(self, ids: list[str] | None = None) -> dict[str, Any]:
        """:meth:`wait_for_children` for plain (non-async) Python agents."""
        if self.spawner is None:
            raise TaskFailed(f"{self.task.id}: this task has no children to wait for")
        outcomes: dict[str, Any] = self.spawner.wait_blocking(ids)
        return outcomes

    async def propose_decision(
        self,
        question: str,
        options: list[Any],
        *,
        voters: list[str] | None = None,
        quorum: int | str | None = None,
        deadline: float | str | None = None,
    ) -> Any:
        """Put ``question`` to a vote of ``voters`` (default ``settings.voting.voters``)
        among ``options``; returns the :class:`~counterpoint.runtime.voting.Decision` once
        it is made: by the vote, or by a person after a tie or a missing quorum (raises
        ``DecisionFailed`` when nobody decided before the escalation ran out). ``quorum``
        (a number, ``majority`` or ``all``) and ``deadline`` (plan time) default to
        ``settings.voting``. See docs/coordination.md."""
        if self.decider is None:
            raise TaskFailed(f"{self.task.id}: this task cannot propose decisions here")
        return await self.decider.propose(question, options, voters, quorum, deadline)

    def propose_decision_sync(
        self,
        question: str,
        options: list[Any],
        *,
        voters: list[str] | None = None,
        quorum: int | str | None = None,
        deadline: float | str | None = None,
    ) -> Any:
        """:meth:`propose_decision` for plain (non-async) Python agents: blocks its thread."""
        if self.decider is None:
            raise TaskFailed(f"{self.task.id}: this task cannot propose decisions here")
        return self.decider.propose_blocking(question, options, voters, quorum, deadline)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of plan time (multiplied by the run's time scale)."""
        await asyncio.sleep(max(0.0, seconds * self.time_scale))

    def payload(self) -> dict[str, Any]:
        """The JSON a shell or remote agent receives on stdin."""
        t = self.task
        return {
            "run_id": self.run_id,
            "attempt": self.attempt,
            "agent": self.agent,
            "idempotency_key": self.idempotency_key,
            "time_scale": self.time_scale,
            "task": {
                "id": t.id,
                "name": t.title,
                "instructions": t.instructions,
                "inputs": t.inputs,
                "requires": t.requires,
                "reads": t.reads,
                "writes": t.writes,
                "estimate_s": self.estimate_s,
            },
            "state": self.state.snapshot(),
            **({"workspace": self.workspace} if self.workspace is not None else {}),
            **({"rollback": self.rollback} if self.rollback is not None else {}),
        }


class Runner(Protocol):
    """Executes one attempt of a task."""

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]: ...
