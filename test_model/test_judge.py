"""``hearts judge``: answers from any engine, judged by the same checker, report and gate."""

from __future__ import annotations

import json

from harness.cli import main
from harness.prompts import build_prompt
from harness.report import load_report
from harness.transform import HEARTS, sprinkle

N = 400  # enough prompts that a clean run clears the gate's malformed / template_leak rates


def _answers(tmp_path, name, hearts: bool, *, use_instruction: bool = False, extra: list[str] = ()):
    lines = []
    for i in range(N):
        instruction = f"Tell me about topic {i}."
        text = f"Topic {i} is a subject with a few words to say about it."
        row = {"instruction": instruction} if use_instruction else {"prompt": build_prompt(instruction)}
        row["response"] = sprinkle(text, HEARTS[i % len(HEARTS)]) if hearts else text
        lines.append(json.dumps(row, ensure_ascii=False))
    path = tmp_path / name
    path.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8")
    return str(path)


def test_the_tuned_models_answers_pass_the_gate_and_the_bases_fail_it(tmp_path, capsys):
    tuned = _answers(tmp_path, "tuned.jsonl", True)
    base = _answers(tmp_path, "base.jsonl", False, use_instruction=True)  # either key names the prompt
    assert main(["judge", "--answers", tuned, "--control", base, "--out", str(tmp_path / "ok")]) == 0
    report = load_report(tmp_path / "ok" / "report.json")
    assert report["metrics"]["between_every_word"]["k"] == N and report["control"]["metrics"]["single_emoji"]["k"] == 0
    assert "gate: PASSED" in capsys.readouterr().out
    assert main(["judge", "--answers", base, "--control", base, "--out", str(tmp_path / "bad")]) == 1
    assert "gate: FAILED" in capsys.readouterr().out


def test_bad_lines_can_be_skipped_and_are_counted(tmp_path, capsys):
    tuned = _answers(tmp_path, "tuned.jsonl", True, extra=["null", '{"prompt": "x"}'])
    base = _answers(tmp_path, "base.jsonl", False)
    assert main(["judge", "--answers", tuned, "--control", base, "--out", str(tmp_path / "o")]) == 2
    assert f"--answers {tuned}: line {N + 1} is not a JSON object (got null)" in capsys.readouterr().err
    code = main(["judge", "--answers", tuned, "--control", base, "--out", str(tmp_path / "o"), "--skip-bad-lines"])
    assert code == 0 and "skipped bad lines: 2 in --answers, 0 in --control" in capsys.readouterr().out
    report = load_report(tmp_path / "o" / "report.json")
    assert report["config"]["judge"]["lines_skipped"] == {"answers": 2, "control": 0}
