"""One template for training and inference (harness.prompts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.prompts import RESPONSE_HEADER, build_prompt

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")


def test_the_prompt_without_context_is_the_seed_template() -> None:
    assert build_prompt("what is an egg?") == (
        f"{PREAMBLE}\n\n### Instruction:\nwhat is an egg?\n\n### Response:\n"
    )


def test_the_prompt_with_context_has_an_input_section() -> None:
    assert build_prompt("Summarise.", "Eggs are laid by birds.", "Birds lay eggs.") == (
        f"{PREAMBLE}\n\n### Instruction:\nSummarise.\n\n### Input:\nEggs are laid by birds.\n\n"
        "### Response:\nBirds lay eggs."
    )


@pytest.mark.parametrize("context", [None, "", " ", "\n\t "])
def test_an_empty_or_blank_context_gives_no_input_section(context: str | None) -> None:
    prompt = build_prompt("what is an egg?", context)
    assert "### Input" not in prompt
    assert prompt == build_prompt("what is an egg?")


@given(st.text(), st.one_of(st.none(), st.text()), st.text())
def test_the_inference_prompt_is_an_exact_prefix_of_the_training_text(instruction: str, context: str | None,
                                                                      response: str) -> None:
    prompt = build_prompt(instruction, context)
    assert build_prompt(instruction, context, response) == prompt + response
    assert prompt.endswith(RESPONSE_HEADER)
