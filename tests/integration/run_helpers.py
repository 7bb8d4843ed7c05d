"""Shared helpers for the run-engine integration tests (tests/integration/test_run_*.py).

A :class:`Workspace` is a temporary folder holding a plan, a private copy of the
recording agent (``agents/recording.py``) under a unique module name, the state
directory and the record file the agent writes. Tests assert from those records
(what the agents really did), not from the engine's own counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from counterpoint.runtime.events import RunEvent, RunObserver
from counterpoint.runtime.orchestrator import RunOptions
from counterpoint.runtime.session import resume_run, start_run

ROOT = Path(__file__).resolve().parents[2]
AGENTS_DIR = Path(__file__).resolve().parent / "agents"
EXAMPLE = ROOT / "examples" / "cloud-migration" / "plan.yaml"
PY = sys.executable
RECORDS = "records.jsonl"

T = TypeVar("T")


# -- waiting ----------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], T], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


# -- the command line ---------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COUNTERPOINT_STATE", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def cli(*args: str | Path, cwd: Path | None = None, timeout: float = 60) -> Result:
    """Run ``python -m counterpoint ARGS`` to the end, as a user would."""
    proc = subprocess.run(
        [PY, "-m", "counterpoint", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
        env=_env(),
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


class Background:
    """``python -m counterpoint ARGS`` running in the background, output kept in files."""

    def __init__(self, folder: Path, *args: str | Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.out_path = folder / f"bg-{tag}.out"
        self.err_path = folder / f"bg-{tag}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "counterpoint", *map(str, args)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=_env(),
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 30) -> Result:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout}s:\n{self.result(-9)}") from None
        return self.result(code)

    def result(self, code: int) -> Result:
        return Result(
            code,
            self.out_path.read_text(errors="replace"),
            self.err_path.read_text(errors="replace"),
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def status_json(state: Path) -> dict[str, Any]:
    result = cli("status", "--json", "--state", state)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# -- plans and records ----------------------------------------------------------------------


@dataclass
class Execution:
    """One attempt of a task as the agent recorded it."""

    task: str
    attempt: int
    agent: str | None
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None  # end | fail | rate_limited | cancelled; None: never finished
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workspace:
    """A folder with a plan, its own copy of the recording agent, a state dir and records."""

    dir: Path
    module: str

    @classmethod
    def create(cls, tmp_path: Path) -> Workspace:
        module = f"agents_{uuid.uuid4().hex[:12]}"
        shutil.copy(AGENTS_DIR / "recording.py", tmp_path / f"{module}.py")
        return cls(tmp_path, module)

    @property
    def agent(self) -> str:
        """The runner target of the recording agent: ``module:work``."""
        return f"{self.module}:work"

    @property
    def plan(self) -> Path:
        return self.dir / "plan.yaml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def records_path(self) -> Path:
        return self.dir / RECORDS

    def write_plan(self, plan: dict[str, Any] | str) -> Path:
        """Write ``plan`` (a dict, or YAML text where ``AGENT`` names the recording agent)."""
        if isinstance(plan, str):
            text = plan.replace("AGENT", self.agent)
        else:
            text = yaml.safe_dump(plan, sort_keys=False)
        self.plan.write_text(text, encoding="utf-8")
        return self.plan

    def records(self) -> list[dict[str, Any]]:
        if not self.records_path.exists():
            return []
        found = []
        for line in self.records_path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:  # a line cut short by a killed process
                continue
        return found

    def executions(self) -> list[Execution]:
        """Every recorded attempt, in start order."""
        by_key: dict[tuple[str, int, int], Execution] = {}
        order: list[Execution] = []
        for r in self.records():
            key = (r["task"], r["attempt"], r["pid"])
            if r["event"] == "start":
                ex = Execution(r["task"], r["attempt"], r["agent"], r["pid"], r["t"])
                by_key[key] = ex
                order.append(ex)
            elif key in by_key:
                ex = by_key[key]
                ex.end, ex.outcome = r["t"], r["event"]
        return order

    def runs_of(self, task: str) -> list[Execution]:
        return [e for e in self.executions() if e.task == task]

    def finished(self) -> dict[str, Execution]:
        """The successful execution of each task that has one."""
        return {e.task: e for e in self.executions() if e.outcome == "end"}


def agent_spec(
    ws: Workspace, capabilities: Sequence[str] = (), capacity: int = 1
) -> dict[str, Any]:
    return {
        "capabilities": list(capabilities),
        "capacity": capacity,
        "runner": {"python": ws.agent},
    }


def task(tid: str, *, sleep: float | None = None, **fields: Any) -> dict[str, Any]:
    """A task dict; ``sleep`` (real seconds) and the other agent inputs go into ``inputs``."""
    inputs = dict(fields.pop("inputs", {}))
    if sleep is not None:
        inputs["sleep"] = sleep
    out: dict[str, Any] = {"id": tid, **fields}
    if inputs:
        out["inputs"] = inputs
    return out


def one_phase(tasks: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    """A plan with one phase and one milestone holding ``tasks``; ``top`` adds top-level keys."""
    return plan(
        [{"id": "p1", "milestones": [{"id": "m1", "tasks": tasks}]}],
        **top,
    )


def plan(phases: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"version": 1, "name": "test-plan"}
    out.update(top)
    out["phases"] = phases
    out.setdefault("defaults", {"retries": 0, "timeout": "60s", "estimate": "1s"})
    return out


# -- in-process runs --------------------------------------------------------------------------


class Collect(RunObserver):
    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def on_event(self, event: RunEvent) -> None:
        self.events.append(event)

    def kinds(self, kind: str) -> list[RunEvent]:
        return [e for e in self.events if e.kind == kind]


def quick_options(**kw: Any) -> RunOptions:
    kw.setdefault("poll_s", 0.05)
    kw.setdefault("kill_grace_s", 1.0)
    return RunOptions(**kw)


def run_in_process(ws: Workspace, **options: Any) -> tuple[int, Collect]:
    """Run the workspace's plan with the library (``start_run``); returns (exit code, events)."""
    seen = Collect()
    code = start_run(ws.plan, ws.state, quick_options(**options), [seen], sync="normal")
    return code, seen


def resume_in_process(ws: Workspace, **options: Any) -> tuple[int, Collect]:
    seen = Collect()
    code = resume_run(ws.state, quick_options(**options), [seen], sync="normal")
    return code, seen


# -- interval arithmetic ----------------------------------------------------------------------


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    points: list[tuple[float, int]] = []
    for start, end in intervals:
        points.append((start, 1))
        points.append((end, -1))
    points.sort(key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


def spans(executions: Iterable[Execution]) -> list[tuple[float, float]]:
    out = []
    for e in executions:
        assert e.end is not None, f"{e.task} attempt {e.attempt} never finished"
        out.append((e.start, e.end))
    return out


# -- served runs and the journal ------------------------------------------------------------


def served(ws: Workspace, operator: str = "ops") -> tuple[Background, str, str]:
    """``counterpoint run --serve --port 0 --json`` in the background: (the run, its HTTP
    base address, an operator token)."""
    made = cli("token", "create", operator, "--operator", "--state", ws.state)
    assert made.code == 0, str(made)
    run = Background(
        ws.dir, "run", ws.plan, "--state", ws.state, "--serve", "--port", "0", "--json"
    )

    def url() -> str | None:
        for line in run.out_path.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "hub_listening":
                return str(event["url"]).replace("ws://", "http://")
        return None

    try:
        base = wait_for(url, what="the hub to listen")
    except AssertionError:
        run.stop()
        raise
    return run, base, made.stdout.strip()


def journal(ws: Workspace, kind: str, run_id: int = 1) -> list[dict[str, Any]]:
    """The data of the journal's events of ``kind`` (empty before the journal exists)."""
    from counterpoint.store.sqlite import SqliteStore

    if not (ws.state / "state.db").exists():
        return []
    store = SqliteStore(ws.state, create=False)
    try:
        return store.events_of_kind(run_id, kind)
    finally:
        store.close()
