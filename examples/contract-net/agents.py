"""The render farm's agents: renderers that bid for scenes, voters, and a lead who asks.

- ``render``: renders a scene (simulated: it sleeps the scene's estimate, scaled);
- ``bid_gpu``: the GPU box is quick but its memory holds at most 400 frames: bigger
  scenes are refused;
- ``bid_cloud``: the cloud is quicker still, but each frame costs money, which the
  plan's ``cost_weight`` turns into seconds of score;
- the CPU box has no bidder: it proposes the scene's estimate at its load;
- ``vote``: each renderer votes for the codec it renders best;
- ``choose_codec``: the lead puts the codec to a vote and writes the result to the
  shared state, where every scene reads it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from counterpoint.agents.base import TaskContext
from counterpoint.plan.model import Task

SECONDS_PER_FRAME = {"gpu": 2.0, "cloud": 1.0}
PREFERRED = {"gpu": "h265", "cpu": "h264", "cloud": "h265"}


async def render(task: Task, ctx: TaskContext) -> dict[str, Any]:
    codec = ctx.state.get("render.codec", "h264")
    await asyncio.sleep(ctx.estimate_s)  # the estimate, already scaled by --time-scale
    return {"scene": task.id, "frames": task.inputs.get("frames", 0), "codec": codec}


async def bid_gpu(task: Task, call: dict[str, Any]) -> dict[str, Any]:
    frames = int(task.inputs.get("frames", 0))
    if frames > 400:
        return {"refuse": f"{frames} frames do not fit in GPU memory (400 at most)"}
    return {"duration_s": frames * SECONDS_PER_FRAME["gpu"], "load": call["load"]}


async def bid_cloud(task: Task) -> dict[str, Any]:
    frames = int(task.inputs.get("frames", 0))
    return {"duration_s": frames * SECONDS_PER_FRAME["cloud"], "cost": frames * 1.5}


async def vote(ballot: dict[str, Any]) -> dict[str, Any]:
    choice = PREFERRED.get(ballot["voter"])
    if choice not in ballot["options"]:
        return {"abstain": "no preference among these"}
    return {"vote": choice}


async def choose_codec(task: Task, ctx: TaskContext) -> dict[str, Any]:
    decision = await ctx.propose_decision(
        "Which codec for the final render?", ["h264", "h265", "av1"]
    )
    ctx.state.set("render.codec", decision.value)
    return {"codec": decision.value, "votes": decision.votes, "decided_by": decision.decided_by}
