"""A fake system for the deployment rollback tests: one JSON file (``$FAKE_SYSTEM``) stands
for the load balancer and the versions that run.

As a command: ``python lb.py switch COLOUR``, ``weight CANARY STABLE``, ``batch N VERSION``,
``deploy VERSION`` (the hook's JSON object arrives on stdin and is kept with the call).
As Python hooks: ``lb:switch``, ``lb:weight``, ``lb:batch`` and ``lb:deploy``, called with
that JSON object. Every call is appended to ``calls``. Faults: ``fail`` maps a hook to the
argument it refuses; ``hang`` maps a hook to the argument it hangs on once (it records its
pid under ``hanging`` first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(os.environ["FAKE_SYSTEM"]).read_text())
    return data


def save(state: dict[str, Any]) -> None:
    path = Path(os.environ["FAKE_SYSTEM"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)  # atomic: a killed hook never leaves half a file


def act(hook: str, args: list[str], via: str, payload: dict[str, Any]) -> None:
    state = load()
    state.setdefault("calls", []).append({"hook": hook, "args": args, "via": via, "in": payload})
    save(state)
    key = args[0] if args else ""
    if state.get("fail", {}).get(hook) == key:
        raise RuntimeError(f"{hook} {key} unreachable")
    if state.get("hang", {}).get(hook) == key:
        del state["hang"][hook]
        state["hanging"] = os.getpid()
        save(state)
        time.sleep(60)
    if hook == "switch":
        state["live"] = args[0]
    elif hook == "weight":
        state["weights"] = {"canary": int(args[0]), "stable": int(args[1])}
    elif hook == "batch":
        state["batches"][args[0]] = args[1]
    elif hook == "deploy":
        state["version"] = args[0]
    state.setdefault("history", []).append([hook, *args])
    save(state)


def switch(step: dict[str, Any]) -> None:
    act("switch", [step["colour"]], "python", step)


def weight(step: dict[str, Any]) -> None:
    act("weight", [str(step["weight"]), str(step["stable_weight"])], "python", step)


def batch(step: dict[str, Any]) -> None:
    act("batch", [str(step["batch"]), step["version"]], "python", step)


def deploy(step: dict[str, Any]) -> None:
    act("deploy", [step["version"]], "python", step)


if __name__ == "__main__":
    try:
        act(sys.argv[1], sys.argv[2:], "command", json.load(sys.stdin))
    except RuntimeError as exc:
        sys.exit(str(exc))
