"""Bad input to the training stages: each a clear one-line error naming the input."""

from __future__ import annotations

import json
import re

import pytest
import torch

from harness import merge, model, train
from harness.config import ConfigError, train_config
from harness.errors import InputError

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")


def test_an_adapter_made_for_another_base_model_is_refused(trained_adapter, tmp_path):
    from harness.standin import StandinConfig, build_tiny

    other = tmp_path / "other-base"
    build_tiny(other, ["a small other base model"] * 4, StandinConfig(hidden_size=64, intermediate_size=128,
                                                                       pretrain_steps=1, vocab_size=300))
    with pytest.raises(InputError, match="another base model"):
        merge.apply_adapter(model.load_base(other, torch.float32), trained_adapter.path)


@pytest.mark.parametrize("case", ["missing", "no_config", "bad_json", "no_weights"])
def test_a_broken_adapter_folder_is_refused(tmp_path, case):
    folder = tmp_path / "adapter"
    if case != "missing":
        folder.mkdir()
    if case in ("bad_json", "no_weights"):
        (folder / "adapter_config.json").write_text("{oops" if case == "bad_json" else json.dumps({"r": 8}))
    with pytest.raises(InputError, match=re.escape(str(folder))):
        merge.check_adapter_dir(folder)


def test_a_missing_base_model_path_is_refused(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        model.resolve_base(str(tmp_path / "nowhere" / "model"), tmp_path)


def test_a_folder_without_config_is_not_a_base_model(tmp_path):
    with pytest.raises(InputError, match=r"config\.json"):
        model.resolve_base(str(tmp_path), tmp_path)


@needs_no_cuda
def test_a_paged_optimizer_without_cuda_is_refused():
    with pytest.raises(InputError, match="needs CUDA"):
        train.optimizer_name(train_config("tiny", optimizer="paged_adamw_32bit"))


@needs_no_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_a_gpu_dtype_without_cuda_is_refused(dtype):
    with pytest.raises(InputError, match="needs CUDA"):
        model.compute_dtype(dtype)


def test_an_unknown_dtype_is_refused():
    with pytest.raises(InputError, match="expected one of"):
        model.compute_dtype("fp8")


@pytest.mark.parametrize("overrides", [{"learning_rate": "fast"}, {"max_steps": 2.5}, {"nonsense": 1},
                                       {"gradient_checkpointing": "yes"}])
def test_bad_training_settings_are_refused(overrides):
    with pytest.raises(ConfigError):
        train_config("tiny", **overrides)


def test_an_unknown_lora_bias_is_refused_when_the_settings_are_built():
    from harness.config import LoraSettings

    expected = r"^LoraSettings\.bias: expected one of none, all, lora_only, got 'sometimes'$"
    with pytest.raises(ConfigError, match=expected):
        LoraSettings(bias="sometimes")
