"""The loader never crashes: any text yields a plan or positioned errors, never an exception.

``check_text`` must return a report with a plan, or a report whose errors each carry
a line; ``load_plan`` and ``parse_plan`` may raise only :class:`PlanError`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from counterpoint.errors import PlanError
from counterpoint.plan import CheckReport, check_text, load_plan, parse_plan

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_TEXT = (REPO / "examples" / "cloud-migration" / "plan.yaml").read_text(encoding="utf-8")
EXAMPLE_LINES = EXAMPLE_TEXT.splitlines()
NAMES = ["plan.yaml", "plan.json", "-"]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_handled(report: CheckReport) -> None:
    """A plan and no errors, or no plan and at least one error, every error positioned."""
    assert isinstance(report, CheckReport)
    if report.plan is not None:
        assert report.errors == []
        assert report.graph is not None
    else:
        assert report.errors, "no plan but no error either"
        for problem in report.errors:
            assert problem.line >= 1, problem
            assert problem.column >= 1, problem
            assert problem.render()


def check_everywhere(text: str) -> None:
    for name in NAMES:
        assert_handled(check_text(text, name))
        try:
            parse_plan(text, name)
        except PlanError as exc:
            assert exc.problems


# ---------------------------------------------------------------------------
# Random text and bytes


@FUZZ
@given(st.text(max_size=400))
def test_random_text_is_a_plan_or_positioned_errors(text: str) -> None:
    check_everywhere(text)


YAMLISH = st.text(alphabet=st.sampled_from(list("ab:-[]{}\"' \n\t#&*!|>?,.01%@`~")), max_size=300)


@FUZZ
@given(YAMLISH)
def test_random_yaml_punctuation_is_a_plan_or_positioned_errors(text: str) -> None:
    check_everywhere(text)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["utf-8", "latin-1"]))
def test_random_bytes_decoded_leniently_are_handled(data: bytes, encoding: str) -> None:
    check_everywhere(data.decode(encoding, errors="replace"))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_in_a_file_are_handled(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "plan.yaml"
    path.write_bytes(data)
    try:
        load_plan(path)
    except PlanError as exc:
        assert exc.errors
        assert all(p.line >= 1 for p in exc.errors)


def test_text_with_a_lone_surrogate_is_reported_not_raised() -> None:
    """Text decoded with errors="surrogateescape" holds lone surrogates; they are bad input."""
    text = b"version: 1\nname: caf\xe9\nphases: [{id: p1}]\n".decode("utf-8", "surrogateescape")
    report = check_text(text, "plan.yaml")
    assert report.plan is None
    assert report.errors
    assert all(p.line >= 1 for p in report.errors)


@pytest.mark.parametrize("name", ["plan.yaml", "plan.json"])
def test_a_deeply_nested_input_next_to_a_schema_error_is_handled(name: str) -> None:
    nested = "[" * 700 + "]" * 700
    text = (
        '{"version": 1, "name": "deep", "phases": [{"id": "p", "overlap": 3, "milestones": '
        '[{"id": "m", "tasks": [{"id": "t", "inputs": {"k": ' + nested + "}}]}]}]}"
    )
    report = check_text(text, name)
    assert_handled(report)
    assert any("expected true or false" in p.message for p in report.errors)


def test_a_json_number_too_long_to_convert_is_reported_not_raised() -> None:
    text = '{"version": 1, "name": "x", "settings": {"max_concurrency": ' + "9" * 5000 + "}}"
    report = check_text(text, "plan.json")
    assert_handled(report)
    assert report.plan is None


# ---------------------------------------------------------------------------
# The flagship example, cut and mutated


@pytest.mark.parametrize("step", [211, 347])
def test_every_truncation_of_the_example_is_handled(step: int) -> None:
    for end in range(0, len(EXAMPLE_TEXT), step):
        text = EXAMPLE_TEXT[:end]
        report = check_text(text, "plan.yaml")
        assert_handled(report)


def mutate(lines: list[str], ops: list[tuple[str, int, int]]) -> list[str]:
    lines = list(lines)
    for op, i, j in ops:
        if not lines:
            break
        i %= len(lines)
        j %= len(lines)
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = " " * (j % 5) + lines[i]
        elif op == "dedent":
            lines[i] = lines[i][min(j % 5, len(lines[i]) - len(lines[i].lstrip())) :]
        elif op == "tab":
            lines[i] = "\t" + lines[i].lstrip()
    return lines


OPS = st.lists(
    st.tuples(
        st.sampled_from(["delete", "duplicate", "swap", "indent", "dedent", "tab"]),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(OPS)
def test_mutations_of_the_example_are_a_plan_or_positioned_errors(
    ops: list[tuple[str, int, int]],
) -> None:
    text = "\n".join(mutate(EXAMPLE_LINES, ops)) + "\n"
    assert_handled(check_text(text, "plan.yaml"))
    try:
        parse_plan(text, "plan.yaml")
    except PlanError as exc:
        assert exc.errors


@FUZZ
@given(st.integers(0, len(EXAMPLE_TEXT) - 1), st.text(min_size=1, max_size=5))
def test_text_spliced_into_the_example_is_handled(at: int, insert: str) -> None:
    assert_handled(check_text(EXAMPLE_TEXT[:at] + insert + EXAMPLE_TEXT[at:], "plan.yaml"))


# ---------------------------------------------------------------------------
# Random structures, as YAML and as JSON

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["1", "1.1", "3d", "high", "p1", "yes", "", "a:b", "*"])
)
KEYS = st.text(max_size=10) | st.sampled_from(
    [
        "version",
        "name",
        "phases",
        "milestones",
        "tasks",
        "id",
        "needs",
        "after",
        "agents",
        "resources",
        "capacity",
        "rate",
        "per",
        "requires",
        "estimate",
        "overlap",
        "runner",
        "exit_gate",
        "conditions",
        "kind",
        "settings",
        "defaults",
        "alerts",
        "capabilities",
    ]
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)


@st.composite
def plan_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """Plan-like mappings: a real skeleton with random values grafted in."""
    task = st.fixed_dictionaries(
        {"id": st.sampled_from(["a", "b", "c"]) | SCALARS},
        optional={
            "needs": st.lists(st.sampled_from(["a", "b", "c", "x"]), max_size=3) | STRUCTURES,
            "requires": st.lists(st.sampled_from(["build", "x"]), max_size=2) | STRUCTURES,
            "resources": st.dictionaries(st.sampled_from(["db", "api", "zz"]), SCALARS),
            "estimate": SCALARS,
            "priority": SCALARS,
            "run": STRUCTURES,
        },
    )
    milestone = st.fixed_dictionaries(
        {"id": st.sampled_from(["m1", "m2"]) | SCALARS},
        optional={
            "after": st.lists(st.sampled_from(["m1", "m2", "m3"]), max_size=2) | STRUCTURES,
            "tasks": st.lists(task, max_size=3) | STRUCTURES,
        },
    )
    phase = st.fixed_dictionaries(
        {"id": st.sampled_from(["p1", "p2"]) | SCALARS},
        optional={
            "overlap": SCALARS,
            "milestones": st.lists(milestone, max_size=3) | STRUCTURES,
            "exit_gate": STRUCTURES,
        },
    )
    plan = st.fixed_dictionaries(
        {},
        optional={
            "version": st.just(1) | SCALARS,
            "name": st.just("fuzz") | SCALARS,
            "phases": st.lists(phase, max_size=3) | STRUCTURES,
            "agents": st.dictionaries(
                st.sampled_from(["w", "v"]) | KEYS,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "capabilities": st.lists(st.sampled_from(["build", "x"])) | STRUCTURES,
                        "capacity": SCALARS,
                        "runner": STRUCTURES,
                    },
                ),
                max_size=2,
            ),
            "resources": st.dictionaries(
                st.sampled_from(["db", "api"]) | KEYS, STRUCTURES, max_size=2
            ),
            "settings": STRUCTURES,
            "defaults": STRUCTURES,
            "extra": STRUCTURES,
        },
    )
    return draw(plan)


def dumped(data: Any) -> list[tuple[str, str]]:
    out = [(json.dumps(data, indent=1), "plan.json"), (json.dumps(data), "-")]
    out.append((yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "plan.yaml"))
    out.append((yaml.safe_dump(data, default_flow_style=True), "plan.yaml"))
    return out


@FUZZ
@given(STRUCTURES)
def test_random_structures_as_yaml_and_json_are_handled(data: Any) -> None:
    for text, name in dumped(data):
        assert_handled(check_text(text, name))


@FUZZ
@given(plan_shaped())
def test_plan_shaped_structures_as_yaml_and_json_are_handled(data: dict[str, Any]) -> None:
    for text, name in dumped(data):
        assert_handled(check_text(text, name))
        try:
            parse_plan(text, name)
        except PlanError as exc:
            assert exc.errors
