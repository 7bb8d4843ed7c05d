"""The ready queue: which ready task goes next, grouped by what the tasks demand.

Order: priority class (critical first), then the task's key (its planned start in
the plan's schedule, see :mod:`counterpoint.runtime.dispatch_order`, or its latest
start: the critical path first), then arrival. A task that has waited ``aging_s`` moves up
one class, and so on, so a flood of urgent work cannot starve the rest.

Ready tasks with the same demand (able agents and resource units) share a
group: when the best task of a group does not fit, no task of it does, so the
dispatcher tests each group once instead of each task.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterator

CLASSES = 4
Key = tuple[float, float]  # smaller first: (planned start, latest start) or (latest start, 0)
Entry = tuple[Key, int, int]  # (key, sequence, task)


class _Group:
    __slots__ = ("heaps", "held", "since")

    def __init__(self) -> None:
        self.heaps: list[list[Entry]] = [[] for _ in range(CLASSES)]
        self.since: dict[int, float] = {}
        self.held = -math.inf  # when the group's best task last could not start

    def best(self, now: float, aging_s: float) -> tuple[tuple[float, int, Key, int], int] | None:
        """The group's next task with its sort key, or None when the group is empty."""
        found = None
        for cls, heap in enumerate(self.heaps):
            if not heap:
                continue
            order, seq, task = heap[0]
            aged = cls - math.floor((now - self.since[task]) / aging_s) if aging_s else cls
            key = (float(aged), cls, order, seq)
            if found is None or key < found[0]:
                found = (key, cls)
        return found


class ReadyQueue:
    """Ready tasks by demand group; ``candidates`` yields one per group, best first."""

    def __init__(self, aging_s: float = math.inf) -> None:
        self.aging_s = 0.0 if math.isinf(aging_s) else aging_s
        self.groups: dict[Hashable, _Group] = {}
        self._seq = 0
        self.size = 0

    def push(self, task: int, group: Hashable, cls: int, key: Key, now: float) -> None:
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = _Group()
        self._seq += 1
        heapq.heappush(g.heaps[cls], (key, self._seq, task))
        g.since[task] = now
        self.size += 1

    def candidates(self, now: float) -> Iterator[tuple[Hashable, int]]:
        """(group, task) pairs, best first; after ``take`` the group offers its next task."""
        ranked: list[tuple[tuple[float, int, Key, int], int, Hashable]] = []
        for n, (group, g) in enumerate(self.groups.items()):
            best = g.best(now, self.aging_s)
            if best is not None:
                ranked.append((best[0], n, group))
        heapq.heapify(ranked)
        while ranked:
            _, n, group = heapq.heappop(ranked)
            current = self.groups.get(group)
            if current is None:
                continue
            best = current.best(now, self.aging_s)
            if best is None:
                continue
            task = current.heaps[best[1]][0][2]
            taken_before = self.size
            yield group, task
            if self.size < taken_before and group in self.groups:
                nxt = self.groups[group].best(now, self.aging_s)
                if nxt is not None:
                    heapq.heappush(ranked, (nxt[0], n, group))

    def take(self, group: Hashable, task: int, now: float) -> tuple[float, bool]:
        """Remove ``task`` (the group's current best) from the queue.

        Returns how long it waited, and whether it started at its first chance (its
        group was never held back, see :meth:`hold`, since the task became ready).
        """
        g = self.groups[group]
        best = g.best(now, self.aging_s)
        assert best is not None and g.heaps[best[1]][0][2] == task
        heapq.heappop(g.heaps[best[1]])
        since = g.since.pop(task)
        self.size -= 1
        if not any(g.heaps):
            del self.groups[group]
        return now - since, g.held < since

    def hold(self, group: Hashable, now: float) -> None:
        """The group's best task could not start (no agent, resources, a global cap)."""
        g = self.groups.get(group)
        if g is not None:
            g.held = now

    def hold_all(self, now: float) -> None:
        for g in self.groups.values():
            g.held = now

    def reorder(self, key: Callable[[int], Key]) -> None:
        """Give every queued task a new key (arrival order and waiting times kept)."""
        for g in self.groups.values():
            for cls, heap in enumerate(g.heaps):
                g.heaps[cls] = [(key(task), seq, task) for _, seq, task in heap]
                heapq.heapify(g.heaps[cls])

    def oldest_wait(self, now: float) -> float:
        """How long the task that has been ready longest has waited (0 when empty)."""
        oldest = min((min(g.since.values()) for g in self.groups.values() if g.since), default=now)
        return max(0.0, now - oldest)

    def __len__(self) -> int:
        return self.size
