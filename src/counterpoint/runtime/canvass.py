"""Asking a set of agents one question at once, with a deadline.

Two kinds of question go out this way: a *call for proposals* (``cfp``, contract-net
allocation, see :mod:`counterpoint.runtime.coordination`) and a *ballot* (``ballot``,
decisions by vote, see :mod:`counterpoint.runtime.voting`). Each agent answers through
its *responder*:

========  ===========================================================================
python    ``module:function`` (the agent's ``bid:`` or ``vote:``): a bidder is called as
          ``bid(task)`` or, when it takes two arguments, ``bid(task, call)``; a voter as
          ``vote(ballot)``. A coroutine function is awaited on the run's loop, a plain
          one runs in a daemon thread.
shell     a command (the agent's ``bid:`` or ``vote:``): the question as JSON on its
          stdin, the answer as the last JSON object line of its stdout. It runs in its
          own process group, killed when the deadline passes.
remote    a remote agent without a plan-side responder: the question goes over the hub
          (``cfp`` and ``ballot`` frames) and ``counterpoint agent`` answers it (its
          ``--bid`` / ``--vote``, or its defaults).
default   no responder: the caller's default answer (a proposal from the agent's load;
          an abstention).
========  ===========================================================================

A question ends when every agent answered or at its deadline, whichever comes first;
an agent that has not answered by then has "no answer". Every question and every
answer is journaled (tables ``canvass_questions`` and ``canvass_answers``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from counterpoint.agents.python import in_daemon_thread, load_callable
from counterpoint.errors import CounterpointError
from counterpoint.plan.model import Plan
from counterpoint.plan.model import Runner as RunnerSpec
from counterpoint.processes import stop_group
from counterpoint.store.sqlite import SqliteStore

#: The question kinds, and the plan key of an agent's responder for each.
KINDS = {"cfp": "bid", "ballot": "vote"}

#: A question's deadline is never shorter than this many real seconds, whatever the
#: time scale: local bidders and voters (a program to start, a thread to schedule) get
#: a fair chance even with ``--time-scale 0.000005``. A question ends at once when every
#: agent has answered, so the floor only costs time when someone stays silent.
MIN_DEADLINE_S = 1.0

#: How long a shell responder gets to stop (SIGTERM) before its group is SIGKILLed.
KILL_GRACE_S = 1.0
STDERR_TAIL_CHARS = 300

SCHEMA = """
CREATE TABLE IF NOT EXISTS canvass_questions (
    run_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    round INTEGER NOT NULL,
    agents TEXT NOT NULL,
    body TEXT NOT NULL,
    asked REAL NOT NULL,
    deadline REAL NOT NULL,
    closed REAL,
    status TEXT NOT NULL,
    outcome TEXT,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS canvass_answers (
    run_id INTEGER NOT NULL,
    question INTEGER NOT NULL,
    agent TEXT NOT NULL,
    via TEXT NOT NULL,
    status TEXT NOT NULL,
    answer TEXT,
    error TEXT,
    score REAL,
    ts REAL,
    PRIMARY KEY (run_id, question, agent)
) WITHOUT ROWID;
"""

_UPSERT_QUESTION = (
    "INSERT INTO canvass_questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, id) DO UPDATE SET closed = excluded.closed,"
    " status = excluded.status, outcome = excluded.outcome"
)
_UPSERT_ANSWER = (
    "INSERT INTO canvass_answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, question, agent) DO UPDATE SET status = excluded.status,"
    " answer = excluded.answer, error = excluded.error, score = excluded.score"
)


class CanvassError(CounterpointError):
    """A responder that could not answer (it failed, printed no JSON, is not connected)."""


class _NoAnswer:
    def __repr__(self) -> str:
        return "NO_ANSWER"


#: What an agent that did not answer before the deadline "said".
NO_ANSWER: Any = _NoAnswer()


class Remote(Protocol):
    """What the canvass needs of the hub: put a question to a remote agent."""

    async def put_question(
        self, agent: str, kind: str, question: int, body: dict[str, Any]
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Responder:
    """How one agent answers one kind of question."""

    via: str  # python | shell | remote | default
    func: Callable[..., Any] | None = None
    spec: RunnerSpec | None = None
    cwd: Path | None = None


@dataclass
class Raw:
    """What a responder returned (or raised), before the kind's rules judge it."""

    via: str
    value: Any = NO_ANSWER  # NO_ANSWER: silent until the deadline
    error: str | None = None
    ts: float | None = None


@dataclass
class Answer:
    """An agent's answer as journaled: ``status`` is ``proposal``, ``refusal``, ``vote``,
    ``abstain``, ``invalid``, ``error`` or ``none`` (no answer before the deadline)."""

    agent: str
    via: str
    status: str
    answer: dict[str, Any] | None = None
    error: str | None = None
    score: float | None = None
    ts: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "via": self.via,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
            "score": self.score,
            "ts": self.ts,
        }


@dataclass
class Question:
    id: int
    kind: str
    subject: str
    round: int
    agents: list[str]
    body: dict[str, Any]
    asked: float
    deadline: float  # wall clock
    deadline_s: float  # real seconds the agents have
    closed: float | None = None
    status: str = "open"
    outcome: dict[str, Any] | None = None
    raw: dict[str, Raw] = field(default_factory=dict)


def responders(plan: Plan, plan_dir: Path, kind: str) -> dict[str, Responder]:
    """Every agent's responder for ``kind`` (``cfp`` or ``ballot``); Python ones are
    imported now, so a broken one refuses the run before it starts."""
    key = KINDS[kind]
    out: dict[str, Responder] = {}
    for name, spec in plan.agents.items():
        runner: RunnerSpec | None = getattr(spec, key)
        if runner is not None and runner.python:
            out[name] = Responder("python", func=load_callable(runner.python, plan_dir))
        elif runner is not None and runner.shell is not None:
            cwd = plan_dir if runner.cwd is None else plan_dir / runner.cwd
            out[name] = Responder("shell", spec=runner, cwd=cwd)
        elif spec.remote:
            out[name] = Responder("remote")
        else:
            out[name] = Responder("default")
    return out


def check_responders(plan: Plan) -> None:
    """Import the plan's Python bidders and voters (RunnerLoadError when one cannot be)."""
    plan_dir = (plan.source_path or Path("plan.yaml")).resolve().parent
    for kind in KINDS:
        responders(plan, plan_dir, kind)


def deadline_s(plan_seconds: float, time_scale: float) -> float:
    """Real seconds for a deadline of ``plan_seconds`` (scaled, never under the floor)."""
    return max(MIN_DEADLINE_S, plan_seconds * time_scale)


class Canvass:
    """Puts questions to agents and journals them; one per run."""

    def __init__(
        self,
        store: SqliteStore,
        run_id: int,
        *,
        remote: Callable[[], Remote | None] = lambda: None,
        env: Mapping[str, str] | None = None,
        kill_grace_s: float = KILL_GRACE_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.remote = remote
        self.env = dict(env or {})
        self.kill_grace_s = kill_grace_s
        self.wall = wall
        store.ensure_schema(SCHEMA)
        rows = store.query("SELECT MAX(id) FROM canvass_questions WHERE run_id = ?", (self.run_id,))
        self._next = int(rows[0][0] or 0) + 1
        # questions a stopped or crashed process left open are closed (asked again)
        store.write(
            "UPDATE canvass_questions SET status = 'interrupted', closed = ?"
            " WHERE run_id = ? AND status = 'open'",
            (self.wall(), self.run_id),
        )

    def open(
        self,
        kind: str,
        subject: str,
        round_: int,
        agents: list[str],
        body: dict[str, Any],
        seconds: float,
    ) -> Question:
        """A new question (journaled as ``open``); :meth:`gather` puts it to the agents."""
        now = self.wall()
        q = Question(
            self._next, kind, subject, round_, list(agents), body, now, now + seconds, seconds
        )
        self._next += 1
        self._save(q)
        return q

    async def gather(
        self,
        q: Question,
        responders: Mapping[str, Responder],
        args: Callable[[str], tuple[Any, ...]],
    ) -> dict[str, Raw]:
        """Put ``q`` to its agents at once and collect what they say until every one has
        answered or the deadline passed. ``args(agent)`` are the arguments of a Python
        responder; the others get ``q.body`` plus the agent's own fields (``args``'
        last element, a dict). Never raises for an agent's failure."""
        jobs: dict[str, asyncio.Task[Raw]] = {}
        for agent in q.agents:
            responder = responders.get(agent, Responder("default"))
            jobs[agent] = asyncio.ensure_future(self._one(q, agent, responder, args(agent)))
        if jobs:
            try:
                await asyncio.wait(set(jobs.values()), timeout=q.deadline_s)
            except asyncio.CancelledError:  # the question was dropped: stop every responder
                for job in jobs.values():
                    job.cancel()
                await asyncio.gather(*jobs.values(), return_exceptions=True)
                if q.status == "open":
                    self.close(q, "cancelled", {}, [])
                raise
        out: dict[str, Raw] = {}
        for agent, job in jobs.items():
            if job.done() and not job.cancelled():
                out[agent] = job.result()
            else:
                job.cancel()
                out[agent] = Raw(responders.get(agent, Responder("default")).via)
        late = [job for job in jobs.values() if not job.done()]
        if late:  # let them stop (a shell responder's process group is killed)
            await asyncio.gather(*late, return_exceptions=True)
        q.raw = out
        return out

    async def _one(
        self, q: Question, agent: str, responder: Responder, args: tuple[Any, ...]
    ) -> Raw:
        via = responder.via
        try:
            if via == "default":
                value: Any = None
            elif via == "python":
                assert responder.func is not None
                value = await call_python(responder.func, args)
            elif via == "shell":
                assert responder.spec is not None and responder.cwd is not None
                body = args[-1] if args and isinstance(args[-1], dict) else q.body
                env = {
                    **self.env,
                    "COUNTERPOINT_AGENT": agent,
                    "COUNTERPOINT_QUESTION": q.kind,
                    "COUNTERPOINT_RUN_ID": str(self.run_id),
                }
                value = await call_shell(
                    responder.spec.shell or [],
                    body,
                    responder.cwd,
                    {**responder.spec.env, **env},
                    use_shell=responder.spec.use_shell,
                    kill_grace_s=self.kill_grace_s,
                )
            else:
                hub = self.remote()
                if hub is None:
                    raise CanvassError(f"{agent} is remote and the run has no hub")
                body = args[-1] if args and isinstance(args[-1], dict) else q.body
                value = await hub.put_question(agent, q.kind, q.id, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Raw(via, error=_error_text(exc), ts=self.wall())
        return Raw(via, value=value, ts=self.wall())

    def close(
        self, q: Question, status: str, outcome: dict[str, Any], answers: list[Answer]
    ) -> None:
        """Journal how ``q`` ended and every agent's answer (as the kind judged it)."""
        q.closed, q.status, q.outcome = self.wall(), status, outcome
        self._save(q)
        for a in answers:
            self.store.write(
                _UPSERT_ANSWER,
                (
                    self.run_id,
                    q.id,
                    a.agent,
                    a.via,
                    a.status,
                    json.dumps(a.answer, default=str) if a.answer is not None else None,
                    a.error,
                    a.score,
                    a.ts,
                ),
            )

    def _save(self, q: Question) -> None:
        self.store.write(
            _UPSERT_QUESTION,
            (
                self.run_id,
                q.id,
                q.kind,
                q.subject,
                q.round,
                json.dumps(q.agents),
                json.dumps(q.body, default=str),
                q.asked,
                q.deadline,
                q.closed,
                q.status,
                json.dumps(q.outcome, default=str) if q.outcome is not None else None,
            ),
        )


# -- responders ------------------------------------------------------------------------------


def takes_two(func: Callable[..., Any]) -> bool:
    """Whether ``func`` accepts two positional arguments (``bid(task, call)``)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


async def call_python(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Call a Python responder: awaited if it is a coroutine function, else in a thread."""
    if inspect.iscoroutinefunction(func):
        return await func(*args)
    value = await in_daemon_thread(func, *args)
    if inspect.isawaitable(value):
        value = await value
    return value


async def call_shell(
    command: str | list[str],
    body: dict[str, Any],
    cwd: Path,
    env: Mapping[str, str],
    *,
    use_shell: bool = False,
    kill_grace_s: float = KILL_GRACE_S,
) -> Any:
    """Run a shell responder: ``body`` as JSON on stdin, the answer the last stdout line
    that is a JSON object (``None`` when it printed none and exited 0). Cancelling stops
    its whole process group."""
    if use_shell:
        script = command if isinstance(command, str) else " ".join(command)
        argv = ["/bin/sh", "-c", script]
    else:
        try:
            argv = shlex.split(command) if isinstance(command, str) else list(command)
        except ValueError as exc:
            raise CanvassError(f"cannot parse the command {command!r}: {exc}") from None
    if not argv:
        raise CanvassError("the command is empty")
    if not cwd.is_dir():
        raise CanvassError(f"the working directory {cwd} does not exist")
    with tempfile.TemporaryFile() as stdin:
        stdin.write(json.dumps(body, default=str).encode())
        stdin.seek(0)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env={**os.environ, **env},
                start_new_session=True,
            )
        except OSError as exc:
            raise CanvassError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            await stop_group(proc, kill_grace_s)
            raise
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip()[-STDERR_TAIL_CHARS:]
        raise CanvassError(f"exit code {proc.returncode}" + (f": {tail}" if tail else ""))
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        text = line.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            break
        if isinstance(value, dict):
            return value
        break
    raise CanvassError("printed no JSON object as its last line")


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, CounterpointError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# -- reading (any process) ---------------------------------------------------------------------


def read_questions(
    store: SqliteStore, run_id: int, kind: str | None = None
) -> list[dict[str, Any]]:
    """Every question of a run (of one kind), oldest first, each with its answers."""
    store.ensure_schema(SCHEMA)
    where, params = "run_id = ?", [run_id]
    if kind is not None:
        where += " AND kind = ?"
        params.append(kind)  # type: ignore[arg-type]
    questions: dict[int, dict[str, Any]] = {}
    for r in store.query(
        "SELECT id, kind, subject, round, agents, body, asked, deadline, closed, status, outcome"
        f" FROM canvass_questions WHERE {where} ORDER BY id",
        params,
    ):
        questions[r[0]] = {
            "id": r[0],
            "kind": r[1],
            "subject": r[2],
            "round": r[3],
            "agents": json.loads(r[4]),
            "body": json.loads(r[5]),
            "asked": r[6],
            "deadline": r[7],
            "closed": r[8],
            "status": r[9],
            "outcome": json.loads(r[10]) if r[10] else None,
            "answers": [],
        }
    if not questions:
        return []
    for r in store.query(
        "SELECT question, agent, via, status, answer, error, score, ts FROM canvass_answers"
        " WHERE run_id = ? ORDER BY question",
        (run_id,),
    ):
        q = questions.get(r[0])
        if q is not None:
            q["answers"].append(
                Answer(
                    r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], r[6], r[7]
                ).to_json()
            )
    for q in questions.values():
        order = {name: i for i, name in enumerate(q["agents"])}
        q["answers"].sort(key=lambda a: order.get(a["agent"], len(order)))
    return list(questions.values())


_PYTHON_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_python_target(text: str) -> bool:
    """Whether ``text`` names a Python callable (``module:function``), not a command."""
    return bool(_PYTHON_TARGET.match(text.strip()))
