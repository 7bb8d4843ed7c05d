"""The shell runner against real subprocesses: argv, stdin, env, logs, results, signals."""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from counterpoint.agents.base import RateLimited, TaskContext, TaskFailed
from counterpoint.agents.shell import RATE_LIMITED_EXIT, ShellRunner, expand
from counterpoint.plan.model import Runner, Task

PY = sys.executable
HOSTILE = "x {task_id} ; rm -rf / $(whoami) `id` 'quote\" \\ {{ }} * ~ \n end"
PRINT_ARGV = "import json, sys; print(json.dumps({'argv': sys.argv[1:]}))"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def ctx(tmp_path: Path) -> TaskContext:
    (tmp_path / "work").mkdir()
    return TaskContext(
        run_id="r1",
        task=Task(id="t1", instructions="say hi", inputs={"n": 3}),
        attempt=2,
        agent="dev",
        state_dir=tmp_path / "state",
        workdir=tmp_path / "work",
        log_dir=tmp_path / "logs" / "t1",
        time_scale=0.5,
        estimate_s=90.0,
    )


def hostile(ctx: TaskContext, **inputs: Any) -> TaskContext:
    ctx.task = Task(id="t1", instructions=HOSTILE, inputs={"n": 3, **inputs})
    return ctx


def runner(shell: str | list[str], tmp_path: Path, **kw: Any) -> ShellRunner:
    grace = kw.pop("kill_grace_s", 5.0)
    return ShellRunner(Runner(shell=shell, **kw), tmp_path, kill_grace_s=grace)


def literal(text: str) -> str:
    """``text`` escaped for a command template (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def python(code: str, *args: str) -> list[str]:
    return [PY, "-c", literal(code), *args]


# -- expansion ---------------------------------------------------------------------------


def test_string_template_is_split_before_substitution(ctx: TaskContext, tmp_path: Path) -> None:
    hostile(ctx)
    code = shlex.quote(literal(PRINT_ARGV))
    template = f"{shlex.quote(PY)} -c {code} {{instructions}} id={{task_id}}"
    result = run(runner(template, tmp_path)(ctx))
    assert result == {"argv": [HOSTILE, "id=t1"]}
    assert not (ctx.workdir / "pwned").exists()


def test_list_template_formats_each_element(ctx: TaskContext, tmp_path: Path) -> None:
    hostile(ctx, tags=["a", "b"], name="x y", cfg={"k": None})
    template = python(
        PRINT_ARGV,
        "{instructions}",
        "{inputs.n}",
        "{inputs.tags}",
        "{inputs.name}",
        "{inputs.cfg}",
        "{attempt}/{agent}/{run_id}",
        "{{literal}}",
    )
    result = run(runner(template, tmp_path)(ctx))
    expected = [HOSTILE, "3", '["a", "b"]', "x y", '{"k": null}', "2/dev/r1", "{literal}"]
    assert result == {"argv": expected}


def test_no_shell_without_use_shell(ctx: TaskContext) -> None:
    argv = expand("echo $HOME 'a b' | cat", ctx, use_shell=False)
    assert argv == ["echo", "$HOME", "a b", "|", "cat"]


def test_use_shell_quotes_every_value(ctx: TaskContext, tmp_path: Path) -> None:
    hostile(ctx)
    ctx.task.instructions += " $(touch pwned)"
    argv = expand("printf '%s' {instructions} > out.txt", ctx, use_shell=True)
    assert argv[:2] == ["/bin/sh", "-c"]
    run(runner("printf '%s' {instructions} > out.txt", tmp_path, use_shell=True)(ctx))
    assert (ctx.workdir / "out.txt").read_text() == ctx.task.instructions
    assert not (ctx.workdir / "pwned").exists()


def test_use_shell_runs_shell_syntax(ctx: TaskContext, tmp_path: Path) -> None:
    template = "echo {task_id} | tr a-z A-Z; echo '{{\"n\": {inputs.n}}}'"
    result = run(runner(template, tmp_path, use_shell=True)(ctx))
    assert result == {"n": 3}
    assert (ctx.log_dir / "2.stdout").read_text().splitlines()[0] == "T1"


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("echo {nope}", "{nope}"),
        ("echo {0}", "{0}"),
        ("echo {task_id.__class__}", "{task_id.__class__}"),
        ("echo {inputs[n]}", "{inputs[n]}"),
        ("echo {inputs.missing}", "'missing'"),
        ("echo {}", "{}"),
        ("echo {task_id!r}", "{task_id!r}"),
        ("echo {", "'{'"),
        ("echo }", "'}'"),
    ],
)
def test_unknown_placeholder_fails_without_running(
    ctx: TaskContext, tmp_path: Path, template: str, named: str
) -> None:
    for use_shell in (False, True):
        with pytest.raises(TaskFailed, match=r"placeholder|brace") as err:
            run(runner(template, tmp_path, use_shell=use_shell)(ctx))
        assert named in str(err.value)
    assert not (ctx.log_dir / "2.stdout").exists()


def test_unbalanced_quotes_fail(ctx: TaskContext) -> None:
    with pytest.raises(TaskFailed, match="cannot parse"):
        expand("echo 'oops", ctx, use_shell=False)


# -- the program's view: stdin, env, cwd, logs -----------------------------------------


def test_payload_on_stdin(ctx: TaskContext, tmp_path: Path) -> None:
    code = "import json, sys; print(json.dumps({'payload': json.load(sys.stdin)}))"
    result = run(runner(python(code), tmp_path)(ctx))
    assert result == {"payload": ctx.payload()}


def test_program_that_ignores_stdin(ctx: TaskContext, tmp_path: Path) -> None:
    hostile(ctx, big="x" * 500_000)
    assert run(runner(["true"], tmp_path)(ctx)) == {}


def test_environment(ctx: TaskContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_PARENT", "inherited")
    code = (
        "import json, os; print(json.dumps({k: v for k, v in os.environ.items()"
        " if k.startswith(('COUNTERPOINT_', 'MY_', 'FROM_'))}))"
    )
    spec_env = {"MY_VAR": "mine", "COUNTERPOINT_TASK_ID": "overridden?"}
    result = run(runner(python(code), tmp_path, env=spec_env)(ctx))
    assert result == {
        "FROM_PARENT": "inherited",
        "MY_VAR": "mine",
        "COUNTERPOINT_RUN_ID": "r1",
        "COUNTERPOINT_TASK_ID": "t1",
        "COUNTERPOINT_ATTEMPT": "2",
        "COUNTERPOINT_AGENT": "dev",
        "COUNTERPOINT_IDEMPOTENCY_KEY": "r1:t1",
        "COUNTERPOINT_TIME_SCALE": "0.5",
        "COUNTERPOINT_ESTIMATE_S": "90.0",
        "COUNTERPOINT_STATE_DIR": str(ctx.state_dir),
        "COUNTERPOINT_RESULT_FILE": str(ctx.log_dir / "2.result.json"),
    }


def test_agent_none_is_empty(ctx: TaskContext, tmp_path: Path) -> None:
    ctx.agent = None
    code = "import json, os; print(json.dumps({'a': os.environ['COUNTERPOINT_AGENT']}))"
    assert run(runner(python(code, "{agent}"), tmp_path)(ctx)) == {"a": ""}


def test_working_directory(ctx: TaskContext, tmp_path: Path) -> None:
    code = "import json, os; print(json.dumps({'cwd': os.getcwd()}))"
    assert run(runner(python(code), tmp_path)(ctx)) == {"cwd": str(ctx.workdir)}
    (tmp_path / "sub").mkdir()
    result = run(runner(python(code), tmp_path, cwd="sub")(ctx))
    assert result == {"cwd": str(tmp_path / "sub")}
    with pytest.raises(TaskFailed, match="working directory"):
        run(runner(python(code), tmp_path, cwd="missing")(ctx))


def test_output_is_streamed_to_log_files(ctx: TaskContext, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "print('hello out'); print('hello err', file=sys.stderr)\n"
        "sys.stdout.write('x' * 3_000_000 + '\\n')"
    )
    assert run(runner(python(code), tmp_path)(ctx)) == {}
    out = (ctx.log_dir / "2.stdout").read_text()
    assert out.startswith("hello out\n") and len(out) == 10 + 3_000_001
    assert (ctx.log_dir / "2.stderr").read_text() == "hello err\n"


# -- results and exit codes -------------------------------------------------------------


def test_result_from_last_nonempty_stdout_line(ctx: TaskContext, tmp_path: Path) -> None:
    code = "print('log line'); print('{\"ok\": true, \"n\": [1, 2]}'); print(); print('   ')"
    assert run(runner(python(code), tmp_path)(ctx)) == {"ok": True, "n": [1, 2]}


@pytest.mark.parametrize("last", ["not json", "[1, 2]", '"a string"', "{broken"])
def test_no_json_object_gives_empty_result(ctx: TaskContext, tmp_path: Path, last: str) -> None:
    code = f"print('{{\"earlier\": 1}}'); print({last!r})"
    assert run(runner(python(code), tmp_path)(ctx)) == {}


def test_result_file_wins_over_stdout(ctx: TaskContext, tmp_path: Path) -> None:
    code = (
        "import json, os\n"
        "with open(os.environ['COUNTERPOINT_RESULT_FILE'], 'w') as f:\n"
        "    json.dump({'from': 'file'}, f)\n"
        "print(json.dumps({'from': 'stdout'}))"
    )
    assert run(runner(python(code), tmp_path)(ctx)) == {"from": "file"}


def test_invalid_result_file_falls_back_to_stdout(ctx: TaskContext, tmp_path: Path) -> None:
    code = (
        "import os\n"
        "open(os.environ['COUNTERPOINT_RESULT_FILE'], 'w').write('[1]')\n"
        'print(\'{"from": "stdout"}\')'
    )
    assert run(runner(python(code), tmp_path)(ctx)) == {"from": "stdout"}


def test_stale_result_file_is_ignored(ctx: TaskContext, tmp_path: Path) -> None:
    ctx.log_dir.mkdir(parents=True)
    (ctx.log_dir / "2.result.json").write_text('{"stale": true}')
    assert run(runner(["true"], tmp_path)(ctx)) == {}


def test_nonzero_exit_fails_with_stderr_tail(ctx: TaskContext, tmp_path: Path) -> None:
    code = "import sys\nfor i in range(10): print(f'err {i}', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(TaskFailed) as err:
        run(runner(python(code), tmp_path)(ctx))
    assert str(err.value) == "exit code 3: " + "\n".join(f"err {i}" for i in range(5, 10))


def test_stderr_tail_is_trimmed(ctx: TaskContext, tmp_path: Path) -> None:
    code = "import sys; print('y' * 5000 + 'END', file=sys.stderr); sys.exit(1)"
    with pytest.raises(TaskFailed) as err:
        run(runner(python(code), tmp_path)(ctx))
    message = str(err.value)
    assert message.startswith("exit code 1: ") and message.endswith("END")
    assert len(message) <= 520


def test_nonzero_exit_without_stderr(ctx: TaskContext, tmp_path: Path) -> None:
    with pytest.raises(TaskFailed, match=r"^exit code 1$"):
        run(runner(["false"], tmp_path)(ctx))


def test_killed_by_signal(ctx: TaskContext, tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(TaskFailed, match=r"^killed by signal SIGKILL$"):
        run(runner(python(code), tmp_path)(ctx))


def test_rate_limited_with_retry_after(ctx: TaskContext, tmp_path: Path) -> None:
    code = f"import sys; print('{{\"retry_after\": 12.5}}'); sys.exit({RATE_LIMITED_EXIT})"
    with pytest.raises(RateLimited) as err:
        run(runner(python(code), tmp_path)(ctx))
    assert err.value.retry_after_s == 12.5


@pytest.mark.parametrize("printed", ["", '{"retry_after": "soon"}', '{"retry_after": true}'])
def test_rate_limited_default_retry_after(ctx: TaskContext, tmp_path: Path, printed: str) -> None:
    code = f"import sys; print({printed!r}); sys.exit(75)"
    with pytest.raises(RateLimited) as err:
        run(runner(python(code), tmp_path)(ctx))
    assert err.value.retry_after_s == 60.0


@pytest.mark.parametrize("program", ["no-such-program-counterpoint", "/nonexistent/dir/prog"])
def test_missing_program(ctx: TaskContext, tmp_path: Path, program: str) -> None:
    with pytest.raises(TaskFailed, match="cannot start the program") as err:
        run(runner([program, "arg"], tmp_path)(ctx))
    assert program in str(err.value)


def test_program_not_executable(ctx: TaskContext, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(TaskFailed, match=r"cannot start the program .*script\.sh.*denied"):
        run(runner([str(script)], tmp_path)(ctx))


# -- cancellation -----------------------------------------------------------------------


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie whose parent is not us counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def wait_gone(pids: list[int], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not gone(p)]}"
        time.sleep(0.02)


async def started(task: asyncio.Task[Any], pidfile: Path, within: float = 3.0) -> list[int]:
    """The pids the program wrote to ``pidfile``, once it has."""
    deadline = time.monotonic() + within
    while not pidfile.exists():
        assert not task.done(), task
        assert time.monotonic() < deadline, "the program did not start"
        await asyncio.sleep(0.01)
    return [int(p) for p in pidfile.read_text().split()]


def group_script(pidfile: Path, prelude: str = "") -> str:
    """A shell that starts a grandchild in its group, writes both pids, and waits."""
    final, tmp = shlex.quote(str(pidfile)), shlex.quote(f"{pidfile}.tmp")
    return f"{prelude} sleep 300 & echo $$ $! > {tmp} && mv {tmp} {final}; wait"


def test_cancel_kills_whole_process_group(ctx: TaskContext, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"

    async def scenario() -> tuple[list[int], float]:
        task = asyncio.create_task(runner(["sh", "-c", group_script(pidfile)], tmp_path)(ctx))
        pids = await started(task, pidfile)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids, time.monotonic() - began

    pids, took = run(scenario())
    assert len(pids) == 2
    wait_gone(pids)
    assert took < 2.0  # SIGTERM sufficed: no waiting out the 5 s grace


def test_sigterm_ignored_then_sigkill_after_grace(ctx: TaskContext, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = group_script(pidfile, prelude="trap '' TERM;")

    async def scenario() -> tuple[list[int], float]:
        spec = runner(["sh", "-c", script], tmp_path, kill_grace_s=0.5)
        task = asyncio.create_task(spec(ctx))
        pids = await started(task, pidfile)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids, time.monotonic() - began

    pids, took = run(scenario())
    wait_gone(pids)
    assert 0.5 <= took < 2.5


def test_timeout_via_wait_for_stops_the_program(ctx: TaskContext, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    spec = runner(group_script(pidfile), tmp_path, use_shell=True)

    async def scenario() -> None:
        await asyncio.wait_for(spec(ctx), 1.0)

    with pytest.raises(TimeoutError):
        run(scenario())
    pids = [int(p) for p in pidfile.read_text().split()]
    wait_gone(pids)


# -- progress lines ----------------------------------------------------------------------


def test_progress_lines_on_stdout_are_reported_including_the_last_ones(
    ctx: TaskContext, tmp_path: Path
) -> None:
    reports: list[tuple[str, float, str]] = []
    ctx.on_progress = lambda task, pct, note: reports.append((task, pct, note))
    code = (
        "import json, time\n"
        "print(json.dumps({'progress': 25, 'message': 'a quarter'}), flush=True)\n"
        "time.sleep(0.6)\n"
        "print('plain text {\"progress\": 99}')\n"
        "print(json.dumps({'message': 'no number', 'progress': 'x'}))\n"
        "print(json.dumps({'message': 'order does not matter', 'progress': 250}))\n"
        "print(json.dumps({'done': True}))\n"
    )
    result = run(runner(python(code), tmp_path)(ctx))
    assert result == {"done": True}
    assert reports == [("t1", 25.0, "a quarter"), ("t1", 100.0, "order does not matter")]
