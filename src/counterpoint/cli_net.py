"""Commands of the network side: serve, agent (a remote worker) and token."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint.cli import EXIT_INVALID, EXIT_OK, cli, err, fail, out
from counterpoint.cli_run import (
    output_options,
    resume_latest,
    serving,
    state_option,
    sync_option,
    tls_options,
)
from counterpoint.net.tokens import Kind, TokenError, TokenStore

if TYPE_CHECKING:
    from counterpoint.net.client import AgentConfig


@cli.command()
@state_option
@click.option("--host", metavar="HOST", help="Address to serve on (default 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port (default 8765; 0 picks a free one)."
)
@tls_options
@sync_option
@output_options
def serve(
    state: str | None,
    host: str | None,
    port: int | None,
    sync: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Serve the latest run in the state directory: resume it with its hub listening.

    Remote agents connect to ws://HOST:PORT/agents/ID/ws (wss:// with --tls-cert);
    operators use the dashboard at http://HOST:PORT/ and /api/run. The same as
    `counterpoint resume --serve`.
    """
    resume_latest(state, False, sync, False, serving(True, host, port), quiet, as_json)


def _parse_capabilities(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    if not value:
        return []
    names = [c.strip() for c in value.split(",")]
    if any(not c for c in names):
        raise click.BadParameter(f"empty capability name in {value!r} (use a,b,c)")
    return names


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise click.BadParameter(f"{value!r} is not a ws:// or wss:// address (ws://HOST:PORT)")
    try:
        parsed.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None
    return value


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--connect",
    "url",
    required=True,
    callback=_check_url,
    metavar="ws://HOST:PORT",
    help="The hub of a served run.",
)
@click.option("--id", "agent", required=True, metavar="ID", help="This agent's id in the plan.")
@click.option(
    "--token",
    required=True,
    envvar="COUNTERPOINT_TOKEN",
    metavar="TOKEN",
    help="This agent's token (or $COUNTERPOINT_TOKEN, which keeps it out of `ps`).",
)
@click.option(
    "--capabilities",
    callback=_parse_capabilities,
    metavar="A,B",
    help="What this worker can do; must include the plan's capabilities for the agent.",
)
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Tasks it runs at once (the run uses at most the plan's capacity).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, exists=True),
    default=".",
    help="Where commands run.",
)
@click.option(
    "--state",
    "agent_state",
    type=click.Path(file_okay=False),
    default=".counterpoint-agent",
    show_default=True,
    help="Where task logs and the inbox (inbox.jsonl) go.",
)
@click.option("--use-shell", is_flag=True, help="Run COMMAND through /bin/sh -c.")
@click.option(
    "--bid",
    metavar="COMMAND|module:function",
    help="How it answers calls for proposals (contract net); default: it proposes the "
    "task's estimate at its load. See docs/coordination.md.",
)
@click.option(
    "--vote",
    metavar="COMMAND|module:function",
    help="How it answers ballots (decisions by vote); default: it abstains.",
)
@click.option(
    "--backoff-max",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Longest wait in seconds between reconnection attempts.",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, readable=True),
    envvar="COUNTERPOINT_TLS_CA",
    metavar="FILE",
    help="A CA certificate (PEM) to trust for a wss:// hub, e.g. its self-signed "
    "certificate (or $COUNTERPOINT_TLS_CA); the system's CAs are trusted anyway.",
)
@click.option("--once", is_flag=True, help="Exit when the run finishes (else wait for the next).")
@click.option("--verbose", "-v", is_flag=True, help="Log every connection event.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def agent(
    url: str,
    agent: str,
    token: str,
    capabilities: list[str],
    capacity: int,
    workdir: str,
    agent_state: str,
    use_shell: bool,
    bid: str | None,
    vote: str | None,
    backoff_max: float,
    tls_ca: str | None,
    once: bool,
    verbose: bool,
    command: tuple[str, ...],
) -> None:
    """Be a remote agent: connect to a hub and run each assigned task as COMMAND.

    COMMAND takes the same placeholders as a shell runner ({task_id}, {instructions},
    {inputs.NAME}...), reads the task payload on stdin and prints its JSON result as
    its last line. Example:

    \b
        counterpoint agent --connect ws://127.0.0.1:8765 --id builder \\
            --capabilities build -- ./build.sh {task_id}
    """
    from counterpoint.net.client import AgentClient, AgentConfig, AgentRefused

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=f"counterpoint agent {agent}: %(message)s",
        stream=sys.stderr,
    )
    config = AgentConfig(
        url=url,
        agent=agent,
        token=token,
        capabilities=capabilities,
        command=list(command),
        capacity=capacity,
        use_shell=use_shell,
        workdir=Path(workdir).resolve(),
        state_dir=Path(agent_state).resolve(),
        backoff_max_s=backoff_max,
        once=once,
        bid=bid,
        vote=vote,
        tls_ca=tls_ca,
    )
    _check_responders(config)
    if tls_ca:
        try:
            config.ssl_context() or ssl.create_default_context(cafile=tls_ca)
        except (ssl.SSLError, OSError) as exc:
            fail(f"--tls-ca {tls_ca}: not a PEM certificate file ({exc})")
    client = AgentClient(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, client.stop)
        await client.run()

    try:
        asyncio.run(main())
    except AgentRefused as exc:
        fail(str(exc))
    err.print(f"agent {esc(agent)} stopped")
    sys.exit(EXIT_OK)


def _check_responders(config: AgentConfig) -> None:
    """Import a ``--bid``/``--vote`` Python callable now: a typo fails at once (exit 2)."""
    from counterpoint.agents.python import load_callable
    from counterpoint.runtime.canvass import is_python_target

    for option, target in (("--bid", config.bid), ("--vote", config.vote)):
        if target is None:
            continue
        if not target.strip():
            fail(f"{option} is empty: give a command or module:function")
        if is_python_target(target):
            try:
                load_callable(target, config.workdir)
            except ImportError as exc:
                fail(f"{option} {target}: {exc}")


@cli.group()
def token() -> None:
    """Create, list and revoke the tokens of remote agents and operators."""


def _tokens(state: str | None) -> TokenStore:
    return TokenStore(Path(state) if state else Path(".counterpoint"))


def _kind(operator: bool, viewer: bool) -> Kind:
    if operator and viewer:
        fail("--operator and --viewer are two kinds of token: give one")
    return "operator" if operator else "viewer" if viewer else "agent"


@token.command("create")
@click.argument("name")
@click.option("--operator", is_flag=True, help="An operator token (control actions) for NAME.")
@click.option("--viewer", is_flag=True, help="A viewer token for NAME: the dashboard, read-only.")
@state_option
def token_create(name: str, operator: bool, viewer: bool, state: str | None) -> None:
    """Print a new token for agent NAME (shown once; stored hashed)."""
    store = _tokens(state)
    kind = _kind(operator, viewer)
    try:
        value = store.create(name, kind)
    except TokenError as exc:
        fail(str(exc))
    err.print(f"token for {kind} {esc(name)} (shown once; its hash is in {esc(str(store.path))}):")
    click.echo(value)


@token.command("list")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
def token_list(state: str | None, as_json: bool) -> None:
    """List who has a token (never the tokens themselves)."""
    try:
        infos = _tokens(state).list()
    except TokenError as exc:
        fail(str(exc))
    if as_json:
        rows = [{"kind": t.kind, "name": t.name, "created": t.created} for t in infos]
        click.echo(json.dumps({"tokens": rows}, indent=2))
        return
    if not infos:
        err.print("no tokens; create one with `counterpoint token create AGENT`")
        return
    table = Table("kind", "name", "created")
    for t in infos:
        created = datetime.fromtimestamp(t.created, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        table.add_row(t.kind, esc(t.name), created)
    out.print(table)


@token.command("revoke")
@click.argument("name")
@click.option("--operator", is_flag=True, help="Revoke NAME's operator token.")
@click.option("--viewer", is_flag=True, help="Revoke NAME's viewer token.")
@state_option
def token_revoke(name: str, operator: bool, viewer: bool, state: str | None) -> None:
    """Revoke NAME's token: its next connection is refused, its dashboard sessions end."""
    kind = _kind(operator, viewer)
    try:
        found = _tokens(state).revoke(name, kind)
    except TokenError as exc:
        fail(str(exc))
    if not found:
        fail(f"no {kind} token for {name!r}", EXIT_INVALID)
    err.print(f"revoked the token of {esc(name)}")
