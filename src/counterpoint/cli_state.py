"""Commands about the shared state: state, conflicts, resolve."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint.cli import cli, err, fail, out
from counterpoint.cli_run import open_latest, state_option
from counterpoint.runtime.state import read_conflicts, read_state


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


@cli.command()
@click.argument("key", required=False)
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def state(key: str | None, state: str | None, as_json: bool) -> None:
    """The shared state of the latest run: every key's value, or KEY's versions."""
    store, record = open_latest(state)
    try:
        versions = read_state(store, record.id)
    finally:
        store.close()
    if key is not None and key not in versions:
        known = ", ".join(sorted(versions)[:10]) or "none yet"
        fail(f"no key {key!r} in the shared state of run {record.id} (keys: {known})")
    current = {
        k: next((v for v in reversed(vs) if v["status"] == "current"), None)
        for k, vs in versions.items()
    }
    if as_json:
        if key is not None:
            cur = current[key]
            body = {"key": key, "value": cur["value"] if cur else None, "versions": versions[key]}
        else:
            body = {"run": record.id, "state": {k: v["value"] for k, v in current.items() if v}}
        click.echo(json.dumps(body, indent=2))
        return
    if key is not None:
        table = Table("version", "value", "task", "agent", "status", "at", title=f"{key}")
        for v in versions[key]:
            table.add_row(
                str(v["version"]),
                esc(_short(v["value"])),
                esc(v["task"] or "-"),
                esc(v["agent"] or "-"),
                v["status"],
                _when(v["ts"]),
            )
        out.print(table)
        return
    if not versions:
        err.print(f"run {record.id} has no shared state yet")
        return
    table = Table("key", "value", "version", "written by", title=f"Shared state of run {record.id}")
    for k, cur in sorted(current.items()):
        if cur is None:
            table.add_row(esc(k), "[yellow](in conflict)[/]", "-", "-")
        else:
            table.add_row(
                esc(k), esc(_short(cur["value"])), str(cur["version"]), esc(cur["task"] or "-")
            )
    out.print(table)


@cli.command()
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def conflicts(state: str | None, as_json: bool) -> None:
    """The data conflicts of the latest run and how each was (or is to be) resolved."""
    store, record = open_latest(state)
    try:
        found = read_conflicts(store, record.id)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"run": record.id, "conflicts": found}, indent=2))
        return
    if not found:
        err.print(f"run {record.id} has no conflicts")
        return
    table = Table(
        "id",
        "kind",
        "key",
        "tasks",
        "values",
        "policy",
        "status",
        "resolution",
        title=f"Conflicts of run {record.id}",
    )
    for c in found:
        resolution = c["resolution"] or {}
        how = resolution.get("reason", "")
        if resolution.get("winner"):
            how = f"{resolution['winner']}: {how}"
        table.add_row(
            str(c["id"]),
            c["kind"],
            esc(c["key"]),
            esc(", ".join(c["tasks"])),
            esc("; ".join(f"{t}={_short(v, 24)}" for t, v in c["values"].items())),
            c["policy"],
            c["status"],
            esc(how),
        )
    out.print(table)


@cli.command()
@click.argument("conflict", type=int)
@click.option("--value", "value_json", metavar="JSON", help="The value to keep, as JSON.")
@click.option("--task", metavar="TASK", help="Keep the value this task wrote.")
@click.option("--as", "who", default="operator", show_default=True, help="Who decides.")
@state_option
def resolve(
    conflict: int, value_json: str | None, task: str | None, who: str, state: str | None
) -> None:
    """Decide conflict CONFLICT: keep a value (--value) or a task's write (--task)."""
    if (value_json is None) == (task is None):
        fail("give exactly one of --value JSON or --task TASK")
    value: Any = None
    if value_json is not None:
        try:
            value = json.loads(value_json)
        except ValueError as exc:
            fail(f"--value is not valid JSON ({exc}); quote strings: --value '\"text\"'")
    store, record = open_latest(state)
    try:
        found = {c["id"]: c for c in read_conflicts(store, record.id)}
        c = found.get(conflict)
        if c is None:
            fail(
                f"no conflict {conflict} in run {record.id} (conflicts: "
                f"{', '.join(map(str, found)) or 'none'})"
            )
        if c["status"] != "open":
            fail(f"conflict {conflict} is already {c['status']}")
        if task is not None and task not in c["values"]:
            fail(
                f"task {task!r} is not part of conflict {conflict} (its tasks: "
                f"{', '.join(c['tasks'])})"
            )
        args: dict[str, Any] = {"conflict": conflict, "by": who}
        if task is not None:
            args["task"] = task
        else:
            args["value"] = value
        store.add_command(record.id, "resolve", **args)
    finally:
        store.close()
    err.print(f"conflict {conflict} ({esc(c['key'])}): decision recorded for run {record.id}")
