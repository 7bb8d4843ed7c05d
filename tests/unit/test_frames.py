"""Session frames: decoding, the hello and result checks, and the error frame."""

from __future__ import annotations

from typing import Any

import pytest

from counterpoint.net import frames as fr
from counterpoint.net.frames import FrameError, check_hello, check_result, decode, encode


def hello(**changes: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "op": "hello",
        "version": "1.0",
        "session": "s-1",
        "capabilities": ["build"],
        "capacity": 2,
        "last_seq": 7,
    }
    frame.update(changes)
    return {k: v for k, v in frame.items() if v is not ...}


def result(**changes: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "op": "result",
        "seq": 1,
        "task_id": "t1",
        "attempt": 1,
        "status": "completed",
        "result": {"ok": True},
    }
    frame.update(changes)
    return {k: v for k, v in frame.items() if v is not ...}


def refused(call: Any, *args: Any) -> FrameError:
    with pytest.raises(FrameError) as info:
        call(*args)
    return info.value


def test_decode_returns_the_frame_object() -> None:
    frame = {"op": "msg", "seq": 3, "message": {"a": "é"}}
    assert decode(encode(frame)) == frame
    assert decode(encode(frame).encode("utf-8")) == frame


def test_decode_measures_the_size_in_utf8_bytes() -> None:
    text = encode({"op": "x", "pad": "é" * 10})  # 20 bytes of padding, 10 characters
    size = len(text.encode("utf-8"))
    assert decode(text, size) == {"op": "x", "pad": "é" * 10}
    exc = refused(decode, text, size - 1)
    assert (exc.code, exc.field) == ("too_large", "frame")
    assert f"{size} bytes" in str(exc) and f"limit is {size - 1}" in str(exc)
    exc = refused(decode, text.encode("utf-8"), size - 1)
    assert exc.code == "too_large"


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ("{not json", "invalid_json", "frame"),
        ("", "invalid_json", "frame"),
        (b"\xff\xfe", "invalid_json", "frame"),
        ("[1, 2]", "invalid_frame", "frame"),
        ('"hello"', "invalid_frame", "frame"),
        ("42", "invalid_frame", "frame"),
        ("null", "invalid_frame", "frame"),
        ("{}", "invalid_frame", "op"),
        ('{"op": 3}', "invalid_frame", "op"),
        ('{"op": null, "seq": 1}', "invalid_frame", "op"),
    ],
)
def test_decode_errors_carry_a_code_and_field(text: str | bytes, code: str, field: str) -> None:
    exc = refused(decode, text)
    assert (exc.code, exc.field) == (code, field)
    assert isinstance(exc, ValueError)


def test_check_hello_returns_its_fields_with_defaults() -> None:
    assert check_hello(hello()) == ("s-1", ["build"], 2, 7)
    assert check_hello({"op": "hello", "session": "s"}) == ("s", [], 1, 0)


@pytest.mark.parametrize(
    ("frame", "code", "field", "says"),
    [
        ({"op": "msg", "session": "s"}, "bad_hello", "op", "first frame must be a hello"),
        (hello(version="2.0"), "bad_hello", "version", "'2.0' is not supported"),
        (hello(version=1), "bad_hello", "version", "not supported"),
        (hello(session=...), "invalid_frame", "session", "'session' must be"),
        (hello(session=""), "invalid_frame", "session", "non-empty"),
        (hello(session=5), "invalid_frame", "session", "'session' must be"),
        (hello(session="s" * 101), "invalid_frame", "session", "at most 100"),
        (hello(capabilities="build"), "bad_hello", "capabilities", "list of names"),
        (hello(capabilities=["build", ""]), "bad_hello", "capabilities", "list of names"),
        (hello(capabilities=[1]), "bad_hello", "capabilities", "list of names"),
        (hello(capacity=0), "invalid_frame", "capacity", ">= 1"),
        (hello(capacity="2"), "invalid_frame", "capacity", "integer"),
        (hello(capacity=True), "invalid_frame", "capacity", "integer"),
        (hello(last_seq=-1), "invalid_frame", "last_seq", ">= 0"),
        (hello(last_seq=1.5), "invalid_frame", "last_seq", "integer"),
    ],
)
def test_check_hello_errors_name_the_field(
    frame: dict[str, Any], code: str, field: str, says: str
) -> None:
    exc = refused(check_hello, frame)
    assert (exc.code, exc.field) == (code, field)
    assert says in str(exc)


def test_check_hello_accepts_a_session_of_100_characters() -> None:
    assert check_hello(hello(session="s" * 100))[0] == "s" * 100


@pytest.mark.parametrize("status", fr.RESULT_STATUSES)
def test_check_result_returns_task_attempt_and_status(status: str) -> None:
    assert check_result(result(status=status, attempt=3)) == ("t1", 3, status)


def test_check_result_allows_a_missing_result() -> None:
    assert check_result(result(result=..., status="failed")) == ("t1", 1, "failed")


@pytest.mark.parametrize(
    ("frame", "field", "says"),
    [
        (result(task_id=...), "task_id", "'task_id' must be"),
        (result(task_id=""), "task_id", "non-empty"),
        (result(task_id="t" * 201), "task_id", "at most 200"),
        (result(attempt=...), "attempt", ">= 1"),
        (result(attempt=0), "attempt", ">= 1"),
        (result(attempt=False), "attempt", "integer"),
        (result(attempt="1"), "attempt", "integer"),
        (result(status=...), "status", "completed, failed, rate_limited"),
        (result(status="done"), "status", "completed, failed, rate_limited"),
        (result(result=[1]), "result", "must be an object"),
        (result(result="ok"), "result", "must be an object"),
    ],
)
def test_check_result_errors_name_the_field(frame: dict[str, Any], field: str, says: str) -> None:
    exc = refused(check_result, frame)
    assert (exc.code, exc.field) == ("invalid_frame", field)
    assert says in str(exc)


def test_an_error_frame_has_op_code_message_and_optional_field_and_seq() -> None:
    exc = FrameError("not_your_task", "task 't9' is not assigned to 'a'", "task_id")
    assert exc.frame() == {
        "op": "error",
        "code": "not_your_task",
        "message": "task 't9' is not assigned to 'a'",
        "field": "task_id",
    }
    assert exc.frame(12) == {**exc.frame(), "seq": 12}
    assert exc.frame(0)["seq"] == 0
    bare = FrameError("unknown_op", "unknown op 'x'")
    assert bare.frame() == {"op": "error", "code": "unknown_op", "message": "unknown op 'x'"}
    assert decode(encode(exc.frame(3))) == exc.frame(3)


def test_fatal_close_codes_are_the_ones_needing_a_fix_first() -> None:
    assert {fr.CLOSE_BAD_HELLO, fr.CLOSE_UNAUTHORIZED, fr.CLOSE_UNKNOWN_AGENT} <= (
        fr.FATAL_CLOSE_CODES
    )
    assert fr.CLOSE_REPLACED in fr.FATAL_CLOSE_CODES
    assert fr.CLOSE_LOST not in fr.FATAL_CLOSE_CODES
    assert fr.CLOSE_VIOLATIONS not in fr.FATAL_CLOSE_CODES
    assert fr.CLOSE_GOING_AWAY not in fr.FATAL_CLOSE_CODES
