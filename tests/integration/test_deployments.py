"""``counterpoint deploy``: each rollback strategy against a fake system (a JSON file for the
load balancer and the versions, changed by real hook commands and by Python functions),
failing steps, a rollback killed with SIGKILL and resumed, and bad input."""

from __future__ import annotations

import json
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from run_helpers import Background, kill_quietly, wait_for

import counterpoint.cli_rollback  # noqa: F401 - registers config and deploy
from counterpoint.cli import cli
from counterpoint.rollback import ConfigHistory, Deployments, Hook, rollback_outcomes, rollout
from counterpoint.rollback.deploy import rollback_outcomes as deployment_outcomes
from counterpoint.rollback.strategies import plan
from counterpoint.store.sqlite import SqliteStore

FAKE = Path(__file__).resolve().parent / "fake_system"
LB = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE / 'lb.py'))}"


class FakeSystem:
    """The JSON file that stands for the load balancer and what runs where."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.write(
            {
                "live": "green",
                "weights": {"canary": 100, "stable": 0},
                "batches": {"1": "2.0", "2": "2.0", "3": "2.0"},
                "version": "2.0",
            }
        )

    def read(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def write(self, data: dict[str, Any]) -> None:
        self.path.write_text(json.dumps(data))

    def update(self, **changes: Any) -> None:
        self.write({**self.read(), **changes})

    @property
    def history(self) -> list[list[str]]:
        """The changes made, in order (a call that failed or hung changed nothing)."""
        return list(self.read().get("history", []))

    def calls(self, hook: str) -> Counter[str]:
        """How many times each argument (batch, colour, ...) was asked for."""
        return Counter(c["args"][0] for c in self.read().get("calls", []) if c["hook"] == hook)


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSystem:
    monkeypatch.setenv("FAKE_SYSTEM", str(tmp_path / "system.json"))
    monkeypatch.chdir(FAKE)  # --python hooks import lb from the current folder
    return FakeSystem(tmp_path / "system.json")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def cp(*args: str | Path, code: int = 0) -> Result:
    """The command line, in process; checks the exit code and that no traceback escaped."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result


def deployments(state: Path, name: str = "api") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(
        cp("deploy", "list", name, "--json", "--state", state).stdout
    )["deployments"]
    return found


def hook(via: str, step: str, args: str) -> list[str]:
    if via == "python":
        return ["--python", f"{step}=lb:{step}"]
    return ["--hook", f"{step}={LB} {step} {args}"]


#: type given -> (its options, hook, hook arguments, the changes its rollback makes)
STRATEGIES: dict[str, tuple[list[str], str, str, list[list[str]]]] = {
    "blue-green": (["--colour", "green"], "switch", "{colour}", [["switch", "blue"]]),
    "canary": (
        ["--steps", "50,25,0"],
        "weight",
        "{weight} {stable_weight}",
        [["weight", "50", "50"], ["weight", "25", "75"], ["weight", "0", "100"]],
    ),
    "rolling": (
        ["--batches", "3"],
        "batch",
        "{batch} {version}",
        [["batch", "3", "1.0"], ["batch", "2", "1.0"], ["batch", "1", "1.0"]],
    ),
    "recreate": ([], "deploy", "{version}", [["deploy", "1.0"]]),  # not named: full
}


@pytest.mark.parametrize("via", ["command", "python"])
@pytest.mark.parametrize("declared", list(STRATEGIES))
def test_each_strategy_rolls_back_the_fake_system_its_own_way(
    system: FakeSystem, state: Path, declared: str, via: str
) -> None:
    options, step, args, changes = STRATEGIES[declared]
    recorded = cp(
        "deploy",
        "record",
        "api",
        "--type",
        declared,
        "--version",
        "2.0",
        "--previous",
        "1.0",
        *options,
        *hook(via, step, args),
        "--state",
        state,
    )
    assert f"its rollback takes {len(changes)} step" in recorded.stdout

    done = cp("deploy", "rollback", "api", "--state", state)

    assert system.history == changes
    assert done.stdout == f"api: deployment 1 rolled back to 1.0 in {len(changes)} step(s)\n"
    calls = system.read()["calls"]
    assert {c["via"] for c in calls} == {via}
    first = calls[0]["in"]
    assert (first["name"], first["hook"], first["step"], first["steps"]) == (
        "api",
        step,
        1,
        len(changes),
    )
    assert (first["version"], first["from_version"]) == ("1.0", "2.0")
    [listed] = deployments(state)
    expected_type = "full" if declared == "recreate" else declared
    assert (listed["type"], listed["declared_type"], listed["status"]) == (
        expected_type,
        declared,
        "rolled_back",
    )
    assert [s["status"] for s in listed["rollback"]["steps"]] == ["done"] * len(changes)


def test_a_failing_step_stops_the_rollback_and_a_second_run_resumes_at_it(
    system: FakeSystem, state: Path
) -> None:
    system.update(fail={"batch": "2"})
    cp(
        "deploy",
        "record",
        "api",
        "--type",
        "rolling",
        "--version",
        "2.0",
        "--previous",
        "1.0",
        "--batches",
        "3",
        *hook("command", "batch", "{batch} {version}"),
        "--state",
        state,
    )

    failed = cp("deploy", "rollback", "api", "--state", state, code=1)
    assert "step 2/3: batch 2 back to 1.0 failed: exit code 1: batch 2 unreachable" in failed.stderr
    assert (
        "left undone: step 2/3: batch 2 back to 1.0; step 3/3: batch 1 back to 1.0" in failed.stderr
    )
    [broken] = deployments(state)
    assert broken["status"] == "rollback_failed"
    assert [s["status"] for s in broken["rollback"]["steps"]] == ["done", "failed", "pending"]
    refused = cp(
        "deploy",
        "record",
        "api",
        "--type",
        "full",
        "--version",
        "3.0",
        *hook("command", "deploy", "{version}"),
        "--state",
        state,
        code=2,
    )
    assert "the rollback of deployment 1 of api is unfinished (rollback_failed)" in refused.stderr

    system.update(fail={})
    resumed = cp("deploy", "rollback", "api", "--state", state)

    assert "resuming its rollback at step 2 (1 of 3 steps done)" in resumed.stderr
    assert system.history == [["batch", "3", "1.0"], ["batch", "2", "1.0"], ["batch", "1", "1.0"]]
    assert system.calls("batch") == {"3": 1, "2": 2, "1": 1}  # batch 3 was not redone
    assert system.read()["batches"] == {"1": "1.0", "2": "1.0", "3": "1.0"}
    outcomes = deployment_outcomes(SqliteStore(state))
    assert [(o["subject"], o["ok"]) for o in outcomes] == [("api", True)]


def test_a_rollback_killed_mid_step_resumes_from_the_recorded_step(
    system: FakeSystem, state: Path, tmp_path: Path
) -> None:
    system.update(hang={"batch": "2"})
    cp(
        "deploy",
        "record",
        "api",
        "--type",
        "rolling",
        "--version",
        "2.0",
        "--previous",
        "1.0",
        "--batches",
        "3",
        *hook("command", "batch", "{batch} {version}"),
        "--state",
        state,
    )
    rolling = Background(tmp_path, "deploy", "rollback", "api", "--state", state)
    hanging = int(wait_for(lambda: system.read().get("hanging"), what="the batch 2 hook"))
    busy = cp("deploy", "rollback", "api", "--state", state, code=2)
    assert f"api: another process (pid {rolling.pid}) is recording or rolling back" in busy.stderr

    kill_quietly(rolling.pid)  # SIGKILL in the middle of step 2
    rolling.wait()
    kill_quietly(hanging)
    [cut] = deployments(state)
    assert cut["status"] == "rolling_back"
    assert [s["status"] for s in cut["rollback"]["steps"]] == ["done", "running", "pending"]

    resumed = cp("deploy", "rollback", "api", "--state", state)

    assert "resuming its rollback at step 2 (1 of 3 steps done)" in resumed.stderr
    assert system.history == [["batch", "3", "1.0"], ["batch", "2", "1.0"], ["batch", "1", "1.0"]]
    assert system.calls("batch") == {"3": 1, "2": 2, "1": 1}
    [done] = deployments(state)
    assert done["status"] == "rolled_back"
    assert [s["runs"] for s in done["rollback"]["steps"]] == [1, 2, 1]


def test_a_hook_past_its_time_limit_is_stopped_and_fails_its_step(
    system: FakeSystem, state: Path
) -> None:
    system.update(hang={"deploy": "1.0"})
    cp(
        "deploy",
        "record",
        "api",
        "--type",
        "full",
        "--version",
        "2.0",
        "--previous",
        "1.0",
        "--hook-timeout",
        "0.5s",
        *hook("command", "deploy", "{version}"),
        "--state",
        state,
    )
    failed = cp("deploy", "rollback", "api", "--state", state, code=1)
    assert "step 1/1: deploy 1.0 failed: no answer within 0.5 s" in failed.stderr
    cp("deploy", "rollback", "api", "--state", state)  # the hook hangs only once
    assert system.read()["version"] == "1.0"


def test_a_new_deployment_supersedes_the_last_and_is_undone_back_to_it(
    system: FakeSystem, state: Path
) -> None:
    deploy_hook = hook("command", "deploy", "{version}")
    cp(
        "deploy",
        "record",
        "api",
        "--type",
        "full",
        "--version",
        "2.0",
        "--previous",
        "1.0",
        *deploy_hook,
        "--state",
        state,
    )
    cp(
        "deploy",
        "record",
        "api",
        "--type",
        "full",
        "--version",
        "3.0",
        *deploy_hook,
        "--state",
        state,
    )
    assert [(d["id"], d["previous"], d["status"]) for d in deployments(state)] == [
        (2, "2.0", "active"),
        (1, "1.0", "superseded"),
    ]
    cp("deploy", "rollback", "api", "--state", state)
    assert system.read()["version"] == "2.0"
    assert [d["status"] for d in deployments(state)] == ["rolled_back", "active"]
    again = cp("deploy", "rollback", "api", "--state", state, code=2)
    assert "deployment 2 of api (3.0) was already rolled back to 2.0" in again.stderr
    cp(
        "deploy",
        "record",
        "api",
        "--type",
        "full",
        "--version",
        "3.1",
        *deploy_hook,
        "--state",
        state,
    )
    assert deployments(state)[0]["previous"] == "2.0"  # what runs after the rollback


def test_rollbacks_made_with_the_library_count_towards_the_success_rate(
    system: FakeSystem, state: Path
) -> None:
    store = SqliteStore(state)
    deploys = Deployments(store)
    spec = rollout("blue-green", {"switch": Hook.of_python("lb:switch", FAKE)})
    deploys.record("api", version="2.0", previous="1.0", rollout=spec, author="ci")
    system.update(fail={"switch": "blue"})
    result = deploys.rollback("api", author="ops")
    assert not result.ok and [s.number for s in result.left] == [1]
    history = ConfigHistory(store)
    history.set("agent-1", {"a": 1}, author="ops")
    history.set("agent-1", {"a": 2}, author="ops")
    history.rollback("agent-1", author="ops")

    outcomes = rollback_outcomes(store)

    assert [(o["kind"], o["subject"], o["ok"]) for o in outcomes] == [
        ("deployment", "api", False),
        ("config", "agent-1", True),
    ]
    assert "switch traffic to blue" in outcomes[0]["detail"]
    assert "RuntimeError: switch blue unreachable" in outcomes[0]["detail"]


def test_canary_steps_start_below_the_canary_current_weight() -> None:
    spec = rollout("Canary", {"weight": Hook.of_command("true")}, weight=40)
    steps = plan("api", 1, "2.0", "1.0", spec)
    assert [(s.args["weight"], s.args["stable_weight"]) for s in steps] == [(25, 75), (0, 100)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollback", "nope"], "no deployment 'nope' (deployments: api)"),
        (["list", "apx"], "no deployment 'apx' (deployments: api); did you mean 'api'?"),
        (
            ["record", "web", "--type", "canary", "--version", "2", "--previous", "1"],
            "a canary deployment needs a 'weight' hook to roll back",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "rolling",
                "--version",
                "2",
                "--previous",
                "1",
                "--batches",
                "2",
                "--hook",
                "switch=true",
            ],
            "a rolling deployment has no 'switch' hook; its rollback uses 'batch'",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "full",
                "--version",
                "2",
                "--previous",
                "1",
                "--hook",
                "deploy=echo {colour}",
            ],
            "unknown placeholder {colour}",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "blue-green",
                "--version",
                "2",
                "--previous",
                "1",
                "--steps",
                "50,0",
                "--hook",
                "switch=true",
            ],
            "--steps does not apply to a blue-green deployment",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "canary",
                "--version",
                "2",
                "--previous",
                "1",
                "--steps",
                "50,25",
                "--hook",
                "weight=true",
            ],
            "--steps must end with 0",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "canary",
                "--version",
                "2",
                "--previous",
                "1",
                "--steps",
                "half",
                "--hook",
                "weight=true",
            ],
            "--steps 'half': expected canary weights",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "rolling",
                "--version",
                "2",
                "--previous",
                "1",
                "--hook",
                "batch=true",
            ],
            "a rolling deployment needs its batches",
        ),
        (
            ["record", "web", "--type", "full", "--version", "2", "--hook", "deploy=true"],
            "web has no earlier deployment: give its previous version",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "full",
                "--version",
                "2",
                "--previous",
                "1",
                "--python",
                "deploy=no_such_module:f",
            ],
            "cannot import 'no_such_module'",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "full",
                "--version",
                "2",
                "--previous",
                "1",
                "--hook",
                "deploy",
            ],
            "--hook 'deploy': expected STEP=COMMAND",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "blue-green",
                "--version",
                "2",
                "--previous",
                "1",
                "--colour",
                "red",
                "--hook",
                "switch=true",
            ],
            "give --previous-colour",
        ),
        (
            [
                "record",
                "web",
                "--type",
                "full",
                "--version",
                "2",
                "--previous",
                "1",
                "--hook-timeout",
                "later",
                "--hook",
                "deploy=true",
            ],
            "--hook-timeout: bad duration",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    system: FakeSystem, state: Path, args: list[str], message: str
) -> None:
    cp(
        "deploy",
        "record",
        "api",
        "--type",
        "full",
        "--version",
        "2.0",
        "--previous",
        "1.0",
        "--hook",
        "deploy=true",
        "--state",
        state,
    )
    result = cp("deploy", *args, "--state", state, code=2)
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


def test_listing_a_state_directory_without_deployments_exits_2(tmp_path: Path) -> None:
    result = cp("deploy", "list", "--state", tmp_path / "empty", code=2)
    assert "no deployment in" in result.stderr
