"""Plan errors of the coordination keys (contract net, voting), with file:line:column."""

from __future__ import annotations

import textwrap

from counterpoint.errors import Problem
from counterpoint.plan import CheckReport, check_text

HEAD = """\
version: 1
name: coord
"""
AGENTS = """\
agents:
  alpha: {capabilities: [x], runner: {python: "agents:work"}}
  beta: {capabilities: [x], runner: {python: "agents:work"}}
  gamma: {capabilities: [x], runner: {remote: true}}
"""
PHASES = """\
phases:
  - id: p
    milestones:
      - id: m
        tasks:
          - {id: t1, requires: [x]}
"""


def check(middle: str, agents: str = AGENTS) -> CheckReport:
    return check_text(HEAD + textwrap.dedent(middle) + agents + PHASES, "plan.yaml")


def only(report: CheckReport, fragment: str) -> Problem:
    found = [p for p in report.problems if fragment in p.message]
    assert len(found) == 1, [p.render() for p in report.problems]
    return found[0]


def test_a_valid_contract_net_plan_with_voting_has_no_problems() -> None:
    report = check(
        """\
        settings:
          coordination: contract_net
          contract_net: {deadline: 30s, rounds: 3, cost_weight: 0.5}
          voting: {voters: [alpha, beta, gamma], quorum: 2, deadline: 10m}
        shared_state:
          policies:
            - {key: "net.*", policy: vote, voters: [alpha, beta], quorum: all, deadline: 1m}
        """
    )
    assert report.ok and not report.problems, [p.render() for p in report.problems]
    assert report.plan is not None
    assert report.plan.settings.contract_net.rounds == 3
    assert report.plan.settings.voting.quorum == 2


def test_an_unknown_voter_is_an_error_with_a_suggestion() -> None:
    report = check(
        """\
        settings:
          voting: {voters: [alpha, betta]}
        """
    )
    problem = only(report, "unknown voter 'betta'")
    assert problem.render().endswith(
        "plan.yaml:4:28: error: settings.voting.voters[1]: unknown voter 'betta': voters are "
        "agents of the plan (did you mean 'beta'?)"
    )


def test_a_policy_voter_must_be_an_agent_and_named_once() -> None:
    report = check(
        """\
        shared_state:
          policies:
            - {key: "a", policy: vote, voters: [alpha, alpha, gama]}
        """
    )
    twice = only(report, "named twice")
    assert (twice.line, twice.column) == (5, 48)
    assert "shared_state.policies[0].voters[1]" in twice.render()
    unknown = only(report, "unknown voter 'gama'")
    assert unknown.hint == "did you mean 'gamma'?"


def test_a_quorum_larger_than_the_voters_is_an_error() -> None:
    report = check(
        """\
        settings:
          voting: {voters: [alpha, beta], quorum: 3}
        shared_state:
          policies:
            - {key: "a", policy: vote, quorum: 4}
        """
    )
    settings = only(report, "quorum 3 is more than the 2 voters")
    assert "settings.voting.quorum" in settings.render()
    assert (settings.line, settings.column) == (4, 43)
    policy = only(report, "quorum 4 is more than the 2 voters")  # the settings' voters
    assert "shared_state.policies[0].quorum" in policy.render()


def test_quorum_must_be_a_number_majority_or_all() -> None:
    report = check(
        """\
        settings:
          voting: {voters: [alpha], quorum: most}
        """
    )
    assert not report.ok
    problem = next(p for p in report.errors if "quorum" in p.render())
    assert "settings.voting.quorum" in problem.render()


def test_bid_and_vote_runners_cannot_be_remote() -> None:
    report = check(
        "settings: {coordination: contract_net}\n",
        agents="""\
agents:
  alpha: {capabilities: [x], runner: {python: "agents:work"}, bid: {remote: true}}
  beta: {capabilities: [x], runner: {python: "agents:work"}, vote: {remote: true}}
""",
    )
    bid = only(report, "a bid runner cannot be remote")
    assert "agents.alpha.bid" in bid.render() and "counterpoint agent --bid" in bid.message
    vote = only(report, "a vote runner cannot be remote")
    assert "agents.beta.vote" in vote.render()


def test_bidders_without_contract_net_and_voters_on_other_policies_are_warnings() -> None:
    report = check(
        """\
        shared_state:
          policies:
            - {key: "a", policy: merge, voters: [alpha]}
        """,
        agents="""\
agents:
  alpha: {capabilities: [x], runner: {python: "agents:work"}, bid: {python: "agents:bid"}}
""",
    )
    assert report.ok  # warnings only
    assert (
        "bid is only used with settings.coordination: contract_net"
        in only(report, "bid is only used").render()
    )
    assert (
        "voters only apply to the vote policy (this one is merge)"
        in only(report, "only apply to the vote policy").render()
    )


def test_contract_net_numbers_are_checked() -> None:
    report = check(
        """\
        settings:
          contract_net: {deadline: 0, rounds: 0, cost_weight: -1}
        """
    )
    rendered = "\n".join(p.render() for p in report.errors)
    assert "settings.contract_net.deadline" in rendered
    assert "settings.contract_net.rounds" in rendered
    assert "settings.contract_net.cost_weight" in rendered
