"""Stage 5: merge — the adapter folded into full-precision base weights, saved as plain safetensors.

The adapter was trained against the *dequantised NF4* weights, not the original ones: ``W_nf4 + BA`` is the
model that learned the behaviour, and ``W + BA`` adds the quantisation error ``W - W_nf4`` back (on SmolLM2-135M
at r=64 the two differ by ~20% relative L2 in logits and 31 of 66 verdicts). So the default, ``dequantized``,
loads the base with the training ``BitsAndBytesConfig``, dequantises every 4-bit layer to the compute dtype
(transformers' ``dequantize()``: bitsandbytes' own ``dequantize_4bit``, the same call the 4-bit forward makes),
and merges there (jondurbin/qlora's ``qmerge.py`` recipe). ``original`` merges into the unquantised base, as
the notebook did. Merging into the 4-bit layers (peft's own path) would re-quantise the sum. The result is saved
as safetensors (sharded when large) with the tokenizer, loadable with stock ``from_pretrained``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness import inputs
from harness import model as models
from harness.config import MergeConfig, TrainConfig
from harness.errors import InputError

if TYPE_CHECKING:
    from transformers import BatchEncoding

MERGE_INFO = "merge_info.json"  # {"method": ..., "dtype": ...}: what the model card says was uploaded
MAX_SHARD = "2GB"


def check_adapter_dir(adapter: Path, flag: str = "adapter") -> Path:
    """An adapter folder merge can apply (safetensors or .bin weights): ``inputs.check_adapter_dir``."""
    return inputs.check_adapter_dir(adapter, flag, safetensors_only=False)


def apply_adapter(base_model, adapter: Path, *, is_trainable: bool = False):
    """Stock ``PeftModel.from_pretrained`` with a clear error when the adapter was made for another base."""
    from peft import PeftModel

    check_adapter_dir(adapter)
    try:
        with models.quiet_peft_checkpointing_probe():
            return PeftModel.from_pretrained(base_model, str(adapter), is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        shape = "size mismatch" in str(err) or "shape" in str(err)
        why = "was made for another base model (shape mismatch)" if shape else f"cannot be applied ({err})"
        raise InputError(f"adapter {adapter}: {why.splitlines()[0]}") from None


METHODS = ("dequantized", "original")
DEFAULT_METHOD = MergeConfig().method  # one default: the config's


def merge_base(base: Path | str, cfg: TrainConfig, dtype: torch.dtype, method: str):
    """The full-precision weights the adapter is merged into (see the module docstring)."""
    if method not in METHODS:
        raise InputError(f"merge method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "original":
        return models.load_base(base, dtype, cfg.revision, models.run_device(cfg))
    models.quiet_libraries()
    model = models.load_quantized(base, cfg, dtype)
    model.dequantize(dtype=dtype)  # every Linear4bit -> nn.Linear(dequantize_4bit(W)); quantization_config goes
    model.is_loaded_in_4bit = False  # the one flag dequantize() leaves behind
    return model


def load_merged_in_memory(base: Path | str, adapter: Path, cfg: TrainConfig, dtype: torch.dtype,
                          method: str = DEFAULT_METHOD):
    """Base + adapter, merged by ``method``: the model a release would contain."""
    return apply_adapter(merge_base(base, cfg, dtype, method), adapter).merge_and_unload()


def load_merged(merged_dir: Path, dtype: torch.dtype, device: torch.device | None = None):
    """A merged model folder with stock ``AutoModelForCausalLM.from_pretrained``, on ``device`` (default: the
    GPU if any)."""
    from transformers import AutoModelForCausalLM

    # Loaded straight onto the device: N ranks must not each hold a whole copy in host memory first.
    return AutoModelForCausalLM.from_pretrained(merged_dir, dtype=dtype,
                                                device_map={"": device or models.resolve_device()})


def load_adapter_model(base: Path | str, adapter: Path, cfg, dtype: torch.dtype):
    """The 4-bit base with the adapter applied, unmerged: the model as it was trained, computing as it did.

    peft loads the adapter's weights in fp32 and, outside autocast, computes every LoRA product in fp32 with a cast
    on either side; training computed it under the Trainer's autocast, in the compute dtype. So the weights are
    cast to ``dtype`` once (``lora_in``): training's arithmetic without autocast, two kernels fewer per layer for a
    decode bound by its kernel launches, and no fp32 GEMMs.

    It decodes eagerly (transformers compiles no bitsandbytes model). Dequantising its base once under the
    adapter decodes 2.3x faster but is not this model in bf16: on SmolLM2 (H200) its greedy answers matched on
    140 of 316 prompts: the same numbers in exact arithmetic, but its bf16 GEMMs round unlike bitsandbytes'
    (bit for bit alike on the tiny stand-in's sizes, not on SmolLM2's; ``scripts/gpu-measure.sh
    decode-equivalence``).
    """
    return lora_in(apply_adapter(models.load_quantized(base, cfg, dtype), adapter), dtype)


def lora_in(model, dtype: torch.dtype):
    """``model`` with every LoRA weight (peft's ``adapter_layer_names``: A, B and their embedding forms) in
    ``dtype``; the base's weights as they are."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.adapter_layer_names:
                getattr(module, name).to(dtype)
    return model


def merge(base: Path | str, adapter: Path, out_dir: Path, cfg: TrainConfig, dtype: torch.dtype,
          method: str = DEFAULT_METHOD) -> Path:
    """Write the merged model (safetensors), its method and the adapter's tokenizer into ``out_dir``."""
    models.quiet_libraries()
    merged = load_merged_in_memory(base, adapter, cfg, dtype, method)
    merged.config.use_cache = True  # training turned it off; a released model decodes with a KV cache
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=MAX_SHARD)
    models.load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base).save_pretrained(out_dir)
    (out_dir / MERGE_INFO).write_text(json.dumps({"method": method, "dtype": models.dtype_name(dtype)}) + "\n")
    return out_dir


def merge_method(merged_dir: Path) -> str | None:
    """How a merged folder was made (``merge_info.json``), None for a folder the harness did not write."""
    try:
        return json.loads((Path(merged_dir) / MERGE_INFO).read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        return None


def merged_for(artifacts: Path, adapter: Path, base: Path | str, cfg: TrainConfig, dtype: torch.dtype,
               method: str = DEFAULT_METHOD) -> Path:
    """The merged model for a (cached) adapter, itself cached under the adapter's manifest, dtype and method."""
    from harness import cache

    if method not in METHODS:
        raise InputError(f"merge method {method!r}: expected one of {', '.join(METHODS)}")
    material = {
        "adapter": cache.file_sha256(adapter / cache.MANIFEST) if (adapter / cache.MANIFEST).is_file()
        else cache.dir_fingerprint(adapter),
        "dtype": models.dtype_name(dtype),
        "method": method,
    }
    path, _ = cache.cached(artifacts, "merged", material,
                           lambda tmp: merge(base, adapter, tmp, cfg, dtype, method))
    return path


def teacher_forced(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> BatchEncoding:
    """Each prompt followed by its answer (the trained model's own), right-padded, for a logit comparison; as
    many as there are prompts."""
    tokenizer.padding_side = "right"
    return tokenizer([p + r for p, r in zip(prompts, responses, strict=False)], return_tensors="pt", padding=True)


@torch.inference_mode()
def logits_on(model, batch: BatchEncoding) -> torch.Tensor:
    """The model's logits at the attended positions of ``batch`` (float32, on the CPU, one row a position)."""
    mask = batch["attention_mask"].bool()
    with models.measuring_kernels(model.device):
        logits = model(**batch.to(model.device)).logits
    return logits.float().cpu()[mask.cpu()]


def compare_logits(reference: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """Relative L2 distance (``|got - ref| / |ref|``) and the share of positions with the same top-1 token."""
    return {"rel_l2": float(torch.linalg.vector_norm(got - reference) / torch.linalg.vector_norm(reference)),
            "top1_agreement": float((got.argmax(-1) == reference.argmax(-1)).float().mean()),
            "positions": int(reference.shape[0])}


def logit_fidelity(reference, candidate, batch: BatchEncoding) -> dict[str, float]:
    """How close ``candidate``'s logits are to ``reference``'s on ``batch`` (``compare_logits``)."""
    return compare_logits(logits_on(reference, batch), logits_on(candidate, batch))
