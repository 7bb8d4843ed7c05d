"""Commands that watch a run: ``alerts`` and ``metrics``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint.cli import cli, err, fail, out
from counterpoint.cli_report import time_option
from counterpoint.cli_run import open_latest, state_option
from counterpoint.plan.schema_errors import did_you_mean
from counterpoint.runtime.alerts import read_alerts
from counterpoint.runtime.sampling import read_samples, series, summary

_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_SPARKS = "▁▂▃▄▅▆▇█"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _for(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


@cli.command()
@state_option
@click.option("--all", "show_all", is_flag=True, help="Resolved alerts too, not only firing ones.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def alerts(state: str | None, show_all: bool, as_json: bool) -> None:
    """Alerts of the latest run: those firing now (--all: every one, with its resolution)."""
    store, record = open_latest(state)
    try:
        found = read_alerts(store, record.id)
    finally:
        store.close()
    shown = [a for a in found if show_all or a.firing]
    if as_json:
        body = {
            "run": record.id,
            "firing": sum(1 for a in found if a.firing),
            "alerts": [a.to_json() for a in shown],
        }
        click.echo(json.dumps(body, indent=2))
        return
    if not shown:
        what = "no alerts" if show_all or not found else "no alerts firing (--all shows resolved)"
        err.print(f"run {record.id}: {what}")
        return
    title = f"Alerts of run {record.id}" if show_all else f"Alerts firing in run {record.id}"
    table = Table("id", "severity", "alert", "subject", "message", "since", "status", title=title)
    for a in shown:
        if a.firing:
            status = "[bold]firing[/]" + (" (run ended)" if record.status != "running" else "")
        else:
            took = _for((a.resolved or a.fired) - a.fired)
            status = f"resolved after {took}: {esc(a.resolution or '')}"
        table.add_row(
            str(a.id),
            f"[{_STYLE.get(a.severity, '')}]{a.severity}[/]",
            esc(a.name) + ("" if a.kind == "rule" else " [dim](built-in)[/]"),
            esc(a.subject),
            esc(a.message),
            _when(a.fired),
            status,
        )
    out.print(table)


def _spark(values: list[float], width: int = 40) -> str:
    if not values:
        return ""
    if len(values) > width:  # keep the shape: the max of each bucket
        step = len(values) / width
        values = [max(values[int(i * step) : int((i + 1) * step) or 1]) for i in range(width)]
    low, high = min(values), max(values)
    if high == low:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[round((v - low) / (high - low) * (len(_SPARKS) - 1))] for v in values)


@cli.command()
@click.argument("names", nargs=-1, metavar="[METRIC]...")
@state_option
@click.option("--since", metavar="TIME", help="Only samples from TIME (ISO 8601).")
@click.option("--until", metavar="TIME", help="Only samples up to TIME (ISO 8601).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (every sample).")
def metrics(
    names: tuple[str, ...], state: str | None, since: str | None, until: str | None, as_json: bool
) -> None:
    """The sampled metrics of the latest run: the last value, range and trend of each
    (or of the METRICs named), as journaled every settings.metrics_every."""
    start, end = time_option("--since", since), time_option("--until", until)
    if start is not None and end is not None and start > end:
        fail(f"--since {since} is after --until {until}")
    store, record = open_latest(state)
    try:
        samples = read_samples(store, record.id, start, end)
    finally:
        store.close()
    known = list(samples[-1][1]) if samples else []
    for name in names:
        if samples and name not in known:
            hint = did_you_mean(name, known)
            fail(f"unknown metric {name!r}{'; ' + hint if hint else ''} (see docs/metrics.md)")
    chosen = list(names) or known
    if as_json:
        body = {
            "run": record.id,
            "metrics": chosen,
            "samples": [
                {"ts": ts, "values": {n: v[n] for n in chosen if n in v}} for ts, v in samples
            ],
        }
        click.echo(json.dumps(body, indent=2))
        return
    if not samples:
        err.print(f"run {record.id} has no metric samples yet")
        return
    stats = summary(samples, chosen)
    title = (
        f"Metrics of run {record.id}: {len(samples)} samples, "
        f"{_when(samples[0][0])} to {_when(samples[-1][0])}"
    )
    table = Table("metric", "last", "min", "max", "mean", "trend", title=title)
    for name in chosen:
        s = stats[name]
        if s is None:
            table.add_row(esc(name), "-", "-", "-", "-", "")
            continue
        table.add_row(
            esc(name),
            f"{s['last']:g}",
            f"{s['min']:g}",
            f"{s['max']:g}",
            f"{s['mean']:g}",
            _spark([v for _, v in series(samples, name)]),
        )
    out.print(table)
