"""Where a verdict was earned: versions, processor and torch's CPU kernels recorded, and drift made visible."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import environment
from harness.cli import main
from harness.errors import InputError
from harness.gate import evaluate
from harness.report import write_report
from test_model.test_report import make_report

names = st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True)
releases = st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}(\.[0-9]{1,2})?", fullmatch=True)
pins = st.dictionaries(names, releases, max_size=8)


@given(pins)
def test_nothing_drifts_from_itself_and_a_local_build_tag_is_not_a_release(locked):
    assert environment.drift(locked, locked) == []
    assert environment.drift(locked, {name: f"{v}+cpu" for name, v in locked.items()}) == []


@given(pins, names, releases)
def test_a_moved_or_missing_version_is_named_with_both_sides(locked, name, release):
    moved = {**locked, name: release + ".99"}
    rows = environment.drift(locked, moved)
    key = environment._canonical(name)
    assert (key, locked.get(name, "absent"), release + ".99") in [(n, o, v) for n, o, v in rows]
    missing = {k: v for k, v in locked.items() if k != name}
    if name in locked:
        assert (key, locked[name], "absent") in environment.drift(locked, missing)


def test_a_lock_file_is_read_as_pins_and_a_file_without_pins_is_refused(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# pinned\nTransformers==5.24.0\npeft == 0.21.2  # comment\n-e .\nscipy>=1.11\n")
    assert environment.read_lock(lock) == {"transformers": "5.24.0", "peft": "0.21.2"}
    (tmp_path / "empty.txt").write_text("scipy>=1.11\n")
    with pytest.raises(InputError, match="no 'name==version' lines"):
        environment.read_lock(tmp_path / "empty.txt")


def test_the_project_lock_pins_the_libraries_that_move_a_verdict(pytestconfig):
    locked = environment.read_lock(pytestconfig.rootpath / "constraints.txt")
    assert {"transformers", "peft", "bitsandbytes", "tokenizers", "accelerate", "datasets"} <= set(locked)
    assert "torch" not in locked  # CI pins the CPU build on the command line; a GPU runner brings its own


def test_a_report_records_the_processor_and_torchs_cpu_kernels():
    import torch

    env = make_report(20)["environment"]
    assert env["processor"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()


def _moved(report: dict) -> dict:
    """``report`` as another machine would have written it: another transformers and other CPU kernels (not
    this machine's, whichever it is: an AVX2 runner must see a drift too)."""
    other = copy.deepcopy(report)
    other["versions"]["transformers"] = "5.17.0"
    other["environment"]["cpu_capability"] = "NO AVX"
    assert report["environment"]["cpu_capability"] != "NO AVX"
    return other


def test_a_flipped_check_against_the_baseline_names_what_drifted():
    baseline = _moved(make_report(40))
    result = evaluate(make_report(40, fail=range(3)), baseline=baseline)
    text = result.drift_text()
    assert "single_emoji" in text and "transformers: 5.17.0 (baseline) ->" in text
    assert "cpu_capability: NO AVX (baseline) ->" in text


def test_no_drift_is_shown_when_no_verdict_flipped():
    report = make_report(40)
    assert evaluate(report, baseline=_moved(report)).drift == ()


def test_hearts_gate_prints_the_drift_next_to_the_flipped_check(tmp_path, capsys):
    new = write_report(tmp_path / "new", make_report(40, fail=range(3)))
    old = write_report(tmp_path / "old", _moved(make_report(40)))
    main(["gate", "--report", str(new), "--baseline", str(old)])
    assert "transformers: 5.17.0 (baseline) ->" in capsys.readouterr().out


def test_hearts_env_reports_the_drift_from_a_lock_and_can_fail_on_it(tmp_path, capsys):
    lock = tmp_path / "constraints.txt"
    lock.write_text("transformers==0.0.1\n")
    assert main(["env", "--lock", str(lock)]) == 0
    assert "transformers: 0.0.1 (locked) ->" in capsys.readouterr().out
    assert main(["env", "--lock", str(lock), "--check"]) == 1
