"""Fault injection: ``hearts run`` killed with SIGKILL at random points never leaves a half-written artifact that
a later run takes for good (``pytest -m slow``)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cache
from harness.report import load_report

pytestmark = pytest.mark.slow
TRIALS = 10


def _hearts_run(artifacts: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness.cli", "run", "--artifacts-dir", str(artifacts), "--out", str(out),
           "--max-steps", "3"]  # 3 steps: the faults are about files, not about what was learned
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _assert_consistent(artifacts: Path, out: Path) -> None:
    for kind in artifacts.iterdir():
        for entry in kind.iterdir():
            if entry.is_dir() and not entry.name.startswith("."):
                assert cache.is_complete(entry), f"{entry} is in place but incomplete"
    if out.exists():  # a report folder that exists is whole: it is swapped in only once complete
        load_report(out / "report.json")
    # A kill during the report's build may leave its .tmp-out-* sibling: never read, swept by the next run.


def test_a_run_killed_anywhere_leaves_a_state_the_next_run_accepts(tmp_path, tiny_base_dir):
    import shutil

    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_base_dir.parent, artifacts / tiny_base_dir.parent.name)  # the stand-in is not the subject
    out = tmp_path / "out"
    rng = random.Random(0)
    for _ in range(TRIALS):
        proc = _hearts_run(artifacts, out)
        time.sleep(rng.uniform(1.0, 40.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_consistent(artifacts, out)
    final = _hearts_run(artifacts, out)
    assert final.wait(timeout=1800) in (0, 1)  # 1: the gate failed (3 steps), but the run completed
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["single_emoji"]["n"] >= 60
    assert not [p for p in out.parent.glob(".tmp-*")], "the last run did not sweep an earlier run's leftovers"
