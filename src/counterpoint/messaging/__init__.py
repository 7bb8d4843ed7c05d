"""The message protocol agents and the orchestrator speak (seed section 3)."""

from counterpoint.messaging.protocol import (
    PROTOCOL_VERSION,
    Content,
    Message,
    MessageError,
    Metadata,
    message_json_schema,
    parse_message,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Content",
    "Message",
    "MessageError",
    "Metadata",
    "message_json_schema",
    "parse_message",
]
