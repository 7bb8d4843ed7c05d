"""Scenario 6, WebSocket chaos: remote agents reach the hub through :mod:`chaos_proxy`,
which cuts their connections (frames in flight lost), duplicates frames, delays them and
delivers an old connection's frames late, after the agent's reconnect (reordering across
connections). The run must end as if nothing happened: every task completed once with
its own result, every message an agent sent journaled exactly once, no transition
applied twice.

The hub is a real ``counterpoint run --serve`` process; the agents are the product's
:class:`AgentClient` (its outbox, resend, reconnect and dedup are what is tested), many
in one process to spare the machine, each task a small ``/bin/sh`` program that reports
progress (a status update) and prints its result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chaos_proxy import Chaos, ChaosProxy, Counters
from net_helpers import FULL, PY, figure, read_journal, remote, served_bench

from counterpoint.messaging.bus import Bus
from counterpoint.net.hub import Hub, _Link

HEARTBEAT_S = 1.0
AGENTS = 16 if FULL else 6
CAPACITY = 2
TASKS = 4000 if FULL else 150
TASK_SLEEP = "0.2" if FULL else "0.25"
RECONNECTS = 1000 if FULL else 50

#: The agents' process: one AgentClient per agent, recording every frame it numbers.
AGENTS_SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path
from counterpoint.net.client import AgentClient, AgentConfig

config = json.loads(Path(sys.argv[1]).read_text())
sent, results = {}, {}


class Recording(AgentClient):
    def send(self, frame):
        super().send(frame)
        if frame["op"] == "msg":
            sent[self.config.agent].append(frame["message"]["message_id"])
        elif frame["op"] == "result":
            results[self.config.agent].append([frame["task_id"], frame["attempt"],
                                               frame["status"]])


async def main():
    clients = []
    for name, token in config["agents"].items():
        sent[name], results[name] = [], []
        clients.append(Recording(AgentConfig(
            url=config["url"], agent=name, token=token, capabilities=["build"],
            command=config["command"], capacity=config["capacity"],
            workdir=Path(config["workdir"]), state_dir=Path(config["workdir"]) / f"agent-{name}",
            backoff_initial_s=0.05, backoff_max_s=0.5, kill_grace_s=1.0)))
    runs = [asyncio.create_task(c.run()) for c in clients]
    stop = Path(config["stop"])
    while not stop.exists():
        await asyncio.sleep(0.1)
    for c in clients:
        c.stop()
    await asyncio.gather(*runs, return_exceptions=True)
    Path(config["out"]).write_text(json.dumps({
        "sent": sent, "results": results,
        "errors": {c.config.agent: c.errors for c in clients},
        "connections": {c.config.agent: c.connections for c in clients},
    }))


asyncio.run(main())
"""

#: The task: a progress line (a status update), some work, the result as the last line.
#: ``$4`` (inputs.hold), when not empty, is a file to wait for: the run cannot end before
#: the proxy has cut enough connections.
TASK_SCRIPT = (
    'printf \'{{"progress": 50, "message": "half"}}\\n\'; sleep "$5"; '
    'if [ -n "$4" ]; then while [ ! -e "$4" ]; do sleep 0.05; done; fi; '
    'printf \'{{"task": "%s", "agent": "%s", "attempt": %s}}\\n\' "$1" "$3" "$2"'
)


def test_frames_dropped_duplicated_delayed_and_reordered_lose_nothing_and_apply_nothing_twice(
    tmp_path: Path,
) -> None:
    names = [f"a{i:02d}" for i in range(AGENTS)]
    flag = tmp_path / "enough-cuts"
    tasks = [f"t{i:04d}" for i in range(TASKS)]
    command = ["/bin/sh", "-c", TASK_SCRIPT, "sh"]
    command += ["{task_id}", "{attempt}", "{agent}", "{inputs.hold}", "{inputs.sleep}"]
    with served_bench(tmp_path) as bench:
        bench.write_plan(
            [
                *(
                    {"id": t, "requires": ["build"], "inputs": {"hold": "", "sleep": TASK_SLEEP}}
                    for t in tasks
                ),
                {"id": "hold", "requires": ["build"], "inputs": {"hold": str(flag), "sleep": "0"}},
            ],
            {name: remote("build", capacity=CAPACITY) for name in names},
            settings={"heartbeat": HEARTBEAT_S},
            defaults={"retries": 0, "timeout": "300s", "estimate": "1s"},
        )
        tokens = {name: bench.token(name) for name in names}
        run, url = bench.serve_run()
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        chaos = Chaos(
            seed=6,
            lifetime_s=(0.3, 1.2),
            duplicate=0.05,
            delay=0.2,
            delay_s=(0.0, 0.05),
            late=0.3,
            late_s=(0.3, 0.8),
        )
        proxy = ChaosProxy(host, int(port), chaos)
        enough = threading.Event()

        def on_cut(counts: Counters) -> None:
            if counts.cuts >= RECONNECTS and not enough.is_set():
                enough.set()
                flag.write_text("enough")

        proxy.on_cut = on_cut
        proxy_port = proxy.start()
        out, stop = tmp_path / "agents.json", tmp_path / "agents.stop"
        config = {
            "url": f"ws://127.0.0.1:{proxy_port}",
            "agents": tokens,
            "command": command,
            "capacity": CAPACITY,
            "workdir": str(tmp_path),
            "out": str(out),
            "stop": str(stop),
        }
        (tmp_path / "agents.cfg").write_text(json.dumps(config))
        script = tmp_path / "chaos_agents.py"
        script.write_text(AGENTS_SCRIPT, encoding="utf-8")
        agents = bench.start_program([PY, str(script), tmp_path / "agents.cfg"])
        try:
            result = run.wait(timeout=600 if FULL else 120)
        finally:
            stop.write_text("stop")
            proxy.stop()
        agents.wait(timeout=30)
        assert result.code == 0, str(result)
        assert "Traceback" not in result.output, str(result)
        report = json.loads(out.read_text())
        log = (tmp_path / "prog-0.out").read_text(errors="replace")
        assert "Traceback" not in log, log[-5000:]

    counts = proxy.counts
    j = read_journal(bench.state)
    everything = [*tasks, "hold"]

    # Messages lost: every message an agent numbered is in the journal, exactly once.
    journaled = Counter(
        e["data"].get("message_id")
        for e in j.of_kind("message")
        if e["data"].get("sender") in tokens
    )
    sent = [m for ids in report["sent"].values() for m in ids]
    lost_messages = sum(1 for m in set(sent) if journaled[m] == 0)
    twice_messages = sum(1 for m, n in journaled.items() if n > 1)

    # Results: every task completed once, on its own attempt, with its own result.
    completed = Counter(e["task"] for e in j.of_kind("task_completed"))
    twice = sum(1 for n in completed.values() if n > 1)
    wrong = []
    for t in everything:
        rows = j.attempts_of(t)
        done = [a for a in rows if a["status"] == "completed"]
        rec = j.tasks[t]
        if len(done) != 1 or rec["state"] != "completed":
            wrong.append((t, rows, rec["state"]))
            continue
        expected = {"task": t, "agent": done[0]["agent"], "attempt": done[0]["attempt"]}
        if rec["result"] != expected:
            wrong.append((t, rec["result"], expected))
    # Attempts counted twice: every started attempt has one row with one ending.
    started = Counter((e["task"], e["data"]["attempt"]) for e in j.of_kind("task_started"))
    attempts_twice = sum(1 for n in started.values() if n > 1)
    unfinished = [a for a in j.attempts if a["finished"] is None or a["status"] == "running"]
    assert len(j.attempts) == len(started), (len(j.attempts), len(started))
    lost_agents = j.of_kind("agent_lost")
    resumed = sum(1 for e in j.of_kind("agent_connected") if e["data"].get("resumed"))

    figure("ws_chaos.reconnects", counts.cuts, target=RECONNECTS)
    figure("ws_chaos.resumed_sessions", resumed)
    figure("ws_chaos.frames_seen", counts.frames)
    figure("ws_chaos.frames_duplicated", counts.duplicated)
    figure("ws_chaos.frames_delayed", counts.delayed)
    figure("ws_chaos.frames_dropped_in_flight", counts.dropped)
    figure("ws_chaos.late_cuts", counts.late_cuts)
    figure("ws_chaos.frames_delivered_late", counts.delivered_late)
    figure("ws_chaos.messages_sent", len(sent))
    figure("ws_chaos.messages_lost", lost_messages)
    figure("ws_chaos.messages_journaled_twice", twice_messages)
    figure("ws_chaos.tasks", len(everything))
    figure("ws_chaos.tasks_completed_twice", twice)
    figure("ws_chaos.attempts_counted_twice", attempts_twice)
    figure("ws_chaos.agents_lost", len(lost_agents))

    assert counts.cuts >= RECONNECTS
    assert resumed >= RECONNECTS * 0.9, resumed  # the cuts really were reconnects
    assert counts.duplicated > 0 and counts.delayed > 0, counts
    assert counts.late_cuts > 0 and counts.delivered_late > 0, counts
    assert len(set(sent)) == len(sent) and len(sent) >= 2 * TASKS
    assert lost_messages == 0
    assert twice_messages == 0
    assert twice == 0 and sorted(completed) == sorted(everything)
    assert wrong == [], wrong[:5]
    assert attempts_twice == 0 and unfinished == []
    # A cut is not a loss: the heartbeat timeout (3 s) is far above any outage here.
    assert lost_agents == [], lost_agents


class _StuckConnection:
    """A connection whose sends never finish (a peer that stopped reading)."""

    def __init__(self) -> None:
        self.closed: list[int] = []

    async def send_text(self, text: str) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int, reason: str = "") -> None:
        self.closed.append(code)


def test_a_link_closed_twice_at_once_does_not_raise_cancelled_error() -> None:
    """Found by the chaos run: a reconnect replacing a connection closes its link while the
    old connection's handler closes it too; the second close cancelled the writer the
    first was draining, and the first raised CancelledError out of the connection's
    handler (a traceback in the run's output, and the detach left half done)."""

    async def scenario() -> None:
        conn = _StuckConnection()
        link = _Link(conn)
        link.send("a frame the peer never reads")
        await asyncio.sleep(0.01)  # the writer is stuck sending it
        first = asyncio.create_task(link.close(1001, ""))  # the handler's detach, draining
        await asyncio.sleep(0.01)
        await link.close(4409, "replaced by a reconnect")  # the new connection's attach
        await asyncio.wait_for(first, 5)  # returns; no CancelledError
        assert conn.closed == [4409, 1001]

    asyncio.run(scenario())


class _GoneConnection:
    """A connection whose peer vanished before its hello: closing it fails."""

    async def send_text(self, text: str) -> None:
        raise RuntimeError("the client disconnected")

    async def close(self, code: int, reason: str = "") -> None:
        raise RuntimeError("the client disconnected")


def test_a_connection_cut_before_its_hello_ends_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the chaos run: a connection cut right after the upgrade (before any frame)
    ended the hub's handler with a traceback, closing it raising in turn."""

    async def nothing() -> AsyncIterator[str]:
        return
        yield ""

    async def garbage() -> AsyncIterator[str]:
        yield '{"op": "not a hello"}'

    async def scenario() -> Hub:
        hub = Hub(Bus(), {})
        await hub.serve("a00", _GoneConnection(), nothing())
        await hub.serve("a00", _GoneConnection(), garbage())
        return hub

    with caplog.at_level(logging.DEBUG):
        hub = asyncio.run(scenario())
    assert hub.sessions == {}  # neither cut connection left a session behind
    assert hub.connected() == {}
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
