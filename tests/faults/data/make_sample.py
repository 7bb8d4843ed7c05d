"""Write the previous-release sample journal of scenario 7 (tests/faults/test_replay.py).

    python tests/faults/data/make_sample.py CODE [--out DIR]

CODE is a checkout of counterpoint (its ``src`` goes on PYTHONPATH), for instance the
previous release as a worktree: ``git worktree add /tmp/prev-release v0.X`` (or HEAD
before a release's changes). It runs ``plan.yaml`` with ``sample_agents.py`` in
``SAMPLE_HOME`` with that code (``run --approve-as lead``), then writes into DIR
(default: this folder) ``sample.tar.gz`` (the state directory, the plan, the agents and
the agents' records) and ``expected.json`` (that code's ``status --json``, each task's
journal row and the shared state, as that code reads them, and the commit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: where the sample run lives: the journal records this plan path, so a resume needs it
SAMPLE_HOME = Path("/tmp/counterpoint-replay-sample")

_DUMP = """
import json, sys
from pathlib import Path
from counterpoint.store.sqlite import SqliteStore
store = SqliteStore(Path(sys.argv[1]), create=False)
record = store.latest_run()
tasks = {
    t: {"state": r.state, "attempts": r.attempts, "error": r.error,
        "blocked_by": r.blocked_by, "result": r.result}
    for t, r in sorted(store.tasks(record.id).items())
}
store.close()
print(json.dumps({"status": record.status, "exit_code": record.exit_code, "tasks": tasks}))
"""


def _counterpoint(code: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(code / "src"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("COUNTERPOINT_STATE", None)
    return subprocess.run(
        [sys.executable, *args], cwd=SAMPLE_HOME, env=env, capture_output=True, text=True
    )


def make(code: Path, out: Path) -> dict[str, object]:
    code = code.resolve()
    shutil.rmtree(SAMPLE_HOME, ignore_errors=True)
    SAMPLE_HOME.mkdir(parents=True)
    for name in ("plan.yaml", "sample_agents.py"):
        shutil.copy(HERE / name, SAMPLE_HOME / name)
    cp = ("-m", "counterpoint")
    run = _counterpoint(code, *cp, "run", "plan.yaml", "--state", "state", "--quiet",
                        "--approve-as", "lead")  # fmt: skip
    if run.returncode != 1:  # the plan has failed tasks: exit 1 by design
        raise SystemExit(f"run exited {run.returncode}:\n{run.stdout}\n{run.stderr}")
    status = _counterpoint(code, *cp, "status", "--json", "--state", "state")
    journal = _counterpoint(code, "-c", _DUMP, "state")
    shared = _counterpoint(code, *cp, "state", "--json", "--state", "state")
    for step in (status, journal, shared):
        if step.returncode != 0:
            raise SystemExit(f"{step.args} exited {step.returncode}:\n{step.stderr}")
    commit = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    expected = {
        "commit": commit,
        "sample_home": str(SAMPLE_HOME),
        "status": json.loads(status.stdout),
        "journal": json.loads(journal.stdout),
        "shared_state": json.loads(shared.stdout),
    }
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "sample.tar.gz", "w:gz") as tar:
        for name in ("plan.yaml", "sample_agents.py", "records.jsonl", "state"):
            tar.add(SAMPLE_HOME / name, arcname=name)
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(SAMPLE_HOME)
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("code", type=Path, help="a counterpoint checkout (its src is used)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the sample")
    args = parser.parse_args()
    expected = make(args.code, args.out)
    print(f"sample of commit {expected['commit']} written to {args.out}")


if __name__ == "__main__":
    main()
