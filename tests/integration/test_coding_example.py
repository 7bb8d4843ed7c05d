"""``examples/coding-agents/`` end to end, in a copy: the fake CLIs it ships, real git."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from coding_helpers import git

from counterpoint.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "coding-agents"
INTEGRATION = "counterpoint/run-1"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    folder = tmp_path / "coding-agents"
    ignore = shutil.ignore_patterns("repo", ".counterpoint", "__pycache__")
    shutil.copytree(EXAMPLE, folder, ignore=ignore)
    subprocess.run(["sh", str(folder / "make-repo.sh")], check=True, capture_output=True)
    return folder


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for name in ("COUNTERPOINT_STATE", "FAKE_CLI_STATE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "counterpoint", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_the_coding_agents_example_runs_end_to_end(example: Path) -> None:
    repo = example / "repo"
    done = run_cli("run", example / "plan.yaml", "--json", cwd=example.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in events if e["event"] == kind]

    # Every task merged, one merge commit each, on the integration branch only.
    log = git(repo, "log", "--first-parent", "--format=%s", INTEGRATION).splitlines()
    merged = sorted(re.sub(r"counterpoint: merge task (\S+) .*", r"\1", s) for s in log[:-1])
    assert merged == ["cli", "farewell", "greet", "readme", "slugify", "wrap"]
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert not git(repo, "status", "--porcelain")
    # The mechanical conflict: both changelog lines, by union.
    resolved = {tuple(e["paths"]): e["how"] for e in of("merge_resolved")}
    assert resolved[("CHANGELOG.md",)] == ["CHANGELOG.md (union)"]
    changelog = git(repo, "show", f"{INTEGRATION}:CHANGELOG.md")
    assert "- slugify(): URL slugs" in changelog and "- wrap(): fill text to a width" in changelog
    # The semantic conflict: the resolver agent kept both functions, and the check passed.
    assert resolved[("textkit/core.py",)] == ["textkit/core.py (resolver fixer)"]
    core = git(repo, "show", f"{INTEGRATION}:textkit/core.py")
    assert "def greet(" in core and "def farewell(" in core and "<<<<<<<" not in core
    # Best of two: both candidates passed the check; codex's smaller diff was merged.
    (chosen,) = of("candidate_chosen")
    assert chosen["task"] == "cli" and chosen["agent"] == "codex"
    assert {c["agent"]: c["check"] for c in chosen["candidates"]} == {
        "claude": "passed",
        "codex": "passed",
    }
    assert "argparse" not in git(repo, "show", f"{INTEGRATION}:textkit/cli.py")
    # The budget: claude's reported costs ($0.35 + $0.35 + $0.30), under the $5 budget.
    usage = of("coding_usage")
    assert round(usage[-1]["run_cost_usd"], 6) == 1.0
    assert sum(u["cost_usd"] for u in usage) == pytest.approx(1.0)
    assert not of("budget_reached")
    # The integrated work passes the tests, and works.
    git(repo, "checkout", "--quiet", INTEGRATION)
    tests = subprocess.run([sys.executable, "tests/run.py"], cwd=repo, capture_output=True)
    assert tests.returncode == 0, tests.stdout
    slug = subprocess.run(
        [sys.executable, "-m", "textkit.cli", "slug", "Hello, World"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert slug.stdout.strip() == "hello-world"


def test_the_real_cli_plan_is_the_fake_plan_without_the_fake_lines() -> None:
    fake, real = load_plan(EXAMPLE / "plan.yaml"), load_plan(EXAMPLE / "plan-real.yaml")
    fake_lines = re.compile(r"^fake(\[\w+\])?: .*\n", re.MULTILINE)
    for f, r in zip(fake.tasks(), real.tasks(), strict=True):
        stripped = f.model_copy(update={"instructions": fake_lines.sub("", f.instructions)})
        assert r.model_dump() == stripped.model_dump()
    assert real.agents.keys() == fake.agents.keys()
    for name, agent in real.agents.items():
        assert agent.runner is not None and agent.runner.command is None  # the real CLIs
        assert agent.runner.coding == fake.agents[name].runner.coding  # type: ignore[union-attr]
        assert not agent.runner.skip_permissions
    assert real.settings.model_dump() == fake.settings.model_dump()
