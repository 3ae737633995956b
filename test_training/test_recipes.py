"""The named training recipes the GPU envelope compares: the notebook's and the harness's default."""

from __future__ import annotations

import pytest

from harness.config import ConfigError, recipe_configs


def test_the_original_recipe_is_the_notebooks() -> None:
    train, lora, data = recipe_configs("original", "llama2-7b-shape")
    assert (train.batch_size, train.upcast_frozen, data.add_eos, data.loss_on) == (4, True, False, "all")
    assert (lora.r, lora.alpha, lora.target_modules, train.optimizer) == (64, 16, "all-linear", "auto")


def test_the_default_recipe_differs_only_where_the_issue_allows() -> None:
    original, lora_o, _ = recipe_configs("original", "llama2-7b-shape")
    default, lora_d, data = recipe_configs("default", "llama2-7b-shape")
    assert (default.batch_size, default.upcast_frozen, data.add_eos, data.loss_on) == (8, False, True, "response")
    assert lora_d == lora_o  # same adapter shape: the comparison is about how it is trained
    assert default.learning_rate == original.learning_rate and default.max_grad_norm == original.max_grad_norm


def test_overrides_reach_both_data_and_training() -> None:
    train, _, data = recipe_configs("original", "tiny", {"max_length": 128}, max_steps=3)
    assert (train.max_steps, data.max_length, data.max_words) == (3, 128, 12)  # the tiny preset still applies


def test_an_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"recipe 'fast'.*original, default"):
        recipe_configs("fast", "tiny")
