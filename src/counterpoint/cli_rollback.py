"""Commands for rollbacks: ``config`` (versioned configuration) and ``deploy`` (deployments).

Both work on the state directory's journal without a run. Bad input (an unknown
scope, version or deployment, a bad KEY=VALUE, tampered data) exits 2; a version
rolled back because it failed validation, or a deployment rollback that failed,
exits 1; an interrupted rollback exits 3.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.markup import escape as esc
from rich.table import Table

from counterpoint.cli import EXIT_CANCELLED, EXIT_FAILED, cli, err, fail, out
from counterpoint.cli_run import journal, state_dir_of, state_option
from counterpoint.durations import DurationError, parse_duration
from counterpoint.errors import CounterpointError
from counterpoint.rollback import (
    ChecksumError,
    ConfigHistory,
    ConfigVersion,
    Deployment,
    Deployments,
    Hook,
    Policy,
    RollbackResult,
    StepRecord,
    UnknownSubject,
    Validation,
    rollout,
)
from counterpoint.rollback.strategies import plan
from counterpoint.rollback.values import apply, canonical, lookup, parse_assignment, parse_key
from counterpoint.store.sqlite import SqliteStore


def _author(name: str | None) -> str:
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(option: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except DurationError as exc:
        fail(f"{option}: {exc}")
    if seconds <= 0:
        fail(f"{option} must be more than 0 s")
    return seconds


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _journal(state: str | None, *, create: bool, what: str) -> AbstractContextManager[SqliteStore]:
    directory = state_dir_of(state)
    return journal(
        directory, create=create, missing=f"no {what} in {directory} (nothing was recorded there)"
    )


# -- config --------------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Versioned configuration of agents (or any scope), with automatic rollback."""


def policy_options(func: Any) -> Any:
    options = [
        click.option(
            "--validate-command", metavar="CMD", help="Validate new versions with this command."
        ),
        click.option(
            "--validate-python",
            metavar="MODULE:FUNCTION",
            help="Validate new versions with this Python function.",
        ),
        click.option(
            "--timeout",
            metavar="DURATION",
            help="How long a new version has to validate (default 5m).",
        ),
        click.option(
            "--interval",
            metavar="DURATION",
            help="How often a validator without an answer is asked again (default 5s).",
        ),
        click.option(
            "--keep", type=click.IntRange(min=1), help="How many versions to keep (default 10)."
        ),
        click.option(
            "--notify-webhook",
            "webhooks",
            metavar="URL",
            multiple=True,
            help="POST the notice of each automatic rollback to this URL.",
        ),
        click.option(
            "--notify-command",
            "commands",
            metavar="CMD",
            multiple=True,
            help="Run this command with each automatic rollback's notice on stdin.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _new_policy(old: Policy, opts: dict[str, Any]) -> Policy | None:
    """``old`` changed by the policy options given; None when none was given."""
    timeout = _duration("--timeout", opts["timeout"])
    interval = _duration("--interval", opts["interval"])
    if opts["validate_command"] and opts["validate_python"]:
        fail("give --validate-command or --validate-python, not both")
    check = old.validation
    hook = _validation_hook(opts)
    if hook is not None or timeout or interval:
        if hook is None and check is None:
            fail("--timeout and --interval need a validation: --validate-command or -python")
        base = check or Validation(hook=hook)
        check = Validation(
            hook=hook or base.hook,
            timeout_s=timeout or base.timeout_s,
            interval_s=interval or base.interval_s,
        )
    if opts.get("no_validate"):
        check = None
    new = replace(
        old,
        keep=opts["keep"] or old.keep,
        validation=check,
        webhooks=tuple(opts["webhooks"]) or old.webhooks,
        commands=tuple(opts["commands"]) or old.commands,
    )
    if opts.get("no_notify"):
        new = replace(new, webhooks=(), commands=())
    return None if new == old else new


def _validation_hook(opts: dict[str, Any]) -> Hook | None:
    if opts["validate_command"]:
        return Hook.of_command(opts["validate_command"], Path.cwd())
    if opts["validate_python"]:
        return Hook.of_python(opts["validate_python"], Path.cwd())
    return None


def _change_policy(history: ConfigHistory, scope: str, opts: dict[str, Any]) -> Policy | None:
    try:
        old = history.policy(scope)
    except UnknownSubject:
        old = Policy()
    new = _new_policy(old, opts)
    return None if new is None else history.configure(scope, new)


class _Notices:
    """The CLI's ``notify``: automatic rollbacks are reported on stderr."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, notice: dict[str, Any]) -> None:
        self.seen.append(notice)

    def warn(self, skip_version: int | None = None) -> None:
        for notice in self.seen:
            if notice["version"] != skip_version:
                err.print(f"[yellow]warning:[/] {esc(str(notice['text']))}")


@config.command("set")
@click.argument("scope")
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
@click.option("--unset", multiple=True, metavar="KEY", help="Remove a key (dotted keys work).")
@click.option("--replace", "fresh", is_flag=True, help="Start from {} instead of the current data.")
@click.option("--as", "author", metavar="NAME", help="Who sets it (default: your login name).")
@policy_options
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
def config_set(
    scope: str,
    assignments: tuple[str, ...],
    unset: tuple[str, ...],
    fresh: bool,
    author: str | None,
    state: str | None,
    as_json: bool,
    **opts: Any,
) -> None:
    """Set keys of SCOPE's configuration: a new version, validated (and rolled back if not)."""
    try:
        pairs = [parse_assignment(a) for a in assignments]
        removed = [parse_key(k) for k in unset]
    except CounterpointError as exc:
        fail(str(exc))
    if not pairs and not removed and not fresh:
        fail("nothing to set: give KEY=VALUE pairs, --unset KEY or --replace")
    notices = _Notices()
    with _journal(state, create=True, what="configuration") as store:
        history = ConfigHistory(store, notify=notices)
        changed = _change_policy(history, scope, opts)
        if changed is not None:
            err.print(f"{esc(scope)}: {esc(changed.describe())}")
        current = _current(history, scope)
        data = apply({} if fresh or current is None else current.data, pairs, removed)
        validation = history.policy(scope).validation if scope in history.scopes() else None
        if validation is not None and (current is None or canonical(data) != current.text):
            err.print(f"{esc(scope)}: validating with {esc(validation.describe())} …")
        result = history.set(scope, data, author=_author(author))
    version = result.version
    notices.warn(skip_version=version.version)
    if as_json:
        _print_json({**version.to_json(), "changed": result.changed, "ok": result.ok})
    if not result.ok:
        to = result.rolled_back_to
        where = f"rolled back to version {to}" if to is not None else "no earlier version validated"
        fail(
            f"{scope}: version {version.version} failed validation ({version.detail}); {where}",
            EXIT_FAILED,
        )
    if as_json:
        return
    if not result.changed:
        out.print(f"{esc(scope)}: unchanged (version {version.version})")
        return
    out.print(
        f"{esc(scope)}: version {version.version} ({version.status}, sha256 "
        f"{version.checksum[:12]}) set by {esc(version.author)}"
    )


def _current(history: ConfigHistory, scope: str) -> ConfigVersion | None:
    """The current version to build on (None for a new scope), its checksum verified."""
    if scope not in history.scopes():
        return None
    try:
        return history.current(scope)
    except ChecksumError as exc:
        fail(f"{exc}; give the whole configuration with --replace, or roll back")


@config.command("get")
@click.argument("scope")
@click.argument("key", required=False)
@click.option("--version", "number", type=int, metavar="N", help="An earlier version.")
@state_option
@click.option("--json", "as_json", is_flag=True, help="The version and its data as JSON.")
def config_get(
    scope: str, key: str | None, number: int | None, state: str | None, as_json: bool
) -> None:
    """Print SCOPE's current configuration (or KEY's value), its checksum verified."""
    notices = _Notices()
    with _journal(state, create=False, what="configuration") as store:
        version = ConfigHistory(store, notify=notices).get(scope, number)
        data = version.data
    notices.warn()
    value: Any = data
    if key is not None:
        try:
            value = lookup(data, parse_key(key))
        except (KeyError, CounterpointError):
            fail(
                f"no key {key!r} in version {version.version} of {scope} "
                f"(keys: {', '.join(sorted(data)) or 'none'})"
            )
    if as_json:
        body = version.to_json()
        if key is not None:
            body = {**body, "key": key, "value": value}
        _print_json(body)
        return
    err.print(_version_line(version))
    _print_json(value)


def _version_line(v: ConfigVersion) -> str:
    mark = "current, " if v.current else ""
    return (
        f"{esc(v.scope)} version {v.version} ({mark}{v.status}) sha256 {v.checksum[:12]}, "
        f"by {esc(v.author)} at {_when(v.created)} UTC"
    )


@config.command("history")
@click.argument("scope")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def config_history(scope: str, state: str | None, as_json: bool) -> None:
    """Every kept version of SCOPE, newest first, with its checksum checked."""
    notices = _Notices()
    with _journal(state, create=False, what="configuration") as store:
        history = ConfigHistory(store, notify=notices)
        versions = history.history(scope)
        policy = history.policy(scope)
    notices.warn()
    current = next((v.version for v in versions if v.current), None)
    if as_json:
        _print_json(
            {
                "scope": scope,
                "current": current,
                "policy": _policy_json(policy),
                "versions": [v.to_json() for v in versions],
            }
        )
        return
    table = Table(title=scope, caption="* the current version")
    for name in ("version", "status", "by", "set at (UTC)", "sha256", "detail"):
        table.add_column(name, no_wrap=name in ("version", "status", "sha256"))
    for v in versions:
        check = "" if v.intact else "\n[bold red]TAMPERED[/]"
        table.add_row(
            f"{v.version}*" if v.current else str(v.version),
            v.status + check,
            esc(v.author),
            _when(v.created),
            v.checksum[:8],
            esc(v.detail),
        )
    out.print(table)
    err.print(f"{esc(scope)}: {esc(policy.describe())}")


def _policy_json(policy: Policy) -> dict[str, Any]:
    check = policy.validation
    return {
        "keep": policy.keep,
        "validation": None if check is None else check.to_json(),
        "notify": {"webhooks": list(policy.webhooks), "commands": list(policy.commands)},
    }


@config.command("rollback")
@click.argument("scope")
@click.option("--to", "to", type=int, metavar="VERSION", help="The version to go back to.")
@click.option("--as", "author", metavar="NAME", help="Who rolls back (default: your login name).")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the version rolled back to as JSON.")
def config_rollback(
    scope: str, to: int | None, author: str | None, state: str | None, as_json: bool
) -> None:
    """Go back to the newest valid version before the current one (or to VERSION)."""
    notices = _Notices()
    with _journal(state, create=False, what="configuration") as store:
        version = ConfigHistory(store, notify=notices).rollback(
            scope, to=to, author=_author(author)
        )
    notices.warn()
    if as_json:
        _print_json(version.to_json())
        return
    out.print(
        f"{esc(scope)}: rolled back to version {version.version} (sha256 {version.checksum[:12]})"
    )


@config.command("policy")
@click.argument("scope")
@policy_options
@click.option("--no-validate", is_flag=True, help="Stop validating new versions.")
@click.option("--no-notify", is_flag=True, help="Stop notifying automatic rollbacks.")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the policy as JSON.")
def config_policy(scope: str, state: str | None, as_json: bool, **opts: Any) -> None:
    """Show or change SCOPE's policy: validation, versions kept, notifications."""
    with _journal(state, create=True, what="configuration") as store:
        history = ConfigHistory(store)
        changed = _change_policy(history, scope, opts)
        policy = changed or history.policy(scope)
    if as_json:
        _print_json({"scope": scope, **_policy_json(policy)})
        return
    out.print(f"{esc(scope)}: {esc(policy.describe())}")


@config.command("list")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def config_list(state: str | None, as_json: bool) -> None:
    """Every configuration scope with its current version."""
    with _journal(state, create=False, what="configuration") as store:
        history = ConfigHistory(store)
        rows = [(s, history.history(s)) for s in history.scopes()]
    listed: list[dict[str, Any]] = [
        {
            "scope": scope,
            "current": next((v.version for v in versions if v.current), None),
            "versions": len(versions),
            "updated": max((v.created for v in versions), default=None),
        }
        for scope, versions in rows
    ]
    if as_json:
        _print_json({"scopes": listed})
        return
    if not listed:
        err.print("no configuration scopes yet")
        return
    table = Table("scope", "current", "versions kept", "last set (UTC)", title="Configuration")
    for s in listed:
        current = "-" if s["current"] is None else str(s["current"])
        table.add_row(esc(s["scope"]), current, str(s["versions"]), _when(s["updated"]))
    out.print(table)


# -- deploy --------------------------------------------------------------------------------


@cli.group()
def deploy() -> None:
    """Deployments and their rollback by strategy: blue-green, canary, rolling, full."""


def _hooks(commands: Sequence[str], functions: Sequence[str]) -> dict[str, Hook]:
    hooks: dict[str, Hook] = {}
    for option, items, make, form in (
        ("--hook", commands, Hook.of_command, "STEP=COMMAND"),
        ("--python", functions, Hook.of_python, "STEP=MODULE:FUNCTION"),
    ):
        for item in items:
            name, sep, target = item.partition("=")
            if not sep or not name.strip() or not target.strip():
                fail(f"{option} {item!r}: expected {form}")
            if name in hooks:
                fail(f"two hooks for {name!r}: give one --hook or --python per step")
            hooks[name.strip()] = _make(make, target, option)
    return hooks


def _make(make: Callable[[str, Path], Hook], target: str, option: str) -> Hook:
    try:
        return make(target, Path.cwd())
    except CounterpointError as exc:
        fail(f"{option}: {exc}")


def _steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        fail(f"--steps {text!r}: expected canary weights in percent, like 50,25,0")


@deploy.command("record")
@click.argument("name")
@click.option(
    "--type",
    "declared",
    required=True,
    metavar="TYPE",
    help="blue-green, canary, rolling (else full).",
)
@click.option("--version", "version", required=True, help="The version now deployed.")
@click.option("--previous", metavar="VERSION", help="The version it replaced (default: the last).")
@click.option("--hook", "commands", multiple=True, metavar="STEP=COMMAND", help="A command hook.")
@click.option(
    "--python", "functions", multiple=True, metavar="STEP=MODULE:FUNCTION", help="A Python hook."
)
@click.option("--colour", help="blue-green: the colour now live (default green).")
@click.option("--previous-colour", help="blue-green: the colour to switch back to.")
@click.option("--weight", type=int, help="canary: its share of traffic now, percent (100).")
@click.option("--steps", "steps_text", metavar="W,W,0", help="canary: weights on the way back.")
@click.option("--batches", "batch_count", type=click.IntRange(min=1), help="rolling: how many.")
@click.option("--batch", "batch_names", multiple=True, metavar="NAME", help="rolling: a batch.")
@click.option("--hook-timeout", metavar="DURATION", help="Time limit of each hook (default 10m).")
@click.option("--as", "author", metavar="NAME", help="Who deployed (default: your login name).")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def deploy_record(
    name: str,
    declared: str,
    version: str,
    previous: str | None,
    commands: tuple[str, ...],
    functions: tuple[str, ...],
    colour: str | None,
    previous_colour: str | None,
    weight: int | None,
    steps_text: str | None,
    batch_count: int | None,
    batch_names: tuple[str, ...],
    hook_timeout: str | None,
    author: str | None,
    state: str | None,
    as_json: bool,
) -> None:
    """Record that NAME now runs VERSION, with how it was deployed and how to undo it."""
    if batch_count is not None and batch_names:
        fail("give --batches N or --batch NAME ..., not both")
    batches = [str(i) for i in range(1, batch_count + 1)] if batch_count else list(batch_names)
    try:
        spec = rollout(
            declared,
            _hooks(commands, functions),
            colour=colour,
            previous_colour=previous_colour,
            weight=weight,
            steps=_steps(steps_text),
            batches=batches or None,
            timeout_s=_duration("--hook-timeout", hook_timeout),
        )
    except CounterpointError as exc:
        fail(str(exc))
    with _journal(state, create=True, what="deployment") as store:
        found = Deployments(store).record(
            name, version=version, rollout=spec, previous=previous, author=_author(author)
        )
    if as_json:
        _print_json(found.to_json())
        return
    steps = len(plan(name, found.id, version, found.previous, spec))
    out.print(
        f"{esc(name)}: deployment {found.id} recorded ({found.type} {esc(version)}, replacing "
        f"{esc(found.previous)}; its rollback takes {steps} step{'s' * (steps != 1)})"
    )


@deploy.command("list")
@click.argument("name", required=False)
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON, with rollback steps.")
def deploy_list(name: str | None, state: str | None, as_json: bool) -> None:
    """Deployments, newest first, with their status and rollback progress."""
    with _journal(state, create=False, what="deployment") as store:
        found = Deployments(store).history(name)
    if as_json:
        _print_json({"deployments": [d.to_json() for d in found]})
        return
    if not found:
        err.print("no deployments recorded yet")
        return
    table = Table("id", "name", "type", "version", "previous", "status", "rollback")
    for d in found:
        table.add_row(
            str(d.id), esc(d.name), d.type, esc(d.version), esc(d.previous), d.status, _progress(d)
        )
    out.print(table)


def _progress(d: Deployment) -> str:
    if not d.steps:
        return "-"
    done = sum(1 for s in d.steps if s.status == "done")
    return f"{done}/{len(d.steps)} done"


@deploy.command("rollback")
@click.argument("name")
@click.option("--as", "author", metavar="NAME", help="Who rolls back (default: your login name).")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def deploy_rollback(name: str, author: str | None, state: str | None, as_json: bool) -> None:
    """Roll back NAME's latest deployment by its strategy, or resume its unfinished rollback."""
    current: list[StepRecord] = []

    def on_step(what: str, step: StepRecord) -> None:
        if what == "started":
            current[:] = [step]
            if not as_json:
                err.print(f"  {esc(step.describe())} …")
        elif not as_json:
            colour = "green" if what == "done" else "red"
            err.print(f"  {esc(step.describe())}: [{colour}]{what}[/]")

    with _journal(state, create=False, what="deployment") as store:
        deployments = Deployments(store)
        latest = deployments.latest(name)
        if not as_json and latest.status != "rolled_back":
            err.print(_rollback_header(latest))
        try:
            result = deployments.rollback(name, author=_author(author), on_step=on_step)
        except KeyboardInterrupt:
            _interrupted(name, current)
    _rollback_outcome(name, result, as_json)


def _rollback_header(d: Deployment) -> str:
    head = f"deployment {d.id} of {esc(d.name)}: {d.type} {esc(d.version)} -> {esc(d.previous)}"
    if d.status in ("rolling_back", "rollback_failed"):
        left = d.left()
        done = len(d.steps) - len(left)
        at = f" at step {left[0].number}" if left else ""
        return f"{head}: resuming its rollback{at} ({done} of {len(d.steps)} steps done)"
    return head


def _interrupted(name: str, current: list[StepRecord]) -> NoReturn:
    during = f" during {current[0].describe()}" if current else ""
    fail(
        f"{name}: rollback interrupted{during}; `counterpoint deploy rollback {name}` resumes it",
        EXIT_CANCELLED,
    )


def _rollback_outcome(name: str, result: RollbackResult, as_json: bool) -> None:
    d = result.deployment
    if as_json:
        _print_json({**d.to_json(), "ok": result.ok, "resumed": result.resumed, "ran": result.ran})
    if result.ok:
        if not as_json:
            out.print(f"{esc(name)}: deployment {d.id} {esc(d.detail)}")
        return
    left = "; ".join(s.describe() for s in result.left)
    err.print(f"[bold red]error:[/] {esc(name)}: {esc(d.detail)}")
    err.print(
        f"left undone: {esc(left)}\nfix the cause, then run `counterpoint deploy rollback "
        f"{esc(name)}` again: it resumes at the failed step"
    )
    sys.exit(EXIT_FAILED)
