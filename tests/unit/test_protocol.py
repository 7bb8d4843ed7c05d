"""The message protocol: the seed's envelope, and each type's required fields."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import jsonschema
import pytest

from counterpoint.messaging.protocol import (
    REQUIRED,
    MessageError,
    MessageType,
    Status,
    message_json_schema,
    parse_message,
    status_update,
)

STAMP = "2026-01-30T09:00:00Z"

VALID: dict[str, dict[str, Any]] = {
    "status_update": {
        "timestamp": STAMP,
        "content": {"task_id": "iam-roles", "status": "in_progress", "progress": 40},
    },
    "request": {
        "priority": "high",
        "content": {"task_id": "iam-roles", "request_type": "resource", "data": {"want": "vpc"}},
    },
    "response": {
        "content": {"request_id": str(uuid.uuid4()), "status": "completed", "data": {}},
    },
    "notification": {
        "timestamp": STAMP,
        "content": {"event_type": "agent_lost", "severity": "warning", "data": {"agent": "a"}},
    },
}


def message(kind: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": str(uuid.uuid4()),
        "sender": "security",
        "recipient": "orchestrator",
        "type": kind,
        **json.loads(json.dumps(VALID[kind])),
    }
    body.update(changes)
    return body


def drop(body: dict[str, Any], dotted: str) -> dict[str, Any]:
    target = body
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target[part]
    target.pop(leaf, None)
    return body


@pytest.mark.parametrize("kind", list(VALID))
def test_a_well_formed_message_of_each_type_is_accepted(kind: str) -> None:
    parsed = parse_message(message(kind))
    assert parsed.type.value == kind
    assert parsed.content.metadata.version == "1.0"


@pytest.mark.parametrize(
    ("kind", "field"), [(k.value, f) for k, fields in REQUIRED.items() for f in fields]
)
def test_each_required_field_is_enforced_and_named(kind: str, field: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(drop(message(kind), field))
    assert field in str(caught.value)
    assert any(name == field for name, _ in caught.value.problems)


def test_an_unknown_field_is_rejected_by_name() -> None:
    body = message("status_update")
    body["content"]["progres"] = 10
    with pytest.raises(MessageError) as caught:
        parse_message(body)
    assert ("content.progres", "unknown field") in caught.value.problems


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "gossip"}, "type"),
        ({"priority": "urgent"}, "priority"),
        ({"message_id": "not-a-uuid"}, "message_id"),
        ({"timestamp": "2026-01-30T09:00:00"}, "timestamp"),
        ({"recipient": ""}, "recipient"),
    ],
)
def test_bad_values_are_rejected_with_the_field_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(message("status_update", **change))
    assert field in [name for name, _ in caught.value.problems]


def test_progress_must_be_a_percentage() -> None:
    body = message("status_update")
    body["content"]["progress"] = 140
    with pytest.raises(MessageError) as caught:
        parse_message(body)
    assert caught.value.problems[0][0] == "content.progress"


def test_json_text_is_parsed_and_invalid_json_is_a_message_error() -> None:
    assert parse_message(json.dumps(message("request"))).priority == "high"
    with pytest.raises(MessageError, match="invalid JSON"):
        parse_message('{"sender": ')


def test_timestamps_are_kept_in_utc_and_serialised_as_iso_8601() -> None:
    parsed = parse_message(message("status_update", timestamp="2026-01-30T11:00:00+02:00"))
    assert parsed.to_json()["timestamp"] == "2026-01-30T09:00:00Z"


def test_a_built_status_update_round_trips_through_the_schema() -> None:
    built = status_update("security", "iam-roles", Status.COMPLETED, 100, note="done")
    again = parse_message(built.to_json())
    assert again == built
    assert again.type is MessageType.STATUS_UPDATE


def test_the_json_schema_accepts_valid_messages_and_enforces_required_fields() -> None:
    schema = message_json_schema()
    for kind in VALID:
        jsonschema.validate(message(kind), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(drop(message("notification"), "content.severity"), schema)


def test_schema_messages_prints_the_message_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "counterpoint", "schema", "--messages"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["$id"] == "urn:counterpoint:message:v1"
