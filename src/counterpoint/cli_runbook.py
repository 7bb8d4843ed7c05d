"""``counterpoint runbook``: list, run, follow and decide the steps of named runbooks.

Bad input (an invalid plan or runbook file, an unknown runbook or step, someone who
is not an approver) exits 2; a runbook stopped by a failing step exits 1; one
interrupted by Ctrl-C or SIGTERM while a step ran exits 3. See docs/rollback.md#runbooks.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint import views
from counterpoint.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_INVALID, cli, err, fail, out
from counterpoint.cli_run import journal, state_dir_of, state_option
from counterpoint.durations import format_duration
from counterpoint.errors import CounterpointError, PlanError
from counterpoint.rollback import locking
from counterpoint.rollback.errors import UnknownSubject
from counterpoint.rollback.runbook import (
    LOCK,
    RunbookOptions,
    RunbookResult,
    RunbookRunner,
    decide,
)
from counterpoint.rollback.runbook_case import read_case, subject
from counterpoint.rollback.runbook_journal import FAILED, RUNNING, Execution, RunbookJournal
from counterpoint.rollback.runbook_source import RunbookSource, from_file, from_plan, summary
from counterpoint.runtime.session import default_state_dir
from counterpoint.store.sqlite import SqliteStore

_MARKS = {"done": "[green]✓[/]", "failed": "[red]✗[/]", "waiting": "[yellow]…[/]"}


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _steps(count: int) -> str:
    return f"{count} step{'s' * (count != 1)}"


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def source_options(func: Any) -> Any:
    func = click.option(
        "--file",
        "runbook_file",
        type=click.Path(dir_okay=False),
        help="A runbook file (version, runbooks, escalation).",
    )(func)
    return click.option(
        "--plan", type=click.Path(dir_okay=False), help="A plan with a runbooks: section."
    )(func)


def _source(plan: str | None, runbook_file: str | None, *, required: bool) -> RunbookSource | None:
    """The runbooks of ``--plan`` or ``--file``; an invalid one prints its problems (exit 2)."""
    if plan and runbook_file:
        fail("give --plan PLAN or --file FILE, not both")
    if not (plan or runbook_file):
        if required:
            fail("give --plan PLAN or --file FILE: where the runbooks are defined")
        return None
    try:
        return from_plan(plan) if plan else from_file(str(runbook_file))
    except PlanError as exc:
        err.print(views.problems_text(exc.problems), end="")
        errors = len([p for p in exc.problems if p.severity.value == "error"])
        err.print(f"{esc(plan or str(runbook_file))}: {errors} error{'s' * (errors != 1)}")
        sys.exit(EXIT_INVALID)


def _journal(directory: Path, *, create: bool) -> AbstractContextManager[SqliteStore]:
    missing = f"no runbook was run in {directory} (nothing was recorded there)"
    return journal(directory, create=create, missing=missing)


@cli.group()
def runbook() -> None:
    """Named manual procedures: ordered steps (commands, checks, approvals), journaled."""


@runbook.command("list")
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print the runbooks as JSON.")
def runbook_list(plan: str | None, runbook_file: str | None, as_json: bool) -> None:
    """List the runbooks of a plan (--plan) or a runbook file (--file), with their steps."""
    source = _source(plan, runbook_file, required=True)
    assert source is not None
    if as_json:
        found = {name: summary(rb) for name, rb in source.runbooks.items()}
        _print_json({"source": str(source.path), "runbooks": found})
        return
    if not source.runbooks:
        err.print(f"{esc(str(source.path))} has no runbooks")
        return
    table = Table("runbook", "steps", "description")
    for name, rb in source.runbooks.items():
        steps = ", ".join(f"{s.id} ({s.kind})" for s in rb.steps)
        table.add_row(esc(name), esc(steps), esc(rb.description))
    out.print(table)


# -- run ------------------------------------------------------------------------------------


@runbook.command("run")
@click.argument("name")
@source_options
@state_option
@click.option("--approve-as", metavar="NAME", help="Approve every approval and manual step.")
@click.option("--restart", is_flag=True, help="Abandon an unfinished execution; start anew.")
@click.option(
    "--no-wait", is_flag=True, help="After a failure, exit once the first escalation level knows."
)
@click.option("--json", "as_json", is_flag=True, help="Print every event as a JSON line.")
def runbook_run(
    name: str,
    plan: str | None,
    runbook_file: str | None,
    state: str | None,
    approve_as: str | None,
    restart: bool,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Run runbook NAME step by step, or resume it where it stopped.

    An unfinished execution resumes at the step that failed or was interrupted; steps
    done are never run again. A failing step stops the runbook (exit 1) and goes up
    the escalation ladder."""
    source = _source(plan, runbook_file, required=False)
    if source is not None:
        try:
            source.get(name)
        except CounterpointError as exc:
            fail(str(exc))
    directory = _run_state_dir(state, source)
    options = RunbookOptions(by=_who(), approve_as=approve_as, restart=restart, wait=not no_wait)
    hint = _resume_hint(name, plan, runbook_file, directory)
    show = _JsonLines() if as_json else _Progress(hint, directory)
    _quiet_escalation_log()
    with _journal(directory, create=True) as store:
        runner = RunbookRunner(store, name, source, options, observe=show)
        try:
            result = runner.run()
        except KeyboardInterrupt:
            _interrupted(store, name, hint, as_json)
    _outcome(result, hint, as_json)


def _quiet_escalation_log() -> None:
    """The events say what the escalation does; its log records would say it twice."""
    logger = logging.getLogger("counterpoint.escalation")
    logger.propagate = False  # not to the CLI's warning: lines either
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _run_state_dir(state: str | None, source: RunbookSource | None) -> Path:
    if state:
        return Path(state)
    return default_state_dir(source.path) if source is not None else Path(".counterpoint")


def _resume_hint(name: str, plan: str | None, runbook_file: str | None, directory: Path) -> str:
    where = f" --plan {plan}" if plan else f" --file {runbook_file}" if runbook_file else ""
    return f"counterpoint runbook run {name}{where} --state {directory}"


def _interrupted(store: SqliteStore, name: str, hint: str, as_json: bool) -> NoReturn:
    latest = RunbookJournal(store).latest(name)
    if latest is not None and latest.status == FAILED:
        code, text = EXIT_FAILED, f"stopped waiting: the case {subject(name)} stays open"
    else:
        code, text = EXIT_CANCELLED, f"interrupted; `{hint}` resumes it"
    if as_json:
        _JsonLines()({"event": "runbook_finished", "status": "interrupted", "exit_code": code})
    fail(f"runbook {name}: {text}", code)


def _outcome(result: RunbookResult, hint: str, as_json: bool) -> None:
    ex = result.execution
    code = 0 if result.ok else EXIT_FAILED
    if as_json:
        _JsonLines()({"event": "runbook_finished", "status": ex.status, "exit_code": code})
    elif result.ok:
        earlier = len(ex.definition.steps) - len(result.ran)
        note = f", {earlier} done earlier" if result.resumed and earlier else ""
        out.print(
            f"runbook {esc(ex.runbook)}: execution {ex.id} completed "
            f"({_steps(len(ex.definition.steps))}{note})"
        )
    else:
        err.print(f"[bold red]error:[/] runbook {esc(ex.runbook)}: {esc(ex.detail)}")
        if result.handed_over:
            err.print("another process resumed the execution: it carries the escalation on")
        else:
            failed = next((s.step for s in ex.steps if s.status == "failed"), "?")
            err.print(f"fix the cause, then `{esc(hint)}` resumes at step {esc(failed)}")
    sys.exit(code)


class _JsonLines:
    def __call__(self, event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()


class _Progress:
    """Each event as a line on stderr, as the execution goes."""

    def __init__(self, hint: str, directory: Path) -> None:
        self.hint = hint
        self.directory = directory
        self.steps = 0

    def __call__(self, event: dict[str, Any]) -> None:
        handler = getattr(self, f"_{event['event']}", None)
        if handler is not None:
            handler(event)

    def _line(self, text: str) -> None:
        err.print(text, highlight=False)

    def _execution_started(self, e: dict[str, Any]) -> None:
        self.steps = len(e["steps"])
        self._line(
            f"runbook [bold]{esc(e['runbook'])}[/]: execution {e['execution']}, "
            f"{_steps(self.steps)} ({esc(e['source'])})"
        )

    def _execution_resumed(self, e: dict[str, Any]) -> None:
        self.steps = e["steps"]
        was = "interrupted" if e["was"] == RUNNING else e["was"]
        self._line(
            f"runbook [bold]{esc(e['runbook'])}[/]: resuming execution {e['execution']} "
            f"({was}) at step {esc(str(e['at_step']))}, {e['done']} of {self.steps} done"
        )

    def _definition_changed(self, e: dict[str, Any]) -> None:
        self._line(
            "[yellow]note:[/] the runbook changed since this execution started: "
            "its remaining steps run as defined now"
        )

    def _execution_abandoned(self, e: dict[str, Any]) -> None:
        self._line(f"execution {e['execution']} abandoned (--restart)")

    def _step_skipped(self, e: dict[str, Any]) -> None:
        self._line(f"  [dim]✓ {self._at(e)} {esc(e['step'])}: done earlier[/]")

    def _step_started(self, e: dict[str, Any]) -> None:
        again = f", attempt {e['attempt']}" if e["attempt"] > 1 else ""
        self._line(f"  ▶ {self._at(e)} {esc(e['step'])} ({e['kind']}{again}) …")

    def _step_done(self, e: dict[str, Any]) -> None:
        self._line(f"  {_MARKS['done']} {esc(e['step'])}: {esc(e['detail'])} ({e['took_s']:g}s)")

    def _step_failed(self, e: dict[str, Any]) -> None:
        self._line(f"  {_MARKS['failed']} {esc(e['step'])}: {esc(e['detail'])}")

    def _step_retrying(self, e: dict[str, Any]) -> None:
        self._line(
            f"  ↻ {esc(e['step'])}: attempt {e['attempt']} failed ({esc(e['error'])}); "
            f"again in {format_duration(e['delay_s'])} ({e['left']} left)"
        )

    def _step_waiting(self, e: dict[str, Any]) -> None:
        who = ", ".join(e["approvers"])
        if e["kind"] == "manual":
            self._line(f"  {_MARKS['waiting']} {self._at(e)} {esc(e['step'])}: to do by hand:")
            self._line(f"      {esc(e['instructions'])}")
            self._line(f"    then one of {esc(who)} confirms it:")
        else:
            count = e["count"]
            self._line(
                f"  {_MARKS['waiting']} {self._at(e)} {esc(e['step'])}: waiting for {count} "
                f"approval{'s' * (count != 1)} from {esc(who)}"
            )
            if e["instructions"]:
                self._line(f"      {esc(e['instructions'])}")
        if e["approve_as"]:
            return
        runbook, state = esc(e["runbook"]), esc(str(self.directory))
        self._line(
            f"      counterpoint runbook approve {runbook} --step {esc(e['step'])} --as NAME "
            f"--state {state}"
        )

    def _step_decision(self, e: dict[str, Any]) -> None:
        yes = "confirmed" if e["kind"] == "manual" else "approved"
        verdict = f"[green]{yes}[/]" if e["approve"] else "[red]rejected[/]"
        note = f": {esc(e['comment'])}" if e["comment"] else ""
        self._line(f"    {verdict} by {esc(e['by'])}{note}")

    def _leftover_stopped(self, e: dict[str, Any]) -> None:
        self._line(f"  [yellow]note:[/] stopped the command pid {e['pid']} a killed run left")

    def _escalation_opened(self, e: dict[str, Any]) -> None:
        contacts = ", ".join(e["contacts"])
        self._line(
            f"  [bold red]![/] escalation {esc(e['subject'])}: {esc(e['level_name'])} "
            f"({esc(contacts)}) notified"
        )

    def _escalated(self, e: dict[str, Any]) -> None:
        contacts = ", ".join(e["contacts"])
        self._line(f"  [bold red]![/] escalated to {esc(e['level_name'])} ({esc(contacts)})")

    def _escalation_exhausted(self, e: dict[str, Any]) -> None:
        self._line(f"  [bold red]![/] {esc(e['subject'])}: {esc(e['message'])}")

    def _escalation_resolved(self, e: dict[str, Any]) -> None:
        self._line(f"  escalation {esc(e['subject'])} resolved")

    def _escalation_notice(self, e: dict[str, Any]) -> None:
        self._line(f"  [dim]notice for {esc(e['contact'])}: {esc(e['text'])}[/]")

    def _notify_failed(self, e: dict[str, Any]) -> None:
        if e.get("final", True):
            self._line(
                f"  [yellow]warning:[/] notifying {esc(e['contact'])} by {e['channel']} "
                f"failed: {esc(str(e['error']))}"
            )

    def _execution_failed(self, e: dict[str, Any]) -> None:
        if e["case_status"] != "open":
            self._line(f"  the case {esc(subject(e['runbook']))} is {e['case_status']} already")

    def _escalation_waiting(self, e: dict[str, Any]) -> None:
        self._line(
            f"waiting on the escalation: fix the cause, then `{esc(self.hint)}` (another "
            "terminal) resumes it; Ctrl-C stops waiting"
        )

    def _handed_over(self, e: dict[str, Any]) -> None:
        self._line(f"pid {e['to_pid']} resumed the execution: handing it over")

    def _at(self, e: dict[str, Any]) -> str:
        return f"{e['position']}/{e['of']}" if "position" in e else ""


# -- status ---------------------------------------------------------------------------------


@runbook.command("status")
@click.argument("name", required=False)
@click.option("--execution", "number", type=click.IntRange(min=1), help="An older execution.")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (with outputs and events).")
def runbook_status(name: str | None, number: int | None, state: str | None, as_json: bool) -> None:
    """Show each runbook's latest execution, or NAME's steps, decisions and escalation."""
    directory = state_dir_of(state)
    with _journal(directory, create=False) as store:
        journal = RunbookJournal(store)
        if name is None:
            found = [journal.executions(n)[0] for n in journal.names()]
            report = [_status_json(store, directory, ex, events=False) for ex in found]
        else:
            ex = _pick(journal, name, number)
            report = [_status_json(store, directory, ex, events=True)]
    if as_json:
        _print_json({"executions": report} if name is None else report[0])
    elif name is None:
        _print_overview(report, directory)
    else:
        _print_execution(report[0])


def _pick(journal: RunbookJournal, name: str, number: int | None) -> Execution:
    found = journal.executions(name)
    if not found:
        raise UnknownSubject.of("runbook", name, journal.names())
    if number is None:
        return found[0]
    match = [ex for ex in found if ex.id == number]
    if not match:
        fail(f"execution {number} is not one of {name}'s ({', '.join(str(e.id) for e in found)})")
    return match[0]


def _status_json(
    store: SqliteStore, directory: Path, ex: Execution, *, events: bool
) -> dict[str, Any]:
    report = ex.to_json()
    with locking.attempt(directory, LOCK, ex.runbook) as free:
        alive = not free
    if ex.status == RUNNING and not alive:
        report["status"] = "interrupted"
    report["active"] = alive
    report["pid"] = ex.pid if alive else None
    report["case"] = _case(store, ex)
    if events:
        report["events"] = RunbookJournal(store).events(ex.id)
    return report


def _case(store: SqliteStore, ex: Execution) -> dict[str, Any] | None:
    case = read_case(store, ex)
    return None if case is None else case.to_json()


def _print_overview(report: list[dict[str, Any]], directory: Path) -> None:
    if not report:
        err.print(f"no runbook was run in {esc(str(directory))}")
        return
    table = Table("runbook", "execution", "status", "steps done", "started (UTC)", "detail")
    for r in report:
        done = sum(1 for s in r["steps"] if s["status"] == "done")
        table.add_row(
            esc(r["runbook"]),
            str(r["execution"]),
            r["status"],
            f"{done}/{len(r['steps'])}",
            _when(r["started"]),
            esc(r["detail"]),
        )
    out.print(table)


def _print_execution(r: dict[str, Any]) -> None:
    doing = ""
    if r["active"]:
        doing = " (waiting on its escalation" if r["status"] == FAILED else " (running"
        doing += f", pid {r['pid']})"
    out.print(
        f"runbook [bold]{esc(r['runbook'])}[/] execution {r['execution']}: [bold]{r['status']}[/]"
        f"{doing} (by {esc(r['by'])}, started {_when(r['started'])} UTC; {esc(r['source'])})"
    )
    table = Table("#", "step", "kind", "status", "attempts", "detail")
    for s in r["steps"]:
        detail = s["detail"] or "-"
        table.add_row(
            str(s["position"]),
            esc(s["step"]),
            s["kind"],
            s["status"],
            str(s["attempts"]),
            esc(detail),
        )
    out.print(table)
    case = r["case"]
    if case is not None:
        out.print(
            f"escalation {esc(case['subject'])}: {case['status']} at {esc(case['level_name'])}"
        )
    for s in r["steps"]:
        if s["status"] == "failed" and s["output"].strip():
            out.print(f"[bold]output of {esc(s['step'])}[/] (last lines)")
            tail = s["output"].rstrip().splitlines()[-20:]
            sys.stdout.write("\n".join(tail) + "\n")


# -- approve and reject ----------------------------------------------------------------------


def _decision_command(command: str, approve: bool, summary_text: str) -> None:
    @runbook.command(command, help=summary_text)
    @click.argument("name")
    @click.option("--step", "step", required=True, help="The approval or manual step.")
    @click.option("--as", "person", required=True, help="Who decides (one of its approvers).")
    @click.option("--comment", default="", help="A note kept with the decision.")
    @state_option
    def decide_step(name: str, step: str, person: str, comment: str, state: str | None) -> None:
        directory = state_dir_of(state)
        with _journal(directory, create=False) as store:
            ex = decide(store, name, step, person, approve, comment)
        manual = any(s.id == step and s.kind == "manual" for s in ex.definition.steps)
        verdict = ("confirmed" if manual else "approved") if approve else "rejected"
        out.print(f"{esc(name)}/{esc(step)}: {verdict} by {esc(person)} (execution {ex.id})")
        with locking.attempt(directory, LOCK, name) as free:
            if free:
                err.print(
                    f"note: no process runs {esc(name)} now; the decision counts when "
                    f"`counterpoint runbook run {esc(name)}` resumes execution {ex.id}"
                )


_decision_command(
    "approve",
    True,
    "Approve a step of runbook NAME, or confirm a manual one; the waiting runbook goes on.",
)
_decision_command(
    "reject",
    False,
    "Reject a step of runbook NAME: the step fails and the runbook stops.",
)
