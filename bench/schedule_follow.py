"""Does a run follow its plan's schedule? Run makespans against computed schedules.

Each plan is scheduled with the search of ``counterpoint plan`` (1 s) and then run
for real (SQLite journal, the run engine's dispatch, simulated Python agents that
sleep their task's duration times ``--time-scale``) twice: with
``settings.dispatch: schedule`` (the ready queue ordered by the schedule's planned
starts, refreshed on drift) and ``critical-path`` (the previous order: latest start
first). The run's makespan is the span from its first task's start to its last
task's finish in the journal, divided by the time scale.

Plans:

* ``flagship``: examples/cloud-migration/plan.yaml (its own simulated agents, which
  work for their estimate; gates and approvals included, ``--approve-as demo``);
* ``psplib``: J30 instances of the PSPLIB benchmark (one agent slot per task, so
  only the four counted resources constrain the plan);
* ``generated``: random plans of 50 tasks on three agent pools of capacity 1-2 and
  two counted resources.

Scenarios: ``exact`` (every task takes its estimate) and ``drift`` (each takes its
estimate times a factor drawn from 0.5-1.5, the same in both runs; the reference
is then the schedule computed *knowing* the real durations).

    python bench/schedule_follow.py                     # everything (~6 min)
    python bench/schedule_follow.py --plans psplib --count 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from rcpsp import DATA, parse_sm  # noqa: E402

FLAGSHIP = ROOT / "examples" / "cloud-migration" / "plan.yaml"

AGENTS = """
import asyncio


async def work(task, ctx):
    actual = task.inputs.get("actual", ctx.estimate_s / ctx.time_scale)
    await asyncio.sleep(actual * ctx.time_scale)
"""


def psplib_plans(count: int) -> list[tuple[str, dict[str, Any]]]:
    from rcpsp import to_plan_data

    files = sorted((DATA / "j30").glob("*.sm"), key=lambda p: p.name)
    step = max(1, len(files) // count)
    out = []
    for path in files[::step][:count]:
        data = to_plan_data(parse_sm(path))
        n = len(data["phases"][0]["milestones"][0]["tasks"])
        data["agents"] = {"sim": {"capacity": n, "runner": {"python": "agents:work"}}}
        out.append((path.stem, data))
    return out


def generated_plans(count: int, n: int = 50) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for k in range(count):
        rng = random.Random(1000 + k)
        tasks = []
        for i in range(n):
            task: dict[str, Any] = {
                "id": f"t{i}",
                "estimate": rng.randint(1, 10),
                "requires": [rng.choice("abc")],
            }
            window = list(range(max(0, i - 12), i))
            needs = rng.sample(window, min(len(window), rng.randint(0, 2)))
            if needs:
                task["needs"] = [f"t{j}" for j in sorted(needs)]
            units = {r: rng.randint(1, 3) for r in ("R1", "R2") if rng.random() < 0.5}
            if units:
                task["resources"] = units
            tasks.append(task)
        runner = {"python": "agents:work"}
        out.append(
            (
                f"gen{k}",
                {
                    "version": 1,
                    "name": f"gen{k}",
                    "agents": {
                        "a": {"capabilities": ["a"], "capacity": 2, "runner": runner},
                        "b": {"capabilities": ["b"], "capacity": 2, "runner": runner},
                        "c": {"capabilities": ["c"], "capacity": 1, "runner": runner},
                    },
                    "resources": {"R1": {"capacity": 4}, "R2": {"capacity": 3}},
                    "phases": [{"id": "p", "milestones": [{"id": "m", "tasks": tasks}]}],
                },
            )
        )
    return out


def tasks_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for ph in data["phases"] for m in ph["milestones"] for t in m["tasks"]]


def with_drift(data: dict[str, Any], seed: int) -> dict[str, Any]:
    """Each task takes its estimate times 0.5-1.5 (``inputs.actual``)."""
    rng = random.Random(seed)
    out = json.loads(json.dumps(data))
    for task in tasks_of(out):
        task.setdefault("inputs", {})["actual"] = task["estimate"] * rng.uniform(0.5, 1.5)
    return out


def with_actuals(data: dict[str, Any]) -> dict[str, Any]:
    """The plan as if its estimates had been right (for the drift scenario's reference)."""
    out = json.loads(json.dumps(data))
    for task in tasks_of(out):
        task["estimate"] = task["inputs"]["actual"]
    return out


def planned(path: Path) -> dict[str, float]:
    from counterpoint.plan import load_plan, schedule

    graph = load_plan(path).compile()
    single = schedule(graph)
    searched = schedule(graph, time_limit=1.0, seed=0)
    return {
        "single_pass": single.makespan_s,
        "searched": searched.makespan_s,
        "lower_bound": searched.lower_bound_s,
    }


def run(
    path: Path, dispatch: str, scale: float, approve: bool, sync: str = "normal"
) -> tuple[float, float | None]:
    """The run's makespan in plan seconds (first start to last finish, journal times),
    and the makespan of the schedule it followed (None: critical-path order)."""
    from counterpoint import start_run
    from counterpoint.runtime.orchestrator import RunOptions
    from counterpoint.store.sqlite import SqliteStore

    text = path.read_text()
    data = yaml.safe_load(text)
    data.setdefault("settings", {})["dispatch"] = dispatch
    variant = path.with_name(f"{path.stem}-{dispatch}.yaml")
    variant.write_text(yaml.safe_dump(data, sort_keys=False))
    state = Path(tempfile.mkdtemp(prefix="follow-"))
    options = RunOptions(time_scale=scale, seed=0, approve_as="demo" if approve else None)
    code = start_run(variant, state, options, sync=sync)
    if code != 0:
        raise SystemExit(f"{variant}: the run ended with exit code {code}")
    store = SqliteStore(state, create=False)
    record = store.latest_run()
    assert record is not None
    tasks = store.tasks(record.id).values()
    followed = store.events_of_kind(record.id, "schedule_planned")
    refreshed = store.events_of_kind(record.id, "schedule_refreshed")
    if refreshed:
        print(f"  {path.stem} {dispatch}: {len(refreshed)} refreshes", flush=True)
    store.close()
    first = min(t.started for t in tasks if t.started is not None)
    last = max(t.finished for t in tasks if t.finished is not None)
    return (last - first) / scale, followed[0]["makespan_s"] if followed else None


def measure(name: str, kind: str, data_or_path: Any, scale: float, scenario: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"follow-{name}-"))
    if isinstance(data_or_path, Path):
        path = data_or_path
        approve = True
    else:
        data = data_or_path
        (folder / "agents.py").write_text(AGENTS)
        if scenario == "drift":
            data = with_drift(data, seed=zlib.crc32(name.encode()))
            ref = folder / "actual.yaml"
            ref.write_text(yaml.safe_dump(with_actuals(data), sort_keys=False))
        path = folder / "plan.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        approve = False
    reference = planned(folder / "actual.yaml" if scenario == "drift" else path)
    row: dict[str, Any] = {"plan": name, "kind": kind, "scenario": scenario, **reference}
    for dispatch in ("schedule", "critical-path"):
        if isinstance(data_or_path, Path):
            local = folder / path.name
            local.write_text(path.read_text())
            for extra in path.parent.glob("*.py"):
                (folder / extra.name).write_text(extra.read_text())
            row[dispatch], followed = run(local, dispatch, scale, approve)
        else:
            row[dispatch], followed = run(path, dispatch, scale, approve)
        if followed is not None:
            row["followed"] = followed
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", default="flagship,psplib,generated")
    parser.add_argument("--count", type=int, default=8, help="instances per generated kind")
    parser.add_argument("--scale", type=float, default=0.04, help="real s per plan s")
    parser.add_argument("--flagship-scale", type=float, default=2e-6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kinds = args.plans.split(",")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    if "flagship" in kinds:
        rows.append(measure("flagship", "flagship", FLAGSHIP, args.flagship_scale, "exact"))
        print(rows[-1], flush=True)
    for kind, plans in (
        ("psplib", psplib_plans(args.count) if "psplib" in kinds else []),
        ("generated", generated_plans(args.count) if "generated" in kinds else []),
    ):
        for scenario in ("exact", "drift"):
            for name, data in plans:
                rows.append(measure(name, kind, data, args.scale, scenario))
                print(rows[-1], flush=True)
    print(f"\n{len(rows)} plans in {time.perf_counter() - started:.0f} s\n")
    print(
        "| plans | scenario | n | search / single pass | run (schedule) / search |"
        " run (critical-path) / search | schedule-order run shorter |"
    )
    print("|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["scenario"]), []).append(row)
    for (kind, scenario), group in groups.items():

        def ratio(a: str, b: str, group: list[dict[str, Any]] = group) -> str:
            return f"{statistics.mean(r[a] / r[b] for r in group):.3f}"

        wins = sum(r["schedule"] < r["critical-path"] - 1e-6 for r in group)
        losses = sum(r["schedule"] > r["critical-path"] + 1e-6 for r in group)
        print(
            f"| {kind} | {scenario} | {len(group)} | {ratio('searched', 'single_pass')} |"
            f" {ratio('schedule', 'searched')} | {ratio('critical-path', 'searched')} |"
            f" {wins} (longer: {losses}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
