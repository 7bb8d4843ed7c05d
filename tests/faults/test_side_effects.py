"""Scenario 2: a kill between a task's side effect and the commit of its completion.

Such a task runs again on resume (at least once). A task that applies its effect under
the idempotency key it is given (``ctx.idempotency_key``, ``$COUNTERPOINT_IDEMPOTENCY_KEY``
for shell agents) has it applied once: duplicates 0. A task that ignores the key applies
it again: that count is published, never promised.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from pathlib import Path

from fault_helpers import KILLED, crash_chain, figure, size, trace_commits, workspace
from run_helpers import Workspace, one_phase, task

EFFECTS = """
import os
import time

def _apply(ctx, task, key):
    log = ctx.workdir / "effects.log"
    if key is not None:
        keys = ctx.workdir / "keys"
        keys.mkdir(exist_ok=True)
        try:  # the effect and its key, atomically: O_EXCL
            fd = os.open(keys / key.replace(":", "_"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return {"applied": False}
        os.close(fd)
    with open(log, "a") as f:
        f.write(task.id + "\\n")
    return {"applied": True}

async def keyed(task, ctx):
    return _apply(ctx, task, ctx.idempotency_key)

async def plain(task, ctx):
    return _apply(ctx, task, None)
"""

SHELL_KEYED = (
    'k="$PWD/keys/$(echo "$COUNTERPOINT_IDEMPOTENCY_KEY" | tr : _)"; mkdir -p "$PWD/keys"; '
    '( set -C; : > "$k" ) 2>/dev/null && echo "$1" >> "$PWD/effects.log"; exit 0'
)


def effects_plan(ws: Workspace, n: int) -> str:
    module = f"effects_{uuid.uuid4().hex[:10]}"
    (ws.dir / f"{module}.py").write_text(EFFECTS, encoding="utf-8")
    tasks = [task(f"key{i}") for i in range(n)] + [task(f"plain{i}") for i in range(n)]
    for t in tasks:
        t["requires"] = ["keyed" if t["id"].startswith("key") else "plain"]
    tasks += [task(f"sh{i}", requires=["shell"]) for i in range(max(2, n // 10))]
    ws.write_plan(
        one_phase(
            tasks,
            agents={
                "keyed": {
                    "capabilities": ["keyed"],
                    "capacity": 6,
                    "runner": {"python": f"{module}:keyed"},
                },
                "plain": {
                    "capabilities": ["plain"],
                    "capacity": 6,
                    "runner": {"python": f"{module}:plain"},
                },
                "shell": {
                    "capabilities": ["shell"],
                    "capacity": 2,
                    "runner": {"shell": ["sh", "-c", SHELL_KEYED, "sh", "{task_id}"]},
                },
            },
        )
    )
    return module


def duplicates(ws: Workspace, prefix: str) -> int:
    log = ws.dir / "effects.log"
    lines = log.read_text().split() if log.exists() else []
    counts = Counter(t for t in lines if t.startswith(prefix))
    return sum(c - 1 for c in counts.values())


def test_the_idempotency_key_makes_effects_apply_once_across_kills(tmp_path: Path) -> None:
    n, runs = size(30, 150), size(3, 25)
    probe = workspace(tmp_path / "probe")
    effects_plan(probe, n)
    commits = len(trace_commits(probe, tmp_path / "trace.txt"))
    rng = random.Random(7)
    kills = with_key = with_key_shell = without_key = applied_plain = 0
    for r in range(runs):
        ws = workspace(tmp_path / f"run{r}")
        effects_plan(ws, n)
        # kill right before the commits that record completions: the effect is done
        points = [("before", rng.randint(2, max(3, commits // 2))) for _ in range(3)]
        chain = crash_chain(ws, points)
        assert chain.final_code == 0
        kills += sum(1 for c in chain.crashes if c.code == KILLED)
        log = (ws.dir / "effects.log").read_text().split()
        for prefix in ("key", "plain", "sh"):
            assert {t for t in log if t.startswith(prefix)} == {
                f"{prefix}{i}" for i in range(n if prefix != "sh" else max(2, n // 10))
            }, f"an effect of {prefix}* never happened"
        with_key += duplicates(ws, "key")
        with_key_shell += duplicates(ws, "sh")
        without_key += duplicates(ws, "plain")
        applied_plain += n
    figure("side_effects.kills", kills)
    figure("side_effects.duplicates_with_key", with_key + with_key_shell)
    figure("side_effects.duplicates_without_key", without_key)
    figure("side_effects.effects_without_key", applied_plain)
    assert with_key == 0 and with_key_shell == 0
    assert kills >= runs
