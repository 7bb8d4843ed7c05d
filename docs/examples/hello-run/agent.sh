#!/bin/sh
# A shell agent for docs/examples/hello-run, run as: sh agent.sh TASK_ID WHO
# The task payload (JSON) is on stdin; stdout and stderr go to the attempt's log files.
payload=$(cat)
echo "task $1 (attempt $COUNTERPOINT_ATTEMPT) on agent $COUNTERPOINT_AGENT"
echo "payload: $payload" >&2
# The result: a JSON object in $COUNTERPOINT_RESULT_FILE (or as the last stdout line).
printf '{"shouted": "HELLO, %s", "usage": {"tokens": 30}}\n' "$2" > "$COUNTERPOINT_RESULT_FILE"
