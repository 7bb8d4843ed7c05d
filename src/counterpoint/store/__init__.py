"""The durable journal of runs: task states, attempts, events and operator commands."""

from counterpoint.store.sqlite import (
    DB_NAME,
    RunRecord,
    SqliteStore,
    StateDirError,
    TaskRecord,
)

__all__ = ["DB_NAME", "RunRecord", "SqliteStore", "StateDirError", "TaskRecord"]
