"""``counterpoint rollback``: undo the completed work of a task, milestone, phase or run."""

from __future__ import annotations

import click
from rich.markup import escape as esc

from counterpoint.cli import cli, err, fail
from counterpoint.cli_run import (
    output_options,
    resume_latest,
    state_dir_of,
    state_option,
    sync_option,
)
from counterpoint.errors import CounterpointError
from counterpoint.runtime.session import request_rollback


@cli.command()
@click.option("--task", "task", metavar="TASK", help="Undo one completed task.")
@click.option("--milestone", metavar="MILESTONE", help="Undo a milestone's completed tasks.")
@click.option("--phase", metavar="PHASE", help="Undo a phase's completed tasks.")
@click.option("--run", "whole_run", is_flag=True, help="Undo every completed task of the run.")
@state_option
@sync_option
@output_options
def rollback(
    task: str | None,
    milestone: str | None,
    phase: str | None,
    whole_run: bool,
    state: str | None,
    sync: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Roll back completed work by hand: run the rollback: actions of the scope's completed
    tasks in reverse dependency order (and stop what still runs in it).

    In a running run the rollback starts at once; a stopped run is resumed to run it."""
    chosen = [
        (kind, value)
        for kind, value in (("task", task), ("milestone", milestone), ("phase", phase))
        if value is not None
    ] + ([("run", "run")] if whole_run else [])
    if len(chosen) != 1:
        fail("give exactly one of --task TASK, --milestone MILESTONE, --phase PHASE or --run")
    kind, scope = chosen[0]
    try:
        run_id, running = request_rollback(
            state_dir_of(state), kind, scope, by="counterpoint rollback"
        )
    except CounterpointError as exc:
        fail(str(exc))
    what = "the run" if kind == "run" else f"{kind} {esc(scope)}"
    if running:
        err.print(f"rollback of {what} requested in run {run_id}")
        return
    err.print(f"run {run_id} is not running: resuming it to roll back {what}")
    resume_latest(state, False, sync, False, None, quiet, as_json)
