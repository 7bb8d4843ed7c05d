"""``counterpoint config``: set, get, history, rollback and policy, with real validation
commands and notification commands; bad input exits 2 with a message, never a traceback."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner, Result
from run_helpers import Background, kill_quietly, wait_for

import counterpoint.cli_rollback  # noqa: F401 - registers config and deploy
from counterpoint.cli import cli

PY = sys.executable


def cp(*args: str | Path, code: int = 0) -> Result:
    """The command line, in process; checks the exit code and that no traceback escaped."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def script(tmp_path: Path) -> Any:
    def write(name: str, body: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return path

    return write


def test_set_get_history_and_rollback_from_the_command_line(state: Path) -> None:
    first = cp(
        "config",
        "set",
        "agent-1",
        "model=gpt-4",
        "max_tokens=4096",
        "db.pool.size=10",
        "--as",
        "alice",
        "--state",
        state,
    )
    assert first.stdout.startswith("agent-1: version 1 (valid, sha256 ")
    cp("config", "set", "agent-1", "max_tokens=8000", "debug=true", "--as", "bob", "--state", state)

    current = as_json(cp("config", "get", "agent-1", "--json", "--state", state))
    assert current["version"] == 2 and current["author"] == "bob" and current["intact"]
    assert current["data"] == {
        "db": {"pool": {"size": 10}},
        "debug": True,
        "max_tokens": 8000,
        "model": "gpt-4",
    }
    pool = cp("config", "get", "agent-1", "db.pool", "--state", state)
    assert json.loads(pool.stdout) == {"size": 10}

    history = as_json(cp("config", "history", "agent-1", "--json", "--state", state))
    assert [(v["version"], v["author"], v["current"]) for v in history["versions"]] == [
        (2, "bob", True),
        (1, "alice", False),
    ]
    assert all(len(v["checksum"]) == 64 for v in history["versions"])

    back = cp("config", "rollback", "agent-1", "--state", state)
    assert back.stdout.startswith("agent-1: rolled back to version 1 (sha256 ")
    assert cp("config", "get", "agent-1", "max_tokens", "--state", state).stdout == "4096\n"
    unset = cp("config", "set", "agent-1", "--unset", "db", "--json", "--state", state)
    assert as_json(unset)["data"] == {"max_tokens": 4096, "model": "gpt-4"}


def test_a_failing_validation_exits_1_names_the_version_rolled_back_to_and_notifies(
    state: Path, script: Any, tmp_path: Path
) -> None:
    check = script(
        "check.py",
        """
        import json, sys
        config = json.load(sys.stdin)["data"]
        if config.get("max_tokens", 0) > 8192:
            sys.exit(f"max_tokens {config['max_tokens']} is above 8192")
        """,
    )
    told = tmp_path / "told.json"
    tell = script("tell.py", f"import sys; open({str(told)!r}, 'w').write(sys.stdin.read())")
    cp("config", "set", "agent-1", "max_tokens=4096", "--state", state)
    cp(
        "config",
        "set",
        "agent-1",
        "max_tokens=8000",
        "--validate-command",
        f"{PY} {check}",
        "--notify-command",
        f"{PY} {tell}",
        "--state",
        state,
    )

    failed = cp("config", "set", "agent-1", "max_tokens=100000", "--state", state, code=1)
    assert (
        "error: agent-1: version 3 failed validation (" in failed.stderr
        and "exit code 1: max_tokens 100000 is above 8192); rolled back to version 2"
        in failed.stderr
    )
    assert cp("config", "get", "agent-1", "max_tokens", "--state", state).stdout == "8000\n"
    notice = json.loads(told.read_text())
    assert notice["scope"] == "agent-1" and notice["version"] == 3
    assert notice["rolled_back_to"] == 2 and "above 8192" in notice["reason"]

    history = as_json(cp("config", "history", "agent-1", "--json", "--state", state))
    assert [v["status"] for v in history["versions"]] == ["failed", "valid", "valid"]
    assert history["policy"]["notify"]["commands"] == [f"{PY} {tell}"]


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver on the loopback interface: keeps what each POST carried."""

    posts: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posts.append((self.headers["X-Counterpoint-Notice"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    posts: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (Receiver,), {"posts": posts}))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/rollbacks", posts
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_automatic_rollback_is_posted_to_the_scope_webhook(
    state: Path, webhook: tuple[str, list[tuple[str, dict[str, Any]]]]
) -> None:
    url, posts = webhook
    cp("config", "set", "agent-1", "a=1", "--notify-webhook", url, "--state", state)
    cp("config", "set", "agent-1", "a=2", "--validate-command", "false", "--state", state, code=1)
    [(notice_id, body)] = posts
    assert notice_id == body["notice_id"] == "config-agent-1-2"
    assert body["text"] == (
        "[counterpoint] configuration agent-1 version 2 failed validation (false: exit code 1); "
        "rolled back to version 1"
    )


def test_a_validator_that_does_not_answer_in_time_is_stopped_and_rolled_back(
    state: Path, script: Any
) -> None:
    slow = script("slow.py", "import time; time.sleep(60)")
    cp("config", "set", "agent-1", "a=1", "--state", state)
    failed = cp(
        "config",
        "set",
        "agent-1",
        "a=2",
        "--validate-command",
        f"{PY} {slow}",
        "--timeout",
        "1s",
        "--state",
        state,
        code=1,
    )
    assert "no answer from" in failed.stderr and "within 1s); rolled back to version 1" in (
        failed.stderr
    )


def test_a_python_validator_is_imported_from_the_current_folder(
    state: Path, script: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script(
        "cfgcheck_cli.py",
        """
        def positive(version):
            if version["data"]["workers"] < 1:
                raise ValueError("workers must be at least 1")
            return True
        """,
    )
    monkeypatch.chdir(tmp_path)
    cp("config", "policy", "pool", "--validate-python", "cfgcheck_cli:positive", "--state", state)
    cp("config", "set", "pool", "workers=4", "--state", state)
    failed = cp("config", "set", "pool", "workers=0", "--state", state, code=1)
    assert "ValueError: workers must be at least 1); rolled back to version 1" in failed.stderr


def test_the_number_of_versions_kept_is_set_per_scope(state: Path) -> None:
    assert cp("config", "policy", "agent-1", "--keep", "2", "--state", state).stdout == (
        "agent-1: keeps the last 2 versions; no validation\n"
    )
    for n in range(4):
        cp("config", "set", "agent-1", f"n={n}", "--state", state)
    history = as_json(cp("config", "history", "agent-1", "--json", "--state", state))
    assert [v["version"] for v in history["versions"]] == [4, 3]
    listed = as_json(cp("config", "list", "--json", "--state", state))
    assert listed["scopes"][0] | {"updated": None} == {
        "scope": "agent-1",
        "current": 4,
        "versions": 2,
        "updated": None,
    }


def test_tampered_data_is_refused_with_exit_2(state: Path) -> None:
    cp("config", "set", "agent-1", "a=1", "--state", state)
    cp("config", "set", "agent-1", "a=2", "--state", state)
    with sqlite3.connect(state / "state.db") as db:
        db.execute("UPDATE config_versions SET data = '{\"a\":666}' WHERE version = 1")

    refused = cp("config", "rollback", "agent-1", "--to", "1", "--state", state, code=2)
    assert "error: version 1 of agent-1 fails its checksum: its data was changed outside" in (
        refused.stderr
    )
    cp("config", "get", "agent-1", "--version", "1", "--state", state, code=2)
    assert "TAMPERED" in cp("config", "history", "agent-1", "--state", state).stdout
    assert cp("config", "get", "agent-1", "a", "--state", state).stdout == "2\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "agent-9"], "no configuration scope 'agent-9' (configuration scopes: agent-1)"),
        (["set", "agent-1", "oops"], "expected KEY=VALUE, got 'oops'"),
        (["set", "agent-1", "a.b=1"], "cannot set a.b: a holds 1, not an object"),
        (["set", "agent-1"], "nothing to set"),
        (["get", "agent-1", "--version", "7"], "agent-1 has no version 7 (versions kept: 1)"),
        (["get", "agent-1", "nope"], "no key 'nope' in version 1 of agent-1 (keys: a)"),
        (["rollback", "agent-1"], "agent-1 has no earlier valid version to roll back to"),
        (["rollback", "agent-1", "--to", "1"], "version 1 is already the current version"),
        (["set", "agent-1", "a=2", "--timeout", "soon"], "--timeout: bad duration 'soon'"),
        (["policy", "agent-1", "--timeout", "1m"], "--timeout and --interval need a validation"),
        (["policy", "agent-1", "--notify-webhook", "ftp://x"], "a webhook must be an http(s)"),
        (["policy", "agent-1", "--validate-command", "echo {nope}"], "unknown placeholder {nope}"),
        (["policy", "agent-1", "--validate-python", "nomodule_here:f"], "cannot import"),
        (["set", "bad name", "a=1"], "bad scope name 'bad name'"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(state: Path, args: list[str], message: str) -> None:
    cp("config", "set", "agent-1", "a=1", "--state", state)
    result = cp("config", *args, "--state", state, code=2)
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


def test_reading_a_state_directory_without_configuration_exits_2(tmp_path: Path) -> None:
    result = cp("config", "get", "agent-1", "--state", tmp_path / "empty", code=2)
    assert "no configuration in" in result.stderr


def test_a_version_whose_validator_was_killed_is_rolled_back_by_the_next_command(
    state: Path, script: Any, tmp_path: Path
) -> None:
    pid_file = tmp_path / "validator.pid"
    hang = script(
        "hang.py",
        f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    cp("config", "set", "agent-1", "a=1", "--state", state)
    setting = Background(
        tmp_path,
        "config",
        "set",
        "agent-1",
        "a=2",
        "--validate-command",
        f"{PY} {hang}",
        "--state",
        state,
    )
    validator = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="validator"))
    busy = cp("config", "set", "agent-1", "a=3", "--state", state, code=2)
    assert "another process" in busy.stderr
    kill_quietly(setting.pid)  # SIGKILL: no chance to clean up
    setting.wait()
    kill_quietly(validator)

    reader = cp("config", "get", "agent-1", "a", "--state", state)
    assert reader.stdout == "1\n"
    assert "version 2 failed validation (its validation was interrupted" in reader.stderr
    history = as_json(cp("config", "history", "agent-1", "--json", "--state", state))
    assert [v["status"] for v in history["versions"]] == ["failed", "valid"]
