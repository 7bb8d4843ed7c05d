"""The frames of a WebSocket session between a remote agent and the hub.

Every frame is one JSON object (a text frame) with an ``op``. Frames that must
not be lost carry a ``seq`` (numbered per direction and per agent session);
the receiver acknowledges them cumulatively with ``{"op": "ack", "seq": N}``
and drops a frame whose ``seq`` it has already processed, so a resend after a
reconnect is never applied twice.

==============  ==========  ===================================================
op              direction   fields
==============  ==========  ===================================================
hello           agent->hub  session, capabilities, capacity, last_seq, version
welcome         hub->agent  agent, session, resumed, last_seq, heartbeat_s,
                            max_message_bytes
msg             both        seq, message (a protocol message, seed 3.1)
result          agent->hub  seq, task_id, attempt, status, result, error,
                            retry_after_s
assign          hub->agent  seq, task_id, attempt, payload
cancel          hub->agent  seq, task_id, attempt, reason
cfp             hub->agent  seq, call, agent, task, round, attempt, deadline_s,
                            load, running, capacity, time_scale (a call for proposals)
bid             agent->hub  seq, call, and duration_s, cost, load, note (a proposal)
                            or refuse (a refusal)
ballot          hub->agent  seq, ballot, decision, voter, question, options, voters,
                            quorum, deadline_s, context
vote            agent->hub  seq, ballot, and vote (an option) or abstain (a reason)
ack             both        seq (everything up to it is processed, durably)
spawn           agent->hub  seq, request, task_id, attempt, tasks (its own task
                            adds children; see docs/spawning.md)
wait_children   agent->hub  seq, request, task_id, attempt, ids (null: all it
                            spawned in this attempt)
reply           hub->agent  seq, request, ok, ids | children | error
heartbeat       both        running (agent->hub: the task ids it runs)
error           hub->agent  code, message, field, seq
==============  ==========  ===================================================
"""

from __future__ import annotations

import json
import math
from typing import Any

from counterpoint.errors import CounterpointError
from counterpoint.messaging.protocol import PROTOCOL_VERSION

MAX_MESSAGE_BYTES = 1024 * 1024
RESULT_STATUSES = ("completed", "failed", "rate_limited")
#: The fields of a proposal in a ``bid`` frame (a refusal has ``refuse`` alone).
BID_FIELDS = ("duration_s", "cost", "load", "note")

# Close codes (4000-4999 are the application's own).
CLOSE_GOING_AWAY = 1001
CLOSE_RUN_FINISHED = 4000
CLOSE_TOO_BIG = 1009
CLOSE_BAD_HELLO = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNKNOWN_AGENT = 4404
CLOSE_LOST = 4408
CLOSE_REPLACED = 4409
CLOSE_VIOLATIONS = 4429
#: The agent should not reconnect after these: something needs fixing first.
FATAL_CLOSE_CODES = frozenset(
    {CLOSE_BAD_HELLO, CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_UNKNOWN_AGENT, CLOSE_REPLACED}
)


class FrameError(CounterpointError, ValueError):
    """A frame that breaks the session protocol; ``code`` and ``field`` say how."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field

    def frame(self, seq: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "error", "code": self.code, "message": str(self)}
        if self.field is not None:
            out["field"] = self.field
        if seq is not None:
            out["seq"] = seq
        return out


def decode(text: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """The frame object in ``text``; FrameError for oversized, non-JSON or op-less frames."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8"))
    if size > max_bytes:
        raise FrameError(
            "too_large", f"the frame has {size} bytes; the limit is {max_bytes}", "frame"
        )
    try:
        frame = json.loads(text)
    except ValueError as exc:
        raise FrameError("invalid_json", f"the frame is not valid JSON: {exc}", "frame") from None
    except RecursionError:  # json.loads on deeply nested arrays or objects
        raise FrameError("invalid_json", "the frame's JSON is nested too deeply", "frame") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_frame", "a frame must be a JSON object", "frame")
    op = frame.get("op")
    if not isinstance(op, str):
        raise FrameError("invalid_frame", "the frame has no 'op' string", "op")
    return frame


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=str)


def need_int(frame: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = frame.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FrameError("invalid_frame", f"{key!r} must be an integer >= {minimum}", key)
    return value


def need_str(frame: dict[str, Any], key: str, max_len: int = 200) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise FrameError(
            "invalid_frame", f"{key!r} must be a non-empty string of at most {max_len}", key
        )
    return value


def check_hello(frame: dict[str, Any]) -> tuple[str, list[str], int, int]:
    """(session, capabilities, capacity, last_seq) of a hello frame."""
    if frame.get("op") != "hello":
        raise FrameError("bad_hello", "the first frame must be a hello", "op")
    version = frame.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise FrameError(
            "bad_hello", f"protocol version {version!r} is not supported (use 1.0)", "version"
        )
    session = need_str(frame, "session", 100)
    caps = frame.get("capabilities", [])
    if not isinstance(caps, list) or not all(isinstance(c, str) and c for c in caps):
        raise FrameError("bad_hello", "'capabilities' must be a list of names", "capabilities")
    capacity = need_int(frame, "capacity", 1) if "capacity" in frame else 1
    last_seq = need_int(frame, "last_seq") if "last_seq" in frame else 0
    return session, caps, capacity, last_seq


def check_child_request(frame: dict[str, Any]) -> tuple[str, str, int]:
    """(request, task_id, attempt) of a spawn or wait_children frame, its fields checked."""
    request = need_str(frame, "request", 100)
    task_id = need_str(frame, "task_id")
    attempt = need_int(frame, "attempt", 1)
    if frame["op"] == "spawn":
        tasks = frame.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise FrameError("invalid_frame", "'tasks' must be a list of task objects", "tasks")
    else:
        ids = frame.get("ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise FrameError("invalid_frame", "'ids' must be a list of task ids, or null", "ids")
    return request, task_id, attempt


def check_result(frame: dict[str, Any]) -> tuple[str, int, str]:
    """(task_id, attempt, status) of a result frame."""
    task_id = need_str(frame, "task_id")
    attempt = need_int(frame, "attempt", 1)
    status = frame.get("status")
    if status not in RESULT_STATUSES:
        raise FrameError(
            "invalid_frame", f"'status' must be one of {', '.join(RESULT_STATUSES)}", "status"
        )
    if not isinstance(frame.get("result", {}), dict):
        raise FrameError("invalid_frame", "'result' must be an object", "result")
    return task_id, attempt, status


def check_bid(frame: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(call, answer) of a bid frame: a proposal (``duration_s``, ``cost``, ``load`` numbers
    >= 0 and a ``note``, each optional) or a refusal (``refuse``, a reason)."""
    call = need_int(frame, "call", 1)
    answer = {k: v for k, v in frame.items() if k not in ("op", "seq", "call")}
    if "refuse" in answer:
        if not isinstance(answer["refuse"], str):
            raise FrameError("invalid_frame", "'refuse' must be a reason (a string)", "refuse")
        if len(answer) > 1:
            other = next(k for k in answer if k != "refuse")
            raise FrameError(
                "invalid_frame", f"a refusal has only 'refuse', not {other!r} too", other
            )
        return call, answer
    for key, value in answer.items():
        if key not in BID_FIELDS:
            raise FrameError(
                "invalid_frame",
                f"unknown field {key!r} in a bid (a proposal has {', '.join(BID_FIELDS)}; "
                "a refusal has refuse)",
                key,
            )
        if key == "note":
            if not isinstance(value, str):
                raise FrameError("invalid_frame", "'note' must be a string", key)
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise FrameError("invalid_frame", f"{key!r} must be a number >= 0", key)
    return call, answer


def check_vote(frame: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(ballot, answer) of a vote frame: ``vote`` (one of the ballot's options) or
    ``abstain`` (a reason)."""
    ballot = need_int(frame, "ballot", 1)
    extra = [k for k in frame if k not in ("op", "seq", "ballot", "vote", "abstain")]
    if extra:
        raise FrameError(
            "invalid_frame", f"unknown field {extra[0]!r} in a vote (vote or abstain)", extra[0]
        )
    if ("vote" in frame) == ("abstain" in frame):
        raise FrameError(
            "invalid_frame", "a vote frame needs exactly one of vote or abstain", "vote"
        )
    if "abstain" in frame:
        if not isinstance(frame["abstain"], str):
            raise FrameError("invalid_frame", "'abstain' must be a reason (a string)", "abstain")
        return ballot, {"abstain": frame["abstain"]}
    return ballot, {"vote": frame["vote"]}
