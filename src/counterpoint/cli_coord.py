"""Commands about decentralized coordination: bids (contract net), decisions, decide."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint.cli import cli, err, fail, out
from counterpoint.cli_run import open_latest, state_option
from counterpoint.plan.model import Plan
from counterpoint.report import coordination_of
from counterpoint.runtime.voting import OPEN_STATUSES, canon, read_decisions


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@cli.command()
@state_option
@click.option("--task", "task_id", metavar="TASK", help="Only the calls for this task.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def bids(state: str | None, task_id: str | None, as_json: bool) -> None:
    """The calls for proposals of the latest run (contract net): who bid what, who won."""
    store, record = open_latest(state)
    try:
        plan = Plan.model_validate_json(store.plan_json(record.id))
        found = coordination_of(store, record.id, plan)
    finally:
        store.close()
    calls = found["calls"]
    if task_id is not None:
        known = sorted({c["task"] for c in calls})
        calls = [c for c in calls if c["task"] == task_id]
        if not calls:
            fail(
                f"no call for proposals for task {task_id!r} in run {record.id} "
                f"(tasks called: {', '.join(known) or 'none'})"
            )
    if as_json:
        click.echo(json.dumps({"run": record.id, "mode": found["mode"], "calls": calls}, indent=2))
        return
    if not calls:
        err.print(f"run {record.id} made no calls for proposals (coordination: {found['mode']})")
        return
    table = Table(
        "call",
        "task",
        "round",
        "agent",
        "answer",
        "duration",
        "cost",
        "load",
        "score",
        "result",
        title=f"Calls for proposals of run {record.id}",
    )
    for c in calls:
        for a in c["answers"]:
            if a["agent"] == c["winner"]:
                result = "[green]won[/]"
            elif a["status"] == "refusal":
                result = esc(f"refused: {a['reason'] or '-'}")
            elif a["status"] == "proposal":
                result = "rejected" if c["winner"] else esc(a["error"] or "-")
            elif a["status"] == "none":
                result = "no answer"
            else:
                result = esc(f"{a['status']}: {a['error'] or '-'}")
            table.add_row(
                str(c["call"]),
                esc(c["task"]),
                str(c["round"]),
                esc(a["agent"]),
                a["status"],
                _num(a["duration_s"]),
                _num(a["cost"]),
                _num(a["load"]),
                _num(a["score"]),
                result,
            )
    out.print(table)


@cli.command()
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def decisions(state: str | None, as_json: bool) -> None:
    """The decisions by vote of the latest run: the question, each vote, the result."""
    store, record = open_latest(state)
    try:
        found = read_decisions(store, record.id)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"run": record.id, "decisions": found}, indent=2))
        return
    if not found:
        err.print(f"run {record.id} has no decisions by vote")
        return
    table = Table(
        "id",
        "asked by",
        "question",
        "options",
        "votes",
        "status",
        "result",
        title=f"Decisions of run {record.id}",
    )
    for d in found:
        votes = "; ".join(
            f"{v}: {'-' if vote is None else _short(vote, 20)}" for v, vote in d["votes"].items()
        )
        result = _short(d["result"]) if d["status"] in ("decided", "resolved") else d["reason"]
        table.add_row(
            str(d["id"]),
            esc(d["source"]),
            esc(d["question"]),
            esc(", ".join(_short(o, 20) for o in d["options"])),
            esc(votes or "-"),
            d["status"],
            esc(result or "-"),
        )
    out.print(table)


def _option_value(text: str) -> Any:
    """``--option`` as JSON when it parses, else as the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@cli.command()
@click.argument("decision", type=int)
@click.option(
    "--option",
    "option",
    required=True,
    metavar="VALUE",
    help="The option chosen: JSON (42, true, '\"x\"', ...) or plain text.",
)
@click.option("--as", "who", default="operator", show_default=True, help="Who decides.")
@state_option
def decide(decision: int, option: str, who: str, state: str | None) -> None:
    """Decide DECISION (a tie or a missing quorum waits for a person) with one of its options."""
    value = _option_value(option)
    store, record = open_latest(state)
    try:
        found = {d["id"]: d for d in read_decisions(store, record.id)}
        d = found.get(decision)
        if d is None:
            fail(
                f"no decision {decision} in run {record.id} (decisions: "
                f"{', '.join(map(str, found)) or 'none'})"
            )
        if d["status"] not in OPEN_STATUSES:
            fail(f"decision {decision} is already {d['status']}")
        keys = [canon(o) for o in d["options"]]
        if canon(value) not in keys:
            fail(f"{option!r} is not one of the options of decision {decision} ({', '.join(keys)})")
        store.add_command(record.id, "decide", decision=decision, value=value, by=who)
    finally:
        store.close()
    err.print(f"decision {decision} ({esc(d['question'])}): decision recorded for run {record.id}")
