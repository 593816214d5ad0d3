"""Issue 25 through real local runs (`refitctl submit --cluster local`, gloo, the tests' small model): a run
directory moved while its run goes on (item 9), and a verified submit on an ASCII-only terminal (item 12)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from helpers import SMALL, only_run, refitctl, run_json


def _wait_for(what: str, ok, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _state(d: Path) -> str:
    try:
        return json.loads((d / "job-state.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return ""


def test_cancel_reaches_a_run_whose_directory_was_moved(tmp_path: Path) -> None:
    runs, moved = tmp_path / "runs", tmp_path / "elsewhere"
    moved.mkdir()
    refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--detach",
             "--num-benchmark-iterations", "100000", *SMALL, runs=runs, check=0)
    d = only_run(runs)
    controller = run_json(d)["job"]["controller_pid"]
    # every rank has opened its files (a rank just starting would make its path again: only the controller
    # is followed to the new place)
    _wait_for("the ranks to refit", lambda: _state(d) == "RUNNING" and len(list((d / "ranks").glob("rank-*"))) == 3
              and len(list((d / "procs").glob("rank-*"))) == 3)
    time.sleep(1.0)
    new = moved / d.name
    shutil.move(str(d), str(new))
    out = refitctl("cancel", str(new), runs=runs, check=0).stdout
    assert "cancel requested from the local controller" in out, out
    _wait_for("the controller to record the cancel", lambda: _state(new) == "CANCELLED", timeout=30)
    state = json.loads((new / "job-state.json").read_text())
    assert state["detail"] == "cancelled by the user (refitctl cancel)"
    _wait_for("the controller to exit", lambda: not Path(f"/proc/{controller}").exists(), timeout=30)
    assert not d.exists(), "the controller made the old path again"
    status = refitctl("status", str(new), runs=runs, check=0).stdout
    assert "CANCELLED" in status


def test_a_verified_submit_on_an_ascii_only_terminal(tmp_path: Path) -> None:
    p = refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", *SMALL,
                 runs=tmp_path / "rüns", env={"LANG": "C", "LC_ALL": "", "PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert p.stdout.isascii() and "verified" in p.stdout
    assert os.path.isdir(tmp_path / "rüns")
