#!/usr/bin/env python3
"""A fake coding agent: edits files as told, deterministically, so the example runs anywhere.

counterpoint runs it like a real coding CLI: in the task's git worktree, with the task
payload (JSON) on standard input. It ignores its arguments (``-p "{instructions}"`` in
the plan, as ``claude -p`` would get them) and does the edits listed in the task's
``inputs.edits``, or else the lines of its ``instructions``, one edit per line::

    write FILE TEXT               create or overwrite FILE with TEXT and a newline
    append-line FILE TEXT         add TEXT as FILE's last line
    replace-line FILE N TEXT      replace line N (from 1) of FILE with TEXT
    require FILE [TEXT]           fail unless FILE exists (and holds TEXT)
    absent FILE                   fail if FILE exists
    sleep SECONDS                 wait
    commit MESSAGE                commit everything so far (as a real agent may do)
    fail MESSAGE                  fail

In ``inputs.edits`` each edit is a list (``[append-line, calc.py, "x = 1"]``); in the
instructions each is a line split like a shell would (``append-line calc.py "x = 1"``).
Paths are relative to the worktree. The result (files edited, a made-up token count)
goes to ``$COUNTERPOINT_RESULT_FILE``; a failure exits 1 with the reason on stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Refused(Exception):
    """An edit that cannot be done; the agent fails with this message."""


def edits_of(payload: dict[str, Any]) -> list[list[str]]:
    task = payload.get("task") or {}
    listed = (task.get("inputs") or {}).get("edits")
    if listed is not None:
        return [[str(part) for part in edit] for edit in listed]
    lines = str(task.get("instructions") or "").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def lines_of(path: Path) -> list[str]:
    if not path.exists():
        raise Refused(f"{path} does not exist")
    return path.read_text(encoding="utf-8").splitlines()


def save(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def apply(edit: list[str], edited: list[str]) -> None:
    if not edit:
        return
    op, args = edit[0], edit[1:]
    if op == "sleep":
        time.sleep(float(args[0]))
    elif op == "fail":
        raise Refused(" ".join(args) or "asked to fail")
    elif op == "commit":
        commit(" ".join(args) or "fake agent's work")
    elif op in ("write", "append-line", "replace-line", "require", "absent"):
        edit_file(op, Path(args[0]), args[1:], edited)
    else:
        raise Refused(f"unknown edit {op!r}")


def edit_file(op: str, path: Path, args: list[str], edited: list[str]) -> None:
    if op == "require":
        if args and args[0] not in "\n".join(lines_of(path)):
            raise Refused(f"{path} does not hold {args[0]!r}")
        lines_of(path)  # fails when the file is missing
        return
    if op == "absent":
        if path.exists():
            raise Refused(f"{path} exists, but should not be seen here")
        return
    if op == "write":
        save(path, [args[0]])
    elif op == "append-line":
        save(path, [*(lines_of(path) if path.exists() else []), args[0]])
    else:  # replace-line
        lines, n = lines_of(path), int(args[0])
        if not 1 <= n <= len(lines):
            raise Refused(f"{path} has no line {n}")
        lines[n - 1] = args[1]
        save(path, lines)
    edited.append(str(path))


def commit(message: str) -> None:
    ident = ["-c", "user.name=fake-agent", "-c", "user.email=fake-agent@localhost"]
    subprocess.run(["git", "add", "--all"], check=True)
    subprocess.run(["git", *ident, "commit", "--quiet", "-m", message], check=True)


def main() -> int:
    payload = json.loads(sys.stdin.read() or "{}")
    agent = payload.get("agent") or "fake-agent"
    task = (payload.get("task") or {}).get("id", "?")
    edits = edits_of(payload)
    edited: list[str] = []
    print(f"{agent}: task {task} in {Path.cwd()}: {len(edits)} edits")
    try:
        for i, edit in enumerate(edits, 1):
            apply(edit, edited)
            print(json.dumps({"progress": 100 * i / len(edits), "message": " ".join(edit)}))
    except (Refused, OSError, ValueError, IndexError, subprocess.CalledProcessError) as exc:
        print(f"{agent}: {exc}", file=sys.stderr)
        return 1
    result = {"agent": agent, "edited": sorted(set(edited)), "usage": {"output_tokens": 40}}
    out = os.environ.get("COUNTERPOINT_RESULT_FILE")
    if out:
        Path(out).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
