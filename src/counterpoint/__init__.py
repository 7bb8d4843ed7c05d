"""counterpoint: run a phased plan of work across a pool of parallel agents, consistently."""

from counterpoint.agents.base import RateLimited, TaskContext, TaskFailed
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
from counterpoint.runtime.events import RunEvent, RunObserver, TaskState
from counterpoint.runtime.orchestrator import RunOptions
from counterpoint.runtime.session import (
    decide_gate,
    request_cancel,
    resume_run,
    set_agent_state,
    start_run,
)
from counterpoint.runtime.spawning import ChildOutcome, SpawnError

__version__ = "0.1.0"

__all__ = [
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
]
