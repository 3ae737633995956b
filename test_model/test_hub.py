"""The Hub release: the gate guards it, the staged folder and card carry the report, the token stays secret.

Only the network boundary is replaced: ``HfApi.create_repo`` and ``HfApi.upload_folder`` as seen by
``harness.hub``. The token is a sentinel handed to the CLI through the environment variable it reads.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import ModelCard

from harness import hub
from harness.checks import NAMES as CHECKS
from harness.cli import main
from harness.report import PLOTS, write_report
from test_model.test_report import (
    LOSS,
    N_PASSING,
    eval_prompts,
    good_model,
    make_report,
    retention_rows,
    sampled_answers,
    set_rate,
)

TOKEN = "hf_SENTINELtoken0123456789abcdef"
REPO = "hearts-lab/llama2-hearts"


@pytest.fixture(scope="module")
def passing_report() -> dict[str, Any]:
    return make_report(training={"loss": LOSS, "steps": 30, "device": "cuda", "compute_dtype": "bfloat16"},
                       retention=retention_rows(N_PASSING), sampled=sampled_answers())


@pytest.fixture(scope="module")
def written(tmp_path_factory, passing_report) -> Path:
    """A passing report written once (plots drawn once), copied per test."""
    return write_report(tmp_path_factory.mktemp("written"), passing_report).parent


def build_release(root: Path, written: Path) -> dict[str, Path]:
    """A report folder, a merged model and an adapter folder under ``root``, as the pipeline leaves them."""
    model, adapter = root / "merged", root / "adapter"
    model.mkdir()
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        text = f"{name} of the merged model"  # the JSON files must parse: the upload checks them
        (model / name).write_text(json.dumps({"about": text}) if name.endswith(".json") else text)
    (model / "training_args.bin").write_bytes(b"pickle")  # never released
    (model / "manifest.json").write_text("{}")  # the cache's bookkeeping, not the model's
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 64}')
    (adapter / "adapter_model.safetensors").write_text("lora weights")
    report_dir = root / "eval"
    shutil.copytree(written, report_dir)
    return {"report": report_dir / "report.json", "model": model, "adapter": adapter}


@pytest.fixture
def release(tmp_path, written) -> dict[str, Path]:
    return build_release(tmp_path, written)


@pytest.fixture
def hub_calls(monkeypatch) -> list[tuple[str, dict[str, Any]]]:
    """Record calls at the network boundary; upload_folder snapshots the staged folder before its removal."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        kwargs["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        kwargs["weights_inode"] = (folder / "model.safetensors").stat().st_ino
        kwargs["blobs"] = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
        calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    return calls


def _upload(release: dict[str, Path], *extra: str) -> int:
    return main(["upload", "--report", str(release["report"]), "--repo-id", REPO,
                 "--model", str(release["model"]), "--adapter", str(release["adapter"]), *extra])


EXPECTED_FILES = sorted([
    "README.md", "report.json", "report.md", *PLOTS, "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors", "model.safetensors", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
])


def test_a_passing_report_is_uploaded_as_one_staged_folder(release, hub_calls, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _upload(release) == 0
    (create, created), (upload, uploaded) = hub_calls
    assert (create, created) == ("create_repo", {"repo_id": REPO, "private": False, "exist_ok": True,
                                                 "repo_type": "model"})
    assert upload == "upload_folder" and uploaded["repo_id"] == REPO
    assert uploaded["files"] == EXPECTED_FILES
    assert not Path(uploaded["folder_path"]).exists()  # the temp staging folder is gone afterwards
    assert uploaded["weights_inode"] == (release["model"] / "model.safetensors").stat().st_ino  # linked
    assert f"uploaded to {REPO}" in capsys.readouterr().out


def test_private_reaches_create_repo(release, hub_calls, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _upload(release, "--private") == 0
    assert hub_calls[0][1]["private"] is True


def test_a_failing_gate_stages_and_uploads_nothing(release, hub_calls, monkeypatch, capsys, passing_report):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    failing = set_rate(copy.deepcopy(passing_report), "between_every_word", 250)
    write_report(release["report"].parent, failing)
    stage = release["report"].parent.parent / "stage"
    assert _upload(release) == 1
    assert _upload(release, "--dry-run", str(stage)) == 1
    assert hub_calls == [] and not stage.exists()
    err = capsys.readouterr().err
    assert "gate failed; nothing staged or uploaded" in err


def test_the_reports_relative_paths_are_found_from_another_folder(release, hub_calls, tmp_path, monkeypatch,
                                                                  passing_report):
    report = copy.deepcopy(passing_report)  # paths relative to the report's folder, as an older eval wrote them
    report["model"].update(merged_path="../merged", adapter_path="../adapter")
    write_report(release["report"].parent, report)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    stage = tmp_path / "stage"
    assert main(["upload", "--report", str(release["report"]), "--repo-id", REPO, "--dry-run", str(stage)]) == 0
    assert (stage / "model.safetensors").read_bytes() == (release["model"] / "model.safetensors").read_bytes()


def test_a_dry_run_stages_model_adapter_report_plots_and_card_and_sends_nothing(release, hub_calls, tmp_path):
    stage = tmp_path / "stage"
    assert _upload(release, "--dry-run", str(stage)) == 0
    assert sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()) == EXPECTED_FILES
    assert (stage / "report.json").read_bytes() == release["report"].read_bytes()
    staged_weights, weights = stage / "model.safetensors", release["model"] / "model.safetensors"
    assert staged_weights.read_bytes() == weights.read_bytes()
    assert staged_weights.stat().st_ino != weights.stat().st_ino  # a copy: editing it cannot touch the model
    assert hub_calls == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_an_empty_staging_folder_is_filled(release, tmp_path):
    (tmp_path / "stage").mkdir()
    assert _upload(release, "--dry-run", str(tmp_path / "stage")) == 0
    assert (tmp_path / "stage" / "README.md").is_file()


def test_the_card_parses_back_with_the_numbers_of_the_report(release, tmp_path, passing_report):
    assert _upload(release, "--dry-run", str(tmp_path / "stage")) == 0
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert sorted(results) == sorted(CHECKS)
    for check in CHECKS:
        m, r = passing_report["metrics"][check], results[check]
        assert r.metric_value == m["rate"]
        assert r.metric_args == {k: m[k] for k in ("k", "n", "ci_low", "ci_high", "confidence")}
        assert r.task_type == "text-generation"
    assert card.data.base_model == "meta-llama/Llama-2-7b-hf"
    assert card.data.datasets == ["databricks/databricks-dolly-15k"]
    assert card.data.model_name == "llama2-hearts"
    text = card.text
    assert "| between_every_word | 1.000 | 400/400 | 0.990–1.000 | 0.000 (0/400) |" in text
    assert "gate: PASSED" in text and '"huggingface_hub"' in text
    assert "## Hardware" in text and '"training_compute_dtype": "bfloat16"' in text
    assert "💕" in text and "![loss](loss.png)" in text


def test_the_card_says_which_weights_were_merged_and_how_well_they_agree(release, tmp_path):
    with_agreement = make_report(adapter=True)
    write_report(release["report"].parent, with_agreement)
    assert _upload(release, "--dry-run", str(tmp_path / "stage")) == 0
    text = ModelCard.load(tmp_path / "stage" / "README.md").text
    assert "merge: into the dequantised NF4 base weights the adapter was trained against (`dequantized`)" in text
    assert "agree with the trained 4-bit + adapter model on 400/400 prompts" in text
    assert "in fp32" not in text  # measured only with [eval] fp32_agreement


def test_the_card_states_the_fp32_agreement_where_the_report_has_it(release, tmp_path):
    prompts = eval_prompts(N_PASSING)
    trained = good_model(prompts[:128])
    write_report(release["report"].parent, make_report(adapter=True, fp32=(trained, good_model(prompts[:128], [5]))))
    assert _upload(release, "--dry-run", str(tmp_path / "stage")) == 0
    text = ModelCard.load(tmp_path / "stage" / "README.md").text
    assert "both computing in fp32, on 127/128 (" in text and "the same text on 127" in text


def test_a_report_without_a_merge_method_is_not_given_one(release, tmp_path, passing_report):
    unknown = copy.deepcopy(passing_report)
    del unknown["model"]["merge_method"]
    write_report(release["report"].parent, unknown)
    assert _upload(release, "--dry-run", str(tmp_path / "stage")) == 0
    assert "merge: method not recorded" in ModelCard.load(tmp_path / "stage" / "README.md").text


def test_a_local_or_alias_base_model_is_not_claimed_as_a_hub_base(release, tmp_path, passing_report):
    local = copy.deepcopy(passing_report)
    local["model"]["base"] = {"base": "tiny", "content": "abc123"}
    write_report(release["report"].parent, local)
    assert _upload(release, "--dry-run", str(tmp_path / "stage")) == 0
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    assert card.data.base_model is None and "fine-tune of `tiny`" in card.text


def test_model_and_adapter_default_to_the_paths_in_the_report(release, tmp_path, passing_report):
    moved = copy.deepcopy(passing_report)
    moved["model"].update(merged_path=str(release["model"]), adapter_path=str(release["adapter"]))
    write_report(release["report"].parent, moved)
    argv = ["upload", "--report", str(release["report"]), "--repo-id", REPO, "--dry-run", str(tmp_path / "s")]
    assert main(argv) == 0
    assert (tmp_path / "s" / "adapter" / "adapter_config.json").read_text() == '{"r": 64}'


def test_the_token_never_reaches_a_file_or_the_output(release, hub_calls, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _upload(release) == 0
    uploaded = hub_calls[1][1]
    assert TOKEN.encode() not in uploaded["blobs"]
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err


def test_a_failed_upload_is_one_line_with_the_token_scrubbed(release, monkeypatch, capsys):
    def refuse(self, repo_id, **kwargs):
        raise OSError(f"401 Unauthorized: invalid token {TOKEN} for {repo_id}\nmore detail")

    monkeypatch.setattr(hub.HfApi, "create_repo", refuse)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _upload(release) == 2
    err = capsys.readouterr().err
    assert TOKEN not in err and "invalid token ***" in err and err.count("\n") == 1


def test_a_missing_token_exits_2_and_sends_nothing(release, hub_calls, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert _upload(release) == 2
    assert capsys.readouterr().err.startswith("hearts upload: error: HF_TOKEN is not set:")
    assert hub_calls == []


def test_an_invalid_repo_id_exits_2_and_sends_nothing(release, hub_calls, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    argv = ["upload", "--report", str(release["report"]), "--repo-id", "hearts--lab/x"]
    assert main(argv) == 2
    assert "--repo-id 'hearts--lab/x': not a valid Hub repo id" in capsys.readouterr().err
    assert hub_calls == []


def test_a_bad_staging_folder_is_exit_2_even_when_the_gate_would_fail(release, tmp_path, passing_report):
    write_report(release["report"].parent, set_rate(copy.deepcopy(passing_report), "in_list", 100))
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "keep.txt").write_text("mine")
    assert _upload(release, "--dry-run", str(tmp_path / "stage")) == 2  # input problems first, then the gate
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["keep.txt"]
