"""A stored configuration version, a scope's policy, and the notice of an automatic rollback."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from counterpoint.durations import format_duration
from counterpoint.rollback.errors import ChecksumError
from counterpoint.rollback.validation import Validation
from counterpoint.rollback.values import checksum

DEFAULT_KEEP = 10
PENDING, VALID, FAILED, ROLLED_BACK = "pending", "valid", "failed", "rolled_back"


@dataclass(frozen=True)
class Policy:
    """A scope's settings: how many versions are kept, how new ones are validated, and who
    is told of an automatic rollback (webhook URLs and command lines)."""

    keep: int = DEFAULT_KEEP
    validation: Validation | None = None
    webhooks: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def describe(self) -> str:
        check = self.validation
        how = (
            "no validation"
            if check is None
            else f"validated by {check.describe()} (timeout {format_duration(check.timeout_s)},"
            f" asked every {format_duration(check.interval_s)})"
        )
        told = [*self.webhooks, *self.commands]
        notified = f"; rollbacks notified to {', '.join(told)}" if told else ""
        return f"keeps the last {self.keep} versions; {how}{notified}"


@dataclass(frozen=True)
class ConfigVersion:
    """One stored version; ``intact`` is False when its data no longer matches its checksum."""

    scope: str
    version: int
    text: str
    checksum: str
    author: str
    created: float
    parent: int | None
    status: str
    detail: str
    deadline: float | None
    validated: float | None
    current: bool = False

    @property
    def intact(self) -> bool:
        return checksum(self.text) == self.checksum

    @property
    def data(self) -> dict[str, Any]:
        """The configuration, after its checksum is verified."""
        self.verify()
        value: dict[str, Any] = json.loads(self.text)
        return value

    def verify(self) -> None:
        if not self.intact:
            raise ChecksumError(
                f"version {self.version} of {self.scope} fails its checksum: its data was "
                f"changed outside counterpoint (recorded sha256 {self.checksum[:12]}…, data "
                f"has {checksum(self.text)[:12]}…); it is refused"
            )

    def payload(self) -> dict[str, Any]:
        """The JSON object a validator gets."""
        return {
            "scope": self.scope,
            "version": self.version,
            "checksum": self.checksum,
            "author": self.author,
            "data": self.data,
        }

    def to_json(self) -> dict[str, Any]:
        intact = self.intact
        return {
            "scope": self.scope,
            "version": self.version,
            "current": self.current,
            "status": self.status,
            "checksum": self.checksum,
            "intact": intact,
            "author": self.author,
            "created": self.created,
            "parent": self.parent,
            "validated": self.validated,
            "detail": self.detail,
            "data": json.loads(self.text) if intact else None,
        }


@dataclass(frozen=True)
class SetResult:
    """What :meth:`ConfigHistory.set` did: the version as it ended, and any rollback."""

    version: ConfigVersion
    changed: bool = True
    rolled_back_to: int | None = None

    @property
    def ok(self) -> bool:
        return self.version.status != FAILED


def version_of(row: tuple[Any, ...], current: int | None) -> ConfigVersion:
    scope, version, text, digest, author, created, parent, status, detail, deadline, checked = row
    return ConfigVersion(
        scope,
        version,
        text,
        digest,
        author,
        created,
        parent,
        status,
        detail,
        deadline,
        checked,
        current=version == current,
    )


def notice_text(failing: ConfigVersion, reason: str, to: int | None, skipped: list[int]) -> str:
    where = f"rolled back to version {to}" if to is not None else "no earlier version validated"
    note = f" (skipped tampered version(s) {', '.join(map(str, skipped))})" if skipped else ""
    return (
        f"configuration {failing.scope} version {failing.version} failed validation ({reason}); "
        f"{where}{note}"
    )


def notice(
    failing: ConfigVersion, reason: str, to: int | None, text: str, now: float
) -> dict[str, Any]:
    return {
        "type": "config_rollback",
        "event": "config_rolled_back",
        "notice_id": f"config-{failing.scope}-{failing.version}",
        "subject": f"config:{failing.scope}",
        "scope": failing.scope,
        "version": failing.version,
        "checksum": failing.checksum,
        "rolled_back_to": to,
        "reason": reason,
        "ts": now,
        "text": f"[counterpoint] {text}",
    }


__all__ = [
    "DEFAULT_KEEP",
    "ConfigVersion",
    "Policy",
    "SetResult",
    "notice",
    "notice_text",
    "version_of",
]
