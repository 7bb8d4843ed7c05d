"""Human durations (``90s``, ``30m``, ``1.5h``, ``3d``, ``1w``) to float seconds and back."""

from __future__ import annotations

import math
import re

UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: A duration string: a plain decimal number with an optional unit (no sign, exponent or _).
DURATION_PATTERN = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*$"
_PATTERN = re.compile(DURATION_PATTERN)


class DurationError(ValueError):
    """A duration that is neither a number of seconds nor a number with a known unit."""


def parse_duration(value: object) -> float:
    """Return seconds for a number (seconds) or a string such as ``"3d"``.

    >>> parse_duration("1.5h")
    5400.0
    """
    if isinstance(value, bool):
        raise DurationError(f"expected a duration, got boolean {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise DurationError(f"expected a duration, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"a duration must be a finite number >= 0, got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    match = _PATTERN.match(text)
    if match is None:
        raise DurationError(
            f"bad duration {text!r}: expected seconds or a number with a unit "
            "s, m, h, d or w (for example 90s, 30m, 1.5h, 3d)"
        )
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """A short human form: ``5400.0`` -> ``1.5h``; ``86400*3`` -> ``3d``."""
    if seconds == 0:
        return "0s"
    for unit in ("w", "d", "h", "m"):
        size = UNITS[unit]
        if seconds >= size:
            return f"{_number(seconds / size)}{unit}"
    return f"{_number(seconds)}s"


def _number(amount: float) -> str:
    """Up to four significant digits, never in exponent form (so it parses back)."""
    text = f"{amount:.4g}"
    if "e" in text:
        text = f"{amount:.0f}" if amount >= 1 else f"{amount:.9f}".rstrip("0").rstrip(".")
    return text or "0"
