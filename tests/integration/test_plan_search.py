"""``counterpoint plan`` with the schedule search: --time-limit, --seed, --optimal,
--what-if, the bottleneck and the added JSON keys, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cloud-migration" / "plan.yaml"

# the lock has 2 units; t3 (one unit) overlaps neither t0 nor t1 (two units each):
# one priority-rule pass takes 10h, the optimum (proven by CP-SAT) is 7h
TRAP = """\
version: 1
name: trap
agents:
  dev: {capabilities: [code], capacity: 2, runner: {shell: "true"}}
resources:
  lock: {capacity: 2}
phases:
  - id: p
    milestones:
      - id: m
        tasks:
          - {id: t0, requires: [code], estimate: 2h, resources: {lock: 2}}
          - {id: t1, requires: [code], estimate: 1h, needs: [t0], resources: {lock: 2}}
          - {id: t2, requires: [code], estimate: 3h, needs: [t1]}
          - {id: t3, requires: [code], estimate: 4h, resources: {lock: 1}}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "counterpoint", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def trap(tmp_path: Path) -> Path:
    path = tmp_path / "trap.yaml"
    path.write_text(TRAP, encoding="utf-8")
    return path


def test_plan_json_adds_the_quality_and_capacity_keys(trap: Path) -> None:
    result = run("plan", "--json", str(trap))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"tasks", "critical_path", "critical_path_s", "makespan_s", "schedule"} <= set(out)
    assert out["makespan_s"] == 7 * 3600.0
    assert out["critical_path_s"] == 6 * 3600.0
    assert out["lower_bound_s"] == 6 * 3600.0  # only CP-SAT proves 7h
    assert out["optimal"] is False
    assert out["method"] == "genetic"
    assert out["search"]["seed"] == 0 and out["search"]["time_limit_s"] == 1.0
    assert out["search"]["schedules"] > 0
    assert out["what_if"] == []
    kinds = {(b["kind"], b["name"]) for b in out["bottleneck"]}
    assert ("resource", "lock") in kinds
    lock = next(b for b in out["bottleneck"] if b["name"] == "lock")
    assert lock["capacity"] == 2 and lock["saved_s"] > 0
    assert lock["makespan_s"] + lock["saved_s"] == out["makespan_s"]


def test_time_limit_zero_is_the_single_pass(trap: Path) -> None:
    out = json.loads(run("plan", "--json", "--time-limit", "0", str(trap)).stdout)
    assert out["makespan_s"] == 10 * 3600.0
    assert out["method"] == "priority-rule"
    assert out["search"] == {"seed": 0, "time_limit_s": 0.0, "schedules": 0, "stopped": ""}


def test_optimal_proves_the_optimum(trap: Path) -> None:
    result = run("plan", "--json", "--optimal", "--time-limit", "10", str(trap))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["makespan_s"] == out["lower_bound_s"] == 7 * 3600.0
    assert out["optimal"] is True
    assert out["search"]["stopped"] == "optimal"


def test_optimal_without_ortools_names_the_extra(
    trap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from counterpoint import cli
    from counterpoint.plan import cpsat

    monkeypatch.setattr(cpsat, "available", lambda: False)
    result = CliRunner().invoke(cli.cli, ["plan", "--optimal", str(trap)])
    assert result.exit_code == 2
    assert "counterpoint[optimize]" in result.output


def test_what_if_shows_each_change_and_all_together(trap: Path) -> None:
    result = run(
        "plan",
        "--json",
        str(trap),
        "--what-if",
        "resources.lock.capacity=3",
        "--what-if",
        "agents.dev.capacity=1",
    )
    assert result.returncode == 0, result.stderr
    scenarios = json.loads(result.stdout)["what_if"]
    assert [s["changes"] for s in scenarios] == [
        {"resources.lock.capacity": 3},
        {"agents.dev.capacity": 1},
        {"resources.lock.capacity": 3, "agents.dev.capacity": 1},
    ]
    # three lock units: t3 runs beside t0 and t1, so the chain t0-t1-t2 (6h) decides
    assert scenarios[0]["makespan_s"] == 6 * 3600.0 and scenarios[0]["optimal"] is True
    # one dev slot: the 10 hours of work run one after another
    assert scenarios[1]["makespan_s"] == 10 * 3600.0
    assert scenarios[2]["makespan_s"] == 10 * 3600.0


def test_what_if_table_and_bottleneck_in_the_tables(trap: Path) -> None:
    result = run("plan", str(trap), "--what-if", "resources.lock.capacity=3")
    assert result.returncode == 0, result.stderr
    for text in ("Lower bound", "Bottleneck", "What if", "resources.lock.capacity=3"):
        assert text in result.stdout


def test_a_scenario_without_schedule_is_reported_not_fatal(trap: Path) -> None:
    result = run("plan", "--json", str(trap), "--what-if", "agents.dev.capacity=0")
    assert result.returncode == 0, result.stderr
    (scenario,) = json.loads(result.stdout)["what_if"]
    assert scenario["makespan_s"] is None and "no schedule" in scenario["error"]


@pytest.mark.parametrize(
    ("what_if", "message"),
    [
        ("agents.devv.capacity=3", "no agent 'devv' (did you mean 'dev'?)"),
        ("agents.dev.capasity=3", "unknown key 'capasity' (did you mean 'capacity'?)"),
        ("resourses.lock.capacity=3", "unknown section 'resourses' (did you mean 'resources'?)"),
        ("resources.lok.capacity=3", "no resource 'lok' (did you mean 'lock'?)"),
        ("resources.lock.rate=3", "'lock' is a counted resource"),
        ("resources.lock.capacity=many", "'many' is not a whole number"),
        ("agents.dev.capacity=-2", "must be at least 0"),
        ("settings.max_concurency=2", "did you mean 'max_concurrency'?"),
        ("agents.dev.capacity", "expected PATH=VALUE"),
    ],
)
def test_a_bad_what_if_exits_2_naming_what_is_wrong(trap: Path, what_if: str, message: str) -> None:
    result = run("plan", str(trap), "--what-if", what_if)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_same_seed_gives_the_same_json(trap: Path) -> None:
    first = run("plan", "--json", "--seed", "3", str(EXAMPLE), "--time-limit", "10")
    again = run("plan", "--json", "--seed", "3", str(EXAMPLE), "--time-limit", "10")
    assert first.returncode == 0, first.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["search"]["stopped"] in ("stagnation", "lower bound")
    assert a == b
