"""Served runs end to end: `counterpoint run --serve`, remote `counterpoint agent`
processes, tokens, the operator HTTP API and `counterpoint serve`.

Everything is a real process talking over loopback; nothing is mocked. Each remote or
local task runs ``agents/hub_work.py``, which appends what it did to a record file, so
the tests check what really ran where, besides the journal and the printed events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest
import yaml
from run_helpers import (
    AGENTS_DIR,
    PY,
    Result,
    cli,
    kill_quietly,
    one_phase,
    pid_alive,
    status_json,
    task,
    wait_for,
)
from tls_helpers import self_signed

from counterpoint.net.tokens import TokenStore
from counterpoint.store.sqlite import SqliteStore

WORK = AGENTS_DIR / "hub_work.py"


# -- processes ------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("COUNTERPOINT_STATE", "COUNTERPOINT_TOKEN"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class Proc:
    """``python -m counterpoint ARGS`` in the background, its output kept in files."""

    def __init__(self, folder: Path, args: Sequence[str | Path], env: dict[str, str]) -> None:
        tag = f"{args[0]}-{uuid.uuid4().hex[:6]}"
        self.out_path = folder / f"{tag}.out"
        self.err_path = folder / f"{tag}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "counterpoint", *map(str, args)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 30) -> Result:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"still running after {timeout}s:\n{self.result()}") from None
        return self.result()

    def result(self) -> Result:
        return Result(
            self.proc.returncode if self.proc.returncode is not None else -9,
            self.out_path.read_text(errors="replace"),
            self.err_path.read_text(errors="replace"),
        )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The JSON-lines events printed so far (``--json``), of one kind if given."""
        found = []
        for line in self.out_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a line still being written
                continue
            if isinstance(event, dict) and (kind is None or event.get("event") == kind):
                found.append(event)
        return found

    def wait_event(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            found = self.events(kind)
            if found:
                return found[0]
            if not self.running():
                raise AssertionError(f"exited before {kind}:\n{self.result()}")
            return None

        return wait_for(probe, timeout=timeout, what=f"the event {kind}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Bench:
    """A folder with a plan, a state directory and the record file of hub_work.py."""

    dir: Path
    procs: list[Proc]

    @property
    def plan(self) -> Path:
        return self.dir / "plan.yaml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def records_path(self) -> Path:
        return self.dir / "records.jsonl"

    def command(self) -> list[str]:
        """The task command: hub_work.py with the record file and the placeholders."""
        return [PY, str(WORK), str(self.records_path), "{task_id}", "{agent}", "{attempt}"]

    def write_plan(self, tasks: list[dict[str, Any]], agents: dict[str, Any], **top: Any) -> None:
        self.plan.write_text(yaml.safe_dump(one_phase(tasks, agents=agents, **top)), "utf-8")

    def token(self, agent: str) -> str:
        return TokenStore(self.state).create(agent)

    def start(self, *args: str | Path, **env: str) -> Proc:
        proc = Proc(self.dir, args, _env(**env))
        self.procs.append(proc)
        return proc

    def serve_run(self, *extra: str) -> tuple[Proc, str]:
        """``counterpoint run PLAN --serve --port 0 --json``; returns it and the hub's url."""
        run = self.start(
            "run", self.plan, "--state", self.state, "--serve", "--port", "0", "--json"
        )
        return run, run.wait_event("hub_listening")["url"]

    def agent(
        self,
        url: str,
        agent: str,
        token: str,
        capabilities: str,
        *extra: str,
        token_in_env: bool = True,
    ) -> Proc:
        """``counterpoint agent`` running hub_work.py for each task it is given."""
        args = ["agent", "--connect", url, "--id", agent, "--capabilities", capabilities]
        args += ["--workdir", str(self.dir), "--state", str(self.dir / f"agent-{agent}"), *extra]
        env = {"COUNTERPOINT_TOKEN": token} if token_in_env else {}
        if not token_in_env:
            args += ["--token", token]
        return self.start(*args, "--", *self.command(), **env)

    def records(self) -> list[dict[str, Any]]:
        if not self.records_path.exists():
            return []
        found = []
        for line in self.records_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def ran(self, event: str = "end") -> dict[str, list[str]]:
        """Task -> the agents that recorded ``event`` for it, in order."""
        out: dict[str, list[str]] = {}
        for r in self.records():
            if r["event"] == event:
                out.setdefault(r["task"], []).append(r["agent"])
        return out

    def kill_task_processes(self) -> None:
        """SIGKILL every hub_work.py process still alive (they run in their own sessions)."""
        pids = {r["pid"] for r in self.records()}
        for marker in self.dir.glob("*.marker"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.add(int(marker.read_text().split()[0]))
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"hub_work.py" in cmdline:
                kill_quietly(pid)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path, [])
    try:
        yield b
    finally:
        for proc in b.procs:
            proc.stop()
        b.kill_task_processes()


def remote(*capabilities: str, capacity: int = 1) -> dict[str, Any]:
    return {"capabilities": list(capabilities), "capacity": capacity, "runner": {"remote": True}}


@dataclass
class Journal:
    tasks: dict[str, Any]
    events: list[tuple[str, str | None, dict[str, Any]]]
    attempts: dict[str, list[tuple[Any, ...]]]

    def of_kind(self, kind: str) -> list[tuple[str | None, dict[str, Any]]]:
        return [(t, data) for k, t, data in self.events if k == kind]


def journal(state: Path) -> Journal:
    store = SqliteStore(state, create=False)
    try:
        record = store.latest_run()
        assert record is not None
        tasks = store.tasks(record.id)
        rows = store.events(record.id, limit=1_000_000)
        events = [(kind, t, json.loads(data) if data else {}) for _, _, kind, t, data in rows]
        attempts = {t: store.attempts(record.id, t) for t in tasks}
    finally:
        store.close()
    return Journal(tasks, events, attempts)


def marker_of(path: Path) -> tuple[int, str]:
    """(pid, agent) a blocking hub_work.py wrote once it started."""
    text = wait_for(
        lambda: path.exists() and path.read_text().endswith("\n") and path.read_text(),
        what=f"{path.name} to be written",
    )
    pid, agent = text.split()
    return int(pid), agent


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, str(result)


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def http(url: str, token: str | None = None, method: str = "GET") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _DIRECT.open(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# -- the tests ------------------------------------------------------------------------------


def test_two_remote_agents_and_a_local_one_run_a_plan_to_completion(bench: Bench) -> None:
    bench.write_plan(
        [
            task("b1", requires=["build"], inputs={"progress": True}),
            task("b2", requires=["build"]),
            task("t1", requires=["test"], needs=["b1"]),
            task("t2", requires=["test"]),
            task("d1", requires=["doc"], needs=["b2", "t1"]),
        ],
        {
            "builder": remote("build"),
            "tester": remote("test", capacity=2),
            "writer": {
                "capabilities": ["doc"],
                "capacity": 1,
                "runner": {"shell": bench.command()},
            },
        },
    )
    tokens = {name: bench.token(name) for name in ("builder", "tester")}
    run, url = bench.serve_run()
    assert url.startswith("ws://127.0.0.1:"), url
    bench.agent(url, "builder", tokens["builder"], "build")
    bench.agent(url, "tester", tokens["tester"], "test,lint", "--capacity", "2")

    result = run.wait(timeout=30)
    assert result.code == 0, str(result)
    no_traceback(result)

    # What really ran where: the build and test tasks on the remote agents, doc locally.
    expected = {"b1": "builder", "b2": "builder", "t1": "tester", "t2": "tester", "d1": "writer"}
    assert bench.ran() == {tid: [agent] for tid, agent in expected.items()}
    assert bench.ran("start") == bench.ran()

    report = status_json(bench.state)
    assert report["status"] == "completed" and report["exit_code"] == 0
    assert report["counts"] == {"completed": 5}

    j = journal(bench.state)
    for tid, agent in expected.items():
        rec = j.tasks[tid]
        assert rec.state == "completed" and rec.agent == agent, rec
        # The last stdout line of the command, a JSON object, is the task's result.
        assert rec.result == {"task": tid, "by": agent, "attempt": 1}, rec
        assert [(a[1], a[4]) for a in j.attempts[tid]] == [(agent, "completed")]
    connected = {data["agent"] for _, data in j.of_kind("agent_connected")}
    assert connected == {"builder", "tester"}

    # The progress line became a journaled status update from the remote agent.
    progress = [
        data
        for t, data in j.of_kind("message")
        if t == "b1" and data.get("type") == "status_update"
    ]
    halfway = [m for m in progress if m["content"].get("progress") == 50]
    assert halfway, progress
    assert halfway[0]["sender"] == "builder"
    assert halfway[0]["content"]["data"]["message"] == "halfway"
    # The run's --json output showed it too.
    shown = [e for e in run.events("task_progress") if e.get("task") == "b1"]
    assert any(e["progress"] == 50 and e["message"] == "halfway" for e in shown), shown


def test_an_agent_killed_mid_task_is_lost_and_its_task_runs_on_the_other_agent(
    bench: Bench,
) -> None:
    marker = bench.dir / "hang.marker"
    bench.write_plan(
        [
            task("hang", requires=["build"], inputs={"block": str(marker)}),
            task("after", needs=["hang"]),
        ],
        {"a1": remote("build"), "a2": remote("build")},
        settings={"heartbeat": 0.5},
    )
    tokens = {name: bench.token(name) for name in ("a1", "a2")}
    run, url = bench.serve_run()
    agents = {name: bench.agent(url, name, tokens[name], "build") for name in ("a1", "a2")}

    pid, victim = marker_of(marker)
    survivor = "a2" if victim == "a1" else "a1"
    os.kill(agents[victim].pid, signal.SIGKILL)
    kill_quietly(pid)  # the task's own process went down with its machine

    result = run.wait(timeout=30)
    assert result.code == 0, str(result)
    lost = run.events("agent_lost")
    assert [e["agent"] for e in lost] == [victim], lost
    requeued = run.events("task_requeued")
    assert [e["task"] for e in requeued] == ["hang"], requeued
    kinds = [e["event"] for e in run.events()]
    assert kinds.index("agent_lost") < kinds.index("task_requeued")

    assert bench.ran("start")["hang"] == [victim, survivor]
    assert bench.ran()["hang"] == [survivor]
    j = journal(bench.state)
    attempts = [(a[0], a[1], a[4]) for a in j.attempts["hang"]]
    assert attempts == [(1, victim, "lost"), (2, survivor, "completed")], attempts
    assert j.tasks["hang"].result == {"task": "hang", "by": survivor, "attempt": 2}
    assert j.tasks["after"].state == "completed"
    assert agents[survivor].running()


def test_a_wrong_token_is_refused_with_exit_2_and_the_run_goes_on(bench: Bench) -> None:
    bench.write_plan([task("x1", requires=["build"])], {"builder": remote("build")})
    token = bench.token("builder")
    run, url = bench.serve_run()

    wrong = bench.agent(url, "builder", "cpt_not-the-right-token", "build", token_in_env=False)
    refused = wrong.wait(timeout=20)
    assert refused.code == 2, str(refused)
    no_traceback(refused)
    assert "token" in refused.stderr and "builder" in refused.stderr, str(refused)
    assert "not-the-right-token" not in refused.output
    assert run.running(), str(run.result())

    bench.agent(url, "builder", token, "build")
    result = run.wait(timeout=30)
    assert result.code == 0, str(result)
    assert bench.ran() == {"x1": ["builder"]}


def test_the_run_waits_for_its_remote_agents_then_finishes(bench: Bench) -> None:
    bench.write_plan(
        [task("w1", requires=["build"]), task("w2", requires=["build"])],
        {"builder": remote("build", capacity=2)},
    )
    token = bench.token("builder")
    run, url = bench.serve_run()

    waiting = run.wait_event("waiting_for_agents")
    assert waiting["agents"] == ["builder"], waiting
    assert waiting["url"] == url
    assert run.events("task_started") == [] and run.events("agent_connected") == []
    assert bench.records() == []

    bench.agent(url, "builder", token, "build", "--capacity", "2")
    result = run.wait(timeout=30)
    assert result.code == 0, str(result)
    assert bench.ran() == {"w1": ["builder"], "w2": ["builder"]}
    kinds = [e["event"] for e in run.events()]
    assert kinds.index("waiting_for_agents") < kinds.index("agent_connected")


def test_an_agent_started_with_once_exits_0_when_the_run_finishes(bench: Bench) -> None:
    bench.write_plan(
        [task("o1", requires=["build"]), task("o2", requires=["test"])],
        {"once": remote("build"), "stays": remote("test")},
    )
    tokens = {name: bench.token(name) for name in ("once", "stays")}
    run, url = bench.serve_run()
    once = bench.agent(url, "once", tokens["once"], "build", "--once")
    stays = bench.agent(url, "stays", tokens["stays"], "test")

    result = run.wait(timeout=30)
    assert result.code == 0, str(result)
    done = once.wait(timeout=15)
    assert done.code == 0, str(done)
    no_traceback(done)
    # Without --once an agent waits for the next run.
    assert stays.running(), str(stays.result())
    assert bench.ran() == {"o1": ["once"], "o2": ["stays"]}


def test_the_operator_api_needs_an_operator_token_and_can_cancel_the_run(bench: Bench) -> None:
    marker = bench.dir / "long.marker"
    bench.write_plan(
        [
            task("long", requires=["build"], inputs={"block": str(marker)}),
            task("next", needs=["long"]),
        ],
        {"builder": remote("build")},
    )
    agent_token = bench.token("builder")
    operator = TokenStore(bench.state).create("alice", "operator")
    run, url = bench.serve_run()
    base = url.replace("ws://", "http://")
    bench.agent(url, "builder", agent_token, "build")
    task_pid, _ = marker_of(marker)

    assert http(f"{base}/healthz") == (200, {"status": "ok"})  # nothing about the run
    for token in (None, agent_token, "cpt_made-up"):
        code, body = http(f"{base}/api/run", token)
        assert code == 401, (token, body)
        assert "operator token" in body["error"]
        assert http(f"{base}/api/cancel", token, "POST")[0] == 401
    assert run.running()

    code, body = http(f"{base}/api/run", operator)
    assert code == 200, body
    assert body["counts"] == {"running": 1, "pending": 1}, body
    assert body["running"][0]["task"] == "long" and body["running"][0]["agent"] == "builder"
    assert body["agents"]["builder"]["connected"] is True
    assert body["agents"]["builder"]["tasks"] == ["long"]

    code, body = http(f"{base}/api/cancel", operator, "POST")
    assert code == 202 and body == {"cancelling": True, "by": "alice"}, body
    result = run.wait(timeout=20)
    assert result.code == 3, str(result)
    no_traceback(result)
    cancelling = run.events("run_cancelling")
    assert cancelling and "alice" in cancelling[0]["reason"], cancelling
    report = status_json(bench.state)
    assert report["status"] == "cancelled" and report["exit_code"] == 3
    # The cancellation reached the remote agent, which stopped the task's process.
    wait_for(lambda: not pid_alive(task_pid), timeout=10, what="the remote task to be stopped")
    assert "next" not in bench.ran("start")


def test_token_create_list_and_revoke(bench: Bench) -> None:
    bench.write_plan([task("k1", requires=["build"])], {"builder": remote("build")})
    created = cli("token", "create", "builder", "--state", bench.state)
    assert created.code == 0, str(created)
    token = created.stdout.strip()
    assert created.stdout == token + "\n" and token.startswith("cpt_") and len(token) > 30
    assert token not in created.stderr and "shown once" in created.stderr, str(created)
    op = cli("token", "create", "carol", "--operator", "--state", bench.state)
    assert op.code == 0, str(op)
    op_token = op.stdout.strip()

    path = bench.state / "tokens.json"
    text = path.read_text()
    assert token not in text and op_token not in text
    assert token.removeprefix("cpt_") not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = json.loads(text)["tokens"]
    assert set(entries) == {"agent:builder", "operator:carol"}
    assert all(set(e) == {"sha256", "created"} for e in entries.values())

    listed = cli("token", "list", "--json", "--state", bench.state)
    assert listed.code == 0, str(listed)
    rows = json.loads(listed.stdout)["tokens"]
    assert {(r["kind"], r["name"]) for r in rows} == {("agent", "builder"), ("operator", "carol")}
    assert token not in listed.output and op_token not in listed.output

    run, url = bench.serve_run()
    revoked = cli("token", "revoke", "builder", "--state", bench.state)
    assert revoked.code == 0, str(revoked)
    refused = bench.agent(url, "builder", token, "build").wait(timeout=20)
    assert refused.code == 2, str(refused)
    no_traceback(refused)
    assert "token" in refused.stderr, str(refused)
    assert run.running() and bench.records() == []

    unknown = cli("token", "revoke", "nobody", "--state", bench.state)
    assert unknown.code == 2, str(unknown)
    assert "nobody" in unknown.stderr
    no_traceback(unknown)

    # A new token works at once: the running hub rereads the file.
    again = cli("token", "create", "builder", "--state", bench.state)
    assert again.code == 0, str(again)
    bench.agent(url, "builder", again.stdout.strip(), "build")
    result = run.wait(timeout=30)
    assert result.code == 0, str(result)
    assert bench.ran() == {"k1": ["builder"]}


def test_the_hub_binds_to_loopback_and_a_taken_port_is_refused(bench: Bench) -> None:
    bench.write_plan([task("p1", requires=["build"])], {"builder": remote("build")})
    bench.token("builder")
    run, url = bench.serve_run()
    assert url.startswith("ws://127.0.0.1:"), url
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert http(f"http://127.0.0.1:{port}/healthz")[0] == 200
    os.kill(run.pid, signal.SIGTERM)
    stopped = run.wait(timeout=20)
    assert stopped.code == 3, str(stopped)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        result = cli("run", bench.plan, "--state", bench.state, "--serve", "--port", str(busy))
    assert result.code == 2, str(result)
    no_traceback(result)
    assert f"127.0.0.1:{busy}" in result.stderr and "in use" in result.stderr, str(result)


def test_serve_resumes_an_interrupted_served_run_without_redoing_finished_tasks(
    bench: Bench,
) -> None:
    marker = bench.dir / "mid.marker"
    bench.write_plan(
        [
            task("s1", requires=["build"]),
            task("s2", requires=["build"], needs=["s1"]),
            task("mid", requires=["build"], needs=["s2"], inputs={"block": str(marker)}),
            task("s3", requires=["build"], needs=["mid"]),
        ],
        {"builder": remote("build")},
    )
    token = bench.token("builder")
    run, url = bench.serve_run()
    first = bench.agent(url, "builder", token, "build")
    task_pid, _ = marker_of(marker)
    assert bench.ran() == {"s1": ["builder"], "s2": ["builder"]}
    os.kill(run.pid, signal.SIGKILL)  # the run's machine crashes
    assert run.wait(timeout=10).code == -signal.SIGKILL
    first.stop()
    kill_quietly(task_pid)
    assert status_json(bench.state)["status"] == "interrupted"

    served = bench.start("serve", "--state", bench.state, "--port", "0", "--json")
    new_url = served.wait_event("hub_listening")["url"]
    assert new_url.startswith("ws://127.0.0.1:"), new_url
    bench.agent(new_url, "builder", token, "build", "--once")
    result = served.wait(timeout=30)
    assert result.code == 0, str(result)
    no_traceback(result)

    started = bench.ran("start")
    assert started == {
        "s1": ["builder"],
        "s2": ["builder"],
        "mid": ["builder", "builder"],
        "s3": ["builder"],
    }, started
    assert bench.ran() == {tid: ["builder"] for tid in ("s1", "s2", "mid", "s3")}
    report = status_json(bench.state)
    assert report["status"] == "completed" and report["counts"] == {"completed": 4}


def test_a_run_served_over_tls_runs_its_remote_agent_over_wss(bench: Bench) -> None:
    cert, key = self_signed(bench.dir)
    bench.write_plan([task("s1", requires=["build"])], {"builder": remote("build")})
    agent_token = bench.token("builder")
    operator = TokenStore(bench.state).create("alice", "operator")
    run = bench.start(
        *("run", bench.plan, "--state", bench.state, "--serve", "--port", "0", "--json"),
        *("--tls-cert", cert, "--tls-key", key),
    )
    url = run.wait_event("hub_listening")["url"]
    assert url.startswith("wss://127.0.0.1:"), url
    base = url.replace("wss://", "https://")
    trusting = ssl.create_default_context(cafile=str(cert))
    request = urllib.request.Request(
        base + "/api/run", headers={"Authorization": f"Bearer {operator}"}
    )
    with urllib.request.urlopen(request, timeout=10, context=trusting) as answer:
        assert answer.status == 200 and json.loads(answer.read())["counts"]
    plain = url.replace("wss://", "http://")  # plain HTTP to the TLS port gets nowhere
    with pytest.raises((urllib.error.URLError, ConnectionError, HTTPException)):
        _DIRECT.open(plain + "/healthz", timeout=5).close()

    agent = bench.agent(url, "builder", agent_token, "build", "--tls-ca", str(cert), "--once")
    result = run.wait(timeout=30)
    assert result.code == 0, str(result)
    assert agent.wait(timeout=15).code == 0
    assert bench.ran() == {"s1": ["builder"]}
    assert "without TLS" not in result.stderr
    for token in (agent_token, operator):
        assert token not in result.output and token not in agent.result().output
