"""Rich renderings of analysis results for the terminal (kept out of the library and the CLI)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from counterpoint.errors import Problem, Severity
from counterpoint.plan.analysis import MilestoneRow, Overlap
from counterpoint.plan.graph import Graph
from counterpoint.plan.schedule import Schedule

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
