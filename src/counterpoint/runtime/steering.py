"""Gates and operator commands: the parts of a run that people steer.

A mixin of :class:`~counterpoint.runtime.orchestrator.Orchestrator`: phase gates
are evaluated when their phase is about to start or end (approvals wait,
durably, for a person), and operator commands (cancel, agent state, approvals)
arrive through the journal from any terminal.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from counterpoint.plan.graph import Graph, NodeKind
from counterpoint.plan.model import Plan
from counterpoint.runtime.events import Completion, TaskState
from counterpoint.runtime.gates import Approval, ConditionResult, GateChecker, GateReport
from counterpoint.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from counterpoint.allocation import AgentPool
    from counterpoint.runtime.orchestrator import RunOptions


class Steering:
    """Gate evaluation and operator commands; state lives on the orchestrator."""

    g: Graph
    plan: Plan
    store: SqliteStore
    run_id: int
    options: RunOptions
    agents: AgentPool
    state: list[TaskState]
    checker: GateChecker
    gates_running: dict[int, asyncio.Task[None]]
    gates_waiting: set[int]
    completions: deque[Completion]
    wake: asyncio.Event
    _next_poll: float

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        raise NotImplementedError

    def cancel(self, reason: str = "cancelled") -> None:
        raise NotImplementedError

    def _complete_node(self, v: int) -> None:
        raise NotImplementedError

    def _check_messages(self) -> None:
        raise NotImplementedError

    def _block_downstream(self, v: int, reason: str) -> None:
        raise NotImplementedError

    # -- gates ----------------------------------------------------------------------

    def _gate_of(self, v: int) -> tuple[str, int] | None:
        kind = self.g.kind(v)
        if kind not in (NodeKind.PHASE_START, NodeKind.PHASE_END):
            return None
        k = (v - self.g.n_tasks) // 2
        phase = self.plan.phases[k]
        gate = phase.entry_gate if kind is NodeKind.PHASE_START else phase.exit_gate
        if gate is None or not gate.conditions:
            return None
        return f"{phase.id}.{'entry' if kind is NodeKind.PHASE_START else 'exit'}", k

    def _start_gate(self, v: int) -> None:
        found = self._gate_of(v)
        assert found is not None
        gate_id, k = found
        self.gates_waiting.discard(v)
        self.gates_running[v] = asyncio.create_task(self._evaluate_gate(v, gate_id, k))

    async def _evaluate_gate(self, v: int, gate_id: str, k: int) -> None:
        phase = self.plan.phases[k]
        gate = phase.entry_gate if gate_id.endswith(".entry") else phase.exit_gate
        assert gate is not None
        try:
            report = await self.checker.evaluate(
                gate_id, phase.id, gate, self._metrics(k), self._approvals(gate_id)
            )
        except asyncio.CancelledError:
            report = GateReport(gate_id, phase.id, "cancelled", [])
        except Exception as exc:  # a broken condition fails its gate, never the run
            failed = ConditionResult("error", "evaluation", False, f"{type(exc).__name__}: {exc}")
            report = GateReport(gate_id, phase.id, "blocked", [failed])
        self.completions.append(Completion(v, 0, "gate", report=report))
        self.wake.set()

    def _gate_done(self, done: Completion) -> None:
        v, report = done.node, done.report
        assert report is not None
        self.gates_running.pop(v, None)
        self.emit("gate_evaluated", **report.to_json())
        if report.status == "cancelled":
            return
        if report.passed:
            self._complete_node(v)
        elif report.waiting:
            self.gates_waiting.add(v)
        else:
            self._block_downstream(v, f"gate {report.gate} {report.status}: {report.reason()}")

    def _approvals(self, gate_id: str) -> list[Approval]:
        decisions = [
            *self.store.commands(self.run_id, "approve"),
            *self.store.commands(self.run_id, "reject"),
        ]
        decisions.sort(key=lambda c: c.id)  # oldest first: a later decision wins
        found = [
            Approval(c.args.get("by", "?"), c.kind == "approve", c.args.get("comment", ""))
            for c in decisions
            if c.args.get("gate") == gate_id
        ]
        if self.options.approve_as:
            found.append(Approval(f"--approve-as {self.options.approve_as}", True))
        return found

    def _metrics(self, k: int) -> dict[str, float]:
        phase_tasks = [t for t in range(self.g.n_tasks) if self.g.phase_of_task[t] == k]
        out = _counts("phase", [self.state[t] for t in phase_tasks])
        out.update(_counts("run", self.state))
        return out

    # -- operator commands ----------------------------------------------------------

    def _poll_commands(self) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + self.options.poll_s
        self._check_messages()
        for cmd in self.store.take_commands(self.run_id):
            if cmd.kind == "cancel":
                self.cancel(f"cancelled by {cmd.args.get('by', 'operator')}")
            elif cmd.kind == "agent_state":
                self._set_agent_state(cmd.args["agent"], cmd.args["state"])
            elif cmd.kind in ("approve", "reject"):
                self._recheck_gates(cmd.args.get("gate", ""))

    def _recheck_gates(self, gate_id: str) -> None:
        for v in list(self.gates_waiting):
            found = self._gate_of(v)
            if found is not None and found[0] == gate_id:
                self._start_gate(v)

    def set_agent_state(self, name: str, state: str) -> None:
        """Put an agent in ``maintenance`` (no new work) or make it ``available`` again."""
        self._set_agent_state(name, state)
        self.wake.set()

    def _set_agent_state(self, name: str, state: str, journal: bool = True) -> None:
        a = self.agents.index.get(name)
        if a is None:
            return
        self.agents.maintenance[a] = state == "maintenance"
        if journal:
            self.store.save_agent_state(self.run_id, name, state)
            self.emit("agent_state", agent=name, state=state)


def _counts(scope: str, states: list[TaskState]) -> dict[str, float]:
    total = len(states)
    tally = {s: 0 for s in TaskState}
    for s in states:
        tally[s] += 1
    out = {
        f"{scope}.total": float(total),
        f"{scope}.completed": float(tally[TaskState.COMPLETED]),
        f"{scope}.failed": float(tally[TaskState.FAILED]),
        f"{scope}.blocked": float(tally[TaskState.BLOCKED]),
        f"{scope}.cancelled": float(tally[TaskState.CANCELLED]),
    }
    out[f"{scope}.completed_ratio"] = out[f"{scope}.completed"] / total if total else 1.0
    out[f"{scope}.failed_ratio"] = out[f"{scope}.failed"] / total if total else 0.0
    return out
