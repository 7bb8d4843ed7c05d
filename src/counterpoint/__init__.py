"""counterpoint: run a phased plan of work across a pool of parallel agents, consistently."""

from counterpoint.errors import CounterpointError, PlanError, Problem, ScheduleError
from counterpoint.plan import (
    CheckReport,
    Graph,
    Plan,
    Schedule,
    check_file,
    check_text,
    compile_plan,
    load_plan,
    parse_plan,
    schedule,
)
from counterpoint.plan.analysis import overlap_opportunities, parallel_matrix

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "CounterpointError",
    "Graph",
    "Plan",
    "PlanError",
    "Problem",
    "Schedule",
    "ScheduleError",
    "__version__",
    "check_file",
    "check_text",
    "compile_plan",
    "load_plan",
    "overlap_opportunities",
    "parallel_matrix",
    "parse_plan",
    "schedule",
]
