"""Rollback (seed section 7): versioned configuration and deployment rollbacks.

* :class:`ConfigHistory` keeps every version of each scope's configuration with
  its sha256, author and time, validates new versions and rolls a failing one back
  automatically to the last version that validated.
* :class:`Deployments` records deployments with their type and hooks and rolls
  the latest one back by its strategy (blue-green, canary, rolling, full), step
  by step, resuming a rollback that was cut short.

Both live in the state directory's journal (``state.db``), beside the runs but
tied to none. See docs/rollback.md.
"""

from __future__ import annotations

from typing import Any

from counterpoint.rollback import config as _config
from counterpoint.rollback import deploy as _deploy
from counterpoint.rollback.config import ConfigHistory
from counterpoint.rollback.deploy import Deployment, Deployments, RollbackResult, StepRecord
from counterpoint.rollback.errors import (
    Busy,
    ChecksumError,
    Refused,
    RollbackError,
    UnknownSubject,
)
from counterpoint.rollback.hooks import Hook
from counterpoint.rollback.runbook_journal import runbook_outcomes
from counterpoint.rollback.strategies import Rollout, rollout
from counterpoint.rollback.validation import Validation
from counterpoint.rollback.versions import ConfigVersion, Policy, SetResult
from counterpoint.store.sqlite import SqliteStore


def rollback_outcomes(store: SqliteStore) -> list[dict[str, Any]]:
    """Configuration and deployment rollbacks and runbook executions together, oldest first
    (see each module's)."""
    found = _config.rollback_outcomes(store) + _deploy.rollback_outcomes(store)
    found += runbook_outcomes(store)
    return sorted(found, key=lambda o: o["started"] or 0.0)


__all__ = [
    "Busy",
    "ChecksumError",
    "ConfigHistory",
    "ConfigVersion",
    "Deployment",
    "Deployments",
    "Hook",
    "Policy",
    "Refused",
    "RollbackError",
    "RollbackResult",
    "Rollout",
    "SetResult",
    "StepRecord",
    "UnknownSubject",
    "Validation",
    "rollback_outcomes",
    "rollout",
    "runbook_outcomes",
]
