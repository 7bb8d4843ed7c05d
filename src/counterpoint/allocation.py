"""Agents and resources as budgets: who may take a task now, and what it holds while it runs.

Shared by the schedule (simulated time) and the run engine (real time), so a
plan's schedule predicts what the engine will do. Pure logic, no I/O; times are
float seconds from any origin the caller chooses.

A task takes every resource it needs at once or none (no hold-and-wait, so no
resource deadlock). Counted resources (capacity 1 is an exclusive lock) are
released when the task ends; rate limits are token buckets that refill on
their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from counterpoint.plan.model import AgentSpec, ResourceSpec

Units = tuple[tuple[int, int], ...]


class AgentState(StrEnum):
    AVAILABLE = "available"
    BUSY = "busy"
    MAINTENANCE = "maintenance"
    LOST = "lost"
    OFFLINE = "offline"


class TokenBucket:
    """``size`` tokens refilled continuously at ``refill`` tokens per second."""

    __slots__ = ("level", "refill", "size", "updated")

    def __init__(self, size: float, refill: float, now: float = 0.0) -> None:
        self.size, self.refill, self.level, self.updated = size, refill, size, now

    def available(self, now: float) -> float:
        if now > self.updated:
            self.level = min(self.size, self.level + (now - self.updated) * self.refill)
            self.updated = now
        return self.level

    def ready_at(self, now: float, units: float) -> float:
        """When ``units`` tokens will be there (``now`` if they already are)."""
        missing = units - self.available(now)
        return now if missing <= 1e-9 else now + missing / self.refill

    def take(self, units: float, now: float) -> None:
        self.available(now)
        self.level -= units

    def drain(self, now: float, until: float) -> None:
        """Empty the bucket so it holds nothing before ``until`` (a 'retry after' signal)."""
        self.available(now)
        self.level = min(self.level, -(until - now) * self.refill)


@dataclass(frozen=True, slots=True, eq=False)
class Demand:
    """What one task holds: counted units, rate-limit tokens, and which agents could run it.

    Compared and hashed by identity (it keys the ready queue's groups on the hot path):
    get one shared instance per distinct demand from :meth:`ResourcePool.demand`.
    """

    counted: Units
    rated: Units
    pool: int  # index of the able-agents list; -1 when the plan has no agents


class ResourcePool:
    """Counted resources and rate limits, granted all at once or not at all."""

    def __init__(self, specs: Mapping[str, ResourceSpec], now: float = 0.0) -> None:
        self.names = list(specs)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.capacity = [s.capacity or 0 for s in specs.values()]
        self.free = list(self.capacity)
        self.buckets = {
            i: TokenBucket(s.rate, s.rate / s.window_s, now)
            for i, s in enumerate(specs.values())
            if s.rate is not None
        }
        self._demands: dict[tuple[Units, Units, int], Demand] = {}

    def demand(self, resources: Mapping[str, int], pool: int) -> Demand:
        """The one shared :class:`Demand` for these resource units and agent pool."""
        counted, rated = self.split(resources)
        key = (counted, rated, pool)
        found = self._demands.get(key)
        if found is None:
            found = self._demands[key] = Demand(counted, rated, pool)
        return found

    def split(self, resources: Mapping[str, int]) -> tuple[Units, Units]:
        counted: list[tuple[int, int]] = []
        rated: list[tuple[int, int]] = []
        for name, units in resources.items():
            r = self.index[name]
            (rated if r in self.buckets else counted).append((r, units))
        return tuple(sorted(counted)), tuple(sorted(rated))

    def ready_at(self, demand: Demand, now: float) -> float:
        """``now`` if everything is free; when the rate limits allow it; ``inf`` if held."""
        if any(self.free[r] < units for r, units in demand.counted):
            return math.inf
        return max((self.buckets[r].ready_at(now, u) for r, u in demand.rated), default=now)

    def take(self, demand: Demand, now: float) -> None:
        for r, units in demand.counted:
            self.free[r] -= units
        for r, units in demand.rated:
            self.buckets[r].take(units, now)

    def release(self, demand: Demand) -> None:
        for r, units in demand.counted:
            self.free[r] += units

    def in_use(self) -> dict[str, int]:
        return {self.names[r]: self.capacity[r] - self.free[r] for r in range(len(self.names))}


class AgentPool:
    """Agent slots, chosen by capability match first, then load, then plan order."""

    def __init__(self, agents: Mapping[str, AgentSpec]) -> None:
        self.names = list(agents)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.capabilities = [frozenset(a.capabilities) for a in agents.values()]
        self.capacity = [a.capacity for a in agents.values()]
        self.running = [0] * len(self.names)
        self.free_slots = sum(self.capacity)
        self.maintenance = [False] * len(self.names)
        self.lost = [False] * len(self.names)
        self.offline = [False] * len(self.names)  # remote agents not connected
        self.pools: list[list[int]] = []
        self._pool_ids: dict[frozenset[str], int] = {}
        self._single: dict[int, int] = {}

    def pool_for(self, requires: Sequence[str]) -> int:
        """Index of the list of agents able to run work needing ``requires``, best match first."""
        key = frozenset(requires)
        found = self._pool_ids.get(key)
        if found is None:
            able = [a for a, caps in enumerate(self.capabilities) if key <= caps]
            able.sort(key=lambda a: (len(self.capabilities[a] - key), a))
            found = self._pool_ids[key] = len(self.pools)
            self.pools.append(able)
        return found

    def single_pool(self, agent: int) -> int:
        """Index of a pool holding only ``agent`` (contract net: the winner of a call)."""
        found = self._single.get(agent)
        if found is None:
            found = self._single[agent] = len(self.pools)
            self.pools.append([agent])
        return found

    def pick(self, pool: int) -> int | None:
        """The best free agent: fewest unneeded capabilities, then least loaded, then order."""
        best: int | None = None
        best_key = (0, 0.0)
        for a in self.pools[pool]:
            if self.running[a] >= self.capacity[a] or not self.usable(a):
                continue
            key = (len(self.capabilities[a]), self.running[a] / self.capacity[a])
            if best is None or key < best_key:
                best, best_key = a, key
        return best

    def usable(self, agent: int) -> bool:
        return not (self.maintenance[agent] or self.lost[agent] or self.offline[agent])

    def set_capacity(self, agent: int, capacity: int) -> None:
        self.free_slots += capacity - self.capacity[agent]
        self.capacity[agent] = capacity

    def take(self, agent: int) -> None:
        self.running[agent] += 1
        self.free_slots -= 1

    def release(self, agent: int) -> None:
        self.running[agent] -= 1
        self.free_slots += 1

    def state(self, agent: int) -> AgentState:
        if self.lost[agent]:
            return AgentState.LOST
        if self.offline[agent]:
            return AgentState.OFFLINE
        if self.maintenance[agent]:
            return AgentState.MAINTENANCE
        if self.running[agent] >= self.capacity[agent]:
            return AgentState.BUSY
        return AgentState.AVAILABLE

    def can_ever_run(self, pool: int) -> bool:
        """False when every able agent is lost, offline, in maintenance or has no capacity."""
        return any(self.capacity[a] > 0 and self.usable(a) for a in self.pools[pool])
