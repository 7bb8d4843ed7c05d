"""Bidders and voters for the coordination tests, steered by the plan.

Copied next to each test plan under a unique module name (Python responders are
imported once per process and module name). Every call and ballot an agent answers is
appended to ``answered.jsonl`` next to this module (the plan's folder), so tests can
check what each agent was really asked.

- ``by_input(task, call)``: the proposal in the task's ``inputs.bids[AGENT]`` (missing:
  no proposal, which refuses);
- ``refuse(task)``: always refuses;
- ``vote(ballot)``: the option ``votes.json`` (next to the plan) gives for the ballot's
  question and voter (missing: abstain; ``"sleep"``: no answer before the deadline);
- ``decide(task, ctx)``: a task agent that proposes ``inputs.question`` among
  ``inputs.options`` and returns the decision;
- ``decide_sync``: the same from a plain function's thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from counterpoint.agents.base import TaskContext
from counterpoint.plan.model import Task

HERE = Path(__file__).resolve().parent


def _note(kind: str, body: dict[str, Any]) -> None:
    with open(HERE / "answered.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "t": time.time(), **body}, default=str) + "\n")


def by_input(task: Task, call: dict[str, Any]) -> dict[str, Any] | None:
    _note("cfp", {"agent": call["agent"], "task": task.id, "call": call["call"]})
    bids: dict[str, Any] = task.inputs.get("bids", {})
    answer: dict[str, Any] | None = bids.get(call["agent"])
    return answer


def refuse(task: Task) -> dict[str, Any]:
    return {"refuse": f"I do not take {task.id}"}


async def vote(ballot: dict[str, Any]) -> Any:
    _note("ballot", {"voter": ballot["voter"], "ballot": ballot["ballot"]})
    table = json.loads((HERE / "votes.json").read_text(encoding="utf-8"))
    choice = table.get(ballot["question"], {}).get(ballot["voter"])
    if choice == "sleep":
        await asyncio.sleep(3600)
    if choice is None:
        return {"abstain": "no opinion"}
    return {"vote": choice}


async def decide(task: Task, ctx: TaskContext) -> dict[str, Any]:
    inputs = task.inputs
    decision = await ctx.propose_decision(
        inputs["question"],
        inputs["options"],
        voters=inputs.get("voters"),
        quorum=inputs.get("quorum"),
        deadline=inputs.get("deadline"),
    )
    return {
        "decision": decision.id,
        "result": decision.value,
        "status": decision.status,
        "by": decision.decided_by,
        "votes": decision.votes,
    }


def decide_sync(task: Task, ctx: TaskContext) -> dict[str, Any]:
    inputs = task.inputs
    decision = ctx.propose_decision_sync(
        inputs["question"], inputs["options"], voters=inputs.get("voters")
    )
    return {"decision": decision.id, "result": decision.value, "status": decision.status}
