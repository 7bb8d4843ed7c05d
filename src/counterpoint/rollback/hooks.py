"""Hooks: the commands and Python functions that act on the real system.

A hook is either a command or a Python function named ``module:function``.

* A command is an argv template, never run through a shell: a string is split as
  a shell would split it, then each ``{name}`` placeholder is replaced inside its
  argument (so a value is always exactly one argument); ``{{`` and ``}}`` are
  literal braces. It reads the hook's JSON object on stdin and runs in its own
  process group, in the directory recorded with it; past its time limit the
  group gets SIGTERM, then SIGKILL. Exit 0 is success.
* A function is imported with its recorded directory first on the import path
  and called with the same JSON object as its only argument, in a daemon thread
  (a function still running at its time limit is abandoned, not stopped).

Placeholders are checked when a hook is recorded, so a typo is refused at once
rather than when a rollback needs the hook.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from counterpoint.agents.python import load_callable
from counterpoint.errors import CounterpointError
from counterpoint.processes import signal_group
from counterpoint.rollback.errors import Refused

KILL_GRACE_S = 2.0
TAIL_CHARS = 500

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Hook:
    """A command template (``command``) or a ``module:function`` (``python``), and its folder."""

    command: tuple[str, ...] = ()
    python: str = ""
    cwd: str = ""

    @classmethod
    def of_command(cls, command: str | Iterable[str], cwd: Path | str = ".") -> Hook:
        """A command hook; a string is split like a shell would (no shell runs it)."""
        try:
            argv = shlex.split(command) if isinstance(command, str) else list(command)
        except ValueError as exc:
            raise Refused(f"cannot parse the command {command!r}: {exc}") from None
        if not argv:
            raise Refused("the command is empty")
        return cls(command=tuple(argv), cwd=str(Path(cwd).resolve()))

    @classmethod
    def of_python(cls, target: str, cwd: Path | str = ".") -> Hook:
        """A ``module:function`` hook, imported with ``cwd`` first on the import path."""
        if not _TARGET.match(target):
            raise Refused(f"{target!r} is not a Python function: write module:function")
        return cls(python=target, cwd=str(Path(cwd).resolve()))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hook:
        return cls(tuple(data.get("command") or ()), data.get("python") or "", data.get("cwd", ""))

    def to_json(self) -> dict[str, Any]:
        if self.python:
            return {"python": self.python, "cwd": self.cwd}
        return {"command": list(self.command), "cwd": self.cwd}

    def describe(self) -> str:
        return f"python {self.python}" if self.python else shlex.join(self.command)

    def check(self, known: Iterable[str]) -> None:
        """Refuse unknown placeholders (commands) or a function that cannot be imported."""
        if self.python:
            try:
                load_callable(self.python, Path(self.cwd or "."))
            except CounterpointError as exc:
                raise Refused(str(exc)) from None
            return
        names = set(known)
        for arg in self.command:
            for name in placeholders(arg):
                if name not in names:
                    raise Refused(
                        f"unknown placeholder {{{name}}} in {self.describe()!r} "
                        f"(known: {', '.join(sorted(names))}; write {{{{ and }}}} for braces)"
                    )


@dataclass(frozen=True)
class Outcome:
    """What a hook did: ``ok`` (exit 0 / returned), or why not in ``detail``."""

    ok: bool
    detail: str = ""
    value: Any = None  # what a function returned
    code: int | None = None  # a command's exit status (negative: the signal that ended it)
    timed_out: bool = False


def placeholders(text: str) -> list[str]:
    """The ``{name}`` placeholders of one argument; a lone brace is an error."""
    names = []
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise Refused(f"single {token!r} in {text!r}: write {token * 2} for a literal brace")
        names.append(match.group(1))
    return names


def expand(arg: str, values: Mapping[str, Any]) -> str:
    """``arg`` with its placeholders replaced (strings as they are, other values as JSON)."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = match.group(1)
        if name is None or name not in values:
            raise Refused(f"unknown placeholder {token} in {arg!r}")
        value = values[name]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TOKEN.sub(replace, arg)


def run(
    hook: Hook,
    payload: Mapping[str, Any],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> Outcome:
    """Run ``hook`` with ``payload`` (placeholders, stdin, or the function's argument)."""
    if hook.python:
        return _call(hook, dict(payload), timeout_s)
    try:
        argv = [expand(arg, payload) for arg in hook.command]
    except Refused as exc:
        return Outcome(False, str(exc))
    return _execute(argv, payload, hook.cwd or None, timeout_s, env or {})


def _call(hook: Hook, payload: dict[str, Any], timeout_s: float) -> Outcome:
    try:
        func = load_callable(hook.python, Path(hook.cwd or "."))
    except CounterpointError as exc:
        return Outcome(False, str(exc))
    return call(func, payload, timeout_s)


def call(
    func: Callable[[dict[str, Any]], object], payload: dict[str, Any], timeout_s: float
) -> Outcome:
    """Call ``func(payload)`` in a daemon thread; give up waiting after ``timeout_s`` seconds."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = func(payload)
        except BaseException as exc:  # handed back to the caller's thread as a failure
            box["error"] = exc

    thread = threading.Thread(target=work, name="counterpoint-hook", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout_s))
    if thread.is_alive():
        return Outcome(False, f"no answer within {timeout_s:g} s", timed_out=True)
    if "error" in box:
        error = box["error"]
        return Outcome(False, f"{type(error).__name__}: {error}".rstrip(": "))
    value = box.get("value")
    return Outcome(value is not False, "returned False" if value is False else "", value)


def _execute(
    argv: list[str],
    payload: Mapping[str, Any],
    cwd: str | None,
    timeout_s: float,
    env: Mapping[str, str],
) -> Outcome:
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        stdin.write(json.dumps(payload, default=str).encode())
        stdin.seek(0)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=cwd,
                env={**os.environ, **env},
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome(False, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        try:
            code = proc.wait(max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            _stop(proc)
            return Outcome(False, f"no answer within {timeout_s:g} s", timed_out=True)
        except BaseException:  # Ctrl-C: never leave the hook running behind us
            _stop(proc)
            raise
        if code == 0:
            return Outcome(True, code=0)
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        tail = _tail(stderr) or _tail(stdout)
        return Outcome(False, f"{why}: {tail}" if tail else why, code=code)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the hook's process group, then SIGKILL it after a grace period."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        signal_group(proc.pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - 4 * TAIL_CHARS))
    lines = stream.read().decode("utf-8", errors="replace").strip().splitlines()
    text = " | ".join(line.strip() for line in lines[-5:] if line.strip())
    return text if len(text) <= TAIL_CHARS else "…" + text[-(TAIL_CHARS - 1) :]


__all__ = ["Hook", "Outcome", "call", "expand", "placeholders", "run"]
