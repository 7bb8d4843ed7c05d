"""The declarative side: plan files, their validation and their analysis."""

from counterpoint.plan.graph import Graph, compile_plan
from counterpoint.plan.load import CheckReport, check_file, check_text, load_plan, parse_plan
from counterpoint.plan.model import Plan
from counterpoint.plan.schedule import Schedule, schedule

__all__ = [
    "CheckReport",
    "Graph",
    "Plan",
    "Schedule",
    "check_file",
    "check_text",
    "compile_plan",
    "load_plan",
    "parse_plan",
    "schedule",
]
