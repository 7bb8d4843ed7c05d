"""Plan analysis at scale: load, check, critical path and schedule on big generated plans.

Usage::

    python bench/plan_scale.py --sizes 10000 100000 1000000 --format yaml
    python bench/plan_scale.py --sizes 100000 --format yaml json --json results.json

For every size and format the script generates a layered plan file in a temporary
directory (not timed), then runs each measurement in a fresh Python process so that
the peak memory (``ru_maxrss``) belongs to that size alone:

* ``check``     -- :func:`counterpoint.plan.load.check_file`: read, parse, validate
                   with pydantic, plan-wide checks and graph compilation (CPM included);
* ``crit_path`` -- :meth:`Graph.critical_path` on the compiled graph;
* ``schedule``  -- :func:`counterpoint.plan.schedule.schedule` (resource-feasible);
* ``total``     -- the sum of the three, and the child's peak RSS.

Each stage also reports its CPU (process) time and the wall time spent in Python's
cyclic garbage collector (``gc.callbacks``). ``--repeat N`` runs the timed process N
times and keeps the fastest total.

A second fresh process (skip it with ``--no-breakdown``) repeats the load by calling
the internals one by one, to show where ``check`` spends its time: ``read`` (bytes and
UTF-8 decode), ``parse`` (``source.parse_document``), ``validate``
(``Plan.model_validate``), ``checks`` (``checks.check_plan``) and ``compile``
(``Plan.compile(check=False)``). It pauses the cyclic GC from parse to compile, as
``check_file`` does (``--breakdown-gc on`` keeps it running, to show what the collector
costs). ``check_file`` additionally places problems (free when there are none) and pays
the collections deferred by the pause; the breakdown's sum is therefore close to, not
identical with, ``check``.

The script prints whether the issue's targets are met (100k tasks: total < 10 s; 1M
tasks: total < 120 s and peak RSS < 6 GiB) and the growth per 10x of tasks; it exits 1
when a target that applies to the sizes run is missed.

The generated plan (see :func:`generate_plan`):

* tasks in layers of ``--width`` (200) tasks; every task outside the first layer
  ``needs`` 3 distinct tasks of the previous layer, drawn with a seeded RNG;
* 5 phases of 4 milestones each; consecutive layers are grouped evenly into the 20
  milestones, and each milestone is ``after`` the previous milestone of its phase;
* estimates uniform from 10m to 8h (written ``45m`` or ``3h``), priorities mixed
  (10% critical, 25% high, 45% medium, 20% low, always written), one ``requires``
  capability out of 8;
* about 20% of the tasks take one unit of one of 3 counted resources (capacities 4, 8
  and 16);
* 16 agents of capacity 4 with 1 or 2 capabilities each (every capability is covered
  by at least two agents), each with a shell runner, so the plan is warning-free.

YAML is written block style (block mappings and block sequences, the way the format
doc writes a plan); ``--yaml-lists flow`` writes short lists inline instead
(``needs: [t1, t2, t3]``, as in examples/cloud-migration/plan.yaml). JSON is written
with ``indent=2``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WIDTH = 200
PHASES = 5
MILESTONES_PER_PHASE = 4
CAPABILITIES = [
    "analysis",
    "backend",
    "frontend",
    "data",
    "infra",
    "security",
    "testing",
    "docs",
]
RESOURCES = {"db_slots": 4, "build_farm": 8, "api_quota": 16}
AGENTS = 16
AGENT_CAPACITY = 4
PRIORITIES = ["critical", "high", "medium", "low"]
PRIORITY_WEIGHTS = [10, 25, 45, 20]

# Targets from the issue.
TARGET_100K_S = 10.0
TARGET_1M_S = 120.0
TARGET_1M_RSS_BYTES = 6 * 1024**3

STAGES = ("check", "crit_path", "schedule")
BREAKDOWN = ("read", "parse", "validate", "checks", "compile")


# ---------------------------------------------------------------------------
# Plan generation


def _estimate(rng: random.Random) -> str:
    minutes = rng.randint(10, 480)
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def generate_plan(n_tasks: int, *, width: int = WIDTH, seed: int = 1) -> dict[str, Any]:
    """A layered plan of ``n_tasks`` tasks as plain data (see the module docstring)."""
    rng = random.Random(seed)
    agents: dict[str, Any] = {}
    for a in range(AGENTS):
        caps = [CAPABILITIES[a % len(CAPABILITIES)]]
        if a >= len(CAPABILITIES):  # the second half of the agents has two capabilities
            caps.append(CAPABILITIES[(a + 3) % len(CAPABILITIES)])
        agents[f"agent-{a:02d}"] = {
            "capabilities": caps,
            "capacity": AGENT_CAPACITY,
            "runner": {"shell": "worker --task {task_id}"},
        }
    n_layers = max(1, math.ceil(n_tasks / width))
    n_milestones = PHASES * MILESTONES_PER_PHASE
    # layer -> milestone: consecutive layers, spread evenly over the milestones
    milestone_of_layer = [layer * n_milestones // n_layers for layer in range(n_layers)]
    milestone_tasks: list[list[dict[str, Any]]] = [[] for _ in range(n_milestones)]
    resource_names = list(RESOURCES)
    previous: range = range(0)
    for layer in range(n_layers):
        first = layer * width
        current = range(first, min(n_tasks, first + width))
        bucket = milestone_tasks[milestone_of_layer[layer]]
        for i in current:
            task: dict[str, Any] = {"id": f"t{i}", "name": f"Task {i}"}
            if len(previous) > 0:
                picks = rng.sample(previous, min(3, len(previous)))
                task["needs"] = [f"t{j}" for j in picks]
            task["requires"] = [rng.choice(CAPABILITIES)]
            task["priority"] = rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0]
            task["estimate"] = _estimate(rng)
            if rng.random() < 0.2:
                task["resources"] = {rng.choice(resource_names): 1}
            bucket.append(task)
        previous = current
    phases = []
    for p in range(PHASES):
        milestones = []
        for m in range(MILESTONES_PER_PHASE):
            j = p * MILESTONES_PER_PHASE + m
            milestone: dict[str, Any] = {"id": f"p{p + 1}-m{m + 1}", "name": f"Milestone {j + 1}"}
            if m > 0:
                milestone["after"] = [f"p{p + 1}-m{m}"]
            milestone["tasks"] = milestone_tasks[j]
            milestones.append(milestone)
        phases.append({"id": f"phase-{p + 1}", "name": f"Phase {p + 1}", "milestones": milestones})
    return {
        "version": 1,
        "name": f"scale-{n_tasks}",
        "description": f"Generated layered plan: {n_tasks} tasks, {width} per layer",
        "defaults": {"priority": "medium", "retries": 1, "timeout": "12h"},
        "agents": agents,
        "resources": {name: {"capacity": cap} for name, cap in RESOURCES.items()},
        "phases": phases,
    }


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:@/ -]*$")
_DURATION = re.compile(r"^[0-9]+(\.[0-9]+)?[smhdw]$")  # "45m": a string in YAML 1.2 core
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _DURATION.match(text):
        return text
    if _PLAIN.match(text) and text.lower() not in _RESERVED and not text.endswith(" "):
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _is_short_list(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, dict | list) for v in value)


def _is_short_map(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= 3
        and all(not isinstance(v, dict | list) for v in value.values())
    )


def _yaml_lines(value: Any, indent: str, flow: bool) -> Iterator[str]:
    """Block-style YAML for plain data (mappings, sequences, scalars)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _yaml_entry(f"{indent}{_scalar(key)}:", item, indent, flow)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                lines = _yaml_lines(item, indent + "  ", flow)
                first = next(lines)
                yield f"{indent}- {first[len(indent) + 2 :]}"
                yield from lines
            else:
                yield from _yaml_entry(f"{indent}-", item, indent, flow)
    else:
        yield f"{indent}{_scalar(value)}"


def _yaml_entry(head: str, item: Any, indent: str, flow: bool) -> Iterator[str]:
    if isinstance(item, list | dict) and not item:
        yield f"{head} {'[]' if isinstance(item, list) else '{}'}"
    elif flow and _is_short_list(item):
        yield f"{head} [{', '.join(_scalar(v) for v in item)}]"
    elif flow and _is_short_map(item):
        yield f"{head} {{{', '.join(f'{_scalar(k)}: {_scalar(v)}' for k, v in item.items())}}}"
    elif isinstance(item, dict | list):
        yield head
        yield from _yaml_lines(item, indent + "  ", flow)
    else:
        yield f"{head} {_scalar(item)}"


def write_plan(data: dict[str, Any], path: Path, fmt: str, *, flow_lists: bool = False) -> None:
    with path.open("w", encoding="utf-8") as out:
        if fmt == "json":
            json.dump(data, out, indent=2)
            out.write("\n")
            return
        out.write(f"# {data['description']}\n")
        chunk: list[str] = []
        for line in _yaml_lines(data, "", flow_lists):
            chunk.append(line)
            if len(chunk) >= 100_000:
                out.write("\n".join(chunk) + "\n")
                chunk.clear()
        if chunk:
            out.write("\n".join(chunk) + "\n")


# ---------------------------------------------------------------------------
# The measuring child (one fresh process per size and format)


def _peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class GcClock:
    """Wall time spent in the cyclic garbage collector (via ``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.full = 0  # generation-2 collections
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._start
            self.full += info["generation"] == 2


class Stopwatch:
    """Times named stages and the garbage collection inside each."""

    def __init__(self) -> None:
        self.gc = GcClock()
        self.times: dict[str, float] = {}
        self.cpu_times: dict[str, float] = {}
        self.gc_times: dict[str, float] = {}
        self.full_collections: dict[str, int] = {}

    def run(self, name: str, func: Any) -> Any:
        _emit({"stage": name})
        gc0, full0 = self.gc.total, self.gc.full
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = func()
        self.times[name] = time.perf_counter() - t0
        self.cpu_times[name] = time.process_time() - cpu0
        self.gc_times[name] = self.gc.total - gc0
        self.full_collections[name] = self.gc.full - full0
        return result


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def child_stages(path: str) -> dict[str, Any]:
    from counterpoint.plan.load import check_file
    from counterpoint.plan.schedule import schedule

    watch = Stopwatch()
    base_rss = _peak_rss_bytes()
    report = watch.run("check", lambda: check_file(path))
    if not report.ok or report.graph is None:
        first = [p.render() for p in report.errors[:5]]
        raise SystemExit(f"the generated plan does not check: {first}")
    graph = report.graph
    chain = watch.run("crit_path", graph.critical_path)
    sched = watch.run("schedule", lambda: schedule(graph))
    times = dict(watch.times)
    times["total"] = sum(times[s] for s in STAGES)
    gc_times = dict(watch.gc_times)
    gc_times["total"] = sum(gc_times[s] for s in STAGES)
    cpu_times = dict(watch.cpu_times)
    cpu_times["total"] = sum(cpu_times[s] for s in STAGES)
    return {
        "times": times,
        "cpu": cpu_times,
        "gc": gc_times,
        "full_collections": watch.full_collections,
        "peak_rss": _peak_rss_bytes(),
        "import_rss": base_rss,
        "tasks": graph.n_tasks,
        "edges": len(graph.pred),
        "warnings": len(report.warnings),
        "critical_path_tasks": len(chain),
        "critical_path_s": graph.critical_path_s,
        "makespan_s": sched.makespan_s,
    }


def child_breakdown(path: str, *, paused: bool) -> dict[str, Any]:
    """``check_file``'s steps one by one; ``paused``: with the cyclic GC off, as the loader does."""
    from counterpoint.plan.checks import check_plan
    from counterpoint.plan.model import Plan
    from counterpoint.plan.source import parse_document

    # the loader has checked already: compile without checking again where compile can
    no_check = {"check": False} if "check" in inspect.signature(Plan.compile).parameters else {}
    watch = Stopwatch()
    text = watch.run("read", lambda: Path(path).read_bytes().decode("utf-8"))
    if paused:
        gc.disable()
    data, early = watch.run("parse", lambda: parse_document(text, path))
    plan = watch.run("validate", functools.partial(Plan.model_validate, data))
    del data  # the loader frees the raw data before compiling too
    problems = watch.run("checks", lambda: check_plan(plan))
    watch.run("compile", lambda: plan.compile(**no_check))
    gc.enable()
    return {
        "times": watch.times,
        "cpu": watch.cpu_times,
        "gc": watch.gc_times,
        "gc_paused": paused,
        "full_collections": watch.full_collections,
        "peak_rss": _peak_rss_bytes(),
        "problems": len(early) + len(problems),
    }


def run_child(mode: str, path: str) -> None:
    source = _src_fingerprint()
    if mode == "stages":
        result = child_stages(path)
    else:
        result = child_breakdown(path, paused=mode == "breakdown-paused")
    # the sources this child imported (changed files mid-run show up as a mismatch)
    result["src_sha256"] = source
    _emit({"result": result})


# ---------------------------------------------------------------------------
# The driver


def _spawn(mode: str, path: Path, on_stage: Any) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        event = json.loads(line)
        if "stage" in event:
            on_stage(event["stage"])
        elif "result" in event:
            result = event["result"]
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"the {mode} child failed on {path} (exit {proc.returncode})")
    return result


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _src_fingerprint() -> str:
    """A digest of the counterpoint modules the measurement imports (no commit to name).

    Other work may edit the sources while a long run goes on: each child reports the
    digest it saw, and the driver warns when the rows disagree.
    """
    import hashlib

    import counterpoint.plan.load
    import counterpoint.plan.schedule  # noqa: F401 - what the children import

    files = sorted(
        Path(str(module.__file__))
        for name, module in list(sys.modules.items())
        if (name == "counterpoint" or name.startswith("counterpoint."))
        and getattr(module, "__file__", None)
    )
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _src_dir() -> str:
    import counterpoint

    return str(Path(counterpoint.__file__).parent)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    versions = {}
    for mod in ("pydantic", "pydantic_core", "yaml", "yaml_rs", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = "?"
    return {
        "loadavg": _loadavg(),
        "src_sha256": _src_fingerprint(),
        "src_dir": _src_dir(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions,
    }


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024**2:,.0f} MiB"


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts = []
    for r in results:
        total, rss = r["times"]["total"], r["peak_rss"]
        if r["size"] == 100_000:
            verdicts.append(
                {
                    "size": r["size"],
                    "format": r["format"],
                    "target": f"check + critical path + schedule < {TARGET_100K_S:g} s",
                    "value": f"{total:.2f} s",
                    "met": total < TARGET_100K_S,
                }
            )
        elif r["size"] == 1_000_000:
            verdicts.append(
                {
                    "size": r["size"],
                    "format": r["format"],
                    "target": f"total < {TARGET_1M_S:g} s",
                    "value": f"{total:.2f} s",
                    "met": total < TARGET_1M_S,
                }
            )
            verdicts.append(
                {
                    "size": r["size"],
                    "format": r["format"],
                    "target": "peak RSS < 6 GiB",
                    "value": _fmt_bytes(rss),
                    "met": rss < TARGET_1M_RSS_BYTES,
                }
            )
    return verdicts


def growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Time ratio between consecutive sizes of one format, scaled to a 10x step.

    1.0 x 10 = 10 means linear; the ``exponent`` is log(time ratio) / log(size ratio)
    (1.0 = linear, 2.0 = quadratic).
    """
    out = []
    by_format: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_format.setdefault(r["format"], []).append(r)
    for fmt, rows in by_format.items():
        rows = sorted(rows, key=lambda r: r["size"])
        for small, big in itertools.pairwise(rows):
            size_ratio = big["size"] / small["size"]
            entry: dict[str, Any] = {"format": fmt, "from": small["size"], "to": big["size"]}
            keys = [*STAGES, "total"] + [k for k in BREAKDOWN if k in big.get("breakdown", {})]
            for key in keys:
                a = small["times"].get(key, small.get("breakdown", {}).get(key))
                b = big["times"].get(key, big.get("breakdown", {}).get(key))
                if a and b and a > 0:
                    exponent = math.log(b / a) / math.log(size_ratio)
                    entry[key] = {"ratio_per_10x": 10**exponent, "exponent": exponent}
            rss_ratio = big["peak_rss"] / small["peak_rss"]
            entry["peak_rss"] = {"ratio": rss_ratio}
            out.append(entry)
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--format", nargs="+", choices=["yaml", "json"], default=["yaml"])
    parser.add_argument("--width", type=int, default=WIDTH, help="tasks per layer (200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--yaml-lists",
        choices=["block", "flow"],
        default="block",
        help="block: '- t1' lines (default); flow: 'needs: [t1, t2, t3]' as in the example plan",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the timed stages N times (fresh process each) and keep the fastest total",
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the check breakdown")
    parser.add_argument(
        "--breakdown-gc",
        choices=["paused", "on"],
        default="paused",
        help="run the breakdown with the cyclic GC paused, as check_file does (default), or on",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the results as JSON to PATH (or stdout; the display then goes to stderr)",
    )
    parser.add_argument("--keep", metavar="DIR", help="write the plan files here and keep them")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class _Display:
    """The rich progress bars: one overall, one per size and format."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress = progress
        self.overall = progress.add_task("all sizes", total=total)
        self.bar: Any = None
        self.label = ""
        self.current: str | None = None

    def start(self, label: str, total: int) -> None:
        self.label, self.current = label, None
        self.bar = self.progress.add_task(f"{label}: generate", total=total)

    def stage(self, name: str) -> None:
        """A child started stage ``name``: the previous one is done."""
        self.finish_stage()
        self.current = name
        self.progress.update(self.bar, description=f"{self.label}: {name}")

    def finish_stage(self) -> None:
        if self.current is not None:
            self.progress.update(self.bar, advance=1)
            self.progress.advance(self.overall)
        self.current = None

    def done(self, text: str) -> None:
        self.finish_stage()
        self.progress.update(self.bar, description=f"{self.label}: {text}")


def measure(args: argparse.Namespace, console: Any) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    results: list[dict[str, Any]] = []
    jobs = [(size, fmt) for size in sorted(args.sizes) for fmt in args.format]
    per_job = 1 + len(STAGES) * args.repeat + (0 if args.no_breakdown else len(BREAKDOWN))
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with (
        tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp,
        Progress(*columns, console=console) as progress,
    ):
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        display = _Display(progress, len(jobs) * per_job)
        for size, fmt in jobs:
            display.start(f"{size:>9,} {fmt}", per_job)
            display.stage("generate")
            t0 = time.perf_counter()
            path = workdir / f"plan-{size}.{fmt}"
            data = generate_plan(size, width=args.width, seed=args.seed)
            write_plan(data, path, fmt, flow_lists=args.yaml_lists == "flow")
            del data
            row: dict[str, Any] = {
                "size": size,
                "format": fmt,
                "file_bytes": path.stat().st_size,
                "generate_s": time.perf_counter() - t0,
            }
            runs = [_spawn("stages", path, display.stage) for _ in range(args.repeat)]
            row.update(min(runs, key=lambda r: r["times"]["total"]))
            row["runs_total"] = [r["times"]["total"] for r in runs]
            if not args.no_breakdown:
                mode = "breakdown-paused" if args.breakdown_gc == "paused" else "breakdown-gc-on"
                sub = _spawn(mode, path, display.stage)
                row["breakdown"] = sub["times"]
                row["breakdown_cpu"] = sub["cpu"]
                row["breakdown_gc"] = sub["gc"]
                row["breakdown_peak_rss"] = sub["peak_rss"]
                row["breakdown_gc_paused"] = sub["gc_paused"]
            display.done(f"done ({_fmt_s(row['times']['total'])})")
            results.append(row)
            if not args.keep:
                path.unlink()
    return results


def _print_tables(console: Any, results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="Plan analysis at scale (wall time per stage, fresh process per row)")
    columns = (
        "tasks",
        "format",
        "file",
        "check",
        "crit path",
        "schedule",
        "total",
        "CPU",
        "of it GC",
    )
    for col in (*columns, "peak RSS"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        t = r["times"]
        gc_total = r["gc"]["total"]
        table.add_row(
            f"{r['size']:,}",
            r["format"],
            _fmt_bytes(r["file_bytes"]),
            _fmt_s(t["check"]),
            _fmt_s(t["crit_path"]),
            _fmt_s(t["schedule"]),
            _fmt_s(t["total"]),
            _fmt_s(r["cpu"]["total"]),
            f"{_fmt_s(gc_total)} ({100 * gc_total / t['total']:.0f}%)",
            _fmt_bytes(r["peak_rss"]),
        )
    console.print(table)
    if not any("breakdown" in r for r in results):
        return
    sub = Table(
        title="check_file step by step (fresh process; cyclic GC "
        f"{'paused as check_file does' if results[0].get('breakdown_gc_paused') else 'on'}): "
        "time (share of it in GC)"
    )
    for col in ("tasks", "format", *BREAKDOWN, "sum"):
        sub.add_column(col, justify="right", no_wrap=True)
    for r in results:
        if "breakdown" not in r:
            continue
        b, g = r["breakdown"], r["breakdown_gc"]
        cells = [f"{_fmt_s(b[k])} ({100 * g[k] / b[k]:.0f}%)" if b[k] else "-" for k in BREAKDOWN]
        total, gc_total = sum(b.values()), sum(g.values())
        sum_cell = f"{_fmt_s(total)} ({100 * gc_total / total:.0f}%)"
        sub.add_row(f"{r['size']:,}", r["format"], *cells, sum_cell)
    console.print(sub)


def _print_verdicts(
    console: Any, verdicts: list[dict[str, Any]], grow: list[dict[str, Any]]
) -> None:
    for v in verdicts:
        mark = "[green]met[/]" if v["met"] else "[red]NOT met[/]"
        console.print(f"{v['size']:>9,} {v['format']}: {v['target']}: {v['value']} -> {mark}")
    for g in grow:
        parts = ", ".join(f"{k} x{g[k]['ratio_per_10x']:.1f}" for k in (*STAGES, "total") if k in g)
        console.print(
            f"growth per 10x {g['format']} {g['from']:,} -> {g['to']:,}: {parts}, "
            f"peak RSS x{g['peak_rss']['ratio']:.1f} (linear = x10.0)"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        run_child(*args.child)
        return 0

    from rich.console import Console

    console = Console(stderr=args.json == "-")
    if not console.is_terminal:  # rich assumes 80 columns when piped; the tables need more
        console.width = max(console.width, 140)
    info = machine_info()
    console.print(
        f"[bold]Plan analysis at scale[/] - {info['nproc']} cores, {info['cpu']}, "
        f"{info['memory']}, Python {info['python']}, load average {info['loadavg']}"
    )
    console.print(f"sources: {info['src_dir']} (imported modules' digest {info['src_sha256']})")
    results = measure(args, console)
    _print_tables(console, results)
    verdicts = targets(results)
    grow = growth(results)
    _print_verdicts(console, verdicts, grow)
    info["loadavg_after"] = _loadavg()
    measured = {r["src_sha256"] for r in results}
    if measured != {info["src_sha256"]}:
        console.print(
            "[yellow]warning: the counterpoint sources changed during the run "
            f"({', '.join(sorted(measured | {info['src_sha256']}))}): rows are not comparable[/]"
        )
    if args.json:
        doc = {
            "machine": info,
            "command": " ".join(["python", "bench/plan_scale.py", *sys.argv[1:]]),
            "width": args.width,
            "seed": args.seed,
            "yaml_lists": args.yaml_lists,
            "repeat": args.repeat,
            "results": results,
            "targets": verdicts,
            "growth": grow,
        }
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if all(v["met"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
