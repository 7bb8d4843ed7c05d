"""Choosing and building the runner that executes a task on an agent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.agents.base import Runner, TaskContext
from counterpoint.agents.python import PythonRunner
from counterpoint.errors import CounterpointError
from counterpoint.plan.model import Plan
from counterpoint.plan.model import Runner as RunnerSpec

if TYPE_CHECKING:
    from counterpoint.agents.ray_actors import RayBackend
    from counterpoint.net.hub import Hub


class NotSupportedError(CounterpointError):
    """A plan uses a feature this release does not run yet."""


class RemoteRunner:
    """Hands each attempt to a remote agent through the hub, and waits for its result."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.hub: Hub | None = None

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        if self.hub is None:
            raise NotSupportedError(f"agent {self.agent!r} is remote: run the plan with --serve")
        return await self.hub.run_task(self.agent, ctx)


def build_runner(
    spec: RunnerSpec, plan_dir: Path, kill_grace_s: float, agent: str | None = None
) -> Runner:
    if spec.python:
        return PythonRunner(spec.python, plan_dir)
    if spec.shell is not None:
        from counterpoint.agents.shell import ShellRunner

        return ShellRunner(spec, plan_dir, kill_grace_s=kill_grace_s)
    if spec.coding is not None:
        from counterpoint.agents.coding import CodingRunner

        return CodingRunner(spec, plan_dir, kill_grace_s=kill_grace_s)
    if agent is None:
        raise NotSupportedError(
            "a task's own run: cannot be remote; give an agent runner: {remote: true} "
            "and the task the capabilities that agent has"
        )
    return RemoteRunner(agent)


class Runners:
    """Every runner a plan needs, built (and imported) before the run starts."""

    def __init__(
        self,
        plan: Plan,
        plan_dir: Path,
        kill_grace_s: float,
        backend: str | None = None,
        ray_address: str | None = None,
    ) -> None:
        #: The Ray backend (``backend`` or the plan's ``settings.backend`` is ``ray``): the
        #: agents with a python runner run on its actors; everything else stays local.
        self.ray: RayBackend | None = None
        if (backend or plan.settings.backend) == "ray":
            from counterpoint.agents.ray_actors import RayBackend

            self.ray = RayBackend(plan.settings.ray, ray_address, kill_grace_s)
        self.by_agent = {
            name: (
                self.ray.runner(name, a, plan_dir)
                if self.ray is not None and a.runner.python
                else build_runner(a.runner, plan_dir, kill_grace_s, name)
            )
            for name, a in plan.agents.items()
            if a.runner is not None
        }
        self.by_task = {
            t.id: build_runner(t.run, plan_dir, kill_grace_s)
            for t in plan.tasks()
            if t.run is not None
        }
        self.rollback_by_task: dict[str, Runner] = {}
        for t in plan.tasks():
            if t.rollback is None:
                continue
            if t.rollback.remote:
                local = [
                    name
                    for name, a in plan.agents.items()
                    if set(t.requires) <= set(a.capabilities) and a.capacity > 0 and not a.remote
                ]
                if local or t.run is not None:
                    raise NotSupportedError(
                        f"task {t.id!r}: a remote rollback: action goes back to the remote "
                        f"agent that ran the task, but {(local or ['its own run:'])[0]!r} "
                        "could run it locally; give it a python or shell rollback"
                    )
                continue
            self.rollback_by_task[t.id] = build_runner(t.rollback, plan_dir, kill_grace_s)
        self._check_every_task_has_one(plan)

    def _check_every_task_has_one(self, plan: Plan) -> None:
        for task in plan.tasks():
            if task.id in self.by_task:
                continue
            able = [
                name
                for name, a in plan.agents.items()
                if set(task.requires) <= set(a.capabilities) and a.capacity > 0
            ]
            bare = [name for name in able if name not in self.by_agent]
            if bare:
                raise NotSupportedError(
                    f"task {task.id!r} could be given to agent {bare[0]!r}, which has no runner; "
                    "give the agent a runner or the task its own run:"
                )

    @contextmanager
    def started(self) -> Iterator[None]:
        """For the run: the Ray backend's cluster connection and actors (started on entry,
        stopped on exit); nothing to do for the local backend."""
        if self.ray is None:
            yield
            return
        self.ray.start()
        try:
            yield
        finally:
            self.ray.close()

    @property
    def remote_agents(self) -> list[str]:
        return [name for name, r in self.by_agent.items() if isinstance(r, RemoteRunner)]

    def attach_hub(self, hub: Hub) -> None:
        for runner in self.by_agent.values():
            if isinstance(runner, RemoteRunner):
                runner.hub = hub

    def is_remote(self, task: str, agent: str | None) -> bool:
        return task not in self.by_task and isinstance(self.by_agent.get(agent or ""), RemoteRunner)

    def for_task(self, task: str, agent: str | None) -> Runner:
        runner = self.by_task.get(task)
        if runner is None and agent is not None:
            runner = self.by_agent[agent]
        if runner is None:
            raise NotSupportedError(f"task {task!r} has no runner")
        return runner
