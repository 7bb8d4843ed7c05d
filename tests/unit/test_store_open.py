"""Opening the journal: processes that open a new state directory at the same moment
(a run creating it while ``status`` or a test reads it) all get in."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from counterpoint.store.sqlite import SqliteStore

OPENERS = 4
ROUNDS = 25


def _open(folder: str, barrier: Barrier, errors: Queue[str]) -> None:
    barrier.wait()
    try:
        store = SqliteStore(Path(folder))
        store.latest_run()
        store.close()
    except Exception as exc:
        errors.put(f"{type(exc).__name__}: {exc}")
    else:
        errors.put("")


def test_processes_opening_a_new_journal_together_all_succeed(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    failures: list[str] = []
    for i in range(ROUNDS):
        folder = tmp_path / f"state-{i}"
        barrier, errors = ctx.Barrier(OPENERS), ctx.Queue()
        procs = [
            ctx.Process(target=_open, args=(str(folder), barrier, errors)) for _ in range(OPENERS)
        ]
        for p in procs:
            p.start()
        outcomes = [errors.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        failures += [o for o in outcomes if o]
        assert (folder / "state.db").exists()
    assert failures == []
