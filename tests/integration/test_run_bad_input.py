"""Bad input to the run commands: a clear message, exit code 2 and never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import Result, Workspace, agent_spec, cli, one_phase, run_in_process, task


def assert_refused(result: Result, *phrases: str) -> None:
    assert result.code == 2, str(result)
    assert "Traceback" not in result.output, str(result)
    for phrase in phrases:
        assert phrase in result.stderr, str(result)


def small(ws: Workspace) -> Path:
    return ws.write_plan(
        one_phase([task("t1"), task("t2", needs=["t1"])], agents={"dev": agent_spec(ws)})
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace whose state directory holds one completed run."""
    ws = Workspace.create(tmp_path_factory.mktemp("finished"))
    small(ws)
    code, _ = run_in_process(ws)
    assert code == 0
    return ws


@pytest.mark.parametrize("quiet", [False, True], ids=["live", "quiet"])
def test_a_missing_plan_file_exits_2_with_a_clear_message(tmp_path: Path, quiet: bool) -> None:
    missing = tmp_path / "nope.yaml"
    result = cli("run", missing, "--state", tmp_path / "state", *(["--quiet"] if quiet else []))
    assert_refused(result, "cannot read the plan", "nope.yaml")
    assert not (tmp_path / "state").exists()


def test_a_plan_with_errors_exits_2_listing_every_error(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        """\
version: 1
name: broken
agents:
  dev: {capacity: 1, runner: {python: "AGENT"}}
phases:
  - id: p1
    milestones:
      - id: m1
        tasks:
          - {id: a, estimate: 3 dayz}
          - {id: b, needs: [zz]}
"""
    )
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert_refused(result, "bad duration '3 dayz'", "unknown task 'zz'", f"{ws.plan}:10:")
    assert ws.records() == []


def test_a_state_path_that_is_a_file_exits_2(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    small(ws)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    assert_refused(cli("run", ws.plan, "--state", blocker, "--quiet"), "not-a-dir")
    assert_refused(cli("run", ws.plan, "--state", blocker / "state", "--quiet"), "state directory")
    assert ws.records() == []


def test_a_corrupt_state_database_exits_2_naming_the_file(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    small(ws)
    ws.state.mkdir()
    db = ws.state / "state.db"
    db.write_bytes(b"this is not SQLite \x00\xff\xfe" * 200)
    for args in (["status"], ["status", "--json"], ["resume", "--quiet"], ["logs", "t1"]):
        assert_refused(cli(*args, "--state", ws.state), str(db), "corrupt")
    assert_refused(cli("run", ws.plan, "--state", ws.state, "--quiet"), str(db))
    assert ws.records() == []


def test_a_damaged_page_in_a_real_state_database_exits_2(
    finished: Workspace, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    data = bytearray((finished.state / "state.db").read_bytes())
    data[4096:12288] = b"\x5a" * len(data[4096:12288])
    (state / "state.db").write_bytes(bytes(data))
    for args in (["status", "--json"], ["resume", "--quiet"], ["cancel"]):
        assert_refused(cli(*args, "--state", state), str(state / "state.db"))


@pytest.mark.parametrize(
    "args",
    [["status"], ["status", "--json"], ["cancel"], ["logs", "t1"], ["resume"]],
    ids=["status", "status-json", "cancel", "logs", "resume"],
)
def test_commands_on_a_state_dir_without_a_run_exit_2(tmp_path: Path, args: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(cli(*args, "--state", empty), "empty")
    assert_refused(cli(*args, "--state", tmp_path / "never-created"), "never-created")
    assert not (tmp_path / "never-created").exists()


def test_logs_of_an_unknown_task_exits_2(finished: Workspace) -> None:
    result = cli("logs", "no_such_task", "--state", finished.state)
    assert_refused(result, "unknown task 'no_such_task'")
    assert_refused(cli("logs", "t1", "--attempt", "7", "--state", finished.state), "no attempt 7")


def test_cancel_of_a_finished_run_exits_2(finished: Workspace) -> None:
    assert_refused(cli("cancel", "--state", finished.state), "not running")


def test_agent_state_of_an_unknown_agent_exits_2_naming_the_known_ones(finished: Workspace) -> None:
    result = cli("agent-state", "ghost", "maintenance", "--state", finished.state)
    assert_refused(result, "unknown agent 'ghost'", "dev")


def test_a_plan_without_agents_can_be_analysed_but_not_run(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(one_phase([task("t1")]))
    assert cli("check", ws.plan).code == 0
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert_refused(result, "can be analysed but not run")


def test_a_plan_with_a_remote_agent_needs_serve_and_a_token(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(one_phase([task("t1")], agents={"far": {"runner": {"remote": True}}}))
    assert_refused(cli("run", ws.plan, "--state", ws.state, "--quiet"), "run it with --serve")
    assert_refused(
        cli("run", ws.plan, "--state", ws.state, "--quiet", "--serve", "--port", "0"),
        "remote agent 'far' has no token",
        "counterpoint token create far",
    )


def test_a_refused_run_is_not_left_behind_as_an_interrupted_run(tmp_path: Path) -> None:
    """Exit 2 means nothing ran: `status` must not offer a never-started run for resuming."""
    ws = Workspace.create(tmp_path)
    ws.write_plan(one_phase([task("t1")], agents={"far": {"runner": {"remote": True}}}))
    assert_refused(cli("run", ws.plan, "--state", ws.state, "--quiet"), "--serve")
    status = cli("status", "--json", "--state", ws.state)
    assert "Traceback" not in status.output
    if status.code == 0:
        assert '"interrupted"' not in status.stdout and '"running"' not in status.stdout, (
            f"a refused run is reported as a run to resume:\n{status.stdout}"
        )
    else:
        assert status.code == 2, str(status)


def test_a_runner_module_that_cannot_be_imported_exits_2_naming_it(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase([task("t1")], agents={"dev": {"runner": {"python": "no_such_agents_mod:work"}}})
    )
    assert_refused(cli("run", ws.plan, "--state", ws.state, "--quiet"), "no_such_agents_mod")
