"""Simulated agents for the cloud-migration example.

No cloud API is called: each agent works for its task's estimate scaled by the
run's ``--time-scale`` (at most eight seconds), reporting progress as it goes, and
returns deterministic findings, including a plausible value for every
shared-state key the task declares in ``writes``. Runs are therefore
repeatable, so the example doubles as a demo and a test fixture.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from typing import Any

from counterpoint.agents import TaskContext
from counterpoint.plan.model import Task

Result = dict[str, Any]

STATUS_EVERY_S = 3600.0  # plan seconds between two status updates

#: A plausible value for every shared-state key the plan writes.
_STATE: dict[str, object] = {
    "team.skills": {"aws_certified": 4, "gaps": ["kubernetes", "finops"]},
    "team.channels": ["#migration", "#migration-alerts", "weekly-steering"],
    "docs.structure": ["foundation", "architecture", "planning", "implementation", "validation"],
    "aws.accounts": {
        "shared-services": "111111111111",
        "staging": "222222222222",
        "production": "333333333333",
    },
    "iam.roles": ["MigrationAdmin", "PipelineDeployer", "ReadOnlyAuditor", "AgentRunner"],
    "security.baseline": {"cloudtrail": True, "config_rules": 42, "guardduty": True},
    "monitoring.stack": {"metrics": "cloudwatch", "logs": "opensearch", "paging": "sns"},
    "requirements.inventory": {"applications": 37, "databases": 12, "servers": 148},
    "requirements.workloads": {"web": 14, "batch": 9, "data": 8, "legacy": 6},
    "requirements.gaps": ["RPO for billing", "peak load for reporting"],
    "requirements.signoff": {"business_owners": 6, "approved": 6},
    "architecture.compute": "ecs-fargate",
    "architecture.database": "aurora-postgresql",
    "architecture.storage": "s3-intelligent-tiering",
    "architecture.network": "hub-and-spoke transit gateway",
    "network.vpc_cidr": "10.40.0.0/16",
    "architecture.blueprint": "blueprint-v1",
    "security.architecture": {"kms": "per-account keys", "segmentation": "three-tier subnets"},
    "architecture.integrations": {"apis": 11, "queues": 4, "batch_transfers": 3},
    "review.design_findings": {"high": 2, "medium": 7, "low": 12},
    "security.assessment": {"threats": 18, "mitigated": 16},
    "review.performance": {"p95_latency_ms": 180, "target_ms": 250},
    "cost.estimate": {"monthly_usd": 48500},
    "migration.strategy": {"rehost": 15, "replatform": 12, "refactor": 4, "retire": 6},
    "migration.waves": ["wave-1", "wave-2", "wave-3"],
    "risk.register": {"risks": 23, "critical": 3},
    "plan.staffing": {"wave-1": 6, "wave-2": 8, "wave-3": 5},
    "docs.architecture": "docs/architecture.md",
    "docs.implementation": "docs/implementation-guides.md",
    "docs.runbooks": "docs/runbooks.md",
    "docs.training": "docs/training.md",
    "testing.environment": "test-eu-west-1",
    "testing.cases": {"functional": 210, "integration": 64},
    "testing.performance_plan": {"profiles": ["baseline", "peak", "soak"]},
    "testing.security_plan": {"pentest": True, "scans": ["cis", "pci"]},
    "env.dev": "dev-eu-west-1",
    "env.test": "test-eu-west-1",
    "env.prod": "prod-eu-west-1",
    "ci.pipeline": "pipelines/migration",
    "infra.stack_outputs": {"stacks": 9, "alb_dns": "migration-alb.example.internal"},
    "network.vpc_id": "vpc-0a1b2c3d4e5f60718",
    "app.endpoints": ["https://orders.example.internal", "https://billing.example.internal"],
    "security.controls": {"waf_rules": 24, "kms_keys": 6, "permission_boundaries": 4},
    "monitoring.dashboards": 8,
    "monitoring.alarms": 57,
    "testing.integration_results": {"passed": 62, "failed": 2},
    "testing.performance_results": {"p95_latency_ms": 165, "peak_rps": 2400},
    "testing.security_results": {"critical": 0, "high": 1},
    "testing.uat_signoff": {"scenarios": 48, "accepted": 48},
    "review.final_findings": {"high": 0, "medium": 3, "low": 9},
    "validation.performance": "targets met",
    "validation.security": "controls effective",
    "cost.actuals": {"monthly_usd": 51200},
    "optimization.performance": {"rightsized_services": 5},
    "optimization.cost": {"monthly_savings_usd": 7300},
    "security.enhancements": {"policies_tightened": 9},
    "cutover.plan": {"window": "Saturday 22:00-04:00", "rollback_trigger": "error rate > 2%"},
    "app.production_release": "release-2024.1",
    "docs.support": "docs/support.md",
    "handover.attendance": {"sessions": 4, "engineers": 12},
}

#: Values that differ because a later task rewrites a key an earlier one wrote.
_TASK_STATE: dict[str, dict[str, object]] = {
    "operational-improvements": {"monitoring.alarms": 41},
}


def _value(task: Task, key: str) -> object:
    """The simulated value ``task`` writes to ``key``."""
    return _TASK_STATE.get(task.id, {}).get(key, _STATE.get(key, f"simulated {key}"))


def _figure(task: Task, low: int, high: int) -> int:
    """A stable pseudo-random number in [low, high] derived from the task id."""
    return low + zlib.crc32(task.id.encode()) % (high - low + 1)


async def _simulate(task: Task, ctx: TaskContext, verb: str, findings: dict[str, object]) -> Result:
    """Work for the task's (scaled) estimate, reporting progress, then return ``findings``."""
    # A status update at least every hour of plan time: the plan's status_every (the
    # seed's 2 h) calls a task silent for longer stalled.
    planned_s = ctx.estimate_s / ctx.time_scale if ctx.time_scale else ctx.estimate_s
    steps = max(4, math.ceil(planned_s / STATUS_EVERY_S))
    for step in range(1, steps + 1):
        await asyncio.sleep(min(ctx.estimate_s, 8.0) / steps)
        ctx.progress(round(100 * step / steps, 1), f"{verb.lower()} step {step} of {steps}")
    result: Result = {"summary": f"{verb} {task.title}", "findings": findings}
    if task.writes:
        result["writes"] = {key: _value(task, key) for key in task.writes}
    return result


async def plan(task: Task, ctx: TaskContext) -> Result:
    """Planner: assessments, plans, stakeholder sessions and hand-overs."""
    return await _simulate(
        task, ctx, "Planned", {"meetings": _figure(task, 2, 8), "actions": _figure(task, 5, 20)}
    )


async def discover(task: Task, ctx: TaskContext) -> Result:
    """Discovery: inventories the estate and its dependencies."""
    return await _simulate(
        task, ctx, "Discovered", {"systems": _figure(task, 30, 60), "dependencies": 212}
    )


async def review(task: Task, ctx: TaskContext) -> Result:
    """Reviewer: checks work against review frameworks and lists findings."""
    return await _simulate(task, ctx, "Reviewed", {"findings": _figure(task, 3, 15)})


async def design(task: Task, ctx: TaskContext) -> Result:
    """Architect: selects services and designs the target architecture."""
    return await _simulate(
        task, ctx, "Designed", {"options_compared": _figure(task, 2, 5), "decision_records": 1}
    )


async def secure(task: Task, ctx: TaskContext) -> Result:
    """Security: baselines, controls, assessments and tests in every phase."""
    return await _simulate(
        task, ctx, "Secured", {"checks": _figure(task, 20, 80), "open_critical": 0}
    )


async def monitor(task: Task, ctx: TaskContext) -> Result:
    """Monitoring: observability set up early and tuned throughout."""
    return await _simulate(task, ctx, "Instrumented", {"alarms_changed": _figure(task, 5, 40)})


async def document(task: Task, ctx: TaskContext) -> Result:
    """Documentation: writes documents while other agents implement."""
    return await _simulate(task, ctx, "Documented", {"pages": _figure(task, 8, 60)})


async def verify(task: Task, ctx: TaskContext) -> Result:
    """Testing: test plans, functional, integration and performance tests."""
    return await _simulate(
        task, ctx, "Tested", {"cases_run": _figure(task, 20, 200), "defects": _figure(task, 0, 4)}
    )


async def deploy(task: Task, ctx: TaskContext) -> Result:
    """Deployment: accounts, environments, pipelines and releases."""
    return await _simulate(
        task, ctx, "Deployed", {"resources_changed": _figure(task, 10, 120), "drift": 0}
    )


async def optimize(task: Task, ctx: TaskContext) -> Result:
    """Optimizer: cost reviews and performance or cost optimisations."""
    return await _simulate(task, ctx, "Optimised", {"recommendations": _figure(task, 3, 12)})
