"""Agent adapters: how a task's work is executed (python callables, shell commands, ...)."""

from counterpoint.agents.base import RateLimited, Runner, TaskContext, TaskFailed

__all__ = ["RateLimited", "Runner", "TaskContext", "TaskFailed"]
