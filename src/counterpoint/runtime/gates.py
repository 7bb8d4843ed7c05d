"""Entry and exit gates of phases and milestones: conditions checked before work starts or
counts as done.

Each evaluation gives the seed's validation report: the gate, its status
(``allowed``/``blocked`` for an entry gate, ``completed``/``incomplete`` for an
exit gate, ``waiting`` while an approval is outstanding) and, per condition,
whether it passed, a message and data.

Gate ids are ``PHASE.entry``, ``PHASE.exit``, ``MILESTONE.entry`` and
``MILESTONE.exit``; ``counterpoint check`` refuses a plan where a phase and a
milestone sharing an id would give two gates the same id.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import operator
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from counterpoint.plan.model import (
    ApprovalCondition,
    CommandCondition,
    FileCondition,
    Gate,
    MetricCondition,
    PythonCondition,
)

OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
COMMAND_TIMEOUT_S = 600.0
PYTHON_TIMEOUT_S = 600.0
MATCH_SHOWN = 200  # characters of a file condition's match kept in its data
SIDES = ("entry", "exit")


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
    #: The milestone of a milestone's gate (``phase`` is then the milestone's phase).
    milestone: str | None = None

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
        out: dict[str, Any] = {"gate": self.gate, "phase": self.phase}
        if self.milestone is not None:
            out["milestone"] = self.milestone
        out["status"] = self.status
        out["results"] = [r.__dict__ for r in self.results]
        return out


@dataclass(frozen=True)
class Approval:
    by: str
    approve: bool
    comment: str = ""


@dataclass(frozen=True)
class GateContext:
    """What the callable of a ``python`` condition is called with."""

    #: ``PHASE.entry``, ``PHASE.exit``, ``MILESTONE.entry`` or ``MILESTONE.exit``.
    gate: str
    #: The gate's phase (a milestone gate's: the milestone's phase).
    phase: str
    #: The milestone of a milestone gate, else None.
    milestone: str | None
    #: ``entry`` or ``exit``.
    side: str
    #: The gate metrics (``phase.*``, ``run.*`` and, in a milestone gate, ``milestone.*``).
    metrics: dict[str, float]
    #: The run number, as a string.
    run_id: str
    #: The run's state directory (an absolute path), None outside a run.
    state_dir: Path | None
    #: The plan file's folder.
    plan_dir: Path


class GateChecker:
    """Evaluates gate conditions: metrics, commands, files, Python callables, approvals."""

    def __init__(self, plan_dir: Path) -> None:
        self.plan_dir = plan_dir

    async def evaluate(
        self,
        gate_id: str,
        phase: str,
        gate: Gate,
        metrics: Mapping[str, float],
        approvals: list[Approval],
        *,
        milestone: str | None = None,
        run_id: str = "",
        state_dir: Path | None = None,
    ) -> GateReport:
        context = GateContext(
            gate_id,
            phase,
            milestone,
            gate_id.rsplit(".", 1)[-1],
            dict(metrics),
            run_id,
            state_dir,
            self.plan_dir,
        )
        results = []
        for i, cond in enumerate(gate.conditions):
            name = cond.name or f"#{i + 1}"
            if isinstance(cond, MetricCondition):
                results.append(_metric(cond, name, metrics))
            elif isinstance(cond, CommandCondition):
                results.append(await self._command(cond, name))
            elif isinstance(cond, FileCondition):
                results.append(self._file(cond, name))
            elif isinstance(cond, PythonCondition):
                results.append(await self._python(cond, name, context))
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
        return GateReport(gate_id, phase, status, results, milestone)

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

    def _file(self, cond: FileCondition, name: str) -> ConditionResult:
        path = self.plan_dir / cond.path
        data: dict[str, Any] = {"path": str(path)}

        def result(passed: bool, message: str) -> ConditionResult:
            return ConditionResult("file", name, passed, message, data)

        try:
            if not path.exists():
                return result(False, f"{cond.path} does not exist")
            if cond.pattern is None:
                return result(True, f"{cond.path} exists")
            if not path.is_file():
                return result(False, f"{cond.path} is not a file, so it cannot match a pattern")
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return result(False, f"cannot read {cond.path}: {exc.strerror or exc}")
        found = re.search(cond.pattern, text)
        if found is None:
            return result(False, f"{cond.path} has no match for '{cond.pattern}'")
        line = text.count("\n", 0, found.start()) + 1
        data.update(match=found.group(0)[:MATCH_SHOWN], line=line)
        return result(True, f"{cond.path} matches '{cond.pattern}' (line {line})")

    async def _python(
        self, cond: PythonCondition, name: str, context: GateContext
    ) -> ConditionResult:
        from counterpoint.agents.python import in_daemon_thread, load_callable

        def failed(message: str) -> ConditionResult:
            return ConditionResult("python", name, False, message)

        try:
            func = load_callable(cond.call, self.plan_dir)
        except ImportError as exc:
            return failed(str(exc))
        except (Exception, SystemExit) as exc:  # raised while importing the module
            return failed(f"cannot import {cond.call!r}: {type(exc).__name__}: {exc}")
        timeout = cond.timeout or PYTHON_TIMEOUT_S
        try:
            async with asyncio.timeout(timeout) as deadline:
                if inspect.iscoroutinefunction(func):
                    value = await func(context)
                else:
                    value = await in_daemon_thread(func, context)
                    if inspect.isawaitable(value):
                        value = await value
        except TimeoutError as exc:
            if deadline.expired():
                return failed(f"timed out after {timeout:g}s")
            return failed(f"{type(exc).__name__}: {exc}")
        except (Exception, SystemExit) as exc:  # a broken check fails its condition, never the run
            return failed(f"{type(exc).__name__}: {exc}")
        return _python_result(value, cond.call, name)


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


_SHAPES = "return a bool, (passed, message), (passed, message, data) or a dict with passed"


def _python_result(value: Any, call: str, name: str) -> ConditionResult:
    """A python condition's return value as a result (a value of no known shape fails it)."""

    def failed(message: str) -> ConditionResult:
        return ConditionResult("python", name, False, f"{call}: {message}")

    message: Any = None
    data: Any = None
    if isinstance(value, bool):
        passed: Any = value
    elif isinstance(value, tuple) and len(value) in (2, 3):
        passed, message, data = (*value, None)[:3]
    elif isinstance(value, Mapping):
        if "passed" not in value:
            return failed(f"returned a dict without 'passed'; {_SHAPES}")
        passed, message, data = value["passed"], value.get("message"), value.get("data")
    else:
        shape = f"a tuple of {len(value)}" if isinstance(value, tuple) else _a(value)
        return failed(f"returned {shape}; {_SHAPES}")
    if not isinstance(passed, bool):
        return failed(f"passed must be True or False, got {_a(passed)}")
    text = f"returned {passed}" if message is None else str(message)
    return ConditionResult("python", name, passed, text, _as_data(data))


def _a(value: Any) -> str:
    kind = type(value).__name__
    return f"{'an' if kind[:1] in 'aeiouAEIOU' else 'a'} {kind}"


def _as_data(data: Any) -> dict[str, Any]:
    """Data as plain JSON (values JSON cannot hold become their text; not a dict: ``value``)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        data = {"value": data}
    try:
        plain = json.loads(json.dumps(data, default=str))
    except (TypeError, ValueError, RecursionError) as exc:
        return {"unserializable": repr(data)[:2000], "reason": str(exc)}
    return plain if isinstance(plain, dict) else {"value": plain}


# -- the gates a stored plan declares (for commands run from another process) -------------


@dataclass(frozen=True)
class DeclaredGate:
    """A gate of a plan: its id, where it sits, and its conditions (as stored JSON)."""

    id: str
    scope: str  # phase | milestone
    side: str  # entry | exit
    phase: str
    milestone: str | None
    conditions: list[dict[str, Any]]
    declared: bool = True  # False: the plan has no such gate (only with ``absent=True``)

    @property
    def kind(self) -> str:
        """``phase entry``, ``milestone exit``, ..."""
        return f"{self.scope} {self.side}"


def declared_gates(plan: Mapping[str, Any], *, absent: bool = False) -> list[DeclaredGate]:
    """Every gate of a plan given as JSON (``store.plan_json``), in the order a run meets them.

    A phase's entry gate comes first, then its milestones' entry and exit gates, then the
    phase's exit gate. With ``absent`` the gates a phase or milestone could have but does
    not declare are listed too (without conditions), unless a declared gate has the id.
    """
    found = list(_walk(plan))
    declared = {g.id for g in found if g.declared}
    if absent:
        seen: set[str] = set()
        keep = []
        for g in found:
            if (g.declared or g.id not in declared) and g.id not in seen:
                seen.add(g.id)
                keep.append(g)
        return keep
    return [g for g in found if g.declared]


def _walk(plan: Mapping[str, Any]) -> Iterator[DeclaredGate]:
    for p in plan.get("phases") or []:
        yield _declared(p, "phase", "entry", p["id"], None)
        for m in p.get("milestones") or []:
            for side in SIDES:
                yield _declared(m, "milestone", side, p["id"], m["id"])
        yield _declared(p, "phase", "exit", p["id"], None)


def _declared(
    owner: Mapping[str, Any], scope: str, side: str, phase: str, milestone: str | None
) -> DeclaredGate:
    gate = owner.get(f"{side}_gate")
    conditions = list((gate or {}).get("conditions") or [])
    return DeclaredGate(
        f"{owner['id']}.{side}", scope, side, phase, milestone, conditions, gate is not None
    )
