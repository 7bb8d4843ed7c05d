"""Run a task as a local program: a command template, the payload on stdin, JSON out.

The command template's placeholders (``{task_id}``, ``{instructions}``, ``{attempt}``,
``{agent}``, ``{run_id}``, ``{inputs.NAME}``) are substituted per argument, so a value
is always exactly one argv element and never reaches a shell, unless the runner sets
``use_shell``, in which case the command runs as ``/bin/sh -c`` with every value
shell-quoted. Literal braces are written ``{{`` and ``}}``.

The program runs in its own process group, reads the task payload (JSON) on stdin and
writes its stdout and stderr to ``<log_dir>/<attempt>.stdout`` / ``.stderr``. Its result
is the JSON object in ``$COUNTERPOINT_RESULT_FILE``, else the last non-empty stdout line
if that is a JSON object, else ``{}``. Exit code 0 is success, 75 (EX_TEMPFAIL) a rate
limit (``retry_after`` seconds from the result, default 60), anything else a failure.
On cancellation the whole group gets SIGTERM, then SIGKILL after ``kill_grace_s``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shlex
import signal
import tempfile
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterpoint.agents.base import RateLimited, TaskContext, TaskFailed
from counterpoint.agents.control import control_channel
from counterpoint.plan.model import Runner
from counterpoint.processes import signal_group

RATE_LIMITED_EXIT = 75  # EX_TEMPFAIL: the command says "rate limited"
KILL_GRACE_S = 5.0
DEFAULT_RETRY_AFTER_S = 60.0
STDOUT_TAIL_BYTES = 4 * 1024 * 1024  # the last stdout line is looked for in this much
STDERR_TAIL_BYTES = 64 * 1024
STDERR_TAIL_LINES = 5
STDERR_TAIL_CHARS = 500
SHELL = "/bin/sh"

# "{{", "}}", a "{field}", or a lone brace (an error), in that order of preference.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_KNOWN = "task_id, instructions, attempt, agent, run_id, inputs.NAME"


def expand(template: str | list[str], ctx: TaskContext, *, use_shell: bool) -> list[str]:
    """The argv for ``template`` with the task's placeholders substituted.

    Raises TaskFailed for an unknown placeholder, a lone brace or an unparsable template.
    """
    if use_shell:
        script = template if isinstance(template, str) else " ".join(template)
        if not script.strip():
            raise TaskFailed("the command template is empty")
        return [SHELL, "-c", _substitute(script, ctx, shlex.quote)]
    args = _split(template) if isinstance(template, str) else list(template)
    if not args:
        raise TaskFailed("the command template is empty")
    return [_substitute(arg, ctx, str) for arg in args]


def _split(template: str) -> list[str]:
    try:
        return shlex.split(template)
    except ValueError as exc:
        raise TaskFailed(f"cannot parse the command template {template!r}: {exc}") from exc


def _substitute(text: str, ctx: TaskContext, quote: Callable[[str], str]) -> str:
    """``text`` with each ``{name}`` replaced by ``quote(value)`` and ``{{``/``}}`` unescaped."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        if match.group(1) is None:
            raise TaskFailed(
                f"single {token!r} in the command template {text!r}: "
                f"write {token * 2} for a literal brace"
            )
        return quote(_lookup(match.group(1), ctx))

    return _TOKEN.sub(replace, text)


def _lookup(name: str, ctx: TaskContext) -> str:
    """The value of placeholder ``name``; only plain names, no attribute or index access."""
    if name.startswith("inputs."):
        key = name.removeprefix("inputs.")
        if key not in ctx.inputs:
            raise TaskFailed(f"unknown placeholder {{{name}}}: the task has no input {key!r}")
        value = ctx.inputs[key]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    values = {
        "task_id": ctx.task_id,
        "instructions": ctx.task.instructions,
        "attempt": str(ctx.attempt),
        "agent": ctx.agent or "",
        "run_id": ctx.run_id,
    }
    if name not in values:
        raise TaskFailed(
            f"unknown placeholder {{{name}}} in the command template "
            f"(known: {_KNOWN}; write {{{{ and }}}} for literal braces)"
        )
    return values[name]


@dataclass(frozen=True)
class _Files:
    """Where one attempt's output goes."""

    stdout: Path
    stderr: Path
    result: Path

    @classmethod
    def of(cls, ctx: TaskContext) -> _Files:
        return cls(
            stdout=ctx.log_dir / f"{ctx.attempt}.stdout",
            stderr=ctx.log_dir / f"{ctx.attempt}.stderr",
            result=ctx.log_dir / f"{ctx.attempt}.result.json",
        )


class ShellRunner:
    """Runs each attempt of a task as a program built from the runner's ``shell`` template."""

    def __init__(self, spec: Runner, plan_dir: Path, *, kill_grace_s: float = KILL_GRACE_S) -> None:
        if spec.shell is None:
            raise ValueError("a ShellRunner needs a runner with a shell command")
        self.spec = spec
        self.template: str | list[str] = spec.shell
        self.plan_dir = Path(plan_dir)
        self.kill_grace_s = kill_grace_s

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        argv = expand(self.template, ctx, use_shell=self.spec.use_shell)
        cwd = self._cwd(ctx)
        files = _Files.of(ctx)
        ctx.log_dir.mkdir(parents=True, exist_ok=True)
        files.result.unlink(missing_ok=True)  # never pick up a stale result
        ctx.log.debug("task %s attempt %d: running %s", ctx.task_id, ctx.attempt, argv)
        async with control_channel(ctx.spawner) as control:  # to spawn subtasks
            proc = await self._start(argv, cwd, ctx, files, control)
            follower = _ProgressFollower(files.stdout, ctx)
            watching = asyncio.create_task(follower.follow())
            try:
                code = await self._wait(proc)
            finally:
                watching.cancel()
        follower.poll()  # lines written just before the exit
        return _outcome(code, files)

    def _cwd(self, ctx: TaskContext) -> Path:
        cwd = ctx.workdir if self.spec.cwd is None else self.plan_dir / self.spec.cwd
        if not cwd.is_dir():
            raise TaskFailed(f"the working directory {cwd} does not exist")
        return cwd

    def _env(
        self, ctx: TaskContext, files: _Files, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        rollback = {"COUNTERPOINT_ROLLBACK": "1"} if ctx.rollback is not None else {}
        return {
            **os.environ,
            **self.spec.env,
            "COUNTERPOINT_RUN_ID": ctx.run_id,
            "COUNTERPOINT_TASK_ID": ctx.task_id,
            "COUNTERPOINT_ATTEMPT": str(ctx.attempt),
            "COUNTERPOINT_AGENT": ctx.agent or "",
            "COUNTERPOINT_IDEMPOTENCY_KEY": ctx.idempotency_key,
            "COUNTERPOINT_TIME_SCALE": str(ctx.time_scale),
            "COUNTERPOINT_ESTIMATE_S": str(ctx.estimate_s),
            "COUNTERPOINT_STATE_DIR": str(ctx.state_dir),
            "COUNTERPOINT_RESULT_FILE": str(files.result),
            **rollback,
            **(extra or {}),
        }

    async def _start(
        self,
        argv: list[str],
        cwd: Path,
        ctx: TaskContext,
        files: _Files,
        extra_env: dict[str, str] | None = None,
    ) -> asyncio.subprocess.Process:
        """Start the program in a new session, stdin from the payload, output to the logs.

        The payload is staged in an anonymous temporary file rather than a pipe, so a
        program that never reads its stdin can neither block nor be blocked by it.
        """
        with ExitStack() as stack:
            stdin = stack.enter_context(tempfile.TemporaryFile())
            stdin.write(self._stdin(ctx))
            stdin.seek(0)
            stdout = stack.enter_context(files.stdout.open("wb"))
            stderr = stack.enter_context(files.stderr.open("wb"))
            try:
                return await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    cwd=cwd,
                    env=self._env(ctx, files, extra_env),
                    start_new_session=True,
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise TaskFailed(f"cannot start the program {argv[0]!r}: {reason}") from exc

    def _stdin(self, ctx: TaskContext) -> bytes:
        """What the program reads on stdin: the task payload as JSON."""
        return json.dumps(ctx.payload(), default=str).encode()

    async def _wait(self, proc: asyncio.subprocess.Process) -> int:
        """The program's exit code; on cancellation, stop its process group and re-raise."""
        _LIVE_GROUPS.add(proc.pid)
        try:
            return await proc.wait()
        except asyncio.CancelledError:
            await self._stop(proc)
            raise
        finally:
            _LIVE_GROUPS.discard(proc.pid)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the group, give the leader ``kill_grace_s`` to exit, then SIGKILL the group."""
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.kill_grace_s)
        except TimeoutError:
            pass
        finally:
            # Also reaches members that outlived the leader or ignore SIGTERM.
            signal_group(proc.pid, signal.SIGKILL)
            with suppress(ProcessLookupError):
                proc.kill()  # the leader, should it have left its group
            await proc.wait()


_LIVE_GROUPS: set[int] = set()
PROGRESS_POLL_S = 0.25


class _ProgressFollower:
    """Reports stdout lines such as ``{"progress": 40, "message": "linking"}`` as progress."""

    def __init__(self, path: Path, ctx: TaskContext) -> None:
        self.path = path
        self.ctx = ctx
        self.offset = 0
        self.partial = b""

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_POLL_S)
            self.poll()

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read(STDOUT_TAIL_BYTES)
        except OSError:
            return
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            report = progress_line(line)
            if report is not None:
                self.ctx.progress(*report)


def progress_line(line: bytes) -> tuple[float, str] | None:
    """(percent, message) of a progress line, None for any other line."""
    if not line.lstrip().startswith(b"{") or b'"progress"' not in line:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    progress = value.get("progress") if isinstance(value, dict) else None
    if not isinstance(progress, int | float) or isinstance(progress, bool):
        return None
    if not math.isfinite(progress):
        return None
    return max(0.0, min(100.0, float(progress))), str(value.get("message", ""))


def kill_all() -> None:
    """SIGKILL the process group of every running shell task at once (a forced stop)."""
    for pgid in list(_LIVE_GROUPS):
        signal_group(pgid, signal.SIGKILL)


def _outcome(code: int, files: _Files) -> dict[str, Any]:
    """The result for exit code ``code``, or the exception it means."""
    if code == 0:
        return _result(files)
    if code == RATE_LIMITED_EXIT:
        raise RateLimited(_retry_after(_result(files)))
    if code < 0:
        raise TaskFailed(f"killed by signal {_signal_name(-code)}")
    tail = _stderr_tail(files.stderr)
    raise TaskFailed(f"exit code {code}: {tail}" if tail else f"exit code {code}")


def _result(files: _Files) -> dict[str, Any]:
    """The result file's JSON object, else the last stdout line's, else ``{}``."""
    found = _json_object(_read(files.result))
    if found is None:
        found = _json_object(_last_line(files.stdout))
    return found if found is not None else {}


def _json_object(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _read(path: Path, limit: int | None = None) -> bytes | None:
    """The file's content (only its last ``limit`` bytes if given); None if unreadable."""
    try:
        with path.open("rb") as f:
            if limit is not None:
                f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read()
    except OSError:
        return None


def _last_line(path: Path) -> bytes | None:
    lines = (_read(path, STDOUT_TAIL_BYTES) or b"").splitlines()
    return next((line for line in reversed(lines) if line.strip()), None)


def _stderr_tail(path: Path) -> str:
    """The last few non-empty stderr lines, at most STDERR_TAIL_CHARS characters."""
    text = (_read(path, STDERR_TAIL_BYTES) or b"").decode("utf-8", errors="replace")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    tail = "\n".join(lines[-STDERR_TAIL_LINES:])
    if len(tail) > STDERR_TAIL_CHARS:
        tail = "…" + tail[-(STDERR_TAIL_CHARS - 1) :]
    return tail


def _retry_after(result: dict[str, Any]) -> float:
    value = result.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return DEFAULT_RETRY_AFTER_S


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"number {number}"
