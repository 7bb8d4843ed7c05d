"""The ``report`` command: KPIs and the story of the latest run, as Markdown, HTML or JSON."""

from __future__ import annotations

import click
from rich.markup import escape

from counterpoint.cli import cli, emit_text, err, fail
from counterpoint.cli_run import open_latest, state_option
from counterpoint.report import FORMATS, ReportError, build_report, format_for, parse_time, render


def time_option(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ReportError as exc:
        fail(f"{option}: {exc}")


@cli.command()
@state_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="md (default), html (one self-contained file) or json; -o FILE's suffix picks it too.",
)
@click.option("--since", metavar="TIME", help="Only attempts and events from TIME (ISO 8601).")
@click.option("--until", metavar="TIME", help="Only attempts and events up to TIME (ISO 8601).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to a file.")
def report(
    state: str | None, fmt: str | None, since: str | None, until: str | None, output: str | None
) -> None:
    """Report on the latest run: KPIs, phases, planned and actual Gantt, conflicts, gates."""
    start, end = time_option("--since", since), time_option("--until", until)
    if start is not None and end is not None and start > end:
        fail(f"--since {since} is after --until {until}")
    store, record = open_latest(state)
    try:
        made = build_report(store, record, since=start, until=end)
    except ReportError as exc:
        fail(str(exc))
    finally:
        store.close()
    if emit_text(render(made, format_for(output, fmt)), output):
        err.print(f"Report written to {escape(str(output))}")
