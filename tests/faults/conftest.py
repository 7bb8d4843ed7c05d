"""The fault-injection suite (docs/reliability.md): shared fixtures.

``COUNTERPOINT_FAULTS=full`` (set by ``make faults``) runs every scenario at full size;
otherwise each runs a short version that asserts the same targets on less work.
Figures go to ``$COUNTERPOINT_FAULT_FIGURES`` (a JSON file), else to
``fault-figures.json`` in pytest's base temporary directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / "integration"):  # fault_helpers, run_helpers
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import fault_helpers  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _figures_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    fault_helpers.set_default_figures_path(
        tmp_path_factory.getbasetemp() / fault_helpers.FIGURES_NAME
    )


@pytest.fixture(scope="session")
def full() -> bool:
    """True for the full suite (``COUNTERPOINT_FAULTS=full``), False for CI's short one."""
    return fault_helpers.FULL
