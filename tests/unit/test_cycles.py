"""Dependency cycles: every cycle is reported, as the chain of things that wait on each other.

``x -> y`` in a cycle reads "y waits for x"; a cycle starts at its lowest-numbered
node (tasks come first, in plan order) and closes on its first name.
"""

from __future__ import annotations

import textwrap

import pytest

from counterpoint.errors import PlanError, Problem
from counterpoint.plan import CheckReport, check_text, parse_plan


def check(text: str) -> CheckReport:
    return check_text(textwrap.dedent(text), "plan.yaml")


def cycles(report: CheckReport) -> list[Problem]:
    return [p for p in report.errors if p.message.startswith("cycle: ")]


def cycle_messages(report: CheckReport) -> list[str]:
    return [p.message for p in cycles(report)]


def test_a_three_task_cycle_is_reported_as_the_full_chain() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - id: a
                    needs: [c]
                  - id: b
                    needs: [a]
                  - id: c
                    needs: [b]
        """
    )
    assert not report.ok
    assert report.plan is None
    assert report.graph is None
    assert cycle_messages(report) == ["cycle: a -> b -> c -> a"]
    assert len(report.errors) == 1


def test_a_cycle_starts_at_the_first_task_in_plan_order_whatever_the_needs_order() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - id: zeta
                    needs: [alpha]
                  - id: mid
                    needs: [zeta]
                  - id: alpha
                    needs: [mid]
        """
    )
    # alpha waits for mid, mid for zeta, zeta for alpha: zeta comes first in the file
    assert cycle_messages(report) == ["cycle: zeta -> mid -> alpha -> zeta"]


def test_a_cycle_position_points_at_the_needs_entry_of_its_first_edge() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - id: a
                    needs: [c]
                  - id: b
                    needs: [x, a]
                  - id: c
                    needs: [b]
                  - id: x
        """
    )
    [problem] = cycles(report)
    # the first edge a -> b is written as b's needs entry "a"
    assert problem.path == ("phases", 0, "milestones", 0, "tasks", 1, "needs", 1)
    assert (problem.line, problem.column) == (11, 24)
    assert problem.render().startswith(
        "plan.yaml:11:24: error: phases[0].milestones[0].tasks[1].needs[1]: cycle: a -> b -> c -> a"
    )


def test_two_independent_cycles_are_both_reported() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - id: a
                    needs: [b]
                  - id: b
                    needs: [a]
                  - id: free
              - id: m2
                tasks:
                  - id: x
                    needs: [z]
                  - id: y
                    needs: [x]
                  - id: z
                    needs: [y]
        """
    )
    assert sorted(cycle_messages(report)) == ["cycle: a -> b -> a", "cycle: x -> y -> z -> x"]
    assert len(report.errors) == 2


def test_a_task_needing_itself_is_a_cycle_of_one() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - id: other
                  - id: selfish
                    needs: [other, selfish]
        """
    )
    [problem] = cycles(report)
    assert problem.message == "cycle: selfish -> selfish"
    assert problem.path == ("phases", 0, "milestones", 0, "tasks", 1, "needs", 1)
    assert (problem.line, problem.column) == (10, 28)


def test_tasks_that_only_wait_downstream_of_a_cycle_are_not_reported() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - id: a
                    needs: [b]
                  - id: b
                    needs: [a]
                  - id: downstream
                    needs: [b]
                  - id: further
                    needs: [downstream]
          - id: p2
            milestones:
              - id: m2
                tasks:
                  - id: later
        """
    )
    assert cycle_messages(report) == ["cycle: a -> b -> a"]


def test_milestones_waiting_on_each_other_are_reported_as_milestones() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: A
                after: [B]
                tasks: [{id: a}]
              - id: B
                after: [A]
                tasks: [{id: b}]
        """
    )
    [problem] = cycles(report)
    assert problem.message == "cycle: milestone A -> milestone B -> milestone A"
    assert problem.path == ("phases", 0, "milestones", 1, "after", 0)
    assert (problem.line, problem.column) == (10, 17)


def test_empty_milestones_waiting_on_each_other_are_a_cycle() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: A
                after: [B]
              - id: B
                after: [A]
        """
    )
    assert cycle_messages(report) == ["cycle: milestone A -> milestone B -> milestone A"]


def test_a_milestone_after_itself_is_a_cycle() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: A
                after: [A]
                tasks: [{id: a}]
        """
    )
    [problem] = cycles(report)
    assert problem.message == "cycle: milestone A -> milestone A"
    assert problem.path == ("phases", 0, "milestones", 0, "after", 0)


def test_a_task_needing_a_task_of_a_later_phase_is_a_cycle_through_phase_order() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - id: early
                    needs: [late]
          - id: p2
            milestones:
              - id: m2
                tasks:
                  - id: late
        """
    )
    [problem] = cycles(report)
    assert problem.message == (
        "cycle: early -> milestone m1 done -> phase p1 done -> phase p2 starts"
        " -> milestone m2 starts -> late -> early"
    )
    assert problem.path == ("phases", 0, "milestones", 0, "tasks", 0, "needs", 0)
    assert (problem.line, problem.column) == (9, 21)


def test_needing_a_later_phase_is_allowed_when_the_earlier_phase_overlaps() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            overlap: true
            milestones:
              - id: m1
                tasks:
                  - id: early
                    needs: [late]
          - id: p2
            milestones:
              - id: m2
                tasks:
                  - id: late
        """
    )
    assert report.ok, [p.render() for p in report.problems]
    assert report.graph is not None
    assert report.graph.earliest_start("early") == report.graph.ef[report.graph.index["late"]]


def test_a_needs_against_a_milestone_after_is_a_cycle() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: A
                tasks:
                  - id: a
                    needs: [b]
              - id: B
                after: [A]
                tasks:
                  - id: b
        """
    )
    [problem] = cycles(report)
    assert problem.message == "cycle: a -> milestone A done -> milestone B starts -> b -> a"
    assert problem.path == ("phases", 0, "milestones", 0, "tasks", 0, "needs", 0)
    assert (problem.line, problem.column) == (9, 21)


def test_a_milestone_after_a_milestone_of_a_later_phase_is_a_cycle() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: A
                after: [B]
          - id: p2
            milestones:
              - id: B
        """
    )
    [problem] = cycles(report)
    assert problem.message == (
        "cycle: phase p1 done -> phase p2 starts -> milestone B -> milestone A -> phase p1 done"
    )
    assert problem.path == ("phases", 0, "milestones", 0, "after", 0)


def test_a_cycle_raises_a_plan_error_from_parse_plan() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones:
              - id: m1
                tasks:
                  - {id: a, needs: [b]}
                  - {id: b, needs: [a]}
        """
    )
    with pytest.raises(PlanError, match=r"cycle: a -> b -> a"):
        parse_plan(text, "plan.yaml")


def test_a_cycle_among_ten_thousand_tasks_reports_only_the_cycle() -> None:
    lines = [
        "version: 1",
        "name: big",
        "phases:",
        "  - id: p1",
        "    milestones:",
        "      - id: m1",
        "        tasks:",
        "          - {id: loop-a, needs: [loop-b]}",
        "          - {id: loop-b, needs: [loop-a]}",
    ]
    for i in range(10_000):
        needs = f"[t{i - 1}]" if i % 100 else "[loop-b]" if i == 0 else "[]"
        lines.append(f"          - {{id: t{i}, needs: {needs}}}")
    lines += ["      - id: m2", "        tasks:"]
    lines += [f"          - {{id: u{i}, needs: [t{i}]}}" for i in range(0, 10_000, 7)]
    report = check_text("\n".join(lines) + "\n", "plan.yaml")
    assert cycle_messages(report) == ["cycle: loop-a -> loop-b -> loop-a"]
    [problem] = report.errors
    assert problem.path == ("phases", 0, "milestones", 0, "tasks", 1, "needs", 0)
    assert (problem.line, problem.column) == (9, 34)
