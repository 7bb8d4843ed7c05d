"""counterpoint: run a phased plan of work across a pool of parallel agents, consistently."""

from counterpoint.errors import CounterpointError, PlanError, Problem, ScheduleError
from counterpoint.plan import (
    CheckReport,
    Graph,
    Plan,
    Schedule,
    check_file,
    compile_plan,
    load_plan,
    parse_plan,
    schedule,
)

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
    "compile_plan",
    "load_plan",
    "parse_plan",
    "schedule",
]
