"""The compiled search kernels (numba, ``counterpoint[fast]``) against the pure-Python
decoder: the same schedules, the same children, the same search; every schedule
feasible under the independent checker of ``test_rcpsp``."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rcpsp import assert_solution_feasible

from counterpoint.plan import _sgs_kernels as kernels
from counterpoint.plan.rcpsp import Problem, Search, Solution, _Backend, _Decoder

needs_numba = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed")


def random_problem(rng: random.Random, n: int, agents: bool = False) -> Problem:
    """Up to 3 resources, random precedences, some zero-length activities; with
    ``agents``, two more resources (groups) of which some activities need one of."""
    n_res = rng.randint(1, 3)
    capacity = [rng.randint(1, 6) for _ in range(n_res)]
    alternatives: list[list[int]] = []
    if agents:
        capacity += [rng.randint(1, 2), rng.randint(1, 2)]
        g1, g2 = n_res, n_res + 1
        alternatives = [rng.choice([[g1, g2], [g2, g1], [g1], []]) for _ in range(n)]
    duration = [0 if rng.random() < 0.1 else rng.randint(1, 9) for _ in range(n)]
    preds = [sorted(k for k in range(j) if rng.random() < 3.0 / (j + 2)) for j in range(n)]
    demand = [
        [(r, rng.randint(1, capacity[r])) for r in range(n_res) if rng.random() < 0.5]
        for _ in range(n)
    ]
    return Problem(duration, preds, capacity, demand, alternatives)


def random_lists(problem: Problem, rng: random.Random, count: int) -> np.ndarray:
    """Precedence-feasible activity lists, drawn uniformly among the eligible ones."""
    out = []
    for _ in range(count):
        waiting = [len(ps) for ps in problem.preds]
        eligible = [j for j in range(problem.n) if waiting[j] == 0]
        order = []
        while eligible:
            j = eligible.pop(rng.randrange(len(eligible)))
            order.append(j)
            for s in problem.succs[j]:
                waiting[s] -= 1
                if waiting[s] == 0:
                    eligible.append(s)
        out.append(order)
    return np.array(out, np.int64)


@needs_numba
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 40), st.booleans(), st.sampled_from([1, 4]))
def test_the_kernels_schedule_exactly_like_the_python_decoder(
    seed: int, n: int, agents: bool, rounds: int
) -> None:
    kernels.warm_up()
    rng = random.Random(seed)
    problem = random_problem(rng, n, agents)
    dec = _Decoder(problem)
    fast, slow = _Backend(problem, dec, True), _Backend(problem, dec, False)
    orders = random_lists(problem, rng, 8)
    got = fast.evaluate(orders, rounds)
    want = slow.evaluate(orders, rounds)
    assert got[4] == want[4]  # the passes made
    for a, b in zip(got[:4], want[:4], strict=True):
        assert np.array_equal(a, b)
    if rounds == 1:  # one round is exactly the decoder's justification
        for c in range(len(orders)):
            sol, order = dec.justify(dec.serial(orders[c].tolist()))
            assert sol.start == got[0][c].tolist() and order == got[3][c].tolist()
    for c in range(len(orders)):
        # the plain serial pass too, and every schedule feasible
        sol = dec.serial(orders[c].tolist())
        assert got[2][c] <= sol.makespan
        assert_solution_feasible(problem, sol)
        assert_solution_feasible(
            problem, Solution(got[0][c].tolist(), got[1][c].tolist(), int(got[2][c]))
        )
        assert sorted(got[3][c].tolist()) == list(range(n))


@needs_numba
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 40))
def test_the_kernels_breed_exactly_like_python(seed: int, n: int) -> None:
    kernels.warm_up()
    rng = random.Random(seed)
    problem = random_problem(rng, n)
    dec = _Decoder(problem)
    fast, slow = _Backend(problem, dec, True), _Backend(problem, dec, False)
    pop = random_lists(problem, rng, 5)
    gen = np.random.default_rng(seed)
    m = 12
    mothers = gen.integers(0, 5, m)
    fathers = gen.integers(0, 5, m)
    cuts = np.sort(gen.integers(0, n + 1, size=(m, 2)), axis=1)
    moves = gen.binomial(n, 0.3, size=m)
    draws = gen.random((m, max(1, int(moves.max())), 2))
    starts = fast.evaluate(pop, 1)[0]
    peak = np.where(gen.random(m) < 0.5, gen.random(m), -1.0)
    got = fast.breed(pop, starts, mothers, fathers, cuts, peak, moves, draws)
    want = slow.breed(pop, starts, mothers, fathers, cuts, peak, moves, draws)
    assert np.array_equal(got, want)
    pos = np.empty(n, np.int64)
    for child in got:
        pos[child] = np.arange(n)
        assert all(pos[p] < pos[j] for j in range(n) for p in problem.preds[j])


@needs_numba
@pytest.mark.parametrize("agents", [False, True])
def test_the_search_is_the_same_with_and_without_the_kernels(agents: bool) -> None:
    problem = random_problem(random.Random(11), 60, agents)
    runs = [
        Search(problem, seed=4, population=30, fast=fast).run(max_schedules=3000, time_limit=60)
        for fast in (True, False)
    ]
    assert runs[0].best == runs[1].best
    assert runs[0].elite == runs[1].elite
    assert runs[0].schedules == runs[1].schedules
    assert_solution_feasible(problem, runs[0].best)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.booleans())
def test_every_fast_search_schedule_is_feasible(seed: int, agents: bool) -> None:
    problem = random_problem(random.Random(seed), 45, agents)
    result = Search(problem, seed=seed).run(max_schedules=2000, time_limit=60)
    assert_solution_feasible(problem, result.best)
    again = Search(problem, seed=seed).run(max_schedules=2000, time_limit=60)
    assert again.best == result.best


def test_without_numba_the_search_runs_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    assert not kernels.ready()
    problem = random_problem(random.Random(3), 40)
    search = Search(problem, seed=1)
    assert not search.fast
    assert_solution_feasible(problem, search.run(max_schedules=300).best)
