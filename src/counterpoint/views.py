"""Rich renderings of analysis results for the terminal (kept out of the library and the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from counterpoint.errors import Problem, Severity
from counterpoint.plan.analysis import MilestoneRow, Overlap
from counterpoint.plan.graph import Graph
from counterpoint.plan.schedule import CP_SAT, GENETIC, Schedule

if TYPE_CHECKING:
    from counterpoint.plan.capacity import Bottleneck, Scenario

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow"}


def problems_text(problems: Sequence[Problem]) -> Text:
    out = Text()
    for p in problems:
        out.append(f"{p.where}: ", style="bold")
        out.append(f"{p.severity.value}: ", style=_STYLE[p.severity])
        if p.path:
            out.append(f"{p.dotted_path}: ", style="cyan")
        out.append(p.message)
        if p.hint:
            out.append(f" ({p.hint})", style="dim")
        out.append("\n")
    return out


def summary_line(name: str, counts: dict[str, int], warnings: int) -> str:
    parts = ", ".join(f"{counts[k]} {k}" for k in ("phases", "milestones", "tasks", "agents"))
    note = f", {warnings} warning{'s' * (warnings != 1)}" if warnings else ""
    return f"{name}: ok: {parts}{note}"


class Clock:
    """Formats plan times in one unit chosen for the plan's length (days, hours or minutes)."""

    def __init__(self, span_s: float) -> None:
        unit = "d" if span_s >= 2 * 86400 else "h" if span_s >= 2 * 3600 else "m"
        self.unit, self.size = unit, {"d": 86400.0, "h": 3600.0, "m": 60.0}[unit]

    def __call__(self, seconds: float) -> str:
        value = f"{seconds / self.size:.2f}".rstrip("0").rstrip(".")
        return f"{value}{self.unit}"


def critical_path_table(graph: Graph, path: list[str]) -> Table:
    days = Clock(graph.critical_path_s)
    table = Table(title=f"Critical path: {len(path)} tasks, {days(graph.critical_path_s)}")
    for column in ("#", "task", "phase", "milestone", "estimate", "start", "finish"):
        table.add_column(column, justify="right" if column in ("#", "estimate") else "left")
    for i, tid in enumerate(path, 1):
        t = graph.index[tid]
        table.add_row(
            str(i),
            tid,
            graph.plan.phases[graph.phase_of_task[t]].id,
            graph.milestones[graph.milestone_of_task[t]].id,
            days(graph.duration[t]),
            days(graph.es[t]),
            days(graph.ef[t]),
        )
    return table


def tasks_table(graph: Graph, sched: Schedule, limit: int) -> Table:
    days = Clock(graph.critical_path_s)
    order = sorted(range(graph.n_tasks), key=lambda t: (graph.es[t], t))
    shown = order if limit <= 0 else order[:limit]
    title = "Tasks: earliest start and slack (dependencies only), scheduled start (with resources)"
    table = Table(title=title, caption=_more(len(order) - len(shown)))
    for column in ("task", "priority", "estimate", "earliest start", "slack", "scheduled", "agent"):
        table.add_column(column)
    for t in shown:
        slack = max(0.0, graph.ls[t] - graph.es[t])
        table.add_row(
            graph.task_ids[t],
            graph.plan.effective(graph.tasks[t]).priority.value,
            days(graph.duration[t]),
            days(graph.es[t]),
            Text(days(slack), style="bold red" if slack <= 1e-9 else ""),
            days(sched.start_s[t]),
            sched.agent[t] or "-",
        )
    return table


def _more(hidden: int) -> str:
    return f"{hidden} more tasks not shown (--limit 0 shows all)" if hidden > 0 else ""


def matrix_tables(graph: Graph, rows: Sequence[MilestoneRow], limit: int) -> list[Table | Text]:
    """The parallel execution matrix, one table per phase as in the seed's section 1.1."""
    days = Clock(graph.critical_path_s)
    tables: list[Table | Text] = [
        Text("Parallel execution matrix", style="bold"),
    ]
    for phase in graph.plan.phases:
        mine = [r for r in rows if r.phase == phase.id]
        start = min((r.start_s for r in mine), default=0.0)
        finish = max((r.finish_s for r in mine), default=0.0)
        table = Table(
            title=f"Phase {escape(phase.title)}: {days(start)} - {days(finish)}", show_lines=True
        )
        for column in ("milestone", "parallel tasks (wave: side by side)", "after", "resources"):
            table.add_column(column)
        for row in mine:
            table.add_row(
                Text(
                    f"{row.milestone} {row.title}" if row.title != row.milestone else row.milestone
                ),
                _waves(row.waves, limit),
                ", ".join(row.after) or "-",
                ", ".join(row.resources) or "-",
            )
        tables.append(table)
    return tables


def _waves(waves: list[list[str]], limit: int) -> Text:
    text = Text()
    for i, wave in enumerate(waves, 1):
        shown = wave if limit <= 0 or len(wave) <= limit else wave[:limit]
        more = f", +{len(wave) - len(shown)} more" if len(shown) < len(wave) else ""
        text.append(f"{i}: ", style="dim")
        text.append(", ".join(shown) + more + ("\n" if i < len(waves) else ""))
    return text or Text("-")


def overlap_table(graph: Graph, found: Sequence[Overlap], limit: int) -> Table:
    days = Clock(graph.critical_path_s)
    table = Table(title="Cross-phase overlap opportunities (if the phase allowed overlap: true)")
    for column in ("phase", "next phase", "could start early", "plan ends sooner by"):
        table.add_column(column)
    for item in found:
        best = sorted(item.tasks, key=lambda e: -e.saved_s)
        shown = best if limit <= 0 else best[:limit]
        text = ", ".join(f"{e.task} (-{days(e.saved_s)})" for e in shown)
        if len(shown) < len(best):
            text += f", +{len(best) - len(shown)} more"
        table.add_row(item.phase, item.next_phase, text, days(item.makespan_saved_s))
    return table


def schedule_summary(graph: Graph, sched: Schedule) -> Text:
    days = Clock(max(graph.critical_path_s, sched.makespan_s))
    stretch = sched.makespan_s - graph.critical_path_s
    text = Text()
    text.append("Resource-feasible schedule: ", style="bold")
    text.append(f"makespan {days(sched.makespan_s)}")
    text.append(f" (critical path {days(graph.critical_path_s)}")
    text.append(f", +{days(stretch)} waiting for agents and resources)" if stretch > 0 else ")")
    return text


def print_all(console: Console, *renderables: object) -> None:
    for item in renderables:
        console.print(item)


_METHODS = {
    "priority-rule": "one pass of the parallel schedule generation (priority rules)",
    GENETIC: "the genetic algorithm (serial schedule generation, justification)",
    CP_SAT: "OR-Tools CP-SAT",
}


def search_summary(graph: Graph, sched: Schedule, seed: int, time_limit: float) -> list[Text]:
    """The lower bound, whether the schedule is optimal, and how it was found."""
    days = Clock(max(graph.critical_path_s, sched.makespan_s))
    bound = Text()
    bound.append("Lower bound: ", style="bold")
    bound.append(days(sched.lower_bound_s))
    if sched.optimal:
        bound.append(": the schedule is optimal", style="bold green")
    elif sched.lower_bound_s > 0:
        gap = sched.makespan_s - sched.lower_bound_s
        share = 100.0 * gap / sched.lower_bound_s
        bound.append(f": the schedule is at most {days(gap)} ({share:.1f}%) longer than optimal")
    how = Text(style="dim")
    how.append(f"Found by {_METHODS.get(sched.method, sched.method)}")
    if sched.stopped == "not supported":
        how.append("; the plan is too large (or too unusual) for the search")
    elif sched.stopped and not sched.schedules:
        how.append("; no search was needed (it meets the lower bound)")
    elif sched.stopped:
        none = " without finding a shorter one" if sched.method == "priority-rule" else ""
        how.append(
            f"; the search made {sched.schedules:,} schedules{none} (time limit "
            f"{time_limit:g} s, seed {seed}) and stopped: {sched.stopped}"
        )
    return [bound, how]


def bottleneck_table(
    graph: Graph, sched: Schedule, neck: Bottleneck, limit: int = 5
) -> Table | Text:
    """The agents and resources whose one more unit shortens the schedule most."""
    days = Clock(max(graph.critical_path_s, sched.makespan_s))
    if not neck.computed:
        return Text("Bottleneck: not analysed (the plan is too large)", style="dim")
    if not neck.reliefs:
        if sched.makespan_s <= graph.critical_path_s + 1e-6:
            why = "the schedule already follows the critical path"
        else:
            why = "no single extra agent slot or resource unit shortens the schedule"
        return Text(f"Bottleneck: none ({why})")
    table = Table(title="Bottleneck: one more unit of capacity would shorten the schedule most")
    for column in ("kind", "name", "capacity", "makespan", "shorter by"):
        table.add_column(column, justify="right" if column in ("capacity",) else "left")
    for r in neck.reliefs[:limit]:
        table.add_row(
            r.kind, r.name, f"{r.capacity} -> {r.capacity + 1}", days(r.makespan_s), days(r.saved_s)
        )
    return table


def what_if_table(graph: Graph, sched: Schedule, scenarios: Sequence[Scenario]) -> list[Table]:
    """The makespan under each ``--what-if`` beside the current one."""
    if not scenarios:
        return []
    spans = [s.makespan_s for s in scenarios if s.makespan_s is not None]
    days = Clock(max([graph.critical_path_s, sched.makespan_s, *spans]))
    table = Table(title="What if: the makespan with other capacities")
    for column in ("capacities", "makespan", "change", "lower bound"):
        table.add_column(column)
    table.add_row("current", days(sched.makespan_s), "-", days(sched.lower_bound_s))
    for s in scenarios:
        label = ", ".join(c.text for c in s.changes)
        if s.makespan_s is None:
            table.add_row(label, Text("no schedule", style="bold red"), escape(s.error), "-")
            continue
        delta = s.makespan_s - sched.makespan_s
        change = "same" if abs(delta) <= 1e-6 else f"{'+' if delta > 0 else '-'}{days(abs(delta))}"
        style = "green" if delta < -1e-6 else "red" if delta > 1e-6 else ""
        bound = days(s.lower_bound_s) if s.lower_bound_s is not None else "-"
        table.add_row(
            label,
            days(s.makespan_s) + (" (optimal)" if s.optimal else ""),
            Text(change, style=style),
            bound,
        )
    return [table]


def capacity_json(
    sched: Schedule,
    neck: Bottleneck,
    scenarios: Sequence[Scenario],
    seed: int,
    time_limit: float,
) -> dict[str, Any]:
    """The keys ``plan --json`` adds for the schedule's quality and capacity planning."""
    return {
        "lower_bound_s": sched.lower_bound_s,
        "optimal": sched.optimal,
        "method": sched.method,
        "search": {
            "seed": seed,
            "time_limit_s": time_limit,
            "schedules": sched.schedules,
            "stopped": sched.stopped,
        },
        "bottleneck": [
            {
                "kind": r.kind,
                "name": r.name,
                "capacity": r.capacity,
                "makespan_s": r.makespan_s,
                "saved_s": r.saved_s,
            }
            for r in neck.reliefs
        ],
        "what_if": [
            {
                "changes": {c.path: c.value for c in s.changes},
                "makespan_s": s.makespan_s,
                "lower_bound_s": s.lower_bound_s,
                "optimal": s.optimal,
                **({"error": s.error} if s.error else {}),
            }
            for s in scenarios
        ],
    }
