"""Commands about gates: gates, recheck.

``counterpoint gates`` lists every gate of the latest run's plan with the report of its
latest evaluation, read from the journal (``gate_evaluated`` events), so it works from any
terminal while the run goes on and after it ended.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint.cli import cli, fail, out
from counterpoint.cli_run import open_latest, state_dir_of, state_option
from counterpoint.errors import CounterpointError
from counterpoint.runtime.gates import DeclaredGate, declared_gates
from counterpoint.runtime.session import lock_holder, recheck_gate

NOT_EVALUATED = "not_evaluated"
_STYLE = {
    "allowed": "green",
    "completed": "green",
    "waiting": "yellow",
    "blocked": "red",
    "incomplete": "red",
}
_MARK: dict[bool | None, str] = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]…[/]"}


@cli.command()
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the gates as one JSON object.")
def gates(state: str | None, as_json: bool) -> None:
    """List every gate of the latest run's plan: its kind, latest status and conditions."""
    store, record = open_latest(state)
    try:
        plan = json.loads(store.plan_json(record.id))
        evaluations = store.events_of_kind(record.id, "gate_evaluated")
    finally:
        store.close()
    status = record.status
    if status == "running" and lock_holder(state_dir_of(state)) is None:
        status = "interrupted"  # journaled as running, but no process holds the run
    report = {
        "run": record.id,
        "plan": record.plan_path,
        "status": status,
        "gates": gate_reports(plan, evaluations),
    }
    if as_json:
        out.print_json(data=report)
        return
    _print_gates(report)


@cli.command()
@click.argument("gate")
@state_option
def recheck(gate: str, state: str | None) -> None:
    """Check GATE again now, in the running run (a gate held by its recheck option)."""
    try:
        run_id = recheck_gate(state_dir_of(state), gate, by="counterpoint recheck")
    except CounterpointError as exc:
        fail(str(exc))
    out.print(f"{esc(gate)}: recheck requested in run {run_id}")


def gate_reports(plan: dict[str, Any], evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gate the plan declares (with conditions) and its latest journaled evaluation."""
    latest: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for e in evaluations:
        gate = str(e.get("gate"))
        if e.get("status") == "cancelled":  # stopped by a cancellation: it did not finish
            continue
        latest[gate] = e
        counts[gate] = counts.get(gate, 0) + 1
    return [
        _gate_report(g, latest.get(g.id), counts.get(g.id, 0))
        for g in declared_gates(plan)
        if g.conditions
    ]


def _gate_report(gate: DeclaredGate, last: dict[str, Any] | None, count: int) -> dict[str, Any]:
    conditions: list[dict[str, Any]]
    if last is None:
        conditions = [
            {
                "kind": c.get("kind"),
                "name": c.get("name") or f"#{i + 1}",
                "passed": None,
                "message": "not evaluated yet",
                "data": {},
            }
            for i, c in enumerate(gate.conditions)
        ]
    else:
        conditions = list(last.get("results", []))
    return {
        "gate": gate.id,
        "kind": gate.scope,
        "side": gate.side,
        "phase": gate.phase,
        "milestone": gate.milestone,
        "status": last.get("status") if last else NOT_EVALUATED,
        "evaluations": count,
        "conditions": conditions,
    }


def _print_gates(report: dict[str, Any]) -> None:
    out.print(f"run {report['run']} of {esc(report['plan'])}: [bold]{report['status']}[/]")
    if not report["gates"]:
        out.print("the plan has no gates")
        return
    table = Table(title="Gates", title_justify="left")
    for column in ("gate", "kind", "status", "condition", "message"):
        table.add_column(column)
    for gate in report["gates"]:
        status = gate["status"]
        shown = "not evaluated yet" if status == NOT_EVALUATED else status
        style = _STYLE.get(status, "dim")
        head = [esc(gate["gate"]), gate["kind"], f"[{style}]{shown}[/]"]
        for i, cond in enumerate(gate["conditions"]):
            passed = cond.get("passed")
            mark = "[dim]-[/]" if status == NOT_EVALUATED else _MARK.get(passed, "[dim]-[/]")
            label = f"{mark} {esc(str(cond.get('kind')))} {esc(str(cond.get('name')))}"
            table.add_row(*(head if i == 0 else ["", "", ""]), label, esc(str(cond["message"])))
        table.add_section()
    out.print(table)
