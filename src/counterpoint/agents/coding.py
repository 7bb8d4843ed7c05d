"""Run a task with a command-line coding agent (claude, codex, gemini, aider).

The CLI runs non-interactively, speaking its JSON protocol (never a terminal screen), in
the attempt's working directory (its worktree for ``workspace: worktree``), in a process
group of its own that is stopped on cancellation or timeout exactly like a shell agent's
(:class:`~counterpoint.agents.shell.ShellRunner` is the machinery). Its stdout and stderr
go to ``<log_dir>/<attempt>.stdout`` / ``.stderr``; :mod:`coding_parse` reads stdout into
one :class:`CodingResult`, which is written to ``<log_dir>/<attempt>.coding.json`` (the
attempt's ledger: session id, tokens, cost, status) whatever the outcome.

The ledger is what the next attempt of the task resumes from (``--resume ID`` for
claude, ``codex exec resume ID``) and what the governor (runtime/governor.py) sums.
See docs/coding-agents.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from counterpoint.agents.base import RateLimited, TaskContext, TaskFailed
from counterpoint.agents.coding_parse import PARSERS, CodingResult, UnknownOutput
from counterpoint.agents.shell import KILL_GRACE_S, ShellRunner, _Files, _stderr_tail
from counterpoint.plan.model import Runner

RESUMABLE = ("claude", "codex")
VERSION_TIMEOUT_S = 10.0
CONTEXT_CHARS = 4000  # at most this much of one input or state value goes into the prompt

_versions: dict[str, str] = {}


class CodingRunner(ShellRunner):
    """Runs each attempt of a task as one non-interactive session of a coding CLI."""

    def __init__(self, spec: Runner, plan_dir: Path, *, kill_grace_s: float = KILL_GRACE_S) -> None:
        if spec.coding is None:
            raise ValueError("a CodingRunner needs a runner with coding: CLI")
        self.spec = spec
        self.cli: str = spec.coding
        self.plan_dir = Path(plan_dir)
        self.kill_grace_s = kill_grace_s
        command = spec.command or self.cli
        self.executable = str(self.plan_dir / command) if "/" in command else command

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        spent = spent_before(ctx.log_dir, ctx.attempt)
        limit = ctx.task.max_cost_usd
        if limit is not None and spent >= limit:
            raise TaskFailed(
                f"budget: the task's attempts already cost ${spent:.4f} of its "
                f"max_cost_usd ${limit:g}"
            )
        session = previous_session(ctx.log_dir, ctx.attempt, self.cli) if self._resumes() else None
        result = await self._session(ctx, session)
        if session is not None and result.error_class == "resume_failed":
            ctx.log.warning("%s: cannot resume session %s; starting afresh", ctx.task_id, session)
            result = await self._session(ctx, None)
        result = self._over_budget(result, spent, limit)
        self._keep(ctx, result)
        return self._verdict(result, ctx)

    def _keep(self, ctx: TaskContext, result: CodingResult) -> None:
        """The attempt's ledger, and its session in the run's worktree ledger (if any)."""
        write_ledger(ctx.log_dir, ctx.attempt, result)
        if result.session_id:
            from counterpoint.agents.ledger import record_session

            record_session(ctx.state_dir, ctx.run_id, ctx.task_id, ctx.attempt, result.session_id)

    def _resumes(self) -> bool:
        return self.spec.resume and self.cli in RESUMABLE

    async def _session(self, ctx: TaskContext, session: str | None) -> CodingResult:
        prompt = build_prompt(ctx, resumed=session is not None)
        argv = command_line(self.spec, self.executable, prompt, ctx, session)
        cwd = self._cwd(ctx)
        files = _Files.of(ctx)
        ctx.log_dir.mkdir(parents=True, exist_ok=True)
        ctx.log.debug("task %s attempt %d: running %s", ctx.task_id, ctx.attempt, argv[0])
        proc = await self._start(argv, cwd, ctx, files)
        try:
            code = await self._wait(proc)
        except asyncio.CancelledError:  # the session so far, for a later resume
            self._keep(ctx, self._partial(files))
            raise
        finally:
            if self.cli == "aider":
                tidy_aider(cwd)
        return await self._parse(files, code)

    def _stdin(self, ctx: TaskContext) -> bytes:
        return b""  # the CLIs would take a payload on stdin as part of the prompt

    async def _parse(self, files: _Files, code: int) -> CodingResult:
        stdout = files.stdout.read_bytes() if files.stdout.exists() else b""
        stderr = _stderr_tail(files.stderr)
        try:
            result = PARSERS[self.cli](stdout, code, stderr)
        except UnknownOutput as exc:
            version = await cli_version(self.executable)
            return CodingResult(self.cli, ok=False, version=version).failed(
                "unknown_output",
                f"{self.cli} (version {version}) printed unknown output: {exc}; see {files.stdout}",
            )
        if result.error_class in ("crashed", "unknown_output") and result.version is None:
            result = replace(result, version=await cli_version(self.executable))
        return result

    def _partial(self, files: _Files) -> CodingResult:
        stdout = files.stdout.read_bytes() if files.stdout.exists() else b""
        try:
            found = PARSERS[self.cli](stdout, -15, "")
        except UnknownOutput:
            found = CodingResult(self.cli, ok=False)
        return found.failed("cancelled", "cancelled or timed out")

    def _over_budget(self, result: CodingResult, spent: float, limit: float | None) -> CodingResult:
        cost = result.cost_usd or 0.0
        if limit is None or spent + cost <= limit or result.error_class == "rate_limited":
            return result
        return result.failed(
            "budget",
            f"budget: this attempt cost ${cost:.4f} (${spent + cost:.4f} with the earlier "
            f"ones), over the task's max_cost_usd ${limit:g}",
        )

    def _verdict(self, result: CodingResult, ctx: TaskContext) -> dict[str, Any]:
        if result.ok:
            return result.task_result()
        if result.error_class == "rate_limited":
            wait = result.retry_after_s if result.retry_after_s is not None else 60.0
            raise RateLimited(wait, f"{self.cli} rate limited ({result.error}): retry in {wait:g}s")
        if result.error_class in ("budget", "unknown_output"):
            raise TaskFailed(result.error)
        version = f" (version {result.version})" if result.version else ""
        raise TaskFailed(f"{self.cli}{version} failed ({result.error_class}): {result.error}")


# -- the command line ------------------------------------------------------------------------


def command_line(
    spec: Runner, executable: str, prompt: str, ctx: TaskContext, session: str | None
) -> list[str]:
    """The CLI's argv: its JSON protocol, the runner's model and permissions, the prompt."""
    cli = spec.coding
    model = ["--model", spec.model] if spec.model else []
    if cli == "claude":
        return [
            executable,
            *_claude_flags(spec, ctx, session),
            *model,
            *spec.args,
            *_claude_tools(spec),
            "--",
            prompt,
        ]
    if cli == "codex":
        sandbox = ["--sandbox", spec.sandbox] if spec.sandbox else []
        skip = ["--dangerously-bypass-approvals-and-sandbox"] if spec.skip_permissions else []
        resume = ["resume", session] if session else []
        return [
            executable,
            "exec",
            "--json",
            *model,
            *sandbox,
            *skip,
            *spec.args,
            *resume,
            "--",
            prompt,
        ]
    if cli == "gemini":
        return [
            executable,
            "--output-format",
            "json",
            *model,
            *_gemini_flags(spec),
            *spec.args,
            f"--prompt={prompt}",
        ]
    history = ctx.log_dir / f"{ctx.attempt}.aider"
    shell = [] if spec.skip_permissions else ["--no-suggest-shell-commands"]
    return [
        executable,
        "--yes-always",
        "--no-pretty",
        "--no-check-update",
        "--no-gitignore",
        *shell,
        "--chat-history-file",
        f"{history}.chat.md",
        "--input-history-file",
        f"{history}.input",
        *model,
        *spec.args,
        f"--message={prompt}",
    ]


def _claude_flags(spec: Runner, ctx: TaskContext, session: str | None) -> list[str]:
    flags = ["-p", "--output-format", "stream-json", "--verbose"]
    if ctx.task.max_turns is not None:
        flags += ["--max-turns", str(ctx.task.max_turns)]
    if spec.permission_mode:
        flags += ["--permission-mode", spec.permission_mode]
    if spec.skip_permissions:
        flags.append("--dangerously-skip-permissions")
    if session:
        flags += ["--resume", session]
    return flags


def _claude_tools(spec: Runner) -> list[str]:
    return ["--allowedTools", ",".join(spec.allowed_tools)] if spec.allowed_tools else []


def _gemini_flags(spec: Runner) -> list[str]:
    mode = "yolo" if spec.skip_permissions and not spec.permission_mode else spec.permission_mode
    flags = ["--approval-mode", mode] if mode else []
    for tool in spec.allowed_tools:
        flags += ["--allowed-tools", tool]
    return flags


# -- the prompt ------------------------------------------------------------------------------


def build_prompt(ctx: TaskContext, *, resumed: bool = False) -> str:
    """The task's instructions and the plan context it needs: its inputs, the shared-state
    keys it reads (their values now), the files it may change."""
    task = ctx.task
    instructions = task.instructions.strip() or task.description.strip() or task.title
    parts = [instructions, "", f"## Context (counterpoint task {task.id}, attempt {ctx.attempt})"]
    if task.inputs:
        parts += ["", "Inputs:", *(f"- {k}: {_shown(v)}" for k, v in task.inputs.items())]
    if task.reads:
        state = ctx.state.snapshot()
        parts += ["", "Shared state this task reads:"]
        parts += [f"- {key}: {_shown(state.get(key))}" for key in task.reads]
    if task.files:
        parts += ["", "Change only these files: " + ", ".join(task.files)]
    if resumed:
        parts += [
            "",
            "This continues your earlier session: the previous attempt did not "
            "succeed. The working directory may not hold that attempt's changes; "
            "check it before you go on.",
        ]
    parts += ["", "Work in the current directory. Nobody answers questions: finish the task."]
    return "\n".join(parts)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= CONTEXT_CHARS else text[: CONTEXT_CHARS - 1] + "…"


# -- the ledger of attempts ----------------------------------------------------------------------


def ledger_path(log_dir: Path, attempt: int) -> Path:
    return log_dir / f"{attempt}.coding.json"


def write_ledger(log_dir: Path, attempt: int, result: CodingResult) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    path = ledger_path(log_dir, attempt)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_ledger(log_dir: Path, attempt: int) -> dict[str, Any] | None:
    try:
        value = json.loads(ledger_path(log_dir, attempt).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def previous_session(log_dir: Path, attempt: int, cli: str) -> str | None:
    """The session id the latest earlier attempt of the task left, if any: from its
    ledger, else (the run was killed before it wrote one) from what the CLI printed."""
    for earlier in range(attempt - 1, 0, -1):
        entry = read_ledger(log_dir, earlier)
        session = entry.get("session_id") if entry else _printed_session(log_dir, earlier, cli)
        if isinstance(session, str) and session:
            return session
    return None


def _printed_session(log_dir: Path, attempt: int, cli: str) -> str | None:
    try:
        stdout = (log_dir / f"{attempt}.stdout").read_bytes()
        return PARSERS[cli](stdout, -9, "").session_id
    except (OSError, UnknownOutput):
        return None


def spent_before(log_dir: Path, attempt: int) -> float:
    """What the task's earlier attempts cost (USD)."""
    total = 0.0
    for earlier in range(1, attempt):
        cost = (read_ledger(log_dir, earlier) or {}).get("cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            total += float(cost)
    return total


# -- helpers ------------------------------------------------------------------------------------


async def cli_version(executable: str) -> str:
    """``EXECUTABLE --version``'s first line, asked once per executable."""
    key = shutil.which(executable) or executable
    if key not in _versions:
        _versions[key] = await asyncio.to_thread(_ask_version, key)
    return _versions[key]


def _ask_version(executable: str) -> str:
    try:
        proc = subprocess.run(
            [executable, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown: {exc}"
    line = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return line[0] if line else "unknown"


def tidy_aider(cwd: Path) -> None:
    """Remove aider's untracked caches (``.aider*``) so they are not committed as work."""
    for path in cwd.glob(".aider*"):
        listed = subprocess.run(
            ["git", "ls-files", "--", path.name], cwd=cwd, capture_output=True, text=True
        )
        if listed.returncode == 0 and not listed.stdout.strip():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
