"""Exact scheduling with OR-Tools CP-SAT (the optional extra ``counterpoint[optimize]``).

The model is the RCPSP of :mod:`counterpoint.plan.problem`: one fixed-size interval
per activity, its precedences, one cumulative constraint per resource (counted
resources, ``max_concurrency``, agent groups). A task that several agent groups can
run gets one optional interval per group and exactly one of them is present. The
makespan is minimised, starting from the heuristic's schedule (a hint and an upper
bound), so the answer is never worse than the heuristic's; CP-SAT also proves a lower
bound, and optimality when the two meet.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from counterpoint.plan.rcpsp import Problem, Solution

INSTALL_HINT = "pip install 'counterpoint[optimize]' (OR-Tools)"


class NoSolver(RuntimeError):
    """OR-Tools is not installed."""


def available() -> bool:
    try:
        import ortools.sat.python.cp_model  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class CpSatResult:
    solution: Solution | None  # None when CP-SAT found nothing better than the hint
    lower_bound: int
    proven: bool
    status: str


def solve(
    problem: Problem,
    *,
    time_limit: float,
    hint: Solution,
    seed: int = 0,
    workers: int = 0,
) -> CpSatResult:
    """Minimise the makespan within ``time_limit`` seconds, from ``hint``."""
    try:
        from ortools.sat.python import cp_model
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise NoSolver(f"--optimal needs OR-Tools: {INSTALL_HINT}") from exc

    built = _Model(problem, hint)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit)
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = workers or max(1, min(8, os.cpu_count() or 1))
    status = solver.solve(built.model)
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpSatResult(None, 0, False, name)
    bound = math.ceil(solver.best_objective_bound - 1e-6)
    proven = status == cp_model.OPTIMAL
    if round(solver.objective_value) >= hint.makespan:
        return CpSatResult(None, bound, proven, name)
    n = problem.n
    starts = [int(solver.value(built.start[j])) for j in range(n)]
    choice = [-1] * n
    for (j, g), lit in built.presence.items():
        if solver.boolean_value(lit):
            choice[j] = g
    for j in range(n):
        if problem.alternatives[j] and choice[j] < 0:
            choice[j] = problem.alternatives[j][0]
    makespan = max((starts[j] + problem.duration[j] for j in range(n)), default=0)
    return CpSatResult(Solution(starts, choice, makespan), bound, proven, name)


class _Model:
    """The CP-SAT model of ``problem`` with the makespan bounded by the hint's."""

    def __init__(self, problem: Problem, hint: Solution) -> None:
        from ortools.sat.python import cp_model

        self.model = model = cp_model.CpModel()
        dur = problem.duration
        horizon = hint.makespan
        self.start = [
            model.new_int_var(0, max(0, horizon - dur[j]), f"s{j}") for j in range(problem.n)
        ]
        self.presence: dict[tuple[int, int], Any] = {}
        for j, preds in enumerate(problem.preds):
            for q in preds:
                model.add(self.start[j] >= self.start[q] + dur[q])
        usage: list[list[tuple[Any, int]]] = [[] for _ in problem.capacity]
        for j in range(problem.n):
            if dur[j] > 0:
                self._intervals(problem, j, usage)
        for r, items in enumerate(usage):
            if sum(q for _, q in items) > problem.capacity[r]:
                model.add_cumulative(
                    [i for i, _ in items], [q for _, q in items], problem.capacity[r]
                )
        makespan = model.new_int_var(0, horizon, "makespan")
        ends = [self.start[j] + dur[j] for j in range(problem.n) if not problem.succs[j]]
        if ends:
            model.add_max_equality(makespan, ends)
        model.minimize(makespan)
        for j in range(problem.n):
            model.add_hint(self.start[j], hint.start[j])
        for (j, g), lit in self.presence.items():
            model.add_hint(lit, hint.choice[j] == g)

    def _intervals(self, problem: Problem, j: int, usage: list[list[tuple[Any, int]]]) -> None:
        model, start, d = self.model, self.start[j], problem.duration[j]
        interval = model.new_fixed_size_interval_var(start, d, f"i{j}")
        for r, q in problem.demand[j]:
            usage[r].append((interval, q))
        lits = []
        for g in problem.alternatives[j]:
            lit = model.new_bool_var(f"p{j}_{g}")
            usage[g].append(
                (model.new_optional_fixed_size_interval_var(start, d, lit, f"o{j}_{g}"), 1)
            )
            self.presence[j, g] = lit
            lits.append(lit)
        if lits:
            model.add_exactly_one(lits)
