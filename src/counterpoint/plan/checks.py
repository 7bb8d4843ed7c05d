"""Checks that need the whole plan: unique ids, references, and whether work can ever run.

Cycles are found by :mod:`counterpoint.plan.graph`; everything else that makes a
well-typed plan unrunnable is found here. Each check yields problems with the
data path of the offending value, so the loader can point at it.
"""

from __future__ import annotations

from collections.abc import Iterator

from counterpoint.errors import Path, Problem, Severity
from counterpoint.plan.alert_metrics import RUN_METRICS, alert_metrics
from counterpoint.plan.model import (
    GATE_METRICS,
    ApprovalCondition,
    MetricCondition,
    Milestone,
    Phase,
    Plan,
    Task,
)
from counterpoint.plan.schema_errors import did_you_mean

TaskPath = tuple[str, int, str, int, str, int]


def check_plan(plan: Plan) -> list[Problem]:
    """Every problem the model alone cannot see, errors and warnings together."""
    problems: list[Problem] = []
    for check in (_unique_ids, _references, _agents, _resources, _alerts, _gates, _coordination):
        problems.extend(check(plan))
    problems.extend(_worktrees(plan))
    problems.extend(_best_of_n(plan))
    return problems


def _best_of_n(plan: Plan) -> Iterator[Problem]:
    """``attempts: N`` > 1 needs every agent able to run the task to work in local worktrees."""
    for path, task in task_paths(plan):
        if task.attempts == 1:
            continue
        where: Path = (*path, "attempts")
        need = set(task.requires)
        able = [n for n, a in plan.agents.items() if need <= set(a.capabilities) and a.capacity]
        unfit = [n for n in able if plan.agents[n].workspace != "worktree"]
        runners = {n: task.run or plan.agents[n].runner for n in able}
        remote = [n for n, r in runners.items() if r is not None and r.remote]
        if plan.settings.coordination == "contract_net":
            yield Problem(
                "attempts (best-of-N) works with settings.coordination: centralized only",
                where,
            )
        elif unfit:
            yield Problem(
                f"attempts: {task.attempts} runs candidates in parallel git worktrees, but "
                f"the able agent{'s' * (len(unfit) > 1)} {', '.join(map(repr, unfit))} "
                f"{'does' if len(unfit) == 1 else 'do'} not have workspace: worktree",
                where,
            )
        elif remote:
            yield Problem(
                f"attempts: {task.attempts} needs local agents, but "
                f"{', '.join(map(repr, remote))} {'is' if len(remote) == 1 else 'are'} remote",
                where,
            )


def _worktrees(plan: Plan) -> Iterator[Problem]:
    """The conflict resolver is a local agent of the plan; worktree keys need a worktree agent."""
    name = plan.settings.conflicts.resolver
    where: Path = ("settings", "conflicts", "resolver")
    if name is not None and name not in plan.agents:
        yield Problem(
            f"unknown agent {name!r}: the resolver is an agent of the plan",
            where,
            hint=did_you_mean(name, set(plan.agents)),
        )
    elif name is not None:
        runner = plan.agents[name].runner
        if runner is None or runner.remote:
            what = "has no runner" if runner is None else "is remote"
            yield Problem(
                f"the resolver agent {name!r} {what}: it must run locally (python, shell or "
                "a coding runner), in the resolution worktree",
                where,
            )
    if not any(a.workspace == "worktree" for a in plan.agents.values()):
        settings = plan.settings
        used = [k for k in ("worktree", "conflicts") if k in settings.model_fields_set]
        for key in used:
            yield Problem(
                f"settings.{key} only applies to agents with workspace: worktree (none has it)",
                ("settings", key),
                Severity.WARNING,
                at_key=True,
            )


def task_paths(plan: Plan) -> Iterator[tuple[TaskPath, Task]]:
    for pi, phase in enumerate(plan.phases):
        for mi, milestone in enumerate(phase.milestones):
            for ti, task in enumerate(milestone.tasks):
                yield ("phases", pi, "milestones", mi, "tasks", ti), task


def _unique_ids(plan: Plan) -> Iterator[Problem]:
    seen: dict[str, dict[str, Path]] = {"phase": {}, "milestone": {}, "task": {}}
    for pi, phase in enumerate(plan.phases):
        yield from _once(seen["phase"], "phase", phase.id, ("phases", pi, "id"))
        for mi, milestone in enumerate(phase.milestones):
            mpath = ("phases", pi, "milestones", mi)
            yield from _once(seen["milestone"], "milestone", milestone.id, (*mpath, "id"))
            for ti, task in enumerate(milestone.tasks):
                yield from _once(seen["task"], "task", task.id, (*mpath, "tasks", ti, "id"))


def _once(
    seen: dict[str, Path], kind: str, ident: str, path: Path, key: str = "id"
) -> Iterator[Problem]:
    first = seen.setdefault(ident, path)
    if first is not path:
        yield Problem(f"duplicate {kind} {key} {ident!r}", path, related=first)


def _references(plan: Plan) -> Iterator[Problem]:
    tasks = {t.id for t in plan.tasks()}
    milestones = {m.id for m in plan.milestones()}
    for pi, phase in enumerate(plan.phases):
        for mi, milestone in enumerate(phase.milestones):
            mpath: Path = ("phases", pi, "milestones", mi)
            for ai, name in enumerate(milestone.after):
                if name not in milestones:
                    yield _unknown("milestone", name, (*mpath, "after", ai), milestones)
    for path, task in task_paths(plan):
        for ni, name in enumerate(task.needs):
            if name not in tasks:
                yield _unknown("task", name, (*path, "needs", ni), tasks)
        if len(set(task.needs)) != len(task.needs):
            yield Problem("needs lists a task more than once", (*path, "needs"), Severity.WARNING)


def _unknown(kind: str, name: str, path: Path, known: set[str]) -> Problem:
    return Problem(f"unknown {kind} {name!r}", path, hint=did_you_mean(name, known))


def _agents(plan: Plan) -> Iterator[Problem]:
    if not plan.agents:
        yield Problem(
            "the plan has no agents: it can be analysed but not run", (), Severity.WARNING
        )
        return
    capabilities = {c for a in plan.agents.values() for c in a.capabilities}
    verdicts: dict[frozenset[str], str] = {}
    for path, task in task_paths(plan):
        for ri, cap in enumerate(task.requires):
            if cap not in capabilities:
                yield Problem(
                    f"no agent has capability {cap!r}",
                    (*path, "requires", ri),
                    hint=did_you_mean(cap, capabilities),
                )
        need = frozenset(task.requires)
        if need <= capabilities:
            if need not in verdicts:
                verdicts[need] = _who_can_run(plan, need)
            if verdicts[need]:
                yield Problem(verdicts[need], (*path, "requires"))
    yield from _idle_agents(plan)


def _who_can_run(plan: Plan, need: frozenset[str]) -> str:
    """Empty when some agent with a free slot can run work needing ``need``; else why not."""
    able = [a for a, spec in plan.agents.items() if need <= set(spec.capabilities)]
    if not able:
        wanted = ", ".join(sorted(need))
        closest = min(plan.agents.items(), key=lambda kv: len(need - set(kv[1].capabilities)))
        lacking = ", ".join(sorted(need - set(closest[1].capabilities)))
        return (
            f"no agent can ever run this task: none has all of [{wanted}] "
            f"(closest: {closest[0]!r}, which lacks [{lacking}])"
        )
    if all(plan.agents[a].capacity == 0 for a in able):
        return (
            f"no agent can ever run this task: every able agent ({', '.join(able)}) has capacity 0"
        )
    return ""


def _idle_agents(plan: Plan) -> Iterator[Problem]:
    own_runner = all(t.run is not None for t in plan.tasks())
    for name, spec in plan.agents.items():
        if spec.runner is None and not own_runner:
            yield Problem(
                f"agent {name!r} has no runner: it can only take tasks that carry their own run:",
                ("agents", name),
                Severity.WARNING,
            )


def _resources(plan: Plan) -> Iterator[Problem]:
    for path, task in task_paths(plan):
        for name, units in task.resources.items():
            where = (*path, "resources", name)
            spec = plan.resources.get(name)
            if spec is None:
                yield Problem(
                    f"unknown resource {name!r}",
                    where,
                    hint=did_you_mean(name, plan.resources),
                    at_key=True,
                )
            elif spec.capacity is not None and units > spec.capacity:
                yield Problem(
                    f"needs {units} units of {name!r} but its capacity is {spec.capacity}: "
                    "it could never start",
                    where,
                )
            elif spec.rate is not None and units > spec.rate:
                yield Problem(
                    f"needs {units} units of rate limit {name!r} at once, more than the "
                    f"{spec.rate:g} it allows per window: it could never start",
                    where,
                )


def _alerts(plan: Plan) -> Iterator[Problem]:
    seen: dict[str, Path] = {}
    known: list[str] | None = None
    ladder = plan.escalation.ladder()
    contacts = {*plan.escalation.contacts, *(c for level in ladder for c in level.contacts)}
    for i, rule in enumerate(plan.alerts):
        yield from _once(seen, "alert", rule.name, ("alerts", i, "name"), key="name")
        known = known or alert_metrics(plan)
        if rule.metric not in known:
            yield Problem(
                f"unknown metric {rule.metric!r} (run-wide metrics: {', '.join(RUN_METRICS)}; "
                "per agent, resource and phase: agent.ID.*, resources.ID.*, phase.ID.*; "
                "see docs/metrics.md)",
                ("alerts", i, "metric"),
                hint=did_you_mean(rule.metric, known),
            )
        for ci, contact in enumerate(rule.notify):
            if contact not in contacts:
                yield Problem(
                    f"unknown contact {contact!r}: contacts are those of the escalation "
                    f"section ({', '.join(sorted(contacts))})",
                    ("alerts", i, "notify", ci),
                    hint=did_you_mean(contact, contacts),
                )


def _gates(plan: Plan) -> Iterator[Problem]:
    """Gate conditions of phases and milestones, and gate ids that two gates would share."""
    seen: dict[str, Path] = {}
    for pi, phase in enumerate(plan.phases):
        ppath: Path = ("phases", pi)
        yield from _gate_problems(phase, ppath, "phase", seen)
        for mi, milestone in enumerate(phase.milestones):
            yield from _gate_problems(milestone, (*ppath, "milestones", mi), "milestone", seen)


_PHASE_METRICS = tuple(m for m in GATE_METRICS if not m.startswith("milestone."))


def _gate_problems(
    owner: Phase | Milestone, where: Path, scope: str, seen: dict[str, Path]
) -> Iterator[Problem]:
    for side in ("entry", "exit"):
        gate = getattr(owner, f"{side}_gate")
        if gate is None:
            continue
        path: Path = (*where, f"{side}_gate")
        gate_id = f"{owner.id}.{side}"
        first = seen.setdefault(gate_id, path)
        if first is not path:
            yield Problem(
                f"duplicate gate id {gate_id!r}: a phase and a milestone are both named "
                f"{owner.id!r} and both have an {side} gate; rename one of them",
                path,
                related=first,
                at_key=True,
            )
        for ci, cond in enumerate(gate.conditions):
            cpath: Path = (*path, "conditions", ci)
            if isinstance(cond, MetricCondition):
                yield from _metric_problems(cond.metric, (*cpath, "metric"), scope)
            elif isinstance(cond, ApprovalCondition) and cond.count > len(set(cond.approvers)):
                yield Problem(
                    f"count {cond.count} is more than the {len(set(cond.approvers))} different "
                    "approvers named: the gate could never pass",
                    (*cpath, "count"),
                )


def _metric_problems(metric: str, path: Path, scope: str) -> Iterator[Problem]:
    if metric.startswith("milestone.") and scope == "phase" and metric in GATE_METRICS:
        yield Problem(
            f"gate metric {metric!r} is only known in a milestone's gate",
            path,
            hint=did_you_mean(metric.replace("milestone.", "phase.", 1), _PHASE_METRICS),
        )
        return
    known = GATE_METRICS if scope == "milestone" else _PHASE_METRICS
    if metric not in known:
        yield Problem(
            f"unknown gate metric {metric!r} (known: {', '.join(known)})",
            path,
            hint=did_you_mean(metric, known),
        )


def _coordination(plan: Plan) -> Iterator[Problem]:
    """Bidders and voters (contract net, decisions by vote): who they are, what they run."""
    agents = set(plan.agents)
    voting = plan.settings.voting
    for name, spec in plan.agents.items():
        for key in ("bid", "vote"):
            runner = getattr(spec, key)
            if runner is None:
                continue
            if runner.remote:
                yield Problem(
                    f"a {key} runner cannot be remote: a remote agent answers through its "
                    f"hub connection (counterpoint agent --{key}); give python or shell",
                    ("agents", name, key),
                )
            elif runner.coding:
                yield Problem(
                    f"a {key} runner cannot be a coding CLI: it answers with JSON; give "
                    "python or shell",
                    ("agents", name, key),
                )
            elif key == "bid" and plan.settings.coordination != "contract_net":
                yield Problem(
                    "bid is only used with settings.coordination: contract_net",
                    ("agents", name, key),
                    Severity.WARNING,
                )
    yield from _voter_problems(voting.voters, ("settings", "voting"), agents)
    yield from _quorum_problem(voting.quorum, len(voting.voters), ("settings", "voting"))
    for i, policy in enumerate(plan.shared_state.policies):
        where: Path = ("shared_state", "policies", i)
        if policy.policy != "vote":
            extra = [k for k in ("voters", "quorum", "deadline") if getattr(policy, k)]
            if extra:
                yield Problem(
                    f"{', '.join(extra)} only apply to the vote policy (this one is "
                    f"{policy.policy})",
                    (*where, extra[0]),
                    Severity.WARNING,
                    at_key=True,
                )
            continue
        yield from _voter_problems(policy.voters, where, agents)
        voters = policy.voters or voting.voters
        if policy.quorum is not None:
            yield from _quorum_problem(policy.quorum, len(voters), where)


def _voter_problems(voters: list[str], where: Path, agents: set[str]) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for vi, name in enumerate(voters):
        if name not in agents:
            yield Problem(
                f"unknown voter {name!r}: voters are agents of the plan",
                (*where, "voters", vi),
                hint=did_you_mean(name, agents),
            )
        elif seen.setdefault(name, vi) != vi:
            yield Problem(f"voter {name!r} is named twice", (*where, "voters", vi))


def _quorum_problem(quorum: int | str, voters: int, where: Path) -> Iterator[Problem]:
    if isinstance(quorum, int) and voters and quorum > voters:
        yield Problem(
            f"quorum {quorum} is more than the {voters} voter{'s' * (voters != 1)} named: "
            "a vote could never reach it",
            (*where, "quorum"),
        )
