"""Conflict-aware merging: predict, classify, resolve mechanically, and judge from git.

A task's branch is merged into the run's integration branch only after
``git merge-tree --write-tree`` (git 2.38 or later) predicted the result, so no ref moves
before the run knows whether the merge conflicts. A conflict is classified per path:

* **mechanical**: the path matches a rule of ``settings.conflicts.mechanical`` and is
  resolved by its strategy (``union``: ``git merge-file --union``; ``ours`` / ``theirs``:
  one side, ``ours`` being the integration branch; ``command``: a command regenerates it);
* **semantic**: the rest, when ``settings.conflicts.resolver`` names an agent: it works in
  a fresh worktree with the merge in progress (see :mod:`counterpoint.agents.attempt`);
* **for a person**: the rest without a resolver, or whatever a resolver left unresolved.

Whether a conflict is resolved is decided from git's state alone (:func:`unresolved`): no
unmerged path and no conflict marker in the files involved, never from what an agent says.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from counterpoint.agents.worktree import WorktreeError, git
from counterpoint.plan.model import Command, MechanicalRule

MIN_GIT = (2, 38)
TAIL_LINES = 20
TAIL_CHARS = 2000
_MARKER = re.compile(rb"^(<{7}|>{7})( |$)", re.MULTILINE)
_git_version: tuple[int, ...] | None = None


# -- git's version and the prediction ------------------------------------------------------


def git_version(cwd: Path) -> tuple[int, ...]:
    """git's version as numbers (``git version 2.39.5`` -> ``(2, 39, 5)``), cached."""
    global _git_version
    if _git_version is None:
        said = git("--version", cwd=cwd).stdout
        found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", said)
        if found is None:
            raise WorktreeError(f"cannot read git's version from `git --version`: {said.strip()}")
        _git_version = tuple(int(n) for n in found.groups() if n is not None)
    return _git_version


def require_merge_tree(cwd: Path) -> None:
    version = git_version(cwd)
    if version[:2] < MIN_GIT:
        shown = ".".join(map(str, version))
        raise WorktreeError(
            f"merging worktree tasks needs git 2.38 or later (for `git merge-tree "
            f"--write-tree`), but this git is {shown}: upgrade git"
        )


@dataclass(frozen=True)
class Prediction:
    """What merging ``theirs`` into ``ours`` would give: a tree, and the paths that conflict."""

    tree: str
    paths: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.paths


def predict(repo: Path, ours: str, theirs: str) -> Prediction:
    """Merge in memory (``git merge-tree --write-tree``): no ref, index or file changes."""
    require_merge_tree(repo)
    args = ("merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", ours, theirs)
    proc = git(*args, cwd=repo, check=False)
    if proc.returncode not in (0, 1):
        said = (proc.stderr.strip() or "no message")[-800:]
        raise WorktreeError(
            f"`git {' '.join(args)}` failed in {repo} (exit {proc.returncode}): {said}"
        )
    tree, *listed = proc.stdout.split("\0")
    paths = tuple(dict.fromkeys(p for p in listed if p))
    if proc.returncode == 1 and not paths:
        raise WorktreeError(f"`git {' '.join(args)}` reported a conflict without a path")
    return Prediction(tree.strip(), paths if proc.returncode == 1 else ())


# -- classification ------------------------------------------------------------------------


def rule_for(path: str, rules: Sequence[MechanicalRule]) -> MechanicalRule | None:
    """The first rule with a glob matching the whole path or its file name."""
    name = path.rsplit("/", 1)[-1]
    for rule in rules:
        if any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(name, g) for g in rule.paths):
            return rule
    return None


def classify(
    paths: Sequence[str], rules: Sequence[MechanicalRule]
) -> tuple[dict[str, MechanicalRule], list[str]]:
    """The mechanical paths (with their rule) and the others."""
    mechanical: dict[str, MechanicalRule] = {}
    others: list[str] = []
    for path in paths:
        rule = rule_for(path, rules)
        if rule is None:
            others.append(path)
        else:
            mechanical[path] = rule
    return mechanical, others


# -- the verdict ---------------------------------------------------------------------------


def unmerged(worktree: Path) -> list[str]:
    listed = git("diff", "--name-only", "--diff-filter=U", "-z", cwd=worktree).stdout
    return sorted({p for p in listed.split("\0") if p})


def unresolved(worktree: Path, paths: Sequence[str]) -> list[str]:
    """The paths still in conflict in ``worktree``: unmerged in git's index, or holding a
    conflict marker (``<<<<<<<`` / ``>>>>>>>`` at a line's start). ``paths`` are the
    files involved; files changed in the worktree but not staged are looked at too."""
    left = set(unmerged(worktree))
    changed = git("diff", "--name-only", "-z", cwd=worktree).stdout.split("\0")
    untracked = git("ls-files", "--others", "--exclude-standard", "-z", cwd=worktree).stdout
    for path in {*paths, *changed, *untracked.split("\0")} - {""}:
        file = worktree / path
        if file.is_file() and _MARKER.search(file.read_bytes()):
            left.add(path)
    return sorted(left)


# -- mechanical strategies -----------------------------------------------------------------


def _stages(worktree: Path, path: str) -> dict[int, str]:
    """The blobs of an unmerged path: stage 1 (base), 2 (ours), 3 (theirs)."""
    listed = git("ls-files", "-u", "-z", "--", path, cwd=worktree).stdout
    stages: dict[int, str] = {}
    for line in filter(None, listed.split("\0")):
        meta, _ = line.split("\t", 1)
        _, blob, stage = meta.split()
        stages[int(stage)] = blob
    return stages


def _union(worktree: Path, path: str) -> None:
    stages = _stages(worktree, path)
    if 2 not in stages or 3 not in stages:
        raise WorktreeError(f"{path}: union needs both sides, but one side deleted it")
    with tempfile.TemporaryDirectory(prefix="counterpoint-union-") as tmp:
        files = []
        for stage, name in ((2, "ours"), (1, "base"), (3, "theirs")):
            file = Path(tmp) / name
            blob = stages.get(stage)
            text = git("cat-file", "blob", blob, cwd=worktree).stdout if blob else ""
            file.write_text(text, encoding="utf-8")
            files.append(str(file))
        merged = git("merge-file", "--union", "-p", *files, cwd=worktree, check=False)
        if merged.returncode < 0 or merged.returncode > 127:
            raise WorktreeError(f"{path}: `git merge-file --union` failed: {merged.stderr}")
    (worktree / path).write_text(merged.stdout, encoding="utf-8")
    git("add", "--", path, cwd=worktree)


def _side(worktree: Path, path: str, side: str) -> None:
    stage = 2 if side == "ours" else 3
    if stage in _stages(worktree, path):
        git("checkout", f"--{side}", "--", path, cwd=worktree)
        git("add", "--", path, cwd=worktree)
    else:  # that side deleted the path
        git("rm", "--quiet", "--", path, cwd=worktree)


def _stage_regenerated(worktree: Path, paths: Sequence[str]) -> None:
    for path in paths:
        if (worktree / path).exists():
            git("add", "--", path, cwd=worktree)
        else:
            git("rm", "--quiet", "--cached", "--ignore-unmatch", "--", path, cwd=worktree)


def resolve_mechanically(worktree: Path, mechanical: dict[str, MechanicalRule]) -> list[str]:
    """Apply each rule's strategy in ``worktree`` (a merge in progress); what went wrong.

    A ``command`` rule runs once for all its paths (listed, one a line, in
    ``COUNTERPOINT_CONFLICT_PATHS``) and its paths are then staged as it left them.
    Blocking: call it through :func:`asyncio.to_thread` from a coroutine.
    """
    problems: list[str] = []
    commands: dict[int, list[str]] = {}
    for path, rule in mechanical.items():
        try:
            if rule.strategy == "union":
                _union(worktree, path)
            elif rule.strategy in ("ours", "theirs"):
                _side(worktree, path, rule.strategy)
            else:
                commands.setdefault(id(rule), []).append(path)
        except WorktreeError as exc:
            problems.append(str(exc))
    for path_list in commands.values():
        rule = mechanical[path_list[0]]
        assert rule.command is not None  # the model requires it for strategy: command
        env = {"COUNTERPOINT_CONFLICT_PATHS": "\n".join(path_list)}
        done = run_command_sync(rule.command, worktree, rule.timeout, env)
        if not done.ok:
            problems.append(done.failure("the mechanical conflict command", rule.command))
            continue
        try:
            _stage_regenerated(worktree, path_list)
        except WorktreeError as exc:
            problems.append(str(exc))
    return problems


# -- commands (setup, check, mechanical) ---------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit code (None: timed out) and its output's last lines."""

    code: int | None
    tail: str
    timeout_s: float

    @property
    def ok(self) -> bool:
        return self.code == 0

    def failure(self, what: str, command: Command) -> str:
        ended = (
            f"timed out after {self.timeout_s:g}s"
            if self.code is None
            else f"failed (exit {self.code})"
        )
        shown = f": {self.tail}" if self.tail else ""
        return f"{what} `{describe(command)}` {ended}{shown}"


def describe(command: Command) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def argv(command: Command) -> list[str]:
    """A string runs through ``/bin/sh -c``; a list runs as it is."""
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def _tail(output: bytes) -> str:
    lines = output.decode("utf-8", "replace").rstrip().splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


async def run_command(
    command: Command, cwd: Path, timeout_s: float, env: dict[str, str] | None = None
) -> CommandResult:
    """Run ``command`` in ``cwd`` (own process group, killed on timeout or cancellation)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv(command),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(127, f"cannot start it: {exc}", timeout_s)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill(proc.pid)
        await proc.wait()
        return CommandResult(None, "", timeout_s)
    except asyncio.CancelledError:
        _kill(proc.pid)
        raise
    return CommandResult(proc.returncode, _tail(output), timeout_s)


def run_command_sync(
    command: Command, cwd: Path, timeout_s: float, env: dict[str, str] | None = None
) -> CommandResult:
    """:func:`run_command`, blocking (for the run's loop, which merges synchronously)."""
    try:
        proc = subprocess.Popen(
            argv(command),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(127, f"cannot start it: {exc}", timeout_s)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc.pid)
        proc.communicate()
        return CommandResult(None, "", timeout_s)
    return CommandResult(proc.returncode, _tail(output), timeout_s)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
