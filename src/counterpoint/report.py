"""The run report: KPIs, per-phase figures, planned and actual Gantt charts, conflicts,
escalations, gate reports, alerts and rollbacks of one run, read from its journal.

:func:`build_report` reads the SQLite journal of a run into a :class:`Report` whose
``data`` is the JSON document (its ``kpis`` keys are a contract); :func:`render` turns
it into Markdown, one self-contained HTML file (the charts are inline SVG) or JSON.

A ``since``/``until`` window (epoch seconds) limits what is considered: attempts that
started inside it, events, conflicts and escalations recorded inside it.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from counterpoint.durations import format_duration
from counterpoint.errors import CounterpointError
from counterpoint.gantt import GanttBar, GanttChart, gantt_svg
from counterpoint.plan.graph import Graph
from counterpoint.plan.model import Plan
from counterpoint.plan.schedule import Schedule, schedule
from counterpoint.rollback import rollback_outcomes
from counterpoint.runtime.alerts import read_alerts
from counterpoint.runtime.canvass import read_questions
from counterpoint.runtime.compensation import compensation_outcomes, read_rollbacks
from counterpoint.runtime.escalation import SCHEMA as ESCALATION_SCHEMA
from counterpoint.runtime.governor import read_usage, usage_text, usage_totals
from counterpoint.runtime.sampling import read_samples, summary
from counterpoint.runtime.spawning import read_spawned, run_graph
from counterpoint.runtime.state import read_conflicts
from counterpoint.runtime.voting import read_decisions
from counterpoint.store.sqlite import RunRecord, SqliteStore, TaskRecord

FORMATS = ("md", "html", "json")
SUFFIXES = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".json": "json"}
NO_ROLLBACKS = "no rollbacks"
NO_ALERTS = "no alerts were recorded"


class ReportError(CounterpointError):
    """The report cannot be made (a bad time, a journal without the run's plan)."""


#: An attempt is on time when it took at most its estimate (scaled) plus 10%, plus 50 ms
#: for starting it: overhead is not lateness, even under a tiny --time-scale.
ON_TIME_GRACE = 0.10
ON_TIME_SLACK_S = 0.05


def parse_time(text: str) -> float:
    """Epoch seconds of an ISO 8601 time (``2024-05-01T12:00``, ``...Z``, ``...+02:00``);
    a time without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"{text!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_for(output: str | None, fmt: str | None) -> str:
    """The format to write: ``fmt`` if given, else from the suffix of ``output``, else md."""
    if fmt is not None:
        return fmt
    if output is not None:
        for suffix, name in SUFFIXES.items():
            if output.lower().endswith(suffix):
                return name
    return "md"


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Attempt:
    task: str
    attempt: int
    agent: str | None
    started: float
    finished: float | None
    status: str

    def end(self, now: float) -> float:
        """When it finished (still running: ``now``)."""
        return self.finished if self.finished is not None else max(now, self.started)


@dataclass
class Report:
    """The JSON document and the two Gantt charts drawn from it."""

    data: dict[str, Any]
    actual: GanttChart
    planned: GanttChart | None = None
    notes: list[str] = field(default_factory=list)


def _in(ts: float | None, since: float | None, until: float | None) -> bool:
    if ts is None:
        return False
    return (since is None or ts >= since) and (until is None or ts <= until)


def _rate(num: int | float, den: int | float) -> float | None:
    return round(num / den, 6) if den > 0 else None


def _p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _attempts(
    store: SqliteStore, run_id: int, since: float | None, until: float | None
) -> list[Attempt]:
    rows = store.query(
        "SELECT task, attempt, agent, started, finished, status FROM attempts WHERE run_id = ?"
        " ORDER BY started, task, attempt",
        (run_id,),
    )
    found = [Attempt(r[0], int(r[1]), r[2], float(r[3]), r[4], str(r[5])) for r in rows]
    return [a for a in found if _in(a.started, since, until)]


def _events(
    store: SqliteStore, run_id: int, kind: str, since: float | None, until: float | None
) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT ts, data FROM events WHERE run_id = ? AND kind = ? ORDER BY seq", (run_id, kind)
    )
    return [
        {"ts": r[0], **(json.loads(r[1]) if r[1] else {})} for r in rows if _in(r[0], since, until)
    ]


def _overlaps(start: float, end: float | None, since: float | None, until: float | None) -> bool:
    """The span ``start`` to ``end`` (None: still going) meets the report's window."""
    return (until is None or start <= until) and (since is None or end is None or end >= since)


#: The metrics the report sums up (all of them are in ``counterpoint metrics``).
REPORT_METRICS = (
    "tasks.running",
    "queue.depth",
    "queue.wait_s",
    "dispatch.latency_ms",
    "agents.utilization",
    "resources.waiting",
    "tasks.waiting",
    "conflicts.open",
    "escalations.open",
    "alerts.firing",
    "messages.total",
)


def _metric_summary(
    store: SqliteStore, run_id: int, since: float | None, until: float | None
) -> dict[str, Any]:
    samples = read_samples(store, run_id, since, until)
    return {"samples": len(samples), "summary": summary(samples, REPORT_METRICS)}


def _rollbacks(
    store: SqliteStore, run_id: int, since: float | None, until: float | None
) -> list[dict[str, Any]]:
    """The run's rollbacks (compensations of its tasks) that overlap the window."""
    return [
        rb
        for rb in read_rollbacks(store, run_id)
        if _overlaps(rb["started"], rb["finished"], since, until)
    ]


def _rollback_rate(rollbacks: list[dict[str, Any]], others: list[dict[str, Any]]) -> float | None:
    """Rollbacks that did what they had to, over all that ended: the run's compensations,
    and the configuration and deployment rollbacks of its state directory."""
    outcomes = compensation_outcomes(rollbacks) + [bool(o["ok"]) for o in others]
    return _rate(sum(outcomes), len(outcomes))


def _escalations(
    store: SqliteStore, run_id: int, since: float | None, until: float | None
) -> list[dict[str, Any]]:
    store.ensure_schema(ESCALATION_SCHEMA)
    rows = store.query(
        "SELECT id, subject, kind, summary, level_name, status, opened, resolved"
        " FROM escalations WHERE run_id = ? ORDER BY id",
        (run_id,),
    )
    return [
        {
            "id": r[0],
            "subject": r[1],
            "kind": r[2],
            "summary": r[3],
            "level": r[4],
            "status": r[5],
            "opened": r[6],
            "resolved": r[7],
            "time_to_resolve_s": None if r[7] is None else round(max(0.0, r[7] - r[6]), 6),
        }
        for r in rows
        if _in(r[6], since, until)
    ]


def coordination_of(
    store: SqliteStore,
    run_id: int,
    plan: Plan,
    since: float | None = None,
    until: float | None = None,
) -> dict[str, Any]:
    """The run's calls for proposals (contract net): per call, the task, every agent's
    answer (bid, refusal, no answer) with its score, and the winner."""
    calls = []
    for q in read_questions(store, run_id, "cfp"):
        if not _in(q["asked"], since, until):
            continue
        outcome = q["outcome"] or {}
        answers = []
        for a in q["answers"]:
            body = a["answer"] or {}
            answers.append(
                {
                    "agent": a["agent"],
                    "status": a["status"],
                    "via": a["via"],
                    "duration_s": body.get("duration_s"),
                    "cost": body.get("cost"),
                    "load": body.get("load"),
                    "score": a["score"],
                    "reason": body.get("refuse"),
                    "error": a["error"],
                }
            )
        calls.append(
            {
                "call": q["id"],
                "task": q["subject"],
                "round": q["round"],
                "attempt": q["body"].get("attempt"),
                "asked": q["asked"],
                "status": q["status"],
                "agents": q["agents"],
                "winner": outcome.get("winner"),
                "score": outcome.get("score"),
                "answers": answers,
            }
        )
    return {"mode": plan.settings.coordination, "calls": calls}


_COORDINATION_HEAD = ["call", "task", "round", "agent", "answer", "duration", "cost", "load"]
_COORDINATION_HEAD += ["score", "result"]


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _coordination_rows(d: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in d.get("coordination", {}).get("calls", []):
        if not c["answers"]:
            rows.append([str(c["call"]), c["task"], str(c["round"]), "-", c["status"]] + ["-"] * 5)
        for a in c["answers"]:
            if a["agent"] == c["winner"]:
                result = "won"
            elif a["status"] == "proposal":
                result = "rejected" if c["winner"] else (a["error"] or "not chosen")
            elif a["status"] == "refusal":
                result = f"refused: {a['reason'] or '-'}"
            elif a["status"] == "none":
                result = "no answer"
            else:
                result = f"{a['status']}: {a['error'] or '-'}"
            rows.append(
                [
                    str(c["call"]),
                    c["task"],
                    str(c["round"]),
                    a["agent"],
                    a["status"],
                    _num(a["duration_s"]),
                    _num(a["cost"]),
                    _num(a["load"]),
                    _num(a["score"]),
                    result,
                ]
            )
    return rows


def _decision_rows(d: dict[str, Any]) -> list[list[str]]:
    def show(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    rows = []
    for x in d.get("decisions", []):
        votes = "; ".join(
            f"{voter}: {'-' if vote is None else show(vote)}" for voter, vote in x["votes"].items()
        )
        by = (x["resolution"] or {}).get("by")
        if x["status"] in ("decided", "resolved"):
            result = show(x["result"]) + (f" (by {by})" if by and by != "vote" else "")
        else:
            result = x["status"] + (f": {x['reason']}" if x["reason"] else "")
        rows.append(
            [
                str(x["id"]),
                x["source"],
                x["question"],
                ", ".join(show(o) for o in x["options"]),
                f"{x['quorum']} of {len(x['voters'])}",
                votes or "-",
                result,
            ]
        )
    return rows


def _sum_usage(into: dict[str, dict[str, float]], key: str, usage: dict[str, Any]) -> None:
    bucket = into.setdefault(key, {})
    for name, value in usage.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            bucket[name] = bucket.get(name, 0) + value


def build_report(
    store: SqliteStore,
    record: RunRecord,
    *,
    since: float | None = None,
    until: float | None = None,
    now: float | None = None,
) -> Report:
    """Everything the report shows about run ``record``, read from ``store``."""
    now = time.time() if now is None else now
    try:
        plan = Plan.model_validate_json(store.plan_json(record.id))
        graph = run_graph(plan, store, record.id)  # with the tasks the run spawned
    except (ValueError, CounterpointError) as exc:
        raise ReportError(f"the plan of run {record.id} cannot be read: {exc}") from None
    scale = float(record.options.get("time_scale", 1.0) or 1.0)
    tasks = store.tasks(record.id)
    attempts = _attempts(store, record.id, since, until)
    windowed = since is not None or until is not None
    by_task: dict[str, list[Attempt]] = {}
    for a in attempts:
        by_task.setdefault(a.task, []).append(a)
    completing = {
        a.task: a for a in attempts if a.status == "completed" and tasks.get(a.task) is not None
    }

    completed, on_time, timed = _completion(graph, tasks, completing, windowed, scale)
    first = min((a.started for a in attempts), default=None)
    last = max((a.end(now) for a in attempts), default=None)
    actual_s = round(last - first, 6) if first is not None and last is not None else None
    wall = (last - first) if first is not None and last is not None else 0.0
    agents_util, resources_util = _utilization(plan, graph, attempts, wall, now)
    total_busy = sum(v["busy_s"] for v in agents_util.values())
    total_cap = sum(v["capacity"] for v in agents_util.values())

    planned: Schedule | None
    try:
        planned = schedule(graph)
    except CounterpointError:
        planned = None

    rollbacks = _rollbacks(store, record.id, since, until)
    other_rollbacks = [
        o for o in rollback_outcomes(store) if _overlaps(o["started"], o["finished"], since, until)
    ]

    # -- conflicts ------------------------------------------------------------------------
    conflicts = [c for c in read_conflicts(store, record.id) if _in(c["detected"], since, until)]
    times = [float(c["resolution_time_s"]) for c in conflicts if c["resolution_time_s"] is not None]

    usage_agent, usage_phase = _usage(plan, graph, tasks, completing if windowed else None)

    data: dict[str, Any] = {
        "run": record.id,
        "plan": record.plan_name,
        "plan_path": record.plan_path,
        "status": record.status,
        "time_scale": scale,
        "window": {"since": since, "until": until},
        "kpis": {
            "task_completion_rate": _rate(len(completed), graph.n_tasks),
            "on_time_rate": _rate(on_time, timed),
            "resource_utilization": _rate(total_busy, total_cap * wall),
            "conflict_resolution_time_s": round(sum(times) / len(times), 6) if times else None,
            "conflict_resolution_time_p95_s": round(_p95(times), 6) if times else None,
            "rollback_success_rate": _rollback_rate(rollbacks, other_rollbacks),
        },
        "tasks": {"total": graph.n_tasks, "completed": len(completed), "on_time": on_time},
        "makespan": {
            "planned_s": planned.makespan_s if planned else None,
            "planned_scaled_s": round(planned.makespan_s * scale, 6) if planned else None,
            "actual_s": actual_s,
        },
        "utilization": {"agents": agents_util, "resources": resources_util},
        "usage": {"by_agent": usage_agent, "by_phase": usage_phase},
        "coding": usage_totals(read_usage(store, record.id)),  # every attempt, whole run
        "phases": _phases(plan, graph, tasks, by_task, planned, scale, now),
        "spawned": _spawned(store, record.id, tasks),
        "conflicts": conflicts,
        "escalations": _escalations(store, record.id, since, until),
        "coordination": coordination_of(store, record.id, plan, since, until),
        "decisions": [
            d for d in read_decisions(store, record.id) if _in(d["created"], since, until)
        ],
        "gates": _events(store, record.id, "gate_evaluated", since, until),
        "alerts": [
            a.to_json()
            for a in read_alerts(store, record.id)
            if _overlaps(a.fired, a.resolved, since, until)
        ],
        "metrics": _metric_summary(store, record.id, since, until),
        "rollbacks": rollbacks,
        "other_rollbacks": other_rollbacks,
    }
    return Report(
        data=data,
        actual=_actual_chart(plan, graph, attempts, first, now, actual_s),
        planned=_planned_chart(plan, graph, planned, scale) if planned else None,
    )


def _spawned(store: SqliteStore, run_id: int, tasks: dict[str, TaskRecord]) -> list[dict[str, Any]]:
    """The tasks the run's tasks spawned, with their parent and how they ended."""
    return [
        {
            "task": r.task.id,
            "parent": r.parent,
            "attempt": r.attempt,
            "depth": r.depth,
            "milestone": r.milestone,
            "state": "dropped"
            if r.dropped
            else tasks[r.task.id].state
            if r.task.id in tasks
            else "pending",
        }
        for r in read_spawned(store, run_id)
    ]


def _completion(
    graph: Graph,
    tasks: dict[str, TaskRecord],
    completing: dict[str, Attempt],
    windowed: bool,
    scale: float,
) -> tuple[list[str], int, int]:
    """Completed tasks, how many of them were on time, and how many could be timed."""
    if windowed:
        completed = [t for t in graph.task_ids if t in completing]
    else:
        completed = [t for t in graph.task_ids if t in tasks and tasks[t].state == "completed"]
    on_time = timed = 0
    for tid in completed:
        done = completing.get(tid)
        if done is None or done.finished is None:
            continue
        timed += 1
        allowed = graph.duration[graph.index[tid]] * scale * (1 + ON_TIME_GRACE)
        if done.finished - done.started <= allowed + ON_TIME_SLACK_S:
            on_time += 1
    return completed, on_time, timed


def _utilization(
    plan: Plan, graph: Graph, attempts: list[Attempt], wall: float, now: float
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Busy time over capacity x wall time, per agent and per counted resource."""
    capacities = {name: spec.capacity for name, spec in plan.agents.items()}
    busy: dict[str, float] = dict.fromkeys(capacities, 0.0)
    for a in attempts:
        name = a.agent or "(unassigned)"
        busy[name] = busy.get(name, 0.0) + (a.end(now) - a.started)
    agents: dict[str, dict[str, Any]] = {}
    for name, seconds in sorted(busy.items()):
        cap = capacities.get(name, 1)
        agents[name] = {
            "capacity": cap,
            "busy_s": round(seconds, 6),
            "utilization": _rate(seconds, cap * wall),
        }
    resources: dict[str, dict[str, Any]] = {}
    for rname, spec in plan.resources.items():
        if spec.capacity is None or spec.capacity <= 0:
            continue
        held = 0.0
        for a in attempts:
            t = graph.index.get(a.task)
            if t is not None:
                held += graph.tasks[t].resources.get(rname, 0) * (a.end(now) - a.started)
        resources[rname] = {
            "capacity": spec.capacity,
            "held_s": round(held, 6),
            "utilization": _rate(held, spec.capacity * wall),
        }
    return agents, resources


def _usage(
    plan: Plan,
    graph: Graph,
    tasks: dict[str, TaskRecord],
    only: dict[str, Attempt] | None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """The ``usage`` of task results summed per agent and per phase (``only``: these tasks)."""
    by_agent: dict[str, dict[str, float]] = {}
    by_phase: dict[str, dict[str, float]] = {}
    for tid, rec in tasks.items():
        usage = (rec.result or {}).get("usage")
        t = graph.index.get(tid)
        if not isinstance(usage, dict) or t is None or (only is not None and tid not in only):
            continue
        _sum_usage(by_agent, rec.agent or "(unassigned)", usage)
        _sum_usage(by_phase, plan.phases[graph.phase_of_task[t]].id, usage)
    return by_agent, by_phase


def _phases(
    plan: Plan,
    graph: Graph,
    tasks: dict[str, TaskRecord],
    by_task: dict[str, list[Attempt]],
    planned: Schedule | None,
    scale: float,
    now: float,
) -> list[dict[str, Any]]:
    rows = []
    for p, phase in enumerate(plan.phases):
        ids = [tid for t, tid in enumerate(graph.task_ids) if graph.phase_of_task[t] == p]
        states: dict[str, int] = {}
        for tid in ids:
            state = tasks[tid].state if tid in tasks else "pending"
            states[state] = states.get(state, 0) + 1
        planned_s = None
        if planned is not None and ids:
            idx = [graph.index[tid] for tid in ids]
            span = max(planned.finish_s[i] for i in idx) - min(planned.start_s[i] for i in idx)
            planned_s = round(span * scale, 6)
        ran = [a for tid in ids for a in by_task.get(tid, [])]
        actual = (
            round(max(a.end(now) for a in ran) - min(a.started for a in ran), 6) if ran else None
        )
        rows.append(
            {
                "phase": phase.id,
                "title": phase.title,
                "tasks": len(ids),
                "states": dict(sorted(states.items())),
                "planned_s": planned_s,
                "actual_s": actual,
            }
        )
    return rows


def _bar(
    plan: Plan,
    graph: Graph,
    tid: str,
    label: str,
    start: float,
    finish: float,
    agent: str | None,
    critical: bool = False,
) -> GanttBar:
    t = graph.index[tid]
    phase = plan.phases[graph.phase_of_task[t]]
    return GanttBar(
        task=tid,
        label=label,
        phase=phase.id,
        phase_label=phase.title,
        milestone=graph.milestones[graph.milestone_of_task[t]].id,
        start_s=start,
        finish_s=finish,
        agent=agent,
        critical=critical,
    )


def _actual_chart(
    plan: Plan,
    graph: Graph,
    attempts: list[Attempt],
    first: float | None,
    now: float,
    actual_s: float | None,
) -> GanttChart:
    bars = []
    for a in attempts:
        if a.task not in graph.index or first is None:
            continue
        title = graph.tasks[graph.index[a.task]].title
        label = title if a.status == "completed" else f"{title} (#{a.attempt} {a.status})"
        bars.append(
            _bar(plan, graph, a.task, label, a.started - first, a.end(now) - first, a.agent)
        )
    return GanttChart(title=f"{plan.name}: actual", bars=bars, makespan_s=actual_s or 0.0)


def _planned_chart(plan: Plan, graph: Graph, planned: Schedule, scale: float) -> GanttChart:
    critical = set(graph.critical_path())
    bars = [
        _bar(
            plan,
            graph,
            e.task,
            graph.tasks[graph.index[e.task]].title,
            e.start_s * scale,
            e.finish_s * scale,
            e.agent,
            e.task in critical,
        )
        for e in planned.entries()
    ]
    title = f"{plan.name}: planned" + (f" (estimates x {scale:g})" if scale != 1 else "")
    return GanttChart(title=title, bars=bars, makespan_s=planned.makespan_s * scale)


# --------------------------------------------------------------------------- rendering


def render(report: Report, fmt: str) -> str:
    """The report as ``md``, ``html`` or ``json`` text."""
    if fmt == "json":
        return json.dumps(report.data, indent=2) + "\n"
    if fmt == "html":
        return _html(report)
    return _markdown(report)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return format_duration(seconds) if seconds >= 1 else f"{seconds:.2f}s"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _coding_section(coding: dict[str, Any] | None) -> list[tuple[str, list[Table], str]]:
    """Cost and tokens of coding agents per run, phase, agent and task (when any ran)."""
    if not coding or not coding["run"]["attempts"]:
        return []
    rows = [["run", "all", usage_text(coding["run"])]]
    for scope in ("phase", "agent", "task"):
        rows += [[scope, n, usage_text(b)] for n, b in coding[f"by_{scope}"].items()]
    return [("Coding agents: cost and tokens", [(["by", "name", "cost and tokens"], rows)], "")]


def _usage_text(usage: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(usage.items())) or "-"


Table = tuple[list[str], list[list[str]]]


def _sections(report: Report) -> list[tuple[str, list[Table], str]]:
    """``(title, tables, note)`` of every section, shared by Markdown and HTML."""
    d = report.data
    k = d["kpis"]
    m = d["makespan"]
    kpi_rows = [
        ["task completion rate", _pct(k["task_completion_rate"])],
        ["on-time rate", _pct(k["on_time_rate"])],
        ["resource utilization", _pct(k["resource_utilization"])],
        [
            "conflict resolution time (mean / p95)",
            f"{_dur(k['conflict_resolution_time_s'])}"
            f" / {_dur(k['conflict_resolution_time_p95_s'])}",
        ],
        ["rollback success rate", _pct(k["rollback_success_rate"])],
        ["planned makespan", f"{_dur(m['planned_scaled_s'])} (plan time {_dur(m['planned_s'])})"],
        ["actual makespan", _dur(m["actual_s"])],
    ]
    util_rows = [
        ["agent", name, str(u["capacity"]), _dur(u["busy_s"]), _pct(u["utilization"])]
        for name, u in d["utilization"]["agents"].items()
    ] + [
        ["resource", name, str(u["capacity"]), _dur(u["held_s"]), _pct(u["utilization"])]
        for name, u in d["utilization"]["resources"].items()
    ]
    usage_rows = [["agent", n, _usage_text(u)] for n, u in d["usage"]["by_agent"].items()] + [
        ["phase", n, _usage_text(u)] for n, u in d["usage"]["by_phase"].items()
    ]
    phase_rows = [
        [
            p["phase"],
            str(p["tasks"]),
            ", ".join(f"{s} {n}" for s, n in p["states"].items()) or "-",
            _dur(p["planned_s"]),
            _dur(p["actual_s"]),
        ]
        for p in d["phases"]
    ]
    conflict_rows = [
        [
            str(c["id"]),
            c["key"],
            ", ".join(c["tasks"]),
            c["policy"],
            c["status"],
            str((c["resolution"] or {}).get("winner", "-")),
            _dur(c["resolution_time_s"]),
        ]
        for c in d["conflicts"]
    ]
    escalation_rows = [
        [
            str(e["id"]),
            e["subject"],
            e["kind"],
            e["summary"],
            e["level"],
            e["status"],
            _dur(e["time_to_resolve_s"]),
        ]
        for e in d["escalations"]
    ]
    gate_rows = [
        [
            _when(g.get("ts")),
            str(g.get("gate", "?")),
            str(g.get("status", "?")),
            "; ".join(
                f"{r.get('name', r.get('kind', '?'))}: {'ok' if r.get('ok') else 'not met'}"
                for r in g.get("results", [])
                if isinstance(r, dict)
            )
            or "-",
        ]
        for g in d["gates"]
    ]
    alert_rows = [
        [
            str(a["id"]),
            a["severity"],
            a["name"] + ("" if a["kind"] == "rule" else " (built-in)"),
            a["subject"],
            a["message"],
            _when(a["fired"]),
            "firing"
            if a["resolved"] is None
            else f"resolved after {_dur(a['resolved'] - a['fired'])}: {a['resolution']}",
        ]
        for a in d["alerts"]
    ]
    metric_rows = [
        [name, *(f"{s[k]:g}" for k in ("last", "min", "max", "mean"))]
        for name, s in d["metrics"]["summary"].items()
        if s is not None
    ]
    rollback_rows = [
        [
            _when(r["started"]),
            f"{r['scope_kind']} {r['scope']}" if r["scope_kind"] != "run" else "run",
            r["trigger"],
            r["status"],
            ", ".join(f"{c['task']} {c['status']}" for c in r["compensations"]) or "-",
            ("left undone: " + ", ".join(r["left_undone"])) if r["left_undone"] else "-",
        ]
        for r in d["rollbacks"]
    ] + [
        [
            _when(o["started"]),
            f"{o['kind']} {o['subject']}",
            "-",
            "ok" if o["ok"] else "failed",
            o["detail"],
            "-",
        ]
        for o in d["other_rollbacks"]
    ]
    return [
        ("KPIs", [(["KPI", "value"], kpi_rows)], ""),
        (
            "Utilization",
            [(["kind", "name", "capacity", "busy", "utilization"], util_rows)],
            "busy time over capacity x run wall time",
        ),
        ("Usage reported by agents", [(["by", "name", "usage"], usage_rows)], "no usage reported"),
        *_coding_section(d.get("coding")),
        (
            "Phases",
            [(["phase", "tasks", "states", "planned duration", "actual duration"], phase_rows)],
            "",
        ),
        (
            "Spawned tasks",
            [
                (
                    ["task", "parent", "attempt", "depth", "milestone", "state"],
                    [
                        [
                            s["task"],
                            s["parent"],
                            str(s["attempt"]),
                            str(s["depth"]),
                            s["milestone"],
                            s["state"],
                        ]
                        for s in d.get("spawned", [])
                    ],
                )
            ],
            "no task spawned subtasks",
        ),
        (
            "Conflicts",
            [(["id", "key", "tasks", "policy", "status", "winner", "resolved in"], conflict_rows)],
            "no conflicts",
        ),
        (
            "Escalations",
            [
                (
                    ["id", "subject", "kind", "summary", "level", "status", "resolved in"],
                    escalation_rows,
                )
            ],
            "no escalations",
        ),
        (
            "Coordination",
            [(_COORDINATION_HEAD, _coordination_rows(d))],
            f"no calls for proposals (coordination: {d.get('coordination', {}).get('mode')})",
        ),
        (
            "Decisions",
            [
                (
                    ["id", "asked by", "question", "options", "quorum", "votes", "result"],
                    _decision_rows(d),
                )
            ],
            "no decisions by vote",
        ),
        ("Gate reports", [(["time", "gate", "status", "conditions"], gate_rows)], "no gates"),
        (
            "Alerts",
            [(["id", "severity", "alert", "subject", "message", "fired", "status"], alert_rows)],
            NO_ALERTS,
        ),
        (
            "Metrics",
            [(["metric", "last", "min", "max", "mean"], metric_rows)],
            "no metric samples",
        ),
        (
            "Rollbacks",
            [(["started", "scope", "trigger", "status", "compensations", "undone"], rollback_rows)],
            NO_ROLLBACKS,
        ),
    ]


def _header_lines(report: Report) -> list[str]:
    d = report.data
    lines = [
        f"Run {d['run']} of {d['plan']} ({d['plan_path']}), status {d['status']}, "
        f"time scale {d['time_scale']:g}.",
        f"{d['tasks']['completed']} of {d['tasks']['total']} tasks completed.",
    ]
    w = d["window"]
    if w["since"] is not None or w["until"] is not None:
        lines.append(f"Window: {_when(w['since'])} to {_when(w['until'])}.")
    return lines


def _markdown(report: Report) -> str:
    out = [f"# Run report: {report.data['plan']}", "", *_header_lines(report), ""]
    for title, tables, note in _sections(report):
        out += [f"## {title}", ""]
        shown = [(h, rows) for h, rows in tables if rows]
        if not shown:
            out += [f"_{note}_", ""]
            continue
        for head, rows in shown:
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            out.append("")
    out += ["## Gantt (planned and actual)", ""]
    out += _gantt_table(report)
    return "\n".join(out) + "\n"


def _gantt_table(report: Report) -> list[str]:
    planned = {b.task: b for b in report.planned.bars} if report.planned else {}
    out = [
        "| task | phase | planned start | planned finish | actual start | actual finish | agent |",
        "|---|---|---|---|---|---|---|",
    ]
    actual = {b.task: b for b in report.actual.bars}
    for tid in [*planned, *(t for t in actual if t not in planned)]:
        p, a = planned.get(tid), actual.get(tid)
        shown = p or a
        phase = shown.phase if shown is not None else "-"
        out.append(
            f"| {_cell(tid)} | {_cell(phase)} | "
            + " | ".join(
                "-" if b is None else f"+{_dur(v)}"
                for b, v in (
                    (p, p.start_s if p else 0.0),
                    (p, p.finish_s if p else 0.0),
                    (a, a.start_s if a else 0.0),
                    (a, a.finish_s if a else 0.0),
                )
            )
            + f" | {_cell(a.agent if a and a.agent else '-')} |"
        )
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 14px; }
th { background: #f2f2f2; }
.note { color: #666; font-style: italic; }
.chart { overflow: auto; margin-bottom: 1rem; }
"""


def _inline_svg(chart: GanttChart) -> str:
    svg = gantt_svg(chart)
    return svg[svg.index("<svg") :]


def _html(report: Report) -> str:
    e = html.escape
    body = [f"<h1>Run report: {e(report.data['plan'])}</h1>"]
    body += [f"<p>{e(line)}</p>" for line in _header_lines(report)]
    for title, tables, note in _sections(report):
        body.append(f"<h2>{e(title)}</h2>")
        shown = [(h, rows) for h, rows in tables if rows]
        if not shown:
            body.append(f'<p class="note">{e(note)}</p>')
        for head, rows in shown:
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
            body.append("</table>")
    body.append("<h2>Gantt: planned</h2>")
    if report.planned is not None:
        body.append(f'<div class="chart">{_inline_svg(report.planned)}</div>')
    else:
        body.append('<p class="note">the plan could not be scheduled</p>')
    body.append("<h2>Gantt: actual</h2>")
    body.append(f'<div class="chart">{_inline_svg(report.actual)}</div>')
    title = e(f"Run report: {report.data['plan']}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


__all__ = [
    "FORMATS",
    "Report",
    "ReportError",
    "build_report",
    "format_for",
    "parse_time",
    "render",
]
