"""Ray benchmark: the same 20k-task DAG on the local backend, the Ray backend, and plain Ray.

The DAG is ``bench/dispatch.py``'s: layers of 200 no-op tasks, each needing 2
random tasks of the layer before (seeded). Three ways to run it, each in a fresh
child process, one after the other on this machine:

- ``local``: ``counterpoint run`` on the local backend (``start_run``, the SQLite
  journal on with full durability), the agent a no-op ``async def``;
- ``ray``: the same plan with ``--backend ray``: the orchestrator coordinates and
  journals as above, every attempt runs in one of the agent's Ray actors (one per
  slot, ``--actors`` slots) on a local Ray instance the run starts itself;
- ``ray-unary``: the Ray backend calling each actor with a plain (unary) method call,
  without streaming progress back: the path it takes over a Ray Client (``ray://``)
  connection, where Ray cannot stream from actors; it shows what streaming costs;
- ``plain-ray``: hand-written Ray, no counterpoint: one ``@ray.remote`` no-op task per
  node, each given its dependencies' ``ObjectRef`` s as arguments (Ray resolves them
  before it runs the task), then one ``ray.wait`` on the last layer.

Ray start-up (the instance, and for ``ray`` every actor) is timed apart from the run.
Both Ray rows start a local instance with the same ``--num-cpus`` and object store.

    python bench/ray_scale.py                      # 20k tasks, 16 actors
    python bench/ray_scale.py --tasks 5000 --actors 4 8 16 --json ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch import WIDTH, dag_phases, layered_needs

OBJECT_STORE = 200 * 1024 * 1024

AGENTS_MODULE = """
async def noop(task, ctx):
    return None
"""


def write_plan(folder: Path, n: int, actors: int, cpus: int) -> Path:
    lines = [
        "version: 1",
        f"name: ray-scale-{n}",
        "settings:",
        f"  ray: {{num_cpus: {cpus}, object_store_memory: {OBJECT_STORE}}}",
        "agents:",
        f"  worker: {{capacity: {actors}, runner: {{python: 'ray_bench_agents:noop'}}}}",
        *dag_phases(n),
    ]
    path = folder / f"plan-{n}-{actors}.yaml"
    path.write_text("\n".join(lines) + "\n")
    (folder / "ray_bench_agents.py").write_text(AGENTS_MODULE)
    return path


# -- children: each measurement in its own process ------------------------------------------


def child_counterpoint(plan: Path, backend: str) -> dict[str, Any]:
    from counterpoint.runtime.orchestrator import RunOptions
    from counterpoint.runtime.session import start_run
    from counterpoint.store.sqlite import SqliteStore

    if backend == "ray-unary":  # as over Ray Client: no streaming from the actors
        from counterpoint.agents import ray_actors

        connect = ray_actors.RayBackend._connect

        def unary(self: ray_actors.RayBackend) -> None:
            connect(self)
            self.streaming = False

        ray_actors.RayBackend._connect = unary  # type: ignore[method-assign]
        backend = "ray"

    state = Path(tempfile.mkdtemp(prefix="cp-bench-ray-state-"))
    began = time.time()
    code = start_run(plan, state, RunOptions(backend=backend), [])
    ended = time.time()
    store = SqliteStore(state, create=False)
    try:
        started = store.conn.execute(
            "SELECT ts FROM events WHERE kind = 'run_started' ORDER BY seq LIMIT 1"
        ).fetchone()[0]
        finished = store.conn.execute(
            "SELECT ts FROM events WHERE kind = 'run_finished' ORDER BY seq DESC LIMIT 1"
        ).fetchone()[0]
        lost = store.conn.execute(
            "SELECT count(*) FROM attempts WHERE status != 'completed'"
        ).fetchone()[0]
    finally:
        store.close()
        shutil.rmtree(state, ignore_errors=True)
    return {
        "exit_code": code,
        "startup_s": started - began,  # load, check, compile; for ray: Ray and the actors
        "seconds": finished - started,  # run_started to run_finished
        "total_s": ended - began,
        "attempts_not_completed": lost,
    }


def child_plain_ray(n: int, cpus: int) -> dict[str, Any]:
    import logging

    import ray

    temp = tempfile.mkdtemp(prefix="cp-ray-", dir="/tmp")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    began = time.time()
    ray.init(
        num_cpus=cpus,
        object_store_memory=OBJECT_STORE,
        include_dashboard=False,
        _temp_dir=temp,
        logging_level=logging.ERROR,
    )

    @ray.remote(max_retries=0)
    def noop(*_deps: Any) -> None:
        return None

    ray.get(noop.remote())  # a worker is up: start-up ends here
    started = time.time()
    refs: list[Any] = []
    for deps in layered_needs(n):
        refs.append(noop.remote(*[refs[j] for j in deps]))
    last = refs[max(0, n - WIDTH) :]
    ray.wait(last, num_returns=len(last))  # one batched wait: done when the last layer is
    finished = time.time()
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    return {"startup_s": started - began, "seconds": finished - started, "exit_code": 0}


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}", "stderr": out.stderr[-2000:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def child_main(args: list[str]) -> None:
    kind = args[0]
    if kind == "plain-ray":
        result = child_plain_ray(int(args[1]), int(args[2]))
    else:
        result = child_counterpoint(Path(args[1]), kind)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["driver_cpu_s"] = usage.ru_utime + usage.ru_stime  # start-up included
    print(json.dumps(result))


# -- the report ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import platform

    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "ray": ray_version,
        "load_before": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--actors", type=int, nargs="+", default=[16])
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    opts = parser.parse_args()
    from rich.console import Console

    console = Console(width=120)
    results: dict[str, Any] = {"tasks": opts.tasks, "machine": machine(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="cp-bench-ray-") as tmp:
        folder = Path(tmp)
        for actors in opts.actors:
            plan = write_plan(folder, opts.tasks, actors, opts.num_cpus)
            for backend in ("local", "ray", "ray-unary"):
                with console.status(f"{opts.tasks:,} tasks: {backend} backend, {actors} slots"):
                    row = run_child(backend, str(plan))
                results["rows"].append({"engine": backend, "slots": actors, **row})
        with console.status(f"{opts.tasks:,} tasks: plain Ray tasks"):
            row = run_child("plain-ray", str(opts.tasks), str(opts.num_cpus))
        results["rows"].append({"engine": "plain-ray", "slots": opts.num_cpus, **row})
    results["machine"]["load_after"] = os.getloadavg()
    render(console, results)
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))


LABELS = {
    "local": "counterpoint, local backend",
    "ray": "counterpoint, Ray backend",
    "ray-unary": "counterpoint, Ray backend, unary calls",
    "plain-ray": "plain Ray tasks (by hand)",
}


def render(console: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    n = results["tasks"]
    m = results["machine"]
    table = Table(title=f"{n:,}-task layered DAG (200 per layer, 2 needs each), no-op tasks")
    columns = (
        "engine",
        "slots",
        "start-up s",
        "run s",
        "tasks/s",
        "driver CPU s",
        "driver peak RSS MB",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in results["rows"]:
        if "error" in r:
            table.add_row(LABELS[r["engine"]], str(r["slots"]), r["error"], "-", "-", "-", "-")
            continue
        table.add_row(
            LABELS[r["engine"]],
            str(r["slots"]),
            f"{r['startup_s']:.2f}",
            f"{r['seconds']:.2f}",
            f"{n / r['seconds']:,.0f}",
            f"{r['driver_cpu_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    console.print(table)
    console.print(
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"Ray {m['ray']}; load average before {m['load_before'][0]:.2f}, "
        f"after {m['load_after'][0]:.2f}"
    )
    for r in results["rows"]:
        if "error" in r:
            console.print(f"{r['engine']}: {r['stderr']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
