"""Scenario 5, fencing: an agent stopped (SIGSTOP) past its lease, its task given to another
agent, then continued (SIGCONT) with its stale attempt's result in hand.

The first attempt's program finishes while its agent is stopped (the program runs in its
own session, so SIGSTOP of the agent does not stop it), so when the agent continues it
holds a completed result for an attempt the run has already declared lost and given to
another agent, which is still working on it (its attempt is slower). The agent
reconnects, is told its session is gone, and resends the result: the hub must refuse it
(``stale_attempt``: the attempt number is the fencing token) and the journal must show the
new attempt's result only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from net_helpers import FULL, figure, read_journal, remote, served_bench, wait_until

HEARTBEAT_S = 0.5
TIMEOUT_S = 3 * HEARTBEAT_S
PAIRS = 6 if FULL else 2
FIRST_S = 0.8  # the stale attempt's program: done while its agent is stopped
SECOND_S = 4.0  # the new attempt: still running when the stale result comes back


def _ended(records: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(r["task"], r["attempt"]) for r in records if r["event"] == "end"}


def test_a_stale_attempt_completed_after_sigcont_is_refused_and_never_journaled(
    tmp_path: Path,
) -> None:
    victims = [f"v{i}" for i in range(PAIRS)]
    survivors = [f"w{i}" for i in range(PAIRS)]
    tasks = [f"f{i}" for i in range(PAIRS)]
    with served_bench(tmp_path) as bench:
        bench.write_plan(
            [
                {
                    "id": t,
                    "requires": ["build"],
                    "inputs": {"sleeps": {"1": FIRST_S, "2": SECOND_S}},
                }
                for t in tasks
            ],
            {name: remote("build") for name in victims + survivors},
            settings={"heartbeat": HEARTBEAT_S},
            defaults={"retries": 0, "timeout": "120s", "estimate": "1s"},
        )
        tokens = {name: bench.token(name) for name in victims + survivors}
        run, url = bench.serve_run()
        procs = {name: bench.agent(url, name, tokens[name], "build") for name in victims}
        first = wait_until(
            lambda: (s := bench.started(1)) and len(s) == PAIRS and s, 60, "first attempts"
        )
        holder = {r["agent"]: t for t, r in first.items()}
        assert set(holder) == set(victims), first

        stopped_at = time.time()
        for name in victims:  # past the lease: paused longer than the heartbeat timeout
            bench.sigstop(procs[name].pid)
        for name in survivors:
            bench.agent(url, name, tokens[name], "build")
        # Every task went to a survivor; every stale program finished meanwhile.
        second = wait_until(
            lambda: (s := bench.started(2)) and len(s) == PAIRS and s, 60, "second attempts"
        )
        assert {r["agent"] for r in second.values()} == set(survivors), second
        wait_until(
            lambda: {(t, 1) for t in tasks} <= _ended(bench.records()),
            30,
            "the stale programs to finish",
        )
        paused = time.time() - stopped_at
        assert paused > TIMEOUT_S
        continued_at = time.time()
        for name in victims:
            bench.sigcont(procs[name].pid)

        # Each continued agent resends its stale result and is told why it is refused.
        def refused() -> list[str]:
            return [
                name for name in victims if "is no longer current" in procs[name].result().stderr
            ]

        wait_until(lambda: len(refused()) == PAIRS, 30, "the stale results' refusals")
        refused_at = time.time()
        # Refused while the new attempt was still running (its program takes SECOND_S).
        racing = sum(1 for t in tasks if (t, 2) not in _ended(bench.records()))
        result = run.wait(timeout=60)
        assert result.code == 0, str(result)
        assert "Traceback" not in result.output, str(result)
        for name in victims:  # the victims carried on as agents: no crash
            assert procs[name].running(), procs[name].result()
            assert "Traceback" not in procs[name].result().stderr

    j = read_journal(bench.state)
    accepted = 0
    for t in tasks:
        rows = [(a["attempt"], a["agent"], a["status"]) for a in j.attempts_of(t)]
        victim = next(n for n, held in holder.items() if held == t)
        assert rows[0] == (1, victim, "lost"), rows
        assert rows[1][0] == 2 and rows[1][2] == "completed", rows
        rec = j.tasks[t]
        if rec["result"] != {"task": t, "by": rows[1][1], "attempt": 2}:
            accepted += 1
    done = [(e["task"], e["data"].get("attempt")) for e in j.of_kind("task_completed")]
    accepted += sum(1 for _, attempt in done if attempt != 2)
    assert sorted(done) == sorted((t, 2) for t in tasks), done

    figure("fencing.stale_results_sent", PAIRS)
    figure("fencing.stale_results_refused", len(refused()))
    figure("fencing.stale_completions_accepted", accepted)
    figure("fencing.pause_s", paused, "s", heartbeat_timeout_s=TIMEOUT_S)
    figure("fencing.refused_while_new_attempt_ran", racing)
    figure("fencing.refusal_after_sigcont_s", refused_at - continued_at, "s")
    assert accepted == 0
