"""Scenario 3, disk faults: copies of a run's journal and its write-ahead log truncated or
bit-flipped at many offsets, and a full disk (or an I/O error) during a run.

"Wrong state", precisely: ``counterpoint status --json`` answers (exit 0) with a report
that differs from the undamaged journal's (run status, exit code, task counts, running,
failed and blocked tasks with their errors, agents, gates; elapsed times aside) and that
is not the report of an earlier commit of the same journal (what a crash at that commit
would have left). Target: 0. Every other answer must be exit 2 with an ``error:`` line
naming the journal, never a traceback. ``resume`` on a damaged copy either refuses the
same way or finishes the run without executing again a task the copy showed completed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import (
    KILLED,
    figure,
    forked,
    kill_env,
    resume_forked,
    run_forked,
    size,
    snapshot,
    workspace,
)
from run_helpers import Workspace, agent_spec, one_phase, task


def small_plan(ws: Workspace) -> None:
    tasks = [task(f"t{i}", sleep=0.01, needs=[f"t{i - 1}"] if i % 4 else []) for i in range(16)]
    tasks.append(task("bad", sleep=0.01, inputs={"fail": True}))
    tasks.append(task("after_bad", sleep=0.01, needs=["bad"]))
    ws.write_plan(one_phase(tasks, agents={"w": agent_spec(ws, capacity=3)}))


def cli_in_fork(folder: Path, *args: str) -> tuple[int, str, str]:
    """``counterpoint ARGS`` in a forked child (the CLI as users run it, fast)."""
    out, err = folder / "cli.out", folder / "cli.err"

    def child() -> int:
        from counterpoint.cli import main

        with open(out, "wb") as o, open(err, "wb") as e:
            os.dup2(o.fileno(), 1)
            os.dup2(e.fileno(), 2)
            sys.stdout, sys.stderr = o_text, e_text = (
                open(1, "w", closefd=False),  # noqa: SIM115 - the child's own streams
                open(2, "w", closefd=False),  # noqa: SIM115
            )
            sys.argv = ["counterpoint", *args]
            try:
                main()
            except SystemExit as exc:
                return int(exc.code or 0)
            finally:
                o_text.flush()
                e_text.flush()
            return 0

    code = forked(child, timeout=120)
    return code, out.read_text(errors="replace"), err.read_text(errors="replace")


def status_of(state: Path, scratch: Path) -> tuple[int, Any, str]:
    code, out, err = cli_in_fork(scratch, "status", "--json", "--state", str(state))
    if code != 0:
        return code, None, err
    report = json.loads(out)
    for r in report["running"]:
        r.pop("elapsed_s", None)
    return code, report, err


def copy_state(src: Path, dst: Path, damage: Callable[[Path], None] | None = None) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("state.db", "state.db-wal"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    if damage is not None:
        damage(dst)
    return dst


def truncate(name: str, at: int) -> Callable[[Path], None]:
    def act(d: Path) -> None:
        with open(d / name, "r+b") as f:
            f.truncate(at)

    return act


def flip(name: str, at: int, bit: int) -> Callable[[Path], None]:
    def act(d: Path) -> None:
        with open(d / name, "r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ (1 << bit)]))

    return act


def wal_commit_ends(wal: bytes) -> list[int]:
    """Offsets just after each commit frame of the WAL's current generation."""
    page = struct.unpack(">I", wal[8:12])[0]
    salt, frame, ends, off = wal[16:24], 24 + page, [], 32
    while off + frame <= len(wal) and wal[off + 8 : off + 16] == salt:
        if struct.unpack(">I", wal[off + 4 : off + 8])[0]:
            ends.append(off + frame)
        off += frame
    return ends


class Tally:
    def __init__(self) -> None:
        self.counts = {"same": 0, "earlier": 0, "refused": 0, "wrong": 0, "unclear": 0}
        self.wrong: list[str] = []

    def classify(self, label: str, answer: tuple[int, Any, str], good: Any, earlier: list[Any]):
        code, report, err = answer
        if code == 0 and report == good:
            self.counts["same"] += 1
        elif code == 0 and report in earlier:
            self.counts["earlier"] += 1
        elif code == 0:
            self.counts["wrong"] += 1
            self.wrong.append(label)
        elif code == 2 and err.startswith("error:") and "Traceback" not in err:
            self.counts["refused"] += 1
        else:
            self.counts["unclear"] += 1
            self.wrong.append(f"{label}: exit {code}: {err[-300:]}")


@pytest.fixture(scope="module")
def journals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished run (no WAL after its clean close), and a run killed mid-way (with WAL)."""
    base = tmp_path_factory.mktemp("journals")
    done = workspace(base / "done")
    small_plan(done)
    assert run_forked(done) == 1  # `bad` fails
    crashed = workspace(base / "crashed")
    small_plan(crashed)
    assert run_forked(crashed, kill_env("after", 12)) == KILLED
    assert (crashed.state / "state.db-wal").stat().st_size > 0
    return {"done": done.state, "crashed": crashed.state, "crashed_ws": crashed}


def test_damaged_journals_are_refused_or_read_right_never_silently_wrong(
    journals: dict[str, Any], tmp_path: Path
) -> None:
    rng = random.Random(13)
    tally = Tally()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cases = size(12, 150)
    for kind in ("done", "crashed"):
        src = journals[kind]
        good = status_of(copy_state(src, tmp_path / "good"), scratch)  # never src itself
        assert good[0] == 0, good
        earlier: list[Any] = []
        names = ["state.db"]
        if kind == "crashed":
            names.append("state.db-wal")
            wal = (src / "state.db-wal").read_bytes()
            for end in wal_commit_ends(wal):  # the states a crash at each commit leaves
                d = copy_state(src, tmp_path / "prefix", truncate("state.db-wal", end))
                earlier.append(status_of(d, scratch)[1])
        for name in names:
            length = (src / name).stat().st_size
            for i in range(cases):
                at = rng.randrange(length)
                if i % 2:
                    label, damage = f"{kind}/{name} truncated at {at}", truncate(name, at)
                else:
                    bit = rng.randrange(8)
                    label, damage = f"{kind}/{name} bit {bit} of byte {at}", flip(name, at, bit)
                d = copy_state(src, tmp_path / "case", damage)
                tally.classify(label, status_of(d, scratch), good[1], earlier)
    for label, make in foreign_files().items():
        d = tmp_path / "foreign"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        make(d / "state.db")
        tally.classify(label, status_of(d, scratch), None, [])
    figure("disk.damaged_copies", sum(tally.counts.values()))
    for k, v in tally.counts.items():
        figure(f"disk.status_{k}", v)
    figure("disk.silent_wrong_starts", tally.counts["wrong"] + tally.counts["unclear"])
    assert tally.wrong == []
    assert tally.counts["refused"] > 0


def foreign_files() -> dict[str, Callable[[Path], None]]:
    def other_program(p: Path) -> None:
        db = sqlite3.connect(p)
        db.execute("CREATE TABLE notes (x TEXT)")
        db.commit()
        db.close()

    def tasks_dropped(p: Path) -> None:
        db = sqlite3.connect(p)
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
        db.commit()
        db.close()

    return {
        "empty file": lambda p: p.write_bytes(b""),
        "text file": lambda p: p.write_text("not a database\n" * 100),
        "another program's database": other_program,
        "tables missing": tasks_dropped,
    }


def test_resume_on_a_damaged_copy_refuses_or_finishes_without_redoing_completed_work(
    journals: dict[str, Any], tmp_path: Path
) -> None:
    rng = random.Random(17)
    origin: Workspace = journals["crashed_ws"]  # its plan and agent: the copies' run names them
    resumed = refused = redone = 0
    for i in range(size(4, 30)):
        name = "state.db-wal" if i % 2 == 0 else rng.choice(["state.db", "state.db-wal"])
        length = (journals["crashed"] / name).stat().st_size
        at = rng.randrange(length)
        damage = truncate(name, at) if i % 4 < 2 else flip(name, at, rng.randrange(8))
        state = copy_state(journals["crashed"], tmp_path / f"r{i}", damage)
        shown = copy_state(state, tmp_path / "shown")  # read a copy: reading may repair
        code, _, _ = status_of(shown, tmp_path)
        shown_done = _completed(copy_state(state, tmp_path / "shown")) if code == 0 else set()
        seen = len(origin.records())
        rcode, _, err = cli_in_fork(tmp_path, "resume", "--state", str(state), "--quiet")
        if rcode == 2:
            assert err.startswith("error:") and "Traceback" not in err, err
            refused += 1
            continue
        assert rcode == 1, (rcode, err)  # `bad` fails, as in the crash-free run
        resumed += 1
        again = {r["task"] for r in origin.records()[seen:] if r["event"] == "start"}
        redone += len(shown_done & again)
    figure("disk.resume_refused", refused)
    figure("disk.resume_finished", resumed)
    figure("disk.resume_completed_redone", redone)
    assert redone == 0


def _completed(state: Path) -> set[str]:
    try:
        return snapshot(state).completed()
    except sqlite3.DatabaseError:
        return set()


def test_an_io_error_stops_the_run_with_a_clear_error_and_resume_finishes(
    tmp_path: Path,
) -> None:
    ws = workspace(tmp_path)
    small_plan(ws)
    err = tmp_path / "run.err"

    def child() -> int:
        with open(err, "wb") as e:
            os.dup2(e.fileno(), 2)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the child's stream
            from counterpoint.cli import main

            sys.argv = ["counterpoint", "run", str(ws.plan), "--state", str(ws.state), "--quiet"]
            try:
                main()
            except SystemExit as exc:
                return int(exc.code or 0)
            return 0

    code = forked(child, {"COUNTERPOINT_FAULT_IO_AT": "6"})
    text = err.read_text()
    assert code == 2, text
    assert text.startswith("error:") and "disk I/O error" in text and "Traceback" not in text, text
    assert "resume" in text
    before = snapshot(ws.state).completed()
    assert resume_forked(ws) == 1
    final = snapshot(ws.state)
    assert {t for t, (s, _) in final.tasks.items() if s == "completed"} == {
        f"t{i}" for i in range(16)
    }
    runs = ws.executions()
    assert all(sum(1 for e in runs if e.task == t and e.outcome == "end") == 1 for t in before)
    figure("disk.io_error_resumed", 1)


def test_a_full_disk_stops_the_run_with_a_clear_error_and_resume_finishes(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.fail("the full-disk scenario mounts a tmpfs: run the fault suite as root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        ws = workspace(tmp_path / "ws")
        small_plan(ws)
        state = mnt / "state"
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # leave about 300 KB: the run starts, then fills it
            f.write(b"\0" * (2 * 1024 * 1024 - 300 * 1024))
        err = tmp_path / "run.err"

        def child() -> int:
            with open(err, "wb") as e:
                os.dup2(e.fileno(), 2)
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the child's stream
                from counterpoint.cli import main

                sys.argv = ["counterpoint", "run", str(ws.plan), "--state", str(state), "--quiet"]
                try:
                    main()
                except SystemExit as exc:
                    return int(exc.code or 0)
                return 0

        code = forked(child)
        text = err.read_text()
        assert code == 2, text
        assert text.startswith("error:") and "Traceback" not in text, text
        filler.unlink()
        ws.state.symlink_to(state)
        assert snapshot(state).tasks, "the run stopped before it started: give it more room"
        before = snapshot(state).completed()
        assert resume_forked(ws) == 1
        runs = ws.executions()
        assert all(sum(1 for e in runs if e.task == t and e.outcome == "end") == 1 for t in before)
        done = {t for t, (s, _) in snapshot(state).tasks.items() if s == "completed"}
        assert done == {f"t{i}" for i in range(16)}
        figure("disk.full_disk_resumed", 1)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
