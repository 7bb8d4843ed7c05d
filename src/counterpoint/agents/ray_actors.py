"""The Ray backend: Python agents run as Ray actors, one per capacity slot.

The orchestrator stays the one coordinator: it keeps its queue, priorities,
resources, retries, timeouts and journal, and picks the agent of every attempt
as it does locally. Ray only executes: a :class:`RayRunner` hands an attempt to
an idle actor of its agent and awaits the result (``await`` on Ray's object
references, never a blocking ``ray.get``). Ray's own retries and restarts are
off, so a failure is decided once, by the orchestrator:

- ``TaskFailed``, ``RateLimited`` (and any other exception) raised by the agent
  come back as such;
- an actor that dies (its worker killed, its node lost) is replaced and the
  attempt ends with ``AgentLost``: the task goes back to the queue without using
  up a retry;
- a cancelled or timed-out attempt is cancelled in the actor (``ray.cancel``: the
  coroutine receives ``CancelledError``); an actor that does not stop within the
  kill grace, and any actor running a plain (non-async) function, is killed and
  replaced, so the work really stops.

Progress reported with ``ctx.progress`` streams back while the attempt runs (a
streaming actor method); staged shared-state writes come back with the result.
Messages between agents (``ctx.send``, ``ctx.request``, ``ctx.inbox``),
spawning and votes need the coordinator's process, and fail the attempt with a
clear message on Ray. Shell, remote and task-level runners keep running where
they run without Ray. See docs/scaling.md.

Ray is an optional dependency (``pip install 'counterpoint[ray]'``) and is
imported only when the backend is used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterpoint.agents.base import AgentLost, RateLimited, StateView, TaskContext, TaskFailed
from counterpoint.agents.python import _as_result, call_agent, load_callable
from counterpoint.errors import CounterpointError
from counterpoint.plan.model import AgentSpec, RayAgent, RaySettings

INSTALL_HINT = "pip install 'counterpoint[ray]'"
CLIENT_HINT = "pip install 'ray[client]'"
#: How long the actors of every agent slot may take to start before the run is refused.
STARTUP_TIMEOUT_S = 120.0
#: How long a ``HOST:PORT`` or ``ray://`` address may take to accept a connection.
CONNECT_TIMEOUT_S = 5.0

# What an actor sends back: progress while the attempt runs, then one outcome.
PROGRESS, DONE, FAILED, RATE_LIMITED, LOST = "progress", "done", "failed", "rate_limited", "lost"

log = logging.getLogger("counterpoint.ray")


class RayUnavailable(CounterpointError):
    """The Ray backend cannot run this plan: Ray is not installed, the cluster cannot be
    reached, or it cannot hold one actor per agent slot (the message says what to do)."""


def ray_module() -> Any:
    """The ``ray`` module, imported on first use; a clear error when it is missing."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayUnavailable(
            f"the Ray backend needs Ray, which cannot be imported ({exc}); "
            f"install it with `{INSTALL_HINT}`, or run with --backend local"
        ) from None


def check_address(address: str | None) -> None:
    """Refuse an address Ray would not understand (exit 2 before anything starts)."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayUnavailable(
            f"Ray address {address!r}: expected auto, HOST:PORT (a cluster's GCS, e.g. "
            "10.0.0.5:6379) or ray://HOST:PORT (Ray Client, e.g. ray://10.0.0.5:10001)"
        )


def _probe(address: str) -> None:
    """Fail fast when nothing listens at ``address`` (Ray itself waits for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise RayUnavailable(f"cannot reach a Ray cluster at {address}: {why}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# -- in the Ray worker ------------------------------------------------------------------


class _NotOnRay:
    """Stands in for what an attempt can do only in the coordinator's process."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise TaskFailed(
                f"{self.what} is not supported on the Ray backend; run the plan with "
                "--backend local"
            )

        return refuse


class RayTaskContext(TaskContext):
    """The :class:`TaskContext` an attempt gets in a Ray worker: the same members, with
    progress streamed back, writes sent back with the result, and no message bus."""

    def _bus(self) -> Any:
        raise TaskFailed(
            "messages between agents (ctx.send, ctx.request, ctx.inbox) are not supported "
            "on the Ray backend; run the plan with --backend local"
        )


_STAND_INS = {
    "spawner": "spawning subtasks (ctx.spawn, ctx.wait_for_children)",
    "decider": "decisions by vote (ctx.propose_decision)",
}


def worker_context(
    view: dict[str, Any], on_progress: Callable[[str, float, str], None] | None
) -> RayTaskContext:
    """Rebuild an attempt's context from the picklable view the coordinator sent."""
    fields = {f.name for f in dataclasses.fields(TaskContext)}
    extra: dict[str, Any] = {k: _NotOnRay(what) for k, what in _STAND_INS.items() if k in fields}
    return RayTaskContext(
        run_id=view["run_id"],
        task=view["task"],
        attempt=view["attempt"],
        agent=view["agent"],
        state_dir=Path(view["state_dir"]),
        workdir=Path(view["workdir"]),
        log_dir=Path(view["log_dir"]),
        time_scale=view["time_scale"],
        estimate_s=view["estimate_s"],
        on_progress=on_progress,
        response_sla_s=view["response_sla_s"],
        state=StateView(view["state"]),
        workspace=view["workspace"],
        rollback=view["rollback"],
        **extra,
    )


class AgentSlot:
    """One capacity slot of a Python agent: a Ray actor running one attempt at a time.

    Made into an actor class with ``ray.remote(AgentSlot)`` in the coordinator; Ray
    imports this module in the worker, which imports the agent's function with the
    plan's folder first on the import path (as locally).
    """

    def __init__(self, agent: str, slot: int, target: str, plan_dir: str) -> None:
        self.name = f"{agent}#{slot}"
        self.target = target
        self.func = load_callable(target, Path(plan_dir))

    def __repr__(self) -> str:  # Ray prefixes what the actor prints with it
        return self.name

    async def ready(self) -> dict[str, Any]:
        """Where this actor runs (once it runs: the coordinator waits for every slot)."""
        ray = ray_module()
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    async def run(self, view: dict[str, Any]) -> AsyncIterator[tuple[Any, ...]]:
        """One attempt, streamed: ``(progress, percent, message)`` items while it works
        (only the latest when several wait), then its outcome."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def report(_task: str, percent: float, message: str) -> None:
            with suppress(RuntimeError):  # a plain function's thread outliving its attempt
                loop.call_soon_threadsafe(updates.put_nowait, (PROGRESS, percent, message))

        async def attempt() -> None:
            updates.put_nowait(await self._attempt(worker_context(view, report)))

        work = loop.create_task(attempt())
        try:
            while True:
                item = await updates.get()
                while item[0] == PROGRESS and not updates.empty():
                    item = updates.get_nowait()
                yield item
                if item[0] != PROGRESS:
                    return
        finally:
            if not work.done():  # cancelled (ray.cancel): so is the agent's coroutine
                work.cancel()
                with suppress(BaseException):
                    await work

    async def call(self, view: dict[str, Any]) -> tuple[Any, ...]:
        """One attempt without streaming (Ray Client cannot stream): progress is dropped."""
        return await self._attempt(worker_context(view, None))

    async def _attempt(self, ctx: RayTaskContext) -> tuple[Any, ...]:
        try:
            value = await call_agent(self.func, ctx.task, ctx)
            return (DONE, _as_result(value, self.target), ctx.state.writes)
        except TaskFailed as exc:
            return (FAILED, str(exc))
        except RateLimited as exc:
            return (RATE_LIMITED, exc.retry_after_s, str(exc))
        except AgentLost as exc:
            return (LOST, str(exc))
        except Exception as exc:  # journaled as locally: "TYPE: message"
            return (FAILED, f"{type(exc).__name__}: {exc}")


# -- in the coordinator ------------------------------------------------------------------


def actor_options(spec: RayAgent) -> dict[str, Any]:
    """Ray actor options for one slot: what the plan asks, Ray's retries and restarts off."""
    options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0}
    if spec.num_cpus is not None:
        options["num_cpus"] = spec.num_cpus
    if spec.num_gpus:
        options["num_gpus"] = spec.num_gpus
    if spec.resources:
        options["resources"] = dict(spec.resources)
    return options


_NOISE = ("node:", "memory", "object_store_memory", "accelerator_type:")


def _demand(spec: RayAgent) -> dict[str, float]:
    need = dict(spec.resources)
    if spec.num_cpus:
        need["CPU"] = spec.num_cpus
    if spec.num_gpus:
        need["GPU"] = spec.num_gpus
    return need


@dataclass(eq=False)
class Slot:
    index: int
    actor: Any  # a Ray ActorHandle


class RayRunner:
    """Runs a Python agent's attempts on its Ray actors, one attempt per actor at a time.

    The orchestrator never gives an agent more attempts than its capacity, so an idle
    actor is normally there at once; after a cancellation the attempt may wait for the
    actor to stop (at most the kill grace) or for its replacement.
    """

    def __init__(
        self, backend: RayBackend, agent: str, spec: AgentSpec, target: str, plan_dir: Path
    ) -> None:
        self.backend = backend
        self.agent = agent
        self.target = target
        self.plan_dir = str(plan_dir.resolve())
        func = load_callable(target, plan_dir)  # an import error refuses the run here
        self.interruptible = inspect.iscoroutinefunction(func)
        self.capacity = spec.capacity
        self.spec = spec.ray
        self.options = actor_options(spec.ray)
        self.slots: list[Slot] = []
        self.idle: asyncio.Queue[Slot] = asyncio.Queue()
        self._stopping: set[asyncio.Task[None]] = set()

    # -- the slots ---------------------------------------------------------------------

    def _new_actor(self, index: int) -> Any:
        cls = self.backend.actor_class()
        return cls.options(**self.options).remote(self.agent, index, self.target, self.plan_dir)

    def create(self) -> list[Slot]:
        """Create one actor per slot (they start in the background)."""
        self.slots = [Slot(i, self._new_actor(i)) for i in range(self.capacity)]
        for slot in self.slots:
            self.idle.put_nowait(slot)
        return list(self.slots)

    def _replace(self, slot: Slot) -> None:
        """Kill the slot's actor (it died, or will not stop) and give the slot a new one."""
        self.backend.kill(slot.actor)
        slot.actor = self._new_actor(slot.index)
        self.idle.put_nowait(slot)

    def kill_all(self) -> None:
        for slot in self.slots:
            self.backend.kill(slot.actor)
        self.slots = []

    # -- an attempt ----------------------------------------------------------------------

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        ray = self.backend.ray
        slot = await self.idle.get()
        ref: Any = None
        try:
            if self.backend.streaming:
                ref = slot.actor.run.options(num_returns="streaming").remote(_view(ctx))
                outcome = await self._stream(ref, ctx)
            else:
                ref = slot.actor.call.remote(_view(ctx))
                outcome = await ref
        except ray.exceptions.RayActorError as exc:
            self._replace(slot)
            raise AgentLost(
                f"the Ray actor of agent {self.agent} (slot {slot.index}) died: {_first_line(exc)}"
            ) from None
        except asyncio.CancelledError:  # cancelled or timed out: stop the work first
            if ref is None:
                self.idle.put_nowait(slot)
                raise
            stopping = asyncio.create_task(self._stop(slot, ref))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
            with suppress(asyncio.CancelledError):
                await asyncio.shield(stopping)
            raise
        except ray.exceptions.RayError as exc:  # e.g. a result Ray could not send back
            self.idle.put_nowait(slot)
            raise TaskFailed(f"Ray: {_first_line(exc)}") from None
        except Exception:  # e.g. a view Ray could not pickle: the actor is fine
            self.idle.put_nowait(slot)
            raise
        self.idle.put_nowait(slot)
        return _settle(outcome, ctx)

    async def _stream(self, stream: Any, ctx: TaskContext) -> tuple[Any, ...]:
        async for ref in stream:
            item: tuple[Any, ...] = await ref
            if item[0] != PROGRESS:
                return item
            try:
                ctx.progress(item[1], item[2])
            except Exception:  # a display problem must not end the attempt
                log.exception("progress of %s could not be reported", ctx.task_id)
        return (FAILED, "the Ray actor ended the attempt without an outcome")

    async def _stop(self, slot: Slot, ref: Any) -> None:
        """The attempt was cancelled (or timed out): stop the work in the actor (its
        coroutine receives ``CancelledError``) and give the slot back once it ended; kill
        and replace an actor that does not stop within the kill grace, or that runs a plain
        function (its thread cannot be interrupted)."""
        if not self.interruptible:
            self._replace(slot)
            return
        exceptions = self.backend.ray.exceptions
        with suppress(Exception):
            self.backend.ray.cancel(ref)
        alive = True
        try:
            async with asyncio.timeout(self.backend.kill_grace_s):
                if self.backend.streaming:
                    async for item in ref:
                        await item
                else:
                    await ref
        except (exceptions.TaskCancelledError, exceptions.RayTaskError):
            pass  # the attempt stopped; the actor lives
        except (TimeoutError, exceptions.RayError):  # stuck, or dead
            alive = False
        if alive:
            self.idle.put_nowait(slot)
        else:
            self._replace(slot)


def _view(ctx: TaskContext) -> dict[str, Any]:
    """What the worker needs of the attempt's context (picklable)."""
    return {
        "run_id": ctx.run_id,
        "task": ctx.task,
        "attempt": ctx.attempt,
        "agent": ctx.agent,
        "state_dir": str(ctx.state_dir),
        "workdir": str(ctx.workdir),
        "log_dir": str(ctx.log_dir),
        "time_scale": ctx.time_scale,
        "estimate_s": ctx.estimate_s,
        "response_sla_s": ctx.response_sla_s,
        "state": ctx.state.snapshot(),
        "workspace": ctx.workspace,
        "rollback": ctx.rollback,
    }


def _settle(outcome: tuple[Any, ...], ctx: TaskContext) -> dict[str, Any]:
    """Turn the actor's outcome back into a result or the exception the agent raised."""
    kind = outcome[0]
    if kind == DONE:
        ctx.state.writes.update(outcome[2])  # staged writes, committed by the orchestrator
        result: dict[str, Any] = outcome[1]
        return result
    if kind == RATE_LIMITED:
        raise RateLimited(outcome[1], outcome[2])
    if kind == LOST:
        raise AgentLost(outcome[1])
    raise TaskFailed(outcome[1])


class RayBackend:
    """The Ray side of a run: the connection to the cluster and every agent's actors."""

    def __init__(self, settings: RaySettings, address: str | None, kill_grace_s: float) -> None:
        self.ray: Any = None  # the module, imported with the first Python agent
        self.settings = settings
        self.address = address if address is not None else settings.address
        check_address(self.address)
        self.kill_grace_s = kill_grace_s
        self.runners: list[RayRunner] = []
        self.streaming = True
        self._connected = False  # we called ray.init (and so call ray.shutdown)
        self._environ: dict[str, str] | None = None  # os.environ before ray.init changed it
        self._temp_dir: Path | None = None
        self._actor_class: Any = None
        self._info: dict[str, Any] = {}

    def runner(self, agent: str, spec: AgentSpec, plan_dir: Path) -> RayRunner:
        assert spec.runner is not None and spec.runner.python is not None
        if self.ray is None:
            self.ray = ray_module()  # refuses the run at once when Ray is missing
        runner = RayRunner(self, agent, spec, spec.runner.python, plan_dir)
        self.runners.append(runner)
        return runner

    def actor_class(self) -> Any:
        if self._actor_class is None:
            self._actor_class = self.ray.remote(AgentSlot)
        return self._actor_class

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect (or start a local instance), check the cluster can hold one actor per
        agent slot, create them and wait until every one runs."""
        if not any(r.capacity for r in self.runners):
            return  # nothing to run on Ray
        try:
            self._connect()
            self._check_room()
            self._start_actors()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # the host process connected already: use that
            self._info["address"] = "the process's existing Ray connection"
        elif self.address is not None:
            _probe(self.address)
            self._init(address=self.address)
            self._info["address"] = self.address
        else:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="cp-ray-", dir="/tmp"))
            self._environ = dict(os.environ)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            self._init(
                num_cpus=self.settings.num_cpus or os.cpu_count() or 1,
                object_store_memory=self.settings.object_store_memory,
                include_dashboard=False,
                _temp_dir=str(self._temp_dir),
            )
            self._info["address"] = "a local instance"
            self._info["temp_dir"] = str(self._temp_dir)
        with suppress(Exception):  # Ray Client (ray://) cannot stream from actors
            client: Any = importlib.import_module("ray.util.client")
            self.streaming = not client.ray.is_connected()
        self._info["streaming"] = self.streaming

    def _init(self, **kwargs: Any) -> None:
        if self._environ is None:
            self._environ = dict(os.environ)
        try:
            self.ray.init(log_to_driver=True, logging_level=logging.ERROR, **kwargs)
        except (Exception, SystemExit) as exc:
            text = _first_line(exc)
            if "ray[client]" in text:
                text = f"Ray Client (ray://) needs `{CLIENT_HINT}` next to counterpoint"
            where = kwargs.get("address", "a local instance")
            raise RayUnavailable(f"cannot start Ray ({where}): {text}") from None
        self._connected = True

    def _check_room(self) -> None:
        """Refuse a cluster that cannot hold every slot's actor at once (they live for the
        whole run, so a slot whose actor cannot be placed would never run anything)."""
        total: dict[str, float] = self.ray.cluster_resources()
        self._info["cluster"] = {k: v for k, v in sorted(total.items()) if not k.startswith(_NOISE)}
        need: dict[str, float] = {}
        for runner in self.runners:
            for key, amount in _demand(runner.spec).items():
                need[key] = need.get(key, 0.0) + amount * runner.capacity
        if any(r.capacity and r.spec.num_cpus is None for r in self.runners):
            need.setdefault("CPU", 0.0)
            need["CPU"] = max(need["CPU"], 1.0)  # Ray places such actors on a node with a CPU
        short = [
            f"{key} {amount:g} (the cluster has {total.get(key, 0.0):g})"
            for key, amount in sorted(need.items())
            if amount > total.get(key, 0.0) + 1e-9
        ]
        if short:
            raise RayUnavailable(
                "the Ray cluster cannot hold one actor per agent slot: the slots need "
                f"{', '.join(short)}; lower the agents' capacity or their ray: requests, "
                "or add nodes"
            )

    def _start_actors(self) -> None:
        ray = self.ray
        slots = [(runner, slot) for runner in self.runners for slot in runner.create()]
        refs = [slot.actor.ready.remote() for _, slot in slots]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
        if pending:
            late = sorted({slots[refs.index(ref)][0].agent for ref in pending})
            raise RayUnavailable(
                f"Ray did not start the actors of agent(s) {', '.join(late)} within "
                f"{STARTUP_TIMEOUT_S:g}s; the cluster may lack what their ray: settings ask for"
            )
        try:
            where = ray.get(refs)
        except ray.exceptions.RayActorError as exc:
            raise RayUnavailable(f"an agent's Ray actor failed to start: {exc}") from None
        actors: dict[str, list[dict[str, Any]]] = {}
        for (runner, _), info in zip(slots, where, strict=True):
            actors.setdefault(runner.agent, []).append(info)
        self._info["actors"] = actors

    def describe(self) -> dict[str, Any]:
        """What the run journals as its ``ray_backend`` event."""
        return dict(self._info)

    def kill(self, actor: Any) -> None:
        with suppress(Exception):
            self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Kill every actor; disconnect from (or stop) the Ray instance only if we made it."""
        for runner in self.runners:
            runner.kill_all()
        if self._connected:
            self._connected = False
            with suppress(Exception):
                self.ray.shutdown()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        if self._environ is not None:  # ray.init sets RAY_* and PYTHONBREAKPOINT
            for key in set(os.environ) - set(self._environ):
                del os.environ[key]
            os.environ.update(self._environ)
            self._environ = None
