"""Starting, resuming and steering runs through a state directory.

The state directory (``.counterpoint/`` next to the plan unless ``--state``)
holds the journal (``state.db``), the per-attempt logs and a lock held by the
process running the plan, so two processes never drive the same run and an
operator in another terminal can tell whether a run is alive.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from counterpoint.errors import CounterpointError, PlanError
from counterpoint.plan.graph import Graph
from counterpoint.plan.load import load_plan
from counterpoint.plan.model import Plan
from counterpoint.runtime.events import Observers, RunObserver
from counterpoint.runtime.orchestrator import Orchestrator, RunOptions
from counterpoint.runtime.runners import Runners
from counterpoint.store.sqlite import RunRecord, SqliteStore, StateDirError

LOCK_NAME = "run.lock"


@dataclass(frozen=True)
class ServeOptions:
    """Serve the run's hub (remote agents, the operator API) on ``host:port``; over TLS
    with ``tls_cert`` and ``tls_key``; answering the ``Host`` names of ``allowed_hosts``
    besides loopback (docs/security.md)."""

    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None


class RunRefused(CounterpointError):
    """The run cannot start or resume as asked (the message says why and what to do)."""


def default_state_dir(plan_path: Path) -> Path:
    return plan_path.resolve().parent / ".counterpoint"


def fingerprint(plan: Plan) -> tuple[str, str]:
    """(sha256 of the plan's normalised content, that content as JSON).

    Keys left at their defaults are not part of it, so a release that adds a key with a
    default does not make every journaled plan look changed."""
    text = plan.model_dump_json(by_alias=True, exclude_defaults=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), text


def check_runnable(
    plan: Plan, serve: ServeOptions | None = None, state_dir: Path | None = None
) -> None:
    """Refuse plans that use what this release does not run yet (clear message, exit 2)."""
    remote = [n for n, a in plan.agents.items() if a.remote]
    if remote and serve is None:
        raise RunRefused(
            f"the plan has remote agents ({', '.join(remote)}): run it with --serve "
            "so they can connect"
        )
    if remote and state_dir is not None:
        from counterpoint.net.tokens import TokenStore

        tokens = TokenStore(state_dir)
        without = [
            n for n in remote if not any(t.name == n for t in tokens.list() if t.kind == "agent")
        ]
        if without:
            raise RunRefused(
                f"remote agent {without[0]!r} has no token; create one with "
                f"`counterpoint token create {without[0]} --state {state_dir}`"
            )
    if not plan.agents:
        raise RunRefused("the plan has no agents: it can be analysed but not run")
    for name, agent in plan.agents.items():
        if agent.workspace == "worktree":
            from counterpoint.agents.worktree import check_worktree_agent

            check_worktree_agent(plan, name)  # a git repository with a commit, a local agent
    if any(a.bid is not None or a.vote is not None for a in plan.agents.values()):
        from counterpoint.runtime.canvass import check_responders

        check_responders(plan)  # Python bidders and voters import (runtime/canvass.py)


@contextmanager
def _listening(serve: ServeOptions | None) -> Iterator[socket.socket | None]:
    """The served run's listening socket, bound before anything is journaled."""
    if serve is None:
        yield None
        return
    from counterpoint.net.server import bind

    sock = bind(serve.host, serve.port)
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def run_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's run lock, or refuse if another process holds it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(state_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise StateDirError(f"cannot use the state directory {state_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise RunRefused(
                f"a run is already active in {state_dir} (pid {pid}); "
                "wait for it, or stop it with `counterpoint cancel`"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


@contextmanager
def _journal_failures(state_dir: Path) -> Iterator[None]:
    """A journal write that fails (a full disk, an I/O error) stops the run with the
    reason (exit 2): nothing after the last commit is lost, ``resume`` continues it."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StateDirError(
            f"the run journal in {state_dir} could not be written ({exc}); the run stopped "
            f"at its last commit. Free space or fix the disk, then `counterpoint resume "
            f"--state {state_dir}`"
        ) from None


def lock_holder(state_dir: Path) -> int | None:
    """The pid running a plan in ``state_dir``, or None when no run is alive."""
    path = state_dir / LOCK_NAME
    if not path.exists():
        return None
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def start_run(
    plan_path: str | os.PathLike[str],
    state_dir: str | os.PathLike[str] | None = None,
    options: RunOptions | None = None,
    observers: Sequence[RunObserver] = (),
    sync: str = "full",
    serve: ServeOptions | None = None,
) -> int:
    """Run a plan from the start; returns the exit code (0 done, 1 failures, 3 cancelled).

    ``state_dir`` defaults to ``.counterpoint`` next to the plan file. With ``serve``
    the run serves its hub, so remote agents (``runner: {remote: true}``) can connect.
    """
    plan_path = Path(plan_path)
    state_dir = Path(state_dir).resolve() if state_dir is not None else default_state_dir(plan_path)
    options = options or RunOptions()
    plan = load_plan(plan_path)
    check_runnable(plan, serve, state_dir)
    graph = plan.compile(check=False)
    runners = Runners(
        plan, plan_path.resolve().parent, options.kill_grace_s, options.backend, options.ray_address
    )
    with (
        run_lock(state_dir),
        _journal_failures(state_dir),
        _listening(serve) as sock,
        runners.started(),
    ):
        store = SqliteStore(state_dir, sync=sync)
        try:
            digest, text = fingerprint(plan)
            run_id = store.create_run(
                str(plan_path.resolve()), plan.name, digest, text, asdict(options), graph.task_ids
            )
            run = _Run(graph, store, run_id, runners, options, observers, state_dir, serve, sock)
            return _drive(run, None)
        finally:
            store.close()


def resume_run(
    state_dir: str | os.PathLike[str],
    options: RunOptions | None = None,
    observers: Sequence[RunObserver] = (),
    allow_changed_plan: bool = False,
    sync: str = "full",
    serve: ServeOptions | None = None,
) -> int:
    """Continue the latest run in ``state_dir`` after an interruption or a crash.

    Without ``options`` the run keeps the options it was started with (time scale,
    ``approve_as``).
    """
    state_dir = Path(state_dir).resolve()
    with run_lock(state_dir), _journal_failures(state_dir), _listening(serve) as sock:
        store = SqliteStore(state_dir, sync=sync, create=False)
        try:
            record = latest(store, state_dir)
            options = options or stored_options(record)
            plan = _reload(record)
            digest, text = fingerprint(plan)
            if digest != record.fingerprint and not allow_changed_plan:
                raise RunRefused(
                    "the plan changed since the run started: "
                    f"{describe_changes(store.plan_json(record.id), text)}; "
                    "resume with --allow-changed-plan to accept the change"
                )
            check_runnable(plan, serve, state_dir)
            graph = plan.compile(check=False)
            runners = Runners(
                plan,
                Path(record.plan_path).parent,
                options.kill_grace_s,
                options.backend,
                options.ray_address,
            )
            with runners.started():  # the Ray backend connects before anything is written
                if digest != record.fingerprint:
                    store.adopt_plan(record.id, digest, text, graph.task_ids)
                previous = store.tasks(record.id)
                store.event(record.id, "run_resumed", plan_changed=digest != record.fingerprint)
                run = _Run(
                    graph, store, record.id, runners, options, observers, state_dir, serve, sock
                )
                return _drive(run, previous)
        finally:
            store.close()


def stored_options(record: RunRecord, **changes: Any) -> RunOptions:
    """The options a run was started with (time scale, approve_as), with ``changes``."""
    known = {k: v for k, v in record.options.items() if k in RunOptions.__dataclass_fields__}
    known.update(changes)
    return RunOptions(**known)


def latest(store: SqliteStore, state_dir: Path) -> RunRecord:
    record = store.latest_run()
    if record is None:
        raise RunRefused(f"no run recorded in {state_dir}")
    return record


def _reload(record: RunRecord) -> Plan:
    try:
        return load_plan(record.plan_path)
    except PlanError as exc:
        raise RunRefused(f"the run's plan {record.plan_path} no longer loads: {exc}") from None


@dataclass
class _Run:
    """Everything one run of the engine needs, assembled before the loop starts."""

    graph: Graph
    store: SqliteStore
    run_id: int
    runners: Runners
    options: RunOptions
    observers: Sequence[RunObserver]
    state_dir: Path
    serve: ServeOptions | None = None
    sock: socket.socket | None = None


def _drive(run: _Run, previous: dict[str, Any] | None) -> int:
    run.store.set_run_status(run.run_id, "running", pid=os.getpid())
    if run.runners.ray is not None:  # where the Python agents' actors run
        run.store.event(run.run_id, "ray_backend", **run.runners.ray.describe())
    return asyncio.run(_main(run, previous))


async def _main(run: _Run, previous: dict[str, Any] | None) -> int:
    orch = Orchestrator(
        run.graph,
        run.store,
        run.run_id,
        run.runners,
        run.options,
        Observers(list(run.observers)),
        run.state_dir,
    )
    loop = asyncio.get_running_loop()
    interrupts = [0]

    def on_signal(signum: int) -> None:
        interrupts[0] += 1
        if interrupts[0] == 1:
            orch.cancel(f"interrupted ({signal.Signals(signum).name})")
        else:
            orch.force()

    handled = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if handled else ()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        if run.serve is None:
            return await orch.run(previous)
        return await _served(run, orch, previous)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _served(run: _Run, orch: Orchestrator, previous: dict[str, Any] | None) -> int:
    """Run with the hub served: remote agents connect, operators use the HTTP API."""
    from counterpoint.metrics import RunMetrics
    from counterpoint.net.dashboard import Dashboard
    from counterpoint.net.frames import CLOSE_RUN_FINISHED
    from counterpoint.net.hub import Hub, tune_gc_for_serving
    from counterpoint.net.server import HubServer, Operations
    from counterpoint.net.tokens import TokenStore

    assert run.serve is not None
    plan = run.graph.plan
    metrics = RunMetrics(orch.metrics_sample)
    orch.observers.observers.append(metrics)
    hub = Hub(
        orch.bus,
        plan.agents,
        heartbeat_s=plan.settings.heartbeat,
        commit=run.store.flush,
        on_state=orch.remote_state,
    )
    dashboard = Dashboard(orch, hub)
    orch.observers.observers.append(dashboard)
    server = HubServer(
        hub,
        TokenStore(run.state_dir),
        run.serve.host,
        run.serve.port,
        Operations(
            status=orch.snapshot,
            cancel=orch.cancel,
            conflicts=lambda: [c.to_json() for c in orch.shared.conflicts.values()],
            resolve=orch.resolve_conflict,
            metrics=metrics.exposition,
            dashboard=dashboard,
            exchange=orch.exchange_of,
        ),
        sock=run.sock,
        allowed_hosts=run.serve.allowed_hosts,
        tls_cert=run.serve.tls_cert,
        tls_key=run.serve.tls_key,
    )
    await server.start()
    tune_gc_for_serving()
    run.runners.attach_hub(hub)
    orch.hub_url = server.url
    try:
        code = await orch.run(previous)
    except BaseException:
        await dashboard.feed.close(timeout_s=0.5)
        await server.stop()
        raise
    await dashboard.feed.close()  # the dashboards see how the run ended
    await server.stop(CLOSE_RUN_FINISHED, "the run finished")
    return code


def describe_changes(old_json: str, new_json: str) -> str:
    """A short summary of how a plan changed: tasks added, removed, changed; other sections."""
    old, new = json.loads(old_json), json.loads(new_json)
    old_tasks, new_tasks = _task_map(old), _task_map(new)
    parts = []
    for label, names in (
        ("added", sorted(new_tasks.keys() - old_tasks.keys())),
        ("removed", sorted(old_tasks.keys() - new_tasks.keys())),
        (
            "changed",
            sorted(k for k in old_tasks.keys() & new_tasks.keys() if old_tasks[k] != new_tasks[k]),
        ),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"tasks {label}: {shown}")
    sections = [
        k for k in sorted(old.keys() | new.keys()) if k != "phases" and old.get(k) != new.get(k)
    ]
    if sections:
        parts.append(f"sections changed: {', '.join(sections)}")
    if not parts:
        parts.append("phases or milestones changed")
    return "; ".join(parts)


def _task_map(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        t["id"]: t
        for p in plan.get("phases", [])
        for m in p.get("milestones", [])
        for t in m.get("tasks", [])
    }


# -- operator actions (from any process: they travel through the journal) ------------


def _latest_store(state_dir: str | os.PathLike[str]) -> tuple[SqliteStore, RunRecord]:
    directory = Path(state_dir)
    store = SqliteStore(directory, create=False)
    try:
        return store, latest(store, directory)
    except CounterpointError:
        store.close()
        raise


def request_cancel(state_dir: str | os.PathLike[str], by: str = "operator") -> int:
    """Ask the run in ``state_dir`` to cancel; returns its run id."""
    store, record = _latest_store(state_dir)
    try:
        if lock_holder(Path(state_dir)) is None:
            raise RunRefused(f"run {record.id} is not running (status: {record.status})")
        store.add_command(record.id, "cancel", by=by)
        return record.id
    finally:
        store.close()


def set_agent_state(state_dir: str | os.PathLike[str], agent: str, state: str) -> None:
    """Put ``agent`` in ``maintenance`` (no new work) or back to ``available``."""
    if state not in ("maintenance", "available"):
        raise RunRefused(f"agent state must be maintenance or available, not {state!r}")
    store, record = _latest_store(state_dir)
    try:
        agents = json.loads(store.plan_json(record.id)).get("agents", {})
        if agent not in agents:
            raise RunRefused(f"unknown agent {agent!r}; the plan's agents: {', '.join(agents)}")
        store.add_command(record.id, "agent_state", agent=agent, state=state)
        store.save_agent_state(record.id, agent, state)
    finally:
        store.close()


def decide_gate(
    state_dir: str | os.PathLike[str], gate: str, by: str, approve: bool, comment: str = ""
) -> None:
    """Record an approval (or a rejection) of ``gate`` (``PHASE.entry``, ``PHASE.exit``,
    ``MILESTONE.entry`` or ``MILESTONE.exit``)."""
    store, record = _latest_store(state_dir)
    try:
        approvers = _gate_approvers(json.loads(store.plan_json(record.id)), gate)
        if by not in approvers:
            raise RunRefused(
                f"{by!r} is not an approver of {gate} (approvers: {', '.join(sorted(approvers))})"
            )
        kind = "approve" if approve else "reject"
        store.add_command(record.id, kind, gate=gate, by=by, comment=comment)
    finally:
        store.close()


def request_rollback(
    state_dir: str | os.PathLike[str], kind: str, scope: str, by: str = "operator"
) -> tuple[int, bool]:
    """Ask for a rollback of ``scope`` (``task``, ``milestone``, ``phase`` or ``run``) in
    the latest run: ``(run id, running)``. A running run starts it at once; a stopped one
    when it is resumed (``counterpoint rollback`` resumes it)."""
    from counterpoint.plan.model import Plan
    from counterpoint.runtime.compensation import scope_members

    store, record = _latest_store(state_dir)
    try:
        plan = Plan.model_validate_json(store.plan_json(record.id))
        try:
            members = scope_members(plan.compile(check=False), kind, scope)
        except LookupError as exc:
            raise RunRefused(str(exc.args[0])) from None
        if not members:
            raise RunRefused(f"{kind} {scope!r} has no tasks to roll back")
        store.add_command(record.id, "rollback", scope_kind=kind, scope=scope, by=by)
        return record.id, lock_holder(Path(state_dir)) is not None
    finally:
        store.close()


def recheck_gate(state_dir: str | os.PathLike[str], gate: str, by: str = "operator") -> int:
    """Ask the running run to check ``gate`` again now (a gate held for a ``recheck``, or
    waiting for approvals); returns the run id."""
    from counterpoint.runtime.gates import declared_gates

    store, record = _latest_store(state_dir)
    try:
        known = [g.id for g in declared_gates(json.loads(store.plan_json(record.id)))]
        if gate not in known:
            raise RunRefused(
                f"unknown gate {gate!r}; the plan's gates: {', '.join(known) or 'none'}"
            )
        if lock_holder(Path(state_dir)) is None:
            raise RunRefused(f"run {record.id} is not running (status: {record.status})")
        store.add_command(record.id, "recheck", gate=gate, by=by)
        return record.id
    finally:
        store.close()


def _gate_approvers(plan: dict[str, Any], gate: str) -> set[str]:
    """Everyone named by the approval conditions of ``gate``; refuses unknown gates.

    Gates are ``PHASE.entry``, ``PHASE.exit``, ``MILESTONE.entry`` and ``MILESTONE.exit``.
    """
    from counterpoint.runtime.gates import declared_gates

    gates = {g.id: g for g in declared_gates(plan, absent=True)}
    if gate not in gates:
        example = next(iter(gates), "PHASE.exit")
        raise RunRefused(
            f"unknown gate {gate!r}; gates are PHASE.entry, PHASE.exit, MILESTONE.entry or "
            f"MILESTONE.exit, e.g. {example}"
        )
    approvers = {
        name
        for cond in gates[gate].conditions
        if cond.get("kind") == "approval"
        for name in cond.get("approvers", [])
    }
    if not approvers:
        raise RunRefused(f"gate {gate} has no approval condition to decide")
    return approvers
