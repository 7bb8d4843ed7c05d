"""A shell agent: the first call says "rate limited" (exit 75), later calls succeed.

Usage: python rate_limited_once.py MARKER RETRY_AFTER
The marker file remembers that the first call happened; every call appends a
JSON line (time, pid, outcome) to MARKER.calls.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    marker, retry_after = Path(sys.argv[1]), float(sys.argv[2])
    first = not marker.exists()
    outcome = "rate_limited" if first else "ok"
    with open(f"{marker}.calls", "a", encoding="utf-8") as f:
        f.write(json.dumps({"t": time.time(), "outcome": outcome}) + "\n")
    if first:
        marker.write_text("called", encoding="utf-8")
        print(json.dumps({"retry_after": retry_after}))
        return 75
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
