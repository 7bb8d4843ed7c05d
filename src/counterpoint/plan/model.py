"""The plan file's data model (format version 1), validated with pydantic.

Every key that a plan may contain is declared here; unknown keys are errors
(``extra="forbid"``) and types are strict, so ``overlap: "yes"`` or a misspelt
``max_concurency`` never pass silently. Defaults that tasks inherit live in
:class:`Defaults`; :meth:`Plan.effective` resolves them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic import Strict as StrictFlag

from counterpoint.durations import DURATION_PATTERN, parse_duration

if TYPE_CHECKING:
    from counterpoint.plan.graph import Graph

ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=ID_PATTERN)]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or a number with a unit s, m, h, d (24 h) or w (7 d)",
        }
    ),
]
Command = str | list[str]


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for critical up to 3 for low: sorts most urgent first."""
        return _PRIORITY_RANK[self]


PriorityName = Annotated[Priority, StrictFlag(False)]
_PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.MEDIUM: 2, Priority.LOW: 3}


class OnFailure(StrEnum):
    BLOCK = "block"
    FAIL_FAST = "fail_fast"
    ROLLBACK_MILESTONE = "rollback_milestone"
    ROLLBACK_PHASE = "rollback_phase"
    ROLLBACK_RUN = "rollback_run"


OnFailureName = Annotated[OnFailure, StrictFlag(False)]


class Strict(BaseModel):
    """Base of every plan model: unknown keys are errors, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class Defaults(Strict):
    """Task defaults, each overridable per task."""

    priority: PriorityName = Priority.MEDIUM
    retries: int = Field(default=2, ge=0)
    timeout: Duration = 7200.0
    on_failure: OnFailureName = OnFailure.BLOCK
    estimate: Duration = 3600.0


Quorum = Annotated[int, Field(ge=1)] | Literal["majority", "all"]


class ContractNet(Strict):
    """How ``coordination: contract_net`` calls for proposals (see docs/coordination.md)."""

    #: How long agents have to propose or refuse (plan time, scaled like estimates).
    deadline: Duration = Field(default=60.0, gt=0)
    #: Calls made before a task nobody proposed for is escalated (it keeps being called
    #: while its escalation is open, and fails when the ladder runs out).
    rounds: int = Field(default=2, ge=1)
    #: Seconds of plan time one unit of a proposal's ``cost`` is worth in the score.
    cost_weight: float = Field(default=0.0, ge=0)


class Voting(Strict):
    """Who decides by vote (``ctx.propose_decision``, the ``vote`` state policy) and how."""

    voters: list[Id] = Field(default_factory=list, description="agent names")
    #: Votes needed for a result: a number, ``majority`` (more than half the voters)
    #: or ``all``.
    quorum: Quorum = "majority"
    deadline: Duration = Field(default=600.0, gt=0)


class RaySettings(Strict):
    """The Ray backend (``backend: ray`` or ``--backend ray``); see docs/scaling.md."""

    #: ``auto`` (a running cluster), ``ray://host:port``, or none: start a local instance.
    address: str | None = None
    #: CPUs of the local instance started when ``address`` is none (default: all).
    num_cpus: int | None = Field(default=None, ge=1)
    #: Object store size of the local instance, in bytes.
    object_store_memory: int = Field(default=200 * 1024 * 1024, ge=75 * 1024 * 1024)


class Budget(Strict):
    """The run-wide budget of coding agents (see docs/coding-agents.md#budget)."""

    max_cost_usd: float = Field(gt=0, description="USD, summed over every coding result")


class WorktreeSettings(Strict):
    """How ``workspace: worktree`` attempts are prepared and checked (docs/workspaces.md)."""

    #: A file of the repository listing untracked files (globs, one a line) copied from
    #: the repository's checkout into each new worktree, e.g. ``.env``.
    include: str | None = Field(default=None, min_length=1)
    #: Run in each new worktree before the agent starts; a failure fails the attempt.
    setup: Command | None = None
    setup_timeout: Duration = Field(default=600.0, gt=0)
    #: Run in the worktree after the agent succeeded (and after a conflict resolution);
    #: a non-zero exit fails the attempt. A task's or agent's ``check`` overrides it.
    check: Command | None = None
    check_timeout: Duration = Field(default=600.0, gt=0)


class MechanicalRule(Strict):
    """Conflicting paths resolved without an agent: lock files, generated files."""

    paths: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=1, description="globs (fnmatch) on the path or its file name"
    )
    strategy: Literal["union", "ours", "theirs", "command"]
    #: For ``strategy: command``: run in the integration worktree with the merge in
    #: progress; it regenerates the paths (e.g. ``npm install --package-lock-only``).
    command: Command | None = None
    timeout: Duration = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _command_iff_command_strategy(self) -> MechanicalRule:
        if self.strategy == "command" and self.command is None:
            raise ValueError("strategy: command needs a command")
        if self.strategy != "command" and self.command is not None:
            raise ValueError(f"command only applies to strategy: command (not {self.strategy})")
        return self


class Conflicts(Strict):
    """Where a merge conflict of a worktree task's branch goes (docs/workspaces.md)."""

    mechanical: list[MechanicalRule] = Field(default_factory=list)
    #: The agent that resolves the other conflicts, in a worktree with the merge in progress.
    resolver: Id | None = None


class Settings(Strict):
    coordination: Literal["centralized", "contract_net"] = "centralized"
    backend: Literal["local", "ray"] = "local"
    contract_net: ContractNet = Field(default_factory=ContractNet)
    voting: Voting = Field(default_factory=Voting)
    ray: RaySettings = Field(default_factory=RaySettings)
    #: How deep tasks may spawn subtasks (a plan task's children are depth 1).
    max_spawn_depth: int = Field(default=3, ge=0)
    #: At most this many tasks in the run, spawned ones included (none: the plan's
    #: own tasks plus 10,000).
    max_tasks: int | None = Field(default=None, ge=1)
    heartbeat: Duration = 30.0
    response_sla: Duration = 3600.0
    status_every: Duration = 7200.0
    #: At most this many tasks run at once across all agents (none: no global cap).
    max_concurrency: int | None = Field(default=None, ge=1)
    #: A ready task that waited this long moves up one priority class (and so on).
    aging: Duration = 600.0
    #: How the run orders ready tasks within a priority class: ``schedule`` (by their
    #: planned start in the plan's searched schedule, refreshed when actual durations
    #: drift) or ``critical-path`` (latest start first: the longest remaining path).
    dispatch: Literal["schedule", "critical-path"] = "schedule"
    #: How long a run searches for the schedule it follows when it starts (real
    #: seconds; 0: the single priority-rule pass). Refreshes search a quarter of it.
    dispatch_search: Duration = 1.0
    #: First retry delay; doubles per failed attempt (with jitter) up to retry_backoff_max.
    retry_backoff: Duration = 1.0
    retry_backoff_max: Duration = 300.0
    #: Tasks that could run at the same time and declare overlapping ``writes`` never do:
    #: the run holds a lock per written key while such a task runs.
    serialize_conflicting_writes: bool = False
    #: How often the run samples its metrics into the journal and checks alert rules
    #: (real seconds, never time-scaled).
    metrics_every: Duration = Field(default=5.0, gt=0)
    #: The git repository that ``workspace: worktree`` agents work in (relative to the
    #: plan's folder; default: the repository holding the plan file).
    repository: str | None = None
    #: How worktrees are prepared (include, setup) and checked (check).
    worktree: WorktreeSettings = Field(default_factory=WorktreeSettings)
    #: How merge conflicts of worktree tasks are resolved (mechanical rules, a resolver).
    conflicts: Conflicts = Field(default_factory=Conflicts)
    #: What the run's coding agents may spend in all; when reached, no new task starts.
    budget: Budget | None = None


class Runner(Strict):
    """How work is executed: exactly one of ``python``, ``shell``, ``remote`` or ``coding``."""

    python: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module:callable, called as callable(task, ctx)",
    )
    shell: Command | None = Field(default=None, description="command template, payload on stdin")
    remote: bool | None = Field(default=None, description="a worker that connects over WebSocket")
    use_shell: bool = Field(
        default=False,
        description="run the shell command through /bin/sh (placeholders are shell-quoted)",
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    cwd: str | None = Field(default=None, description="working directory, relative to the plan")
    #: A coding agent's command-line tool, driven through its JSON protocol (see
    #: docs/coding-agents.md); the keys below configure it.
    coding: Literal["claude", "codex", "gemini", "aider"] | None = None
    #: Explicitly allow the CLI's "skip all permission checks" mode (off by default).
    skip_permissions: bool = False
    command: str | None = Field(
        default=None, min_length=1, description="the CLI's executable (default: its name on PATH)"
    )
    model: str | None = Field(default=None, min_length=1, description="the CLI's --model")
    args: list[str] = Field(default_factory=list, description="extra arguments for the CLI")
    allowed_tools: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=list, description="tools the CLI may use without asking (claude, gemini)"
    )
    permission_mode: str | None = Field(
        default=None, min_length=1, description="claude --permission-mode, gemini --approval-mode"
    )
    sandbox: str | None = Field(default=None, min_length=1, description="codex --sandbox")
    #: A retry continues the previous attempt's CLI session by its id (claude, codex).
    resume: bool = True

    @field_validator("command", "model", "args", "allowed_tools", "permission_mode", "sandbox")
    @classmethod
    def _coding_key(cls, value: Any, info: ValidationInfo) -> Any:
        from counterpoint.plan.coding import check_coding_key

        if "coding" in info.data and info.field_name is not None:  # else coding is invalid
            check_coding_key(info.field_name, value, info.data["coding"], info.data)
        return value

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Runner:
        kinds = [
            k
            for k in ("python", "shell", "remote", "coding")
            if getattr(self, k) not in (None, False)
        ]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(
                f"a runner needs exactly one of python, shell, remote or coding (found {found})"
            )
        if self.shell is None and (self.use_shell or self.cwd is not None):
            raise ValueError("use_shell and cwd only apply to a shell runner")
        if self.shell is None and self.coding is None and self.env:
            raise ValueError("env only applies to a shell or coding runner")
        if self.coding is None and (self.skip_permissions or not self.resume):
            raise ValueError("skip_permissions and resume only apply to a coding runner")
        return self

    @property
    def kind(self) -> str:
        if self.coding:
            return "coding"
        return "python" if self.python else "shell" if self.shell else "remote"


class RayAgent(Strict):
    """What one Ray actor of this agent asks of the cluster (one actor per capacity slot)."""

    #: CPUs the actor holds while it lives; none: Ray's actor default (one CPU to be
    #: placed, none while it runs), so any number of slots fit on a node with a CPU.
    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    #: Custom Ray resources, e.g. ``{gpu_node: 1}`` to place the agent on such nodes.
    resources: dict[str, float] = Field(default_factory=dict)


class AgentSpec(Strict):
    capabilities: list[Id] = Field(default_factory=list)
    capacity: int = Field(default=1, ge=0, description="tasks it runs at once")
    runner: Runner | None = None
    workspace: Literal["none", "tempdir", "worktree"] = "none"
    #: For ``workspace: worktree``: run in the worktree after each success (overrides
    #: ``settings.worktree.check``; a task's own ``check`` overrides it).
    check: Command | None = None
    description: str = ""
    #: How the agent answers a call for proposals (contract net): ``python`` (a
    #: ``bid(task)`` callable) or ``shell`` (the call on stdin, the proposal on stdout).
    #: Without it the agent proposes from its load and capability match.
    bid: Runner | None = None
    #: How the agent answers a ballot (votes): ``python`` or ``shell``, like ``bid``.
    vote: Runner | None = None
    #: Ray actor options when the run uses the Ray backend.
    ray: RayAgent = Field(default_factory=RayAgent)

    @property
    def remote(self) -> bool:
        """A worker that connects over WebSocket (``runner: {remote: true}``)."""
        return self.runner is not None and bool(self.runner.remote)


class ResourceSpec(Strict):
    """A counted resource (``capacity``) or a rate limit (``rate`` per ``per``), not both."""

    capacity: int | None = Field(default=None, ge=0)
    rate: float | None = Field(default=None, gt=0)
    per: Duration | None = None
    usage: str | None = Field(
        default=None,
        min_length=1,
        description="draw the rate limit by this usage figure that tasks report (e.g. tokens)",
    )
    description: str = ""

    @model_validator(mode="after")
    def _counted_or_rate(self) -> ResourceSpec:
        if (self.capacity is None) == (self.rate is None):
            raise ValueError("a resource needs either capacity (counted) or rate (rate limit)")
        if (self.per is not None or self.usage is not None) and self.rate is None:
            raise ValueError("per and usage are only meaningful with rate")
        if self.per is not None and self.per <= 0:
            raise ValueError("per must be longer than 0s")
        return self

    @property
    def is_rate(self) -> bool:
        return self.rate is not None

    @property
    def window_s(self) -> float:
        """The rate window in seconds (``per``, one second when not given)."""
        return self.per if self.per is not None else 1.0


#: The metrics a gate's ``metric`` condition can test, for its phase or the whole run.
GATE_METRICS = tuple(
    f"{scope}.{name}"
    for scope in ("phase", "milestone", "run")
    for name in (
        "total",
        "completed",
        "failed",
        "blocked",
        "cancelled",
        "completed_ratio",
        "failed_ratio",
    )
)


class MetricCondition(Strict):
    kind: Literal["metric"]
    metric: str = Field(min_length=1)
    op: Literal["==", "!=", "<", "<=", ">", ">="] = "=="
    value: float
    name: str = ""


class CommandCondition(Strict):
    kind: Literal["command"]
    run: Command
    timeout: Duration | None = None
    name: str = ""


class FileCondition(Strict):
    """A file exists (relative to the plan's folder), optionally with content matching a regex."""

    kind: Literal["file"]
    path: str = Field(min_length=1)
    pattern: str | None = Field(default=None, min_length=1, description="a regular expression")
    name: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return value


class PythonCondition(Strict):
    """``module:callable`` called with the gate's context; returns passed (and a message, data)."""

    kind: Literal["python"]
    call: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    timeout: Duration | None = None
    name: str = ""


class ApprovalCondition(Strict):
    kind: Literal["approval"]
    approvers: list[Id] = Field(min_length=1)
    count: int = Field(default=1, ge=1)
    name: str = ""

    @model_validator(mode="after")
    def _count_reachable(self) -> ApprovalCondition:
        if self.count > len(self.approvers):
            raise ValueError(
                f"count {self.count} is more than the {len(self.approvers)} approvers named"
            )
        return self


Condition = Annotated[
    MetricCondition | CommandCondition | FileCondition | PythonCondition | ApprovalCondition,
    Field(discriminator="kind"),
]


class Gate(Strict):
    conditions: list[Condition] = Field(default_factory=list)
    timeout: Duration | None = None
    #: A gate that does not pass holds what waits on it and is checked again this often
    #: (plan time), until it passes or its escalation runs out; without it, what waits on
    #: a gate that does not pass is blocked at once. A rejection always blocks at once.
    recheck: Duration | None = Field(default=None, gt=0)


class StatePolicy(Strict):
    key: str = Field(min_length=1, description="key pattern, * matches any run of characters")
    policy: Literal["priority", "first-writer", "last-writer", "merge", "vote", "escalate"]
    reducer: str | None = None
    #: ``vote``: the agents that vote (default: ``settings.voting.voters``, else the
    #: key's writers), the quorum and the deadline (defaults from ``settings.voting``).
    voters: list[Id] = Field(default_factory=list)
    quorum: Quorum | None = None
    deadline: Duration | None = Field(default=None, gt=0)


class SharedState(Strict):
    policies: list[StatePolicy] = Field(default_factory=list)
    default: Literal["priority", "first-writer", "last-writer", "merge", "vote", "escalate"] = (
        "escalate"
    )


class EscalationLevel(Strict):
    name: Id
    contacts: list[Id] = Field(min_length=1)
    #: How long this level has before the case goes up (default: ``escalation.timeout``).
    timeout: Duration | None = None


class Notifier(Strict):
    """One way to reach a contact: exactly one of ``log``, ``webhook`` or ``command``."""

    log: bool | None = None
    webhook: str | None = Field(default=None, pattern=r"^https?://\S+$")
    command: Command | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Notifier:
        kinds = [k for k in ("log", "webhook", "command") if getattr(self, k) not in (None, False)]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"a notifier needs exactly one of log, webhook or command ({found})")
        return self


class Contact(Strict):
    notify: list[Notifier] = Field(default_factory=lambda: [Notifier(log=True)])


#: The seed's ladder, used when the plan names no levels.
DEFAULT_ESCALATION_LEVELS = (
    ("level1", ("team_lead", "architect")),
    ("level2", ("project_manager", "senior_architect")),
    ("level3", ("executive_sponsor", "cto")),
)


class Escalation(Strict):
    timeout: Duration = 3600.0
    levels: list[EscalationLevel] = Field(default_factory=list)
    contacts: dict[Id, Contact] = Field(default_factory=dict)
    #: When the last level's time is up: ``fail`` what the case holds, or ``block`` it.
    exhausted: Literal["fail", "block"] = "fail"

    def ladder(self) -> list[EscalationLevel]:
        """The plan's levels, or the seed's three when it names none."""
        if self.levels:
            return self.levels
        return [EscalationLevel(name=n, contacts=list(c)) for n, c in DEFAULT_ESCALATION_LEVELS]

    def contact(self, name: str) -> Contact:
        """A contact's notifiers (a contact the plan does not describe is logged)."""
        return self.contacts.get(name) or Contact()


class AlertRule(Strict):
    name: Id
    metric: str = Field(min_length=1)
    op: Literal["==", "!=", "<", "<=", ">", ">="] = ">"
    threshold: float
    for_: Duration = Field(default=0.0, alias="for")
    severity: Literal["critical", "warning", "info"] = "warning"
    #: Escalation contacts told when the alert fires and when it resolves.
    notify: list[Id] = Field(default_factory=list)


class _RunbookStepBase(Strict):
    """What every runbook step has (see docs/rollback.md#runbooks)."""

    id: Id
    name: str = ""
    description: str = ""
    #: A command's or check's time limit; how long an approval or manual step waits.
    timeout: Duration | None = Field(default=None, gt=0)

    @property
    def title(self) -> str:
        return self.name or self.id


class _Retried(_RunbookStepBase):
    #: Further tries after a failure, each after ``retry_delay``.
    retries: int = Field(default=0, ge=0)
    retry_delay: Duration = 5.0


class RunbookCommandStep(_Retried):
    """A program run without a shell in the runbook's folder; exit 0 is success."""

    kind: Literal["command"]
    run: Command
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("run")
    @classmethod
    def _runnable(cls, value: Command) -> Command:
        try:
            argv = shlex.split(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from None
        if not argv or not argv[0]:
            raise ValueError("the command is empty")
        return value


#: The gate conditions a runbook ``check`` step can use (a metric needs a run).
RunbookCheck = Annotated[
    CommandCondition | FileCondition | PythonCondition, Field(discriminator="kind")
]


class RunbookCheckStep(_Retried):
    """A gate condition (command, file or python) that must pass."""

    kind: Literal["check"]
    check: RunbookCheck

    @model_validator(mode="after")
    def _one_timeout(self) -> RunbookCheckStep:
        if self.timeout is not None and getattr(self.check, "timeout", None) is not None:
            raise ValueError("give the timeout on the step or in its check, not both")
        return self


class RunbookApprovalStep(_RunbookStepBase):
    """``count`` of the named ``approvers`` approve (one rejection fails the step)."""

    kind: Literal["approval"]
    approvers: list[Id] = Field(min_length=1)
    count: int = Field(default=1, ge=1)
    instructions: str = ""

    @model_validator(mode="after")
    def _count_reachable(self) -> RunbookApprovalStep:
        named = len(set(self.approvers))
        if self.count > named:
            raise ValueError(f"count {self.count} is more than the {named} different approvers")
        return self


class RunbookManualStep(_RunbookStepBase):
    """Work a person does by hand, then confirms (one of ``approvers``)."""

    kind: Literal["manual"]
    instructions: str = Field(min_length=1)
    approvers: list[Id] = Field(min_length=1)


RunbookStep = Annotated[
    RunbookCommandStep | RunbookCheckStep | RunbookApprovalStep | RunbookManualStep,
    Field(discriminator="kind"),
]


class Runbook(Strict):
    """A named procedure: ordered steps run one after the other, each journaled."""

    description: str = ""
    steps: list[RunbookStep] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _unique_ids(cls, steps: list[Any]) -> list[Any]:
        first: dict[str, int] = {}
        for i, step in enumerate(steps):
            seen = first.setdefault(step.id, i)
            if seen != i:
                raise ValueError(
                    f"duplicate step id {step.id!r} (steps[{seen}] and steps[{i}]): "
                    "step ids must be unique in a runbook"
                )
        return steps


#: The most candidates a best-of-N task (``attempts``) may run.
MAX_CANDIDATES = 16


class Task(Strict):
    id: Id
    name: str = ""
    description: str = ""
    needs: list[Id] = Field(default_factory=list)
    requires: list[Id] = Field(default_factory=list)
    priority: PriorityName | None = None
    estimate: Duration | None = None
    resources: dict[Id, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    instructions: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)
    reads: list[str] = Field(default_factory=list)
    writes: list[str] = Field(default_factory=list)
    timeout: Duration | None = None
    retries: int | None = Field(default=None, ge=0)
    on_failure: OnFailureName | None = None
    run: Runner | None = None
    rollback: Runner | None = None
    #: For a worktree task: run in its worktree after the agent succeeded; a non-zero exit
    #: fails the attempt (overrides its agent's ``check`` and ``settings.worktree.check``).
    check: Command | None = None
    #: Files (paths or globs, relative to the repository) the task may touch: told to a
    #: coding agent in its prompt (not enforced).
    files: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    #: A coding agent's attempts may cost at most this much in all (USD, as the CLI reports).
    max_cost_usd: float | None = Field(default=None, gt=0)
    #: At most this many agent turns per attempt (claude --max-turns).
    max_turns: int | None = Field(default=None, ge=1)
    #: An attempt that changed nothing in its worktree fails instead of being merged
    #: (default: true for a coding runner in a worktree, false otherwise).
    expect_changes: bool | None = None
    #: Best-of-N: run this many candidates of each attempt in parallel worktrees and
    #: merge the best one (``workspace: worktree`` agents only; docs/workspaces.md).
    attempts: int = Field(default=1, ge=1, le=MAX_CANDIDATES)

    @property
    def title(self) -> str:
        return self.name or self.id


class Milestone(Strict):
    id: Id
    name: str = ""
    description: str = ""
    after: list[Id] = Field(default_factory=list)
    entry_gate: Gate | None = None
    exit_gate: Gate | None = None
    tasks: list[Task] = Field(default_factory=list)

    @property
    def title(self) -> str:
        return self.name or self.id


class Phase(Strict):
    id: Id
    name: str = ""
    description: str = ""
    overlap: bool = False
    entry_gate: Gate | None = None
    exit_gate: Gate | None = None
    milestones: list[Milestone] = Field(default_factory=list)

    @property
    def title(self) -> str:
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """A task's settings with the plan's defaults filled in."""

    priority: Priority
    estimate_s: float
    timeout_s: float
    retries: int
    on_failure: OnFailure


class Plan(Strict):
    version: Literal[1]
    name: str = Field(min_length=1)
    description: str = ""
    defaults: Defaults = Field(default_factory=Defaults)
    settings: Settings = Field(default_factory=Settings)
    agents: dict[Id, AgentSpec] = Field(default_factory=dict)
    resources: dict[Id, ResourceSpec] = Field(default_factory=dict)
    shared_state: SharedState = Field(default_factory=SharedState)
    escalation: Escalation = Field(default_factory=Escalation)
    alerts: list[AlertRule] = Field(default_factory=list)
    #: Named manual procedures, run with ``counterpoint runbook run NAME``.
    runbooks: dict[Id, Runbook] = Field(default_factory=dict)
    phases: list[Phase] = Field(min_length=1)
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        """The file the plan was read from (None when it came from a string)."""
        return self._source

    def compile(self, *, check: bool = True) -> Graph:
        """The plan as an integer-indexed DAG.

        Raises ``PlanError`` listing every cycle and, unless ``check`` is false (the loader
        has already checked), every broken reference or unrunnable task.
        """
        from counterpoint.errors import PlanError, Severity
        from counterpoint.plan.checks import check_plan
        from counterpoint.plan.graph import Graph

        if check:
            errors = [p for p in check_plan(self) if p.severity is Severity.ERROR]
            if errors:
                raise PlanError(errors)
        return Graph(self)

    def tasks(self) -> list[Task]:
        """Every task, in plan order (phase, milestone, task)."""
        return [t for p in self.phases for m in p.milestones for t in m.tasks]

    def milestones(self) -> list[Milestone]:
        return [m for p in self.phases for m in p.milestones]

    def effective(self, task: Task) -> TaskSettings:
        d = self.defaults
        return TaskSettings(
            priority=task.priority or d.priority,
            estimate_s=d.estimate if task.estimate is None else task.estimate,
            timeout_s=d.timeout if task.timeout is None else task.timeout,
            retries=d.retries if task.retries is None else task.retries,
            on_failure=task.on_failure or d.on_failure,
        )

    def counts(self) -> dict[str, int]:
        return {
            "phases": len(self.phases),
            "milestones": sum(len(p.milestones) for p in self.phases),
            "tasks": sum(len(m.tasks) for p in self.phases for m in p.milestones),
            "agents": len(self.agents),
        }
