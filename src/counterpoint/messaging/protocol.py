"""The standard message (seed section 3.1) and the fields each message type must carry.

Every message between agents and the orchestrator has the same envelope:
``message_id`` (a UUID), ``sender``, ``recipient`` (an agent id, a group name,
or ``*`` for everyone), ``type``, ``timestamp`` (ISO 8601, UTC), ``priority``
and ``content`` (``task_id``, ``status``, ``progress``, ``data`` and
``metadata`` with ``version`` and ``correlation_id``). Each type requires more:

=============== ===========================================================
status_update   content.task_id, content.status, content.progress, timestamp
request         content.task_id, content.request_type, content.data, priority
response        content.request_id, content.status, content.data
notification    content.event_type, content.severity, content.data, timestamp
=============== ===========================================================

A message that breaks the schema is rejected with an error naming the field.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from counterpoint.errors import CounterpointError

PROTOCOL_VERSION = "1.0"


class MessageType(StrEnum):
    STATUS_UPDATE = "status_update"
    REQUEST = "request"
    RESPONSE = "response"
    NOTIFICATION = "notification"


class Status(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    BLOCKED = "blocked"


Priority = Literal["critical", "high", "medium", "low"]
Severity = Literal["critical", "error", "warning", "info"]

REQUIRED: dict[MessageType, tuple[str, ...]] = {
    MessageType.STATUS_UPDATE: (
        "content.task_id",
        "content.status",
        "content.progress",
        "timestamp",
    ),
    MessageType.REQUEST: ("content.task_id", "content.request_type", "content.data", "priority"),
    MessageType.RESPONSE: ("content.request_id", "content.status", "content.data"),
    MessageType.NOTIFICATION: (
        "content.event_type",
        "content.severity",
        "content.data",
        "timestamp",
    ),
}


class MessageError(CounterpointError, ValueError):
    """A message that breaks the protocol; ``problems`` lists ``(field, reason)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Strict):
    version: Literal["1.0"] = "1.0"
    correlation_id: str | None = None


class Content(_Strict):
    task_id: str | None = Field(default=None, min_length=1)
    status: Status | None = None
    progress: float | None = Field(default=None, ge=0, le=100)
    data: dict[str, Any] | None = None
    metadata: Metadata = Field(default_factory=Metadata)
    request_type: str | None = Field(default=None, min_length=1)
    request_id: uuid.UUID | None = None
    event_type: str | None = Field(default=None, min_length=1)
    severity: Severity | None = None


class Message(_Strict):
    """One protocol message; build it with :func:`parse_message` or the constructors."""

    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    sender: str = Field(min_length=1)
    recipient: str = Field(min_length=1, description="an agent id, a group name, or * for all")
    type: MessageType
    timestamp: datetime | None = None
    priority: Priority | None = None
    content: Content = Field(default_factory=Content)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("the timestamp needs a time zone (UTC, e.g. 2026-01-30T09:00:00Z)")
        return value.astimezone(UTC) if value is not None else None

    def missing(self) -> list[str]:
        """The fields this message's type requires that it does not carry."""
        content = self.content
        return [
            name
            for name, inner, field in _REQUIRED_PATHS[self.type]
            if getattr(content if inner else self, field) is None
        ]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def correlation_id(self) -> str | None:
        return self.content.metadata.correlation_id


#: Per type: (dotted name, is it in content, attribute), split once.
_REQUIRED_PATHS = {
    kind: [(f, f.startswith("content."), f.rsplit(".", 1)[-1]) for f in fields]
    for kind, fields in REQUIRED.items()
}


def parse_message(raw: Any) -> Message:
    """Validate ``raw`` (a dict, or JSON text) as a message; raises :class:`MessageError`."""
    try:
        message = (
            Message.model_validate_json(raw)
            if isinstance(raw, str | bytes)
            else Message.model_validate(raw)
        )
    except ValidationError as exc:
        raise MessageError([_describe(err) for err in exc.errors(include_url=False)]) from None
    missing = message.missing()
    if missing:
        raise MessageError([(f, f"required for a {message.type.value} message") for f in missing])
    return message


def _describe(err: Any) -> tuple[str, str]:
    field = ".".join(str(p) for p in err["loc"]) or "message"
    if err["type"] == "extra_forbidden":
        return field, "unknown field"
    if err["type"] == "missing":
        return field, "missing"
    if err["type"] == "json_invalid":
        return "message", f"invalid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
    return field, err["msg"].removeprefix("Value error, ")


def now() -> datetime:
    return datetime.now(UTC)


def status_update(
    sender: str, task_id: str, status: Status, progress: float, **data: Any
) -> Message:
    """A status update from ``sender`` about ``task_id`` to the orchestrator."""
    return Message(
        sender=sender,
        recipient="orchestrator",
        type=MessageType.STATUS_UPDATE,
        timestamp=now(),
        content=Content(task_id=task_id, status=status, progress=progress, data=data),
    )


def message_json_schema() -> dict[str, Any]:
    """The JSON Schema of a message, with each type's required fields as conditionals."""
    schema = Message.model_json_schema(mode="validation")
    schema["allOf"] = [_required_for(kind) for kind in MessageType]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:counterpoint:message:v1",
        **schema,
        "title": "counterpoint message (protocol version 1.0)",
    }


def _required_for(kind: MessageType) -> dict[str, Any]:
    top = [f for f in REQUIRED[kind] if "." not in f]
    inner = [f.split(".", 1)[1] for f in REQUIRED[kind] if f.startswith("content.")]
    return {
        "if": {"properties": {"type": {"const": kind.value}}, "required": ["type"]},
        "then": {
            "required": [*top, "content"],
            "properties": {"content": {"required": inner}},
        },
    }
