"""The curated public API: what `import counterpoint` offers, and nothing by accident."""

from __future__ import annotations

import counterpoint

EXPECTED = {
    "CheckReport",
    "ChildOutcome",
    "CounterpointError",
    "Graph",
    "Plan",
    "PlanError",
    "Problem",
    "RateLimited",
    "RunEvent",
    "RunObserver",
    "RunOptions",
    "Schedule",
    "ScheduleError",
    "SpawnError",
    "TaskContext",
    "TaskFailed",
    "TaskState",
    "__version__",
    "check_file",
    "check_text",
    "compile_plan",
    "decide_gate",
    "load_plan",
    "overlap_opportunities",
    "parallel_matrix",
    "parse_plan",
    "request_cancel",
    "resume_run",
    "schedule",
    "set_agent_state",
    "start_run",
}


def test_the_package_exports_exactly_the_documented_names() -> None:
    assert set(counterpoint.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(counterpoint, name) is not None


def test_plan_errors_are_value_errors_so_callers_can_catch_them_the_usual_way() -> None:
    assert issubclass(counterpoint.PlanError, ValueError)
    assert issubclass(counterpoint.PlanError, counterpoint.CounterpointError)
