"""A shell agent for shared-state tests: records what it read, writes what its inputs say.

Reads the payload on stdin; appends ``{"task", "event", "state", "t"}`` lines to
``records.jsonl`` in the working directory at start and end; sleeps
``inputs.sleep`` seconds; prints ``{"writes": inputs.writes}`` as its result.
"""

import json
import sys
import time

payload = json.load(sys.stdin)
task = payload["task"]
inputs = task["inputs"]


def record(event: str) -> None:
    line = {"task": task["id"], "event": event, "state": payload.get("state"), "t": time.time()}
    with open("records.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


record("start")
time.sleep(float(inputs.get("sleep", 0.05)))
record("end")
print(json.dumps({"writes": inputs.get("writes", {})}))
