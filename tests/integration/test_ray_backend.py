"""The Ray backend: Python agents run as Ray actors while the orchestrator coordinates.

One local Ray instance serves the whole test session (``ray_cluster``: 2 CPUs, a
100 MB object store, a custom resource). Runs in this process reuse its connection;
runs of the command line connect to it with ``--ray-address``. What the tests
assert comes from the journal and from what the agents recorded in the Ray workers
(process ids, the Ray resources their actor holds, cancellations they saw).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from run_helpers import (
    AGENTS_DIR,
    PY,
    ROOT,
    Background,
    Result,
    max_overlap,
    one_phase,
    pid_alive,
    quick_options,
    status_json,
    wait_for,
)

from counterpoint.agents.ray_actors import RayUnavailable
from counterpoint.runtime.session import resume_run, start_run
from counterpoint.store.sqlite import SqliteStore

SLOT = "cp_test_slot"  # a custom resource of the session's Ray instance


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray instance for the session; yields its address (for --ray-address)."""
    import ray

    temp = tempfile.mkdtemp(prefix="cp-ray-test-", dir="/tmp")
    environ = dict(os.environ)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 1024 * 1024,
        resources={SLOT: 2},
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        os.environ.clear()  # ray.init sets RAY_* variables and PYTHONBREAKPOINT
        os.environ.update(environ)


class RayWorkspace:
    """A folder with a plan, its own copy of ``agents/ray_work.py`` and a state dir."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.module = f"ray_work_{uuid.uuid4().hex[:12]}"
        shutil.copy(AGENTS_DIR / "ray_work.py", folder / f"{self.module}.py")
        self.plan = folder / "plan.yaml"
        self.state = folder / "state"

    def agent(self, capacity: int = 1, sync: bool = False, **ray: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "capacity": capacity,
            "runner": {"python": f"{self.module}:{'work_sync' if sync else 'work'}"},
        }
        if ray:
            spec["ray"] = ray
        return spec

    def write(self, tasks: list[dict[str, Any]], **top: Any) -> Path:
        top.setdefault("settings", {"backend": "ray"})
        self.plan.write_text(json.dumps(one_phase(tasks, **top)), encoding="utf-8")
        return self.plan

    def run(self, **options: Any) -> int:
        return start_run(self.plan, self.state, quick_options(**options), [], sync="normal")

    def records(self) -> list[dict[str, Any]]:
        path = self.dir / "records.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def attempts(self, task: str) -> list[tuple[Any, ...]]:
        store = SqliteStore(self.state, create=False)
        try:
            return store.attempts(1, task)
        finally:
            store.close()

    def events(self, kind: str) -> list[dict[str, Any]]:
        store = SqliteStore(self.state, create=False)
        try:
            record = store.latest_run()
            assert record is not None
            return store.events_of_kind(record.id, kind)
        finally:
            store.close()


@pytest.fixture
def ws(tmp_path: Path) -> RayWorkspace:
    return RayWorkspace(tmp_path)


TASK_KEYS = ("needs", "requires", "resources", "retries", "timeout", "reads", "writes")


def task(tid: str, **inputs: Any) -> dict[str, Any]:
    """A task; keyword arguments that are task keys go to the task, the rest to its inputs."""
    fields = {k: inputs.pop(k) for k in list(inputs) if k in TASK_KEYS}
    return {"id": tid, **fields, "inputs": inputs}


def cli_with(env: dict[str, str], *args: str | Path) -> Result:
    """``python -m counterpoint ARGS`` with ``env`` added to the environment."""
    full = {k: v for k, v in os.environ.items() if k != "COUNTERPOINT_STATE"}
    proc = subprocess.run(
        [PY, "-m", "counterpoint", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**full, **env},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def gone(pids: set[int]) -> bool:
    return not [pid for pid in pids if pid_alive(pid)]


# -- the flagship plan ------------------------------------------------------------------------


def test_the_flagship_plan_runs_on_ray(ray_cluster: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = Background(
        tmp_path,
        "run",
        ROOT / "examples" / "cloud-migration" / "plan.yaml",
        "--state",
        state,
        "--time-scale",
        "0.000002",
        "--approve-as",
        "demo",
        "--backend",
        "ray",
        "--ray-address",
        ray_cluster,
        "--quiet",
    )
    result = run.wait(timeout=120)
    assert result.code == 0, str(result)
    report = status_json(state)
    assert report["status"] == "completed"
    assert report["counts"] == {"completed": 56}

    store = SqliteStore(state, create=False)
    try:
        (backend,) = store.events_of_kind(1, "ray_backend")
        started = store.events_of_kind(1, "task_started")
    finally:
        store.close()
    assert backend["address"] == ray_cluster and backend["streaming"] is True
    # one actor per slot of every agent (all ten have a python runner), none of them the
    # run's own process, and every one stopped when the run ended
    plan_agents = {"planner": 2, "discovery": 1, "reviewer": 2, "architect": 3, "security": 2}
    plan_agents |= {"monitoring": 1, "documentation": 2, "testing": 2, "deployment": 3}
    plan_agents |= {"optimizer": 2}
    assert {a: len(s) for a, s in backend["actors"].items()} == plan_agents
    pids = {s["pid"] for slots in backend["actors"].values() for s in slots}
    assert len(pids) == 20 and run.pid not in pids and os.getpid() not in pids
    assert {e["agent"] for e in started} <= set(plan_agents)
    wait_for(lambda: gone(pids), timeout=10, what="the run's actors to stop")


# -- resources, placement --------------------------------------------------------------------


def test_resources_are_never_overcommitted_on_ray(ray_cluster: str, ws: RayWorkspace) -> None:
    tasks = [task(f"db{i}", sleep=0.3, resources={"db": 1}) for i in range(4)]
    tasks += [task(f"pool{i}", sleep=0.3, resources={"pool": 1}) for i in range(4)]
    ws.write(
        tasks,
        agents={"worker": ws.agent(capacity=3, num_cpus=0.5, resources={SLOT: 0.5})},
        resources={"db": {"capacity": 1}, "pool": {"capacity": 2}},
    )
    assert ws.run() == 0

    def spans(prefix: str) -> list[tuple[float, float]]:
        rows = [row for i in range(4) for row in ws.attempts(f"{prefix}{i}")]
        assert all(row[4] == "completed" for row in rows)
        return [(row[2], row[3]) for row in rows]

    assert max_overlap(spans("db")) == 1  # the exclusive resource
    assert max_overlap(spans("pool")) == 2  # capacity 2: used, never exceeded
    assert max_overlap(spans("db") + spans("pool")) == 3  # the agent's three slots
    starts = [r for r in ws.records() if r["event"] == "start"]
    assert len(starts) == 8
    assert {r["pid"] for r in starts}.isdisjoint({os.getpid()})
    assert len({r["pid"] for r in starts}) == 3  # one actor per slot
    for r in starts:  # each actor holds what the plan's ray: settings ask for
        assert r["resources"].get("CPU") == 0.5 and r["resources"].get(SLOT) == 0.5


def test_a_cluster_without_room_for_every_slot_refuses_the_run(
    ray_cluster: str, ws: RayWorkspace
) -> None:
    ws.write([task("a")], agents={"big": ws.agent(capacity=3, num_cpus=1)})
    with pytest.raises(RayUnavailable, match=r"the slots need CPU 3 \(the cluster has 2\)"):
        ws.run()
    assert not (ws.state / "state.db").exists()  # refused before anything was written


# -- failures, cancellation ----------------------------------------------------------------


def test_a_ray_worker_killed_mid_task_is_retried_by_the_orchestrator(
    ray_cluster: str, ws: RayWorkspace
) -> None:
    ws.write(
        [task("victim", kill_first=True, retries=0), task("bystander", sleep=0.2)],
        agents={"worker": ws.agent(capacity=2)},
    )
    assert ws.run() == 0
    rows = ws.attempts("victim")
    assert [(r[0], r[4]) for r in rows] == [(1, "lost"), (2, "completed")]
    assert "died" in rows[0][5]
    (requeued,) = ws.events("task_requeued")
    assert requeued["attempt"] == 1
    runs = [r for r in ws.records() if r["task"] == "victim"]
    assert [(r["attempt"], r["event"]) for r in runs] == [(1, "start"), (2, "start"), (2, "end")]
    assert runs[0]["pid"] != runs[1]["pid"]  # a new actor took the killed one's slot
    wait_for(lambda: gone({runs[0]["pid"]}), timeout=10, what="the killed worker to be gone")


def test_a_timeout_reaches_the_work_in_the_ray_worker(ray_cluster: str, ws: RayWorkspace) -> None:
    ws.write(
        [
            task("slow", sleep=30, timeout="1s", retries=0, requires=["async"]),
            task("blocking", sleep=30, timeout="1s", retries=0, requires=["sync"]),
        ],
        agents={
            "async": {**ws.agent(), "capabilities": ["async"]},
            "plain": {**ws.agent(sync=True), "capabilities": ["sync"]},
        },
    )
    began = time.monotonic()
    assert ws.run(kill_grace_s=1.0) == 1
    assert time.monotonic() - began < 20
    assert [r[4] for r in ws.attempts("slow")] == ["timed_out"]
    assert [r[4] for r in ws.attempts("blocking")] == ["timed_out"]
    slow = [r["event"] for r in ws.records() if r["task"] == "slow"]
    assert slow == ["start", "cancelled"]  # the coroutine in the actor was cancelled
    (blocking,) = [r for r in ws.records() if r["task"] == "blocking"]
    assert blocking["event"] == "start"  # a plain function cannot be interrupted: its actor
    wait_for(lambda: gone({blocking["pid"]}), timeout=10, what="the actor to be killed")


def test_results_writes_retries_and_rate_limits_come_back(
    ray_cluster: str, ws: RayWorkspace
) -> None:
    ws.write(
        [
            task("writer", write={"doc.title": "Ray"}, writes=["doc.title"]),
            task("reader", read="doc.title", reads=["doc.title"], needs=["writer"]),
            task("flaky", fail_times=1, retries=1),
            task("limited", rate_limit_first=0.1, retries=0),
            task("chatty", send=True, retries=0),
        ],
        agents={"worker": ws.agent(capacity=2)},
    )
    assert ws.run() == 1  # chatty fails
    store = SqliteStore(ws.state, create=False)
    try:
        tasks = store.tasks(1)
    finally:
        store.close()
    assert tasks["reader"].result is not None and tasks["reader"].result["read"] == "Ray"
    assert [(r[4], r[5]) for r in ws.attempts("flaky")] == [
        ("failed", "failed on purpose"),
        ("completed", None),
    ]
    assert [r[4] for r in ws.attempts("limited")] == ["rate_limited", "completed"]
    assert tasks["chatty"].state == "failed"
    assert "not supported on the Ray backend" in (tasks["chatty"].error or "")
    progress = [
        json.loads(row[0])
        for row in sqlite3.connect(ws.state / "state.db").execute(
            "SELECT data FROM events WHERE kind = 'message'"
        )
    ]
    assert any(m.get("content", {}).get("progress") == 50 for m in progress)  # streamed back

    # resume keeps the backend the run started with
    assert resume_run(ws.state, None, [], sync="normal") == 1
    assert len(ws.events("ray_backend")) == 2


# -- the command line ------------------------------------------------------------------------


def test_without_ray_installed_the_run_says_how_to_install_it(tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "ray").mkdir(parents=True)
    (hidden / "ray" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'ray'\")\n", encoding="utf-8"
    )
    ws = RayWorkspace(tmp_path)
    ws.write([task("a")], agents={"worker": ws.agent()}, settings={"backend": "local"})
    env = {"PYTHONPATH": str(hidden)}
    for extra in (["--backend", "ray"], ["--ray-address", "auto"]):
        result = cli_with(env, "run", ws.plan, "--state", ws.state, "--quiet", *extra)
        assert result.code == 2, str(result)
        assert "pip install 'counterpoint[ray]'" in result.stderr
        assert not (ws.state / "state.db").exists()
    ws.write([task("a")], agents={"worker": ws.agent()})  # settings.backend: ray
    result = cli_with(env, "run", ws.plan, "--state", ws.state, "--quiet")
    assert result.code == 2 and "pip install 'counterpoint[ray]'" in result.stderr
    result = cli_with(env, "run", ws.plan, "--state", ws.state, "--quiet", "--backend", "local")
    assert result.code == 0, str(result)  # the local backend never imports Ray


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray-address", "bogus"], "expected auto, HOST:PORT"),
        (["--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--backend", "local", "--ray-address", "auto"], "--ray-address needs the Ray backend"),
        (["--backend", "spark"], "Invalid value for '--backend'"),
    ],
)
def test_bad_backend_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    ws = RayWorkspace(tmp_path)
    ws.write([task("a")], agents={"worker": ws.agent()}, settings={"backend": "local"})
    began = time.monotonic()
    result = cli_with({}, "run", ws.plan, "--state", ws.state, "--quiet", *args)
    assert result.code == 2, str(result)
    assert message in result.stderr
    assert time.monotonic() - began < 30
    assert not (ws.state / "state.db").exists()
