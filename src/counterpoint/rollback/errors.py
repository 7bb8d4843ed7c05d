"""The errors of versioned configuration and deployments: one base, standard bases where they fit.

Each is a :class:`~counterpoint.errors.CounterpointError`; the command line turns
them into an ``error:`` line and exit code 2 (invalid input or a refused request).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from counterpoint.errors import CounterpointError


class RollbackError(CounterpointError):
    """Base of the errors of :mod:`counterpoint.rollback`."""


class UnknownSubject(RollbackError, LookupError):
    """A scope, version or deployment that is not in the state directory."""

    @classmethod
    def of(cls, what: str, name: object, known: Iterable[object] = ()) -> UnknownSubject:
        """``no WHAT 'NAME' (WHATs: ...); did you mean ...?``"""
        names = [str(k) for k in known]
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return cls(f"no {what} {name!r} ({what}s: {listed(names)}){hint}")


def listed(names: Sequence[object], limit: int = 12) -> str:
    """``a, b, c`` (at most ``limit``, then ``...``), or ``none yet``."""
    text = ", ".join(str(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")
    return text or "none yet"


class ChecksumError(RollbackError, ValueError):
    """Stored data whose sha256 no longer matches the checksum recorded with it."""


class Refused(RollbackError, ValueError):
    """A request that cannot be carried out as asked (nothing to roll back to, a bad option)."""


class Busy(RollbackError):
    """Another process is changing the same scope or deployment."""


__all__ = ["Busy", "ChecksumError", "Refused", "RollbackError", "UnknownSubject"]
