"""What a run tells the outside world while it runs: events, observers and states.

Observers follow the middleware pattern: a base class whose hook does nothing,
so a display, a JSON-lines printer or a metrics sink implements only what it
needs. A failing observer is logged and never stops the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from counterpoint.plan.graph import Graph
    from counterpoint.runtime.gates import GateReport

log = logging.getLogger("counterpoint.run")


class TaskState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"  # completed, then undone by its rollback: action

    @property
    def terminal(self) -> bool:
        return self in (
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.BLOCKED,
            TaskState.ROLLED_BACK,
        )


@dataclass(frozen=True, slots=True)
class RunEvent:
    kind: str
    task: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": self.ts, "event": self.kind}
        if self.task is not None:
            out["task"] = self.task
        out.update(self.data)
        return out


@dataclass
class Completion:
    node: int
    attempt: int
    kind: str  # completed | failed | timed_out | rate_limited | cancelled | gate
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    retry_after_s: float = 0.0
    report: GateReport | None = None
    writes: dict[str, Any] = field(default_factory=dict)


class RunObserver:
    """Receives every event of a run; override what you need."""

    def attach(self, graph: Graph) -> None:
        """Called once before the first event with the compiled plan being run."""

    def on_event(self, event: RunEvent) -> None:
        """Called for each event, on the run's event loop: keep it quick."""


class Observers:
    """Fans events out to observers, isolating the run from their failures."""

    def __init__(self, observers: list[RunObserver] | None = None) -> None:
        self.observers = list(observers or [])

    def attach(self, graph: Graph) -> None:
        for observer in self.observers:
            try:
                observer.attach(graph)
            except Exception:
                log.exception("observer %r failed to attach", observer)

    def emit(self, event: RunEvent) -> None:
        for observer in self.observers:
            try:
                observer.on_event(event)
            except Exception:
                log.exception("observer %r failed on %s", observer, event.kind)
