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
* a **genetic algorithm over activity lists** (Hartmann 1998) with two-point
  crossover, precedence-preserving shift mutation, tournament selection, every child
  justified and written back in the order of its improved schedule (Lamarckian), and
  duplicate-free elitist replacement; it restarts from the best schedules when it
  stagnates.

Resource profiles are ``bytearray``s (free units per time unit), so finding the
earliest start of an activity is a ``bytes.translate`` into a 0/1 mask and a
``bytes.find`` of ``d`` ones: C loops instead of Python ones. Capacities must be
below 256 (:data:`MAX_CAPACITY`); the caller checks it.

Everything is deterministic for a given seed; only where the search stops depends
on the clock when it stops on its time limit.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


@dataclass
class _Individual:
    order: list[int]
    sol: Solution
    key: int  # hash of the start times, to keep the population free of duplicates


class Search:
    """The population search; :meth:`run` returns the best schedule found."""

    def __init__(
        self,
        problem: Problem,
        *,
        seed: int = 0,
        population: int = 0,
        lower_bound: int = 0,
    ) -> None:
        self.p = problem
        self.dec = _Decoder(problem)
        self.rng = random.Random(seed)
        n = problem.n
        self.size = population or max(16, min(40, 8 + n // 4))
        self.lower_bound = lower_bound
        self.times = cpm(problem)
        self.rules = priority_rules(problem, self.times)
        self.schedules = 0

    # -- evaluation -----------------------------------------------------------

    def _evaluate(self, order: list[int]) -> _Individual:
        sol = self.dec.serial(order)
        better, new_order = self.dec.justify(sol)
        self.schedules += 3
        return _Individual(new_order, better, hash(tuple(better.start)))

    def _from_solution(self, sol: Solution) -> _Individual:
        better, new_order = self.dec.justify(sol)
        self.schedules += 2
        return _Individual(new_order, better, hash(tuple(better.start)))

    # -- operators ------------------------------------------------------------

    def _crossover(self, mother: list[int], father: list[int]) -> list[int]:
        """Hartmann's two-point crossover: mother's head, father's middle, mother's tail."""
        n = len(mother)
        q1 = self.rng.randrange(n + 1)
        q2 = self.rng.randrange(n + 1)
        if q1 > q2:
            q1, q2 = q2, q1
        child = mother[:q1]
        taken = bytearray(n)
        for j in child:
            taken[j] = 1
        for j in father:
            if len(child) >= q2:
                break
            if not taken[j]:
                child.append(j)
                taken[j] = 1
        for j in mother:
            if not taken[j]:
                child.append(j)
        return child

    def _mutate(self, order: list[int], rate: float) -> None:
        """Move a few activities to a random position between their predecessors and
        successors in the list (keeps the list precedence-feasible)."""
        n = len(order)
        rng = self.rng
        moves = 0
        for _ in range(n):
            if rng.random() < rate:
                moves += 1
        if not moves:
            return
        preds, succs = self.p.preds, self.p.succs
        for _ in range(moves):
            pos = [0] * n
            for i, j in enumerate(order):
                pos[j] = i
            i = rng.randrange(n)
            j = order[i]
            lo = max((pos[q] for q in preds[j]), default=-1) + 1
            hi = min((pos[s] for s in succs[j]), default=n) - 1
            if hi <= lo:
                continue
            k = rng.randint(lo, hi)
            if k == i:
                continue
            del order[i]
            order.insert(k, j)

    # -- the search -----------------------------------------------------------

    def initial(self, seeds: Sequence[list[int]] = ()) -> list[_Individual]:
        found: dict[int, _Individual] = {}
        for order in seeds:
            if len(order) == self.p.n:
                ind = self._evaluate(list(order))
                found.setdefault(ind.key, ind)
        for priority in self.rules.values():
            for ind in (
                self._evaluate(rule_list(self.p, priority)),
                self._from_solution(self.dec.parallel(priority)),
            ):
                found.setdefault(ind.key, ind)
        lft = self.rules["LFT"]
        tries = 0
        while len(found) < self.size and tries < 4 * self.size:
            tries += 1
            ind = self._evaluate(sampled_list(self.p, lft, self.rng))
            found.setdefault(ind.key, ind)
        pop = sorted(found.values(), key=lambda i: i.sol.makespan)
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
        ``stagnation`` schedules without improvement (default ``max(5000, 40 n)``); after
        half of that, the population restarts from its best quarter."""
        deadline = clock() + time_limit
        limit = math.inf if max_schedules is None else max_schedules
        stale_limit = stagnation if stagnation is not None else max(5000, 40 * self.p.n)
        pop = self.initial(initial)
        self.best = pop[0]
        self.last_better = self.schedules
        generations = 0
        restarted = False
        while True:
            stale = self.schedules - self.last_better
            stopped = (
                "lower bound"
                if self.best.sol.makespan <= self.lower_bound
                else "budget"
                if self.schedules >= limit
                else "time limit"
                if clock() >= deadline
                else "stagnation"
                if stale >= stale_limit
                else ""
            )
            if stopped:
                break
            generations += 1
            if not restarted and stale >= stale_limit // 2:
                pop = self._restart(pop)
                restarted = True
                continue
            # about two moves per child, more as the search stagnates
            rate = 2.0 / self.p.n + 0.03 * min(1.0, stale / max(1, stale_limit))
            before = self.last_better
            pop = self._generation(
                pop, rate, lambda: clock() >= deadline or self.schedules >= limit
            )
            restarted = restarted and self.last_better == before
        elite = [i.order for i in pop]
        return SearchResult(self.best.sol, self.schedules, generations, stopped, elite)

    def _generation(
        self, pop: list[_Individual], rate: float, done: Callable[[], bool]
    ) -> list[_Individual]:
        """Pairs of parents by tournament, two children each; the best survive."""
        keys = {i.key for i in pop}
        children: list[_Individual] = []
        for _ in range(max(2, self.size // 2)):
            mother = self._tournament(pop)
            father = self._tournament(pop)
            for a, b in ((mother, father), (father, mother)):
                child = self._crossover(a.order, b.order)
                self._mutate(child, rate)
                ind = self._evaluate(child)
                if ind.key not in keys:
                    keys.add(ind.key)
                    children.append(ind)
                    self._note(ind)
            if done():
                break
        return sorted(pop + children, key=lambda i: i.sol.makespan)[: self.size]

    def _note(self, ind: _Individual) -> None:
        if ind.sol.makespan < self.best.sol.makespan:
            self.best = ind
            self.last_better = self.schedules

    def _tournament(self, pop: list[_Individual]) -> _Individual:
        a = pop[self.rng.randrange(len(pop))]
        b = pop[self.rng.randrange(len(pop))]
        return a if a.sol.makespan <= b.sol.makespan else b

    def _restart(self, pop: list[_Individual]) -> list[_Individual]:
        """Keep the best quarter; the rest: heavily mutated copies of it and new samples."""
        keep = pop[: max(2, len(pop) // 4)]
        found = {i.key: i for i in keep}
        lft = self.rules["LFT"]
        for k in range(self.size - len(keep)):
            if k % 2:
                order = sampled_list(self.p, lft, self.rng, alpha=2.0)
            else:
                order = list(keep[k % len(keep)].order)
                self._mutate(order, 0.15)
            ind = self._evaluate(order)
            found.setdefault(ind.key, ind)
            self._note(ind)
        return sorted(found.values(), key=lambda i: i.sol.makespan)[: self.size]

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
        return self._evaluate(order).sol


def single_pass(problem: Problem, rule: str = "LFT") -> Solution:
    """One parallel SGS pass with a priority rule (no search)."""
    dec = _Decoder(problem)
    return dec.parallel(priority_rules(problem, cpm(problem))[rule])
