"""The names of the metrics a run samples: what alert rules may watch.

Every sample the run journals (``counterpoint metrics``, the report, the dashboard)
is a flat mapping from these names to numbers. Run-wide names are fixed; some are
per agent (``agent.ID.*``), per resource (``resources.ID.*``) or per phase
(``phase.ID.*``). ``docs/metrics.md`` describes each one.
"""

from __future__ import annotations

from counterpoint.plan.model import Plan

TASK_STATES = ("pending", "ready", "running", "retrying", "completed", "failed", "blocked")
TASK_STATES_ALL = (*TASK_STATES, "cancelled", "rolled_back")

#: name: what it measures (the docs table is built from the same words).
RUN_METRICS: dict[str, str] = {
    "tasks.total": "tasks in the plan",
    **{f"tasks.{s}": f"tasks {s} now" for s in TASK_STATES_ALL},
    "tasks.waiting": "ready tasks held back by the shared state (open conflicts, locked keys)",
    "tasks.completed_ratio": "completed tasks over all tasks (0 to 1)",
    "tasks.failed_ratio": "failed tasks over all tasks (0 to 1)",
    "tasks.retried": "attempts retried so far",
    "tasks.requeued": "attempts put back in the queue after their agent was lost, so far",
    "tasks.duration_mean_s": "mean duration of completed attempts, seconds",
    "queue.depth": "ready tasks waiting for an agent or resources",
    "queue.oldest_wait_s": "how long the oldest ready task has waited, seconds",
    "queue.wait_s": "mean wait from ready to started of the tasks started since the last sample",
    "dispatch.latency_ms": (
        "mean time from ready to started of the tasks that found an agent and their "
        "resources free, since the last sample (the engine's own overhead), milliseconds"
    ),
    "agents.total": "agents in the plan",
    "agents.available": "agents with a free slot",
    "agents.busy": "agents with every slot taken",
    "agents.maintenance": "agents put in maintenance",
    "agents.lost": "remote agents lost (silent past their heartbeats)",
    "agents.offline": "remote agents not connected",
    "agents.utilization": "slots in use over the slots of agents able to work (0 to 1)",
    "resources.waiting": "ready tasks waiting for resources",
    "messages.total": "messages sent on the run's bus so far",
    "messages.status_update": "status updates so far",
    "messages.request": "requests so far",
    "messages.response": "responses so far",
    "messages.notification": "notifications so far",
    "conflicts.open": "data conflicts not decided yet",
    "conflicts.total": "data conflicts detected so far",
    "escalations.open": "escalation cases open",
    "escalations.total": "escalation cases opened so far",
    "gates.evaluations": "gate evaluations so far",
    "gates.waiting": "gates waiting for approvals",
    "gates.held": "gates that did not pass and hold work back (blocked, incomplete, waiting)",
    "alerts.firing": "alerts firing now",
    "rollbacks.total": "rollbacks started so far",
    "rollbacks.running": "rollbacks going on now",
    "compensations.done": "compensations (rollback: actions) that undid their task",
    "compensations.failed": "compensations that failed after their retries",
    "rollbacks.success_rate": (
        "rollbacks that did their job over those that ended: compensations, and the state "
        "directory's configuration, deployment and runbook rollbacks (1 when none ended)"
    ),
    "run.elapsed_s": "seconds since the run (or its resume) started",
}

AGENT_METRICS: dict[str, str] = {
    "running": "attempts the agent runs now",
    "utilization": "its slots in use over its capacity (0 to 1)",
    "completed": "attempts it completed so far",
    "duration_mean_s": "mean duration of the attempts it completed, seconds",
}

RESOURCE_METRICS: dict[str, str] = {
    "in_use": "units held now (counted and exclusive resources)",
    "utilization": "units held over capacity (0 to 1; counted and exclusive resources)",
    "waiting": "ready tasks waiting for this resource",
}

PHASE_METRICS: dict[str, str] = {
    "completed_ratio": "the phase's completed tasks over its tasks (0 to 1)",
    "failed": "the phase's failed tasks",
    "duration_mean_s": "mean duration of the phase's completed attempts, seconds",
}


def alert_metrics(plan: Plan) -> list[str]:
    """Every metric name a run of ``plan`` samples, in the order they are documented."""
    names = list(RUN_METRICS)
    names += [f"agent.{a}.{m}" for a in plan.agents for m in AGENT_METRICS]
    names += [f"resources.{r}.{m}" for r in plan.resources for m in RESOURCE_METRICS]
    names += [f"phase.{p.id}.{m}" for p in plan.phases for m in PHASE_METRICS]
    return names
