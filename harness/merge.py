"""Stage 5: merge — reload the base *unquantised* in the compute dtype, apply the adapter, ``merge_and_unload``.

Merging into the 4-bit weights would bake quantisation error into the release; the base is reloaded in fp16
(a T4's dtype) or whatever the compute dtype is, and the result is saved as safetensors (sharded when large)
with the tokenizer, loadable with stock ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness import inputs
from harness import model as models
from harness.errors import InputError

MAX_SHARD = "2GB"


def check_adapter_dir(adapter: Path, flag: str = "adapter") -> Path:
    """An adapter folder merge can apply (safetensors or .bin weights): ``inputs.check_adapter_dir``."""
    return inputs.check_adapter_dir(adapter, flag, safetensors_only=False)


def apply_adapter(base_model, adapter: Path, *, is_trainable: bool = False):
    """Stock ``PeftModel.from_pretrained`` with a clear error when the adapter was made for another base."""
    from peft import PeftModel

    check_adapter_dir(adapter)
    try:
        return PeftModel.from_pretrained(base_model, str(adapter), is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        shape = "size mismatch" in str(err) or "shape" in str(err)
        why = "was made for another base model (shape mismatch)" if shape else f"cannot be applied ({err})"
        raise InputError(f"adapter {adapter}: {why.splitlines()[0]}") from None


def load_merged_in_memory(base: Path | str, adapter: Path, dtype: torch.dtype, revision: str | None = None):
    """Unquantised base + adapter, merged: the model a release would contain."""
    model = apply_adapter(models.load_base(base, dtype, revision), adapter)
    return model.merge_and_unload()


def load_merged(merged_dir: Path, dtype: torch.dtype):
    """A merged model folder with stock ``AutoModelForCausalLM.from_pretrained``, on the available device."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=dtype)
    return model.to(models.device())  # type: ignore[arg-type]  # transformers' stub types .to() for dtypes only


def load_adapter_model(base: Path | str, adapter: Path, cfg, dtype: torch.dtype):
    """The 4-bit base with the adapter applied, unmerged: the model as it was trained."""
    return apply_adapter(models.load_quantized(base, cfg, dtype), adapter)


def merge(base: Path | str, adapter: Path, out_dir: Path, dtype: torch.dtype, revision: str | None = None) -> Path:
    """Write the merged model (safetensors) and the adapter's tokenizer into ``out_dir``."""
    models.quiet_libraries()
    merged = load_merged_in_memory(base, adapter, dtype, revision)
    merged.config.use_cache = True  # training turned it off; a released model decodes with a KV cache
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=MAX_SHARD)
    models.load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base).save_pretrained(out_dir)
    return out_dir


def merged_for(artifacts: Path, adapter: Path, base: Path | str, dtype: torch.dtype,
               revision: str | None = None) -> Path:
    """The merged model for a (cached) adapter, itself cached under the adapter's manifest and the dtype."""
    from harness import cache

    material = {
        "adapter": cache.file_sha256(adapter / cache.MANIFEST) if (adapter / cache.MANIFEST).is_file()
        else cache.dir_fingerprint(adapter),
        "dtype": models.dtype_name(dtype),
    }
    path, _ = cache.cached(artifacts, "merged", material, lambda tmp: merge(base, adapter, tmp, dtype, revision))
    return path
