"""Agent choice, all-or-nothing resources and token buckets, shared by schedule and engine."""

from __future__ import annotations

import math

from counterpoint.allocation import AgentPool, AgentState, Demand, ResourcePool, TokenBucket
from counterpoint.plan.model import AgentSpec, ResourceSpec


def agents(**caps: tuple[list[str], int]) -> AgentPool:
    return AgentPool({n: AgentSpec(capabilities=c, capacity=k) for n, (c, k) in caps.items()})


def test_a_specialist_is_preferred_over_a_generalist_so_the_generalist_stays_free() -> None:
    pool = agents(generalist=(["security", "review", "design"], 1), specialist=(["security"], 1))
    assert pool.names[pool.pick(pool.pool_for(["security"])) or 0] == "specialist"


def test_among_equal_matches_the_least_loaded_agent_is_chosen() -> None:
    pool = agents(a=(["x"], 4), b=(["x"], 4))
    p = pool.pool_for(["x"])
    first = pool.pick(p)
    assert first is not None
    pool.take(first)
    second = pool.pick(p)
    assert second is not None and second != first


def test_agents_in_maintenance_or_at_capacity_take_no_work() -> None:
    pool = agents(a=(["x"], 1), b=(["x"], 1))
    p = pool.pool_for(["x"])
    pool.maintenance[0] = True
    assert pool.state(0) is AgentState.MAINTENANCE
    chosen = pool.pick(p)
    assert chosen == 1
    pool.take(1)
    assert pool.state(1) is AgentState.BUSY
    assert pool.pick(p) is None
    assert pool.can_ever_run(p)
    pool.maintenance[1] = True
    assert not pool.can_ever_run(p)


def test_an_agent_without_every_required_capability_is_never_offered() -> None:
    pool = agents(a=(["x"], 1))
    assert pool.pick(pool.pool_for(["x", "y"])) is None


def test_resources_are_granted_all_at_once_or_not_at_all() -> None:
    pool = ResourcePool({"db": ResourceSpec(capacity=2), "lock": ResourceSpec(capacity=1)})
    both = Demand(*pool.split({"db": 1, "lock": 1}), pool=-1)
    db_only = Demand(*pool.split({"db": 2}), pool=-1)
    assert pool.ready_at(both, 0.0) == 0.0
    pool.take(both, 0.0)
    assert pool.ready_at(both, 0.0) == math.inf  # the lock is held: nothing is taken
    assert pool.free == [1, 0]
    assert pool.ready_at(db_only, 0.0) == math.inf
    pool.release(both)
    assert pool.free == [2, 1]
    assert pool.in_use() == {"db": 0, "lock": 0}


def test_a_token_bucket_refills_at_its_rate_and_says_when_enough_is_back() -> None:
    bucket = TokenBucket(size=2, refill=1.0, now=0.0)
    bucket.take(2, 0.0)
    assert bucket.available(0.0) == 0
    assert bucket.ready_at(0.0, 1) == 1.0
    assert bucket.available(10.0) == 2  # never above its size


def test_draining_a_bucket_holds_everyone_back_until_the_retry_time() -> None:
    bucket = TokenBucket(size=5, refill=1.0, now=0.0)
    bucket.drain(0.0, until=30.0)
    assert bucket.ready_at(0.0, 1) > 30.0
    assert bucket.available(31.0) >= 1


def test_a_rate_limited_demand_waits_for_its_bucket() -> None:
    pool = ResourcePool({"api": ResourceSpec(rate=1, per=60)})
    demand = Demand(*pool.split({"api": 1}), pool=-1)
    pool.take(demand, 0.0)
    assert pool.ready_at(demand, 0.0) == 60.0
