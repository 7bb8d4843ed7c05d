"""What a person sees while a plan runs: live bars per phase, running tasks, counts.

Also the plain alternatives: JSON lines of events (``--json``) and nothing until
the end (``--quiet``). All of them are run observers fed by the engine.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from counterpoint.plan.graph import Graph
from counterpoint.runtime.events import RunEvent, RunObserver

_DONE = {"task_completed", "task_failed", "task_blocked"}
_ALERT_STYLE = {"critical": "bold red", "warning": "red", "info": "cyan"}
_AGENT_NOTES = {
    "hub_listening": "serving remote agents at {url}; dashboard at {dashboard}",
    "waiting_for_agents": "waiting for remote agents to connect to {url}: {agents}",
    "agent_connected": "agent {agent} connected",
    "agent_disconnected": "agent {agent} disconnected; waiting for it to reconnect",
    "agent_lost": "agent {agent} lost: {reason}",
    "budget_reached": "budget reached: {message}",
}


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


class JsonLines(RunObserver):
    """Every event as one JSON object per line on stdout."""

    def on_event(self, event: RunEvent) -> None:
        sys.stdout.write(json.dumps(event.to_json(), default=str) + "\n")
        sys.stdout.flush()


class LiveDisplay(RunObserver):
    """A rich live view: a bar per phase, the running tasks with agent and elapsed time."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.lock = threading.Lock()
        self.running: dict[str, tuple[str | None, float, float]] = {}
        self.counts = {"completed": 0, "failed": 0, "blocked": 0, "retrying": 0}
        self.phase_of: dict[str, int] = {}
        self.graph: Graph | None = None
        self.bars = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
        )
        self.bar_ids: list[TaskID] = []
        self.notes: list[str] = []
        self.alerts: dict[int, tuple[str, str]] = {}  # firing: id -> (severity, text)
        self.started = False
        self.live = Live(console=console, refresh_per_second=4, get_renderable=self.render)

    def __enter__(self) -> LiveDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.live.__exit__(None, None, None)
            if not self.console.is_terminal:
                self.console.print()

    def attach(self, graph: Graph) -> None:
        """A bar per phase, sized by the number of tasks in the phase."""
        self.graph = graph
        self.phase_of = {graph.task_ids[t]: graph.phase_of_task[t] for t in range(graph.n_tasks)}
        totals = [0] * len(graph.plan.phases)
        for t in range(graph.n_tasks):
            totals[graph.phase_of_task[t]] += 1
        for phase, total in zip(graph.plan.phases, totals, strict=True):
            self.bar_ids.append(self.bars.add_task(phase.title, total=total))

    def on_event(self, event: RunEvent) -> None:
        if not self.started:  # drawn from the first event on: a refused run draws nothing
            self.started = True
            self.live.__enter__()
        with self.lock:
            self._apply(event)

    def _apply(self, event: RunEvent) -> None:
        kind, task, data = event.kind, event.task, event.data
        if kind in ("task_spawned", "task_dropped") and task:
            self._spawned(kind, task)
        elif kind == "task_started" and task:
            self.running[task] = (data.get("agent"), time.monotonic(), 0.0)
        elif kind == "task_progress" and task in self.running:
            agent, since, _ = self.running[task]
            self.running[task] = (agent, since, float(data.get("progress", 0.0)))
        elif kind in _DONE and task:
            self.running.pop(task, None)
            self.counts[kind.removeprefix("task_")] += 1
            if task in self.phase_of:
                self.bars.advance(self.bar_ids[self.phase_of[task]])
        elif kind in ("task_retrying", "task_cancelled", "task_rate_limited") and task:
            self.running.pop(task, None)
            self.counts["retrying"] += kind == "task_retrying"
        elif kind == "gate_evaluated" and data.get("status") == "waiting":
            self.notes.append(f"gate {data.get('gate')} is waiting for approval")
        elif kind == "task_requeued" and task:
            self.running.pop(task, None)
            self.notes.append(f"{task} goes back to the queue: {data.get('reason', '')}")
        elif kind == "alert_fired":
            text = f"{data.get('name')} ({data.get('subject')}): {data.get('message')}"
            self.alerts[int(data.get("alert_id", 0))] = (str(data.get("severity", "")), text)
        elif kind == "alert_resolved":
            self.alerts.pop(int(data.get("alert_id", 0)), None)
        elif kind in _AGENT_NOTES:
            fields = _Missing({k: _text(v) for k, v in data.items()})
            url = str(data.get("url", "")).replace("ws", "http", 1)  # ws:// and wss://
            fields["dashboard"] = f"{url}/"
            self.notes.append(_AGENT_NOTES[kind].format_map(fields))

    def _spawned(self, kind: str, task: str) -> None:
        """A task was spawned (its phase's bar grows) or dropped (it counts as done)."""
        if kind == "task_dropped":
            if task in self.phase_of:
                self.bars.advance(self.bar_ids[self.phase_of[task]])
            return
        if self.graph is None:
            return
        phase = self.graph.phase_of_task[self.graph.index[task]]
        self.phase_of[task] = phase
        bar = self.bar_ids[phase]
        total = next(b.total for b in self.bars.tasks if b.id == bar) or 0
        self.bars.update(bar, total=total + 1)

    def render(self) -> Group:
        with self.lock:
            return Group(self.bars.get_renderable(), self._running_table(), self._footer())

    def _running_table(self) -> Table:
        table = Table(title=f"Running ({len(self.running)})", title_justify="left", expand=False)
        for column in ("task", "agent", "elapsed", "progress"):
            table.add_column(column)
        now = time.monotonic()
        items = sorted(self.running.items(), key=lambda kv: kv[1][1])
        for task, (agent, since, pct) in items[:12]:
            table.add_row(task, agent or "-", f"{now - since:.1f}s", f"{pct:.0f}%" if pct else "")
        if len(items) > 12:
            table.add_row(f"... {len(items) - 12} more", "", "", "")
        return table

    def _footer(self) -> Text:
        c = self.counts
        text = Text(
            f"done {c['completed']}  failed {c['failed']}  blocked {c['blocked']}  "
            f"retries {c['retrying']}"
        )
        if self.alerts:
            text.append(f"\nalerts firing: {len(self.alerts)}", style="bold red")
            for severity, line in list(self.alerts.values())[-3:]:
                text.append(f"\n  {severity}: {line}", style=_ALERT_STYLE.get(severity, ""))
        for note in self.notes[-3:]:
            text.append(f"\n{note}", style="yellow")
        return text


class GraphKeeper(RunObserver):
    """Keeps the compiled plan of the run, for the summary printed at the end."""

    graph: Graph | None = None

    def attach(self, graph: Graph) -> None:
        self.graph = graph


def summary_table(counts: dict[str, Any], per_phase: list[tuple[str, dict[str, int]]]) -> Table:
    table = Table(title="Run summary")
    states = ["completed", "failed", "blocked", "cancelled", "pending"]
    if counts.get("rolled_back"):
        states.insert(3, "rolled_back")
    table.add_column("phase")
    for s in states:
        table.add_column(s, justify="right")
    for phase, tally in per_phase:
        table.add_row(phase, *(str(tally.get(s, 0)) for s in states))
    table.add_row("all", *(str(counts.get(s, 0)) for s in states), style="bold")
    return table
