"""``counterpoint runbook``: runbooks from a file or a plan, run step by step with real commands,
checks and approvals decided from other processes; a failing step that goes up the escalation
ladder (a loopback webhook receiver and a command notifier watch it), resumes after a fix, after
SIGKILL and after Ctrl-C, a resume taking over from a process waiting on its escalation, and bad
input."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from run_helpers import Background, Result, kill_quietly, pid_alive, wait_for

import counterpoint.cli_runbook  # noqa: F401 - registers the runbook commands
from counterpoint.cli import cli as main
from counterpoint.rollback import rollback_outcomes
from counterpoint.store.sqlite import SqliteStore


def cli(*args: str | Path) -> Result:
    """The command line, in this process (another one than a Background runbook's)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return Result(result.exit_code, result.stdout, result.stderr)


# -- a webhook receiver on loopback -----------------------------------------------------------


@dataclass
class Receiver:
    url: str
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return list(self.posts)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.posts.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


# -- runbooks ---------------------------------------------------------------------------------


def step(ident: str, script: str, **more: Any) -> dict[str, Any]:
    """A command step that logs its id to ran.log, then runs ``script`` (sh)."""
    return {
        "id": ident,
        "kind": "command",
        "run": ["sh", "-c", f"echo {ident} >> ran.log; {script}"],
        **more,
    }


def ladder(receiver: Receiver | None, timeout: str = "0.4s") -> dict[str, Any]:
    alice = [{"webhook": f"{receiver.url}/alice"}] if receiver else [{"log": True}]
    return {
        "levels": [
            {"name": "oncall", "contacts": ["alice"], "timeout": timeout},
            {"name": "leads", "contacts": ["bob"], "timeout": timeout},
        ],
        "contacts": {
            "alice": {"notify": alice},
            "bob": {"notify": [{"command": ["sh", "-c", "cat >> notices.jsonl"]}]},
        },
    }


def write_file(
    folder: Path, runbooks: dict[str, Any], escalation: dict[str, Any] | None = None
) -> Path:
    doc: dict[str, Any] = {"version": 1, "runbooks": runbooks}
    if escalation is not None:
        doc["escalation"] = escalation
    path = folder / "runbooks.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def failover(
    receiver: Receiver | None = None, timeout: str = "0.4s"
) -> tuple[dict[str, Any], dict[str, Any]]:
    steps = [
        step("freeze", "true"),
        {"id": "lag", "kind": "check", "check": {"kind": "python", "call": "checks:replica_lag"}},
        step(
            "promote",
            "test -f replica.ok || { echo 'replica not ready' >&2; exit 3; }",
            retries=1,
            retry_delay="0.05s",
        ),
        {
            "id": "config",
            "kind": "check",
            "check": {"kind": "file", "path": "replica.ok", "pattern": "role: primary"},
        },
        step("thaw", "true"),
    ]
    return {"db-failover": {"description": "Fail over to the replica.", "steps": steps}}, ladder(
        receiver, timeout
    )


CHECKS = """
def replica_lag(ctx):
    return True, f"lag 0.1s ({ctx.gate}, execution {ctx.run_id})"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "checks.py").write_text(CHECKS)
    return tmp_path


def ran(folder: Path) -> list[str]:
    path = folder / "ran.log"
    return path.read_text().split() if path.exists() else []


def events(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def status(state: Path, name: str) -> dict[str, Any]:
    result = cli("runbook", "status", name, "--json", "--state", state)
    assert result.code == 0, result
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def steps_of(report: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["status"] for s in report["steps"]}


# -- the test: a failing step escalates ---------------------------------------------


def test_a_failing_step_stops_the_runbook_and_escalates_then_a_resume_starts_at_it(
    folder: Path, receiver: Receiver
) -> None:
    runbooks, escalation = failover(receiver)
    path = write_file(folder, runbooks, escalation)
    state = folder / "state"

    failed = cli("runbook", "run", "db-failover", "--file", path, "--state", state, "--json")

    assert failed.code == 1, failed
    kinds = [e["event"] for e in events(failed)]
    assert kinds[:2] == ["execution_started", "step_started"]
    assert ran(folder) == ["freeze", "promote", "promote"]  # retried once, thaw never ran
    [gone] = [e for e in events(failed) if e["event"] == "step_failed"]
    assert (gone["step"], gone["attempt"]) == ("promote", 2)
    assert gone["detail"] == "exit code 3: replica not ready"
    lag = next(e for e in events(failed) if e["event"] == "step_done" and e["step"] == "lag")
    assert lag["detail"] == "lag 0.1s (runbook:db-failover/lag.check, execution 1)"
    # the ladder: alice's webhook at once, bob's command when oncall's time was up, then exhausted
    ladder_events = {"escalation_opened", "escalated", "escalation_exhausted"}
    climb = [(e["event"], e["level_name"]) for e in events(failed) if e["event"] in ladder_events]
    assert climb == [
        ("escalation_opened", "oncall"),
        ("escalated", "leads"),
        ("escalation_exhausted", "leads"),
    ]
    notified = [
        (e["contact"], e["channel"]) for e in events(failed) if e["event"] == "escalation_notified"
    ]
    assert notified == [("alice", "webhook"), ("bob", "command")]
    [(where, notice)] = receiver.bodies()
    assert (where, notice["event"], notice["contact"]) == ("/alice", "escalation_opened", "alice")
    assert notice["case"]["subject"] == "runbook:db-failover"
    assert notice["case"]["details"]["step"] == "promote"
    assert "replica not ready" in notice["case"]["details"]["error"]
    [told] = [json.loads(line) for line in (folder / "notices.jsonl").read_text().splitlines()]
    assert (told["event"], told["contact"], told["level"]["name"]) == ("escalated", "bob", "leads")
    assert events(failed)[-1] == {"event": "runbook_finished", "status": "failed", "exit_code": 1}
    report = status(state, "db-failover")
    assert report["status"] == "failed"
    assert steps_of(report) == {
        "freeze": "done",
        "lag": "done",
        "promote": "failed",
        "config": "pending",
        "thaw": "pending",
    }
    assert report["case"]["status"] == "exhausted"
    assert (
        "replica not ready" in next(s for s in report["steps"] if s["step"] == "promote")["output"]
    )
    assert [o["ok"] for o in rollback_outcomes(SqliteStore(state)) if o["kind"] == "runbook"] == [
        False
    ]

    (folder / "replica.ok").write_text("role: primary\n")
    resumed = cli("runbook", "run", "db-failover", "--file", path, "--state", state)

    assert resumed.code == 0, resumed
    assert "resuming execution 1 (failed) at step promote, 2 of 5 done" in resumed.stderr
    assert (
        resumed.stdout == "runbook db-failover: execution 1 completed (5 steps, 2 done earlier)\n"
    )
    assert ran(folder) == ["freeze", "promote", "promote", "promote", "thaw"]
    report = status(state, "db-failover")
    assert set(steps_of(report).values()) == {"done"}
    assert report["case"]["status"] == "resolved"
    assert report["case"]["resolution"]["outcome"] == "step_passed"
    [outcome] = [o for o in rollback_outcomes(SqliteStore(state)) if o["kind"] == "runbook"]
    assert (outcome["subject"], outcome["ok"]) == ("db-failover", True)


# -- approvals and manual steps from other processes ----------------------------------------


def approvals_runbook(folder: Path, **approval: Any) -> Path:
    steps = [
        step("prepare", "true"),
        {
            "id": "sign-off",
            "kind": "approval",
            "approvers": ["dba", "lead", "cto"],
            "count": 2,
            **approval,
        },
        {
            "id": "dns",
            "kind": "manual",
            "instructions": "Point db.example.com at the replica.",
            "approvers": ["oncall"],
        },
        step("verify", "true"),
    ]
    return write_file(folder, {"cutover": {"steps": steps}}, ladder(None))


def waiting_at(state: Path, ident: str) -> bool:
    if not (state / "state.db").exists():
        return False
    result = cli("runbook", "status", "cutover", "--json", "--state", state)
    return result.code == 0 and steps_of(json.loads(result.stdout)).get(ident) == "waiting"


def test_approvals_and_a_confirmation_from_other_processes_let_the_runbook_go_on(
    folder: Path,
) -> None:
    path = approvals_runbook(folder)
    state = folder / "state"
    running = Background(folder, "runbook", "run", "cutover", "--file", path, "--state", state)
    wait_for(lambda: waiting_at(state, "sign-off"), what="the sign-off step")

    intern = cli(
        "runbook", "approve", "cutover", "--step", "sign-off", "--as", "intern", "--state", state
    )
    assert intern.code == 2
    assert (
        "error: 'intern' is not an approver of step sign-off (approvers: dba, lead, cto)"
        in intern.stderr
    )
    first = cli(
        "runbook", "approve", "cutover", "--step", "sign-off", "--as", "dba", "--state", state
    )
    assert (first.code, first.stdout) == (0, "cutover/sign-off: approved by dba (execution 1)\n")
    assert waiting_at(state, "sign-off")  # two of three are needed
    cli("runbook", "approve", "cutover", "--step", "sign-off", "--as", "cto", "--state", state)
    wait_for(lambda: waiting_at(state, "dns"), what="the manual step")
    done = cli(
        "runbook",
        "approve",
        "cutover",
        "--step",
        "dns",
        "--as",
        "oncall",
        "--comment",
        "switched",
        "--state",
        state,
    )
    assert done.stdout == "cutover/dns: confirmed by oncall (execution 1)\n"

    result = running.wait()
    assert result.code == 0, result
    assert "waiting for 2 approvals from dba, lead, cto" in result.stderr
    assert "Point db.example.com at the replica." in result.stderr
    assert "counterpoint runbook approve cutover --step sign-off --as NAME" in result.stderr
    assert ran(folder) == ["prepare", "verify"]
    report = status(state, "cutover")
    decided = {s["step"]: (s["decided_by"], s["detail"]) for s in report["steps"]}
    assert decided["sign-off"] == (["cto", "dba"], "approved by cto, dba")
    assert decided["dns"] == (["oncall"], "done, confirmed by oncall")
    late = cli("runbook", "approve", "cutover", "--step", "dns", "--as", "oncall", "--state", state)
    assert late.code == 2
    assert "execution 1 of cutover is completed: no step waits for a decision" in late.stderr


def test_a_rejection_fails_the_step_and_approving_it_later_lets_a_resume_through(
    folder: Path,
) -> None:
    path = approvals_runbook(folder)
    state = folder / "state"
    running = Background(
        folder, "runbook", "run", "cutover", "--file", path, "--state", state, "--no-wait"
    )
    wait_for(lambda: waiting_at(state, "sign-off"), what="the sign-off step")
    cli(
        "runbook",
        "reject",
        "cutover",
        "--step",
        "sign-off",
        "--as",
        "lead",
        "--comment",
        "not now",
        "--state",
        state,
    )

    result = running.wait()
    assert result.code == 1, result
    assert (
        "error: runbook cutover: step sign-off failed: rejected by lead: not now" in result.stderr
    )
    assert "escalation runbook:cutover: oncall (alice) notified" in result.stderr

    for person in ("lead", "dba"):  # lead changes their mind; dba approves too
        cli("runbook", "approve", "cutover", "--step", "sign-off", "--as", person, "--state", state)
    resumed = cli(
        "runbook", "run", "cutover", "--file", path, "--state", state, "--approve-as", "ops"
    )
    assert resumed.code == 0, resumed
    report = status(state, "cutover")
    decided = {s["step"]: s["decided_by"] for s in report["steps"]}
    assert decided["sign-off"] == ["dba", "lead"]
    assert decided["dns"] == ["--approve-as ops"]  # the operator's override confirmed it
    assert report["case"]["status"] == "resolved"


def test_an_approval_nobody_gives_in_time_fails_its_step(folder: Path) -> None:
    path = approvals_runbook(folder, timeout="0.3s")
    state = folder / "state"
    failed = cli("runbook", "run", "cutover", "--file", path, "--state", state, "--no-wait")
    assert failed.code == 1, failed
    assert (
        "step sign-off failed: no decision within 0.3s (waiting for 2 more approval(s) from "
        "[dba, lead, cto])"
    ) in failed.stderr


# -- interruptions ----------------------------------------------------------------------------


HANG = "if [ -f hung ]; then true; else touch hung; echo $$ > hang.pid; exec sleep 60; fi"


def hanging_runbook(folder: Path) -> Path:
    steps = [step("one", "true"), step("two", HANG), step("three", "true")]
    return write_file(folder, {"slow": {"steps": steps}})


def test_a_runbook_killed_mid_step_resumes_at_that_step_and_stops_what_it_left_running(
    folder: Path,
) -> None:
    path = hanging_runbook(folder)
    state = folder / "state"
    running = Background(folder, "runbook", "run", "slow", "--file", path, "--state", state)
    hanging = int(wait_for(lambda: _read(folder / "hang.pid"), what="step two's command"))
    busy = cli("runbook", "run", "slow", "--file", path, "--state", state)
    assert busy.code == 2
    assert f"slow: another process (pid {running.pid}) is running this runbook" in busy.stderr

    kill_quietly(running.pid)
    running.wait()
    assert pid_alive(hanging)  # SIGKILL leaves the step's command behind
    assert status(state, "slow")["status"] == "interrupted"

    resumed = cli("runbook", "run", "slow", "--file", path, "--state", state)

    assert resumed.code == 0, resumed
    assert "resuming execution 1 (interrupted) at step two, 1 of 3 done" in resumed.stderr
    assert f"stopped the command pid {hanging} a killed run left" in resumed.stderr
    assert not pid_alive(hanging)
    assert ran(folder) == ["one", "two", "two", "three"]
    attempts = {s["step"]: s["attempts"] for s in status(state, "slow")["steps"]}
    assert attempts == {"one": 1, "two": 2, "three": 1}


def test_ctrl_c_stops_the_step_and_exits_3_and_the_next_run_resumes_it(folder: Path) -> None:
    path = hanging_runbook(folder)
    state = folder / "state"
    running = Background(folder, "runbook", "run", "slow", "--file", path, "--state", state)
    hanging = int(wait_for(lambda: _read(folder / "hang.pid"), what="step two's command"))

    os.kill(running.pid, signal.SIGINT)
    result = running.wait()

    assert result.code == 3, result
    assert "runbook slow: interrupted; `counterpoint runbook run slow" in result.stderr
    wait_for(lambda: not pid_alive(hanging), what="the command to be stopped")
    report = status(state, "slow")
    assert (report["status"], steps_of(report)["two"]) == ("interrupted", "interrupted")
    assert cli("runbook", "run", "slow", "--file", path, "--state", state).code == 0
    assert ran(folder) == ["one", "two", "two", "three"]


def test_a_resume_takes_over_from_the_process_waiting_on_the_escalation(folder: Path) -> None:
    runbooks, escalation = failover(None, timeout="1h")
    path = write_file(folder, runbooks, escalation)
    state = folder / "state"
    waiting = Background(folder, "runbook", "run", "db-failover", "--file", path, "--state", state)
    wait_for(
        lambda: "waiting on the escalation" in waiting.result(0).stderr, what="the escalation wait"
    )
    (folder / "replica.ok").write_text("role: primary\n")

    resumed = cli("runbook", "run", "db-failover", "--file", path, "--state", state)

    assert resumed.code == 0, resumed
    left = waiting.wait()
    assert left.code == 1
    assert "resumed the execution: handing it over" in left.stderr
    report = status(state, "db-failover")
    assert (report["status"], report["case"]["status"]) == ("completed", "resolved")
    kinds = [e["event"] for e in report["events"]]
    assert kinds.index("handed_over") < kinds.index("execution_resumed")


# -- more -------------------------------------------------------------------------------------


def test_restart_abandons_the_unfinished_execution_and_starts_from_the_first_step(
    folder: Path,
) -> None:
    runbooks, escalation = failover()
    path = write_file(folder, runbooks, escalation)
    state = folder / "state"
    assert (
        cli("runbook", "run", "db-failover", "--file", path, "--state", state, "--no-wait").code
        == 1
    )
    (folder / "replica.ok").write_text("role: primary\n")

    again = cli("runbook", "run", "db-failover", "--state", state, "--restart")

    assert again.code == 0, again
    assert "execution 1 abandoned (--restart)" in again.stderr
    assert ran(folder) == ["freeze", "promote", "promote", "freeze", "promote", "thaw"]
    outcomes = [(o["ok"], o["detail"][:21]) for o in rollback_outcomes(SqliteStore(state))]
    assert outcomes == [(False, "execution 1 abandoned"), (True, "execution 2 completed")]
    listed = cli("runbook", "status", "--state", state, "--json")
    assert [e["execution"] for e in json.loads(listed.stdout)["executions"]] == [2]


def test_runbooks_in_a_plan_are_checked_listed_and_run_with_its_escalation(folder: Path) -> None:
    runbooks, escalation = failover()
    plan = folder / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "name": "ops",
                "escalation": escalation,
                "runbooks": runbooks,
                "phases": [{"id": "p"}],
            },
            sort_keys=False,
        )
    )
    assert cli("check", plan).code == 0
    listed = json.loads(cli("runbook", "list", "--plan", plan, "--json").stdout)
    kinds = [s["kind"] for s in listed["runbooks"]["db-failover"]["steps"]]
    assert kinds == ["command", "check", "command", "check", "command"]

    (folder / "replica.ok").write_text("role: primary\n")
    done = cli("runbook", "run", "db-failover", "--plan", plan)  # state next to the plan

    assert done.code == 0, done
    assert status(folder / ".counterpoint", "db-failover")["status"] == "completed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "db-failovr", "--file", "{file}"],
            "error: no runbook 'db-failovr' (runbooks: db-failover); did you mean 'db-failover'?",
        ),
        (
            ["run", "db-failover", "--file", "{file}", "--plan", "{file}"],
            "error: give --plan PLAN or --file FILE, not both",
        ),
        (["list"], "error: give --plan PLAN or --file FILE: where the runbooks are defined"),
        (
            ["run", "db-failover", "--state", "{state}"],
            "error: runbook 'db-failover' has no unfinished execution",
        ),
        (
            ["run", "db-failover", "--file", "{bad}"],
            "{bad}:5:9: error: runbooks.x.steps[0]: unknown kind 'shell'; expected one of "
            "command, check, approval, manual",
        ),
        (
            ["run", "db-failover", "--file", "{folder}/missing.yaml"],
            "missing.yaml: error: cannot read the runbook file: No such file or directory",
        ),
        (
            ["approve", "db-failover", "--step", "x", "--as", "me", "--state", "{state}"],
            "error: no runbook was run in",
        ),
        (["status", "--state", "{state}"], "error: no runbook was run in"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    folder: Path, args: list[str], message: str
) -> None:
    runbooks, escalation = failover()
    names = {
        "file": str(write_file(folder, runbooks, escalation)),
        "state": str(folder / "state"),
        "folder": str(folder),
        "bad": str(folder / "bad.yaml"),
    }
    (folder / "bad.yaml").write_text(
        "version: 1\nrunbooks:\n  x:\n    steps:\n      - {id: a, kind: shell, run: ls}\n"
    )
    result = cli("runbook", *[a.format(**names) for a in args])
    assert result.code == 2, result
    assert message.format(**names) in result.stderr
    assert "Traceback" not in result.output


def test_deciding_needs_an_approval_step_of_the_runbook(folder: Path) -> None:
    runbooks, escalation = failover()
    path = write_file(folder, runbooks, escalation)
    state = folder / "state"
    cli("runbook", "run", "db-failover", "--file", path, "--state", state, "--no-wait")
    for step_id, message in [
        (
            "promte",
            "error: no step 'promte' (steps: freeze, lag, promote, config, thaw); "
            "did you mean 'promote'?",
        ),
        ("promote", "error: step promote of db-failover is a command step: it takes no decision"),
    ]:
        result = cli(
            "runbook", "approve", "db-failover", "--step", step_id, "--as", "x", "--state", state
        )
        assert (result.code, result.stderr.strip()) == (2, message)


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""
