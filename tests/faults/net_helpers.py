"""Helpers of the network half of the fault suite (agent loss, fencing, WebSocket chaos,
retry properties, wire fuzzing).

Import what you need explicitly (``from net_helpers import ...``); nothing here is a
conftest fixture. The integration helpers (``tests/integration/run_helpers.py`` and the
``Proc`` of ``test_hub_run.py``) are reused, not copied.

Figures: :func:`figure` prints ``FIGURE name=value`` and records it in the suite's figures
file (``$COUNTERPOINT_FAULT_FIGURES``, through ``fault_helpers.figure``).
``COUNTERPOINT_FAULTS=full`` selects the full version of each scenario (:data:`FULL`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))

import fault_helpers  # noqa: E402
from run_helpers import PY, kill_quietly, one_phase, pid_alive, wait_for  # noqa: E402
from test_hub_run import WORK, Proc, _env  # noqa: E402

from counterpoint.net.tokens import TokenStore  # noqa: E402

FULL = fault_helpers.FULL
MODE = "full" if FULL else "short"

__all__ = [
    "FULL",
    "MODE",
    "PY",
    "Journal",
    "Served",
    "figure",
    "kill_quietly",
    "percentile",
    "pid_alive",
    "read_journal",
    "remote",
    "served_bench",
    "wait_for",
]


# -- figures ------------------------------------------------------------------------------


def figure(name: str, value: float | int, unit: str = "", **context: Any) -> None:
    """Print ``FIGURE name=value`` and record it in the suite's figures file.

    The file is the one the whole fault suite shares (``$COUNTERPOINT_FAULT_FIGURES``, a
    JSON object written by ``fault_helpers.figure``; the latest value of a name wins), so
    this writes through it rather than in a format of its own. ``unit`` and ``context``
    (bounds, targets) are printed on a ``FIGURE-CONTEXT`` line.
    """
    shown = round(value, 4) if isinstance(value, float) else value
    fault_helpers.figure(name, shown)
    if unit or context:
        extra = {"unit": unit, **context} if unit else context
        print(f"FIGURE-CONTEXT {name} {json.dumps(extra, default=str)}", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values`` (non-empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# -- the task command ---------------------------------------------------------------------


#: The program a remote agent runs for each task: ``WORK RECORDS TASK AGENT ATTEMPT``, the
#: payload on stdin. It appends ``start`` and ``end`` lines (JSON) to RECORDS and prints
#: its result (``task``, ``by``, ``attempt``) as its last stdout line. Inputs: ``sleeps``
#: (attempt number -> seconds), ``sleep`` (seconds, for attempts not in ``sleeps``).
def remote(*capabilities: str, capacity: int = 1) -> dict[str, Any]:
    return {"capabilities": list(capabilities), "capacity": capacity, "runner": {"remote": True}}


@dataclass
class Served:
    """A folder with a plan served by ``counterpoint run --serve`` and its remote agents
    (``counterpoint agent`` processes running tests/integration/agents/hub_work.py)."""

    dir: Path
    procs: list[Proc] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)  # pids we sent SIGSTOP
    programs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def plan(self) -> Path:
        return self.dir / "plan.yaml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def records_path(self) -> Path:
        return self.dir / "records.jsonl"

    def command(self) -> list[str]:
        return [PY, str(WORK), str(self.records_path), "{task_id}", "{agent}", "{attempt}"]

    def write_plan(self, tasks: list[dict[str, Any]], agents: dict[str, Any], **top: Any) -> None:
        self.plan.write_text(yaml.safe_dump(one_phase(tasks, agents=agents, **top)), "utf-8")

    def token(self, agent: str) -> str:
        return TokenStore(self.state).create(agent)

    def start(self, *args: str | Path, **env: str) -> Proc:
        proc = Proc(self.dir, args, _env(**env))
        self.procs.append(proc)
        return proc

    def start_program(self, argv: Sequence[str | Path]) -> subprocess.Popen[bytes]:
        """Any program in the background (killed at cleanup), output in a file."""
        out = open(self.dir / f"prog-{len(self.programs)}.out", "wb")  # noqa: SIM115
        with out:
            proc = subprocess.Popen(
                [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=_env()
            )
        self.programs.append(proc)
        return proc

    def serve_run(self) -> tuple[Proc, str]:
        run = self.start(
            "run", self.plan, "--state", self.state, "--serve", "--port", "0", "--json"
        )
        return run, str(run.wait_event("hub_listening", timeout=60)["url"])

    def agent(self, url: str, name: str, token: str, capabilities: str, *extra: str) -> Proc:
        args = ["agent", "--connect", url, "--id", name, "--capabilities", capabilities]
        args += ["--workdir", str(self.dir), "--state", str(self.dir / f"agent-{name}"), *extra]
        return self.start(*args, "--", *self.command(), COUNTERPOINT_TOKEN=token)

    def records(self) -> list[dict[str, Any]]:
        if not self.records_path.exists():
            return []
        found = []
        for line in self.records_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def started(self, attempt: int) -> dict[str, dict[str, Any]]:
        """Task -> its ``start`` record of ``attempt``."""
        return {
            r["task"]: r
            for r in self.records()
            if r["event"] == "start" and r["attempt"] == attempt
        }

    def sigstop(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)

    def sigcont(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.stopped.discard(pid)

    def cleanup(self) -> None:
        for pid in list(self.stopped):  # a stopped process cannot die of SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for proc in self.procs:
            proc.stop()
        for prog in self.programs:
            if prog.poll() is None:
                prog.kill()
                prog.wait()
        for r in self.records():  # task programs run in their own sessions
            with contextlib.suppress(OSError):
                if b"hub_work.py" in Path(f"/proc/{r['pid']}/cmdline").read_bytes():
                    kill_quietly(r["pid"])


@contextlib.contextmanager
def served_bench(tmp_path: Path) -> Iterator[Served]:
    bench = Served(tmp_path)
    try:
        yield bench
    finally:
        bench.cleanup()


# -- the journal, read-only ----------------------------------------------------------------


@dataclass
class Journal:
    """What ``state.db`` holds of the latest run (read with SQLite, read-only)."""

    tasks: dict[str, dict[str, Any]]  # task -> its row (result decoded)
    events: list[dict[str, Any]]  # seq, ts, kind, task, data (decoded)
    attempts: list[dict[str, Any]]  # task, attempt, agent, started, finished, status, error

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    def attempts_of(self, task: str) -> list[dict[str, Any]]:
        return [a for a in self.attempts if a["task"] == task]


def read_journal(state: Path) -> Journal:
    conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        run_id = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
        tasks = {}
        for row in conn.execute("SELECT * FROM tasks WHERE run_id = ?", (run_id,)):
            rec = dict(row)
            rec["result"] = json.loads(rec["result"]) if rec.get("result") else None
            tasks[rec["task"]] = rec
        events = [
            {**dict(row), "data": json.loads(row["data"]) if row["data"] else {}}
            for row in conn.execute(
                "SELECT seq, ts, kind, task, data FROM events WHERE run_id = ? ORDER BY seq",
                (run_id,),
            )
        ]
        attempts = [
            dict(row)
            for row in conn.execute(
                "SELECT task, attempt, agent, started, finished, status, error FROM attempts"
                " WHERE run_id = ? ORDER BY task, attempt",
                (run_id,),
            )
        ]
    finally:
        conn.close()
    return Journal(tasks, events, attempts)


def wait_until(probe: Any, timeout: float, what: str) -> Any:
    return wait_for(probe, timeout=timeout, interval=0.05, what=what)


def elapsed_since(t0: float) -> float:
    return time.time() - t0
