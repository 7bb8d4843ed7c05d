"""Helpers for the coding-agent tests: real git repositories and the fake CLIs on PATH.

The fakes (claude, codex, gemini, aider in examples/coding-agents/fakes) are copied into a folder
of the test with this interpreter in their first line, and that folder is put first on PATH
for the test only (``monkeypatch``). What a fake does is chosen by ``fake: ...`` lines
in the task's instructions; every call it gets is in ``FAKE_CLI_STATE/calls.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from run_helpers import Collect, quick_options

from counterpoint.runtime.session import resume_run, start_run

FAKES = Path(__file__).resolve().parents[2] / "examples" / "coding-agents" / "fakes"
CLIS = ("claude", "codex", "gemini", "aider")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=env
    )
    return proc.stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "--quiet")
    git(path, "symbolic-ref", "HEAD", "refs/heads/main")
    (path / "README.md").write_text("a small repository\n", encoding="utf-8")
    git(path, "add", "--all")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "start")
    return path


@dataclass
class CodingWorld:
    """A folder with a git repository, the fake CLIs on PATH, a plan and a state dir."""

    dir: Path
    bin: Path
    calls_dir: Path

    @property
    def repo(self) -> Path:
        return self.dir / "repo"

    @property
    def plan(self) -> Path:
        return self.dir / "plan.yaml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def write_plan(self, tasks: list[dict[str, Any]], agents: dict[str, Any], **top: Any) -> Path:
        plan: dict[str, Any] = {
            "version": 1,
            "name": "coding",
            "defaults": {"retries": 0, "timeout": "60s", "estimate": "1m"},
            "settings": {"repository": "repo", "retry_backoff": "0.05s"},
            "agents": agents,
            "phases": [{"id": "build", "milestones": [{"id": "m", "tasks": tasks}]}],
        }
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(plan.get(key), dict):
                plan[key] = {**plan[key], **value}
            else:
                plan[key] = value
        self.plan.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
        return self.plan

    def run(self, **options: Any) -> tuple[int, Collect]:
        seen = Collect()
        code = start_run(self.plan, self.state, quick_options(**options), [seen], sync="normal")
        return code, seen

    def resume(self, **options: Any) -> tuple[int, Collect]:
        seen = Collect()
        code = resume_run(self.state, quick_options(**options), [seen], sync="normal")
        return code, seen

    def calls(self, cli: str | None = None) -> list[dict[str, Any]]:
        path = self.calls_dir / "calls.jsonl"
        if not path.exists():
            return []
        found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [c for c in found if cli is None or c["cli"] == cli]

    def show(self, ref: str, name: str) -> str:
        return git(self.repo, "show", f"{ref}:{name}")


def coding_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CodingWorld:
    """Make the repository and put the fake CLIs first on PATH (for this test only)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKES / "fakecli.py", bin_dir / "fakecli.py")
    for cli in CLIS:
        text = (FAKES / cli).read_text(encoding="utf-8").split("\n", 1)[1]
        (bin_dir / cli).write_text(f"#!{sys.executable}\n{text}", encoding="utf-8")
        (bin_dir / cli).chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_CLI_STATE", str(calls))
    make_repo(tmp_path / "repo")
    return CodingWorld(tmp_path, bin_dir, calls)


def coder(cli: str, **runner: Any) -> dict[str, Any]:
    """An agent running ``cli`` in a worktree per attempt."""
    return {
        "capabilities": ["code"],
        "capacity": 4,
        "workspace": "worktree",
        "runner": {"coding": cli, **runner},
    }


def coding_task(tid: str, *lines: str, **fields: Any) -> dict[str, Any]:
    """A task whose instructions hold ``lines`` (``fake: ...`` directives among them)."""
    return {"id": tid, "requires": ["code"], "instructions": "\n".join(lines), **fields}


def events(seen: Collect, kind: str) -> list[dict[str, Any]]:
    return [{"task": e.task, **e.data} for e in seen.kinds(kind)]
