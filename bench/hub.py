"""WebSocket hub benchmark: remote agents' status updates, validated, journaled, acknowledged.

The hub runs in its own process (``--serve hub``): the product's :class:`Hub`
behind its :class:`HubServer` (starlette on uvicorn, 127.0.0.1), a SQLite run
journal (``--sync full`` by default) in a temporary state directory, and a bus
that journals every message as the run engine does (an event of kind
``message``). Each agent that connects is assigned one long-running task
(``Hub.run_task``), so its status updates about that task are accepted.

This process is the load generator: ``--agents`` (100) instances of the
product's :class:`AgentClient` (its reliable outbox, resend and reconnect are
what is measured), each sending status updates about its task at a paced rate
(``--rate`` in total), each carrying the agent's own sequence number in
``content.data.n``. Latency is measured per message from the moment the client
queues the frame to the moment the hub's cumulative acknowledgement covering it
arrives, that is after the message was validated, journaled and committed.

Scenarios (``--scenarios``, all by default):

* ``steady``: the paced load for a warm-up, then ``--duration`` seconds measured;
* ``chaos``: the same, and every agent's connection is aborted at random times
  (every 2-8 s); the clients reconnect and resend what is unacknowledged;
* ``reference``: the same paced load against a bare starlette/uvicorn WebSocket
  server (same server stack and settings as the hub's) that only parses each
  frame as JSON and acknowledges cumulatively every 10 ms like the hub, with no
  validation and no journal: the transport's share of the cost;
* ``ceiling``: unpaced (each agent keeps up to 64 messages in flight), against
  the hub and then the bare server: the most each can take on this machine.

After each hub scenario the journal is read back (SQLite, after the hub process
exited) and every agent's sequence numbers 1..N it sent must each be there
exactly once. The exit status is 1 when a target or a check fails.

    python bench/hub.py                       # the issue's settings, every scenario
    python bench/hub.py --quick               # a smoke run of a few seconds
    python bench/hub.py --scenarios steady chaos --sync normal --json hub.json
    python bench/hub.py --scenarios steady --duration 10 --profile /tmp/hub-prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import platform
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

TARGET_RATE = 20_000  # messages a second, sustained
TARGET_P99_MS = 50.0
TARGET_AGENTS = 100
TARGET_DURATION_S = 30.0
CEILING_WINDOW = 64  # messages in flight per agent in the unpaced runs
CHAOS_MIN_S, CHAOS_MAX_S = 2.0, 8.0
TICK_S = 0.002  # the pacer's period
SCENARIOS = ("steady", "chaos", "reference", "ceiling")


# -- the server process -------------------------------------------------------------------


def agent_names(n: int) -> list[str]:
    return [f"agent{i:03d}" for i in range(n)]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _BareHub:
    """The reference: the hub's interface to the server, parsing JSON and acknowledging only.

    It answers the hello with a welcome, assigns one task (the clients wait for
    it), then acknowledges cumulatively every 10 ms what arrived, as the hub does.
    """

    max_message_bytes = 1024 * 1024

    def __init__(self) -> None:
        self.links: dict[str, Any] = {}
        self.seen: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.counts = {"messages": 0, "rejected": 0, "duplicates": 0}
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._acks())

    async def close(self, code: int = 1001, reason: str = "") -> None:
        if self._loop is not None:
            self._loop.cancel()
        for conn in list(self.links.values()):
            with contextlib.suppress(Exception):
                await conn.close(code, reason)

    def connected(self) -> dict[str, dict[str, Any]]:
        return {name: {"connected": True} for name in self.links}

    async def serve(self, agent: str, conn: Any, incoming: AsyncIterator[str]) -> None:
        hello = json.loads(await anext(incoming))
        welcome = {
            "op": "welcome",
            "agent": agent,
            "session": hello["session"],
            "resumed": agent in self.seen,
            "last_seq": self.seen.get(agent, 0),
            "heartbeat_s": 30.0,
            "max_message_bytes": self.max_message_bytes,
        }
        await conn.send_text(json.dumps(welcome))
        if agent not in self.seen:
            self.seen[agent] = 0
            assign = {"op": "assign", "seq": 1, "task_id": f"t-{agent}", "attempt": 1}
            await conn.send_text(json.dumps({**assign, "payload": {}}))
        self.links[agent] = conn
        try:
            async for text in incoming:
                frame = json.loads(text)
                if frame.get("op") == "msg":
                    seq = frame["seq"]
                    if seq > self.seen[agent]:
                        self.seen[agent] = seq
                        self.counts["messages"] += 1
                    else:
                        self.counts["duplicates"] += 1
                    self.dirty.add(agent)
        finally:
            if self.links.get(agent) is conn:
                del self.links[agent]

    async def _acks(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            dirty, self.dirty = self.dirty, set()
            for agent in dirty:
                conn = self.links.get(agent)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.send_text(json.dumps({"op": "ack", "seq": self.seen[agent]}))


async def serve(kind: str, state: Path, n_agents: int, sync: str) -> None:
    """Serve until a line arrives on stdin; print the port first, the figures last."""
    from counterpoint.agents.base import TaskContext
    from counterpoint.messaging.bus import Bus
    from counterpoint.messaging.protocol import Message
    from counterpoint.net.hub import Hub, tune_gc_for_serving
    from counterpoint.net.server import HubServer
    from counterpoint.net.tokens import TokenStore
    from counterpoint.plan.model import AgentSpec, Task
    from counterpoint.store.sqlite import SqliteStore

    names = agent_names(n_agents)
    store: SqliteStore | None = None
    jobs: list[asyncio.Task[Any]] = []
    run_id = 0
    hub: Any
    if kind == "hub":
        store = SqliteStore(state, sync=sync)
        run_id = store.create_run(
            "bench/hub.py", "bench-hub", "0", "{}", {}, [f"t-{n}" for n in names]
        )
        journal_store = store

        def journal(message: Message) -> None:
            journal_store.message(run_id, message)

        spec = {"capabilities": ["x"], "runner": {"remote": True}}
        agents = {name: AgentSpec.model_validate(spec) for name in names}
        assigned: set[str] = set()

        def on_state(agent: str, what: str, info: dict[str, Any]) -> None:
            if what != "available" or agent in assigned:
                return
            assigned.add(agent)
            ctx = TaskContext(
                run_id=str(run_id),
                task=Task(id=f"t-{agent}"),
                attempt=1,
                agent=agent,
                state_dir=state,
                workdir=state,
                log_dir=state / "logs",
            )
            jobs.append(asyncio.create_task(real_hub.run_task(agent, ctx)))

        real_hub = Hub(
            Bus(journal=journal),
            agents,
            commit=store.flush,
            on_state=on_state,
        )
        hub = real_hub
    else:
        hub = _BareHub()
    server = HubServer(cast(Hub, hub), TokenStore(state), port=0)
    await server.start()
    tune_gc_for_serving()  # as a served run does
    started_cpu = _cpu_s()
    print(json.dumps({"port": server.port, "run_id": run_id, "pid": os.getpid()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    await server.stop()
    if store is not None:
        store.close()
    figures = {
        "counts": dict(hub.counts),
        "cpu_s": _cpu_s() - started_cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(figures), flush=True)


class ServerProcess:
    """``bench/hub.py --serve KIND`` in a child process, stopped through its stdin."""

    def __init__(self, kind: str, state: Path, n_agents: int, sync: str) -> None:
        self.errors = (state / "server.stderr").open("w")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, __file__, "--serve", kind, "--state", str(state)),
                *("--agents", str(n_agents), "--sync", sync),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
        )
        self.state = state
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"the {kind} server did not start:\n{self.stderr()}")
        hello = json.loads(line)
        self.port = int(hello["port"])
        self.run_id = int(hello["run_id"])
        self.pid = int(hello["pid"])

    def stderr(self) -> str:
        self.errors.flush()
        return (self.state / "server.stderr").read_text()[-3000:]

    def cpu_s(self) -> tuple[float, float]:
        """The child's CPU time so far, (user, system), from /proc."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan"), float("nan")
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=60)
        self.errors.close()
        if self.proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"the server failed ({self.proc.returncode}):\n{self.stderr()}")
        return dict(json.loads(out.strip().splitlines()[-1]))


# -- the load generator -------------------------------------------------------------------


@dataclass
class Recorder:
    """What the agents saw: acks per second, latencies of the messages sent in the window."""

    t0: float
    window: tuple[float, float] = (float("inf"), float("inf"))
    per_second: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # of each latency, since t0
    acked: int = 0
    acked_in_window: int = 0

    def ack(self, now: float, sent_at: list[float]) -> None:
        start, end = self.window
        self.acked += len(sent_at)
        second = int(now - self.t0)
        self.per_second[second] = self.per_second.get(second, 0) + len(sent_at)
        if start <= now < end:
            self.acked_in_window += len(sent_at)
        for t in sent_at:
            if start <= t < end:
                self.latencies.append(now - t)
                self.sent_at.append(t - self.t0)


def _agent_client_class() -> type[Any]:
    from counterpoint.net.client import AgentClient

    class BenchAgent(AgentClient):
        """The product's client; the bench only notes assignments and times acknowledgements."""

        recorder: Recorder
        task_id: str | None = None
        assigned: asyncio.Event
        pending: deque[tuple[int, float]]
        sent = 0
        resent = 0  # frames sent from the outbox on reconnect (unacked, or queued meanwhile)

        async def _welcomed(self, welcome: dict[str, Any]) -> None:
            await super()._welcomed(welcome)
            self.resent += len(self.outbox)  # what the client sends again on this connection

        def _on_assign(self, frame: dict[str, Any]) -> None:
            self.task_id = str(frame["task_id"])  # the bench runs nothing: it only reports
            self.assigned.set()

        def _acked(self, seq: int) -> None:
            super()._acked(seq)
            pending = self.pending
            if pending and pending[0][0] <= seq:
                times = []
                while pending and pending[0][0] <= seq:
                    times.append(pending.popleft()[1])
                self.recorder.ack(time.perf_counter(), times)

        def post(self, template: dict[str, Any], progress: float) -> None:
            """Queue the next status update about the assigned task."""
            self.sent += 1
            message = {
                **template,
                "message_id": str(uuid.uuid4()),
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "content": {
                    **template["content"],
                    "progress": progress,
                    "data": {"n": self.sent},
                },
            }
            self.send({"op": "msg", "message": message})
            self.pending.append((self.out_seq, time.perf_counter()))

    return BenchAgent


def message_template(agent: str, task_id: str) -> dict[str, Any]:
    """A status update as ``status_update(...).to_json()`` writes it (the fields vary per post).

    The load generator copies this dict instead of building each message with
    pydantic, which would cost the load generator 17 us a message; the hub
    validates every message all the same.
    """
    from counterpoint.messaging.protocol import Status, status_update

    return status_update(agent, task_id, Status.IN_PROGRESS, 0.0, n=0).to_json()


@dataclass
class LoadSettings:
    agents: int
    rate: float  # messages a second in total; 0: unpaced (CEILING_WINDOW in flight)
    warmup_s: float
    duration_s: float
    chaos: bool
    drain_s: float = 60.0
    profile: Path | None = None  # record both processes with py-spy into this folder


def make_clients(
    url: str, tokens: dict[str, str], work: Path, n_agents: int, rec: Recorder
) -> list[Any]:
    from counterpoint.net.client import AgentConfig

    for name in ("counterpoint.agent", "websockets"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the chaos scenario's drops
    agent_class = _agent_client_class()
    clients = []
    for name in agent_names(n_agents):
        config = AgentConfig(
            url=url,
            agent=name,
            token=tokens[name],
            capabilities=["x"],
            command=["true"],  # never run: the bench handles the assignment itself
            state_dir=work / "agents" / name,
            workdir=work,
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
        )
        client = agent_class(config)
        client.recorder, client.assigned, client.pending = rec, asyncio.Event(), deque()
        clients.append(client)
    return clients


def system_busy_s() -> float:
    """CPU seconds all processes of the machine used so far (/proc/stat, every core)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Mark:
    """CPU seconds used so far by this process, the server process and the whole machine."""

    load: float
    load_system: float
    server: float
    server_system: float
    machine: float

    @classmethod
    def now(cls, server: ServerProcess) -> Mark:
        own = os.times()
        user, system = server.cpu_s()
        return cls(own.user + own.system, own.system, user + system, system, system_busy_s())


class Drops:
    """The chaos scenario: each agent's connection aborted every 2-8 s at random."""

    def __init__(self, clients: list[Any], stop_at: float) -> None:
        self.count = 0
        self.stop_at = stop_at
        self.tasks = [asyncio.create_task(self._drop(c)) for c in clients]

    async def _drop(self, client: Any) -> None:
        while True:
            await asyncio.sleep(random.uniform(CHAOS_MIN_S, CHAOS_MAX_S))
            if time.perf_counter() >= self.stop_at:
                return
            ws = client.ws
            if ws is not None:
                ws.transport.abort()  # no close frame: as if the network went away
                self.count += 1

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


async def drive(
    url: str,
    tokens: dict[str, str],
    work: Path,
    load: LoadSettings,
    show: Any,
    label: str,
    server: ServerProcess,
) -> dict[str, Any]:
    """Connect the agents, offer the load, drain, and return what was measured."""
    rec = Recorder(time.perf_counter())
    clients = make_clients(url, tokens, work, load.agents, rec)
    runs = [asyncio.create_task(c.run()) for c in clients]
    try:
        waiting = asyncio.gather(*(c.assigned.wait() for c in clients))
        await asyncio.wait_for(waiting, 60)
        figures = await offer(clients, load, show, label, server, rec)
    finally:
        for client in clients:
            client.stop()
        await asyncio.gather(*runs, return_exceptions=True)
    figures["reconnects"] = sum(max(0, c.connections - 1) for c in clients)
    figures["resent"] = sum(c.resent for c in clients)
    figures["client_errors"] = sum(len(c.errors) for c in clients)
    figures["sent"] = {c.config.agent: c.sent for c in clients}
    figures["sent_total"] = sum(c.sent for c in clients)
    return figures


async def offer(
    clients: list[Any],
    load: LoadSettings,
    show: Any,
    label: str,
    server: ServerProcess,
    rec: Recorder,
) -> dict[str, Any]:
    """The paced (or unpaced) load, the measured window, then the drain."""
    templates = [message_template(c.config.agent, c.task_id) for c in clients]
    start = rec.t0 = time.perf_counter()
    window = rec.window = (start + load.warmup_s, start + load.warmup_s + load.duration_s)
    drops = Drops(clients, window[1]) if load.chaos else None
    per_agent = load.rate / load.agents
    phases = [i / load.agents for i in range(load.agents)]
    marks: list[Mark] = []
    spies: list[subprocess.Popen[bytes]] = []
    timeline: list[dict[str, float]] = []
    next_sample = start
    while (now := time.perf_counter()) < window[1]:
        if now >= window[0] and not marks:
            marks.append(Mark.now(server))
            if load.profile is not None:
                spies = start_profiles(load.profile, label, server.pid, load.duration_s)
        progress = round(100 * (now - start) / (window[1] - start), 3)
        for client, template, phase in zip(clients, templates, phases, strict=True):
            if per_agent > 0:
                due = int((now - start) * per_agent + phase)
            else:
                due = client.sent + CEILING_WINDOW - len(client.pending)
            while client.sent < due:
                client.post(template, progress)
        if now >= next_sample:
            next_sample += 1.0
            timeline.append(_sample(now - start, clients, rec, server))
            show(_progress_line(label, now, start, window, clients, rec, drops))
        await asyncio.sleep(TICK_S)
    marks.append(Mark.now(server))
    if drops is not None:
        drops.cancel()
    drain_until = time.perf_counter() + load.drain_s
    while any(c.outbox for c in clients) and time.perf_counter() < drain_until:
        show(_progress_line(label, time.perf_counter(), start, window, clients, rec, drops))
        await asyncio.sleep(0.1)
    drained = time.perf_counter() - window[1]
    for spy in spies:
        await asyncio.to_thread(spy.wait)
    return summarize(load, rec, marks, timeline) | {
        "scenario": label,
        "unacked_after_drain": sum(len(c.outbox) for c in clients),
        "drain_s": drained,
        "drops": drops.count if drops is not None else 0,
    }


def _sample(t: float, clients: list[Any], rec: Recorder, server: ServerProcess) -> dict[str, float]:
    mark = Mark.now(server)
    return {
        "t": round(t, 3),
        "sent": sum(c.sent for c in clients),
        "acked": rec.acked,
        "load_cpu_s": round(mark.load, 3),
        "server_cpu_s": round(mark.server, 3),
        "machine_cpu_s": round(mark.machine, 3),
    }


def summarize(
    load: LoadSettings, rec: Recorder, marks: list[Mark], timeline: list[dict[str, float]]
) -> dict[str, Any]:
    seconds = rec.window[1] - rec.window[0]
    lat = sorted(rec.latencies)
    by_second: dict[int, list[float]] = {}
    for t, latency in zip(rec.sent_at, rec.latencies, strict=True):
        by_second.setdefault(int(t), []).append(latency)
    p99_per_second = {s: 1000 * _pct(sorted(v), 0.99) for s, v in sorted(by_second.items())}
    # The whole seconds (since the load started) inside the measured window.
    first, last = math.ceil(load.warmup_s), math.floor(load.warmup_s + load.duration_s)
    per_second = [rec.per_second.get(s, 0) for s in range(first, last)]
    begin, end = marks
    load_cpu, server_cpu = end.load - begin.load, end.server - begin.server
    load_kernel = end.load_system - begin.load_system
    server_kernel = end.server_system - begin.server_system
    machine = end.machine - begin.machine
    return {
        "agents": load.agents,
        "offered_rate": load.rate,
        "warmup_s": load.warmup_s,
        "duration_s": seconds,
        "acked_total": rec.acked,
        "acked_in_window": rec.acked_in_window,
        "throughput": rec.acked_in_window / seconds,
        "slowest_second": min(per_second) if per_second else None,
        "fastest_second": max(per_second) if per_second else None,
        "acked_per_second": per_second,
        "p99_ms_per_second": [round(v, 1) for v in p99_per_second.values()],
        "latency_samples": len(lat),
        "latency_ms": {
            "p50": 1000 * _pct(lat, 0.50),
            "p95": 1000 * _pct(lat, 0.95),
            "p99": 1000 * _pct(lat, 0.99),
            "max": 1000 * (lat[-1] if lat else float("nan")),
        },
        "cpu": {  # cores busy on average over the window
            "load_generator": load_cpu / seconds,
            "server": server_cpu / seconds,
            "others": max(0.0, machine - load_cpu - server_cpu) / seconds,
            "load_generator_kernel": load_kernel / seconds,
            "server_kernel": server_kernel / seconds,
        },
        "timeline": timeline,
    }


def start_profiles(
    folder: Path, label: str, server_pid: int, seconds: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy on the server and on this process for the measured window (raw stacks)."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    spies = []
    for side, pid in (("server", server_pid), ("load", os.getpid())):
        out = folder / f"{label.replace(' ', '-')}-{side}.txt"
        command = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
        command += ["--rate", "250", "--format", "raw", "--nolineno", "--idle"]
        command += ["--nonblocking", "--output", str(out)]
        spies.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return spies


def summarize_profile(path: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, self share, inclusive share) of the main thread's samples, by self share."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "threading.py" in frames[0]:
            continue  # another thread (the stdin reader, the executor)
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    ranked = sorted(own, key=lambda f: -own[f])[:top]
    return [(f, own[f] / max(1, total), inclusive[f] / max(1, total)) for f in ranked]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * q))]


def _progress_line(
    label: str,
    now: float,
    start: float,
    window: tuple[float, float],
    clients: list[Any],
    rec: Recorder,
    drops: Drops | None,
) -> str:
    sent = sum(c.sent for c in clients)
    if now < window[0]:
        phase = f"warm-up {now - start:4.1f}/{window[0] - start:.0f}s"
    elif now < window[1]:
        phase = f"measuring {now - window[0]:4.1f}/{window[1] - window[0]:.0f}s"
    else:
        phase = "draining"
    second = int(now - rec.t0) - 1
    rate = rec.per_second.get(second, 0)
    text = f"{label}: {phase}  sent {sent:,}  acked {rec.acked:,}  last second {rate:,}/s"
    if drops is not None:
        reconnects = sum(max(0, c.connections - 1) for c in clients)
        text += f"  drops {drops.count:,}  reconnects {reconnects:,}"
    return text


def verify_journal(state: Path, run_id: int, sent: dict[str, int]) -> dict[str, Any]:
    """Every agent's sequence numbers 1..N in the journal exactly once."""
    conn = sqlite3.connect(state / "state.db")
    try:
        rows = conn.execute(
            "SELECT json_extract(data, '$.sender'), json_extract(data, '$.content.data.n')"
            " FROM events WHERE run_id = ? AND kind = 'message'",
            (run_id,),
        ).fetchall()
    finally:
        conn.close()
    seen: dict[str, list[int]] = {name: [] for name in sent}
    strangers = 0
    for sender, n in rows:
        if sender in seen and isinstance(n, int):
            seen[sender].append(n)
        else:
            strangers += 1
    lost = duplicated = unexpected = 0
    worst: list[str] = []
    for name, numbers in seen.items():
        distinct = set(numbers)
        expected = set(range(1, sent[name] + 1))
        missing = len(expected - distinct)
        extra = len(distinct - expected)
        dups = len(numbers) - len(distinct)
        lost += missing
        duplicated += dups
        unexpected += extra
        if (missing or dups or extra) and len(worst) < 5:
            worst.append(f"{name}: {missing} missing, {dups} duplicated, {extra} unexpected")
    return {
        "journaled": len(rows),
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected + strangers,
        "examples": worst,
    }


def run_scenario(kind: str, label: str, load: LoadSettings, sync: str, show: Any) -> dict[str, Any]:
    from counterpoint.net.tokens import TokenStore

    with tempfile.TemporaryDirectory(prefix="cp-bench-hub-") as tmp:
        work = Path(tmp)
        state = work / "state"
        state.mkdir()
        store = TokenStore(state)
        tokens = {name: store.create(name) for name in agent_names(load.agents)}
        server = ServerProcess(kind, state, load.agents, sync)
        url = f"ws://127.0.0.1:{server.port}"
        try:
            from counterpoint.net.hub import SERVING_GC_THRESHOLD

            gc.set_threshold(*SERVING_GC_THRESHOLD)  # the harness's pauses are not the hub's
            figures = asyncio.run(drive(url, tokens, work, load, show, label, server))
        except BaseException:
            with contextlib.suppress(Exception):
                server.proc.kill()
            raise
        figures["server"] = server.stop()
        figures["kind"] = kind
        figures["sync"] = sync if kind == "hub" else None
        if kind == "hub":
            figures["journal"] = verify_journal(state, server.run_id, figures["sent"])
        del figures["sent"]
        return figures


# -- the report -----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("starlette", "uvicorn", "websockets", "pydantic"):
        try:
            versions[mod] = str(__import__(mod).__version__)
        except (ImportError, AttributeError):
            versions[mod] = "?"
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": os.getloadavg(),
        "commit": commit or "?",
        "versions": versions,
    }


def check(fig: dict[str, Any], full: bool) -> list[str]:
    """The targets and checks that apply to this scenario; the missed ones, described."""
    failed = []
    label = fig["scenario"]
    if fig["kind"] == "hub":
        journal = fig["journal"]
        for what in ("lost", "duplicated", "unexpected"):
            if journal[what]:
                failed.append(f"{label}: {journal[what]:,} messages {what} in the journal")
        if journal["examples"]:
            failed.append(f"{label}: " + "; ".join(journal["examples"]))
        if fig["unacked_after_drain"]:
            failed.append(f"{label}: {fig['unacked_after_drain']:,} messages never acknowledged")
    if label != "steady":
        return failed
    want = TARGET_RATE if full else 0.95 * fig["offered_rate"]
    if fig["throughput"] < want:
        failed.append(
            f"{label}: {fig['throughput']:,.0f} messages/s acknowledged, the target is {want:,.0f}"
        )
    if not fig["latency_ms"]["p99"] < TARGET_P99_MS:
        failed.append(
            f"{label}: p99 latency {fig['latency_ms']['p99']:.1f} ms, "
            f"the target is under {TARGET_P99_MS:.0f} ms"
        )
    return failed


def render(console: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="WebSocket hub: status updates from remote agents over loopback")
    for column in (
        "scenario",
        "server",
        "offered/s",
        "acked/s",
        "slowest 1 s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "drops",
        "reconnects",
        "journaled",
        "lost",
        "dup",
        "server CPU",
        "load CPU",
        "other CPU",
    ):
        table.add_column(column, justify="right")
    for fig in results["scenarios"]:
        lat = fig["latency_ms"]
        journal = fig.get("journal")
        table.add_row(
            fig["scenario"],
            "hub" if fig["kind"] == "hub" else "bare",
            f"{fig['offered_rate']:,.0f}" if fig["offered_rate"] else "max",
            f"{fig['throughput']:,.0f}",
            f"{fig['slowest_second']:,}" if fig["slowest_second"] is not None else "-",
            f"{lat['p50']:.1f}",
            f"{lat['p95']:.1f}",
            f"{lat['p99']:.1f}",
            f"{lat['max']:.1f}",
            f"{fig['drops']:,}",
            f"{fig['reconnects']:,}",
            f"{journal['journaled']:,}" if journal else "-",
            f"{journal['lost']:,}" if journal else "-",
            f"{journal['duplicated']:,}" if journal else "-",
            f"{100 * fig['cpu']['server']:.0f}%",
            f"{100 * fig['cpu']['load_generator']:.0f}%",
            f"{100 * fig['cpu']['others']:.0f}%",
        )
    console.print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=TARGET_AGENTS, help="default 100")
    parser.add_argument(
        "--rate",
        type=float,
        default=21_000,
        help="messages a second offered in total (default 21000: the target plus 5%%)",
    )
    parser.add_argument("--duration", type=float, default=TARGET_DURATION_S, help="seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument(
        "--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), metavar="NAME"
    )
    parser.add_argument("--sync", choices=["full", "normal"], default="full")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 20 agents, 2,000/s, 3 s (+1 s warm-up)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the hub and the load generator with py-spy during each measured window "
        "(raw stacks in DIR; the figures then include the profiler's overhead)",
    )
    parser.add_argument("--serve", choices=["hub", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.rate, args.duration, args.warmup = 20, 2_000.0, 3.0, 1.0
    return args


def planned_runs(scenarios: list[str], rate: float) -> list[tuple[str, str, float, bool]]:
    """(server kind, label, offered rate (0: unpaced), chaos) of each run, in order."""
    runs: list[tuple[str, str, float, bool]] = []
    for name in scenarios:
        if name == "steady":
            runs.append(("hub", "steady", rate, False))
        elif name == "chaos":
            runs.append(("hub", "chaos", rate, True))
        elif name == "reference":
            runs.append(("reference", "reference", rate, False))
        else:
            runs += [("hub", "ceiling hub", 0.0, False), ("reference", "ceiling bare", 0.0, False)]
    return runs


def main() -> int:
    args = parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.state, args.agents, args.sync))
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if not console.is_terminal:  # rich assumes 80 columns when piped; the table needs more
        console = Console(width=200)
    info = machine_info()
    console.print(
        f"[bold]WebSocket hub[/] - {info['nproc']} cores, {info['cpu']}, Python "
        f"{info['python']}, {args.agents} agents, journal sync {args.sync}, {info['commit']}"
    )
    full = (
        args.agents >= TARGET_AGENTS
        and args.rate >= TARGET_RATE
        and args.duration >= TARGET_DURATION_S
    )
    runs = planned_runs(args.scenarios, args.rate)
    results: dict[str, Any] = {
        "machine": info,
        "settings": {
            "agents": args.agents,
            "rate": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "sync": args.sync,
            "full": full,
            "command": " ".join(sys.argv),
        },
        "scenarios": [],
    }
    with Live("", console=console, auto_refresh=False, transient=True) as live:

        def show(text: str) -> None:
            live.update(text, refresh=True)

        for kind, label, rate, chaos in runs:
            load = LoadSettings(
                args.agents, rate, args.warmup, args.duration, chaos, profile=args.profile
            )
            fig = run_scenario(kind, label, load, args.sync, show)
            results["scenarios"].append(fig)
            live.console.print(f"{label}: {_summary(fig)}")
            if args.profile is not None:
                print_profiles(live.console, args.profile, label)
    render(console, results)
    failed = [problem for fig in results["scenarios"] for problem in check(fig, full)]
    results["failed"] = failed
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not full:
        console.print(
            f"(not the issue's settings: the throughput target is {TARGET_RATE:,}/s with "
            f"{TARGET_AGENTS} agents for {TARGET_DURATION_S:.0f} s; checked here: 95% of "
            "the offered load)"
        )
    for problem in failed:
        console.print(f"[red]MISSED[/] {problem}")
    if not failed:
        console.print("[green]all targets and checks met[/]")
    return 1 if failed else 0


def print_profiles(console: Any, folder: Path, label: str) -> None:
    for side in ("server", "load"):
        path = folder / f"{label.replace(' ', '-')}-{side}.txt"
        if not path.exists():
            console.print(f"(no profile of the {side} side: is py-spy installed in the venv?)")
            continue
        console.print(f"[bold]{label}, {side} process[/]: share of samples (self, inclusive)")
        for function, own, inclusive in summarize_profile(path):
            console.print(f"  {100 * own:5.1f}% {100 * inclusive:5.1f}%  {function}")


def _summary(fig: dict[str, Any]) -> str:
    lat = fig["latency_ms"]
    text = (
        f"{fig['throughput']:,.0f} acked/s (slowest second {fig['slowest_second']}), "
        f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms, "
        f"server CPU {100 * fig['cpu']['server']:.0f}% "
        f"(kernel {100 * fig['cpu']['server_kernel']:.0f}%), "
        f"load CPU {100 * fig['cpu']['load_generator']:.0f}% "
        f"(kernel {100 * fig['cpu']['load_generator_kernel']:.0f}%), "
        f"other processes {100 * fig['cpu']['others']:.0f}%"
    )
    if fig.get("journal"):
        j = fig["journal"]
        text += f", journaled {j['journaled']:,}, lost {j['lost']}, duplicated {j['duplicated']}"
    if fig["drops"] or fig["reconnects"]:
        text += f", drops {fig['drops']:,}, reconnects {fig['reconnects']:,}"
        text += f", frames resent {fig['resent']:,}"
        text += f", resends dropped by the server {fig['server']['counts']['duplicates']:,}"
    return text


if __name__ == "__main__":
    sys.exit(main())
