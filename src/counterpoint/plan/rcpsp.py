"""A heuristic for the resource-constrained project scheduling problem (RCPSP).

The problem (:class:`Problem`): activities with integer durations and
finish-to-start precedences, renewable resources of constant capacity, and per
activity the units it holds of each resource while it runs. An activity may also
need one unit of *one of* a list of alternative resources (the groups of agents able
to run it); which one is chosen while scheduling. Minimise the makespan.

Methods, all on the same time-indexed resource profiles:

* **serial schedule generation** (SGS): activities in the order of an *activity
  list* (a precedence-feasible permutation), each at its earliest precedence- and
  resource-feasible start;
* **parallel schedule generation**: time advances from one finish to the next and the
  eligible activities start in priority order while they fit (non-delay schedules);
* **priority rules** for both schemes: latest finish (LFT), latest start (LST),
  minimum slack (MSLK), most total successors (MTS), greatest rank positional weight
  (GRPW), shortest processing time (SPT), and regret-based biased random sampling;
* **forward-backward improvement** (justification, Tormos & Lova 2001, Valls et al.
  2005): every activity right-justified in the order of its finish, then
  left-justified again in the order of its new start; never worse, usually better;
* a **genetic algorithm over activity lists** (Hartmann 1998) with two crossovers
  (Hartmann's two-point crossover, and a *peak crossover* after Valls, Ballestín and
  Quintanilla 2008 that keeps the mother's most resource-dense interval),
  precedence-preserving shift mutation, tournament selection, every child justified
  and written back in the order of its improved schedule (Lamarckian), and
  duplicate-free elitist replacement; it restarts from the best schedules whenever
  it stagnates.

Resource profiles are ``bytearray``s (free units per time unit), so finding the
earliest start of an activity is a ``bytes.translate`` into a 0/1 mask and a
``bytes.find`` of ``d`` ones: C loops instead of Python ones. Capacities must be
below 256 (:data:`MAX_CAPACITY`); the caller checks it. When numba is installed
(``counterpoint[fast]``), the genetic algorithm breeds and evaluates its children with
the compiled kernels of :mod:`counterpoint.plan._sgs_kernels` instead, about 15 times
faster, with exactly the same results for the same random draws (the search's
defaults, population and stagnation limit, are larger with them).

Everything is deterministic for a given seed; only where the search stops depends
on the clock when it stops on its time limit.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

MAX_CAPACITY = 255

_GE = [bytes(1 if v >= q else 0 for v in range(256)) for q in range(256)]
_SUB = [bytes((v - q) % 256 for v in range(256)) for q in range(256)]
_ONES = [b"\x01" * d for d in range(256)]


def _ones(d: int) -> bytes:
    return _ONES[d] if d < 256 else b"\x01" * d


@dataclass
class Problem:
    """An RCPSP instance in integer time units.

    ``demand[j]`` lists ``(resource, units)`` pairs with ``0 < units <= capacity``;
    ``alternatives[j]`` lists resources of which activity ``j`` needs one unit of one
    (empty: none), best first. Activities of duration 0 hold nothing.
    """

    duration: list[int]
    preds: list[list[int]]
    capacity: list[int]
    demand: list[list[tuple[int, int]]]
    alternatives: list[list[int]] = field(default_factory=list)
    succs: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.duration)
        if not self.alternatives:
            self.alternatives = [[] for _ in range(n)]
        self.succs = [[] for _ in range(n)]
        for j, ps in enumerate(self.preds):
            for p in ps:
                self.succs[p].append(j)
        if any(c > MAX_CAPACITY for c in self.capacity):
            raise ValueError(f"capacities above {MAX_CAPACITY} are not supported")

    @property
    def n(self) -> int:
        return len(self.duration)


@dataclass
class Solution:
    """Start times (and the alternative chosen per activity, -1 for none)."""

    start: list[int]
    choice: list[int]
    makespan: int


@dataclass
class SearchResult:
    best: Solution
    schedules: int  # schedule-generation passes made
    generations: int
    stopped: str  # "lower bound", "stagnation", "time limit", "budget"
    elite: list[list[int]]  # the best activity lists found, best first


# ---------------------------------------------------------------------------
# Schedule generation


class _Decoder:
    """Serial and parallel schedule generation for one problem (precomputed tables)."""

    def __init__(self, problem: Problem) -> None:
        self.p = problem
        n = problem.n
        self.horizon = sum(problem.duration) + 1
        self.req = [
            [(r, q, _GE[q], _SUB[q]) for r, q in problem.demand[j] if q > 0] for j in range(n)
        ]
        self.alts = [list(a) for a in problem.alternatives]
        self.templates = [bytes([c]) * self.horizon for c in problem.capacity]
        self.pats = [_ones(d) for d in problem.duration]
        self.preds_t = [tuple(ps) for ps in problem.preds]
        # ties in time go in topological order, so lists built from times stay feasible
        self.rank = [0] * n
        for i, j in enumerate(topological_order(problem)):
            self.rank[j] = i
        self.succs_t = [tuple(ss) for ss in problem.succs]

    def serial(  # noqa: C901 - the hot loop, kept in one piece for speed
        self, order: Sequence[int], backward: bool = False
    ) -> Solution:
        """Serial SGS over ``order``; ``backward`` schedules the reversed network."""
        p = self.p
        preds = self.succs_t if backward else self.preds_t
        dur = p.duration
        req, alts, pats = self.req, self.alts, self.pats
        free = [bytearray(t) for t in self.templates]
        n = p.n
        fin = [0] * n
        st = [0] * n
        ch = [-1] * n
        top = 0
        ge1, sub1 = _GE[1], _SUB[1]
        get = fin.__getitem__
        for j in order:
            pj = preds[j]
            es = max(map(get, pj)) if pj else 0
            d = dur[j]
            al = alts[j]
            if d == 0:
                st[j] = fin[j] = es
                if al:
                    ch[j] = al[0]
                continue
            rq = req[j]
            if es >= top:
                t = es
                if al:
                    ch[j] = al[0]
            elif not al:
                end = top + d
                pat = pats[j]
                if len(rq) == 1:
                    r, _, ge, _ = rq[0]
                    t = es + free[r][es:end].translate(ge).find(pat)
                else:
                    t = es + _fit([free[r][es:end].translate(ge) for r, _, ge, _ in rq], pat)
            else:
                end = top + d
                pat = pats[j]
                masks = [free[r][es:end].translate(ge) for r, _, ge, _ in rq]
                t = end
                for g in al:
                    tg = es + _fit([*masks, free[g][es:end].translate(ge1)], pat)
                    if tg < t:
                        t, ch[j] = tg, g
                        if tg == es:
                            break
            f = t + d
            for r, _, _, sub in rq:
                fr = free[r]
                fr[t:f] = fr[t:f].translate(sub)
            if al:
                fr = free[ch[j]]
                fr[t:f] = fr[t:f].translate(sub1)
            st[j] = t
            fin[j] = f
            if f > top:
                top = f
        return Solution(st, ch, top)

    def parallel(  # noqa: C901 - the hot loop, kept in one piece for speed
        self, priority: Sequence[float]
    ) -> Solution:
        """Parallel SGS: at each finish time, start eligible activities by lowest priority."""
        p = self.p
        n = p.n
        dur, preds, succs = p.duration, p.preds, p.succs
        req, alts = self.req, self.alts
        free = [bytearray(t) for t in self.templates]
        waiting = [len(ps) for ps in preds]
        eligible = [j for j in range(n) if waiting[j] == 0]
        st = [0] * n
        ch = [-1] * n
        finishing: dict[int, list[int]] = {}
        now = 0
        done = 0
        top = 0
        sub1 = _SUB[1]
        while done < n:
            eligible.sort(key=priority.__getitem__)
            keep: list[int] = []
            for j in eligible:
                d = dur[j]
                al = alts[j]
                g = al[0] if al else -1
                if d > 0:
                    if any(free[r][now] < q for r, q, _, _ in req[j]):
                        keep.append(j)
                        continue
                    if al:
                        g = next((a for a in al if free[a][now] >= 1), -1)
                        if g < 0:
                            keep.append(j)
                            continue
                    f = now + d
                    for r, _, _, sub in req[j]:
                        fr = free[r]
                        fr[now:f] = fr[now:f].translate(sub)
                    if g >= 0:
                        fr = free[g]
                        fr[now:f] = fr[now:f].translate(sub1)
                    if f > top:
                        top = f
                ch[j] = g
                st[j] = now
                finishing.setdefault(now + d, []).append(j)
            eligible = keep
            if not finishing:
                raise ValueError("an activity needs more than a resource's capacity")
            if now not in finishing:
                now = min(finishing)
            for j in finishing.pop(now):
                done += 1
                for s in succs[j]:
                    waiting[s] -= 1
                    if waiting[s] == 0:
                        eligible.append(s)
        return Solution(st, ch, top)

    def justify(self, sol: Solution) -> tuple[Solution, list[int]]:
        """Forward-backward improvement: right-justify, then left-justify again.

        Returns the better of ``sol`` and the result, with the activity list of the
        returned schedule (its activities by start time).
        """
        p = self.p
        dur = p.duration
        n1 = p.n + 1
        rank = self.rank
        start = sol.start
        back_order = sorted(range(p.n), key=lambda j: -(start[j] + dur[j]) * n1 - rank[j])
        back = self.serial(back_order, backward=True)
        # a backward start s' is a forward finish T - s'; sort by -s' - d
        bst = back.start
        fwd_order = sorted(range(p.n), key=lambda j: -(bst[j] + dur[j]) * n1 + rank[j])
        fwd = self.serial(fwd_order)
        if fwd.makespan <= sol.makespan:
            return fwd, fwd_order
        return sol, self.order_of(sol)

    def order_of(self, sol: Solution) -> list[int]:
        """The activity list of a schedule: by start, ties in topological order."""
        n1 = self.p.n + 1
        rank = self.rank
        start = sol.start
        return sorted(range(self.p.n), key=lambda j: start[j] * n1 + rank[j])


def _fit(masks: Sequence[bytes | bytearray], pat: bytes) -> int:
    """The first offset where every mask has ``len(pat)`` ones in a row."""
    t = 0
    moved = True
    while moved:
        moved = False
        for m in masks:
            t2 = m.find(pat, t)
            if t2 != t:
                t = t2
                moved = True
    return t


# ---------------------------------------------------------------------------
# Priority rules


@dataclass
class Cpm:
    es: list[int]
    ls: list[int]
    lf: list[int]
    length: int


def cpm(problem: Problem) -> Cpm:
    """Earliest and latest starts (integer units) by the critical-path method."""
    order = topological_order(problem)
    dur = problem.duration
    es = [0] * problem.n
    for j in order:
        es[j] = max((es[q] + dur[q] for q in problem.preds[j]), default=0)
    length = max((es[j] + dur[j] for j in range(problem.n)), default=0)
    lf = [length] * problem.n
    for j in reversed(order):
        lf[j] = min((lf[s] - dur[s] for s in problem.succs[j]), default=length)
    ls = [lf[j] - dur[j] for j in range(problem.n)]
    return Cpm(es, ls, lf, length)


def topological_order(problem: Problem) -> list[int]:
    waiting = [len(ps) for ps in problem.preds]
    ready = [j for j in range(problem.n) if waiting[j] == 0]
    out: list[int] = []
    while ready:
        j = ready.pop()
        out.append(j)
        for s in problem.succs[j]:
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    if len(out) != problem.n:
        raise ValueError("the precedence graph has a cycle")
    return out


def priority_rules(problem: Problem, times: Cpm) -> dict[str, list[float]]:
    """Per rule, a priority per activity: lower goes first."""
    n = problem.n
    dur = problem.duration
    order = topological_order(problem)
    # total successors (transitive), as bitsets
    reach = [0] * n
    for j in reversed(order):
        bits = 0
        for s in problem.succs[j]:
            bits |= reach[s] | (1 << s)
        reach[j] = bits
    total_succ = [r.bit_count() for r in reach]
    grpw = [dur[j] + sum(dur[s] for s in problem.succs[j]) for j in range(n)]
    work = [
        sum(q / max(1, problem.capacity[r]) for r, q in problem.demand[j]) * dur[j]
        for j in range(n)
    ]
    return {
        "LFT": [times.lf[j] + 1e-3 * times.ls[j] for j in range(n)],
        "LST": [times.ls[j] + 1e-3 * times.lf[j] for j in range(n)],
        "MSLK": [times.ls[j] - times.es[j] + 1e-3 * times.lf[j] for j in range(n)],
        "MTS": [-total_succ[j] + 1e-3 * times.lf[j] for j in range(n)],
        "GRPW": [-grpw[j] + 1e-3 * times.lf[j] for j in range(n)],
        "WRUP": [
            -(0.7 * len(problem.succs[j]) + 0.3 * work[j]) + 1e-3 * times.lf[j] for j in range(n)
        ],
        "SPT": [dur[j] + 1e-3 * times.lf[j] for j in range(n)],
    }


def rule_list(problem: Problem, priority: Sequence[float]) -> list[int]:
    """The precedence-feasible activity list that always picks the best eligible one."""
    import heapq

    waiting = [len(ps) for ps in problem.preds]
    heap = [(priority[j], j) for j in range(problem.n) if waiting[j] == 0]
    heapq.heapify(heap)
    out: list[int] = []
    while heap:
        _, j = heapq.heappop(heap)
        out.append(j)
        for s in problem.succs[j]:
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(heap, (priority[s], s))
    return out


def sampled_list(
    problem: Problem, priority: Sequence[float], rng: random.Random, alpha: float = 1.0
) -> list[int]:
    """Regret-based biased random sampling: eligible ``j`` drawn with weight
    ``(max priority - priority[j] + 1) ** alpha`` (Drexl 1991)."""
    waiting = [len(ps) for ps in problem.preds]
    eligible = [j for j in range(problem.n) if waiting[j] == 0]
    out: list[int] = []
    while eligible:
        worst = max(priority[j] for j in eligible)
        weights = [(worst - priority[j] + 1.0) ** alpha for j in eligible]
        k = _draw(weights, rng)
        j = eligible[k]
        eligible[k] = eligible[-1]
        eligible.pop()
        out.append(j)
        for s in problem.succs[j]:
            waiting[s] -= 1
            if waiting[s] == 0:
                eligible.append(s)
    return out


def _draw(weights: list[float], rng: random.Random) -> int:
    x = rng.random() * sum(weights)
    for k, w in enumerate(weights):
        x -= w
        if x < 0:
            return k
    return len(weights) - 1


# ---------------------------------------------------------------------------
# The genetic algorithm


#: problems with fewer activities than this search in pure Python (faster than
#: loading the compiled kernels)
FAST_MIN_ACTIVITIES = 20
#: the default stagnation limit is this many schedules per activity (at least
#: :data:`STAGNATION_MIN`), times :data:`FAST_STAGNATION_FACTOR` with the kernels
STAGNATION_PER_ACTIVITY = 40
STAGNATION_MIN = 5000
FAST_STAGNATION_FACTOR = 20
#: with the kernels, the population is 2 n, within these bounds
FAST_POPULATION = (40, 150)
#: with the kernels, the population restarts after about this many generations
#: without improvement (two children per pair: as many children as its size)
RESTART_GENERATIONS = 20
#: the share of children made by the peak crossover (the others: two-point)
PEAK_SHARE = 0.5
#: forward-backward improvement is repeated while it shortens a schedule, at most
#: this many times per child
JUSTIFY_ROUNDS = 1
#: activities moved per child by the mutation, on average (more as the search stagnates)
MUTATION_MOVES = 2.0


def _csr(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    start = np.zeros(len(lists) + 1, np.int64)
    start[1:] = np.cumsum([len(x) for x in lists])
    flat = np.fromiter((x for xs in lists for x in xs), np.int64, int(start[-1]))
    return start, flat


_threads: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child makes its own


def _pool() -> ThreadPoolExecutor | None:
    """One worker thread for the kernels, when the machine has a second core.

    Kept per process: a child forked after the pool existed has the pool's queue but not
    its thread, and work handed to it there would wait forever.
    """
    if (os.cpu_count() or 1) < 2 or os.environ.get("COUNTERPOINT_SEARCH_THREADS") == "1":
        return None
    pid = os.getpid()
    pool = _threads.get(pid)
    if pool is None:
        pool = _threads[pid] = ThreadPoolExecutor(1, thread_name_prefix="counterpoint-search")
    return pool


class _Backend:
    """Children bred and evaluated in batches: by the compiled kernels of
    :mod:`counterpoint.plan._sgs_kernels`, or in pure Python with :class:`_Decoder`.
    Both give exactly the same results from the same random draws."""

    def __init__(self, problem: Problem, dec: _Decoder, fast: bool) -> None:
        self.p = problem
        self.dec = dec
        self.fast = fast
        self.ps, self.pi = _csr(problem.preds)
        self.ss, self.si = _csr(problem.succs)
        # resource use per activity for the peak crossover: units / capacity, in
        # integer 1/65536ths (agent groups not counted)
        self.weight_list = [
            sum(q * (65536 // problem.capacity[r]) for r, q in d if q > 0)
            if problem.duration[j]
            else 0
            for j, d in enumerate(problem.demand)
        ]
        self.weight = np.array(self.weight_list, np.int64)
        self.dur = np.array(problem.duration, np.int64)
        if fast:
            dem = [[(r, q) for r, q in d if q > 0] for d in problem.demand]
            self.rs, self.rr = _csr([[r for r, _ in d] for d in dem])
            self.rq = np.array([q for d in dem for _, q in d], np.int64)
            self.as_, self.ai = _csr(problem.alternatives)
            self.cap = np.array(problem.capacity, np.int64)
            self.free = np.repeat(self.cap[:, None], dec.horizon, axis=1).astype(np.int32)
            self.rank = np.array(dec.rank, np.int64)
        self.free2: np.ndarray | None = None

    def evaluate(
        self, orders: np.ndarray, rounds: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Each list scheduled and justified (again while that shortens it, at most
        ``rounds`` times): starts, choices, makespans, new lists, passes made."""
        m, n = orders.shape
        starts = np.empty((m, n), np.int64)
        choices = np.empty((m, n), np.int64)
        makespans = np.empty(m, np.int64)
        out = np.empty((m, n), np.int64)
        passes = np.empty(m, np.int64)
        if self.fast:
            from counterpoint.plan import _sgs_kernels as kernels

            def part(a: int, b: int, free: np.ndarray) -> None:
                kernels.evaluate(
                    orders[a:b], self.dur, self.ps, self.pi, self.ss, self.si, self.rs,
                    self.rr, self.rq, self.as_, self.ai, self.cap, self.rank, free, rounds,
                    starts[a:b], choices[a:b], makespans[a:b], out[a:b], passes[a:b],
                )  # fmt: skip

            pool = _pool() if m >= 16 else None
            if pool is None:
                part(0, m, self.free)
            else:  # the kernels release the GIL: the second half on another core
                if self.free2 is None:
                    self.free2 = self.free.copy()
                half = m // 2
                other = pool.submit(part, half, m, self.free2)
                part(0, half, self.free)
                other.result()
            return starts, choices, makespans, out, int(passes.sum())
        dec = self.dec
        total = 0
        for c in range(m):
            sol = dec.serial(orders[c].tolist())
            order: list[int] | None = None
            total += 1
            for _ in range(rounds):
                better, fwd = dec.justify(sol)
                total += 2
                if better is sol:  # the justified schedule is longer
                    break
                shorter = better.makespan < sol.makespan
                sol, order = better, fwd
                if not shorter:
                    break
            starts[c] = sol.start
            choices[c] = sol.choice
            makespans[c] = sol.makespan
            out[c] = order if order is not None else dec.order_of(sol)
        return starts, choices, makespans, out, total

    def breed(
        self,
        pop: np.ndarray,
        pop_starts: np.ndarray,
        mothers: np.ndarray,
        fathers: np.ndarray,
        cuts: np.ndarray,
        peak: np.ndarray,
        moves: np.ndarray,
        draws: np.ndarray,
    ) -> np.ndarray:
        """Crossover (two-point, or peak where ``peak >= 0``) and shift mutation (see
        ``_sgs_kernels.breed``)."""
        m, n = len(mothers), pop.shape[1]
        children = np.empty((m, n), np.int64)
        if self.fast:
            from counterpoint.plan import _sgs_kernels as kernels

            kernels.breed(
                pop, pop_starts, mothers, fathers, cuts, peak, moves, draws,
                self.ps, self.pi, self.ss, self.si, self.dur, self.weight, children,
            )  # fmt: skip
            return children
        for c in range(m):
            mother = pop[mothers[c]].tolist()
            father = pop[fathers[c]].tolist()
            if peak[c] >= 0:
                child = self._peak(mother, father, pop_starts[mothers[c]].tolist(), peak[c])
            else:
                child = _two_point(mother, father, int(cuts[c, 0]), int(cuts[c, 1]))
            self._shift(child, int(moves[c]), draws[c])
            children[c] = child
        return children

    def _peak(self, mother: list[int], father: list[int], ms: list[int], u: float) -> list[int]:
        """``_sgs_kernels._peak`` in Python (the same integer arithmetic)."""
        dur = self.p.duration
        n = len(mother)
        horizon = max((ms[j] + dur[j] for j in range(n)), default=0)
        if horizon == 0:
            return list(mother)
        usage = [0] * horizon
        for j in range(n):
            w = self.weight_list[j]
            if w > 0:
                for t in range(ms[j], ms[j] + dur[j]):
                    usage[t] += w
        length = min(horizon, 1 + int((0.1 + 0.4 * u) * horizon))
        total = sum(usage[:length])
        best, a = total, 0
        for t in range(length, horizon):
            total += usage[t] - usage[t - length]
            if total > best:
                best, a = total, t - length + 1
        b = a + length
        return (
            [j for j in father if ms[j] < a]
            + [j for j in mother if a <= ms[j] < b]
            + [j for j in father if ms[j] >= b]
        )

    def _shift(self, child: list[int], moves: int, draws: np.ndarray) -> None:
        preds, succs = self.p.preds, self.p.succs
        n = len(child)
        for mv in range(moves):
            pos = [0] * n
            for i, j in enumerate(child):
                pos[j] = i
            i = min(n - 1, int(draws[mv, 0] * n))
            j = child[i]
            lo = max((pos[q] + 1 for q in preds[j]), default=0)
            hi = min((pos[s] - 1 for s in succs[j]), default=n - 1)
            if hi <= lo:
                continue
            to = lo + min(hi - lo, int(draws[mv, 1] * (hi - lo + 1)))
            if to != i:
                del child[i]
                child.insert(to, j)


def _two_point(mother: list[int], father: list[int], q1: int, q2: int) -> list[int]:
    """Hartmann's crossover: the mother's first ``q1``, the father's next up to ``q2``,
    the rest in the mother's order."""
    child = mother[:q1]
    taken = bytearray(len(mother))
    for j in child:
        taken[j] = 1
    for j in father:
        if len(child) >= q2:
            break
        if not taken[j]:
            child.append(j)
            taken[j] = 1
    child += [j for j in mother if not taken[j]]
    return child


@dataclass
class _Individual:
    order: np.ndarray  # the activity list of the (justified) schedule
    start: np.ndarray
    choice: np.ndarray
    makespan: int
    key: bytes  # the start times, to keep the population free of duplicates

    def solution(self) -> Solution:
        return Solution(self.start.tolist(), self.choice.tolist(), self.makespan)


class Search:
    """The population search; :meth:`run` returns the best schedule found.

    ``fast``: use the compiled kernels (None: when numba is installed, the kernels are
    compiled and the problem has at least :data:`FAST_MIN_ACTIVITIES` activities). The
    result does not depend on it, only the speed (and the default stagnation limit).
    """

    def __init__(
        self,
        problem: Problem,
        *,
        seed: int = 0,
        population: int = 0,
        lower_bound: int = 0,
        fast: bool | None = None,
    ) -> None:
        self.p = problem
        self.dec = _Decoder(problem)
        self.rng = random.Random(seed)
        self.gen = np.random.default_rng(seed)
        n = problem.n
        self.size = population
        self.lower_bound = lower_bound
        self.times = cpm(problem)
        self.rules = priority_rules(problem, self.times)
        self.schedules = 0
        self._best: _Individual | None = None
        self.last_better = 0
        if fast is None:
            fast = n >= FAST_MIN_ACTIVITIES and _kernels_ready()
        elif fast and not _kernels_ready(background=False):
            from counterpoint.plan import _sgs_kernels as kernels

            kernels.warm_up()
            fast = kernels.AVAILABLE
        self.fast = fast
        if not self.size:
            self.size = (
                max(FAST_POPULATION[0], min(FAST_POPULATION[1], 2 * n))
                if fast
                else max(16, min(40, 8 + n // 4))
            )
        self.backend = _Backend(problem, self.dec, fast)

    # -- evaluation -----------------------------------------------------------

    def _evaluate(self, orders: Sequence[Sequence[int]] | np.ndarray) -> list[_Individual]:
        if len(orders) == 0:
            return []
        starts, choices, makespans, out, passes = self.backend.evaluate(
            np.array(orders, np.int64), JUSTIFY_ROUNDS
        )
        self.schedules += passes
        found = []
        for c in range(len(orders)):
            ind = _Individual(out[c], starts[c], choices[c], int(makespans[c]), starts[c].tobytes())
            found.append(ind)
            self._note(ind, self.schedules)
        return found

    def _from_solution(self, sol: Solution) -> _Individual:
        better, order = self.dec.justify(sol)
        self.schedules += 2
        start = np.array(better.start, np.int64)
        ind = _Individual(
            np.array(order, np.int64),
            start,
            np.array(better.choice, np.int64),
            better.makespan,
            start.tobytes(),
        )
        self._note(ind, self.schedules)
        return ind

    @property
    def best(self) -> _Individual:
        assert self._best is not None, "no schedule evaluated yet"
        return self._best

    def _note(self, ind: _Individual, at: int) -> None:
        if self._best is None or ind.makespan < self._best.makespan:
            self._best = ind
            self.last_better = at

    # -- the search -----------------------------------------------------------

    def initial(self, seeds: Sequence[list[int]] = ()) -> list[_Individual]:
        found: dict[bytes, _Individual] = {}
        lists = [list(order) for order in seeds if len(order) == self.p.n]
        evaluated = self._evaluate(lists)
        for priority in self.rules.values():
            evaluated += self._evaluate([rule_list(self.p, priority)])
            evaluated.append(self._from_solution(self.dec.parallel(priority)))
        for ind in evaluated:
            found.setdefault(ind.key, ind)
        lft = self.rules["LFT"]
        tries = 0
        while len(found) < self.size and tries < 4 * self.size:
            want = min(self.size - len(found), 4 * self.size - tries)
            tries += want
            samples = [sampled_list(self.p, lft, self.rng) for _ in range(want)]
            for ind in self._evaluate(samples):
                found.setdefault(ind.key, ind)
        pop = sorted(found.values(), key=lambda i: i.makespan)
        return pop[: self.size]

    def run(
        self,
        *,
        time_limit: float = 1.0,
        max_schedules: int | None = None,
        stagnation: int | None = None,
        initial: Sequence[list[int]] = (),
        clock: Callable[[], float] = time.perf_counter,
    ) -> SearchResult:
        """Search until the lower bound, the time limit, the schedule budget or
        ``stagnation`` schedules without improvement (default ``max(5000, 40 n)``,
        :data:`FAST_STAGNATION_FACTOR` times that with the compiled kernels); after
        half of ``max(5000, 40 n)`` (with the kernels, at least
        :data:`RESTART_GENERATIONS` generations) without improvement, the population
        restarts from its best quarter. A generation is not started when one taking
        twice as long as the last would end after the time limit, nor within the last
        30 ms of it (3% of shorter limits), left for the caller's work on the result
        and for a busy machine."""
        deadline = clock() + time_limit - min(0.03, 0.03 * time_limit)
        step = 0.0  # how long the last generation took
        limit = math.inf if max_schedules is None else max_schedules
        base = max(STAGNATION_MIN, STAGNATION_PER_ACTIVITY * self.p.n)
        stale_limit = stagnation
        if stale_limit is None:
            stale_limit = base * (FAST_STAGNATION_FACTOR if self.fast else 1)
        restart_every = base // 2
        if self.fast:  # a larger population: at least RESTART_GENERATIONS generations
            restart_every = max(restart_every, 3 * self.size * RESTART_GENERATIONS)
        restart_every = min(restart_every, stale_limit)
        pop = self.initial(initial)
        self.last_better = self.schedules
        generations = 0
        last_restart = 0
        while True:
            stale = self.schedules - self.last_better
            stopped = (
                "lower bound"
                if self.best.makespan <= self.lower_bound
                else "budget"
                if self.schedules >= limit
                else "time limit"
                if clock() + 2 * step >= deadline
                else "stagnation"
                if stale >= stale_limit
                else ""
            )
            if stopped:
                break
            generations += 1
            budget = max(1, math.ceil((limit - self.schedules) / 3)) if limit < math.inf else 0
            began = clock()
            if self.schedules - max(self.last_better, last_restart) >= restart_every:
                pop = self._restart(pop)
                last_restart = self.schedules
                step = clock() - began
                continue
            # about two moves per child, more as the search stagnates
            since = self.schedules - max(self.last_better, last_restart)
            rate = MUTATION_MOVES / self.p.n + 0.03 * min(1.0, since / max(1, 2 * restart_every))
            rate = min(1.0, rate)
            pop = self._generation(pop, rate, budget)
            step = clock() - began
        elite = [i.order.tolist() for i in pop]
        return SearchResult(self.best.solution(), self.schedules, generations, stopped, elite)

    def _generation(self, pop: list[_Individual], rate: float, budget: int) -> list[_Individual]:
        """Pairs of parents by tournament, two children each; the best survive.
        ``budget``: at most this many children (0: no limit)."""
        gen = self.gen
        n = self.p.n
        pairs = max(2, self.size // 2)
        count = min(2 * pairs, budget) if budget else 2 * pairs
        makespans = np.array([i.makespan for i in pop], np.int64)
        draw = gen.integers(0, len(pop), size=(pairs, 4))
        a = np.where(makespans[draw[:, 0]] <= makespans[draw[:, 1]], draw[:, 0], draw[:, 1])
        b = np.where(makespans[draw[:, 2]] <= makespans[draw[:, 3]], draw[:, 2], draw[:, 3])
        mothers = np.stack([a, b], axis=1).ravel()[:count]
        fathers = np.stack([b, a], axis=1).ravel()[:count]
        cuts = np.sort(gen.integers(0, n + 1, size=(count, 2)), axis=1)
        peak = gen.random(count)
        peak = np.where(gen.random(count) < PEAK_SHARE, peak, -1.0)
        moves = gen.binomial(n, rate, size=count)
        draws = gen.random((count, max(1, int(moves.max())), 2))
        orders = np.stack([i.order for i in pop])
        starts = np.stack([i.start for i in pop])
        children = self.backend.breed(orders, starts, mothers, fathers, cuts, peak, moves, draws)
        return self._merge(pop, self._evaluate(children))

    def _merge(self, pop: list[_Individual], children: list[_Individual]) -> list[_Individual]:
        keys = {i.key for i in pop}
        fresh = []
        for ind in children:
            if ind.key not in keys:
                keys.add(ind.key)
                fresh.append(ind)
        return sorted(pop + fresh, key=lambda i: i.makespan)[: self.size]

    def _restart(self, pop: list[_Individual]) -> list[_Individual]:
        """Keep the best quarter; the rest: heavily mutated copies of it and new samples."""
        keep = pop[: max(2, len(pop) // 4)]
        lft = self.rules["LFT"]
        n = self.p.n
        copies = [k % len(keep) for k in range(0, self.size - len(keep), 2)]
        samples = [
            sampled_list(self.p, lft, self.rng, alpha=2.0)
            for _ in range(1, self.size - len(keep), 2)
        ]
        lists: list[Sequence[int]] = list(samples)
        if copies:
            parents = np.array(copies, np.int64)
            moves = self.gen.binomial(n, 0.15, size=len(copies))
            draws = self.gen.random((len(copies), max(1, int(moves.max())), 2))
            cuts = np.zeros((len(copies), 2), np.int64)
            orders = np.stack([i.order for i in keep])
            starts = np.stack([i.start for i in keep])
            peak = np.full(len(copies), -1.0)
            lists += list(
                self.backend.breed(orders, starts, parents, parents, cuts, peak, moves, draws)
            )
        return self._merge(keep, self._evaluate(lists))

    def latest_starts(self, sol: Solution) -> list[int]:
        """Per activity, its start when everything is right-justified against the makespan."""
        n = self.p.n
        dur = self.p.duration
        rank = self.dec.rank
        back = self.dec.serial(
            sorted(range(n), key=lambda j: -(sol.start[j] + dur[j]) * (n + 1) - rank[j]),
            backward=True,
        )
        return [sol.makespan - back.start[j] - dur[j] for j in range(n)]

    def decode(self, order: list[int]) -> Solution:
        """An activity list, scheduled and justified (for re-evaluating elite lists)."""
        sol, _ = self.dec.justify(self.dec.serial(order))
        self.schedules += 3
        return sol


def _kernels_ready(*, background: bool = True) -> bool:
    from counterpoint.plan import _sgs_kernels as kernels

    return kernels.ready(background=background)


def single_pass(problem: Problem, rule: str = "LFT") -> Solution:
    """One parallel SGS pass with a priority rule (no search)."""
    dec = _Decoder(problem)
    return dec.parallel(priority_rules(problem, cpm(problem))[rule])
