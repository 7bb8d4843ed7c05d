"""Rate-limited resources: a token bucket shared by every agent, and "retry after" signals."""

from __future__ import annotations

from pathlib import Path

from run_helpers import Workspace, agent_spec, one_phase, run_in_process, task

# Agent start times are taken a moment after the engine dispatches, so two
# starts may look a few milliseconds closer together than they were granted.
JITTER_S = 0.1


def most_starts_in_any_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    best = 0
    for i, first in enumerate(starts):
        best = max(best, sum(1 for s in starts[i:] if s < first + window))
    return best


def test_a_rate_limit_of_2_per_second_spaces_the_starts_after_the_initial_burst(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task(f"call{i}", sleep=0.01, resources={"api": 1}) for i in range(6)],
            agents={"w": agent_spec(ws, capacity=6)},
            resources={"api": {"rate": 2, "per": "1s"}},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    starts = sorted(e.start for e in ws.executions())
    assert len(starts) == 6
    # The bucket holds 2 tokens: two calls go at once, then one per half second.
    assert starts[1] - starts[0] < 0.3
    after_burst = starts[2:]
    assert most_starts_in_any_window(after_burst, 1.0 - JITTER_S) <= 2
    assert most_starts_in_any_window(starts, 1.0 - JITTER_S) <= 3
    assert starts[2] - starts[0] >= 0.5 - JITTER_S
    assert starts[-1] - starts[0] >= 2.0 - JITTER_S


def test_a_rate_limited_agent_drains_the_bucket_so_every_task_holding_it_waits(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                # Hits the provider's limit at once, which says "retry after 1 s".
                task("first", retries=0, resources={"api": 1}, inputs={"rate_limit_first": 1.0}),
                # Becomes ready a moment later; the bucket (10 tokens) would let these go at once.
                task("warmup", sleep=0.2),
                *(
                    task(f"next{i}", sleep=0.01, needs=["warmup"], resources={"api": 1})
                    for i in range(3)
                ),
                task("unrelated", sleep=0.01, needs=["warmup"]),
            ],
            agents={"w": agent_spec(ws, capacity=8)},
            resources={"api": {"rate": 10, "per": "1s"}},
        )
    )
    code, seen = run_in_process(ws)
    assert code == 0
    runs = ws.runs_of("first")
    assert [e.outcome for e in runs] == ["rate_limited", "end"]  # no retry used up
    limited_at = runs[0].end
    assert limited_at is not None
    assert runs[1].start >= limited_at + 1.0 - JITTER_S
    done = ws.finished()
    for i in range(3):
        assert done[f"next{i}"].start >= limited_at + 1.0 - JITTER_S, f"next{i} ignored the drain"
    # A task that does not hold the resource is not held back.
    assert done["unrelated"].start < limited_at + 0.6
    assert [e.task for e in seen.kinds("task_rate_limited")] == ["first"]
