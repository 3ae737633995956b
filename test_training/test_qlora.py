"""QLoRA mechanics on the tiny stand-in: 4-bit layers, what trains, what stays frozen, determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from harness import model as models
from harness import train


@pytest.fixture
def mini_trainer(tiny_base_dir, mini_configs, mini_prepared, tmp_path):
    cfg, lora, _ = mini_configs
    tokenizer, prepared = mini_prepared
    return train.make_trainer(tmp_path, tiny_base_dir, tokenizer, prepared.train, cfg, lora)


def test_quantised_layers_are_really_4bit_on_this_device(mini_trainer):
    import bitsandbytes as bnb

    trainer, _, _ = mini_trainer
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # 4 decoder layers x (q, k, v, o, gate, up, down); lm_head stays full precision as in QLoRA.
    assert len(layers) == 4 * 7
    for layer in layers:
        assert layer.weight.dtype == torch.uint8
        assert layer.weight.quant_state.quant_type == "nf4"


def test_only_lora_parameters_train_and_every_one_changes(mini_trainer):
    trainer, guard, _ = mini_trainer
    params = dict(trainer.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in params.items() if p.dtype.is_floating_point}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    for name, old in before.items():
        changed = not torch.equal(old, after[name].detach())
        assert changed == (name in trainable), name
    assert guard.checked_steps == 3


def test_training_steps_run_in_train_mode_with_checkpointing_on(mini_trainer):
    trainer, guard, _ = mini_trainer
    trainer.train()
    assert guard.checked_steps == trainer.state.global_step == 3
    from harness.model import checkpointing_on

    assert checkpointing_on(trainer.model)


def test_a_step_in_eval_mode_is_refused():
    guard = train.TrainingModeGuard(expect_checkpointing=True)
    model = torch.nn.Linear(2, 2).eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        guard.on_step_begin(None, None, None, model=model)


def test_same_config_twice_gives_identical_adapter_weights(tiny_base_dir, mini_configs, mini_prepared, tmp_path):
    cfg, lora, _ = mini_configs
    tokenizer, prepared = mini_prepared
    runs = []
    for name in ("one", "two"):
        out = tmp_path / name
        train.train_adapter(out, tiny_base_dir, tokenizer, prepared.train, cfg, lora, {"run": name})
        runs.append(load_file(out / "adapter_model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=0, atol=0, msg=key)


def test_the_trained_adapter_has_metrics_and_a_finite_falling_loss(trained_adapter):
    metrics = json.loads((trained_adapter.path / train.METRICS).read_text())
    losses = [row["loss"] for row in metrics["loss"]]
    assert losses and all(math.isfinite(x) for x in losses)
    window = max(len(losses) // 5, 1)
    first, last = sum(losses[:5]) / len(losses[:5]), sum(losses[-window:]) / window
    # Falling, not a target: the stand-in has read hearts between words, so the adapter learns where they go in
    # ~10 steps and the rest is content. Its first 5 steps average 2.59, the last fifth 1.91 (0.74x, CPU); a
    # stuck run stays near 1.0.
    assert last < 0.85 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    assert metrics["checked_train_mode_steps"] == metrics["steps"]
    for key in ("tokens_per_s", "samples_per_s", "wall_s"):
        assert metrics[key] > 0
    assert (trained_adapter.path / train.RUN_CONFIG).is_file()


def test_the_saved_adapter_loads_with_stock_peft(trained_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(trained_adapter.base)
    model = PeftModel.from_pretrained(base, trained_adapter.path)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init


def _loss_and_grads(model, loss):
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_the_lm_head_runs_on_response_positions_only_and_the_loss_is_transformers(tiny_base_dir, mini_configs,
                                                                                   mini_prepared, tmp_path):
    import dataclasses

    from harness import loss

    cfg, lora, _ = mini_configs
    tokenizer, prepared = mini_prepared
    # fp32 on every device: the comparison is of two ways to the same loss, not of bf16's rounding of them
    trainer, _, _ = train.make_trainer(tmp_path, tiny_base_dir, tokenizer, prepared.train,
                                       dataclasses.replace(cfg, compute_dtype="fp32"), lora)
    if not train.masks_logits(trainer.model):
        pytest.skip("this transformers' causal LMs take no boolean logits_to_keep (transformers 5.22 on do)")
    assert isinstance(trainer, train.ChunkedHeadTrainer)
    assert isinstance(trainer.compute_loss_func, train.ChunkedResponseLoss)
    model = trainer.model.eval()  # no dropout: both forwards see the same network
    batch = {k: v.to(model.device) for k, v in next(iter(trainer.get_train_dataloader())).items()}
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    n = int((labels[:, 1:] != train.IGNORED).sum())
    assert 0 < n < labels.numel() and torch.equal(batch["logits_to_keep"], train.response_positions(labels))

    with loss.head_deferred(trainer.head):  # what the loss is given: one hidden row per predicted response token
        kept = model(input_ids=ids, attention_mask=mask, logits_to_keep=batch["logits_to_keep"]).logits
    assert kept.shape == (n, model.config.hidden_size)
    assert model(input_ids=ids[:1], attention_mask=mask[:1]).logits.shape[-1] == model.config.vocab_size  # put back
    ours, our_grads = _loss_and_grads(model, trainer.compute_loss(model, dict(batch), num_items_in_batch=n))
    theirs, their_grads = _loss_and_grads(model, model(input_ids=ids, attention_mask=mask, labels=labels,
                                                       num_items_in_batch=n).loss)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in their_grads.values())

    # Negative control: the head at the label positions themselves (one too late) is another loss.
    late = dict(batch, logits_to_keep=labels != train.IGNORED)
    assert not torch.allclose(trainer.compute_loss(model, late, num_items_in_batch=n), theirs, rtol=1e-3)


def test_response_logits_off_leaves_transformers_loss_and_collator(tiny_base_dir, mini_configs, mini_prepared,
                                                                   tmp_path):
    import dataclasses

    cfg, lora, _ = mini_configs
    tokenizer, prepared = mini_prepared
    trainer, _, _ = train.make_trainer(tmp_path, tiny_base_dir, tokenizer, prepared.train,
                                       dataclasses.replace(cfg, response_logits=False), lora)
    assert trainer.compute_loss_func is None
    assert "logits_to_keep" not in next(iter(trainer.get_train_dataloader()))


def _steps(trainer, cfg, batches) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of optimizer steps over ``batches`` and the LoRA weights after them."""
    step, model = train.stepper(trainer, cfg)
    losses = [step(batch) for batch in batches]
    return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ~20 s on 2 CPU cores either way; checkpointed (the recipe's default) runs in CI, not (SmolLM2's preset) with
# -m slow, to keep CI within its 15 minutes.
@pytest.mark.parametrize("checkpointing", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_compiled_layers_train_what_eager_layers_train_in_one_graph(checkpointing, tiny_base_dir, mini_configs,
                                                                     mini_prepared, tmp_path):
    import dataclasses

    from torch._dynamo.utils import counters

    cfg, lora, _ = mini_configs
    # fp32: the comparison is of two ways to one step, not of bf16's rounding
    cfg = dataclasses.replace(cfg, compute_dtype="fp32", gradient_checkpointing=checkpointing)
    lora = dataclasses.replace(lora, dropout=0.0)  # inductor draws its own dropout masks
    tokenizer, prepared = mini_prepared
    eager = train.make_trainer(tmp_path / "eager", tiny_base_dir, tokenizer, prepared.train, cfg, lora)[0]
    batches = list(eager.get_train_dataloader())
    assert len({b["input_ids"].shape[1] for b in batches}) == 3  # three lengths: dynamic, not recompiled
    start = {n: p.detach().clone() for n, p in eager.model.named_parameters() if p.requires_grad}
    eager_losses, eager_weights = _steps(eager, cfg, batches)

    graphs_before = counters["stats"]["unique_graphs"]
    compiled = train.make_trainer(tmp_path / "compiled", tiny_base_dir, tokenizer, prepared.train,
                                  dataclasses.replace(cfg, compile_layers=True), lora)[0]
    compiled_losses, compiled_weights = _steps(compiled, cfg, batches)

    # One graph for the 4 layers and the 3 lengths (the first layer's input requires grad like the others'),
    # checkpointed or not: a checkpointed layer's whole forward is compiled inside its eager checkpoint, not its
    # blocks one by one (attention, MLP and the norms would take a graph each).
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    assert models.checkpointing_on(compiled.model) == checkpointing
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-6)
    # Each LoRA weight's 3 updates agree to 1e-3 of their size (measured: at most 3.5e-4). Not elementwise: AdamW
    # turns a near-zero gradient's rounding into a whole step of either sign. A missed or doubled step is ~1.
    for name, weight in eager_weights.items():
        moved = (weight - start[name]).norm()
        assert moved > 0, name
        assert (compiled_weights[name] - weight).norm() <= 1e-3 * moved, name


@pytest.mark.parametrize("checkpointing", [True, False])
def test_a_layer_inductor_cannot_compile_is_a_one_line_error_naming_the_setting(checkpointing, monkeypatch,
                                                                                 tiny_base_dir, mini_configs,
                                                                                 mini_prepared, tmp_path):
    import dataclasses

    from torch._dynamo.exc import BackendCompilerFailed
    from transformers import Trainer

    from harness.errors import InputError

    cfg, lora, _ = mini_configs
    tokenizer, prepared = mini_prepared

    def inductor_fails(self, *args, **kwargs):  # what the 7B shape's checkpointed layer raised on an H100
        raise BackendCompilerFailed(lambda *a: None, AssertionError("Node add_590 was invalid, but is output"), None)

    monkeypatch.setattr(Trainer, "train", inductor_fails)
    compiled = dataclasses.replace(cfg, compile_layers=True, gradient_checkpointing=checkpointing)
    named = " with gradient_checkpointing" if checkpointing else ""
    with pytest.raises(InputError, match=rf"^\[train\] compile_layers: torch.compile could not compile the decoder "
                                         rf"layer{named} \(AssertionError: Node add_590 was invalid, but is output\); "
                                         r"set compile_layers = false$"):
        train.train_adapter(tmp_path / "compiled", tiny_base_dir, tokenizer, prepared.train, compiled, lora, {})
    assert not (tmp_path / "compiled" / train.METRICS).exists()
    # Negative control: a compile failure while compile_layers is off is torch's own error, not this setting's.
    with pytest.raises(BackendCompilerFailed):
        train.train_adapter(tmp_path / "eager", tiny_base_dir, tokenizer, prepared.train,
                            dataclasses.replace(compiled, compile_layers=False), lora, {})


def test_compile_layers_refuses_a_model_without_decoder_layers():
    from harness.errors import InputError
    from harness.model import compile_layers

    with pytest.raises(InputError, match=r"compile_layers.*Linear.*GradientCheckpointingLayer"):
        compile_layers(torch.nn.Linear(2, 2))
