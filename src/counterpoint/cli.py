"""The ``counterpoint`` command line: parse arguments, call the library, render with rich.

Exit codes (a contract, see PLAN-FORMAT.md): 0 success; 1 the run finished with
failed or blocked tasks; 2 invalid input (plan, arguments); 3 cancelled or interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from counterpoint import __version__, views
from counterpoint.errors import ScheduleError
from counterpoint.plan.analysis import overlap_opportunities, parallel_matrix
from counterpoint.plan.graph import Graph
from counterpoint.plan.load import CheckReport, check_file
from counterpoint.plan.schedule import Schedule, schedule

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 3

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    sys.exit(code)


@contextmanager
def working(message: str) -> Iterator[None]:
    """A live spinner on stderr while long work runs (only on a terminal)."""
    if err.is_terminal:
        with err.status(message):
            yield
    else:
        yield


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="counterpoint")
def cli() -> None:
    """Run a phased plan of work across a pool of parallel agents, consistently."""


def _load(plan: str, *, quiet_ok: bool = True) -> CheckReport:
    with working(f"Checking {plan}"):
        report = check_file(plan)
    if report.problems:
        err.print(views.problems_text(report.problems), end="")
    if not report.ok:
        errors = len(report.errors)
        err.print(f"{escape(plan)}: {errors} error{'s' * (errors != 1)}", style="bold red")
        sys.exit(EXIT_INVALID)
    return report


@cli.command()
@click.argument("plan", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as one JSON object.")
def check(plan: str, as_json: bool) -> None:
    """Validate PLAN: print every problem with file:line:column (exit 2 if any is an error)."""
    if as_json:
        report = check_file(plan)
        out.print_json(data=_check_json(report))
        sys.exit(EXIT_OK if report.ok else EXIT_INVALID)
    report = _load(plan)
    assert report.plan is not None
    out.print(views.summary_line(plan, report.plan.counts(), len(report.warnings)), markup=False)


def _check_json(report: CheckReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "counts": report.plan.counts() if report.plan else None,
        "problems": [
            {
                "file": p.file,
                "line": p.line,
                "column": p.column,
                "severity": p.severity.value,
                "path": p.dotted_path,
                "message": p.message,
                "hint": p.hint,
            }
            for p in report.problems
        ],
    }


@cli.command()
@click.argument("plan", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as one JSON object.")
@click.option(
    "--gantt",
    type=click.Path(dir_okay=False, writable=True),
    help="Write a Gantt chart; the extension picks the format: .svg, .png or .html.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=40,
    show_default=True,
    help="Rows of the task table, and tasks per matrix or overlap cell (0 shows everything).",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds the schedule search may take (0: one priority-rule pass, no search).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the schedule search.")
@click.option(
    "--optimal",
    is_flag=True,
    help="Prove or improve the schedule with OR-Tools CP-SAT within the time limit "
    "(needs counterpoint[optimize]).",
)
@click.option(
    "--what-if",
    "what_if",
    multiple=True,
    metavar="PATH=VALUE",
    help="Also schedule with another capacity: agents.NAME.capacity=N, "
    "resources.NAME.capacity=N, resources.NAME.rate=X or settings.max_concurrency=N "
    "(repeatable; each alone, then all together).",
)
def plan(
    plan: str,
    as_json: bool,
    gantt: str | None,
    limit: int,
    time_limit: float,
    seed: int,
    optimal: bool,
    what_if: tuple[str, ...],
) -> None:
    """Analyse PLAN: critical path, slack, parallel matrix, overlaps and a feasible schedule."""
    from counterpoint.plan import capacity, cpsat

    if gantt is not None:
        _check_gantt_suffix(gantt)
    if optimal and not cpsat.available():
        fail(f"--optimal needs OR-Tools, which is not installed: {cpsat.INSTALL_HINT}")
    report = _load(plan)
    graph = report.graph
    assert graph is not None
    try:
        changes = [capacity.parse_change(graph.plan, text) for text in what_if]
    except capacity.WhatIfError as exc:
        fail(f"--what-if {exc}")
    with working("Scheduling"):
        try:
            sched = schedule(graph, time_limit=time_limit, seed=seed, optimal=optimal)
        except ScheduleError as exc:
            fail(str(exc))
        scenarios = capacity.what_if(graph, sched, changes, time_limit=time_limit, seed=seed)
        neck = capacity.bottleneck(graph, sched, seed=seed)
    path = graph.critical_path()
    if as_json:
        data = _plan_json(graph, sched, path)
        data.update(views.capacity_json(sched, neck, scenarios, seed, time_limit))
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        _print_plan(graph, sched, path, limit)
        views.print_all(
            out,
            *views.search_summary(graph, sched, seed, time_limit),
            views.bottleneck_table(graph, sched, neck),
            *views.what_if_table(graph, sched, scenarios),
        )
    if gantt is not None:
        _write_gantt(graph, sched, path, Path(gantt), quiet=as_json)


def _plan_json(graph: Graph, sched: Schedule, path: list[str]) -> dict[str, Any]:
    return {
        "tasks": graph.n_tasks,
        "critical_path": path,
        "critical_path_s": graph.critical_path_s,
        "makespan_s": sched.makespan_s,
        "schedule": sched.to_json(),
    }


def _print_plan(graph: Graph, sched: Schedule, path: list[str], limit: int) -> None:
    with working("Analysing"):
        matrix = parallel_matrix(graph)
        overlaps = overlap_opportunities(graph)
    tables: list[object] = [
        views.critical_path_table(graph, path),
        views.tasks_table(graph, sched, limit),
        *views.matrix_tables(graph, matrix, limit),
    ]
    if overlaps:
        tables.append(views.overlap_table(graph, overlaps, limit))
    tables.append(views.schedule_summary(graph, sched))
    views.print_all(out, *tables)


def _check_gantt_suffix(name: str) -> None:
    from counterpoint.gantt import SUPPORTED_FORMATS

    if Path(name).suffix.lower() not in SUPPORTED_FORMATS:
        fail(f"--gantt {name}: unknown chart format; use one of {', '.join(SUPPORTED_FORMATS)}")


def _write_gantt(graph: Graph, sched: Schedule, path: list[str], target: Path, quiet: bool) -> None:
    from counterpoint.gantt import GanttBar, GanttChart, render_gantt

    critical = set(path)
    bars = []
    for entry in sched.entries():
        t = graph.index[entry.task]
        phase = graph.plan.phases[graph.phase_of_task[t]]
        bars.append(
            GanttBar(
                task=entry.task,
                label=graph.tasks[t].title,
                phase=phase.id,
                phase_label=phase.title,
                milestone=graph.milestones[graph.milestone_of_task[t]].id,
                start_s=entry.start_s,
                finish_s=entry.finish_s,
                agent=entry.agent,
                critical=entry.task in critical,
            )
        )
    chart = GanttChart(title=graph.plan.name, bars=bars, makespan_s=sched.makespan_s)
    try:
        with working(f"Drawing {target}"):
            render_gantt(chart, target)
    except OSError as exc:
        fail(f"--gantt {target}: cannot write: {exc.strerror or exc}")
    if not quiet:
        err.print(f"Gantt chart written to {escape(str(target))}")


@cli.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to a file.")
@click.option("--messages", is_flag=True, help="The schema of protocol messages instead.")
def schema(output: str | None, messages: bool) -> None:
    """Print the JSON Schema of plan files (for editors: validation and completion)."""
    if messages:
        from counterpoint.messaging.protocol import message_json_schema

        document = message_json_schema()
    else:
        from counterpoint.plan.jsonschema import plan_json_schema

        document = plan_json_schema()
    emit_text(json.dumps(document, indent=2) + "\n", output)


def emit_text(text: str, output: str | None) -> bool:
    """``text`` to standard output, or to the ``--output`` file (exit 2 if it cannot be
    written); True when it went to the file."""
    if output is None:
        sys.stdout.write(text)
        return False
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"--output {output}: cannot write: {exc.strerror or exc}")
    return True


class _LogLine(logging.Formatter):
    """``warning: MESSAGE``, like the CLI's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _log_to_stderr() -> None:
    """The library's warnings (a notifier that failed, an escalation exhausted) as one
    ``warning:`` line each on standard error, instead of Python's bare last resort."""
    logger = logging.getLogger("counterpoint")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LogLine())
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def main() -> None:
    _log_to_stderr()
    from counterpoint import (  # noqa: F401 - register their commands
        cli_coord,
        cli_gates,
        cli_monitor,
        cli_net,
        cli_report,
        cli_rollback,
        cli_run,
        cli_runbook,
        cli_spawn,
        cli_state,
        cli_undo,
    )

    try:
        cli.main(prog_name="counterpoint", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("interrupted")
        sys.exit(EXIT_CANCELLED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_INVALID)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_CANCELLED)
