"""Every kind of plan error is reported with its exact file:line:column and a useful message.

Each test writes a small plan, checks it with ``check_text(text, "plan.yaml")`` and
asserts where the problem points and what it says. Line and column are 1-based.
"""

from __future__ import annotations

import json
import pathlib
import textwrap

import pytest

from counterpoint.errors import PlanError, Problem, Severity
from counterpoint.plan import CheckReport, check_file, check_text, load_plan, parse_plan

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cloud-migration" / "plan.yaml"


def check(text: str, name: str = "plan.yaml") -> CheckReport:
    return check_text(textwrap.dedent(text), name)


def the_error(report: CheckReport, fragment: str) -> Problem:
    """The one error whose message contains ``fragment``."""
    found = [p for p in report.errors if fragment in p.message]
    assert len(found) == 1, [p.render() for p in report.problems]
    return found[0]


def at(problem: Problem) -> tuple[int, int]:
    return problem.line, problem.column


def assert_rejected(report: CheckReport) -> None:
    assert not report.ok
    assert report.plan is None
    assert report.graph is None


VALID = textwrap.dedent(
    """\
    version: 1
    name: demo
    agents:
      builder:
        capabilities: [build, test]
        capacity: 2
        runner: {python: "agents:build"}
    phases:
      - id: p1
        milestones:
          - id: m1
            tasks:
              - id: compile
                requires: [build]
                estimate: 2h
    """
)


# ---------------------------------------------------------------------------
# A valid plan


def test_a_valid_plan_has_no_problems_and_carries_its_plan_and_graph() -> None:
    report = check(VALID)
    assert report.ok
    assert report.problems == []
    assert report.plan is not None
    assert report.graph is not None
    assert report.plan.tasks()[0].estimate == 7200.0


def test_the_flagship_example_checks_clean() -> None:
    report = check_file(EXAMPLE)
    assert report.ok, [p.render() for p in report.problems]
    assert report.errors == []
    assert report.plan is not None
    assert report.plan.source_path == EXAMPLE.resolve()


# ---------------------------------------------------------------------------
# Unreadable documents


def test_a_yaml_syntax_error_points_at_where_the_parser_stopped() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: a
           - id: b
        """
    )
    assert_rejected(report)
    [problem] = report.problems
    assert at(problem) == (5, 4)
    assert "invalid YAML" in problem.message
    assert problem.file == "plan.yaml"


def test_an_unclosed_flow_list_is_reported_at_the_end_of_the_text() -> None:
    report = check("version: 1\nname: demo\nphases: [\n")
    [problem] = report.problems
    assert at(problem) == (4, 1)
    assert problem.message.startswith("invalid YAML")


def test_a_json_syntax_error_names_the_json_file_and_the_position() -> None:
    report = check_text('{"version": 1,\n "name": "x",\n "phases": [}\n', "plan.json")
    assert_rejected(report)
    [problem] = report.problems
    assert problem.file == "plan.json"
    assert at(problem) == (3, 13)
    assert problem.message.startswith("invalid JSON")
    assert problem.render().startswith("plan.json:3:13: error: invalid JSON")


# ---------------------------------------------------------------------------
# Unknown keys, wrong types, bad values


def test_a_misspelt_settings_key_suggests_the_nearest_valid_key() -> None:
    report = check(VALID + "settings:\n  max_concurency: 3\n")
    assert_rejected(report)
    problem = the_error(report, "unknown key 'max_concurency'")
    assert at(problem) == (17, 3)
    assert problem.path == ("settings", "max_concurency")
    assert "max_concurrency" in problem.hint
    assert problem.hint.startswith("did you mean")


def test_a_misspelt_task_key_suggests_needs() -> None:
    report = check(VALID.replace("estimate: 2h", "estimate: 2h\n            need: [x]"))
    problem = the_error(report, "unknown key 'need'")
    assert at(problem) == (16, 13)
    assert problem.hint == "did you mean 'needs'?"


def test_an_unknown_key_with_no_near_match_has_no_hint() -> None:
    report = check(VALID + "zzqqxx: 1\n")
    problem = the_error(report, "unknown key 'zzqqxx'")
    assert at(problem) == (16, 1)
    assert problem.hint == ""


def test_a_string_where_a_whole_number_is_expected_is_a_type_error() -> None:
    report = check(VALID.replace("capacity: 2", 'capacity: "two"'))
    problem = the_error(report, "expected a whole number")
    assert at(problem) == (6, 15)
    assert problem.path == ("agents", "builder", "capacity")
    assert "string 'two'" in problem.message


def test_a_yes_string_is_not_a_boolean() -> None:
    report = check(VALID.replace("  - id: p1", '  - id: p1\n    overlap: "yes"'))
    problem = the_error(report, "expected true or false")
    assert at(problem) == (10, 14)
    assert "'yes'" in problem.message


def test_an_unquoted_yes_is_a_string_in_yaml_1_2_and_rejected_too() -> None:
    report = check(VALID.replace("  - id: p1", "  - id: p1\n    overlap: yes"))
    problem = the_error(report, "expected true or false")
    assert at(problem) == (10, 14)


def test_a_numeric_milestone_id_asks_to_be_quoted() -> None:
    report = check(VALID.replace("- id: m1", "- id: 1.1"))
    problem = the_error(report, "expected a string, got number 1.1")
    assert at(problem) == (11, 13)
    assert problem.path == ("phases", 0, "milestones", 0, "id")
    assert "quote it" in problem.hint
    assert '"1.1"' in problem.hint


def test_a_numeric_task_id_asks_to_be_quoted() -> None:
    report = check(VALID.replace("- id: compile", "- id: 7"))
    problem = the_error(report, "expected a string, got number 7")
    assert at(problem) == (13, 17)
    assert problem.hint == 'quote it: "7"'


def test_a_duration_with_an_unknown_unit_names_the_value() -> None:
    report = check(VALID.replace("estimate: 2h", "estimate: 3 dayz"))
    problem = the_error(report, "bad duration")
    assert at(problem) == (15, 23)
    assert "'3 dayz'" in problem.message
    assert problem.path[-1] == "estimate"


def test_a_misspelt_priority_suggests_the_nearest_value() -> None:
    report = check(VALID.replace("estimate: 2h", "priority: hgh"))
    problem = the_error(report, "bad value string 'hgh'")
    assert at(problem) == (15, 23)
    assert "critical, high, medium, low" in problem.message
    assert problem.hint == "did you mean 'high'?"


def test_a_misspelt_default_on_failure_suggests_the_nearest_value() -> None:
    report = check(VALID + "defaults:\n  on_failure: fail-fast\n")
    problem = the_error(report, "bad value string 'fail-fast'")
    assert at(problem) == (17, 15)
    assert problem.hint == "did you mean 'fail_fast'?"


def test_a_negative_capacity_is_out_of_bounds() -> None:
    report = check(VALID.replace("capacity: 2", "capacity: -1"))
    problem = the_error(report, "must be >= 0")
    assert at(problem) == (6, 15)


def test_a_bad_id_explains_the_allowed_characters() -> None:
    report = check(VALID.replace("- id: compile", "- id: has space"))
    problem = the_error(report, "bad id")
    assert at(problem) == (13, 17)
    assert "letters, digits" in problem.message


def test_a_runner_with_two_kinds_is_rejected() -> None:
    report = check(VALID.replace('{python: "agents:build"}', '{python: "a:b", shell: "x"}'))
    problem = the_error(report, "exactly one of python, shell, remote or coding")
    assert at(problem) == (7, 13)


def test_an_unknown_condition_kind_in_a_gate_suggests_the_nearest_kind() -> None:
    report = check(
        VALID.replace(
            "  - id: p1",
            "  - id: p1\n"
            "    exit_gate:\n"
            "      conditions:\n"
            "        - {kind: metrc, metric: phase.failed, value: 0}",
        )
    )
    assert_rejected(report)
    problem = the_error(report, "unknown kind 'metrc'")
    assert at(problem) == (12, 11)
    assert "metric, command, file, python, approval" in problem.message
    assert problem.hint == "did you mean 'metric'?"


def test_a_condition_without_a_kind_lists_the_kinds_it_could_be() -> None:
    report = check(
        VALID.replace(
            "  - id: p1",
            "  - id: p1\n"
            "    exit_gate:\n"
            "      conditions:\n"
            "        - {metric: phase.failed, value: 0}",
        )
    )
    problem = the_error(report, "missing key 'kind'")
    assert at(problem) == (12, 11)
    assert "metric, command, file, python, approval" in problem.message


def test_an_approval_needing_more_approvers_than_named_is_rejected() -> None:
    report = check(
        VALID.replace(
            "  - id: p1",
            "  - id: p1\n"
            "    exit_gate:\n"
            "      conditions:\n"
            "        - {kind: approval, approvers: [lead], count: 2}",
        )
    )
    problem = the_error(report, "count 2 is more than the 1 approvers")
    assert at(problem) == (12, 11)


def test_a_number_in_a_shell_command_list_is_reported_once_at_the_item() -> None:
    report = check(VALID.replace('{python: "agents:build"}', "{shell: [make, 1]}"))
    assert_rejected(report)
    [problem] = report.errors
    assert at(problem) == (7, 28)
    assert problem.path == ("agents", "builder", "runner", "shell", 1)
    assert "number 1" in problem.message


def test_an_agent_whose_runner_is_invalid_is_not_also_said_to_have_no_runner() -> None:
    report = check(VALID.replace('{python: "agents:build"}', '{python: "not a callable"}'))
    assert_rejected(report)
    the_error(report, "bad callable")
    assert [w.message for w in report.warnings if "has no runner" in w.message] == []


# ---------------------------------------------------------------------------
# Duplicates


def test_duplicate_task_milestone_and_phase_ids_point_back_at_the_first_definition() -> None:
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
                  - id: a
              - id: m1
          - id: p1
        """
    )
    assert_rejected(report)
    task = the_error(report, "duplicate task id 'a'")
    assert at(task) == (9, 17)
    assert task.hint == "first defined at plan.yaml:8:17"
    milestone = the_error(report, "duplicate milestone id 'm1'")
    assert at(milestone) == (10, 13)
    assert milestone.hint == "first defined at plan.yaml:6:13"
    phase = the_error(report, "duplicate phase id 'p1'")
    assert at(phase) == (11, 9)
    assert phase.hint == "first defined at plan.yaml:4:9"


def test_the_same_task_id_in_two_phases_is_a_duplicate() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones: [{id: m1, tasks: [{id: shared}]}]
          - id: p2
            milestones: [{id: m2, tasks: [{id: shared}]}]
        """
    )
    problem = the_error(report, "duplicate task id 'shared'")
    assert at(problem) == (7, 40)
    assert problem.hint == "first defined at plan.yaml:5:40"


def test_every_duplicate_mapping_key_is_reported() -> None:
    report = check(
        """\
        version: 1
        name: demo
        agents:
          builder: {capabilities: [build]}
          builder: {capabilities: [test]}
          tester: {capabilities: [test]}
          tester: {capabilities: [test]}
        phases:
          - id: p1
        name: again
        """
    )
    assert_rejected(report)
    duplicates = [p for p in report.errors if p.message.startswith("duplicate key")]
    assert [(p.message, at(p)) for p in duplicates] == [
        ("duplicate key 'builder'", (5, 3)),
        ("duplicate key 'tester'", (7, 3)),
        ("duplicate key 'name'", (10, 1)),
    ]


def test_a_duplicate_key_in_a_json_object_is_reported_with_its_position() -> None:
    text = '{\n  "version": 1,\n  "name": "x",\n  "name": "y",\n  "phases": [{"id": "p"}]\n}\n'
    report = check_text(text, "plan.json")
    assert_rejected(report)
    problem = the_error(report, "duplicate key 'name'")
    assert at(problem) == (4, 3)
    assert problem.file == "plan.json"


# ---------------------------------------------------------------------------
# References


REFERENCES = """\
    version: 1
    name: demo
    agents:
      builder: {capabilities: [build, test], runner: {shell: "make"}}
      shipper: {capabilities: [build, deploy], runner: {shell: "ship"}}
    resources:
      aws_api: {capacity: 2}
      llm: {rate: 2, per: 1m}
    phases:
      - id: p1
        milestones:
          - id: m1
            after: [m_2]
            tasks:
              - id: alpha
                needs: [alpah]
                requires: [biuld]
              - id: beta
                requires: [build, test, deploy]
                resources: {aws_apl: 1}
              - id: gamma
                resources: {aws_api: 3, llm: 3}
          - id: m2
    """


def test_an_unknown_milestone_in_after_suggests_the_nearest_milestone() -> None:
    problem = the_error(check(REFERENCES), "unknown milestone 'm_2'")
    assert at(problem) == (13, 17)
    assert problem.path == ("phases", 0, "milestones", 0, "after", 0)
    assert problem.hint == "did you mean 'm2'?"


def test_an_unknown_task_in_needs_suggests_the_nearest_task() -> None:
    problem = the_error(check(REFERENCES), "unknown task 'alpah'")
    assert at(problem) == (16, 21)
    assert problem.hint == "did you mean 'alpha'?"


def test_a_capability_no_agent_has_suggests_the_nearest_capability() -> None:
    problem = the_error(check(REFERENCES), "no agent has capability 'biuld'")
    assert at(problem) == (17, 24)
    assert problem.hint == "did you mean 'build'?"


def test_a_task_no_single_agent_can_run_names_the_closest_agent() -> None:
    problem = the_error(check(REFERENCES), "no agent can ever run this task")
    assert at(problem) == (19, 23)
    assert "[build, deploy, test]" in problem.message
    assert "closest: 'builder'" in problem.message
    assert "lacks [deploy]" in problem.message


def test_a_task_whose_only_able_agents_have_no_capacity_cannot_run() -> None:
    report = check(VALID.replace("capacity: 2", "capacity: 0"))
    problem = the_error(report, "no agent can ever run this task")
    assert "capacity 0" in problem.message
    assert at(problem) == (14, 23)


def test_an_unknown_resource_points_at_its_key_and_suggests_the_nearest() -> None:
    problem = the_error(check(REFERENCES), "unknown resource 'aws_apl'")
    assert at(problem) == (20, 25)
    assert problem.hint == "did you mean 'aws_api'?"


def test_a_demand_above_a_resource_capacity_could_never_start() -> None:
    problem = the_error(check(REFERENCES), "needs 3 units of 'aws_api'")
    assert at(problem) == (22, 34)
    assert "capacity is 2" in problem.message
    assert "could never start" in problem.message


def test_a_demand_above_a_rate_limit_could_never_start() -> None:
    problem = the_error(check(REFERENCES), "rate limit 'llm'")
    assert at(problem) == (22, 42)
    assert "needs 3 units" in problem.message
    assert "more than the 2" in problem.message


def test_a_task_needing_the_same_task_twice_gets_a_warning_only() -> None:
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
                  - id: b
                    needs: [a, a]
        """
    )
    assert report.ok
    [warning] = [w for w in report.warnings if "more than once" in w.message]
    assert at(warning) == (10, 20)


# ---------------------------------------------------------------------------
# Agents


def test_a_plan_with_no_agents_is_valid_but_warns_it_cannot_run() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - id: p1
            milestones: [{id: m1, tasks: [{id: a, requires: [anything]}]}]
        """
    )
    assert report.ok
    assert report.plan is not None
    assert report.errors == []
    [warning] = report.warnings
    assert warning.severity is Severity.WARNING
    assert "can be analysed but not run" in warning.message
    assert warning.line >= 1
    assert ": warning: " in warning.render()


def test_an_agent_without_a_runner_gets_a_warning() -> None:
    report = check(VALID.replace('    runner: {python: "agents:build"}\n', ""))
    assert report.ok
    [warning] = report.warnings
    assert "agent 'builder' has no runner" in warning.message
    assert at(warning) == (5, 5)


# ---------------------------------------------------------------------------
# Missing keys, versions, document shapes


def test_a_missing_version_is_reported_at_the_top_of_the_document() -> None:
    report = check("name: demo\nphases: [{id: p1}]\n")
    assert_rejected(report)
    problem = the_error(report, "missing required key 'version'")
    assert at(problem) == (1, 1)


def test_a_missing_name_is_reported() -> None:
    report = check("version: 1\nphases: [{id: p1}]\n")
    assert_rejected(report)
    the_error(report, "missing required key 'name'")


def test_a_missing_phases_list_is_reported() -> None:
    report = check("version: 1\nname: demo\n")
    assert_rejected(report)
    the_error(report, "missing required key 'phases'")


def test_an_empty_phases_list_needs_at_least_one_phase() -> None:
    report = check("version: 1\nname: demo\nphases: []\n")
    problem = the_error(report, "needs at least 1 item")
    assert at(problem) == (3, 9)


def test_every_missing_id_is_reported_at_its_mapping() -> None:
    report = check(
        """\
        version: 1
        name: demo
        phases:
          - milestones:
              - tasks:
                  - name: nameless
        """
    )
    assert_rejected(report)
    missing = [(p.path, at(p)) for p in report.errors if p.message == "missing required key 'id'"]
    assert missing == [
        (("phases", 0), (4, 5)),
        (("phases", 0, "milestones", 0), (5, 9)),
        (("phases", 0, "milestones", 0, "tasks", 0), (6, 13)),
    ]


def test_an_unsupported_version_says_which_version_is_read() -> None:
    report = check("version: 2\nname: demo\nphases: [{id: p1}]\n")
    assert_rejected(report)
    problem = the_error(report, "unsupported plan format version 2")
    assert at(problem) == (1, 10)
    assert "version 1" in problem.message


def test_a_quoted_version_is_not_version_one() -> None:
    report = check('version: "1"\nname: demo\nphases: [{id: p1}]\n')
    assert_rejected(report)
    problem = the_error(report, "unsupported plan format version")
    assert at(problem) == (1, 10)


def test_a_top_level_list_is_not_a_plan() -> None:
    report = check("- version: 1\n- name: demo\n")
    assert_rejected(report)
    [problem] = report.problems
    assert "must be a mapping" in problem.message
    assert "got a list" in problem.message
    assert at(problem) == (1, 1)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_document_is_not_a_plan(text: str) -> None:
    report = check_text(text, "plan.yaml")
    assert_rejected(report)
    [problem] = report.problems
    assert "got an empty document" in problem.message
    assert at(problem) == (1, 1)


def test_a_bare_scalar_document_is_not_a_plan() -> None:
    report = check_text("hello", "plan.yaml")
    [problem] = report.problems
    assert "must be a mapping" in problem.message


# ---------------------------------------------------------------------------
# Files


def test_a_file_that_is_not_utf8_is_reported_at_the_first_bad_byte(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\nphases: [{id: p1}]\n")
    report = check_file(path)
    assert_rejected(report)
    [problem] = report.problems
    assert "not UTF-8" in problem.message
    assert at(problem) == (2, 10)
    assert problem.file == str(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + textwrap.dedent(VALID).encode())
    report = check_file(path)
    assert report.ok, [p.render() for p in report.problems]


def test_a_missing_file_is_a_problem_not_an_exception(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.yaml"
    report = check_file(path)
    assert_rejected(report)
    [problem] = report.problems
    assert "cannot read" in problem.message
    assert problem.file == str(path)
    assert problem.render().startswith(f"{path}: error: cannot read")


def test_load_plan_on_a_missing_file_raises_a_plan_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "nope.yaml")


def test_load_plan_raises_one_plan_error_with_every_problem(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("version: 2\nname: demo\nphases: []\n", encoding="utf-8")
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert len(caught.value.errors) == 2
    assert "(and 1 more)" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_load_plan_returns_the_plan_with_its_source(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(VALID), encoding="utf-8")
    plan = load_plan(path)
    assert plan.name == "demo"
    assert plan.source_path == path.resolve()


def test_parse_plan_raises_a_plan_error_for_bad_text() -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan("version: 1\nname: demo\nphases: [{id: p1, overlap: 3}]\n", "plan.yaml")
    [problem] = caught.value.errors
    assert problem.path == ("phases", 0, "overlap")


# ---------------------------------------------------------------------------
# JSON


def test_a_json_plan_is_read_like_yaml() -> None:
    data = {
        "version": 1,
        "name": "demo",
        "agents": {"builder": {"capabilities": ["build"], "runner": {"shell": "make"}}},
        "phases": [{"id": "p1", "milestones": [{"id": "m1", "tasks": [{"id": "a"}]}]}],
    }
    report = check_text(json.dumps(data, indent=2), "plan.json")
    assert report.ok, [p.render() for p in report.problems]
    assert report.plan is not None
    assert [t.id for t in report.plan.tasks()] == ["a"]


def test_a_json_plan_reports_positions_too() -> None:
    text = (
        '{\n  "version": 1,\n  "name": "x",\n  "phases": [\n'
        '    {"id": "p", "overlap": "yes"}\n  ]\n}\n'
    )
    report = check_text(text, "plan.json")
    assert_rejected(report)
    problem = the_error(report, "expected true or false")
    assert problem.file == "plan.json"
    assert at(problem) == (5, 28)


def test_a_json_plan_on_one_line_reports_the_column() -> None:
    text = json.dumps(
        {"version": 1, "name": "x", "phases": [{"id": "p", "misspelt": 1}]},
    )
    report = check_text(text, "plan.json")
    problem = the_error(report, "unknown key 'misspelt'")
    assert at(problem) == (1, text.index('"misspelt"') + 1)


def test_text_starting_with_a_brace_and_no_suffix_is_read_as_json() -> None:
    report = check_text('{"version": 1, "name": "x", "phases": [}', "-")
    [problem] = report.problems
    assert problem.message.startswith("invalid JSON")


# ---------------------------------------------------------------------------
# Many problems at once, their order and their rendering


MANY = """\
    version: 1
    name: demo
    settings:
      max_concurency: 3
    agents:
      builder: {capabilities: [build], capacity: "two", runner: {shell: make}}
    phases:
      - id: p1
        milestones:
          - id: m1
            tasks:
              - id: a
                estimate: 3 dayz
                priority: hgh
              - id: b
                needs: [c]
                requires: [biuld]
    """


def test_every_error_in_a_file_is_reported_at_once() -> None:
    report = check(MANY)
    assert_rejected(report)
    assert [(at(p), p.message.split(":")[0]) for p in report.errors] == [
        ((4, 3), "unknown key 'max_concurency'"),
        ((6, 46), "expected a whole number, got string 'two'"),
        ((13, 23), "bad duration '3 dayz'"),
        ((14, 23), "bad value string 'hgh'; expected one of critical, high, medium, low"),
        ((16, 21), "unknown task 'c'"),
        ((17, 24), "no agent has capability 'biuld'"),
    ]


def test_load_plan_error_counts_every_problem(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(MANY), encoding="utf-8")
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert len(caught.value.errors) == 6
    assert str(caught.value).endswith("(and 5 more)")


def test_problems_are_sorted_by_position() -> None:
    report = check(MANY)
    positions = [at(p) for p in report.problems]
    assert positions == sorted(positions)
    assert all(p.line >= 1 and p.column >= 1 for p in report.problems)


def test_a_problem_renders_as_file_line_column_severity_path_and_message() -> None:
    problem = the_error(check(MANY), "unknown key 'max_concurency'")
    assert problem.render() == (
        "plan.yaml:4:3: error: settings.max_concurency: unknown key 'max_concurency' "
        "(did you mean 'max_concurrency'?)"
    )


def test_a_problem_path_renders_list_indexes_in_brackets() -> None:
    problem = the_error(check(MANY), "bad duration")
    assert problem.render().startswith(
        "plan.yaml:13:23: error: phases[0].milestones[0].tasks[0].estimate: bad duration '3 dayz'"
    )


def test_a_problem_without_a_path_renders_without_one() -> None:
    problem = Problem("something", file="plan.yaml", line=3, column=7)
    assert problem.render() == "plan.yaml:3:7: error: something"


def test_a_problem_without_a_position_renders_its_file_only() -> None:
    assert Problem("gone", file="x.yaml").render() == "x.yaml: error: gone"
    assert Problem("gone").render() == "<plan>: error: gone"


def test_a_warning_renders_as_a_warning() -> None:
    problem = Problem("hm", ("agents", "a"), Severity.WARNING, "try this", "p.yaml", 2, 3)
    assert problem.render() == "p.yaml:2:3: warning: agents.a: hm (try this)"


def test_warnings_on_a_huge_plan_skip_the_second_parse_for_positions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from counterpoint.plan import load

    text = "version: 1\nname: big\nphases:\n  - id: p\n"
    monkeypatch.setattr(load, "PRECISE_WARNINGS_MAX_CHARS", 10)
    report = load.check_text(text, "plan.yaml")
    assert report.ok and report.warnings
    assert report.warnings[0].line == 0
    assert report.warnings[0].render().startswith("plan.yaml: warning:")
