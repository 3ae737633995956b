"""Stage 4a: base models — resolve a name to weights, load them in NF4 (QLoRA) or in the compute dtype, wrap LoRA.

A base model is named by a Hub id, a local path, or one of the stand-ins built here (``tiny``); the same
``from_pretrained`` code path serves all of them. ``trust_remote_code`` is never turned on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from harness import cache, distributed, inputs
from harness.config import PACKAGED_BASES, STANDINS, LoraSettings, TrainConfig
from harness.errors import InputError, first_line

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(setting: str = "auto") -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cpu`` and ``cuda`` as asked (CPU runs on a GPU
    runner too, so one machine can judge both). Under a launcher each rank has its own GPU, ``LOCAL_RANK``'s."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting not in ("cpu", "cuda"):
        raise InputError(f"device {setting!r}: expected one of auto, cpu, cuda")
    if setting == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda': no GPU is visible to torch")
    w = distributed.world()
    if setting == "cuda" and w.distributed:
        # As accelerate does: modulo, for launchers that show each rank only its own GPU. Made current at once,
        # so that nothing (bf16 probing, caching allocators) opens a context on GPU 0 for every rank.
        device = torch.device("cuda", w.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device(setting)


def run_device(cfg: TrainConfig) -> torch.device:
    """The device a run's models live on (``TrainConfig.device``)."""
    return resolve_device(cfg.device)


def run_dtype(cfg: TrainConfig) -> torch.dtype:
    """The compute dtype of a run on its device (``TrainConfig.compute_dtype``)."""
    return compute_dtype(cfg.compute_dtype, run_device(cfg))


def compute_dtype(setting: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 where the GPU supports it, fp16 on a T4 (or when forced), fp32 on CPU."""
    on_cuda = (device or resolve_device()).type == "cuda"
    if setting != "auto":
        if setting not in DTYPES:
            raise InputError(f"compute_dtype {setting!r}: expected one of auto, {', '.join(DTYPES)}")
        if setting != "fp32" and not on_cuda:
            raise InputError(f"compute_dtype {setting!r} needs CUDA; on CPU only fp32 is supported")
        if setting == "bf16" and not torch.cuda.is_bf16_supported():
            raise InputError("compute_dtype 'bf16': this GPU has no bf16 (a T4 does not); use fp16")
        return DTYPES[setting]
    if not on_cuda:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def attention_kernels(device: torch.device, cudnn: bool) -> contextlib.AbstractContextManager:
    """Where SDPA may run on ``device``: every backend but cuDNN's on CUDA unless ``cudnn``; torch's own choice
    elsewhere. cuDNN's attention (torch's first choice on Hopper) builds an execution graph on the host for each
    new input shape: every length-varying training batch and, with a dynamic KV cache, every decode step."""
    if cudnn or device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def measuring_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """The attention kernels of the evaluation's teacher-forced passes (logit fidelity, retention NLL): never
    cuDNN's on CUDA, whatever generation uses, since each of their batches is a new shape to build a graph for
    (SmolLM2-135M on the H200: the retention's 80 batches took 15 s with it, the fidelity's one 2 s)."""
    return attention_kernels(device, cudnn=False)


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def resolve_base(name: str, artifacts: Path) -> Path | str:
    """A named base → its cached folder (built or converted on first use); a ``.gguf`` file → its converted
    folder; a folder → checked path; else a Hub id."""
    if name in STANDINS:
        from harness.standin import shape_7b_base, tiny_base

        return tiny_base(artifacts) if name == "tiny" else shape_7b_base(artifacts)
    if name in PACKAGED_BASES:
        from harness.gguf import gguf_base, packaged_gguf

        return gguf_base(packaged_gguf(name), artifacts)
    if Path(name).suffix.lower() == ".gguf":
        from harness.gguf import gguf_base

        return gguf_base(Path(name).expanduser(), artifacts)
    # else a Hub id, which from_pretrained resolves (offline runs use the local HF cache)
    return inputs.check_base_model(name, "base model") or name


def base_fingerprint(name: str, resolved: Path | str, revision: str | None) -> dict[str, Any]:
    """What identifies the base weights in a cache key: content hash for a folder, id + revision otherwise."""
    if isinstance(resolved, Path):
        return {"base": name, "content": cache.content_digest(resolved)}
    return {"base": name, "revision": revision or "main"}


def load_tokenizer(resolved: Path | str, revision: str | None = None, label: str | None = None
                   ) -> PreTrainedTokenizerBase:
    """The base's tokenizer with a pad token that is not EOS (else EOS is masked and the model never stops).

    A folder is checked for tokenizer files first; whatever transformers cannot make of it is one line
    naming ``label`` (default: the folder or id).
    """
    label = label or f"tokenizer {str(resolved)!r}"
    if isinstance(resolved, Path) or Path(str(resolved)).exists():
        inputs.check_tokenizer_dir(Path(resolved), label)
    try:
        tok = AutoTokenizer.from_pretrained(str(resolved), revision=revision, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise InputError(f"{label}: cannot load ({first_line(err)[:200]})") from None
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        if tok.unk_token_id is None or tok.unk_token_id == tok.eos_token_id:
            raise InputError(f"{label}: no pad token distinct from EOS (and no unk to use)")
        tok.pad_token = tok.unk_token  # Llama-2's customary choice: no new embedding row needed
    return tok


def bnb_config(cfg: TrainConfig, dtype: torch.dtype) -> BitsAndBytesConfig:
    if cfg.quant_type not in ("nf4", "fp4"):
        raise InputError(f"quant_type {cfg.quant_type!r}: expected nf4 or fp4")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def load_base(resolved: Path | str, dtype: torch.dtype, revision: str | None = None,
              device: torch.device | None = None):
    """The base model unquantised in ``dtype`` on ``device`` (default: the GPU if any) — merge, control."""
    return _from_pretrained(resolved, dtype=dtype, revision=revision, device_map={"": device or resolve_device()})


def load_quantized(resolved: Path | str, cfg: TrainConfig, dtype: torch.dtype):
    """The base in 4-bit with the training config's quantisation settings, on its device."""
    return _from_pretrained(resolved, dtype=dtype, revision=cfg.revision,
                            quantization_config=bnb_config(cfg, dtype), device_map={"": run_device(cfg)})


def _from_pretrained(resolved: Path | str, **kwargs: Any):
    """Stock ``from_pretrained`` with remote code off; a model that cannot be read is bad input, one line."""
    from safetensors import SafetensorError

    try:
        return AutoModelForCausalLM.from_pretrained(str(resolved), trust_remote_code=False, **kwargs)
    except torch.OutOfMemoryError:
        raise  # the machine, not the input
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:  # unknown model_type, bad weights
        raise InputError(f"base model {resolved}: cannot load ({first_line(err)[:200]})") from None


LORA_BIAS = ("none", "all", "lora_only")


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    target = settings.target_modules
    if settings.bias not in LORA_BIAS:
        raise InputError(f"lora bias {settings.bias!r}: expected one of {', '.join(LORA_BIAS)}")
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        bias=settings.bias,  # type: ignore[arg-type]  # checked against LORA_BIAS above
        task_type="CAUSAL_LM",
    )


def wrap_qlora(model, settings: LoraSettings, gradient_checkpointing: bool, upcast_frozen: bool = False):
    """Frozen base + non-reentrant checkpointing + LoRA adapters (trainable, fp32).

    ``upcast_frozen`` is peft's ``prepare_model_for_kbit_training``, which lifts every frozen non-4-bit weight
    (embeddings, lm_head, norms) to fp32. Without it they stay in the compute dtype, which
    autocast would cast them to for every matmul anyway, and RMSNorm computes in fp32 internally.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if upcast_frozen:
        # peft would enable checkpointing through transformers' deprecated name: do it here instead.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.requires_grad_(False)
    if gradient_checkpointing:
        enable_checkpointing(model)
    model.config.use_cache = False  # the cache is useless in training and fights checkpointing
    with quiet_peft_checkpointing_probe():
        return get_peft_model(model, lora_config(settings))


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing under the installed transformers' name for it.

    transformers 5.2x renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old
    name warns and goes in v6); 5.17, on the GPU image, has only the old one. Asked of the class, not the
    instance, so probing never touches a deprecated property.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(type(model), "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def checkpointing_on(model) -> bool:
    """Whether any submodule checkpoints its activations (the flag both transformers versions set per layer)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def unwrapped(model):
    """The transformers model inside a peft wrapper, or ``model`` itself when it is not wrapped."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list[torch.nn.Module]:
    """``model``'s repeated blocks: the layers transformers can checkpoint (``GradientCheckpointingLayer``)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model) -> None:
    """Compile each decoder layer of ``model`` (a peft model or a plain one) in place: torch.compile's regional
    recipe for repeated blocks, forward and backward, sequence lengths dynamic from the first batch.

    The layers are one class with one code path, and dynamo treats their parameters (the 4-bit weights and the
    LoRA factors) as inputs, so one graph serves every layer. A checkpointed layer keeps its checkpoint eager and
    compiles what the checkpoint runs (``compiled_checkpoint``): traced into the layer's graph, the checkpoint
    stopped inductor's partitioner on the 7B shape (H100, torch 2.11: "Node add_590 was invalid, but is
    output"). The first layer's input is made to require grad like the others' (the frozen embeddings' output
    would not), or the first layer would take a graph of its own.
    """
    inner = unwrapped(model)
    layers = decoder_layers(inner)
    if not layers:
        raise InputError(f"train.compile_layers: {type(inner).__name__} has no decoder layers transformers marks as "
                         "repeated blocks (GradientCheckpointingLayer): set compile_layers = false")
    inner.enable_input_require_grads()
    run = torch.compile(_call, dynamic=True)  # one compiled trampoline: the layers share its graph
    for layer in layers:
        if layer.gradient_checkpointing:
            compiled_checkpoint(layer, run)
        else:
            layer.compile(dynamic=True)


def _call(function, *args):
    """What a checkpoint runs, called: compiled once (``compile_layers``), so every layer's forward is traced as
    this one function's graph, the layer and its keyword arguments among the graph's inputs."""
    return function(*args)


def compiled_checkpoint(layer, run) -> None:
    """Make checkpointed ``layer`` checkpoint ``run(f, *args)`` where it checkpointed ``f(*args)``: transformers
    hands its checkpoint function the layer's forward (a partial over the layer and its keyword arguments; over
    its ``__call__`` in 5.17, tested on CPU too), so the whole forward is compiled, recomputation included, and
    the checkpoint around it stays eager. Once per model, in training only (a layer in eval or under no_grad
    skips its checkpoint and runs eager); enabling checkpointing again afterwards resets the function and undoes
    it, so ``train.make_trainer`` enables it first and never asks the Trainer to.

    Why not its blocks (attention, MLP, norms) one by one, as before: on the 7B shape at the recipe's batch 8 the
    host sets the pace (H100: kernels 0.29 s of a 0.46 s step). One region a layer stepped 1.40x as fast as the
    blocks with the same GPU work, so what it saves is host time: likely each compiled call's (dynamo's guard
    check, autograd's wrapper), 64 calls a step against 256 (``docs/perf/h100-7b-b8-*``)."""
    layer._gradient_checkpointing_func = functools.partial(layer._gradient_checkpointing_func, run)


@contextlib.contextmanager
def quiet_peft_checkpointing_probe() -> Iterator[None]:
    """peft 0.21 reads ``is_gradient_checkpointing`` when wrapping a model, which warns on transformers 5.2x;
    the harness enables checkpointing itself, so that one deprecation is not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def quiet_libraries() -> None:
    """Silence the chatter that would drown a one-line error (bitsandbytes' optional-kernel notice)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # dequantize() announces the dtype it casts to, which the merge chose on purpose.
    logging.getLogger("transformers.integrations.bitsandbytes").setLevel(logging.ERROR)
