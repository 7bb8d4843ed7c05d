"""Decentralized coordination: contract-net allocation and decisions by vote.

A mixin of :class:`~counterpoint.runtime.orchestrator.Orchestrator` (like
:mod:`counterpoint.runtime.steering`); state lives on the orchestrator.

**Contract net** (``settings.coordination: contract_net``, FIPA Contract Net). When a
task becomes ready, instead of joining the queue for the central choice of an agent,
it is *called*: a call for proposals goes at once to every agent able to take it
(its capabilities cover the task's ``requires``; not lost, offline or in maintenance;
busy agents are called too and bid with their load). Each agent proposes
``{duration_s, cost, load}`` or refuses (``{refuse: REASON}``) before the call's
deadline; an agent without a bidder proposes the task's estimate, cost 0 and its load.
The best proposal wins, by :func:`score` (lower is better)::

    score = duration_s × (1 + load) + cost_weight × cost

ties going to the agent with fewer capabilities the task does not need, then to the
agent first in the plan. The winner is awarded the task: it joins the ready queue with
the winner as its only agent (so resources, priorities and aging still apply), the
winner is told ``proposal_accepted`` and the other bidders ``proposal_rejected``. A call
without any proposal is made again (up to ``contract_net.rounds`` times), then
escalated (subject ``cfp:TASK``) and still made again every deadline while its case is
open; when the ladder runs out (``exhausted: fail``) the task fails. A new attempt (a
retry, a lost agent) is called again, and so is a task whose winner became unusable
(lost, offline, in maintenance) before the task started.

**Decisions by vote** (:mod:`counterpoint.runtime.voting`): ``ctx.propose_decision``
and the ``vote`` policy of the shared state put a ballot to the voters; a tie or a
missing quorum escalates (``decision:N``, or the conflict's own case) and waits for a
person (``counterpoint decide``, ``counterpoint resolve``).

Everything is journaled (canvass tables and ``decisions``) and emitted as run events.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.durations import parse_duration
from counterpoint.messaging.bus import Bus, BusFull
from counterpoint.messaging.protocol import Content, Message, MessageType, now
from counterpoint.plan.graph import Graph
from counterpoint.plan.model import Plan, StatePolicy
from counterpoint.plan.schema_errors import did_you_mean
from counterpoint.runtime.canvass import (
    NO_ANSWER,
    Answer,
    Canvass,
    Question,
    Raw,
    Remote,
    Responder,
    deadline_s,
    responders,
    takes_two,
)
from counterpoint.runtime.events import TaskState
from counterpoint.runtime.handles import LoopBound
from counterpoint.runtime.voting import (
    ABANDONED,
    DECIDED,
    ESCALATED,
    FAILED,
    OPEN_STATUSES,
    RESOLVED,
    VOTING,
    Decision,
    DecisionBook,
    DecisionFailed,
    Tally,
    VotingError,
    canon,
    hold_ballot,
    quorum_count,
)
from counterpoint.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from counterpoint.allocation import AgentPool, Demand, ResourcePool
    from counterpoint.queueing import ReadyQueue
    from counterpoint.runtime.escalation import Escalator
    from counterpoint.runtime.orchestrator import RunOptions
    from counterpoint.runtime.runners import Runners
    from counterpoint.runtime.state import Conflict, SharedState

#: The fields of a proposal; any of them may be left out (the default fills it in).
PROPOSAL_FIELDS = ("duration_s", "cost", "load", "note")
_TO_CALL = "waiting for a call for proposals"


# -- the score ---------------------------------------------------------------------------------


def score(duration_s: float, load: float, cost: float = 0.0, cost_weight: float = 0.0) -> float:
    """A proposal's score; the lowest wins: ``duration_s × (1 + load) + cost_weight × cost``."""
    return duration_s * (1.0 + load) + cost_weight * cost


@dataclass(frozen=True)
class Proposal:
    agent: str
    order: int  # the agent's place in the plan
    duration_s: float
    cost: float
    load: float
    unneeded: int  # capabilities the agent has that the task does not require
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "duration_s": self.duration_s,
            "cost": self.cost,
            "load": self.load,
            "score": self.score,
        }


def rank(proposals: Sequence[Proposal]) -> list[Proposal]:
    """Best first: lowest score, then fewest unneeded capabilities, then plan order."""
    return sorted(proposals, key=lambda p: (p.score, p.unneeded, p.order))


def judge_bid(agent: str, raw: Raw, defaults: dict[str, float]) -> tuple[Answer, dict[str, Any]]:
    """An answer to a call as journaled, and its proposal fields (empty unless it is one).

    ``None`` from the built-in default bidder is the default proposal; from a bidder it
    is a refusal. A proposal's missing fields come from ``defaults``."""
    if raw.value is NO_ANSWER:
        status = "error" if raw.error else "none"
        return Answer(agent, raw.via, status, None, raw.error, None, raw.ts), {}
    value = raw.value
    if value is None:
        if raw.via != "default":
            refusal = {"refuse": "no proposal"}
            return Answer(agent, raw.via, "refusal", refusal, None, None, raw.ts), {}
        value = {}
    if not isinstance(value, dict):
        error = f"a proposal must be an object, not {type(value).__name__}"
        return Answer(agent, raw.via, "invalid", {"value": value}, error, None, raw.ts), {}
    if "refuse" in value:
        reason = value["refuse"]
        text = reason if isinstance(reason, str) and reason else "refused"
        return Answer(agent, raw.via, "refusal", {"refuse": text}, None, None, raw.ts), {}
    unknown = [k for k in value if k not in PROPOSAL_FIELDS]
    if unknown:
        error = (
            f"unknown field {unknown[0]!r} (a proposal has {', '.join(PROPOSAL_FIELDS)}; "
            "a refusal has refuse)"
        )
        return Answer(agent, raw.via, "invalid", value, error, None, raw.ts), {}
    fields: dict[str, Any] = {}
    for name in ("duration_s", "cost", "load"):
        got = value.get(name, defaults[name])
        if (
            isinstance(got, bool)
            or not isinstance(got, int | float)
            or not math.isfinite(got)
            or got < 0
        ):
            error = f"{name} must be a number >= 0, got {got!r}"
            return Answer(agent, raw.via, "invalid", value, error, None, raw.ts), {}
        fields[name] = float(got)
    if isinstance(value.get("note"), str):
        fields["note"] = value["note"]
    return Answer(agent, raw.via, "proposal", dict(fields), None, None, raw.ts), fields


# -- the calls ---------------------------------------------------------------------------------


@dataclass
class _Call:
    """The calls for proposals for one attempt of one task, round after round."""

    task: int
    attempts: int  # the task's attempts when its call began (it allocates the next one)
    rounds: int = 0  # calls made
    silent: int = 0  # calls in a row without a proposal
    job: asyncio.Task[None] | None = None
    question: Question | None = None
    last: str = ""  # how the last call went, for the error when the task fails

    @property
    def reason(self) -> str:
        return f"waiting for proposals (call {self.rounds})"


class DecisionHandle(LoopBound):
    """What one task attempt uses to propose decisions (safe from a plain function's
    thread as well as from a coroutine)."""

    def __init__(self, orch: Coordination, task: int) -> None:
        super().__init__()
        self.orch = orch
        self.task = task

    async def propose(
        self,
        question: str,
        options: Sequence[Any],
        voters: Sequence[str] | None = None,
        quorum: int | str | None = None,
        deadline: float | str | None = None,
    ) -> Decision:
        if not self.on_loop():
            raise RuntimeError("propose_decision must be awaited on the run's event loop")
        return await self.orch.propose_decision(
            self.task, question, options, voters, quorum, deadline
        )

    def propose_blocking(
        self,
        question: str,
        options: Sequence[Any],
        voters: Sequence[str] | None = None,
        quorum: int | str | None = None,
        deadline: float | str | None = None,
    ) -> Decision:
        work = self.orch.propose_decision(self.task, question, options, voters, quorum, deadline)
        return self.blocking(work, "propose_decision")


class Coordination:
    """Contract-net calls and decisions by vote; see the module docstring."""

    g: Graph
    plan: Plan
    plan_dir: Path
    store: SqliteStore
    run_id: int
    options: RunOptions
    runners: Runners
    agents: AgentPool
    resources: ResourcePool
    queue: ReadyQueue
    demands: dict[int, Demand]
    state: list[TaskState]
    attempts: list[int]
    parked: dict[int, str]
    unrunnable: dict[int, str]
    escalator: Escalator
    shared: SharedState
    bus: Bus
    wake: asyncio.Event
    cancelling: str | None
    failed_fast: bool

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        raise NotImplementedError

    def _enqueue(self, t: int) -> None:
        raise NotImplementedError

    def _fail(self, t: int, error: str) -> None:
        raise NotImplementedError

    def _decided(self, conflict: Conflict) -> None:
        raise NotImplementedError

    def _publish_quietly(self, message: Message) -> None:
        raise NotImplementedError

    # -- set-up -------------------------------------------------------------------------------

    def _init_coordination(self) -> None:
        self.coordinating = self.plan.settings.coordination == "contract_net"
        self.calls: dict[int, _Call] = {}
        self.to_call: dict[int, None] = {}  # ready tasks whose call starts at the next step
        self.awards: dict[int, tuple[int, int]] = {}  # task -> (winner, attempts when awarded)
        self.awaiting: dict[int, int] = {}  # awarded task not started yet -> its winner
        self.promised = [0] * len(self.agents.names)  # per agent: awarded, not started
        # calls and ballots that ended: (question id, what to do on the loop)
        self.coordination_done: deque[tuple[int, Callable[[], None]]] = deque()
        self.ballot_jobs: dict[int, asyncio.Task[None]] = {}  # decision -> its ballot
        self.decision_waits: dict[int, asyncio.Future[Decision]] = {}
        self.proposing: set[asyncio.Task[Any]] = set()  # propose_decision calls waiting
        self.conflict_ballots: dict[int, int] = {}  # conflict -> the decision voting on it
        self._canvass: Canvass | None = None
        self._book: DecisionBook | None = None
        self._bidders: dict[str, Responder] | None = None
        self._voters: dict[str, Responder] | None = None
        self._two_args: dict[str, bool] = {}
        self._coordination_restored = False

    @property
    def canvass(self) -> Canvass:
        if self._canvass is None:
            self._canvass = Canvass(
                self.store,
                self.run_id,
                remote=self._hub,
                env={"COUNTERPOINT_STATE_DIR": str(getattr(self, "state_dir", ""))},
                kill_grace_s=min(self.options.kill_grace_s, 2.0),
            )
        return self._canvass

    @property
    def book(self) -> DecisionBook:
        if self._book is None:
            self._book = DecisionBook(self.store, self.run_id)
        return self._book

    @property
    def bidders(self) -> dict[str, Responder]:
        if self._bidders is None:
            self._bidders = responders(self.plan, self.plan_dir, "cfp")
        return self._bidders

    @property
    def voter_responders(self) -> dict[str, Responder]:
        if self._voters is None:
            self._voters = responders(self.plan, self.plan_dir, "ballot")
        return self._voters

    def _hub(self) -> Remote | None:
        """The hub of a served run (remote agents answer through it), else None."""
        for runner in self.runners.by_agent.values():
            hub = getattr(runner, "hub", None)
            if hub is not None:
                return hub  # type: ignore[no-any-return]
        return None

    # -- the run loop ---------------------------------------------------------------------------

    def _coordinate(self) -> None:
        """One step of the run loop: apply what calls and ballots brought in."""
        if not self._coordination_restored:
            self._restore_coordination()
        if self.coordination_done:  # in the order they were asked, whatever order they ended
            ended = sorted(self.coordination_done, key=lambda item: item[0])
            self.coordination_done.clear()
            for _, apply in ended:
                apply()
        if self.to_call:
            stopping = self.cancelling is not None or self.failed_fast
            for t in list(self.to_call):
                del self.to_call[t]
                if self.parked.get(t) == _TO_CALL:
                    del self.parked[t]
                if not stopping and self.state[t] is TaskState.READY and t not in self.calls:
                    self._call(t)
        if self.calls:
            stopping = self.cancelling is not None or self.failed_fast
            for t in [t for t in self.calls if stopping or self.state[t] is not TaskState.READY]:
                self._drop_call(t, "cancelled")
        if self.awaiting:
            for t in [t for t in self.awaiting if not self._award_stands(t, queued=True)]:
                self._unaward(t)

    def coordination_jobs(self) -> list[asyncio.Task[None]]:
        """The calls and ballots in flight (stopped with the run)."""
        return [
            *(c.job for c in self.calls.values() if c.job is not None),
            *self.ballot_jobs.values(),
            *self.proposing,  # from a plain function's thread: its own task on the loop
        ]

    # -- contract net: calls ------------------------------------------------------------------

    def _calls_for(self, t: int) -> bool:
        """Contract net, ``t`` is ready: True when it waits for a call (started now, or
        already in flight) instead of joining the queue; False when it has a winner (its
        demand names only the winner) and joins the queue."""
        self.state[t] = TaskState.READY
        call = self.calls.get(t)
        if call is not None:
            self.parked[t] = call.reason
            return True
        if t in self.awards:
            if self._award_stands(t, queued=False):
                return False
            self._unaward(t)
            self.awards.pop(t, None)
        self.parked[t] = _TO_CALL  # the call goes out at the run loop's next step
        self.to_call[t] = None
        self.wake.set()
        return True

    def _award_stands(self, t: int, *, queued: bool) -> bool:
        """``t``'s award is still good: same attempt, the winner usable (and, ``queued``,
        the task still waiting in the queue for it)."""
        award = self.awards.get(t)
        if award is None:
            return False
        a, attempts = award
        if attempts != self.attempts[t] or not self.agents.usable(a):
            return False
        return not queued or (self.state[t] is TaskState.READY and t not in self.calls)

    def _unaward(self, t: int) -> None:
        a = self.awaiting.pop(t, None)
        if a is not None:
            self.promised[a] -= 1
        award = self.awards.get(t)
        if award is not None and award[1] != self.attempts[t]:
            del self.awards[t]  # that attempt started: its award is used up

    def _winner_gone(self, demand: Demand, t: int, now_: float) -> bool:
        """Called when no agent of ``t``'s queued demand is free: if its winner became
        unusable, take ``t`` out of the queue and call for proposals again."""
        if t not in self.awards or self._award_stands(t, queued=False):
            return False
        a = self.awards[t][0]
        self.queue.take(demand, t, now_)
        self._unaward(t)
        del self.awards[t]
        self.emit(
            "task_recalled",
            t,
            agent=self.agents.names[a],
            reason=f"{self.agents.names[a]} is {self.agents.state(a).value}",
        )
        self._call(t)
        return True

    def _callable(self, t: int) -> tuple[list[int], list[int], bool]:
        """(agents to call, every able agent, whether an offline one may still connect)."""
        need = frozenset(self.g.tasks[t].requires)
        pool = self.agents
        able = [
            a
            for a in range(len(pool.names))
            if need <= pool.capabilities[a] and self.plan.agents[pool.names[a]].capacity > 0
        ]
        called = [a for a in able if pool.usable(a) and pool.capacity[a] > 0]
        return called, able, any(pool.offline[a] for a in able)

    def _load(self, a: int) -> float:
        """Running and awarded-but-not-started tasks over capacity."""
        capacity = self.agents.capacity[a]
        busy = self.agents.running[a] + self.promised[a]
        return busy / capacity if capacity > 0 else math.inf

    def _call(self, t: int) -> None:
        called, able, may_connect = self._callable(t)
        if not called:
            self._no_one_to_call(t, able, may_connect)
            return
        tid = self.g.task_ids[t]
        if self.unrunnable.pop(t, None) is not None:
            self.escalator.resolve(f"task:{tid}", {"by": "run", "agents": "available again"})
        call = self.calls.get(t)
        if call is None:
            call = self.calls[t] = _Call(t, self.attempts[t])
        call.rounds += 1
        self.parked[t] = call.reason
        settings = self.plan.settings.contract_net
        seconds = deadline_s(settings.deadline, self.options.time_scale)
        task = self.g.tasks[t]
        effective = self.plan.effective(task)
        body: dict[str, Any] = {
            "task": {
                "id": tid,
                "name": task.title,
                "instructions": task.instructions,
                "inputs": task.inputs,
                "requires": task.requires,
                "resources": task.resources,
                "reads": task.reads,
                "writes": task.writes,
                "priority": effective.priority.value,
                "estimate_s": self.g.duration[t],
            },
            "round": call.rounds,
            "attempt": self.attempts[t] + 1,
            "deadline_s": round(seconds, 6),
            "time_scale": self.options.time_scale,
        }
        names = [self.agents.names[a] for a in called]
        q = self.canvass.open("cfp", tid, call.rounds, names, body, seconds)
        body["call"] = q.id
        call.question = q
        self.emit(
            "cfp_opened",
            t,
            call=q.id,
            round=call.rounds,
            attempt=self.attempts[t] + 1,
            agents=names,
            deadline_s=round(seconds, 6),
        )
        asks = {name: self._call_of(body, name) for name in names}
        call.job = asyncio.create_task(self._hold_call(t, call, q, asks))

    def _call_of(self, body: dict[str, Any], agent: str) -> dict[str, Any]:
        a = self.agents.index[agent]
        return {
            **body,
            "agent": agent,
            "load": round(self._load(a), 6),
            "running": self.agents.running[a],
            "capacity": self.agents.capacity[a],
        }

    def _bid_args(
        self, t: int, asks: dict[str, dict[str, Any]]
    ) -> Callable[[str], tuple[Any, ...]]:
        task = self.g.tasks[t]

        def args(agent: str) -> tuple[Any, ...]:
            responder = self.bidders.get(agent)
            if responder is not None and responder.via == "python":
                two = self._two_args.get(agent)
                if two is None:
                    assert responder.func is not None
                    two = self._two_args[agent] = takes_two(responder.func)
                return (task, asks[agent]) if two else (task,)
            return (asks[agent],)

        return args

    async def _hold_call(
        self, t: int, call: _Call, q: Question, asks: dict[str, dict[str, Any]]
    ) -> None:
        began = time.monotonic()
        raw = await self.canvass.gather(q, self.bidders, self._bid_args(t, asks))
        zero = {"duration_s": 0.0, "cost": 0.0, "load": 0.0}
        if not any(judge_bid(a, r, zero)[1] for a, r in raw.items()):
            # nobody proposed: the next call goes out when this one's deadline is up
            await asyncio.sleep(max(0.0, q.deadline_s - (time.monotonic() - began)))
        self.coordination_done.append((q.id, lambda: self._call_ended(t, call, q)))
        self.wake.set()

    def _call_ended(self, t: int, call: _Call, q: Question) -> None:
        if self.calls.get(t) is not call or call.question is not q:
            return  # dropped meanwhile
        call.job = None
        if self.state[t] is not TaskState.READY or self.cancelling or self.failed_fast:
            self._drop_call(t, "cancelled")
            return
        tid = self.g.task_ids[t]
        need = frozenset(self.g.tasks[t].requires)
        weight = self.plan.settings.contract_net.cost_weight
        answers: list[Answer] = []
        proposals: list[Proposal] = []
        for name in q.agents:
            a = self.agents.index[name]
            defaults = {"duration_s": self.g.duration[t], "cost": 0.0, "load": self._load(a)}
            answer, fields = judge_bid(name, q.raw[name], defaults)
            if fields:
                p = Proposal(
                    name,
                    a,
                    fields["duration_s"],
                    fields["cost"],
                    fields["load"],
                    len(self.agents.capabilities[a] - need),
                    score(fields["duration_s"], fields["load"], fields["cost"], weight),
                )
                answer.score = round(p.score, 9)
                if self.agents.usable(a):
                    proposals.append(p)
                else:
                    answer.error = f"{name} became {self.agents.state(a).value} during the call"
            answers.append(answer)
        ranked = rank(proposals)
        refused = {
            a.agent: (a.answer or {}).get("refuse", "") for a in answers if a.status == "refusal"
        }
        silent = [a.agent for a in answers if a.status in ("none", "error", "invalid")]
        if ranked:
            winner = ranked[0]
            outcome = {
                "winner": winner.agent,
                "score": winner.score,
                "bids": [p.to_json() for p in ranked],
                "refused": refused,
                "silent": silent,
            }
            self.canvass.close(q, "awarded", outcome, answers)
            self._award(t, call, q, winner, ranked, refused, silent)
            return
        call.silent += 1
        parts = [f"{a} refused ({why})" for a, why in refused.items()]
        parts += [
            f"{a.agent} {'gave no answer' if a.status == 'none' else a.status}"
            + (f" ({a.error})" if a.error else "")
            for a in answers
            if a.status in ("none", "error", "invalid")
        ]
        call.last = "; ".join(parts) or "no agent answered"
        self.canvass.close(
            q, "unanswered", {"refused": refused, "silent": silent, "rounds": call.silent}, answers
        )
        self.emit(
            "cfp_unanswered",
            t,
            call=q.id,
            round=call.rounds,
            refused=refused,
            silent=silent,
            errors={a.agent: a.error for a in answers if a.error},
        )
        if call.silent >= self.plan.settings.contract_net.rounds:
            case = self.escalator.open(
                f"cfp:{tid}",
                "allocation",
                f"no agent proposed to take {tid} in {call.rounds} calls for proposals",
                {"task": tid, "calls": call.rounds, "last": call.last, "agents": q.agents},
            )
            if case.status == "exhausted" and self.plan.escalation.exhausted == "fail":
                self._call_failed(t)  # its ladder ran out in an earlier process
                return
        self._call(t)

    def _award(
        self,
        t: int,
        call: _Call,
        q: Question,
        winner: Proposal,
        ranked: list[Proposal],
        refused: dict[str, str],
        silent: list[str],
    ) -> None:
        tid = self.g.task_ids[t]
        a = self.agents.index[winner.agent]
        del self.calls[t]
        self.parked.pop(t, None)
        pool = self.agents.single_pool(a)
        self.demands[t] = self.resources.demand(self.g.tasks[t].resources, pool)
        self.awards[t] = (a, self.attempts[t])
        self.awaiting[t] = a
        self.promised[a] += 1
        self.emit(
            "task_awarded",
            t,
            call=q.id,
            round=call.rounds,
            agent=winner.agent,
            score=winner.score,
            bids=[p.to_json() for p in ranked],
            refused=refused,
            silent=silent,
        )
        for p in ranked:
            accepted = p is winner
            self._tell(
                p.agent,
                "proposal_accepted" if accepted else "proposal_rejected",
                tid,
                {
                    "call": q.id,
                    "task": tid,
                    "score": p.score,
                    "winner": winner.agent,
                    "winning_score": winner.score,
                },
            )
        case = self.escalator.case(f"cfp:{tid}")
        if case is not None and case.status != "resolved":
            self.escalator.resolve(f"cfp:{tid}", {"by": "proposal", "agent": winner.agent})
        self._enqueue(t)
        self.wake.set()

    def _tell(self, agent: str, event: str, tid: str, data: dict[str, Any]) -> None:
        notice = Message(
            sender="orchestrator",
            recipient=agent,
            type=MessageType.NOTIFICATION,
            timestamp=now(),
            priority="medium",
            content=Content(task_id=tid, event_type=event, severity="info", data=data),
        )
        with suppress(BusFull, LookupError):
            self._publish_quietly(notice)

    def _no_one_to_call(self, t: int, able: list[int], may_connect: bool) -> None:
        """No agent able to take ``t`` can be called now: it waits outside the queue until
        one comes back (and escalates, like any unrunnable task, unless a remote one may
        still connect)."""
        self.calls.pop(t, None)
        names = [self.agents.names[a] for a in able]
        states = ", ".join(f"{n} {self.agents.state(self.agents.index[n]).value}" for n in names)
        reason = f"no agent able to take it can be called ({states or 'none'})"
        self.parked[t] = reason
        if self.unrunnable.get(t) != reason:
            self.emit("task_unrunnable", t, reason=reason, agents=names)
        self.unrunnable[t] = reason
        if not may_connect:
            tid = self.g.task_ids[t]
            self.escalator.open(
                f"task:{tid}",
                "dependency",
                f"{tid} cannot start: {reason}",
                {"task": tid, "reason": reason, "agents": names},
            )

    def _drop_call(self, t: int, status: str) -> None:
        call = self.calls.pop(t, None)
        if call is None:
            return
        if self.parked.get(t) == call.reason:
            del self.parked[t]
        if call.job is not None:
            call.job.cancel()
        q = call.question
        if q is not None and q.status == "open":
            self.canvass.close(q, status, {}, [])

    def _call_failed(self, t: int) -> None:
        call = self.calls.get(t)
        tid = self.g.task_ids[t]
        rounds = call.rounds if call is not None else 0
        last = call.last if call is not None else ""
        self._drop_call(t, "failed")
        self.parked.pop(t, None)
        self._fail(
            t,
            f"no agent proposed to take {tid} in {rounds} call{'s' * (rounds != 1)} for "
            f"proposals (last call: {last or 'no answer'}); no more escalation levels available",
        )

    def _coordination_failed(self, subject: str) -> bool:
        """An escalation of ours ran out (``exhausted: fail``): fail what it holds."""
        kind, _, ident = subject.partition(":")
        if kind == "cfp":
            t = self.g.index.get(ident)
            if t is not None and t in self.calls and self.state[t] is TaskState.READY:
                self._call_failed(t)
            return True
        if kind == "decision" and ident.isdigit():
            d = self.book.decisions.get(int(ident))
            if d is not None and d.status in OPEN_STATUSES:
                self._decision_failed(d, "no more escalation levels available")
            return True
        return False

    # -- decisions by vote ----------------------------------------------------------------------

    async def propose_decision(
        self,
        t: int,
        question: str,
        options: Sequence[Any],
        voters: Sequence[str] | None = None,
        quorum: int | str | None = None,
        deadline: float | str | None = None,
    ) -> Decision:
        """Put ``question`` to a vote for task ``t``; returns the decision once it is made
        (by the vote, or by a person after a tie or a missing quorum)."""
        spec = self.plan.settings.voting
        names = self._check_voters(voters if voters is not None else spec.voters)
        opts = _check_options(question, options)
        needed = _check_quorum(spec.quorum if quorum is None else quorum, len(names))
        try:
            plan_s = spec.deadline if deadline is None else parse_duration(deadline)
        except ValueError as exc:
            raise VotingError(f"deadline: {exc}") from None
        tid = self.g.task_ids[t]
        d = self.book.new(f"task:{tid}", question, opts, names, needed)
        self._put_to_vote(d, plan_s, {"task": tid}, t)
        future = self.decision_waits[d.id]
        me = asyncio.current_task()
        if me is not None:
            self.proposing.add(me)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if d.status in OPEN_STATUSES:
                self._abandon(d, f"task {tid} stopped waiting for it")
            raise
        finally:
            self.proposing.discard(me)

    def _check_voters(self, voters: Sequence[str]) -> list[str]:
        names = list(voters)
        if not names:
            raise VotingError("no voters: pass voters=[...] or name them in settings.voting.voters")
        for name in names:
            if name not in self.plan.agents:
                hint = did_you_mean(name, self.plan.agents)
                raise VotingError(
                    f"unknown voter {name!r}"
                    + (f" ({hint})" if hint else "")
                    + f"; the plan's agents: {', '.join(self.plan.agents)}"
                )
        if len(set(names)) != len(names):
            raise VotingError(f"a voter is named twice in {names}")
        return names

    def _put_to_vote(
        self, d: Decision, plan_s: float, context: dict[str, Any], t: int | None = None
    ) -> None:
        """Hold ``d``'s ballot in the background; a task that asks (``t``) waits for the
        future in :attr:`decision_waits`."""
        seconds = deadline_s(plan_s, self.options.time_scale)
        if t is not None:
            self.decision_waits[d.id] = asyncio.get_running_loop().create_future()
        self.emit(
            "ballot_opened",
            t,
            decision=d.id,
            source=d.source,
            question=d.question,
            options=d.options,
            voters=d.voters,
            quorum=d.quorum,
            deadline_s=round(seconds, 6),
        )
        self.ballot_jobs[d.id] = asyncio.create_task(self._ballot(d, seconds, context, t))

    async def _ballot(
        self, d: Decision, seconds: float, context: dict[str, Any], t: int | None
    ) -> None:
        try:
            q, result, _ = await hold_ballot(
                self.canvass, d, self.voter_responders, seconds, context
            )
        finally:
            self.ballot_jobs.pop(d.id, None)
        self.coordination_done.append((q.id, lambda: self._ballot_ended(d, q, result, t)))
        self.wake.set()

    def _ballot_ended(self, d: Decision, q: Question, result: Tally, t: int | None) -> None:
        if d.status != VOTING:
            return  # a person decided meanwhile, or it was abandoned
        if result.winner is not None:
            value = d.options[result.winner]
            self.book.settle(d, DECIDED, value, result.reason, {"by": "vote", "ballot": q.id})
            self.emit(
                "decision_made", t, decision=d.id, result=value, votes=d.votes, reason=d.reason
            )
            kind, _, ident = d.source.partition(":")
            if kind == "conflict":
                conflict = self.shared.decide_by_vote(
                    int(ident), value, result.reason, decision=d.id, votes=d.votes
                )
                self._decided(conflict)
            self._finish(d)
            return
        d.status, d.reason = ESCALATED, result.reason
        self.book.save(d)
        self.emit("decision_escalated", t, decision=d.id, reason=d.reason, votes=d.votes)
        kind, _, ident = d.source.partition(":")
        if kind == "conflict":
            conflict = self.shared.conflicts[int(ident)]
            self.escalator.open(
                f"conflict:{conflict.id}",
                "conflict",
                f"the vote on {conflict.key!r} was not decided ({d.reason}); "
                f"tasks {', '.join(conflict.tasks)} wrote different values",
                {**conflict.to_json(), "decision": d.id, "votes": d.votes},
            )
            return
        self.escalator.open(
            f"decision:{d.id}",
            "decision",
            f"decision {d.id} ({d.question}) needs a person: {d.reason}",
            {**d.to_json(), "task": d.source.partition(":")[2]},
        )

    def _finish(self, d: Decision) -> None:
        future = self.decision_waits.pop(d.id, None)
        if future is not None and not future.done():
            future.set_result(d)

    def _decision_failed(self, d: Decision, reason: str) -> None:
        self.book.settle(d, FAILED, None, f"{d.reason}; {reason}", {"by": "escalation"})
        self.emit("decision_failed", None, decision=d.id, reason=d.reason)
        future = self.decision_waits.pop(d.id, None)
        if future is not None and not future.done():
            future.set_exception(
                DecisionFailed(f"decision {d.id} ({d.question}) was not made: {d.reason}")
            )

    def _abandon(self, d: Decision, reason: str) -> None:
        job = self.ballot_jobs.pop(d.id, None)
        if job is not None:
            job.cancel()
        self.book.settle(d, ABANDONED, None, reason, {"by": "run"})
        self.emit("decision_abandoned", None, decision=d.id, reason=reason)
        self.escalator.resolve(f"decision:{d.id}", {"by": "run", "abandoned": reason})
        self.decision_waits.pop(d.id, None)

    def decide(self, decision_id: int, value: Any, by: str) -> dict[str, Any]:
        """A person's decision (an operator command or the API); LookupError or ValueError
        when refused."""
        d = self.book.decisions.get(decision_id)
        if d is None:
            raise LookupError(f"no decision {decision_id} in this run")
        if d.status not in OPEN_STATUSES:
            raise ValueError(f"decision {decision_id} is already {d.status}")
        keys = [canon(o) for o in d.options]
        if canon(value) not in keys:
            raise ValueError(
                f"{canon(value)} is not one of the options of decision {decision_id} "
                f"({', '.join(keys)})"
            )
        value = d.options[keys.index(canon(value))]
        kind, _, ident = d.source.partition(":")
        if kind == "conflict":  # decide the conflict itself; _conflict_settled records it
            from counterpoint.runtime.state import MISSING, StateError

            found = self.shared.conflicts.get(int(ident))
            candidates = found.candidates if found is not None else {}
            task = next((k for k, v in candidates.items() if canon(v) == canon(value)), None)
            try:  # the value's writer wins, like counterpoint resolve --task
                conflict = self.shared.resolve(
                    int(ident), value=value if task is None else MISSING, task=task, by=by
                )
            except StateError as exc:
                raise ValueError(str(exc)) from None
            self._decided(conflict)
            return d.to_json()
        self._resolved_by(d, value, by)
        return d.to_json()

    def _resolved_by(self, d: Decision, value: Any, by: str) -> None:
        job = self.ballot_jobs.pop(d.id, None)
        if job is not None:
            job.cancel()
        self.book.settle(d, RESOLVED, value, f"decided by {by}", {"by": by})
        self.escalator.resolve(f"decision:{d.id}", {"by": by, "value": value})
        task = d.source.partition(":")[2] if d.source.startswith("task:") else None
        t = self.g.index.get(task) if task else None
        self.emit("decision_resolved", t, decision=d.id, result=value, by=by)
        self._finish(d)

    def _decide_command(self, args: dict[str, Any]) -> None:
        try:
            self.decide(
                int(args.get("decision", 0)), args.get("value"), str(args.get("by", "operator"))
            )
        except (LookupError, ValueError) as exc:
            reason = str(exc.args[0]) if exc.args else str(exc)
            self.emit("command_refused", None, command="decide", reason=reason)

    # -- the vote policy of the shared state ----------------------------------------------------

    def _voters_of(self, policy: StatePolicy) -> list[str]:
        return list(policy.voters or self.plan.settings.voting.voters)

    def _ballot_decides(self, conflict: Conflict) -> bool:
        """A conflict on a ``vote`` key with voters: a ballot decides it (True), not yet a
        person. Called when it is raised, and again when another writer joins it."""
        if conflict.policy != "vote" or conflict.kind != "data" or conflict.status != "open":
            return False
        policy = self.shared.policy_for(conflict.key)
        voters = self._voters_of(policy)
        if not voters:
            return False
        options: list[Any] = []
        for task in conflict.tasks:
            value = conflict.candidates[task]
            if all(canon(value) != canon(o) for o in options):
                options.append(value)
        known = self.conflict_ballots.get(conflict.id)
        if known is not None:
            d = self.book.decisions[known]
            if d.status == ESCALATED:
                return False  # a person decides; its case is open
            if d.status == VOTING:
                if [canon(o) for o in d.options] == [canon(o) for o in options]:
                    return True
                self._abandon(d, "superseded: another task wrote a new value")
        spec = self.plan.settings.voting
        quorum = quorum_count(spec.quorum if policy.quorum is None else policy.quorum, len(voters))
        d = self.book.new(
            f"conflict:{conflict.id}", f"the value of {conflict.key!r}", options, voters, quorum
        )
        self.conflict_ballots[conflict.id] = d.id
        plan_s = spec.deadline if policy.deadline is None else policy.deadline
        context = {"conflict": conflict.id, "key": conflict.key, "candidates": conflict.candidates}
        self._put_to_vote(d, plan_s, context)
        return True

    def _conflict_settled(self, conflict: Conflict) -> None:
        """``conflict`` was decided (by its ballot, a person, or a clean retry)."""
        known = self.conflict_ballots.get(conflict.id)
        if known is None:
            return
        d = self.book.decisions[known]
        if d.status not in OPEN_STATUSES:
            return
        resolution = conflict.resolution or {}
        by = str(resolution.get("by", "operator"))
        self._resolved_by(d, resolution.get("value"), by)

    def _conflict_failed(self, conflict_id: int) -> None:
        known = self.conflict_ballots.get(conflict_id)
        if known is not None:
            d = self.book.decisions[known]
            if d.status in OPEN_STATUSES:
                self._decision_failed(d, "no more escalation levels available")

    # -- resume ---------------------------------------------------------------------------------

    def _restore_coordination(self) -> None:
        """After a resume: decisions left open by the previous process. A task's is
        abandoned (the task asks again when it runs again); a conflict's ballot is held
        again, an escalated one waits for its person."""
        self._coordination_restored = True
        found = self.store.query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'"
        )
        if not found:
            return
        for d in list(self.book.decisions.values()):
            if d.status not in OPEN_STATUSES:
                continue
            kind, _, ident = d.source.partition(":")
            conflict = self.shared.conflicts.get(int(ident)) if kind == "conflict" else None
            if conflict is None:
                self._abandon(d, "the run stopped while it was open")
            elif conflict.status != "open":
                self.conflict_ballots[conflict.id] = d.id
                self._conflict_settled(conflict)
            elif d.status == ESCALATED:
                self.conflict_ballots[conflict.id] = d.id
            else:
                self._abandon(d, "the run stopped during the ballot")
                self._ballot_decides(conflict)


def _check_options(question: str, options: Sequence[Any]) -> list[Any]:
    if not isinstance(question, str) or not question.strip():
        raise VotingError("the question must be a non-empty string")
    if isinstance(options, str | bytes) or not isinstance(options, Sequence):
        raise VotingError("options must be a list")
    opts = list(options)
    if len(opts) < 2:
        raise VotingError(f"a vote needs at least two options, got {len(opts)}")
    keys = [canon(o) for o in opts]
    if len(set(keys)) != len(keys):
        raise VotingError(f"the options must be different, got {', '.join(keys)}")
    return opts


def _check_quorum(quorum: int | str, voters: int) -> int:
    if quorum not in ("majority", "all") and (
        isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1
    ):
        raise VotingError(f"quorum must be a whole number >= 1, majority or all, not {quorum!r}")
    needed = quorum_count(quorum, voters)
    if needed > voters:
        raise VotingError(f"quorum {needed} is more than the {voters} voters")
    return needed
