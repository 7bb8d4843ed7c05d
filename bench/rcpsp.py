"""Schedule quality on the PSPLIB single-mode RCPSP benchmark (J30, J60, J120).

Usage::

    python bench/rcpsp.py                              # every instance, 1 s each (~30 min)
    python bench/rcpsp.py --set j30 --limit 50         # 50 J30 instances spread over the set
    python bench/rcpsp.py --set j120 --time-limit 2 --json out.json
    python bench/rcpsp.py --set j30 --limit 20 --optimal   # CP-SAT after the heuristic

Each instance (``.sm`` file, see ``../shared/benchmarks/psplib/README.md``) becomes a
plan: one task per real job (the dummy source and sink are left out), its duration as
the estimate in seconds, its successors as ``needs``, the four renewable resources as
counted resources with the file's capacities and the job's requests as its units. The
plan is compiled and scheduled with :func:`counterpoint.plan.schedule.schedule`, the
code path of ``counterpoint plan`` (the single priority-rule pass, the lower bounds,
the plan's RCPSP instance and the search); only the file parsing and the JSON plan
are the script's. The schedule is then checked against the ``.sm`` data alone:
durations, every precedence, and every resource's use at every time unit.

Reported per set, for the single priority-rule pass (the scheduler before the search,
``--time-limit 0``) and for the search:

* J30: average and maximum deviation from the proven optima (``j30opt.sm``), and how
  many optima are reached;
* J60, J120: average deviation from the critical-path lower bound (the ``MPM-Time`` of
  each file, the literature's measure) and from the best-known makespans
  (``j60hrs.sm``, ``j120hrs.sm``), and how many best-known makespans are reached;
* wall and CPU time per instance (the schedule call), schedules generated, and how
  many schedules the tool itself proves optimal (makespan = its lower bound).

The load average is printed before and after: the machine may be shared. Exit status
0 when the targets that apply to the sets run are met (J30 < 0.1% from optimal,
J120 < 32% from the critical path, at most the time limit plus 0.25 s per instance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "benchmarks" / "psplib"
SETS = ("j30", "j60", "j120")
REFERENCE = {"j30": "j30opt.sm", "j60": "j60hrs.sm", "j120": "j120hrs.sm"}
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)")


@dataclass
class Instance:
    name: str
    parameter: int
    number: int
    duration: list[int]  # real jobs only
    successors: list[list[int]]  # indices into the real jobs
    demand: list[list[int]]
    capacity: list[int]
    mpm: int  # the file's critical-path length


@dataclass
class Outcome:
    name: str
    cpm: int
    reference: int
    single: int
    makespan: int
    lower_bound: float
    optimal: bool
    method: str
    stopped: str
    schedules: int
    wall_s: float
    cpu_s: float


def parse_sm(path: Path) -> Instance:
    """A single-mode PSPLIB file (jobs 1 and n+2 are the dummy source and sink)."""
    text = path.read_text(encoding="latin-1")
    lines = text.splitlines()
    jobs = int(re.search(r"jobs \(incl\. supersource/sink \):\s*(\d+)", text).group(1))  # type: ignore[union-attr]
    mpm = 0
    successors: dict[int, list[int]] = {}
    duration: dict[int, int] = {}
    demand: dict[int, list[int]] = {}
    capacity: list[int] = []
    section = ""
    for i, line in enumerate(lines):
        if line.startswith("PROJECT INFORMATION"):
            mpm = int(lines[i + 2].split()[5])
        elif line.startswith("PRECEDENCE RELATIONS"):
            section = "prec"
        elif line.startswith("REQUESTS/DURATIONS"):
            section = "req"
        elif line.startswith("RESOURCEAVAILABILITIES"):
            capacity = [int(x) for x in lines[i + 2].split()]
            section = ""
        elif line.startswith("*"):
            continue
        else:
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue
            job = int(parts[0])
            if section == "prec":
                successors[job] = [int(x) for x in parts[3 : 3 + int(parts[2])]]
            elif section == "req":
                duration[job] = int(parts[2])
                demand[job] = [int(x) for x in parts[3:]]
    real = list(range(2, jobs))  # jobs 2 .. n+1
    index = {job: k for k, job in enumerate(real)}
    parameter, number = instance_key(path)
    return Instance(
        name=path.name,
        parameter=parameter,
        number=number,
        duration=[duration[j] for j in real],
        successors=[[index[s] for s in successors[j] if s in index] for j in real],
        demand=[demand[j] for j in real],
        capacity=capacity,
        mpm=mpm,
    )


def instance_key(path: Path) -> tuple[int, int]:
    m = re.match(r"j(?:30|60|120)(\d+)_(\d+)\.sm$", path.name)
    assert m is not None, path
    return int(m.group(1)), int(m.group(2))


def references(data: Path, name: str) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for line in (data / "solutions" / REFERENCE[name]).read_text(encoding="latin-1").splitlines():
        m = ROW.match(line)
        if m:
            out[int(m.group(1)), int(m.group(2))] = int(m.group(3))
    return out


def to_plan_data(inst: Instance) -> dict[str, Any]:
    """The instance as a plan: tasks j2.., estimates in seconds, R1..R4 counted."""
    preds: list[list[int]] = [[] for _ in inst.duration]
    for j, succ in enumerate(inst.successors):
        for s in succ:
            preds[s].append(j)
    tasks = []
    for j, d in enumerate(inst.duration):
        task: dict[str, Any] = {"id": f"j{j + 2}", "estimate": d}
        if preds[j]:
            task["needs"] = [f"j{p + 2}" for p in preds[j]]
        units = {f"R{r + 1}": q for r, q in enumerate(inst.demand[j]) if q > 0}
        if units:
            task["resources"] = units
        tasks.append(task)
    return {
        "version": 1,
        "name": inst.name,
        "resources": {f"R{r + 1}": {"capacity": c} for r, c in enumerate(inst.capacity)},
        "phases": [{"id": "project", "milestones": [{"id": "all", "tasks": tasks}]}],
    }


def check(inst: Instance, start: list[int]) -> list[str]:
    """Violations of the instance's precedences and capacities (from the .sm data only)."""
    errors = []
    finish = [s + d for s, d in zip(start, inst.duration, strict=True)]
    for j, succ in enumerate(inst.successors):
        if start[j] < 0:
            errors.append(f"job {j + 2} starts before 0")
        for s in succ:
            if start[s] < finish[j]:
                errors.append(f"job {s + 2} starts before job {j + 2} ends")
    horizon = max(finish, default=0)
    for r, cap in enumerate(inst.capacity):
        use = [0] * (horizon + 1)
        for j, d in enumerate(inst.duration):
            for t in range(start[j], start[j] + d):
                use[t] += inst.demand[j][r]
        over = [t for t, u in enumerate(use) if u > cap]
        if over:
            errors.append(f"R{r + 1} over capacity at t={over[0]} ({use[over[0]]} > {cap})")
    return errors


def run_one(inst: Instance, reference: int, args: argparse.Namespace) -> Outcome:
    from counterpoint.plan import parse_plan, schedule

    plan = parse_plan(json.dumps(to_plan_data(inst)), inst.name + ".json")
    graph = plan.compile()
    single = schedule(graph)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sched = schedule(
        graph,
        time_limit=args.time_limit,
        seed=args.seed,
        optimal=args.optimal,
        stagnation=args.stagnation,
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    for result in (single, sched):
        start = [round(s) for s in result.start_s]
        if any(abs(s - r) > 1e-6 for s, r in zip(result.start_s, start, strict=True)):
            raise SystemExit(f"{inst.name}: a start is not a whole time unit")
        errors = check(inst, start)
        if errors:
            raise SystemExit(f"{inst.name}: infeasible schedule: {errors[:3]}")
        if round(result.makespan_s) != max(
            s + d for s, d in zip(start, inst.duration, strict=True)
        ):
            raise SystemExit(f"{inst.name}: the makespan does not match the schedule")
    return Outcome(
        name=inst.name,
        cpm=inst.mpm,
        reference=reference,
        single=round(single.makespan_s),
        makespan=round(sched.makespan_s),
        lower_bound=sched.lower_bound_s,
        optimal=sched.optimal,
        method=sched.method,
        stopped=sched.stopped,
        schedules=sched.schedules,
        wall_s=wall,
        cpu_s=cpu,
    )


def summarise(name: str, rows: list[Outcome]) -> dict[str, Any]:
    n = len(rows)

    def dev(value: int, ref: int) -> float:
        return 100.0 * (value - ref) / ref

    out: dict[str, Any] = {"set": name, "instances": n}
    for label, pick in (("single", lambda r: r.single), ("search", lambda r: r.makespan)):
        cpm = [dev(pick(r), r.cpm) for r in rows]
        ref = [dev(pick(r), r.reference) for r in rows]
        out[label] = {
            "avg_dev_cpm_pct": sum(cpm) / n,
            "avg_dev_ref_pct": sum(ref) / n,
            "max_dev_ref_pct": max(ref),
            "reached_ref": sum(1 for r in rows if pick(r) <= r.reference),
        }
    out["floor_dev_cpm_pct"] = sum(dev(r.reference, r.cpm) for r in rows) / n
    out["proven_optimal"] = sum(1 for r in rows if r.optimal)
    out["better_than_ref"] = sum(1 for r in rows if r.makespan < r.reference)
    out["wall_avg_s"] = sum(r.wall_s for r in rows) / n
    out["wall_max_s"] = max(r.wall_s for r in rows)
    out["cpu_avg_s"] = sum(r.cpu_s for r in rows) / n
    out["schedules_avg"] = sum(r.schedules for r in rows) / n
    out["stopped"] = {
        k: sum(1 for r in rows if r.stopped == k) for k in sorted({r.stopped for r in rows})
    }
    return out


def show(s: dict[str, Any], time_limit: float) -> None:
    ref = "optimum" if s["set"] == "j30" else "best known"
    a, b = s["single"], s["search"]
    print(f"\n{s['set'].upper()}: {s['instances']} instances, time limit {time_limit:g} s")
    print(f"  {'':24} {'single pass':>12} {'search':>10}")
    for label, key in (
        ("avg dev from CPM bound", "avg_dev_cpm_pct"),
        (f"avg dev from {ref}", "avg_dev_ref_pct"),
        (f"max dev from {ref}", "max_dev_ref_pct"),
    ):
        print(f"  {label:24} {a[key]:11.2f}% {b[key]:9.2f}%")
    print(f"  {ref + ' reached':24} {a['reached_ref']:12d} {b['reached_ref']:10d}")
    print(f"  (the {ref} makespans themselves: {s['floor_dev_cpm_pct']:.2f}% above the CPM bound)")
    print(
        f"  proven optimal by the tool: {s['proven_optimal']}; time per instance: "
        f"avg {s['wall_avg_s']:.2f} s, max {s['wall_max_s']:.2f} s "
        f"(CPU avg {s['cpu_avg_s']:.2f} s); schedules avg {s['schedules_avg']:.0f}; "
        f"stopped: {s['stopped']}"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the psplib folder")
    parser.add_argument("--set", nargs="+", choices=SETS, default=list(SETS), dest="sets")
    parser.add_argument(
        "--limit", type=int, default=0, help="instances per set, spread evenly (0: all)"
    )
    parser.add_argument(
        "--instances", nargs="+", default=[], help="only these files (e.g. j3012_7.sm)"
    )
    parser.add_argument("--time-limit", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimal", action="store_true", help="CP-SAT after the heuristic")
    parser.add_argument(
        "--stagnation",
        type=int,
        default=None,
        help="stop the search after N schedules without improvement (default: the "
        "library's, max(5000, 40 n); 0: never, use the whole time limit)",
    )
    parser.add_argument("--json", type=Path, help="write every instance's outcome and the summary")
    parser.add_argument("--verbose", "-v", action="store_true", help="a line per instance")
    args = parser.parse_args(argv)

    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start"
    )
    summaries = []
    everything: dict[str, list[dict[str, Any]]] = {}
    for name in args.sets:
        files = sorted((args.data / name).glob("*.sm"), key=instance_key)
        if args.instances:
            files = [f for f in files if f.name in args.instances]
        if args.limit and len(files) > args.limit:
            step = len(files) / args.limit
            files = [files[int(i * step)] for i in range(args.limit)]
        if not files:
            continue
        refs = references(args.data, name)
        rows = []
        for k, path in enumerate(files, 1):
            inst = parse_sm(path)
            row = run_one(inst, refs[instance_key(path)], args)
            rows.append(row)
            if args.verbose:
                print(
                    f"{k:4d} {row.name:14} cpm {row.cpm:4d} ref {row.reference:4d} single "
                    f"{row.single:4d} search {row.makespan:4d} lb {row.lower_bound:6.0f} "
                    f"{'opt' if row.optimal else '   '} {row.wall_s:5.2f}s {row.schedules:6d} "
                    f"{row.stopped}",
                    flush=True,
                )
        summary = summarise(name, rows)
        summaries.append(summary)
        everything[name] = [asdict(r) for r in rows]
        show(summary, args.time_limit)
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")

    met = True
    for s in summaries:
        slow = s["wall_max_s"] > args.time_limit + 0.25
        if s["set"] == "j30":
            value = s["search"]["avg_dev_ref_pct"]
            ok = value < 0.1
            print(f"target J30 avg dev from optimum < 0.1%: {value:.3f}% {_met(ok)}")
            met &= ok
        if s["set"] == "j120":
            value = s["search"]["avg_dev_cpm_pct"]
            ok = value < 32.0
            print(f"target J120 avg dev from CPM < 32%: {value:.2f}% {_met(ok)}")
            met &= ok
        if slow:
            took = s["wall_max_s"]
            print(f"{s['set']}: the slowest instance took {took:.2f} s (over the time limit)")
            met = False
    if args.json:
        args.json.write_text(json.dumps({"summary": summaries, "instances": everything}, indent=1))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
