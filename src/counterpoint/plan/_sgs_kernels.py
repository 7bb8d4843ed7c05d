"""The search's inner loops, compiled with numba when it is installed (``counterpoint[fast]``).

Plain Python functions over numpy arrays, written in the subset numba compiles:

* :func:`serial_sgs`: the serial schedule-generation scheme, exactly the one of
  :class:`counterpoint.plan.rcpsp._Decoder` (same starts, same alternative chosen);
* :func:`evaluate`: a batch of activity lists, each scheduled, justified
  (forward-backward improvement) and rewritten in the order of its schedule;
* :func:`breed`: a batch of children by two-point crossover and shift mutation, the
  random draws given by the caller (so the result does not depend on numba's
  generator, and the pure-Python search makes the same children).

:data:`AVAILABLE` says whether numba compiled them; without numba the module still
imports and the search uses its pure-Python decoder instead. Compiled code is cached
on disk (``cache=True``), so only the first run on a machine pays the compilation;
:func:`warm_up` compiles or loads it (the caller times it against its time limit).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import numpy as np

_numba: Any = None
try:  # pragma: no cover - depends on the installed extras
    if os.environ.get("COUNTERPOINT_NO_JIT"):
        raise ImportError("disabled by COUNTERPOINT_NO_JIT")
    import numba

    _numba = numba
    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False


def _fit(
    free: Any, rr: Any, rq: Any, k0: int, k1: int, g: int, es: int, d: int
) -> int:  # pragma: no cover - compiled
    """The earliest ``t >= es`` where resources ``rr[k0:k1]`` keep ``rq`` units free
    (and ``g``, when not -1, one unit) for ``d`` steps in a row."""
    t = es
    moved = True
    while moved:
        moved = False
        for k in range(k0, k1 + (1 if g >= 0 else 0)):
            if k < k1:
                r = rr[k]
                q = rq[k]
            else:
                r = g
                q = 1
            # scan the window backwards: the last step without room moves t past it
            u = t + d - 1
            while u >= t:
                if free[r, u] < q:
                    t = u + 1
                    moved = True
                    u = t + d - 1
                    continue
                u -= 1
    return t


def serial_sgs(  # noqa: C901 - the hot loop
    order: Any,
    dur: Any,
    ps: Any,
    pi: Any,
    rs: Any,
    rr: Any,
    rq: Any,
    as_: Any,
    ai: Any,
    cap: Any,
    free: Any,
    st: Any,
    fin: Any,
    ch: Any,
) -> int:  # pragma: no cover - compiled
    """Serial SGS over ``order`` with predecessors in CSR ``ps``/``pi`` (pass the
    successors to schedule the reversed network). ``free`` (resources x horizon)
    must hold every capacity on entry and does again on return. Fills ``st``,
    ``fin``, ``ch``; returns the makespan."""
    n = order.shape[0]
    top = 0
    for idx in range(n):
        j = order[idx]
        es = 0
        for i in range(ps[j], ps[j + 1]):
            f = fin[pi[i]]
            if f > es:
                es = f
        d = dur[j]
        a0 = as_[j]
        a1 = as_[j + 1]
        if d == 0:
            st[j] = es
            fin[j] = es
            ch[j] = ai[a0] if a1 > a0 else -1
            continue
        k0 = rs[j]
        k1 = rs[j + 1]
        c = -1
        if es >= top:
            t = es
            if a1 > a0:
                c = ai[a0]
        elif a1 == a0:
            t = _fit(free, rr, rq, k0, k1, -1, es, d)
        else:
            t = top + d
            for i in range(a0, a1):
                g = ai[i]
                tg = _fit(free, rr, rq, k0, k1, g, es, d)
                if tg < t:
                    t = tg
                    c = g
                    if tg == es:
                        break
        f = t + d
        for k in range(k0, k1):
            r = rr[k]
            q = rq[k]
            for u in range(t, f):
                free[r, u] -= q
        if c >= 0:
            for u in range(t, f):
                free[c, u] -= 1
        st[j] = t
        fin[j] = f
        ch[j] = c
        if f > top:
            top = f
    for r in range(free.shape[0]):
        cr = cap[r]
        for u in range(top):
            free[r, u] = cr
    return top


def evaluate(
    orders: Any,
    dur: Any,
    ps: Any,
    pi: Any,
    ss: Any,
    si: Any,
    rs: Any,
    rr: Any,
    rq: Any,
    as_: Any,
    ai: Any,
    cap: Any,
    rank: Any,
    free: Any,
    rounds: int,
    starts: Any,
    choices: Any,
    makespans: Any,
    out_orders: Any,
    passes: Any,
) -> None:  # pragma: no cover - compiled
    """Each row of ``orders``: serial SGS, then right- and left-justification, again
    while it shortens the schedule (at most ``rounds`` times); the schedule goes to
    ``starts``/``choices``/``makespans``, its activity list to ``out_orders`` (the
    list of the last left-justification, or when there was none the schedule's
    activities by start, ties by ``rank``) and the passes made to ``passes``. Same
    results as ``_Backend.evaluate`` in pure Python."""
    m, n = orders.shape
    n1 = n + 1
    st = np.empty(n, np.int64)
    fin = np.empty(n, np.int64)
    ch = np.empty(n, np.int64)
    bst = np.empty(n, np.int64)
    bfin = np.empty(n, np.int64)
    bch = np.empty(n, np.int64)
    fst = np.empty(n, np.int64)
    ffin = np.empty(n, np.int64)
    fch = np.empty(n, np.int64)
    key = np.empty(n, np.int64)
    for c in range(m):
        mk = serial_sgs(orders[c], dur, ps, pi, rs, rr, rq, as_, ai, cap, free, st, fin, ch)
        done = 1
        have_order = False
        for _ in range(rounds):
            for j in range(n):
                key[j] = -fin[j] * n1 - rank[j]
            back = np.argsort(key)
            serial_sgs(back, dur, ss, si, rs, rr, rq, as_, ai, cap, free, bst, bfin, bch)
            for j in range(n):
                key[j] = -bfin[j] * n1 + rank[j]
            fwd = np.argsort(key)
            fmk = serial_sgs(fwd, dur, ps, pi, rs, rr, rq, as_, ai, cap, free, fst, ffin, fch)
            done += 2
            if fmk > mk:
                break
            for j in range(n):
                st[j] = fst[j]
                fin[j] = ffin[j]
                ch[j] = fch[j]
                out_orders[c, j] = fwd[j]
            have_order = True
            if fmk == mk:
                break
            mk = fmk
        makespans[c] = mk
        passes[c] = done
        for j in range(n):
            starts[c, j] = st[j]
            choices[c, j] = ch[j]
        if not have_order:
            for j in range(n):
                key[j] = st[j] * n1 + rank[j]
            own = np.argsort(key)
            for j in range(n):
                out_orders[c, j] = own[j]


def _peak(  # noqa: C901 - the hot loop
    child: Any, mo: Any, fa: Any, ms: Any, dur: Any, weight: Any, u: float, usage: Any
) -> None:  # pragma: no cover - compiled
    """The crossover that keeps the mother's densest interval: the activities the
    mother starts before it (in the father's order), those it starts within it (in
    the mother's order), then the rest (in the father's order). The interval is
    ``1 + int((0.1 + 0.4 u) T)`` long for the mother's makespan ``T``, placed where
    the weighted resource use is highest (the earliest such place)."""
    n = mo.shape[0]
    horizon = 0
    for j in range(n):
        if ms[j] + dur[j] > horizon:
            horizon = ms[j] + dur[j]
    if horizon == 0:
        for i in range(n):
            child[i] = mo[i]
        return
    for t in range(horizon):
        usage[t] = 0
    for j in range(n):
        w = weight[j]
        if w > 0:
            for t in range(ms[j], ms[j] + dur[j]):
                usage[t] += w
    length = min(horizon, 1 + int((0.1 + 0.4 * u) * horizon))
    total = 0
    for t in range(length):
        total += usage[t]
    best = total
    a = 0
    for t in range(length, horizon):
        total += usage[t] - usage[t - length]
        if total > best:
            best = total
            a = t - length + 1
    b = a + length
    k = 0
    for i in range(n):
        j = fa[i]
        if ms[j] < a:
            child[k] = j
            k += 1
    for i in range(n):
        j = mo[i]
        if a <= ms[j] < b:
            child[k] = j
            k += 1
    for i in range(n):
        j = fa[i]
        if ms[j] >= b:
            child[k] = j
            k += 1


def breed(  # noqa: C901 - the hot loop
    pop: Any,
    pop_starts: Any,
    mothers: Any,
    fathers: Any,
    cuts: Any,
    peak: Any,
    moves: Any,
    draws: Any,
    ps: Any,
    pi: Any,
    ss: Any,
    si: Any,
    dur: Any,
    weight: Any,
    children: Any,
) -> None:  # pragma: no cover - compiled
    """Child ``c``: when ``peak[c] >= 0``, :func:`_peak` of ``pop[mothers[c]]`` (its
    schedule ``pop_starts[mothers[c]]``) and ``pop[fathers[c]]``; otherwise
    Hartmann's two-point crossover, the mother's head and tail and the father's
    middle, at ``cuts[c]``. Then ``moves[c]`` shift moves: the activity at ``int(u0 *
    n)`` goes to position ``lo + int(u1 * (hi - lo + 1))`` between its last predecessor
    and first successor (``draws[c, k]`` = u0, u1)."""
    m = mothers.shape[0]
    n = pop.shape[1]
    taken = np.zeros(n, np.uint8)
    pos = np.empty(n, np.int64)
    usage = np.zeros(int(dur.sum()) + 1, np.int64)
    for c in range(m):
        mo = pop[mothers[c]]
        fa = pop[fathers[c]]
        child = children[c]
        if peak[c] >= 0:
            _peak(child, mo, fa, pop_starts[mothers[c]], dur, weight, peak[c], usage)
        else:
            q1 = cuts[c, 0]
            q2 = cuts[c, 1]
            taken[:] = 0
            k = 0
            for i in range(q1):
                child[k] = mo[i]
                taken[mo[i]] = 1
                k += 1
            for i in range(n):
                if k >= q2:
                    break
                j = fa[i]
                if taken[j] == 0:
                    child[k] = j
                    taken[j] = 1
                    k += 1
            for i in range(n):
                j = mo[i]
                if taken[j] == 0:
                    child[k] = j
                    taken[j] = 1
                    k += 1
        for mv in range(moves[c]):
            for i in range(n):
                pos[child[i]] = i
            i = min(n - 1, int(draws[c, mv, 0] * n))
            j = child[i]
            lo = 0
            for x in range(ps[j], ps[j + 1]):
                if pos[pi[x]] + 1 > lo:
                    lo = pos[pi[x]] + 1
            hi = n - 1
            for x in range(ss[j], ss[j + 1]):
                if pos[si[x]] - 1 < hi:
                    hi = pos[si[x]] - 1
            if hi <= lo:
                continue
            to = lo + min(hi - lo, int(draws[c, mv, 1] * (hi - lo + 1)))
            if to == i:
                continue
            if to > i:
                for x in range(i, to):
                    child[x] = child[x + 1]
            else:
                for x in range(i, to, -1):
                    child[x] = child[x - 1]
            child[to] = j


if AVAILABLE:  # pragma: no cover - depends on the installed extras
    _jit = _numba.njit(cache=True, nogil=True)
    _fit = _jit(_fit)
    _peak = _jit(_peak)
    serial_sgs = _jit(serial_sgs)
    evaluate = _jit(evaluate)
    breed = _jit(breed)


def _samples() -> list[tuple[Any, tuple[Any, ...]]]:
    """Every kernel entry point with arguments of the types the search passes."""
    i64 = np.int64
    dur = np.array([1, 1], i64)
    ps = np.array([0, 0, 1], i64)
    pi = np.array([0], i64)
    ss = np.array([0, 1, 1], i64)
    si = np.array([1], i64)
    rs = np.array([0, 1, 1], i64)
    rr = np.array([0], i64)
    rq = np.array([1], i64)
    as_ = np.array([0, 0, 0], i64)
    ai = np.zeros(0, i64)
    cap = np.array([1], i64)
    rank = np.array([0, 1], i64)
    free = np.ones((1, 3), np.int32)
    orders = np.array([[0, 1]], i64)
    out = (np.empty((1, 2), i64), np.empty((1, 2), i64), np.empty(1, i64), np.empty((1, 2), i64))
    common = (orders, dur, ps, pi, ss, si, rs, rr, rq, as_, ai, cap, rank, free, 1)
    return [
        (evaluate, (*common, *out, np.empty(1, i64))),
        (
            breed,
            (
                orders, np.zeros((1, 2), i64), np.zeros(1, i64), np.zeros(1, i64),
                np.zeros((1, 2), i64), np.zeros(1), np.zeros(1, i64), np.zeros((1, 1, 2)),
                ps, pi, ss, si, dur, np.ones(2, i64), np.empty((1, 2), i64),
            ),
        ),
    ]  # fmt: skip


_state = {"warm": False, "compiling": False}


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel."""
    if not AVAILABLE:
        return
    for function, args in _samples():
        function(*args)
    _state["warm"] = True


def cached() -> bool:
    """Whether every kernel can be loaded from the cache (no compilation needed)."""
    if not AVAILABLE:
        return False
    try:
        for function, args in _samples():
            sig = tuple(_numba.typeof(a) for a in args)
            if function._cache.load_overload(sig, function.targetctx) is None:
                return False
    except Exception:  # numba internals changed: assume nothing is cached
        return False
    return True


def loaded() -> bool:
    """The kernels are in this process already: using them costs no loading or compiling."""
    return bool(_state["warm"])


def ready(*, background: bool = True) -> bool:
    """True when the kernels can run now without compiling (loading them if needed).

    When numba is installed but nothing is cached yet, compiling takes seconds: with
    ``background`` a separate process compiles into the cache (for the next search)
    and this one returns False, so the caller uses the pure-Python path now."""
    if not AVAILABLE:
        return False
    if _state["warm"]:
        return True
    if cached():
        warm_up()
        return True
    if background and not _state["compiling"]:
        _state["compiling"] = True
        threading.Thread(target=_compile_elsewhere, daemon=True).start()
    return False


def _compile_elsewhere() -> None:  # pragma: no cover - a background process
    code = "from counterpoint.plan._sgs_kernels import warm_up; warm_up()"
    subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        check=False,
    )


if __name__ == "__main__":  # pragma: no cover - `python -m counterpoint.plan._sgs_kernels`
    # compile the kernels into numba's cache now (an install step can run this)
    warm_up()
    print("search kernels compiled" if AVAILABLE else "numba is not installed")
