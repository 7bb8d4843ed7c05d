"""Failures: retries, blocking, fail_fast, timeouts, shell logs and rate-limit exits."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from run_helpers import (
    AGENTS_DIR,
    PY,
    Workspace,
    agent_spec,
    cli,
    one_phase,
    status_json,
    task,
)

QUICK_RETRIES = {"retry_backoff": 0.05, "retry_backoff_max": 0.1}


def test_a_task_failing_twice_then_succeeding_completes_with_retries_2_and_logs_show_3_attempts(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                task("flaky", sleep=0.01, retries=2, inputs={"fail_times": 2}),
                task("after", needs=["flaky"]),
            ],
            agents={"dev": agent_spec(ws)},
            settings=QUICK_RETRIES,
        )
    )
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert result.code == 0, str(result)
    runs = ws.runs_of("flaky")
    assert [(e.attempt, e.outcome) for e in runs] == [(1, "fail"), (2, "fail"), (3, "end")]
    assert [e.outcome for e in ws.runs_of("after")] == ["end"]
    assert ws.runs_of("after")[0].start >= runs[-1].end  # type: ignore[operator]

    logs = cli("logs", "flaky", "--state", ws.state)
    assert logs.code == 0, str(logs)
    assert re.findall(r"attempt (\d+) on dev: (\w+)", logs.stdout) == [
        ("1", "failed"),
        ("2", "failed"),
        ("3", "completed"),
    ]
    assert logs.stdout.count("failed on purpose") == 2
    only = cli("logs", "flaky", "--attempt", "2", "--state", ws.state)
    assert only.code == 0 and "attempt 2" in only.stdout and "attempt 3" not in only.stdout


def test_a_task_exhausting_its_retries_fails_blocks_its_dependents_and_spares_the_rest(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                task("bad", retries=1, inputs={"fail": True, "error": "disk full"}),
                task("child", needs=["bad"]),
                task("grandchild", needs=["child"]),
                task("independent", sleep=0.1),
                task("independent_next", needs=["independent"]),
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
            settings=QUICK_RETRIES,
        )
    )
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert result.code == 1, str(result)
    assert [e.outcome for e in ws.runs_of("bad")] == ["fail", "fail"]  # 1 + 1 retry
    assert ws.runs_of("child") == [] and ws.runs_of("grandchild") == []
    assert set(ws.finished()) == {"independent", "independent_next"}

    report = status_json(ws.state)
    assert report["status"] == "failed" and report["exit_code"] == 1
    assert report["counts"] == {"failed": 1, "blocked": 2, "completed": 2}
    assert [f["task"] for f in report["failed"]] == ["bad"]
    assert "disk full" in report["failed"][0]["error"]
    blocked = {b["task"]: b["reason"] for b in report["blocked"]}
    assert set(blocked) == {"child", "grandchild"}
    assert all("bad" in reason for reason in blocked.values()), blocked


def test_fail_fast_stops_the_run_and_cancels_the_running_tasks(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                task("long", sleep=30),
                task("boom", sleep=0.01, on_failure="fail_fast", inputs={"fail_times": 1}),
                task("later", needs=["boom"]),
                task("queued", sleep=0.01, needs=["long"]),
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )
    began = time.monotonic()
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    took = time.monotonic() - began
    assert result.code == 1, str(result)
    assert took < 15, f"fail_fast waited for the running task ({took:.1f}s)"
    assert [e.outcome for e in ws.runs_of("long")] == ["cancelled"]
    assert [e.outcome for e in ws.runs_of("boom")] == ["fail"]
    assert ws.runs_of("later") == [] and ws.runs_of("queued") == []
    report = status_json(ws.state)
    assert report["status"] == "failed"
    assert report["running"] == []
    assert report["counts"] == {"failed": 1, "blocked": 2, "cancelled": 1}
    assert {b["task"]: b["reason"] for b in report["blocked"]} == {
        "later": "boom failed (fail_fast)",
        "queued": "boom failed (fail_fast)",
    }


def test_a_task_running_past_its_timeout_fails_as_timed_out(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("sleepy", sleep=30, timeout="1s"), task("quick", sleep=0.01)],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )
    began = time.monotonic()
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    took = time.monotonic() - began
    assert result.code == 1, str(result)
    assert took < 15
    (run,) = ws.runs_of("sleepy")
    assert run.outcome == "cancelled" and run.end is not None
    assert 0.8 <= run.end - run.start < 5
    report = status_json(ws.state)
    (failed,) = report["failed"]
    assert failed["task"] == "sleepy"
    assert "timed out" in failed["error"]
    assert "quick" in ws.finished()


def test_a_shell_tasks_stdout_and_stderr_are_captured_and_shown_by_logs(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    script = "echo to-stdout-{task_id}; echo to-stderr-{task_id} >&2; echo '{{\"n\": 7}}'"
    ws.write_plan(
        one_phase(
            [task("speak")],
            agents={"sh": {"capacity": 1, "runner": {"shell": script, "use_shell": True}}},
        )
    )
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert result.code == 0, str(result)
    logs = cli("logs", "speak", "--state", ws.state)
    assert logs.code == 0, str(logs)
    assert "attempt 1 on sh: completed" in logs.stdout
    out_at = logs.stdout.index("--- stdout ---")
    err_at = logs.stdout.index("--- stderr ---")
    assert logs.stdout.index("to-stdout-speak") > out_at
    assert logs.stdout.index("to-stderr-speak") > err_at > out_at
    assert '{"n": 7}' in logs.stdout


def test_a_failing_shell_tasks_stderr_is_shown_verbatim_even_with_brackets(
    tmp_path: Path,
) -> None:
    """Task output is data, not markup: "[/etc/app.conf]" must not break or vanish."""
    ws = Workspace.create(tmp_path)
    script = "echo 'cannot read [/etc/app.conf] or [bold]x' >&2; exit 3"
    ws.write_plan(
        one_phase(
            [task("reader")],
            agents={"sh": {"capacity": 1, "runner": {"shell": script, "use_shell": True}}},
        )
    )
    message = "cannot read [/etc/app.conf] or [bold]x"
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert result.code == 1, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert message in result.stdout
    for args in (["status"], ["logs", "reader"]):
        shown = cli(*args, "--state", ws.state)
        assert "Traceback" not in shown.stderr, str(shown)
        assert message in shown.stdout, str(shown)
    assert message in status_json(ws.state)["failed"][0]["error"]


def test_a_shell_task_exiting_75_is_requeued_after_retry_after_without_using_a_retry(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    marker = tmp_path / "marker"
    script = str(AGENTS_DIR / "rate_limited_once.py")
    ws.write_plan(
        one_phase(
            [task("api_call", retries=0, inputs={"marker": str(marker)})],
            agents={
                "sh": {
                    "capacity": 1,
                    "runner": {"shell": [PY, script, "{inputs.marker}", "0.2"]},
                }
            },
        )
    )
    result = cli("run", ws.plan, "--state", ws.state, "--quiet")
    assert result.code == 0, str(result)
    calls = [json.loads(line) for line in Path(f"{marker}.calls").read_text().splitlines()]
    assert [c["outcome"] for c in calls] == ["rate_limited", "ok"]
    assert calls[1]["t"] - calls[0]["t"] >= 0.18, "re-queued before retry_after elapsed"
    report = status_json(ws.state)
    assert report["counts"] == {"completed": 1}
    logs = cli("logs", "api_call", "--state", ws.state)
    assert re.findall(r"attempt (\d+) on sh: (\w+)", logs.stdout) == [
        ("1", "rate_limited"),
        ("2", "completed"),
    ]
