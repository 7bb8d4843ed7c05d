"""Decisions by vote: ballots put to agents, a quorum, a deadline, ties that escalate.

A *decision* asks a question with a list of options. A *ballot* (a question of the
canvass, :mod:`counterpoint.runtime.canvass`) goes to every voter at once; each answers
``{"vote": OPTION}`` or ``{"abstain": REASON}`` (an agent without a ``vote:`` responder
abstains). When the ballot ends (every voter answered, or its deadline passed):

* fewer votes than the quorum: *no quorum*, the decision escalates;
* two or more options share the most votes: a *tie*, the decision escalates;
* else the option with the most votes is the result.

An escalated decision stays open until a person decides (``counterpoint decide``; a
``vote`` conflict of the shared state also with ``counterpoint resolve``) or its
escalation runs out. Decisions are journaled in the ``decisions`` table, their ballots
and votes in the canvass tables.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from counterpoint.agents.base import TaskFailed
from counterpoint.runtime.canvass import NO_ANSWER, Answer, Canvass, Question, Raw, Responder
from counterpoint.store.sqlite import SqliteStore

VOTING = "voting"  # a ballot is out
DECIDED = "decided"  # by the vote
ESCALATED = "escalated"  # a tie or no quorum: waits for a person
RESOLVED = "resolved"  # by a person
FAILED = "failed"  # nobody decided before the escalation ran out
ABANDONED = "abandoned"  # the task or conflict that asked no longer waits for it
OPEN_STATUSES = frozenset({VOTING, ESCALATED})

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    run_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    source TEXT NOT NULL,
    question TEXT NOT NULL,
    options TEXT NOT NULL,
    voters TEXT NOT NULL,
    quorum INTEGER NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    votes TEXT NOT NULL,
    reason TEXT NOT NULL,
    resolution TEXT,
    ballots TEXT NOT NULL,
    created REAL NOT NULL,
    decided REAL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
"""

_UPSERT = (
    "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, id) DO UPDATE SET status = excluded.status,"
    " result = excluded.result, votes = excluded.votes, reason = excluded.reason,"
    " resolution = excluded.resolution, ballots = excluded.ballots, decided = excluded.decided"
)
_SELECT = (
    "SELECT id, source, question, options, voters, quorum, status, result, votes, reason,"
    " resolution, ballots, created, decided FROM decisions WHERE run_id = ? ORDER BY id"
)


class DecisionFailed(TaskFailed):
    """A decision nobody made: its escalation ran out, or the run stopped waiting for it."""


class VotingError(ValueError):
    """A decision that cannot be put to a vote (no voters, an unknown one, a bad quorum)."""


def canon(value: Any) -> str:
    """The JSON text that identifies an option (key order does not matter)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def quorum_count(quorum: int | str, voters: int) -> int:
    """Votes needed: ``majority`` is more than half the voters, ``all`` every one."""
    if quorum == "majority":
        return voters // 2 + 1
    if quorum == "all":
        return voters
    return int(quorum)


@dataclass
class Decision:
    """A question decided by the votes of agents (or, after a tie, by a person)."""

    id: int
    source: str  # task:ID (ctx.propose_decision) or conflict:N (the vote state policy)
    question: str
    options: list[Any]
    voters: list[str]
    quorum: int
    status: str = VOTING
    result: Any = None
    #: Each voter's vote in the last ballot (None: abstained, or no answer).
    votes: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    #: How it ended: ``{"by": "vote"}``, ``{"by": PERSON}``, ``{"by": "escalation"}`` ...
    resolution: dict[str, Any] | None = None
    ballots: list[int] = field(default_factory=list)  # canvass question ids
    created: float = 0.0
    decided_at: float | None = None

    @property
    def decided(self) -> bool:
        """The decision has a result (by the vote or by a person)."""
        return self.status in (DECIDED, RESOLVED)

    @property
    def value(self) -> Any:
        """The chosen option (None while undecided)."""
        return self.result

    @property
    def decided_by(self) -> str | None:
        return None if self.resolution is None else str(self.resolution.get("by"))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "question": self.question,
            "options": self.options,
            "voters": self.voters,
            "quorum": self.quorum,
            "status": self.status,
            "result": self.result,
            "votes": self.votes,
            "reason": self.reason,
            "resolution": self.resolution,
            "ballots": self.ballots,
            "created": self.created,
            "decided": self.decided_at,
        }


@dataclass(frozen=True)
class Tally:
    counts: list[int]  # votes per option
    cast: int  # valid votes
    quorum: int
    winner: int | None  # option index
    outcome: str  # decided | tie | no_quorum
    reason: str


def tally(options: Sequence[Any], votes: Mapping[str, int | None], quorum: int) -> Tally:
    """Count ``votes`` (voter -> option index, None for no vote) against ``quorum``."""
    counts = [0] * len(options)
    for choice in votes.values():
        if choice is not None:
            counts[choice] += 1
    cast = sum(counts)
    if cast < quorum:
        why = f"{cast} vote{'s' * (cast != 1)} of {len(votes)} voters, quorum {quorum}"
        return Tally(counts, cast, quorum, None, "no_quorum", f"no quorum: {why}")
    best = max(counts)
    top = [i for i, n in enumerate(counts) if n == best]
    if len(top) > 1:
        shown = ", ".join(canon(options[i]) for i in top)
        return Tally(counts, cast, quorum, None, "tie", f"tie: {shown} have {best} votes each")
    return Tally(
        counts,
        cast,
        quorum,
        top[0],
        "decided",
        f"{best} of {cast} votes (quorum {quorum}, {len(votes)} voters)",
    )


def judge_vote(agent: str, raw: Raw, options: Sequence[Any]) -> tuple[Answer, int | None]:
    """An answer as journaled, and the option it votes for (None: no vote)."""
    if raw.value is NO_ANSWER:
        status = "error" if raw.error else "none"
        return Answer(agent, raw.via, status, None, raw.error, None, raw.ts), None
    value = raw.value
    if value is None:
        why = "no vote responder" if raw.via == "default" else "no vote"
        return Answer(agent, raw.via, "abstain", {"abstain": why}, None, None, raw.ts), None
    if isinstance(value, dict):
        if "abstain" in value:
            reason = value["abstain"]
            text = reason if isinstance(reason, str) else "abstained"
            return Answer(agent, raw.via, "abstain", {"abstain": text}, None, None, raw.ts), None
        if "vote" not in value:
            error = "the answer has neither 'vote' nor 'abstain'"
            return Answer(agent, raw.via, "invalid", value, error, None, raw.ts), None
        value = value["vote"]
    keys = [canon(o) for o in options]
    try:
        choice = keys.index(canon(value))
    except ValueError:
        error = f"{canon(value)} is not one of the options ({', '.join(keys)})"
        return Answer(agent, raw.via, "invalid", {"vote": value}, error, None, raw.ts), None
    answer = {"vote": options[choice], "option": choice}
    return Answer(agent, raw.via, "vote", answer, None, None, raw.ts), choice


def ballot_body(decision: Decision, seconds: float, context: dict[str, Any]) -> dict[str, Any]:
    return {
        "decision": decision.id,
        "question": decision.question,
        "options": decision.options,
        "voters": decision.voters,
        "quorum": decision.quorum,
        "deadline_s": round(seconds, 6),
        "context": context,
    }


async def hold_ballot(
    canvass: Canvass,
    decision: Decision,
    responders: Mapping[str, Responder],
    seconds: float,
    context: dict[str, Any],
) -> tuple[Question, Tally, list[Answer]]:
    """Put ``decision`` to its voters; journal the ballot and every vote; count them."""
    body = ballot_body(decision, seconds, context)
    q = canvass.open(
        "ballot",
        f"decision:{decision.id}",
        len(decision.ballots) + 1,
        decision.voters,
        body,
        seconds,
    )
    decision.ballots.append(q.id)
    body["ballot"] = q.id
    raw = await canvass.gather(q, responders, lambda voter: ({**body, "voter": voter},))
    answers: list[Answer] = []
    votes: dict[str, int | None] = {}
    for voter in decision.voters:
        answer, choice = judge_vote(voter, raw[voter], decision.options)
        answers.append(answer)
        votes[voter] = choice
    result = tally(decision.options, votes, decision.quorum)
    decision.votes = {v: (decision.options[c] if c is not None else None) for v, c in votes.items()}
    outcome = {
        "decision": decision.id,
        "counts": result.counts,
        "cast": result.cast,
        "quorum": result.quorum,
        "result": None if result.winner is None else decision.options[result.winner],
        "reason": result.reason,
    }
    canvass.close(q, result.outcome, outcome, answers)
    return q, result, answers


class DecisionBook:
    """The run's decisions, journaled in its store."""

    def __init__(
        self, store: SqliteStore, run_id: int, *, wall: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.wall = wall
        store.ensure_schema(SCHEMA)
        self.decisions: dict[int, Decision] = {d.id: d for d in _decisions(store, run_id)}

    def new(
        self,
        source: str,
        question: str,
        options: Sequence[Any],
        voters: Sequence[str],
        quorum: int,
    ) -> Decision:
        d = Decision(
            id=max(self.decisions, default=0) + 1,
            source=source,
            question=question,
            options=list(options),
            voters=list(voters),
            quorum=quorum,
            created=self.wall(),
        )
        self.decisions[d.id] = d
        self.save(d)
        return d

    def settle(
        self, d: Decision, status: str, result: Any, reason: str, by: dict[str, Any]
    ) -> None:
        d.status, d.result, d.reason, d.resolution = status, result, reason, dict(by)
        if status in (DECIDED, RESOLVED, FAILED, ABANDONED):
            d.decided_at = self.wall()
        self.save(d)

    def save(self, d: Decision) -> None:
        self.store.write(
            _UPSERT,
            (
                self.run_id,
                d.id,
                d.source,
                d.question,
                json.dumps(d.options, default=str),
                json.dumps(d.voters),
                d.quorum,
                d.status,
                json.dumps(d.result, default=str) if d.decided else None,
                json.dumps(d.votes, default=str),
                d.reason,
                json.dumps(d.resolution, default=str) if d.resolution is not None else None,
                json.dumps(d.ballots),
                d.created,
                d.decided_at,
            ),
        )


def _decisions(store: SqliteStore, run_id: int) -> list[Decision]:
    out = []
    for r in store.query(_SELECT, (run_id,)):
        out.append(
            Decision(
                id=r[0],
                source=r[1],
                question=r[2],
                options=json.loads(r[3]),
                voters=json.loads(r[4]),
                quorum=r[5],
                status=r[6],
                result=json.loads(r[7]) if r[7] is not None else None,
                votes=json.loads(r[8]),
                reason=r[9],
                resolution=json.loads(r[10]) if r[10] else None,
                ballots=json.loads(r[11]),
                created=r[12],
                decided_at=r[13],
            )
        )
    return out


def read_decisions(store: SqliteStore, run_id: int) -> list[dict[str, Any]]:
    """Every decision of a run, as JSON, oldest first (from any process)."""
    store.ensure_schema(SCHEMA)
    return [d.to_json() for d in _decisions(store, run_id)]
