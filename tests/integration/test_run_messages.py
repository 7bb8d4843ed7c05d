"""Agents talking during a run: requests answered through the bus, stalls noticed, journaled."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

from run_helpers import Collect

from counterpoint.runtime.orchestrator import RunOptions
from counterpoint.runtime.session import start_run

AGENTS = """
import asyncio


async def asker(task, ctx):
    reply = await ctx.request("reviewer", "review", {"doc": "design.md"})
    return {"verdict": reply.content.data["verdict"], "from": reply.sender}


async def reviewer(task, ctx):
    box = ctx.inbox()
    req = await asyncio.wait_for(box.get(), 10)
    from counterpoint.messaging.protocol import Content, Message

    answer = Message(
        sender=ctx.sender,
        recipient=req.sender,
        type="response",
        content=Content(request_id=req.message_id, status="completed", data={"verdict": "ok"}),
    )
    await ctx.bus.publish(answer)
    await ctx.send("*", "review_done", {"doc": req.content.data["doc"]})
    return {}


async def silent(task, ctx):
    await asyncio.sleep(0.6)
    return {}
"""


def write(tmp_path: Path, tasks: str, agents: str) -> Path:
    module = f"talk_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(AGENTS)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\nname: talk\n"
        "settings: {status_every: 0.2s, response_sla: 1h}\n"
        f"agents:\n{agents.replace('MOD', module)}"
        f"phases:\n  - id: p\n    milestones:\n      - id: m\n        tasks:\n{tasks}"
    )
    return plan


def journal(state: Path, kind: str) -> list[dict[str, object]]:
    with sqlite3.connect(state / "state.db") as conn:
        rows = conn.execute("SELECT data FROM events WHERE kind = ? ORDER BY seq", (kind,))
        return [json.loads(r[0]) for r in rows]


def test_an_agent_asks_another_and_gets_its_answer_through_the_bus(tmp_path: Path) -> None:
    plan = write(
        tmp_path,
        "          - {id: ask, requires: [design]}\n          - {id: answer, requires: [review]}\n",
        "  architect: {capabilities: [design], runner: {python: 'MOD:asker'}}\n"
        "  reviewer: {capabilities: [review], runner: {python: 'MOD:reviewer'}}\n",
    )
    seen = Collect()
    code = start_run(plan, tmp_path / "state", RunOptions(poll_s=0.05), [seen], sync="normal")
    assert code == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        (result,) = conn.execute("SELECT result FROM tasks WHERE task = 'ask'").fetchone()
    assert json.loads(result) == {"verdict": "ok", "from": "reviewer"}
    kinds = [m["type"] for m in journal(tmp_path / "state", "message")]
    assert kinds == ["request", "response", "notification"]


def test_a_task_silent_past_status_every_raises_a_stall_notification(tmp_path: Path) -> None:
    plan = write(
        tmp_path,
        "          - {id: quiet}\n",
        "  worker: {runner: {python: 'MOD:silent'}}\n",
    )
    seen = Collect()
    code = start_run(plan, tmp_path / "state", RunOptions(poll_s=0.05), [seen], sync="normal")
    assert code == 0
    stalls = seen.kinds("task_stalled")
    assert stalls and stalls[0].task == "quiet"
    assert float(stalls[0].data["silent_s"]) >= 0.2
    notices = [m for m in journal(tmp_path / "state", "message") if m["type"] == "notification"]
    assert notices and notices[0]["content"]["event_type"] == "task_stalled"
