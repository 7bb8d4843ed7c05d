"""Commands that run plans and steer runs: run, resume, status, cancel, logs, agent-state,
approve, reject. Each works against a state directory, from any terminal."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint import live
from counterpoint.agents.best_of import candidate_line, read_candidates
from counterpoint.cli import EXIT_INVALID, EXIT_OK, cli, err, fail, out
from counterpoint.errors import CounterpointError, PlanError
from counterpoint.plan.graph import Graph
from counterpoint.runtime.events import RunObserver
from counterpoint.runtime.governor import read_usage, usage_text, usage_totals
from counterpoint.runtime.orchestrator import RunOptions, task_log_dir
from counterpoint.runtime.session import (
    ServeOptions,
    decide_gate,
    default_state_dir,
    latest,
    lock_holder,
    request_cancel,
    resume_run,
    set_agent_state,
    start_run,
    stored_options,
)
from counterpoint.store.sqlite import DB_NAME, RunRecord, SqliteStore
from counterpoint.views import problems_text

STATE_HELP = "State directory (default: .counterpoint next to the plan, or in the current folder)."


@contextmanager
def journal(directory: Path, *, create: bool, missing: str) -> Iterator[SqliteStore]:
    """The state directory's store for a command; ``missing`` is the error when it has
    no journal and ``create`` is off. Problems become ``error:`` lines (exit 2)."""
    if not create and not (directory / DB_NAME).exists():
        fail(missing)
    try:
        store = SqliteStore(directory)
    except CounterpointError as exc:
        fail(str(exc))
    try:
        yield store
    except CounterpointError as exc:
        fail(str(exc))
    finally:
        store.close()


def state_option(func: Any) -> Any:
    return click.option(
        "--state",
        "state",
        type=click.Path(file_okay=False),
        envvar="COUNTERPOINT_STATE",
        help=STATE_HELP,
    )(func)


def state_dir_of(state: str | None) -> Path:
    return Path(state) if state else Path(".counterpoint")


def open_latest(state: str | None) -> tuple[SqliteStore, RunRecord]:
    directory = state_dir_of(state)
    try:
        store = SqliteStore(directory, create=False)
        return store, latest(store, directory)
    except CounterpointError as exc:
        fail(str(exc))


sync_option = click.option(
    "--sync",
    type=click.Choice(["full", "normal"]),
    default="full",
    show_default=True,
    help="Journal durability: full survives power loss; normal only process crashes.",
)


def serve_options(func: Any) -> Any:
    func = tls_options(func)
    func = click.option(
        "--port",
        type=click.IntRange(0, 65535),
        help="Port to serve on (implies --serve; default 8765, 0 picks a free one).",
    )(func)
    func = click.option(
        "--host",
        metavar="HOST",
        help="Address to serve on (implies --serve; default 127.0.0.1, loopback only).",
    )(func)
    func = click.option(
        "--serve",
        is_flag=True,
        help="Serve the hub: remote agents connect over WebSocket, operators use the HTTP API.",
    )(func)
    return func


_SECURITY = "counterpoint.serve-security"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_SECURITY, {})[param.name] = value
    return value


def tls_options(func: Any) -> Any:
    """``--allowed-host``, ``--tls-cert``, ``--tls-key`` (docs/security.md): kept in the
    click context, where :func:`serving` finds them."""
    func = click.option(
        "--allowed-host",
        "allowed_hosts",
        multiple=True,
        metavar="NAME[:PORT]",
        expose_value=False,
        callback=_remember,
        help="A Host name the server answers to besides loopback (repeatable): the name "
        "browsers and agents use to reach it.",
    )(func)
    func = click.option(
        "--tls-key",
        metavar="FILE",
        expose_value=False,
        callback=_remember,
        help="The private key (PEM) of --tls-cert.",
    )(func)
    func = click.option(
        "--tls-cert",
        metavar="FILE",
        expose_value=False,
        callback=_remember,
        help="Serve HTTPS and WSS with this certificate (PEM; needs --tls-key).",
    )(func)
    return func


def serving(serve: bool, host: str | None, port: int | None) -> ServeOptions | None:
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_SECURITY, {}) if ctx is not None else {}
    tls_cert, tls_key = given.get("tls_cert"), given.get("tls_key")
    allowed_hosts = tuple(given.get("allowed_hosts") or ())
    if not (serve or host or port is not None):
        if tls_cert or tls_key or allowed_hosts:
            fail("--tls-cert, --tls-key and --allowed-host need --serve (or --host, --port)")
        return None
    from counterpoint.net.security import check_hosts, exposure_warning, tls_problem

    problem = tls_problem(tls_cert, tls_key)
    if problem is not None:
        fail(problem)
    try:
        check_hosts(allowed_hosts)
    except ValueError as exc:
        fail(str(exc))
    address = host or "127.0.0.1"
    warning = exposure_warning(address, tls_cert is not None)
    if warning is not None:
        err.print(f"[bold yellow]{esc(warning)}[/]")
    return ServeOptions(
        address, 8765 if port is None else port, tuple(allowed_hosts), tls_cert, tls_key
    )


def backend_options(func: Any) -> Any:
    func = click.option(
        "--ray-address",
        metavar="ADDRESS",
        help="The Ray cluster: auto, HOST:PORT or ray://HOST:PORT (implies --backend ray; "
        "default: settings.ray.address, else a local instance).",
    )(func)
    func = click.option(
        "--backend",
        type=click.Choice(["local", "ray"]),
        help="Where Python agents run: in this process, or as Ray actors "
        "(default: the plan's settings.backend).",
    )(func)
    return func


def chosen_backend(backend: str | None, ray_address: str | None) -> str | None:
    """``--backend``, or ``ray`` when only ``--ray-address`` is given; refuses the two
    together with ``local`` (exit 2)."""
    if ray_address is not None and backend == "local":
        fail("--ray-address needs the Ray backend; drop --backend local")
    if ray_address is not None:
        from counterpoint.agents.ray_actors import RayUnavailable, check_address

        try:
            check_address(ray_address)
        except RayUnavailable as exc:
            fail(str(exc))
        return "ray"
    return backend


def output_options(func: Any) -> Any:
    func = click.option("--quiet", "-q", is_flag=True, help="Print only the final summary.")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")(func)
    return func


@cli.command()
@click.argument("plan", type=click.Path(dir_okay=False))
@state_option
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiply plan time (estimates, timeouts) by this factor, e.g. 1e-5 for a quick demo.",
)
@click.option("--approve-as", metavar="NAME", help="Approve every approval gate as NAME.")
@sync_option
@serve_options
@backend_options
@output_options
def run(
    plan: str,
    state: str | None,
    time_scale: float,
    approve_as: str | None,
    sync: str,
    serve: bool,
    host: str | None,
    port: int | None,
    backend: str | None,
    ray_address: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run PLAN on its agents: every task starts as soon as its own dependencies are done."""
    path = Path(plan)
    directory = Path(state) if state else default_state_dir(path)
    options = RunOptions(
        time_scale=time_scale,
        approve_as=approve_as,
        backend=chosen_backend(backend, ray_address),
        ray_address=ray_address,
    )
    hub = serving(serve, host, port)
    _execute(
        lambda observers: start_run(path, directory, options, observers, sync=sync, serve=hub),
        directory,
        quiet,
        as_json,
    )


@cli.command()
@state_option
@click.option("--allow-changed-plan", is_flag=True, help="Resume even if the plan file changed.")
@sync_option
@click.option("--retry-failed", is_flag=True, help="Run failed tasks again (and what they block).")
@serve_options
@backend_options
@output_options
def resume(
    state: str | None,
    allow_changed_plan: bool,
    sync: str,
    retry_failed: bool,
    serve: bool,
    host: str | None,
    port: int | None,
    backend: str | None,
    ray_address: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Continue the latest run after an interruption or a crash; finished work is not redone."""
    resume_latest(
        state,
        allow_changed_plan,
        sync,
        retry_failed,
        serving(serve, host, port),
        quiet,
        as_json,
        backend=chosen_backend(backend, ray_address),
        ray_address=ray_address,
    )


def resume_latest(
    state: str | None,
    allow_changed_plan: bool,
    sync: str,
    retry_failed: bool,
    hub: ServeOptions | None,
    quiet: bool,
    as_json: bool,
    backend: str | None = None,
    ray_address: str | None = None,
) -> None:
    store, record = open_latest(state)
    store.close()
    if hub is not None and record.status == "completed" and not retry_failed:
        fail(
            f"the latest run in {state_dir_of(state)} has completed; start a new one with "
            "`counterpoint run PLAN --serve`"
        )
    changes: dict[str, Any] = {"retry_failed": retry_failed}
    if backend is not None:  # otherwise the run keeps its backend
        changes.update(backend=backend, ray_address=ray_address)
    options = stored_options(record, **changes)
    directory = state_dir_of(state)
    _execute(
        lambda observers: resume_run(
            directory, options, observers, allow_changed_plan, sync, serve=hub
        ),
        directory,
        quiet,
        as_json,
    )


Start = Callable[[list[RunObserver]], int]


def _execute(start: Start, directory: Path, quiet: bool, as_json: bool) -> None:
    keeper = live.GraphKeeper()
    observers: list[RunObserver] = [keeper]
    display = None
    if as_json:
        observers.append(live.JsonLines())
    elif not quiet:
        display = live.LiveDisplay(err)
        observers.append(display)
    try:
        with display or nullcontext():
            code = start(observers)
    except PlanError as exc:
        err.print(problems_text(exc.problems), end="")
        sys.exit(EXIT_INVALID)
    except (CounterpointError, ImportError) as exc:
        fail(str(exc))
    if not as_json:
        _print_summary(directory, keeper.graph)
    sys.exit(code)


def _print_summary(directory: Path, graph: Graph | None) -> None:
    store = SqliteStore(directory, create=False)
    try:
        record = latest(store, directory)
        tasks = store.tasks(record.id)
        budget = store.events_of_kind(record.id, "budget_reached")
    finally:
        store.close()
    counts = _tally(tasks)
    per_phase = _per_phase(graph, tasks) if graph is not None else []
    out.print(live.summary_table(counts, per_phase))
    for rec in sorted(tasks.values(), key=lambda r: r.task):
        if rec.state in ("failed", "blocked"):
            why = rec.error if rec.state == "failed" else f"blocked by {rec.blocked_by}"
            out.print(f"[red]{rec.state}[/] {esc(rec.task)}: {esc(str(why))}")
    for reached in budget[:1]:
        out.print(f"[red]budget reached[/]: {esc(str(reached.get('message', '')))}")
    out.print(f"run {record.id}: {record.status} (state in {esc(str(directory))})")


def _tally(tasks: dict[str, Any]) -> dict[str, int]:
    """How many tasks are in each state."""
    counts: dict[str, int] = {}
    for rec in tasks.values():
        counts[rec.state] = counts.get(rec.state, 0) + 1
    return counts


def _per_phase(graph: Graph, tasks: dict[str, Any]) -> list[tuple[str, dict[str, int]]]:
    tallies: list[dict[str, int]] = [{} for _ in graph.plan.phases]
    for t, tid in enumerate(graph.task_ids):
        state = tasks[tid].state if tid in tasks else "pending"
        state = "pending" if state in ("ready", "running", "retrying") else state
        tally = tallies[graph.phase_of_task[t]]
        tally[state] = tally.get(state, 0) + 1
    return [(p.id, tally) for p, tally in zip(graph.plan.phases, tallies, strict=True)]


@cli.command()
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
def status(state: str | None, as_json: bool) -> None:
    """Show the latest run: counts per state, running tasks, blocked tasks and why."""
    store, record = open_latest(state)
    try:
        tasks = store.tasks(record.id)
        agents = store.agent_states(record.id)
        gates = {e.get("gate"): e for e in store.events_of_kind(record.id, "gate_evaluated")}
        coding = usage_totals(read_usage(store, record.id))
        candidates = read_candidates(store, record.id)
    finally:
        store.close()
    alive = lock_holder(state_dir_of(state)) is not None
    report = _status_report(record, tasks, agents, alive)
    if coding["run"]["attempts"]:
        report["coding"] = coding
    if candidates:
        report["candidates"] = candidates
    report["gates"] = [
        {"gate": g, "status": e.get("status"), "conditions": e.get("results", [])}
        for g, e in gates.items()
    ]
    if as_json:
        out.print_json(data=report)
        return
    _print_status(report)


def _status_report(
    record: RunRecord, tasks: dict[str, Any], agents: dict[str, str], alive: bool
) -> dict[str, Any]:
    counts = _tally(tasks)
    now = time.time()
    status = record.status
    if status == "running" and not alive:
        status = "interrupted"
    return {
        "run": record.id,
        "plan": record.plan_path,
        "status": status,
        "exit_code": record.exit_code,
        "counts": counts,
        "running": [
            {
                "task": r.task,
                "agent": r.agent,
                "attempt": r.attempts,
                "elapsed_s": round(now - (r.started or now), 1),
            }
            for r in tasks.values()
            if r.state == "running"
        ],
        "blocked": [
            {"task": r.task, "reason": r.blocked_by} for r in tasks.values() if r.state == "blocked"
        ],
        "failed": [
            {"task": r.task, "error": r.error} for r in tasks.values() if r.state == "failed"
        ],
        "agents": agents,
    }


def _print_status(report: dict[str, Any]) -> None:
    out.print(f"run {report['run']} of {esc(report['plan'])}: [bold]{report['status']}[/]")
    out.print("  ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())))
    if report["running"]:
        table = Table(title="Running")
        for column in ("task", "agent", "attempt", "elapsed"):
            table.add_column(column)
        for r in report["running"]:
            table.add_row(r["task"], r["agent"] or "-", str(r["attempt"]), f"{r['elapsed_s']}s")
        out.print(table)
    for r in report["failed"]:
        out.print(f"[red]failed[/] {esc(r['task'])}: {esc(str(r['error']))}")
    for r in report["blocked"][:20]:
        out.print(f"[yellow]blocked[/] {esc(r['task'])}: {esc(str(r['reason']))}")
    if len(report["blocked"]) > 20:
        out.print(f"... and {len(report['blocked']) - 20} more blocked")
    for agent, state in report["agents"].items():
        out.print(f"agent {esc(agent)}: {state}")
    for gate in report["gates"]:
        waiting = [c["message"] for c in gate["conditions"] if c.get("passed") is not True]
        note = f": {'; '.join(waiting)}" if waiting and gate["status"] != "completed" else ""
        out.print(f"gate {esc(str(gate['gate']))}: {gate['status']}{esc(note)}")
    if "coding" in report:
        _print_coding(report["coding"])
    for c in report.get("candidates", []):
        out.print(esc(candidate_line(c)))


def _print_coding(coding: dict[str, Any]) -> None:
    """Cost and tokens of the run's coding agents, per run, phase, agent and task."""
    out.print(f"coding agents: {usage_text(coding['run'])}")
    for scope in ("phase", "agent", "task"):
        for name, bucket in coding[f"by_{scope}"].items():
            out.print(f"  {scope} {esc(name)}: {usage_text(bucket)}")


@cli.command()
@state_option
def cancel(state: str | None) -> None:
    """Cancel the running plan (from any terminal): running tasks are stopped, exit code 3."""
    try:
        run_id = request_cancel(state_dir_of(state), by="counterpoint cancel")
    except CounterpointError as exc:
        fail(str(exc))
    out.print(f"cancel requested for run {run_id}")


@cli.command("agent-state")
@click.argument("agent")
@click.argument("new_state", metavar="STATE", type=click.Choice(["maintenance", "available"]))
@state_option
def agent_state(agent: str, new_state: str, state: str | None) -> None:
    """Put AGENT in maintenance (it takes no new work) or make it available again."""
    try:
        set_agent_state(state_dir_of(state), agent, new_state)
    except CounterpointError as exc:
        fail(str(exc))
    out.print(f"agent {esc(agent)}: {new_state}")


def _gate_command(name: str, approve: bool, summary: str, who: str, why: str) -> None:
    """Register ``approve`` or ``reject``: the same command with the opposite decision."""

    @cli.command(name, help=summary)
    @click.argument("gate")
    @click.option("--as", "person", required=True, help=who)
    @click.option("--comment", default="", help=why)
    @state_option
    def decide(gate: str, person: str, comment: str, state: str | None) -> None:
        try:
            decide_gate(state_dir_of(state), gate, person, approve, comment)
        except CounterpointError as exc:
            fail(str(exc))
        verdict = "approved" if approve else "rejected"
        out.print(f"{esc(gate)}: {verdict} by {esc(person)}")


_gate_command(
    "approve",
    True,
    "Approve GATE (PHASE.entry, PHASE.exit, MILESTONE.entry or MILESTONE.exit) as NAME; "
    "the waiting run continues.",
    "Who approves (one of the gate's approvers).",
    "A note kept with the approval.",
)
_gate_command(
    "reject",
    False,
    "Reject GATE as NAME: the gate fails and what waits on it is blocked.",
    "Who rejects (one of the gate's approvers).",
    "Why.",
)


@cli.command()
@click.argument("task")
@click.option("--attempt", type=click.IntRange(min=1), help="Only this attempt.")
@state_option
def logs(task: str, attempt: int | None, state: str | None) -> None:
    """Print TASK's attempts (agent, times, outcome) and the output each produced."""
    store, record = open_latest(state)
    try:
        rows = store.attempts(record.id, task)
        known = store.tasks(record.id)
        candidates = read_candidates(store, record.id, task)
    finally:
        store.close()
    if task not in known:
        fail(f"unknown task {task!r} in run {record.id}")
    if not rows:
        out.print(f"{esc(task)}: no attempt yet ({known[task].state})")
        return
    for number, agent, started, finished, outcome, error in rows:
        if attempt is not None and number != attempt:
            continue
        took = f"{finished - started:.2f}s" if finished else "-"
        out.print(f"[bold]attempt {number}[/] on {esc(agent or '-')}: {outcome} ({took})")
        if error:
            out.print(f"  error: {esc(error)}")
        logs_dir = task_log_dir(state_dir_of(state), record.id, task)
        _print_logs(logs_dir, number)
        for c in (c for c in candidates if c["attempt"] == number):  # best-of-N
            out.print(f"  {esc(candidate_line(c))}")
            _print_logs(logs_dir / f"candidate-{c['candidate']}", number)
    if attempt is not None and all(r[0] != attempt for r in rows):
        fail(f"{task} has no attempt {attempt}")
    result = known[task].result
    if result is not None and attempt is None:
        out.print("[bold]result[/]")
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    sys.exit(EXIT_OK)


def _print_logs(base: Path, attempt: int) -> None:
    for stream in ("stdout", "stderr"):
        path = base / f"{attempt}.{stream}"
        if path.exists() and path.stat().st_size:
            out.print(f"  --- {stream} ---")
            sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
            sys.stdout.flush()
