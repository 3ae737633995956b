"""The model commands (train, merge, generate, eval, run) with bad input: every one must be refused before a
stand-in is built, a model loaded or a step trained (``faultkit`` turns any of those into a failure).

The config-file table runs through ``train`` whole and, a few rows each, through the other commands that read
``--config``: they share the code, but each must call it before its own expensive work.
"""

from __future__ import annotations

import pytest

from test_model import faultkit
from test_model.faultkit import DEEP, Workspace, case, dolly

# (id, TOML text, fragment): each a bad config for every command that takes --config
CONFIGS = [
    ("max-steps-zero", "[train]\nmax_steps = 0\n", "TrainConfig.max_steps: expected an integer in [1,"),
    ("max-steps-negative", "[train]\nmax_steps = -5\n", "got -5"),
    ("batch-size-zero", "[train]\nbatch_size = 0\n", "TrainConfig.batch_size"),
    ("grad-accum-zero", "[train]\ngrad_accum = 0\n", "TrainConfig.grad_accum"),
    ("learning-rate-negative", "[train]\nlearning_rate = -1e-4\n", "learning_rate: expected a number in (0,"),
    ("learning-rate-string", "[train]\nlearning_rate = 'fast'\n", "learning_rate: expected a finite number"),
    ("warmup-above-one", "[train]\nwarmup_ratio = 1.5\n", "TrainConfig.warmup_ratio"),
    ("grad-norm-zero", "[train]\nmax_grad_norm = 0\n", "TrainConfig.max_grad_norm"),
    ("scheduler-unknown", "[train]\nlr_scheduler = 'fast'\n", "TrainConfig.lr_scheduler: expected one of linear"),
    ("optimizer-unknown", "[train]\noptimizer = 'adamx'\n", "TrainConfig.optimizer"),
    ("quant-type-unknown", "[train]\nquant_type = 'int3'\n", "TrainConfig.quant_type: expected one of nf4, fp4"),
    ("dtype-unknown", "[train]\ncompute_dtype = 'fp8'\n", "TrainConfig.compute_dtype"),
    ("seed-negative", "[train]\nseed = -1\n", "TrainConfig.seed"),
    ("base-model-empty", "[train]\nbase_model = ''\n", "TrainConfig.base_model: expected a non-empty string"),
    ("base-model-a-number", "[train]\nbase_model = 5\n", "TrainConfig.base_model"),
    ("revision-empty", "[train]\nrevision = ''\n", "TrainConfig.revision"),
    ("unknown-train-key", "[train]\nmax_step = 3\n", "TrainConfig: unknown key 'max_step'"),
    ("lora-r-zero", "[lora]\nr = 0\n", "LoraSettings.r"),
    ("lora-dropout-one", "[lora]\ndropout = 1.0\n", "LoraSettings.dropout"),
    ("lora-bias-unknown", "[lora]\nbias = 'sometimes'\n", "LoraSettings.bias: expected one of none, all, lora_only"),
    ("lora-no-modules", "[lora]\ntarget_modules = []\n", "LoraSettings.target_modules"),
    ("data-max-length-4", "[data]\nmax_length = 4\n", "DataConfig.max_length"),
    ("data-eval-fraction-one", "[data]\neval_fraction = 1.0\n", "eval_fraction: expected a number in [0, 1)"),
    ("data-bad-rows-skip", "[data]\non_bad_rows = 'skip'\n", "DataConfig.on_bad_rows"),
    ("data-loss-on-unknown", "[data]\nloss_on = 'prompt'\n", "DataConfig.loss_on"),
    ("data-source-empty", "[data]\nsource = ''\n", "DataConfig.source: expected a non-empty string"),
    ("data-source-a-number", "[data]\nsource = 3\n", "DataConfig.source: expected a string"),
    ("data-max-rows-zero", "[data]\nmax_rows = 0\n", "DataConfig.max_rows"),
    ("data-max-rows-string", "[data]\nmax_rows = '10'\n", "DataConfig.max_rows"),
    ("data-max-words-zero", "[data]\nmax_words = 0\n", "DataConfig.max_words"),
    ("data-overflow-unknown", "[data]\noverflow = 'wrap'\n", "DataConfig.overflow"),
    ("data-responses-unknown", "[data]\nresponses = 'self'\n", "DataConfig.responses: expected one of dataset, base"),
    ("generation-max-new-tokens-zero", "[generation]\nmax_new_tokens = 0\n", "GenerationConfig.max_new_tokens"),
    ("generation-top-p-zero", "[generation]\ntop_p = 0\n", "GenerationConfig.top_p: expected a number in (0, 1]"),
    ("generation-top-p-above-one", "[generation]\ntop_p = 1.5\n", "GenerationConfig.top_p"),
    ("generation-temperature-zero", "[generation]\ndo_sample = true\ntemperature = 0\n", "temperature: expected"),
    ("generation-cache-paged", "[generation]\ncache = 'paged'\n", "GenerationConfig.cache: expected one of auto"),
    ("generation-batch-string", "[generation]\nbatch_size = 'all'\n", "GenerationConfig.batch_size"),
    ("merge-method-unknown", "[merge]\nmethod = 'nf4'\n", "MergeConfig.method: expected one of dequantized"),
    ("merge-unknown-key", "[merge]\nway = 'original'\n", "MergeConfig: unknown key 'way'"),
    ("eval-max-prompts-zero", "[eval]\nmax_prompts = 0\n", "EvalConfig.max_prompts"),
    ("eval-prompts-empty", "[eval]\nprompts = ''\n", "EvalConfig.prompts: expected a non-empty string"),
    ("eval-with-adapter-string", "[eval]\nwith_adapter = 'yes'\n", "EvalConfig.with_adapter: expected true/false"),
    ("eval-fp32-agreement-negative", "[eval]\nfp32_agreement = -1\n", "EvalConfig.fp32_agreement: expected an integer"),
    ("eval-overlap-string", "[eval]\noverlap = 'auto'\n", "EvalConfig.overlap: expected true/false"),
    ("eval-fp32-agreement-no-adapter", "[eval]\nwith_adapter = false\nfp32_agreement = 4\n",
     "EvalConfig.fp32_agreement: expected 0 without the 4-bit adapter model"),
    ("generation-batch-zero", "[generation]\nbatch_size = 0\n", "GenerationConfig.batch_size"),
    ("generation-min-above-max", "[generation]\nmax_new_tokens = 8\nmin_new_tokens = 9\n", "min_new_tokens"),
    ("table-not-a-table", "train = 3\n", "[train] is not a table"),
    ("unknown-table", "[training]\nmax_steps = 3\n", "unknown table [training]"),
    ("broken-toml", "[train\nmax_steps = ", "not valid TOML"),
    ("deep-toml", "[train]\nx = " + DEEP + "\n", "nested too deeply"),
]
SAMPLE = ("max-steps-zero", "lora-bias-unknown", "data-eval-fraction-one", "generation-top-p-zero", "broken-toml",
          "deep-toml")


def _config(command: str, text: str, *extra: str):
    return lambda ws: [command, "--config", ws.file("cfg.toml", text), *extra]


def _with_out(command: str) -> tuple[str, ...]:
    return ("--out", "report") if command == "eval" else ()


def _config_cases() -> list[faultkit.Case]:
    cases = [case("train", f"config-{name}", _config("train", text), "cfg.toml: ", fragment)
             for name, text, fragment in CONFIGS]
    for command in ("merge", "eval", "run"):
        cases += [case(command, f"config-{name}", _config(command, text, *_with_out(command)), "cfg.toml", fragment)
                  for name, text, fragment in CONFIGS if name in SAMPLE]
    return cases


def _gen(ws: Workspace, *extra: str, model: str | None = None, out: str = "answers.jsonl") -> list[str]:
    return ["generate", "--model", model or ws.model(), "--out", out, *extra]


def _null_line(ws: Workspace, name: str = "p.jsonl") -> str:
    return ws.file(name, "null\n")


CASES = [
    *_config_cases(),
    # config files themselves, and the CLI values that override them
    case("train", "config-missing", lambda ws: ["train", "--config", "absent.toml"], "absent.toml: no such config"),
    case("train", "config-not-utf8", lambda ws: ["train", "--config", ws.file("c.toml", b"[train]\nx = '\xff'\n")],
         "c.toml: not UTF-8 text (line 2"),
    case("train", "config-a-folder", lambda ws: ["train", "--config", ws.folder("conf")], "is a folder"),
    case("train", "config-empty-string", lambda ws: ["train", "--config", ""], "argument --config"),
    case("train", "max-steps-zero", lambda ws: ["train", "--max-steps", "0"], "--max-steps 0: expected an integer"),
    case("train", "max-steps-negative", lambda ws: ["train", "--max-steps", "-3"], "--max-steps -3"),
    case("train", "fp16-without-cuda", _config("train", "[train]\ncompute_dtype = 'fp16'\n"), "needs CUDA"),
    case("train", "paged-optimizer-without-cuda", _config("train", "[train]\noptimizer = 'paged_adamw_32bit'\n"),
         "needs CUDA"),
    # --dataset and --base-model
    case("train", "dataset-empty", lambda ws: ["train", "--dataset", ""], "argument --dataset: expected a value"),
    case("train", "dataset-missing", lambda ws: ["train", "--dataset", "x.jsonl"], "dataset 'x.jsonl': no such file"),
    case("train", "dataset-null-line", lambda ws: ["train", "--dataset", _null_line(ws)], "line 1 is not a JSON"),
    case("train", "dataset-empty-file", lambda ws: ["train", "--dataset", ws.file("d.jsonl", "")], "has no rows"),
    case("train", "dataset-deep", lambda ws: ["train", "--dataset", ws.file("d.jsonl", DEEP)], "nested deeper"),
    case("train", "base-model-empty", lambda ws: ["train", "--base-model", ""], "argument --base-model"),
    case("train", "base-model-missing", lambda ws: ["train", "--base-model", "./nowhere"],
         "--base-model './nowhere': no such folder"),
    case("train", "base-model-gguf-missing", lambda ws: ["train", "--base-model", "SmolLM2.Q4_1.gguf"],
         "--base-model 'SmolLM2.Q4_1.gguf': no such GGUF file"),
    case("train", "base-model-gguf-a-folder", lambda ws: ["train", "--base-model", ws.folder("m.gguf", {"x": "1"})],
         "no such GGUF file"),
    case("train", "base-model-no-config", lambda ws: ["train", "--base-model", ws.folder("b", {"x": "1"})],
         "folder has no config.json"),
    case("train", "base-model-broken-config", lambda ws: ["train", "--base-model", ws.model(config="{")],
         "config.json: not valid JSON"),
    case("train", "base-model-config-a-list", lambda ws: ["train", "--base-model", ws.model(config="[]")],
         "config.json: expected a JSON object, got an array"),
    case("train", "base-model-no-weights", lambda ws: ["train", "--base-model", ws.model(weights=False)],
         "no *.safetensors or pytorch_model*.bin weights"),
    case("train", "base-model-no-tokenizer", lambda ws: ["train", "--base-model", ws.model(tokenizer=False)],
         "no tokenizer"),
    case("train", "base-model-a-file", lambda ws: ["train", "--base-model", ws.file("m.bin", "x")], "is not a folder"),
    case("train", "artifacts-dir-a-file", lambda ws: ["train", "--artifacts-dir", ws.file("cache", "x")],
         "--artifacts-dir", "not a folder"),
    # merge
    case("merge", "out-dot", lambda ws: ["merge", "--out", "."], "--out .: is the working folder"),
    case("merge", "out-dotdot", lambda ws: ["merge", "--out", ".."], "is the working folder"),
    case("merge", "out-not-empty", lambda ws: ["merge", "--out", ws.folder("m", {"a": "1"})], "not empty"),
    case("merge", "out-earlier-merge", lambda ws: ["merge", "--out", ws.marked("m", "merged")], "not empty"),
    case("merge", "out-is-the-adapter", lambda ws: ["merge", "--adapter", ws.adapter(), "--out", "lora"],
         "is --adapter"),
    case("merge", "out-inside-the-adapter", lambda ws: ["merge", "--adapter", ws.adapter(), "--out", "lora/merged"],
         "lies inside --adapter"),
    case("merge", "out-inside-artifacts", lambda ws: ["merge", "--artifacts-dir", ws.folder("art"), "--out", "art/m"],
         "lies inside --artifacts-dir"),
    case("merge", "out-a-file", lambda ws: ["merge", "--out", ws.file("m.txt", "x")], "not a folder"),
    case("merge", "out-empty", lambda ws: ["merge", "--out", ""], "argument --out"),
    case("merge", "adapter-missing", lambda ws: ["merge", "--adapter", "nowhere"], "--adapter nowhere: no such folder"),
    case("merge", "adapter-without-config", lambda ws: ["merge", "--adapter", ws.folder("a", {"x": "1"})],
         "no adapter_config.json"),
    case("merge", "adapter-config-a-list", lambda ws: ["merge", "--adapter", ws.adapter(config="[1]")],
         "adapter_config.json: expected a JSON object, got an array"),
    case("merge", "adapter-config-deep", lambda ws: ["merge", "--adapter", ws.adapter(config=DEEP)],
         "adapter_config.json: nested deeper than 64 levels"),
    case("merge", "adapter-without-weights", lambda ws: ["merge", "--adapter", ws.adapter(weights=False)],
         "no adapter_model.safetensors or adapter_model.bin"),
    case("merge", "base-model-missing", lambda ws: ["merge", "--adapter", ws.adapter(), "--base-model", "./b"],
         "no such folder"),
    case("merge", "max-steps-zero", lambda ws: ["merge", "--max-steps", "0"], "--max-steps 0"),
    # generate
    case("generate", "model-empty", lambda ws: ["generate", "--model", "", "--out", "a.jsonl"], "argument --model"),
    case("generate", "model-missing", lambda ws: _gen(ws, model="./nowhere"), "--model './nowhere': no such folder"),
    case("generate", "model-no-weights", lambda ws: _gen(ws, model=ws.model(weights=False)), "weights"),
    case("generate", "model-no-config", lambda ws: _gen(ws, model=ws.folder("m", {"model.safetensors": "w"})),
         "folder has no config.json"),
    case("generate", "model-config-broken", lambda ws: _gen(ws, model=ws.model(config='{"a": NaN}')),
         "config.json: a is NaN"),
    case("generate", "model-model-type-a-number", lambda ws: _gen(ws, model=ws.model(config='{"model_type": 3}')),
         "model_type must be a string"),
    case("generate", "model-no-tokenizer", lambda ws: _gen(ws, model=ws.model(tokenizer=False)), "no tokenizer"),
    case("generate", "adapter-missing", lambda ws: _gen(ws, "--adapter", "nowhere"), "--adapter nowhere"),
    case("generate", "adapter-config-broken", lambda ws: _gen(ws, "--adapter", ws.adapter(config="{")),
         "adapter_config.json: not valid JSON"),
    case("generate", "prompts-missing", lambda ws: _gen(ws, "--prompts", "p.jsonl"), "eval prompts 'p.jsonl': no such"),
    case("generate", "prompts-null-line", lambda ws: _gen(ws, "--prompts", _null_line(ws)),
         "line 1 is not a JSON object (got null)"),
    case("generate", "prompts-empty-file", lambda ws: _gen(ws, "--prompts", ws.file("p.csv", "")), "has no rows"),
    case("generate", "prompts-empty-string", lambda ws: _gen(ws, "--prompts", ""), "argument --prompts"),
    case("generate", "prompts-no-instruction", lambda ws: _gen(ws, "--prompts", ws.jsonl([{"q": "a"}], "p.jsonl")),
         "no 'instruction' column", loads_data=True),
    case("generate", "out-a-folder", lambda ws: _gen(ws, out=ws.folder("o")), "--out", "is a folder"),
    case("generate", "out-is-the-prompts", lambda ws: _gen(ws, "--prompts", ws.jsonl([dolly()], "p.jsonl"),
                                                          out="p.jsonl"), "is also an input"),
    case("generate", "out-under-a-file", lambda ws: _gen(ws, out=ws.file("f", "x") + "/a.jsonl"), "is a file"),
    case("generate", "max-new-tokens-zero", lambda ws: _gen(ws, "--max-new-tokens", "0"), "--max-new-tokens 0"),
    case("generate", "batch-size-zero", lambda ws: _gen(ws, "--batch-size", "0"), "--batch-size 0"),
    case("generate", "seed-negative", lambda ws: _gen(ws, "--seed", "-2"), "--seed -2"),
    case("generate", "artifacts-dir-a-file", lambda ws: _gen(ws, "--artifacts-dir", ws.file("a", "x")),
         "--artifacts-dir"),
    # eval
    case("eval", "out-not-ours", lambda ws: ["eval", "--out", ws.folder("r", {"report.md": "my own notes"})],
         "was not written by hearts"),
    case("eval", "out-dot", lambda ws: ["eval", "--out", "."], "is the working folder"),
    case("eval", "out-prepare-output", lambda ws: ["eval", "--out", ws.marked("r", "prepare")],
         "holds a hearts prepare output, not a report one"),
    case("eval", "out-holds-dataset", lambda ws: ["eval", "--dataset", ws.jsonl([dolly()], "r/d.jsonl"),
                                                  "--out", "r"], "holds --dataset"),
    case("eval", "out-is-the-prompts", lambda ws: ["eval", "--prompts", ws.jsonl([dolly()], "p.jsonl"),
                                                   "--out", "p.jsonl"], "is --prompts"),
    case("eval", "out-missing", lambda ws: ["eval"], "the following arguments are required: --out"),
    case("eval", "prompts-missing", lambda ws: ["eval", "--out", "r", "--prompts", "p.jsonl"], "no such file"),
    case("eval", "prompts-null-line", lambda ws: ["eval", "--out", "r", "--prompts", _null_line(ws)], "got null"),
    case("eval", "max-steps-zero", lambda ws: ["eval", "--out", "r", "--max-steps", "0"], "--max-steps 0"),
    case("eval", "fp32-agreement-negative", lambda ws: ["eval", "--out", "r", "--fp32-agreement", "-2"],
         "--fp32-agreement -2: expected an integer in [0,"),
    case("eval", "base-model-empty", lambda ws: ["eval", "--out", "r", "--base-model", " "], "argument --base-model"),
    # run
    case("run", "gate-config-missing", lambda ws: ["run", "--gate-config", "g.toml"], "g.toml: no such config file"),
    case("run", "gate-config-broken", lambda ws: ["run", "--gate-config", ws.file("g.toml", "[gate")], "not valid"),
    case("run", "gate-config-not-utf8", lambda ws: ["run", "--gate-config", ws.file("g.toml", b"\xfe")], "not UTF-8"),
    case("run", "gate-config-unknown-key", lambda ws: ["run", "--gate-config", ws.file("g.toml", "[gate]\nx = 1\n")],
         "unknown key 'x'"),
    case("run", "out-not-ours", lambda ws: ["run", "--out", ws.folder("out", {"notes.md": "mine"})],
         "was not written by hearts"),
    case("run", "out-dotdot", lambda ws: ["run", "--out", ".."], "is the working folder"),
    case("run", "out-holds-config", lambda ws: ["run", "--config", ws.file("o/c.toml", ""), "--out", "o"],
         "holds --config"),
    case("run", "dataset-missing", lambda ws: ["run", "--dataset", "d.csv"], "dataset 'd.csv': no such file"),
    case("run", "dataset-header-only", lambda ws: ["run", "--dataset", ws.file("d.csv", "instruction,response\n")],
         "has no rows (only a header)"),
    case("run", "artifacts-dir-empty", lambda ws: ["run", "--artifacts-dir", ""], "argument --artifacts-dir"),
]


@pytest.mark.parametrize("c", CASES, ids=faultkit.ids(CASES))
def test_bad_input_is_exit_2_with_one_line_before_any_model_work(c, ws, capsys, monkeypatch, tiny_tokenizer):
    faultkit.check(c, ws, capsys, monkeypatch, tokenizer=tiny_tokenizer)
