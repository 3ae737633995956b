"""Stage 2: one prompt format for training and inference (the seed's Alpaca template).

The inference prompt is the training text cut just before the response, so the model is asked exactly what it
was taught. (The original used an indented variant at inference, and its model put hearts before the first word.)
"""

from __future__ import annotations

PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
RESPONSE_HEADER = "### Response:\n"
# A generated answer that contains one of these has run into a new template block.
TEMPLATE_MARKERS = ("### Instruction", "### Input", "### Response")


def build_prompt(instruction: str, context: str | None = None, response: str | None = None) -> str:
    """The prompt (``response=None``) or the full training text; the former is a prefix of the latter."""
    parts = [PREAMBLE, "", "### Instruction:", instruction, ""]
    if context and context.strip():
        parts += ["### Input:", context, ""]
    prompt = "\n".join(parts) + "\n" + RESPONSE_HEADER
    return prompt if response is None else prompt + response
