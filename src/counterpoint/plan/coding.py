"""What a ``runner: {coding: CLI, ...}`` may say, per command-line coding agent.

Each CLI has its own words for permissions: claude's ``--permission-mode`` and
``--allowedTools``, gemini's ``--approval-mode`` and ``--allowed-tools``, codex's
``--sandbox``; aider has none of them. A key a CLI does not understand is an error, and
so is any way of skipping every permission check (a flag in ``args``, a permission mode,
a sandbox mode) unless the runner says ``skip_permissions: true``.
"""

from __future__ import annotations

from typing import Any

from counterpoint.plan.schema_errors import did_you_mean

#: The permission modes each CLI accepts (claude --permission-mode, gemini --approval-mode).
PERMISSION_MODES: dict[str, tuple[str, ...]] = {
    "claude": ("default", "acceptEdits", "plan", "dontAsk", "bypassPermissions"),
    "gemini": ("default", "auto_edit", "plan", "yolo"),
}
SANDBOXES: dict[str, tuple[str, ...]] = {
    "codex": ("read-only", "workspace-write", "danger-full-access")
}
ALLOWED_TOOLS = ("claude", "gemini")
#: Modes and flags that switch every permission check off.
DANGEROUS_MODES = frozenset({"bypassPermissions", "yolo", "danger-full-access"})
DANGEROUS_FLAGS = frozenset(
    {
        "--dangerously-skip-permissions",
        "--dangerously-bypass-approvals-and-sandbox",
        "--yolo",
        "-y",
        "--approval-mode=yolo",
        "--permission-mode=bypassPermissions",
        "--sandbox=danger-full-access",
    }
)
#: Flags counterpoint sets itself: giving them in ``args`` would contradict it.
OWN_FLAGS = {
    "claude": ("-p", "--print", "--output-format", "--resume", "--max-turns", "--verbose"),
    "codex": ("--json",),
    "gemini": ("-p", "--prompt", "--output-format", "-o"),
    "aider": ("--message", "-m", "--yes-always", "--no-pretty"),
}


def check_coding_key(key: str, value: Any, cli: str | None, data: dict[str, Any]) -> None:
    """Raise ValueError when a runner whose ``coding`` is ``cli`` cannot have ``key: value``.

    ``data`` holds the runner's keys validated before this one (``skip_permissions``).
    """
    if not value:
        return
    if cli is None:
        raise ValueError(f"{key} only applies to a coding runner (coding: claude, codex, ...)")
    if key == "allowed_tools" and cli not in ALLOWED_TOOLS:
        raise ValueError(f"{cli} has no allowed_tools (only claude and gemini do)")
    if key == "permission_mode":
        _check_choice(cli, key, value, PERMISSION_MODES)
    elif key == "sandbox":
        _check_choice(cli, key, value, SANDBOXES)
    skip = bool(data.get("skip_permissions"))
    if key in ("permission_mode", "sandbox") and value in DANGEROUS_MODES and not skip:
        raise ValueError(f"{key}: {value} {_DANGER}")
    if key == "args":
        _check_args(cli, value, skip)


_DANGER = (
    "skips every permission check; set skip_permissions: true on the runner if that is really meant"
)


def _check_choice(cli: str, key: str, value: str, table: dict[str, tuple[str, ...]]) -> None:
    choices = table.get(cli)
    if choices is None:
        clis = " and ".join(table)
        raise ValueError(f"{cli} has no {key} (only {clis} {'does' if len(table) == 1 else 'do'})")
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ValueError(
            f"{cli} {key} {value!r} is not one of {', '.join(choices)}"
            + (f" ({hint})" if hint else "")
        )


def _check_args(cli: str, args: list[str], skip: bool) -> None:
    dangerous = [a for a in args if a in DANGEROUS_FLAGS]
    if dangerous and not skip:
        raise ValueError(f"{dangerous[0]} {_DANGER}")
    own = [a for a in args if a.split("=", 1)[0] in OWN_FLAGS[cli]]
    if own:
        raise ValueError(
            f"{own[0]} is set by counterpoint; use the runner's keys instead (model, "
            "permission_mode, sandbox, allowed_tools) or the task's max_turns"
        )
