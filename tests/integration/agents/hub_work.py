"""The task command of the hub tests (tests/integration/test_hub_run.py).

Usage: ``hub_work.py RECORDS TASK_ID AGENT ATTEMPT`` with the task payload (JSON) on
stdin, as a shell runner or ``counterpoint agent`` runs it. It appends a ``start``
and an ``end`` line (JSON) to RECORDS and prints its result as the last stdout line.

The task's inputs steer it:

- ``progress``: print ``{"progress": 50, "message": "halfway"}`` and stay a moment, so
  the agent reports it as a status update;
- ``block``: a marker path; the first attempt that creates it writes its pid there
  and then sleeps until it is killed (later attempts run normally);
- ``sleep``: seconds to sleep before finishing; ``sleeps``: per attempt (``{"1": 0.8}``),
  ``sleep`` for the attempts it does not name.

The result names the task, the agent and the attempt (tests/faults checks that a run
keeps the current attempt's result, never a stale one's).
"""

from __future__ import annotations

import json
import os
import sys
import time


def record(path: str, **fields: object) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({**fields, "pid": os.getpid(), "t": time.time()}) + "\n")


def main() -> None:
    records, task, agent, attempt = sys.argv[1:5]
    payload = json.load(sys.stdin)
    inputs = payload.get("task", {}).get("inputs", {})
    record(records, event="start", task=task, agent=agent, attempt=int(attempt))
    if inputs.get("progress"):
        print(json.dumps({"progress": 50, "message": "halfway"}), flush=True)
        time.sleep(0.8)  # the agent reads stdout every 0.25 s
    marker = inputs.get("block")
    if marker:
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            os.write(fd, f"{os.getpid()} {agent}\n".encode())
            os.close(fd)
            time.sleep(300)
    time.sleep(float(inputs.get("sleeps", {}).get(attempt, inputs.get("sleep", 0))))
    record(records, event="end", task=task, agent=agent, attempt=int(attempt))
    print("working on", task)
    print(json.dumps({"task": task, "by": agent, "attempt": int(attempt)}), flush=True)


if __name__ == "__main__":
    main()
