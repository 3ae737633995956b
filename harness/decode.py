"""Stage 6a, the decode loop: greedy decoding whose step is replayed as one CUDA graph (``[generation] cache =
"graph"``).

Why: decoding a small model, and any 4-bit model, is bound by the host, not the GPU. SmolLM2's 4-bit model with
its adapter spent 88 ms of host time per step for 10 ms of GPU work (bitsandbytes' ``gemm_4bit`` alone 135 us
of Python and ctypes per call, 210 calls a step: ``docs/perf/h200-smollm2-135m-4bit-eager-decode-*``), and
bitsandbytes' layers cannot be compiled. A CUDA graph replays the step's kernels with no host work at all, so a
step costs its GPU time. It needs fixed shapes and addresses, which transformers' static KV cache gives: its
write position is a tensor on the device that the step itself advances.

How: the prompt is prefilled eagerly into a ``StaticCache``; the first decode step runs eagerly (it also warms
up the libraries' lazy state, as a capture requires) and the second is captured; every later step, of this
batch and of the call's next batches (all of one size: ``generate.plan_batches(fill=True)``), is one
``graph.replay()``. Token choice, the EOS bookkeeping and the attention mask's next slot are inside the graph, so
the host only checks every ``CHECK_EVERY`` steps whether every row has stopped.

What it computes is transformers' own greedy ``generate`` with a static cache, decoded eagerly: the same forward
with the same inputs (a 4D mask of the cache's length, positions from the attention mask, ``logits_to_keep=1``),
the same float32 scores, ``min_new_tokens`` and EOS handling (tested on CPU, where the same loop runs without
a capture, token for token). The captured kernels are the eager ones, so CUDA gives the eager static answers too
(tested on CUDA). Against a *dynamic* cache only the attention differs: it runs over the cache's whole length,
the slots not yet written masked out.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

CHECK_EVERY = 16  # decode steps between the host's looks at whether every row has stopped (each look is a sync)
# Generation settings that add a logits processor or a stopping rule to greedy decoding, with their neutral
# values: the loop implements none of them, so a model whose generation_config sets one decodes otherwise.
NEUTRAL = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
           "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "suppress_tokens": (None,),
           "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
           "sequence_bias": (None,), "min_length": (None, 0), "exponential_decay_length_penalty": (None,),
           "renormalize_logits": (None, False), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
           "stop_strings": (None,), "max_time": (None,), "num_beams": (None, 1), "num_return_sequences": (None, 1),
           "remove_invalid_values": (None, False)}
# RoPE whose frequencies are recomputed from the positions a forward sees (a host-side decision a replay skips)
RECOMPUTED_ROPE = ("dynamic", "longrope")
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")  # config keys of mixture-of-experts models


def unsupported(model) -> str | None:
    """Why ``model`` cannot decode in this loop (None: it can): it needs transformers' cache interface of 5.2x (a
    ``cache`` argument; a static layer that keeps its length on the device, so a replayed step advances it), full
    causal attention in every layer through SDPA (the loop builds the mask itself), RoPE fixed in advance, no
    experts, one device, and nothing in its generation_config that changes greedy decoding."""
    from transformers.cache_utils import StaticLayer

    from harness.model import unwrapped  # not at import: generate, which imports this, loads no transformers

    if "cache" not in inspect.signature(unwrapped(model).forward).parameters:
        return "its forward takes no `cache` argument (transformers before 5.2x)"
    if not isinstance(StaticLayer(max_cache_len=1).cumulative_length, torch.Tensor):
        return "transformers' static cache keeps its length on the host"
    text = model.config.get_text_config()
    if getattr(text, "sliding_window", None) or set(getattr(text, "layer_types", None) or ()) - {"full_attention"}:
        return "it has sliding-window or other non-full attention layers (the loop's mask is full causal attention)"
    if (attention := getattr(text, "_attn_implementation", None)) != "sdpa":
        return f"its attention is {attention!r}, not 'sdpa' (the loop's boolean mask is SDPA's form)"
    rope = str((getattr(text, "rope_parameters", None) or {}).get("rope_type", "default"))
    if any(kind in rope for kind in RECOMPUTED_ROPE):
        return f"its RoPE ({rope!r}) is recomputed from the positions of each forward"
    if any(getattr(text, key, None) for key in EXPERT_COUNTS):
        return "it has mixture-of-experts layers (generate switches their kernels for decoding)"
    if len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1:
        return "it is spread over several devices"
    settings = getattr(model, "generation_config", None)
    changed = [name for name, neutral in NEUTRAL.items() if getattr(settings, name, None) not in neutral]
    return f"its generation_config sets {', '.join(changed)}" if changed else None


class GraphDecoder:
    """One call's greedy decoder: a static KV cache of ``positions`` slots for ``batch`` rows and (on CUDA) the
    captured decode step, reused by every batch of the call."""

    def __init__(self, model, batch: int, positions: int, max_new_tokens: int, min_new_tokens: int,
                 eos_token_id: int, pad_token_id: int) -> None:
        from transformers import StaticCache

        self.model, self.max_new, self.min_new = model, max_new_tokens, min_new_tokens
        device = model.device
        self.cache = StaticCache(config=model.config, max_cache_len=positions)
        # The graph reads and writes these addresses: every batch refills them in place.
        self.tokens = torch.zeros((batch, 1), dtype=torch.long, device=device)  # the token each row feeds next
        self.positions = torch.zeros((batch, 1), dtype=torch.long, device=device)  # its position id
        self.visible = torch.zeros((batch, positions), dtype=torch.bool, device=device)  # slots a row attends to
        self.step = torch.zeros((), dtype=torch.long, device=device)  # tokens chosen so far
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        self.out = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        self.pad = torch.tensor(pad_token_id, device=device)
        self.eos = torch.tensor(eos_token_id, device=device)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.eos_scores = torch.arange(vocab, device=device) == eos_token_id  # the scores min_new_tokens bars
        self.on_cuda = device.type == "cuda"
        self.warmed = False  # the eager step before the capture has run
        self.graph: Any = None  # the captured decode step (torch.cuda.CUDAGraph), one for the whole call

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The new tokens of one left-padded batch: ``[batch, steps]``, pad after a row's EOS."""
        if input_ids.shape[0] != self.tokens.shape[0]:
            raise ValueError(f"batch of {input_ids.shape[0]} rows for a decoder of {self.tokens.shape[0]}")
        self._prefill(input_ids, attention_mask)
        taken = 1
        while taken < self.max_new:
            n = min(CHECK_EVERY, self.max_new - taken)
            for _ in range(n):
                self._replay()
            taken += n
            if not bool(self.unfinished.any()):  # the only sync: every CHECK_EVERY steps
                break
        return self.out[:, :taken].clone()

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Reset the buffers in place, run the prompt through the model eagerly and choose the first token."""
        self.cache.reset()  # zeros and length 0, in place: a fresh cache, at the same addresses
        width = input_ids.shape[1]
        self.visible.zero_()[:, :width] = attention_mask.bool()
        self.step.zero_()
        self.unfinished.fill_(True)
        self.out.fill_(self.pad)
        positions = prompt_positions(attention_mask)
        self._choose(self._logits(input_ids, attention_mask, positions))
        self.positions.copy_(positions[:, -1:] + 1)

    def _decode_step(self) -> None:
        """One decode step, all on the device (the captured body): the fed token's slot made visible, the forward,
        the next token chosen."""
        layer: Any = self.cache.layers[0]  # a static layer (every layer holds the same length)
        self._reveal(layer.cumulative_length)  # the slot this step's keys and values are written to
        self._choose(self._logits(self.tokens, self.visible[:, None, None, :], self.positions))
        self.positions.add_(1)

    def _reveal(self, slot: torch.Tensor) -> None:
        """Let every row attend to cache slot ``slot`` (a 0-dim tensor on the device) from now on."""
        self.visible.index_fill_(1, slot.view(1), True)

    def _logits(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()  # generate's scores are float32 too

    def _choose(self, scores: torch.Tensor) -> None:
        """Greedy choice as ``generate`` makes it: EOS barred before ``min_new_tokens``, a stopped row fed pad."""
        if self.min_new:
            scores = scores.masked_fill(self.eos_scores & (self.step < self.min_new), -torch.inf)
        chosen = torch.where(self.unfinished, scores.argmax(-1), self.pad)
        self.out.index_copy_(1, self.step.view(1), chosen[:, None])
        self.unfinished.logical_and_(chosen != self.eos)
        self.tokens.copy_(chosen[:, None])
        self.step.add_(1)

    def _replay(self) -> None:
        """The next decode step: eager on CPU; on CUDA eager once (the warm-up a capture needs: libraries set up
        handles and workspaces on first use), then captured, then replayed."""
        if self.graph is not None:
            self.graph.replay()
        elif not self.on_cuda:
            self._decode_step()
        else:
            with torch.cuda.device(self.tokens.device):  # the model's GPU, whichever is current (a launcher's rank)
                self._warm_up_or_capture()

    def _warm_up_or_capture(self) -> None:
        if not self.warmed:
            side = torch.cuda.Stream()  # as torch's docs warm up: off the stream that will capture
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._decode_step()
            torch.cuda.current_stream().wait_stream(side)
            self.warmed = True
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._decode_step()  # recorded, not run
        self.graph = graph
        graph.replay()


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` makes them: 0, 1, ... over each row's tokens, 0 on
    its padding (which nothing attends to)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)
