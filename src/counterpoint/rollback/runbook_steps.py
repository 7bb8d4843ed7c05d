"""Running one runbook step: a command, a check, or reading where an approval stands.

Commands (a ``command`` step, or a ``check`` of kind command) run without a shell,
in the runbook's folder, in a process group of their own, with the step's context
as JSON on stdin and in ``COUNTERPOINT_RUNBOOK*`` variables; their standard output
and error are kept together. Past the time limit the group gets SIGTERM, then
SIGKILL. ``file`` and ``python`` checks and approvals are evaluated by the gate
machinery (:class:`~counterpoint.runtime.gates.GateChecker`), so they mean exactly
what they mean in a gate.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from counterpoint.durations import format_duration
from counterpoint.plan.model import (
    ApprovalCondition,
    CommandCondition,
    Gate,
    RunbookApprovalStep,
    RunbookCheckStep,
    RunbookManualStep,
)
from counterpoint.processes import signal_group, stop_group
from counterpoint.rollback.runbook_journal import OUTPUT_CHARS
from counterpoint.runtime.gates import (
    COMMAND_TIMEOUT_S,
    Approval,
    ConditionResult,
    GateChecker,
)

KILL_GRACE_S = 2.0
DETAIL_CHARS = 500
OVERRIDE = "--approve-as "  # how the gate machinery recognises an operator override


@dataclass(frozen=True)
class StepOutcome:
    """How a step (one attempt of it) ended: ``detail`` says why, ``output`` what it printed."""

    ok: bool
    detail: str
    output: str = ""
    decided_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepContext:
    """What a step's command or check is told about where it runs."""

    runbook: str
    execution: int
    step: str
    attempt: int
    folder: Path
    state_dir: Path

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt of the step in this execution."""
        return f"runbook:{self.runbook}:{self.execution}:{self.step}"

    @property
    def gate_id(self) -> str:
        """The ``gate`` a python check's context carries."""
        return f"runbook:{self.runbook}/{self.step}.check"

    def environ(self) -> dict[str, str]:
        return {
            "COUNTERPOINT_RUNBOOK": self.runbook,
            "COUNTERPOINT_RUNBOOK_EXECUTION": str(self.execution),
            "COUNTERPOINT_RUNBOOK_STEP": self.step,
            "COUNTERPOINT_RUNBOOK_ATTEMPT": str(self.attempt),
            "COUNTERPOINT_IDEMPOTENCY_KEY": self.idempotency_key,
            "COUNTERPOINT_STATE_DIR": str(self.state_dir.resolve()),
        }

    def payload(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "execution": self.execution,
            "step": self.step,
            "attempt": self.attempt,
            "idempotency_key": self.idempotency_key,
            "state_dir": str(self.state_dir.resolve()),
        }


def argv_of(command: str | Sequence[str]) -> list[str]:
    """A command as its argv: a string is split like a shell would (nothing expanded)."""
    return shlex.split(command) if isinstance(command, str) else list(command)


async def run_command(
    argv: list[str],
    ctx: StepContext,
    *,
    timeout_s: float,
    env: dict[str, str] | None = None,
    on_start: Callable[[int], None] = lambda pid: None,
) -> StepOutcome:
    """Run ``argv`` to the end (or its time limit); exit 0 is success."""
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as output:
        stdin.write(json.dumps(ctx.payload()).encode())
        stdin.seek(0)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                cwd=ctx.folder,
                env={**os.environ, **ctx.environ(), **(env or {})},
                start_new_session=True,
            )
        except OSError as exc:
            return StepOutcome(False, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        on_start(proc.pid)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            await stop_group(proc, KILL_GRACE_S)
            limit = format_duration(timeout_s)
            return StepOutcome(False, f"no answer within {limit}: stopped", _read(output))
        except asyncio.CancelledError:
            await stop_group(proc, KILL_GRACE_S)
            raise
        text = _read(output)
    if code == 0:
        return StepOutcome(True, "exit 0", text)
    why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    last = _last_lines(text)
    return StepOutcome(False, f"{why}: {last}" if last else why, text)


async def run_check(step: RunbookCheckStep, ctx: StepContext) -> StepOutcome:
    """A check: a command like a command step, a file or python condition like a gate's."""
    cond = step.check
    if isinstance(cond, CommandCondition):
        limit = step.timeout or cond.timeout or COMMAND_TIMEOUT_S
        result = await run_command(argv_of(cond.run), ctx, timeout_s=limit)
        return result
    if step.timeout is not None:
        cond = cond.model_copy(update={"timeout": step.timeout})
    report = await GateChecker(ctx.folder).evaluate(
        ctx.gate_id,
        "",
        Gate(conditions=[cond]),
        {},
        [],
        run_id=str(ctx.execution),
        state_dir=ctx.state_dir.resolve(),
    )
    found = report.results[0]
    output = json.dumps(found.data, default=str) if found.data else ""
    return StepOutcome(found.passed is True, found.message, output)


async def approval_state(
    step: RunbookApprovalStep | RunbookManualStep,
    decisions: list[Approval],
    approve_as: str | None,
) -> ConditionResult:
    """Where the step's approval stands: passed (True), rejected (False) or waiting (None).

    The rules are a gate's: a person's later decision replaces an earlier one, one
    rejection fails it, ``--approve-as`` approves it unless someone rejected it.
    """
    count = step.count if isinstance(step, RunbookApprovalStep) else 1
    cond = ApprovalCondition(kind="approval", approvers=step.approvers, count=count, name=step.id)
    gate = Gate(conditions=[cond])
    checker = GateChecker(Path.cwd())
    gate_id = f"runbook/{step.id}.approval"
    found = (await checker.evaluate(gate_id, "", gate, {}, list(decisions))).results[0]
    if found.passed is None and approve_as:  # the approvers' own decisions are credited first
        override = [*decisions, Approval(f"{OVERRIDE}{approve_as}", True)]
        found = (await checker.evaluate(gate_id, "", gate, {}, override)).results[0]
    return found


def decided_by(result: ConditionResult) -> tuple[str, ...]:
    """Who approved, as journaled (an override as ``--approve-as NAME``)."""
    people = result.data.get("approved_by")
    if people:
        return tuple(people)
    if result.message.startswith(f"approved by {OVERRIDE}"):
        return (result.message.removeprefix("approved by "),)
    return ()


async def stop_leftover(pid: int, ctx: StepContext) -> bool:
    """Stop a command a killed runbook process left running (recognised by its environment).

    Only a process whose environment carries this step's idempotency key is stopped, so
    a pid reused by an unrelated program is left alone. Linux only (``/proc``).
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if f"COUNTERPOINT_IDEMPOTENCY_KEY={ctx.idempotency_key}".encode() not in environ:
        return False
    signal_group(pid, signal.SIGTERM)
    for _ in range(int(KILL_GRACE_S / 0.05)):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    signal_group(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


def _read(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - 4 * OUTPUT_CHARS))
    return stream.read().decode("utf-8", errors="replace")[-OUTPUT_CHARS:]


def _last_lines(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    tail = " | ".join(lines[-3:])
    return tail if len(tail) <= DETAIL_CHARS else "…" + tail[-(DETAIL_CHARS - 1) :]


__all__ = [
    "StepContext",
    "StepOutcome",
    "approval_state",
    "argv_of",
    "decided_by",
    "run_check",
    "run_command",
    "stop_leftover",
]
