"""Dispatch benchmark: counterpoint's run engine against Dask's schedulers on the same DAG.

A layered DAG of no-op tasks (200 per layer, each needing 2 tasks of the layer
before) runs through counterpoint's real ``run`` path (plan file loaded and
checked, SQLite journal on, full durability) and, side by side in the same
script, through ``dask.threaded.get`` and ``dask.local.get_sync``. Each
measurement runs in a fresh child process so its peak memory is its own.

A second scenario measures dispatch latency: 1,000 chains run at once, each
task sleeping 0.5-1.5 s (so about 1,000 tasks are always running and about
1,000 hand-offs happen a second); latency is the time from a task's return to
its dependent's start, at p50 and p99.

    python bench/dispatch.py                    # 20k and 200k tasks, latency
    python bench/dispatch.py --sizes 20000 --json results.json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTH = 200
NEEDS = 2
SLEEP_MIN_S, SLEEP_MAX_S = 0.5, 1.5  # latency scenario: ~1,000 hand-offs a second

AGENTS_MODULE = """
import time

RECORD = []


async def noop(task, ctx):
    return None


async def timed(task, ctx):
    import asyncio

    started = time.perf_counter()
    await asyncio.sleep(task.inputs["sleep"])
    RECORD.append((task.id, started, time.perf_counter()))
    return None
"""


def layered_needs(n: int, seed: int = 7) -> list[list[int]]:
    rng = random.Random(seed)
    needs: list[list[int]] = []
    for i in range(n):
        layer = i // WIDTH
        prev = range((layer - 1) * WIDTH, layer * WIDTH)
        needs.append(rng.sample(prev, NEEDS) if layer > 0 else [])
    return needs


def dag_phases(n: int) -> list[str]:
    """The ``phases:`` lines of a plan holding the layered DAG of ``n`` tasks."""
    lines = ["phases:", "  - id: p", "    milestones:", "      - id: m", "        tasks:"]
    for i, deps in enumerate(layered_needs(n)):
        needs = ", ".join(f"t{j}" for j in deps)
        lines.append(f"          - {{id: t{i}, estimate: 1s, needs: [{needs}]}}")
    return lines


def write_plan(folder: Path, n: int) -> Path:
    lines = [
        "version: 1",
        f"name: dispatch-{n}",
        "agents:",
        "  worker: {capacity: 100000, runner: {python: 'bench_agents:noop'}}",
        *dag_phases(n),
    ]
    path = folder / f"plan-{n}.yaml"
    path.write_text("\n".join(lines) + "\n")
    (folder / "bench_agents.py").write_text(AGENTS_MODULE)
    return path


def latency_plan(folder: Path, chains: int, length: int) -> Path:
    lines = [
        "version: 1",
        "name: latency",
        "agents:",
        "  worker: {capacity: 100000, runner: {python: 'bench_agents:timed'}}",
        "phases:",
        "  - id: p",
        "    milestones:",
        "      - id: m",
        "        tasks:",
    ]
    rng = random.Random(3)
    for c in range(chains):
        for k in range(length):
            needs = f"c{c}_{k - 1}" if k else ""
            sleep = round(rng.uniform(SLEEP_MIN_S, SLEEP_MAX_S), 4)
            lines.append(
                f"          - {{id: c{c}_{k}, needs: [{needs}], inputs: {{sleep: {sleep}}}}}"
            )
    path = folder / "latency.yaml"
    path.write_text("\n".join(lines) + "\n")
    (folder / "bench_agents.py").write_text(AGENTS_MODULE)
    return path


# -- children: each measurement in its own process ------------------------------------


def child_counterpoint(plan: Path) -> dict[str, Any]:
    from counterpoint.runtime.orchestrator import RunOptions
    from counterpoint.runtime.session import start_run

    state = Path(tempfile.mkdtemp(prefix="cp-bench-state-"))
    started = time.perf_counter()
    code = start_run(plan, state, RunOptions(), [])
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "exit_code": code}


def child_dask(n: int, scheduler: str) -> dict[str, Any]:
    import dask.local
    import dask.threaded

    def noop(*_: Any) -> None:
        return None

    graph: dict[str, Any] = {
        f"t{i}": (noop, *[f"t{j}" for j in deps]) for i, deps in enumerate(layered_needs(n))
    }
    outputs = [f"t{i}" for i in range(max(0, n - WIDTH), n)]
    get = dask.threaded.get if scheduler == "threaded" else dask.local.get_sync
    started = time.perf_counter()
    get(graph, outputs)
    return {"seconds": time.perf_counter() - started}


def child_latency(plan: Path, sync: str) -> dict[str, Any]:
    sys.path.insert(0, str(plan.parent))
    import bench_agents  # type: ignore[import-not-found]

    from counterpoint.runtime.orchestrator import RunOptions
    from counterpoint.runtime.session import start_run

    state = Path(tempfile.mkdtemp(prefix="cp-bench-latency-"))
    started = time.perf_counter()
    code = start_run(plan, state, RunOptions(), [], sync=sync)
    elapsed = time.perf_counter() - started
    ends = {task: end for task, _, end in bench_agents.RECORD}
    gaps = []
    for task, start, _ in bench_agents.RECORD:
        chain, k = task.rsplit("_", 1)
        if int(k) > 0:
            gaps.append(start - ends[f"{chain}_{int(k) - 1}"])
    gaps.sort()
    return {
        "seconds": elapsed,
        "exit_code": code,
        "p50_ms": 1000 * gaps[len(gaps) // 2],
        "p99_ms": 1000 * gaps[int(len(gaps) * 0.99)],
        "max_ms": 1000 * gaps[-1],
        "samples": len(gaps),
    }


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        how = f"killed by signal {-out.returncode}" if out.returncode < 0 else "failed"
        if out.returncode == 137 or out.returncode == -9:
            how = "killed (SIGKILL: out of memory)"
        return {"error": how, "stderr": out.stderr[-2000:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def child_main(args: list[str]) -> None:
    kind, target = args[0], args[1]
    if kind == "counterpoint":
        result = child_counterpoint(Path(target))
    elif kind.startswith("latency-"):
        result = child_latency(Path(target), kind.removeprefix("latency-"))
    else:
        result = child_dask(int(target), kind)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- the report ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    opts = parser.parse_args()
    from rich.console import Console

    console = Console()
    results: dict[str, Any] = {"sizes": {}, "latency": {}}
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        folder = Path(tmp)
        for n in opts.sizes:
            plan = write_plan(folder, n)
            row = {}
            for engine in ("counterpoint", "threaded", "sync"):
                with console.status(f"{n:,} tasks: {engine}"):
                    target = str(plan) if engine == "counterpoint" else str(n)
                    row[engine] = run_child(engine, target)
            results["sizes"][n] = row
        plan = latency_plan(folder, opts.chains, opts.length)
        for sync in ("full", "normal"):
            with console.status(f"latency: {opts.chains} chains of {opts.length}, sync {sync}"):
                results["latency"][sync] = run_child(f"latency-{sync}", str(plan))
    render(console, results)
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))


def render(console: Any, results: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Layered DAG of no-op tasks (200 per layer, 2 needs each)")
    for column in ("tasks", "engine", "seconds", "tasks/s", "peak RSS MB", "vs dask threaded"):
        table.add_column(column, justify="right")
    for n, row in results["sizes"].items():
        base = row["threaded"].get("seconds")
        for engine, label in (
            ("counterpoint", "counterpoint run (journal on)"),
            ("threaded", "dask.threaded.get"),
            ("sync", "dask.local.get_sync"),
        ):
            r = row[engine]
            if "error" in r:
                table.add_row(f"{int(n):,}", label, r["error"], "-", "-", "-")
                continue
            table.add_row(
                f"{int(n):,}",
                label,
                f"{r['seconds']:.2f}",
                f"{int(n) / r['seconds']:,.0f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['seconds'] / base:.2f}x" if base else "-",
            )
    console.print(table)
    for sync, lat in results["latency"].items():
        console.print(
            f"Dispatch latency, journal sync {sync}, {lat['samples']:,} hand-offs with ~1,000 "
            f"tasks running: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
            f"max {lat['max_ms']:.2f} ms"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
