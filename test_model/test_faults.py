"""The fault suite as a whole: malformed input through every command, each case exit 2 with one stderr line
naming the input, no traceback, nothing written or deleted, no model or dataset work (``faultkit``).

The cases live beside the commands they exercise (``test_faults_prepare``, ``test_faults_model``,
``test_faults_release``); this file holds the table's own guarantees and the command-line cases that belong
to no command.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from harness.cli import COMMANDS
from test_model import faultkit, test_faults_model, test_faults_prepare, test_faults_release
from test_model.faultkit import case

ALL = [*test_faults_prepare.CASES, *test_faults_model.CASES, *test_faults_release.CASES]
MINIMUM = {"prepare": 40, "train": 30, "merge": 10, "generate": 10, "eval": 10, "run": 10, "gate": 30,
           "bench": 15, "upload": 20, "env": 5, "judge": 15}

CLI = [
    case("hearts", "no-command", lambda ws: [], "the following arguments are required: COMMAND"),
    case("hearts", "unknown-command", lambda ws: ["trian"], "invalid choice: 'trian'"),
    case("hearts", "unknown-flag", lambda ws: ["prepare", "--datset", "x"], "unrecognized arguments: --datset"),
]


def test_the_table_covers_every_command_with_at_least_150_inputs():
    per_command = Counter(c.command for c in ALL)
    assert len(ALL) >= 150
    assert set(per_command) == {name for name, _ in COMMANDS}
    short = {name: (per_command[name], least) for name, least in MINIMUM.items() if per_command[name] < least}
    assert not short, f"(cases, minimum) per command: {short}"
    assert len({c.id for c in ALL}) == len(ALL), "case ids must be unique"


@pytest.mark.parametrize("c", CLI, ids=faultkit.ids(CLI))
def test_a_usage_error_is_one_line_and_exit_2(c, ws, capsys, monkeypatch):
    faultkit.check(c, ws, capsys, monkeypatch)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder; file.txt/sub covers it")
def test_an_unwritable_staging_parent_exits_2_and_leaves_it_empty(ws, capsys):
    from harness.cli import main

    locked = ws.root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(ws.stage_at(str(locked / "stage"))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "locked/stage: cannot write" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
