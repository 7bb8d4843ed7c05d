"""Reading each coding CLI's JSON protocol into one result shape, and the runner's keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from counterpoint.agents.base import TaskContext
from counterpoint.agents.coding import (
    build_prompt,
    command_line,
    previous_session,
    spent_before,
    write_ledger,
)
from counterpoint.agents.coding_parse import (
    UnknownOutput,
    parse_aider,
    parse_claude,
    parse_codex,
    parse_gemini,
    retry_after,
)
from counterpoint.errors import PlanError
from counterpoint.plan.load import load_plan
from counterpoint.plan.model import Runner, Task


def ndjson(*events: dict[str, Any]) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in events).encode()


INIT = {"type": "system", "subtype": "init", "session_id": "s-1", "claude_code_version": "2.0.14"}
USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 10,
    "cache_read_input_tokens": 50,
    "output_tokens": 20,
}


def claude_result(**fields: Any) -> dict[str, Any]:
    return {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "done",
        "session_id": "s-1",
        "total_cost_usd": 0.25,
        "num_turns": 3,
        "usage": USAGE,
        **fields,
    }


# -- claude ------------------------------------------------------------------------------------


def test_a_claude_success_gives_text_session_tokens_cost_and_turns() -> None:
    result = parse_claude(ndjson(INIT, {"type": "assistant"}, claude_result()), 0)
    assert result.ok and result.status == "success"
    assert (result.text, result.session_id, result.version) == ("done", "s-1", "2.0.14")
    assert (result.input_tokens, result.cached_input_tokens, result.output_tokens) == (160, 50, 20)
    assert (result.cost_usd, result.turns) == (0.25, 3)
    assert result.task_result()["usage"]["tokens"] == 180


def test_an_api_failure_reported_as_subtype_success_with_is_error_is_a_failure() -> None:
    out = ndjson(INIT, claude_result(is_error=True, result="API Error: 500 internal"))
    result = parse_claude(out, 1)
    assert not result.ok
    assert result.error_class == "api_error"
    assert "API Error: 500" in result.error
    assert result.cost_usd == 0.25  # what it cost is kept for the governor


def test_a_429_retry_event_then_an_error_result_is_a_rate_limit() -> None:
    retry = {"type": "system", "subtype": "api_retry", "error_status": 429, "retry_delay_ms": 2500}
    result = parse_claude(ndjson(INIT, retry, claude_result(is_error=True, result="x")), 1)
    assert result.error_class == "rate_limited"
    assert result.retry_after_s == pytest.approx(2.5)


def test_a_retry_event_followed_by_success_is_a_success() -> None:
    retry = {"type": "system", "subtype": "api_retry", "error_status": 429, "retry_delay_ms": 10}
    assert parse_claude(ndjson(INIT, retry, claude_result()), 0).ok


def test_a_usage_limit_message_waits_until_the_reset_time_it_names() -> None:
    now = 1_700_000_000
    text = f"Claude AI usage limit reached|{now + 3600}"
    result = parse_claude(ndjson(INIT, claude_result(is_error=True, result=text)), 1)
    assert result.error_class == "rate_limited"
    assert retry_after(text, now=now) == 3600


def test_the_turn_limit_is_its_own_failure() -> None:
    out = ndjson(INIT, claude_result(subtype="error_max_turns", is_error=True, result=None))
    assert parse_claude(out, 1).error_class == "max_turns"


def test_a_crash_mid_stream_is_a_failure_with_the_last_stderr_lines() -> None:
    out = ndjson(INIT) + b'{"type": "assistant", "sess'
    result = parse_claude(out, 1, "fatal: out of memory")
    assert result.error_class == "crashed"
    assert "fatal: out of memory" in result.error
    assert result.session_id == "s-1"  # still known, for a resume


@pytest.mark.parametrize(
    ("stdout", "said"),
    [
        (ndjson(INIT, {"type": "assistant"}), "no result event"),
        (b"Welcome to Claude!\n", "line 1 is not JSON"),
        (ndjson({"type": "result", "subtype": "success", "result": "x"}), "no 'is_error' field"),
        (ndjson(claude_result(is_error="no")), "'is_error' is str, not bool"),
        (b"[1, 2]\n", "not an object"),
    ],
)
def test_unknown_claude_output_is_never_a_success(stdout: bytes, said: str) -> None:
    with pytest.raises(UnknownOutput, match=said):
        parse_claude(stdout, 0)


# -- codex ---------------------------------------------------------------------------------------


def codex_events(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "thread.started", "thread_id": "th-1"},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "done"}},
        *extra,
    ]


def test_codex_sums_the_usage_of_every_turn_and_keeps_the_thread_id() -> None:
    usage = {"input_tokens": 100, "cached_input_tokens": 40, "output_tokens": 10}
    done = {"type": "turn.completed", "usage": usage}
    result = parse_codex(ndjson(*codex_events(done, done)), 0)
    assert result.ok and (result.session_id, result.text, result.turns) == ("th-1", "done", 2)
    assert (result.input_tokens, result.cached_input_tokens, result.output_tokens) == (200, 80, 20)
    assert result.cost_usd is None


def test_a_failed_codex_turn_with_429_is_a_rate_limit() -> None:
    message = "exceeded retry limit, last status: 429 Too Many Requests"
    failed = {"type": "turn.failed", "error": {"message": message}}
    result = parse_codex(ndjson(*codex_events({"type": "error", "message": message}, failed)), 1)
    assert result.error_class == "rate_limited" and result.session_id == "th-1"


def test_codex_without_a_completed_turn_is_unknown_output_or_a_crash() -> None:
    with pytest.raises(UnknownOutput, match=r"no turn\.completed"):
        parse_codex(ndjson({"msg": {"type": "task_started"}}), 0)
    assert parse_codex(ndjson(*codex_events()), 101, "panicked").error_class == "crashed"


def test_a_codex_turn_without_usage_is_unknown_output() -> None:
    with pytest.raises(UnknownOutput, match="no usage"):
        parse_codex(ndjson(*codex_events({"type": "turn.completed"})), 0)


# -- gemini --------------------------------------------------------------------------------------


def test_gemini_reads_its_one_json_object_and_sums_tokens_over_models() -> None:
    tokens = {"prompt": 300, "candidates": 40, "cached": 100}
    value = {
        "session_id": "g-1",
        "response": "done",
        "stats": {"models": {"pro": {"tokens": tokens}, "flash": {"tokens": tokens}}},
    }
    result = parse_gemini(json.dumps(value, indent=2).encode(), 0)
    assert result.ok and (result.text, result.session_id) == ("done", "g-1")
    assert (result.input_tokens, result.cached_input_tokens, result.output_tokens) == (600, 200, 80)


def test_a_gemini_error_object_with_code_429_is_a_rate_limit() -> None:
    value = {"error": {"type": "ApiError", "message": "Quota exceeded; retry in 30s", "code": 429}}
    result = parse_gemini(json.dumps(value).encode(), 1)
    assert result.error_class == "rate_limited"
    assert result.retry_after_s == 30


def test_gemini_without_a_response_is_unknown_output() -> None:
    with pytest.raises(UnknownOutput, match="no 'response' field"):
        parse_gemini(b'{"answer": "x"}', 0)


# -- aider ---------------------------------------------------------------------------------------


def test_aider_succeeds_by_exit_code_and_reports_its_tokens_and_session_cost() -> None:
    out = (
        b"Tokens: 1.5k sent, 250 received. Cost: $0.01 message, $0.01 session.\n"
        b"Tokens: 2k sent, 1k cache hit, 100 received. Cost: $0.02 message, $0.03 session.\n"
    )
    result = parse_aider(out, 0)
    assert result.ok and (result.input_tokens, result.output_tokens) == (3500, 350)
    assert result.cost_usd == 0.03
    assert parse_aider(b"", 2, "Traceback ...").error_class == "crashed"


# -- reset times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("You've hit your usage limit. Try again in 2 hours 5 minutes.", 7500),
        ("usage limit reached, try again in 1 day 1 hour", 90000),
        ("429: retry after 45s", 45),
        ("rate limited", 60),
    ],
)
def test_the_wait_is_read_from_the_message(text: str, seconds: float) -> None:
    assert retry_after(text) == seconds


def test_a_reset_clock_time_is_the_next_time_the_clock_shows_it() -> None:
    wait = retry_after("5-hour limit reached ∙ resets 3pm")
    assert wait is not None and 0 < wait <= 24 * 3600


# -- the command line and the prompt -----------------------------------------------------------


def context(tmp_path: Path, **task: Any) -> TaskContext:
    return TaskContext(
        run_id="1",
        task=Task.model_validate({"id": "t1", **task}),
        attempt=2,
        agent="coder",
        state_dir=tmp_path,
        workdir=tmp_path,
        log_dir=tmp_path / "logs",
    )


def test_each_cli_gets_its_own_permission_flags_and_the_prompt_last(tmp_path: Path) -> None:
    ctx = context(tmp_path, instructions="-x: a prompt that starts with a dash", max_turns=7)
    claude = Runner(coding="claude", permission_mode="acceptEdits", allowed_tools=["Read", "Edit"])
    argv = command_line(claude, "claude", "PROMPT", ctx, "s-1")
    assert argv[-2:] == ["--", "PROMPT"]
    for flags in (
        ["--max-turns", "7"],
        ["--permission-mode", "acceptEdits"],
        ["--resume", "s-1"],
        ["--allowedTools", "Read,Edit"],
    ):
        assert " ".join(flags) in " ".join(argv)
    codex = command_line(Runner(coding="codex", sandbox="workspace-write"), "codex", "P", ctx, "th")
    assert codex[:3] == ["codex", "exec", "--json"]
    assert codex[-4:] == ["resume", "th", "--", "P"] and "workspace-write" in codex
    gemini = command_line(Runner(coding="gemini", permission_mode="auto_edit"), "g", "P", ctx, None)
    assert gemini[-1] == "--prompt=P" and "auto_edit" in gemini
    aider = command_line(Runner(coding="aider", model="gpt-4o"), "aider", "P", ctx, None)
    assert aider[-1] == "--message=P" and "--no-suggest-shell-commands" in aider


def test_the_prompt_holds_the_instructions_inputs_state_and_files(tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        instructions="Add slugify.",
        inputs={"style": "pep8"},
        reads=["api.version"],
        files=["textkit/*.py"],
    )
    ctx.state = type(ctx.state)({"api.version": "v2"})
    prompt = build_prompt(ctx)
    assert prompt.startswith("Add slugify.")
    for part in ("- style: pep8", "- api.version: v2", "Change only these files: textkit/*.py"):
        assert part in prompt


# -- the runner's keys in a plan -----------------------------------------------------------------


def plan_with(runner: str, tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "version: 1\nname: p\nagents:\n"
        f"  coder: {{runner: {runner}}}\n"
        "phases: [{id: p, milestones: [{id: m, tasks: [{id: t}]}]}]\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("runner", "message"),
    [
        ("{coding: cluade}", "did you mean 'claude'?"),
        ("{coding: claude, permission_mode: acceptEdit}", "did you mean 'acceptEdits'?"),
        ("{coding: claude, args: [--dangerously-skip-permissions]}", "skip_permissions: true"),
        ("{coding: codex, sandbox: danger-full-access}", "skips every permission check"),
        ("{coding: aider, allowed_tools: [Read]}", "aider has no allowed_tools"),
        ("{coding: gemini, sandbox: docker}", "gemini has no sandbox"),
        ("{coding: claude, args: [--output-format, text]}", "--output-format is set by"),
        ("{shell: run.sh, model: opus}", "model only applies to a coding runner"),
    ],
)
def test_bad_coding_runner_keys_are_precise_loader_errors(
    runner: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan(plan_with(runner, tmp_path))
    text = str(caught.value)
    assert message in text
    assert "plan.yaml:4:" in text  # file:line:col of the agent's runner


def test_skip_permissions_allows_the_dangerous_modes_explicitly(tmp_path: Path) -> None:
    plan = load_plan(
        plan_with("{coding: codex, sandbox: danger-full-access, skip_permissions: true}", tmp_path)
    )
    runner = plan.agents["coder"].runner
    assert runner is not None and runner.sandbox == "danger-full-access"


# -- the ledger of attempts ----------------------------------------------------------------------


def test_a_retry_resumes_the_latest_session_an_earlier_attempt_left(tmp_path: Path) -> None:
    write_ledger(tmp_path, 1, parse_claude(ndjson(INIT, claude_result(session_id="s-1")), 0))
    assert previous_session(tmp_path, 2, "claude") == "s-1"
    # Attempt 2 was killed before it wrote its ledger: what the CLI printed still says.
    (tmp_path / "2.stdout").write_bytes(ndjson({**INIT, "session_id": "s-2"}))
    assert previous_session(tmp_path, 3, "claude") == "s-2"
    assert previous_session(tmp_path, 1, "claude") is None


def test_the_cost_of_earlier_attempts_is_summed_from_their_ledgers(tmp_path: Path) -> None:
    for attempt, cost in ((1, 0.25), (2, 0.5)):
        result = parse_claude(ndjson(INIT, claude_result(total_cost_usd=cost)), 0)
        write_ledger(tmp_path, attempt, result)
    assert spent_before(tmp_path, 3) == 0.75
    assert spent_before(tmp_path, 1) == 0.0
