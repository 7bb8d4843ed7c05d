"""The command line as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cloud-migration" / "plan.yaml"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "counterpoint", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SMALL = """\
version: 1
name: small
agents:
  dev: {capabilities: [code], capacity: 1, runner: {python: "agents:dev"}}
resources:
  lock: {capacity: 1}
phases:
  - id: build
    milestones:
      - id: m1
        tasks:
          - {id: a, requires: [code], estimate: 2h}
          - {id: b, requires: [code], estimate: 1h, needs: [a]}
          - {id: c, requires: [code], estimate: 3h, resources: {lock: 1}}
"""


def test_check_accepts_the_flagship_example_with_a_one_line_summary() -> None:
    result = run("check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "ok: 5 phases, 15 milestones" in result.stdout
    assert "tasks" in result.stdout and "agents" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


def test_check_reports_every_problem_with_its_position_and_exits_2(tmp_path: Path) -> None:
    plan = write(
        tmp_path,
        SMALL.replace("estimate: 2h", "estimate: 3 dayz").replace("needs: [a]", "needs: [zz]"),
    )
    result = run("check", str(plan))
    assert result.returncode == 2
    assert f"{plan}:12:49: error:" in result.stderr
    assert "bad duration '3 dayz'" in result.stderr
    assert "unknown task 'zz'" in result.stderr
    assert "2 errors" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_json_lists_problems_as_data(tmp_path: Path) -> None:
    plan = write(tmp_path, SMALL.replace("capacity: 1, runner", "capacity: -1, runner"))
    result = run("check", "--json", str(plan))
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    (problem,) = report["problems"]
    assert problem["path"] == "agents.dev.capacity"
    assert (problem["line"], problem["severity"]) == (4, "error")


def test_a_missing_plan_file_is_invalid_input(tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read the plan" in result.stderr


@pytest.mark.parametrize("args", [["frobnicate"], ["plan"], ["plan", "--limit", "-3", "x.yaml"]])
def test_bad_arguments_exit_2_without_a_traceback(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_plan_json_is_the_contract_object(tmp_path: Path) -> None:
    result = run("plan", "--json", str(write(tmp_path, SMALL)))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"tasks", "critical_path", "critical_path_s", "makespan_s", "schedule"}
    assert out["tasks"] == 3
    assert out["critical_path_s"] == 3 * 3600.0
    # one agent with capacity 1 runs the three tasks one after another
    assert out["makespan_s"] == 6 * 3600.0
    starts = {e["task"]: (e["start_s"], e["finish_s"]) for e in out["schedule"]}
    assert starts["b"][0] >= starts["a"][1]
    assert all(e["agent"] == "dev" for e in out["schedule"])


def test_plan_prints_the_analysis_tables(tmp_path: Path) -> None:
    result = run("plan", str(EXAMPLE), "--limit", "3")
    assert result.returncode == 0, result.stderr
    for heading in ("Critical path", "Parallel execution matrix", "Resource-feasible schedule"):
        assert heading in result.stdout or heading.lower() in result.stdout.lower()


@pytest.mark.parametrize("suffix", [".svg", ".png", ".html"])
def test_plan_writes_a_gantt_chart_in_the_format_of_its_extension(
    tmp_path: Path, suffix: str
) -> None:
    target = tmp_path / f"chart{suffix}"
    result = run("plan", str(EXAMPLE), "--json", "--gantt", str(target))
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # the JSON on stdout is not disturbed by the chart
    data = target.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert b"<svg" in data and b"team-assessment" in data


def test_an_unknown_gantt_format_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run("plan", str(EXAMPLE), "--gantt", str(tmp_path / "chart.pdf"))
    assert result.returncode == 2
    assert ".pdf" in result.stderr and not (tmp_path / "chart.pdf").exists()


def test_schema_validates_the_flagship_example_and_rejects_unknown_keys(tmp_path: Path) -> None:
    result = run("schema", "--output", str(tmp_path / "schema.json"))
    assert result.returncode == 0, result.stderr
    schema = json.loads((tmp_path / "schema.json").read_text())
    example = yaml.safe_load(EXAMPLE.read_text())
    jsonschema.validate(example, schema)
    example["settings"]["max_concurency"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, schema)


def test_version_is_printed() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert "counterpoint" in result.stdout
