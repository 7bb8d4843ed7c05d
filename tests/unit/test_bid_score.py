"""The contract-net score and its tie-breaks, how answers are judged, and vote counting."""

from __future__ import annotations

from typing import Any

import pytest

from counterpoint.net import frames as fr
from counterpoint.runtime.canvass import NO_ANSWER, Raw, is_python_target, takes_two
from counterpoint.runtime.coordination import Proposal, judge_bid, rank, score
from counterpoint.runtime.voting import judge_vote, quorum_count, tally

DEFAULTS = {"duration_s": 3600.0, "cost": 0.0, "load": 0.5}


def proposal(agent: str, order: int, duration: float, load: float = 0.0, **kw: Any) -> Proposal:
    cost = kw.get("cost", 0.0)
    weight = kw.get("weight", 0.0)
    return Proposal(
        agent,
        order,
        duration,
        cost,
        load,
        kw.get("unneeded", 0),
        score(duration, load, cost, weight),
    )


def test_the_score_is_duration_times_one_plus_load_plus_weighted_cost() -> None:
    assert score(100.0, 0.0) == 100.0
    assert score(100.0, 1.0) == 200.0  # a fully loaded agent counts double
    assert score(100.0, 0.5, cost=10.0, cost_weight=2.0) == 170.0
    assert score(100.0, 0.0, cost=1000.0) == 100.0  # cost_weight 0: cost does not count


def test_the_lowest_score_wins_whatever_the_order_of_the_proposals() -> None:
    a = proposal("a", 0, 100.0)  # 100
    b = proposal("b", 1, 60.0, load=0.5)  # 90
    c = proposal("c", 2, 80.0, load=0.0)  # 80
    for ordering in ([a, b, c], [c, b, a], [b, a, c]):
        assert [p.agent for p in rank(ordering)] == ["c", "b", "a"]


def test_cost_changes_the_winner_only_through_its_weight() -> None:
    cheap_slow = proposal("cheap", 0, 100.0, cost=0.0, weight=1.0)  # 100
    fast_dear = proposal("dear", 1, 50.0, cost=80.0, weight=1.0)  # 130
    assert rank([fast_dear, cheap_slow])[0].agent == "cheap"
    fast_dear = proposal("dear", 1, 50.0, cost=80.0, weight=0.1)  # 58
    cheap_slow = proposal("cheap", 0, 100.0, cost=0.0, weight=0.1)
    assert rank([cheap_slow, fast_dear])[0].agent == "dear"


def test_ties_go_to_fewer_unneeded_capabilities_then_plan_order() -> None:
    generalist = proposal("generalist", 0, 60.0, unneeded=3)
    specialist = proposal("specialist", 2, 60.0, unneeded=0)
    other = proposal("other", 1, 60.0, unneeded=0)
    assert [p.agent for p in rank([generalist, specialist, other])] == [
        "other",
        "specialist",
        "generalist",
    ]


def test_an_answer_is_judged_proposal_refusal_silence_or_invalid() -> None:
    answer, fields = judge_bid("a", Raw("python", {"duration_s": 10, "cost": 2}), DEFAULTS)
    assert answer.status == "proposal"
    assert fields == {"duration_s": 10.0, "cost": 2.0, "load": 0.5}  # load from the default

    answer, fields = judge_bid("a", Raw("default", None), DEFAULTS)
    assert (answer.status, fields) == ("proposal", DEFAULTS)  # the built-in bidder

    answer, fields = judge_bid("a", Raw("python", None), DEFAULTS)
    assert (answer.status, answer.answer, fields) == ("refusal", {"refuse": "no proposal"}, {})

    answer, _ = judge_bid("a", Raw("shell", {"refuse": "too busy"}), DEFAULTS)
    assert (answer.status, answer.answer) == ("refusal", {"refuse": "too busy"})

    answer, _ = judge_bid("a", Raw("remote"), DEFAULTS)
    assert (answer.status, answer.error) == ("none", None)
    assert Raw("remote").value is NO_ANSWER

    answer, _ = judge_bid("a", Raw("shell", error="exit code 3: boom"), DEFAULTS)
    assert (answer.status, answer.error) == ("error", "exit code 3: boom")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"duration": 5}, "unknown field 'duration'"),
        ({"duration_s": -1}, "duration_s must be a number >= 0, got -1"),
        ({"load": True}, "load must be a number >= 0, got True"),
        ({"cost": "cheap"}, "cost must be a number >= 0, got 'cheap'"),
        ({"duration_s": float("inf")}, "duration_s must be a number >= 0"),
        ([1, 2], "a proposal must be an object, not list"),
    ],
)
def test_a_malformed_proposal_is_invalid_and_says_why(value: Any, error: str) -> None:
    answer, fields = judge_bid("a", Raw("python", value), DEFAULTS)
    assert answer.status == "invalid" and fields == {}
    assert answer.error is not None and error in answer.error


def test_a_vote_must_be_one_of_the_options() -> None:
    options = ["red", {"size": 2}]
    answer, choice = judge_vote("v", Raw("python", "red"), options)
    assert (answer.status, choice) == ("vote", 0)
    answer, choice = judge_vote("v", Raw("shell", {"vote": {"size": 2}}), options)
    assert (answer.status, choice) == ("vote", 1)
    answer, choice = judge_vote("v", Raw("python", {"vote": "green"}), options)
    assert (answer.status, choice) == ("invalid", None)
    assert answer.error is not None and '"green" is not one of the options' in answer.error
    answer, choice = judge_vote("v", Raw("default", None), options)
    assert (answer.status, answer.answer, choice) == (
        "abstain",
        {"abstain": "no vote responder"},
        None,
    )
    answer, choice = judge_vote("v", Raw("remote", {"abstain": "no opinion"}), options)
    assert (answer.status, choice) == ("abstain", None)
    answer, choice = judge_vote("v", Raw("remote"), options)
    assert (answer.status, choice) == ("none", None)


def test_quorum_majority_all_and_numbers() -> None:
    assert [quorum_count("majority", n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert quorum_count("all", 4) == 4
    assert quorum_count(2, 5) == 2


def test_the_tally_decides_or_reports_a_tie_or_no_quorum() -> None:
    options = ["a", "b", "c"]
    decided = tally(options, {"v1": 0, "v2": 1, "v3": 0, "v4": None}, 2)
    assert (decided.outcome, decided.winner, decided.counts) == ("decided", 0, [2, 1, 0])
    assert decided.reason == "2 of 3 votes (quorum 2, 4 voters)"
    tie = tally(options, {"v1": 0, "v2": 1}, 2)
    assert (tie.outcome, tie.winner) == ("tie", None)
    assert tie.reason == 'tie: "a", "b" have 1 votes each'
    short = tally(options, {"v1": 0, "v2": None, "v3": None}, 2)
    assert (short.outcome, short.winner) == ("no_quorum", None)
    assert short.reason == "no quorum: 1 vote of 3 voters, quorum 2"


def test_bid_and_vote_frames_are_checked_field_by_field() -> None:
    assert fr.check_bid({"op": "bid", "seq": 1, "call": 4, "duration_s": 3}) == (
        4,
        {"duration_s": 3},
    )
    assert fr.check_bid({"op": "bid", "seq": 1, "call": 4, "refuse": "busy"}) == (
        4,
        {"refuse": "busy"},
    )
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({"op": "bid", "seq": 1}, "call", "'call' must be an integer >= 1"),
        ({"op": "bid", "seq": 1, "call": 1, "speed": 3}, "speed", "unknown field 'speed'"),
        ({"op": "bid", "seq": 1, "call": 1, "cost": -2}, "cost", "'cost' must be a number"),
        ({"op": "bid", "seq": 1, "call": 1, "refuse": 3}, "refuse", "'refuse' must be a reason"),
        ({"op": "bid", "seq": 1, "call": 1, "refuse": "x", "cost": 1}, "cost", "only 'refuse'"),
        ({"op": "vote", "seq": 1, "ballot": 2}, "vote", "exactly one of vote or abstain"),
        ({"op": "vote", "seq": 1, "ballot": 2, "vote": 1, "x": 1}, "x", "unknown field 'x'"),
        ({"op": "vote", "seq": 1, "ballot": 2, "abstain": 5}, "abstain", "must be a reason"),
    ]
    for frame, field, message in bad:
        check = fr.check_bid if frame["op"] == "bid" else fr.check_vote
        with pytest.raises(fr.FrameError) as caught:
            check(frame)
        assert caught.value.field == field and message in str(caught.value), frame
    assert fr.check_vote({"op": "vote", "seq": 1, "ballot": 2, "vote": [1]}) == (2, {"vote": [1]})


def test_responder_helpers() -> None:
    assert is_python_target("bidders:fast") and is_python_target("pkg.mod:fn")
    assert not is_python_target("./bid.sh") and not is_python_target("python3 bid.py")

    def one(task: Any) -> None: ...

    def two(task: Any, call: Any) -> None: ...

    def star(*args: Any) -> None: ...

    assert (takes_two(one), takes_two(two), takes_two(star)) == (False, True, True)
