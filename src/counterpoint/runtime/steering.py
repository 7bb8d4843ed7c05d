"""Gates and operator commands: the parts of a run that people steer.

A mixin of :class:`~counterpoint.runtime.orchestrator.Orchestrator`: the gates of
phases and milestones are evaluated when their phase or milestone is about to
start or end (approvals wait, durably, for a person), and operator commands
(cancel, agent state, approvals) arrive through the journal from any terminal.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.plan.graph import Graph, NodeKind
from counterpoint.plan.model import Gate, Milestone, Phase, Plan
from counterpoint.runtime.events import Completion, TaskState
from counterpoint.runtime.gates import Approval, ConditionResult, GateChecker, GateReport
from counterpoint.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from counterpoint.allocation import AgentPool
    from counterpoint.runtime.orchestrator import RunOptions


@dataclass(frozen=True)
class GateSite:
    """A gate as the run meets it: at a phase's or a milestone's start (entry) or end (exit)."""

    gate_id: str
    gate: Gate
    phase: int  # index in plan.phases (a milestone gate: the milestone's phase)
    milestone: int | None  # index in graph.milestones, None for a phase gate
    side: str  # entry | exit


class Steering:
    """Gate evaluation and operator commands; state lives on the orchestrator."""

    g: Graph
    plan: Plan
    store: SqliteStore
    run_id: int
    state_dir: Path
    options: RunOptions
    agents: AgentPool
    state: list[TaskState]
    checker: GateChecker
    gates_running: dict[int, asyncio.Task[None]]
    gates_waiting: set[int]
    gate_rechecks: dict[int, float]  # held gate -> when (monotonic) to check it again
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

    def _gate_of(self, v: int) -> GateSite | None:
        """The gate checked at barrier node ``v`` (a phase's or a milestone's start or end)."""
        kind = self.g.kind(v)
        milestone: int | None = None
        if kind in (NodeKind.PHASE_START, NodeKind.PHASE_END):
            k = (v - self.g.n_tasks) // 2
            owner: Phase | Milestone = self.plan.phases[k]
        elif kind in (NodeKind.MILESTONE_START, NodeKind.MILESTONE_END):
            milestone = (v - self.g.n_tasks - 2 * self.g.n_phases) // 2
            owner = self.g.milestones[milestone]
            k = self.g.phase_of_milestone[milestone]
        else:
            return None
        entry = kind in (NodeKind.PHASE_START, NodeKind.MILESTONE_START)
        gate = owner.entry_gate if entry else owner.exit_gate
        if gate is None or not gate.conditions:
            return None
        side = "entry" if entry else "exit"
        return GateSite(f"{owner.id}.{side}", gate, k, milestone, side)

    def _start_gate(self, v: int) -> None:
        site = self._gate_of(v)
        assert site is not None
        # a waiting gate stays in gates_waiting while it is checked again (see _gate_done)
        self.gates_running[v] = asyncio.create_task(self._evaluate_gate(v, site))

    async def _evaluate_gate(self, v: int, site: GateSite) -> None:
        phase = self.plan.phases[site.phase].id
        milestone = self.g.milestones[site.milestone].id if site.milestone is not None else None
        try:
            approvals = self._approvals(site.gate_id)
            while True:
                report = await self.checker.evaluate(
                    site.gate_id,
                    phase,
                    site.gate,
                    self._metrics(site.phase, site.milestone),
                    approvals,
                    milestone=milestone,
                    run_id=str(self.run_id),
                    state_dir=self.state_dir,
                )
                # a decision recorded while the conditions were checked counts at once
                latest = self._approvals(site.gate_id) if report.waiting else approvals
                if latest == approvals:
                    break
                approvals = latest
        except asyncio.CancelledError:
            report = GateReport(site.gate_id, phase, "cancelled", [], milestone)
        except Exception as exc:  # a broken condition fails its gate, never the run
            failed = ConditionResult("error", "evaluation", False, f"{type(exc).__name__}: {exc}")
            status = "blocked" if site.side == "entry" else "incomplete"
            report = GateReport(site.gate_id, phase, status, [failed], milestone)
        me = asyncio.current_task()  # tasks spawned meanwhile may have moved its node
        v = next((node for node, task in self.gates_running.items() if task is me), v)
        self.completions.append(Completion(v, 0, "gate", report=report))
        self.wake.set()

    def _gate_done(self, done: Completion) -> None:
        v, report = done.node, done.report
        assert report is not None
        self.gates_running.pop(v, None)
        self.emit("gate_evaluated", **report.to_json())
        if report.status == "cancelled":
            return
        was_waiting = v in self.gates_waiting
        if report.passed:
            self.gates_waiting.discard(v)
            self._complete_node(v)
            self._gate_passed(report.gate, report)
        elif report.waiting:
            self.gates_waiting.add(v)
            if not was_waiting:
                self._gate_blocked(report.gate, report)
        elif self._holds(v, report):
            self.gates_waiting.add(v)  # held: checked again at its recheck time
            if not was_waiting:
                self._gate_blocked(report.gate, report)
        else:
            self.gates_waiting.discard(v)
            self.gate_rechecks.pop(v, None)
            self._block_downstream(v, f"gate {report.gate} {report.status}: {report.reason()}")
            self._gate_blocked(report.gate, report)

    def _holds(self, v: int, report: GateReport) -> bool:
        """A gate with ``recheck`` that did not pass (and was not rejected) holds its work
        and is checked again later; when is noted in :attr:`gate_rechecks`."""
        site = self._gate_of(v)
        if site is None or site.gate.recheck is None:
            return False
        if any(r.kind == "approval" and r.passed is False for r in report.results):
            return False  # a person said no
        when = time.monotonic() + site.gate.recheck * self.options.time_scale
        self.gate_rechecks[v] = when  # the run loop wakes for it (see Orchestrator._sleep)
        return True

    def _recheck_due(self) -> None:
        """Check again the held gates whose recheck time came."""
        now = time.monotonic()
        for v, when in list(self.gate_rechecks.items()):
            if when <= now and v not in self.gates_running:
                del self.gate_rechecks[v]
                self._start_gate(v)

    def _gate_blocked(self, gate_id: str, report: GateReport) -> None:
        """A gate holds work back: the hook the escalation ladder hangs on (a no-op here).

        Called when an evaluation of ``gate_id`` ends ``blocked`` (entry gate) or
        ``incomplete`` (exit gate), after what waits on the gate has been blocked, and
        when a wait for an approval starts (``report.status == "waiting"``; the
        re-evaluations of a gate that is still waiting do not call it again). A gate
        may be reported more than once in a run (a wait, then a rejection), and again
        after a resume: use ``gate_id`` as the key of its case. Runs on the event loop,
        between two steps of the run: it must not block.
        """

    def _gate_passed(self, gate_id: str, report: GateReport) -> None:
        """A gate passed (``allowed`` or ``completed``): close its case, if one is open.

        Called for every passing evaluation, after what waits on the gate has been
        released, whether or not :meth:`_gate_blocked` was called for it before (it may
        have been, in an earlier process of a resumed run). A no-op here.
        """

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

    def _metrics(self, k: int, milestone: int | None = None) -> dict[str, float]:
        """``phase.*`` for phase ``k``, ``run.*``, and ``milestone.*`` for a milestone's gate."""
        g = self.g
        out = _counts("phase", [self.state[t] for t in range(g.n_tasks) if g.phase_of_task[t] == k])
        if milestone is not None:
            mine = [self.state[t] for t in range(g.n_tasks) if g.milestone_of_task[t] == milestone]
            out.update(_counts("milestone", mine))
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
            elif cmd.kind in ("approve", "reject", "recheck"):
                self._recheck_gates(cmd.args.get("gate", ""))
            else:
                self._command(cmd.kind, cmd.args)

    def _command(self, kind: str, args: dict[str, Any]) -> None:
        """Operator commands handled elsewhere (``resolve``): see the orchestrator."""

    def _recheck_gates(self, gate_id: str) -> None:
        for v in list(self.gates_waiting):
            site = self._gate_of(v)
            if site is not None and site.gate_id == gate_id and v not in self.gates_running:
                self.gate_rechecks.pop(v, None)
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
        self._agents_changed()

    def _agents_changed(self) -> None:
        """An agent came back or left: work that waited for one may go on (orchestrator)."""


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
