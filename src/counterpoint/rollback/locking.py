"""One process at a time changes a configuration scope or a deployment.

The lock is an exclusive ``flock`` on a small file under ``STATE_DIR/locks/``
holding the owner's pid. The kernel releases it when its owner ends, however it
ends, so a lock that can be taken again means its last owner is gone: a
validation or a rollback it left half done is then picked up safely.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from counterpoint.rollback.errors import Busy
from counterpoint.store.sqlite import StateDirError

LOCKS_DIR = "locks"


def _path(state_dir: Path, kind: str, subject: str) -> Path:
    digest = hashlib.sha256(subject.encode()).hexdigest()[:16]
    return state_dir / LOCKS_DIR / f"{kind}-{digest}.lock"


def _open(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except OSError as exc:
        raise StateDirError(f"cannot create the lock {path}: {exc.strerror or exc}") from None


def _take(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return True


@contextmanager
def held(state_dir: Path, kind: str, subject: str, doing: str) -> Iterator[None]:
    """Hold the lock of ``kind`` ``subject``, or raise :class:`Busy` naming its holder."""
    with _open(_path(state_dir, kind, subject)) as handle:
        if not _take(handle):
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise Busy(f"{subject}: another process (pid {pid}) is {doing}; try again when it ends")
        yield


@contextmanager
def attempt(state_dir: Path, kind: str, subject: str) -> Iterator[bool]:
    """Take the lock if it is free; yields whether it was taken (it never waits)."""
    with _open(_path(state_dir, kind, subject)) as handle:
        yield _take(handle)


__all__ = ["LOCKS_DIR", "attempt", "held"]
