"""Sending a rollback notice to a webhook or a command, through the escalation notifiers.

The notice goes out exactly as escalation ladders send theirs
(:meth:`counterpoint.runtime.escalation.Escalator.tell`): a webhook gets an HTTP
POST of the JSON notice, retried with backoff; a command reads it on stdin. The
outcome of each try is handed to ``record`` (``escalation_notified`` or
``notify_failed`` with its details); a notification never raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from counterpoint.plan.model import Contact, Escalation, EscalationLevel, Notifier
from counterpoint.runtime.escalation import Escalator, NotifyPolicy
from counterpoint.store.sqlite import SqliteStore

log = logging.getLogger("counterpoint.rollback")

#: Tighter than a run's: a command line waits for it before it exits.
POLICY = NotifyPolicy(
    attempts=3, backoff_s=0.5, backoff_max_s=2.0, webhook_timeout_s=5.0, command_timeout_s=10.0
)
DRAIN_S = 30.0
_CONTACT = "operator"

Record = Callable[[str, dict[str, Any]], None]


def notifiers(webhooks: Sequence[str] = (), commands: Sequence[str] = ()) -> list[Notifier]:
    """Notifiers for webhook URLs and command lines (ValueError for a URL that is not http(s))."""
    return [Notifier(webhook=url) for url in webhooks] + [
        Notifier(command=command) for command in commands
    ]


def send(
    store: SqliteStore,
    notice: dict[str, Any],
    targets: Sequence[Notifier],
    *,
    record: Record,
    policy: NotifyPolicy = POLICY,
) -> None:
    """Send ``notice`` (it needs ``notice_id``, ``event``, ``subject`` and ``text``) and wait."""
    if not targets:
        return
    spec = Escalation(
        levels=[EscalationLevel(name=_CONTACT, contacts=[_CONTACT])],
        contacts={_CONTACT: Contact(notify=list(targets))},
    )

    def emit(kind: str, _task: object = None, **data: Any) -> None:
        record(kind, data)

    async def deliver() -> None:
        escalator = Escalator(spec, store, 0, emit=emit, policy=policy)
        escalator.tell(
            [_CONTACT], event=str(notice["event"]), subject=str(notice["subject"]), body=notice
        )
        await escalator.drain(DRAIN_S)

    try:
        asyncio.run(deliver())
    except Exception:  # a notification never breaks what it reports on
        log.exception("could not send the notice %s", notice.get("notice_id"))


__all__ = ["POLICY", "notifiers", "send"]
