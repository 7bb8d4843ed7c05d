"""Commands a task's program runs to spawn subtasks: ``spawn`` and ``wait-children``.

They talk to the attempt's control channel (``$COUNTERPOINT_CONTROL``, see
:mod:`counterpoint.agents.control`), so they work in a shell agent's program run by
the run itself or by a remote ``counterpoint agent``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from counterpoint.agents.control import ENV, ControlError, request
from counterpoint.cli import cli, fail


def _inside_a_task() -> None:
    if not os.environ.get(ENV):
        fail(f"${ENV} is not set: only a task's program (run by counterpoint) can do this")


def _read_tasks(source: str) -> list[Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")
    try:
        tasks = json.loads(text)
    except ValueError as exc:
        fail(f"{source}: not valid JSON: {exc}")
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        fail(f"{source}: give a task definition (a JSON object) or a list of them")
    return tasks


@cli.command()
@click.argument("tasks", metavar="TASKS_JSON", default="-")
def spawn(tasks: str) -> None:
    """From a task's program: add child tasks to the run; prints their ids, one per line.

    TASKS_JSON is a file (or - for stdin, the default) holding one task definition or a
    list of them, as in a plan file. Exit code 1 when the run refuses them (the reason
    on stderr), 2 when used outside a task's program.
    """
    _inside_a_task()
    try:
        reply = request("spawn", tasks=_read_tasks(tasks))
    except ControlError as exc:
        fail(str(exc), 1)
    for tid in reply["ids"]:
        click.echo(tid)


@cli.command("wait-children")
@click.argument("ids", nargs=-1)
def wait_children(ids: tuple[str, ...]) -> None:
    """From a task's program: wait until its children (or IDS) have ended.

    Prints a JSON object with each child's state, result and error; exit code 0 when
    every child completed, 1 otherwise.
    """
    _inside_a_task()
    try:
        reply = request("wait_children", ids=list(ids) or None)
    except ControlError as exc:
        fail(str(exc), 1)
    children = reply["children"]
    click.echo(json.dumps(children, indent=2))
    if any(c.get("state") != "completed" for c in children.values()):
        sys.exit(1)
