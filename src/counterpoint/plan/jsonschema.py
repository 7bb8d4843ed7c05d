"""The JSON Schema of plan files, generated from the pydantic model."""

from __future__ import annotations

from typing import Any

from counterpoint.plan.model import Plan

SCHEMA_ID = "urn:counterpoint:plan:v1"


def plan_json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) that editors can use to validate and complete plans."""
    schema = Plan.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "counterpoint plan (format version 1)",
    }
