"""The schedule search: hand-checked optima, feasibility on random plans, determinism,
lower bounds and CP-SAT.

Every plan-level schedule is checked by the independent checker of ``test_schedule``
(:func:`assert_feasible`); RCPSP-level solutions by :func:`assert_solution_feasible`, written here
from the problem's definition without the scheduler's code.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import random_plan_data
from test_schedule import EXAMPLE, H, agent, assert_feasible, make_plan, task

from counterpoint.plan import Plan, check_file, parse_plan, schedule
from counterpoint.plan.bounds import lower_bound
from counterpoint.plan.cpsat import solve
from counterpoint.plan.problem import build, step_of
from counterpoint.plan.rcpsp import Problem, Search, Solution, single_pass

EPS = 1e-6


# ---------------------------------------------------------------------------
# An independent checker for RCPSP solutions


def assert_solution_feasible(problem: Problem, sol: Solution) -> None:
    n = len(problem.duration)
    ends = [sol.start[j] + problem.duration[j] for j in range(n)]
    assert sol.makespan == max(ends, default=0)
    for j in range(n):
        assert sol.start[j] >= 0
        for p in problem.preds[j]:
            assert sol.start[j] >= ends[p], f"{j} starts before its predecessor {p} ends"
    events = sorted({s for s in sol.start} | set(ends))
    for at in events:
        use = [0] * len(problem.capacity)
        for j in range(n):
            if problem.duration[j] and sol.start[j] <= at < ends[j]:
                for r, q in problem.demand[j]:
                    use[r] += q
                if problem.alternatives[j]:
                    assert sol.choice[j] in problem.alternatives[j]
                    use[sol.choice[j]] += 1
        for r, cap in enumerate(problem.capacity):
            assert use[r] <= cap, f"resource {r} holds {use[r]} > {cap} at {at}"


def brute_force_optimum(problem: Problem) -> int:
    """The shortest makespan over every start vector on a small grid (tiny problems)."""
    n = len(problem.duration)
    horizon = sum(problem.duration)
    best = horizon
    starts = [0] * n

    def ok(upto: int) -> bool:
        j = upto
        for p in problem.preds[j]:
            if p < j and starts[j] < starts[p] + problem.duration[p]:
                return False
        for r, cap in enumerate(problem.capacity):
            for at in range(starts[j], starts[j] + problem.duration[j]):
                held = sum(
                    q
                    for k in range(j + 1)
                    if problem.duration[k] and starts[k] <= at < starts[k] + problem.duration[k]
                    for rr, q in problem.demand[k]
                    if rr == r
                )
                if held > cap:
                    return False
        return True

    def place(j: int) -> None:
        nonlocal best
        if j == n:
            best = min(best, max(starts[k] + problem.duration[k] for k in range(n)))
            return
        for s in range(horizon - problem.duration[j] + 1):
            if s + problem.duration[j] >= best:
                break
            starts[j] = s
            if ok(j):
                place(j + 1)

    place(0)
    return best


# ---------------------------------------------------------------------------
# Hand-checked optima


def trap() -> Plan:
    """One priority-rule pass takes 10h; the optimum is 7h.

    The lock has 2 units. t0 (2h) and t1 (1h) take both, t3 (4h) takes one, so t3
    overlaps neither: the lock is busy 2 + 1 + 4 = 7h one task after the other, a
    lower bound that t0, t1, t3 in a row (with t2 after t1, beside t3) reaches. The
    single pass starts t3 at 2h (its latest start ties with t1's and it was ready
    first), which holds t1 until 6h and t2 until 7h.
    """
    return make_plan(
        task("t0", 2, resources={"lock": 2}),
        task("t1", 1, "t0", resources={"lock": 2}),
        task("t2", 3, "t1"),
        task("t3", 4, resources={"lock": 1}),
        resources={"lock": {"capacity": 2}},
    )


def starts_h(result: Any) -> dict[str, float]:
    return {t: s / H for t, s in zip(result.task_ids, result.start_s, strict=True)}


def test_the_single_pass_falls_into_the_trap() -> None:
    plan = trap()
    result = schedule(plan.compile())
    assert_feasible(plan, result)
    assert result.makespan_s == 10 * H
    assert result.method == "priority-rule" and result.schedules == 0


def test_the_search_finds_the_hand_checked_optimum() -> None:
    plan = trap()
    result = schedule(plan.compile(), max_schedules=500)
    assert_feasible(plan, result)
    assert result.makespan_s == 7 * H
    assert starts_h(result) == {"t0": 0.0, "t1": 2.0, "t2": 3.0, "t3": 3.0}
    assert result.method == "genetic"
    assert result.lower_bound_s == 6 * H  # the critical path; the 7h bound needs CP-SAT
    assert not result.optimal


def test_cp_sat_proves_the_hand_checked_optimum() -> None:
    plan = trap()
    result = schedule(plan.compile(), time_limit=10, optimal=True)
    assert_feasible(plan, result)
    assert result.makespan_s == 7 * H
    assert result.optimal
    assert result.lower_bound_s == 7 * H
    assert result.stopped == "optimal"


def test_cp_sat_improves_a_poor_hint_and_proves_it() -> None:
    # three 1h tasks and one 3h task on a lock of 2 units: optimum 3h
    problem = Problem([1, 1, 1, 3], [[], [], [], []], [2], [[(0, 1)]] * 4)
    poor = Solution([0, 1, 2, 3], [-1] * 4, 6)
    found = solve(problem, time_limit=10, hint=poor)
    assert found.proven and found.lower_bound == 3
    assert found.solution is not None and found.solution.makespan == 3
    assert_solution_feasible(problem, found.solution)


def test_a_schedule_that_meets_the_energy_bound_is_optimal_without_search() -> None:
    plan = make_plan(
        *(task(f"t{i}", 1, resources={"lock": 1}) for i in range(3)),
        resources={"lock": {"capacity": 1}},
    )
    result = schedule(plan.compile(), time_limit=1)
    assert result.lower_bound_s == 3 * H and result.optimal
    assert result.schedules == 0 and result.method == "priority-rule"


def test_agents_with_overlapping_skills_are_shared_optimally() -> None:
    """The generalist must take the build tasks only when the specialist is busy.

    b1, b2 need build (specialist or generalist); t1, t2 (3h each) need test (only the
    generalist). Optimum 6h: t1 and t2 back to back on the generalist, the specialist
    builds both in 2h.
    """
    plan = make_plan(
        task("b1", 1, requires=["build"], priority="critical"),
        task("b2", 1, requires=["build"], priority="critical"),
        task("t1", 3, requires=["test"]),
        task("t2", 3, requires=["test"]),
        agents={"generalist": agent(["build", "test"]), "specialist": agent(["build"])},
    )
    single = schedule(plan.compile())
    result = schedule(plan.compile(), max_schedules=300)
    assert_feasible(plan, result)
    assert single.makespan_s == 7 * H  # critical b1 takes the generalist first
    assert result.makespan_s == 6 * H
    assert result.optimal  # the generalist's 6h of testing is a lower bound
    assert {result.agent[0], result.agent[1]} == {"specialist"}


# ---------------------------------------------------------------------------
# Lower bounds


def test_the_head_tail_bound_beats_the_critical_path() -> None:
    # a (1h) then b, c, d (2h each) on a lock of 1: 1 + 6 = 7h; critical path 3h
    plan = make_plan(
        task("a", 1),
        *(task(x, 2, "a", resources={"lock": 1}) for x in "bcd"),
        resources={"lock": {"capacity": 1}},
    )
    graph = plan.compile()
    assert graph.critical_path_s == 3 * H
    assert lower_bound(graph) == 7 * H


def test_agent_pools_bound_the_makespan() -> None:
    plan = make_plan(
        *(task(f"t{i}", 1, requires=["qa"]) for i in range(5)),
        task("other", 1),
        agents={"qa": agent(["qa"], capacity=2), "any": agent([], capacity=4)},
    )
    assert lower_bound(plan.compile()) == 3 * H  # 5 QA hours on 2 slots, rounded up


def test_steps_are_the_largest_unit_dividing_every_estimate() -> None:
    assert step_of([3600.0, 5400.0, 0.0]) == (1800.0, True)
    assert step_of([10.000000000000002, 20.0]) == (10.0, True)
    step, exact = step_of([1.0, 200_000.0])
    assert step > 1.0 and not exact  # too many steps: coarser, rounded up


# ---------------------------------------------------------------------------
# Feasibility on random plans and random problems


PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(random_plan_data(), st.integers(0, 3))
def test_every_searched_schedule_is_feasible_and_no_worse(data: dict[str, Any], seed: int) -> None:
    plan = parse_plan(__import__("json").dumps(data), "plan.json")
    graph = plan.compile()
    single = schedule(graph)
    result = schedule(graph, max_schedules=120, seed=seed)
    assert_feasible(plan, result)
    assert result.makespan_s <= single.makespan_s + EPS
    assert result.makespan_s >= result.lower_bound_s - EPS
    assert result.lower_bound_s >= graph.critical_path_s - EPS
    if result.latest_start_s is not None:
        for t in range(graph.n_tasks):
            assert result.latest_start_s[t] >= result.start_s[t] - EPS
            assert result.latest_start_s[t] + graph.duration[t] <= result.makespan_s + EPS


@st.composite
def problems(draw: st.DrawFn, max_n: int = 9) -> Problem:
    n = draw(st.integers(1, max_n))
    n_res = draw(st.integers(1, 3))
    capacity = [draw(st.integers(1, 4)) for _ in range(n_res)]
    duration = [draw(st.integers(0, 4)) for _ in range(n)]
    preds = [
        sorted(draw(st.sets(st.integers(0, j - 1), max_size=2))) if j else [] for j in range(n)
    ]
    demand = []
    for _ in range(n):
        rs = draw(st.sets(st.integers(0, n_res - 1), max_size=n_res))
        demand.append([(r, draw(st.integers(1, capacity[r]))) for r in sorted(rs)])
    return Problem(duration, preds, capacity, demand)


@settings(max_examples=80, deadline=None)
@given(problems(), st.integers(0, 5))
def test_every_solution_of_a_random_problem_is_feasible(problem: Problem, seed: int) -> None:
    assert_solution_feasible(problem, single_pass(problem))
    result = Search(problem, seed=seed).run(max_schedules=90, time_limit=30)
    assert_solution_feasible(problem, result.best)


@settings(max_examples=25, deadline=None)
@given(problems(max_n=5))
def test_the_search_reaches_the_optimum_of_tiny_problems(problem: Problem) -> None:
    result = Search(problem, seed=1).run(max_schedules=400, time_limit=30)
    assert_solution_feasible(problem, result.best)
    assert result.best.makespan == brute_force_optimum(problem)


def test_agent_groups_are_never_overbooked() -> None:
    rng = random.Random(7)
    for _ in range(20):
        n = 12
        capacity = [2, 1, 1]  # resource 0; groups 1 and 2
        demand = [[(0, 1)] if rng.random() < 0.5 else [] for _ in range(n)]
        alternatives = [rng.choice([[1, 2], [2, 1], []]) for _ in range(n)]
        preds = [[k for k in range(j) if rng.random() < 0.15] for j in range(n)]
        problem = Problem(
            [rng.randint(1, 3) for _ in range(n)], preds, capacity, demand, alternatives
        )
        assert_solution_feasible(problem, Search(problem, seed=3).run(max_schedules=150).best)


# ---------------------------------------------------------------------------
# Determinism and the flagship


def test_the_same_seed_gives_the_same_schedule() -> None:
    graph = check_file(EXAMPLE).graph
    assert graph is not None
    first = schedule(graph, max_schedules=600, seed=5)
    again = schedule(check_file(EXAMPLE).graph, max_schedules=600, seed=5)  # type: ignore[arg-type]
    assert first == again
    assert first.schedules == again.schedules


def test_the_flagship_search_is_feasible_and_shorter() -> None:
    report = check_file(EXAMPLE)
    assert report.plan is not None and report.graph is not None
    single = schedule(report.graph)
    result = schedule(report.graph, time_limit=5, seed=0)
    assert_feasible(report.plan, result)
    assert result.makespan_s < single.makespan_s
    assert result.stopped in ("stagnation", "lower bound")  # well within 5 s
    assert result == schedule(report.graph, time_limit=5, seed=0)


def test_rate_limits_that_bind_keep_a_feasible_schedule() -> None:
    plan = make_plan(
        *(task(f"t{i}", 0.01, resources={"api": 1}) for i in range(4)),
        resources={"api": {"rate": 1, "per": "1m"}},
    )
    pp = build(plan.compile())
    assert pp is not None and pp.rate_limited == ["api"]
    result = schedule(plan.compile(), max_schedules=100)
    assert_feasible(plan, result)


def test_plans_beyond_the_model_keep_the_single_pass() -> None:
    # the trap again, with 300 units that no common divisor brings under 256
    plan = make_plan(
        task("t0", 2, resources={"lock": 300}),
        task("t1", 1, "t0", resources={"lock": 300}),
        task("t2", 3, "t1"),
        task("t3", 4, resources={"lock": 151}),
        resources={"lock": {"capacity": 300}},
    )
    result = schedule(plan.compile(), max_schedules=100)
    assert result.stopped == "not supported"
    assert result.makespan_s == 10 * H and result.method == "priority-rule"
    assert_feasible(plan, result)
