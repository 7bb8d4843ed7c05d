"""The ready queue: priority class, then the key (planned or latest start), then arrival; aging."""

from __future__ import annotations

from counterpoint.queueing import ReadyQueue


def order(queue: ReadyQueue, now: float) -> list[int]:
    taken = []
    while len(queue):
        group, task = next(iter(queue.candidates(now)))
        queue.take(group, task, now)
        taken.append(task)
    return taken


def test_a_more_urgent_class_goes_first() -> None:
    q = ReadyQueue()
    q.push(1, "g", cls=3, key=(0.0, 0.0), now=0.0)
    q.push(2, "g", cls=0, key=(99.0, 0.0), now=0.0)
    assert order(q, 0.0) == [2, 1]


def test_within_a_class_the_smallest_key_goes_first_then_arrival() -> None:
    q = ReadyQueue()
    q.push(1, "g", cls=2, key=(95.0, 0.0), now=0.0)
    q.push(2, "g", cls=2, key=(91.0, 0.0), now=0.0)
    q.push(3, "g", cls=2, key=(91.0, 0.0), now=0.0)
    assert order(q, 0.0) == [2, 3, 1]


def test_a_task_that_waited_long_enough_ages_past_newer_urgent_work() -> None:
    q = ReadyQueue(aging_s=10.0)
    q.push(1, "g", cls=3, key=(100.0, 0.0), now=0.0)
    q.push(2, "g", cls=2, key=(100.0, 0.0), now=25.0)
    # at t=35 task 1 has waited 35 s: three classes up (3 -> 0); task 2 only one (2 -> 1)
    assert order(q, 35.0) == [1, 2]


def test_without_aging_the_class_order_holds_forever() -> None:
    q = ReadyQueue()
    q.push(1, "g", cls=3, key=(100.0, 0.0), now=0.0)
    q.push(2, "g", cls=2, key=(100.0, 0.0), now=1e9)
    assert order(q, 2e9) == [2, 1]


def test_candidates_offer_one_task_per_group_and_skip_a_group_that_did_not_fit() -> None:
    q = ReadyQueue()
    q.push(1, "big", cls=0, key=(100.0, 0.0), now=0.0)
    q.push(2, "big", cls=0, key=(100.0, 0.0), now=0.0)
    q.push(3, "small", cls=1, key=(100.0, 0.0), now=0.0)
    offered = [task for _, task in q.candidates(0.0)]  # nothing taken: one per group
    assert offered == [1, 3]
    assert len(q) == 3


def test_the_second_key_breaks_ties_of_the_first() -> None:
    q = ReadyQueue()
    q.push(1, "g", cls=2, key=(5.0, 9.0), now=0.0)
    q.push(2, "g", cls=2, key=(5.0, 6.0), now=0.0)
    q.push(3, "g", cls=2, key=(4.0, 50.0), now=0.0)
    assert order(q, 0.0) == [3, 2, 1]


def test_reorder_gives_queued_tasks_new_keys_and_keeps_their_waiting_time() -> None:
    q = ReadyQueue()
    q.push(1, "a", cls=2, key=(1.0, 0.0), now=0.0)
    q.push(2, "a", cls=2, key=(2.0, 0.0), now=0.0)
    q.push(3, "b", cls=2, key=(3.0, 0.0), now=0.0)
    q.reorder(lambda task: (float(-task), 0.0))
    assert order(q, 0.0) == [3, 2, 1]
    q.push(4, "a", cls=2, key=(0.0, 0.0), now=5.0)
    q.reorder(lambda task: (0.0, 0.0))
    assert q.oldest_wait(7.0) == 2.0  # task 4, queued at 5, is still the oldest
