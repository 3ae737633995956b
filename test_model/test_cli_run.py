"""``hearts run`` end to end on this session's (cached) model: report files, summary, gate exit code."""

from __future__ import annotations

from harness import gate
from harness.cli import main
from harness.report import load_report


def test_hearts_run_reuses_the_cache_writes_the_report_and_exits_with_the_gate(
        trained_adapter, merged_dir, artifacts_dir, run_configs, tmp_path, capsys):
    cfg, _, data_cfg = run_configs
    out = tmp_path / "out"
    code = main(["run", "--artifacts-dir", str(artifacts_dir), "--out", str(out), "--base-model", cfg.base_model,
                 "--max-steps", str(cfg.max_steps), "--dataset", data_cfg.source])
    printed = capsys.readouterr().out
    report = load_report(out / "report.json")
    assert code == (0 if gate.evaluate(report).passed else 1)
    assert "(from the cache)" in printed and "base (control)" in printed and "gate: " in printed
    # where the time went, from the command's start (the imports, the cache lookups) to the report
    stages = report["stage_timing"]
    assert list(stages)[:2] == ["imports and settings", "adapter and merge"]
    assert f"time: imports and settings {stages['imports and settings']:.1f} s, adapter and merge " in printed
    assert report["model"]["adapter_path"] == str(trained_adapter.path)
    assert {"report.md", "compliance.png", "hearts.png", "loss.png"} <= {p.name for p in out.iterdir()}
    assert report["metrics"]["single_emoji"]["n"] == len(report["samples"]) >= 60


def test_hearts_run_refuses_a_broken_gate_config_before_training(artifacts_dir, tmp_path, capsys):
    bad = tmp_path / "gate.toml"
    bad.write_text("[gate]\nsingle_emoji = 'high'\n")
    code = main(["run", "--artifacts-dir", str(tmp_path / "never-used"), "--out", str(tmp_path / "out"),
                 "--gate-config", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "single_emoji" in err
    assert not (tmp_path / "never-used").exists()


def test_overlap_is_off_by_default_and_a_flag_turns_it_on(tmp_path):
    from harness.cli import build_parser
    from harness.commands.options import settings

    def parsed(*flags):
        return settings(build_parser().parse_args(["eval", "--out", str(tmp_path / "r"), *flags])).eval

    assert parsed().overlap is False and parsed("--overlap").overlap is True
    assert parsed("--no-overlap").overlap is False
    assert parsed("--overlap").generation_cache is True  # one switch, not two
    on = tmp_path / "beside.toml"
    on.write_text("[eval]\noverlap = true\n")
    assert parsed("--config", str(on)).overlap is True  # the config's, unless a flag says otherwise
    assert parsed("--config", str(on), "--no-overlap").overlap is False
