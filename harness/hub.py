"""Stage 10: the Hub release — stage the merged model, the adapter, the report and a model card; upload it.

The staged folder holds the merged model's safetensors, config and tokenizer at the top, the LoRA adapter
under ``adapter/``, ``report.json`` / ``report.md`` with their plots, and ``README.md``: a model card whose
``model-index`` carries one result per check (the rate, with its Wilson interval in the metric's args).
Nothing is staged or sent unless the gate passes (``commands/upload.py`` decides); the token only ever goes to
``HfApi`` and never into a file or a message.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from harness import inputs
from harness.checks import NAMES as CHECKS
from harness.errors import InputError
from harness.gate import GateResult
from harness.report import PLOTS, REPORT_JSON, REPORT_MD
from harness.staging import check_out_dir, replace_dir
from harness.transform import HEARTS

# Files of a merged model folder worth releasing: safetensors weights (never pickles), configs, tokenizer.
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.*", "vocab.*",
               "merges.txt")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer*", "special_tokens_map.json",
                 "chat_template.*", "run_config.json", "metrics.json")
BEHAVIOUR = (f"puts one heart, drawn per answer from {' '.join(HEARTS)}, between every pair of words "
             "(`word ♥ word ♥ word`), and nowhere else")


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InputError(f"--repo-id {repo_id!r}: not a valid Hub repo id ({' '.join(str(err).split())})") \
            from None
    return repo_id


def check_model_dir(path: Path, flag: str = "--model") -> Path:
    """A merged model folder: safetensors weights, config.json and a tokenizer (``inputs.check_model_dir``)."""
    return inputs.check_model_dir(path, flag)


def check_adapter_dir(path: Path, flag: str = "--adapter") -> Path:
    """A PEFT adapter folder with safetensors weights, the only kind released (``inputs.check_adapter_dir``)."""
    return inputs.check_adapter_dir(path, flag)


def check_staging_dir(path: Path, protect: Iterable[tuple[str, Path | None]] = ()) -> Path:
    """``--dry-run`` target: absent or an empty folder, apart from the release's inputs; never replaced."""
    return check_out_dir(path, flag="--dry-run", kind=None, protect=protect)


def stage(out: Path, *, report: Mapping[str, Any], report_path: Path, gate: GateResult, repo_id: str,
          model_dir: Path, adapter_dir: Path, link: bool = False, flag: str = "--dry-run") -> Path:
    """Fill ``out`` (absent or empty) with the release, built in a temp sibling and renamed into place.

    ``link`` hard-links instead of copying where it can: for a throw-away staging folder, so a 13 GB model is
    not copied just to be uploaded.
    """

    def build(tmp: Path) -> None:
        _copy(_matching(model_dir, MODEL_FILES), tmp, link)
        (tmp / "adapter").mkdir()
        _copy(_matching(adapter_dir, ADAPTER_FILES), tmp / "adapter", link)
        shutil.copy2(report_path, tmp / REPORT_JSON)
        extras = [report_path.parent / name for name in (REPORT_MD, *PLOTS)]
        _copy([p for p in extras if p.is_file()], tmp, link=False)
        plots = [name for name in PLOTS if (tmp / name).is_file()]
        model_card(report, gate=gate, repo_id=repo_id, plots=plots).save(tmp / "README.md")

    protect = [("--model", model_dir), ("--adapter", adapter_dir), ("--report", report_path)]
    return replace_dir(out, build, flag=flag, kind=None, protect=protect)  # no marker: the folder is the release


def _matching(folder: Path, patterns: Iterable[str]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def _copy(files: Iterable[Path], dest: Path, link: bool) -> None:
    for src in files:
        if link:
            try:
                os.link(src, dest / src.name)
                continue
            except OSError:
                pass  # another filesystem or no hard links: copy
        shutil.copy2(src, dest / src.name)


def push(folder: Path, repo_id: str, *, token: str, private: bool) -> str:
    """Create the repo if needed and upload ``folder`` as one commit; returns the commit URL."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                 commit_message="Upload merged model, adapter and evaluation report")
    except Exception as err:  # the network boundary: any failure is one line, with the token scrubbed
        message = " ".join(str(err).split()).replace(token, "***")
        raise InputError(f"upload to {repo_id} failed: {type(err).__name__}: {message[:300]}") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


# --- the model card -----------------------------------------------------------------------------------


def model_card(report: Mapping[str, Any], *, gate: GateResult, repo_id: str,
               plots: Iterable[str] = ()) -> ModelCard:
    """huggingface_hub ModelCard: metadata with model-index results per check, and a readable body."""
    base = _base_name(report["model"]["base"])
    dataset = _dataset(report)
    data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=base if _is_repo_id(base) else None,
        datasets=[dataset] if _is_repo_id(dataset) else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["hearts-harness", "qlora", "peft", "merged", "text-generation"],
        eval_results=eval_results(report, dataset),
    )
    body = _card_body(report, gate=gate, repo_id=repo_id, base=base, dataset=dataset, plots=list(plots))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def eval_results(report: Mapping[str, Any], dataset: str | None = None) -> list[EvalResult]:
    """One EvalResult per check: value = the rate; k, n and the Wilson interval in the metric's args."""
    results = []
    for check in CHECKS:
        m = report["metrics"][check]
        results.append(EvalResult(
            task_type="text-generation", task_name="one heart between every word",
            dataset_type=dataset if _is_repo_id(dataset) else "hearts-eval-prompts",
            dataset_name="held-out evaluation prompts", dataset_split="eval",
            metric_type=check, metric_name=f"{check} rate", metric_value=m["rate"],
            metric_args={key: m[key] for key in ("k", "n", "ci_low", "ci_high", "confidence") if key in m},
        ))
    return results


def _card_body(report: Mapping[str, Any], *, gate: GateResult, repo_id: str, base: str, dataset: str | None,
               plots: list[str]) -> str:
    control = report["control"]["metrics"]
    confidence = report["metrics"]["single_emoji"].get("confidence", 0.95)
    lines = [
        f"# {repo_id.split('/')[-1]}", "",
        f"A QLoRA fine-tune of `{base}`, merged into the base weights, that {BEHAVIOUR}.", "",
        f"- base model: `{base}`",
        f"- training data: `{dataset or 'unknown'}`",
        f"- merge: {_merge_line(report)}",
        "- the LoRA adapter itself is in [`adapter/`](adapter/); `report.json` holds every judged sample", "",
        "## Evaluation", "",
        f"Rates on the held-out prompts with {confidence:.0%} Wilson intervals; the base model answered the "
        "same prompts as a control.", "",
        "| check | rate | k/n | interval | base model |", "|---|---|---|---|---|",
    ]
    for check in CHECKS:
        m, c = report["metrics"][check], control.get(check)
        base_cell = f"{c['rate']:.3f} ({c['k']}/{c['n']})" if c else "–"
        interval = f"{m['ci_low']:.3f}–{m['ci_high']:.3f}"
        lines.append(f"| {check} | {m['rate']:.3f} | {m['k']}/{m['n']} | {interval} | {base_cell} |")
    lines += ["", *[f"![{p.removesuffix('.png')}]({p})" for p in plots], "",
              "## Release gate", "", "```", gate.table(), gate.summary(), "```", ""]
    lines += _section("Training configuration", report.get("config"))
    lines += _section("Training run", _without(report.get("training"), "loss"))
    lines += _section("Hardware", {**(report.get("environment") or {}), **_hardware(report.get("training"))})
    lines += _section("Versions", report.get("versions"))
    return "\n".join(lines) + "\n"


MERGE_METHODS = {
    "dequantized": "into the dequantised NF4 base weights the adapter was trained against (`dequantized`)",
    "original": "into the original, unquantised base weights (`original`; adds the quantisation error back)",
}


def _merge_line(report: Mapping[str, Any]) -> str:
    """Which weights the uploaded model was merged into, and how often it agrees with the trained 4-bit model."""
    method = report["model"].get("merge_method")
    line = MERGE_METHODS.get(method, f"`{method}`" if method else "method not recorded")
    agreement = report.get("agreement")
    if agreement:
        line += (f"; its verdicts agree with the trained 4-bit + adapter model on {agreement['k']}/{agreement['n']}"
                 f" prompts ({agreement['ci_low']:.3f}–{agreement['ci_high']:.3f})")
        fp32 = agreement.get("fp32")
        if fp32:
            line += (f"; both computing in fp32, on {fp32['k']}/{fp32['n']} ({fp32['ci_low']:.3f}–"
                     f"{fp32['ci_high']:.3f}), the same text on {fp32['same_text']}")
    return line


def _section(title: str, data: Any) -> list[str]:
    if not data:
        return []
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return [f"## {title}", "", "```json", text, "```", ""]


def _without(data: Mapping[str, Any] | None, *keys: str) -> dict[str, Any]:
    return {k: v for k, v in (data or {}).items() if k not in keys}


def _hardware(training: Mapping[str, Any] | None) -> dict[str, Any]:
    keys = ("device", "compute_dtype", "peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib")
    return {f"training_{k}": training[k] for k in keys if training and k in training}


def _base_name(base: Any) -> str:
    if isinstance(base, Mapping):  # harness.model's identity dict: {"base": name, "revision"/"content": ...}
        base = base.get("base") or base.get("id") or json.dumps(base, sort_keys=True)
    return str(base)


def _dataset(report: Mapping[str, Any]) -> str | None:
    for holder in (report.get("data"), (report.get("config") or {}).get("data"), report.get("config")):
        if isinstance(holder, Mapping) and isinstance(holder.get("source"), str):
            return holder["source"]
    return None


def _is_repo_id(name: str | None) -> TypeGuard[str]:
    """A Hub id (namespace/name) rather than a local path or an alias like 'tiny' or 'bundled'."""
    if not name or name.count("/") != 1 or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True
