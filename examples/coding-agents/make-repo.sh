#!/bin/sh
# Create the small git repository the example's coding agents work on:
# textkit, a Python package of text helpers, with one commit on branch main.
#
#   sh make-repo.sh          creates ./repo next to this script (the plans' settings.repository)
#   sh make-repo.sh DIR      creates DIR instead
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=${1:-"$here/repo"}
if [ -e "$repo" ]; then
    echo "make-repo.sh: $repo already exists; remove it first (rm -rf $repo)" >&2
    exit 1
fi
mkdir -p "$repo/textkit" "$repo/tests"
cd "$repo"

cat > textkit/__init__.py <<'PY'
"""textkit: small text helpers (the coding-agents example's repository)."""
PY

cat > textkit/core.py <<'PY'
"""Small text helpers."""

GREETING = "hello"


def shout(text: str) -> str:
    return text.upper()
PY

cat > tests/test_core.py <<'PY'
from textkit.core import shout


def test_shout() -> None:
    assert shout("hi") == "HI"
PY

# The plans' check command: runs every test_* function of tests/test_*.py (no pytest needed).
cat > tests/run.py <<'PY'
"""Run every test function of tests/test_*.py; exit 1 if one fails."""
import importlib.util
import pathlib
import sys
import traceback

root = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(root.parent))
failed = 0
for path in sorted(root.glob("test_*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in sorted(n for n in vars(module) if n.startswith("test_")):
        try:
            getattr(module, name)()
        except Exception:
            failed += 1
            print(f"FAILED {path.name}::{name}")
            traceback.print_exc()
print(f"{'FAILED' if failed else 'ok'}: {failed} failed")
sys.exit(1 if failed else 0)
PY

printf '# textkit\n\nSmall text helpers.\n' > README.md
printf '# Changelog\n\n## Unreleased\n\n' > CHANGELOG.md
printf '__pycache__/\n' > .gitignore

git init --quiet
git symbolic-ref HEAD refs/heads/main
git add --all
git -c user.name=example -c user.email=example@localhost -c commit.gpgsign=false \
    commit --quiet -m "textkit: shout"
echo "created $repo (branch main, 1 commit)"
