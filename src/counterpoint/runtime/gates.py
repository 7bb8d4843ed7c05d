"""Phase entry and exit gates: conditions checked before a phase starts or counts as done.

Each evaluation gives the seed's validation report: the gate, its status
(``allowed``/``blocked`` for an entry gate, ``completed``/``incomplete`` for an
exit gate, ``waiting`` while an approval is outstanding) and, per condition,
whether it passed, a message and data.
"""

from __future__ import annotations

import asyncio
import operator
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from counterpoint.plan.model import ApprovalCondition, CommandCondition, Gate, MetricCondition

OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
COMMAND_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ConditionResult:
    kind: str
    name: str
    passed: bool | None  # None: still waiting (an approval)
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateReport:
    gate: str
    phase: str
    status: str
    results: list[ConditionResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def waiting(self) -> bool:
        return not self.failed and any(r.passed is None for r in self.results)

    @property
    def failed(self) -> bool:
        return any(r.passed is False for r in self.results)

    def reason(self) -> str:
        bad = [r for r in self.results if r.passed is not True]
        return "; ".join(f"{r.kind} {r.name}: {r.message}" for r in bad) or "passed"

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "phase": self.phase,
            "status": self.status,
            "results": [r.__dict__ for r in self.results],
        }


@dataclass(frozen=True)
class Approval:
    by: str
    approve: bool
    comment: str = ""


class GateChecker:
    """Evaluates gate conditions against run metrics, commands and recorded approvals."""

    def __init__(self, plan_dir: Path) -> None:
        self.plan_dir = plan_dir

    async def evaluate(
        self,
        gate_id: str,
        phase: str,
        gate: Gate,
        metrics: Mapping[str, float],
        approvals: list[Approval],
    ) -> GateReport:
        results = []
        for i, cond in enumerate(gate.conditions):
            name = cond.name or f"#{i + 1}"
            if isinstance(cond, MetricCondition):
                results.append(_metric(cond, name, metrics))
            elif isinstance(cond, CommandCondition):
                results.append(await self._command(cond, name))
            elif isinstance(cond, ApprovalCondition):
                results.append(_approval(cond, name, approvals))
        entry = gate_id.endswith(".entry")
        report = GateReport(gate_id, phase, "", results)
        if report.passed:
            status = "allowed" if entry else "completed"
        elif report.waiting:
            status = "waiting"
        else:
            status = "blocked" if entry else "incomplete"
        return GateReport(gate_id, phase, status, results)

    async def _command(self, cond: CommandCondition, name: str) -> ConditionResult:
        argv = shlex.split(cond.run) if isinstance(cond.run, str) else list(cond.run)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.plan_dir,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            return ConditionResult("command", name, False, f"cannot start {argv[0]!r}: {exc}")
        try:
            async with asyncio.timeout(cond.timeout or COMMAND_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ConditionResult("command", name, False, "timed out")
        tail = out.decode("utf-8", "replace")[-2000:]
        passed = proc.returncode == 0
        message = "exit 0" if passed else f"exit code {proc.returncode}"
        return ConditionResult("command", name, passed, message, {"output": tail})


def _metric(cond: MetricCondition, name: str, metrics: Mapping[str, float]) -> ConditionResult:
    value = metrics.get(cond.metric)
    if value is None:
        return ConditionResult("metric", name, False, f"unknown metric {cond.metric!r}")
    passed = OPS[cond.op](value, cond.value)
    message = f"{cond.metric} {cond.op} {cond.value:g} ({'yes' if passed else 'no'}: {value:g})"
    return ConditionResult("metric", name, passed, message, {"value": value})


def _approval(cond: ApprovalCondition, name: str, approvals: list[Approval]) -> ConditionResult:
    latest = {a.by: a for a in approvals}  # a person's later decision replaces an earlier one
    approvals = list(latest.values())
    rejected = [a for a in approvals if not a.approve]
    if rejected:
        who = rejected[0]
        note = f": {who.comment}" if who.comment else ""
        return ConditionResult("approval", name, False, f"rejected by {who.by}{note}")
    override = [a.by for a in approvals if a.by.startswith("--approve-as ")]
    if override:
        return ConditionResult("approval", name, True, f"approved by {override[0]}")
    approvers = sorted({a.by for a in approvals if a.by in cond.approvers})
    data = {"approved_by": approvers, "needed": cond.count}
    if len(approvers) >= cond.count:
        return ConditionResult("approval", name, True, f"approved by {', '.join(approvers)}", data)
    wanted = ", ".join(cond.approvers)
    message = f"waiting for {cond.count - len(approvers)} more approval(s) from [{wanted}]"
    return ConditionResult("approval", name, None, message, data)
