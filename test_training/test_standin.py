"""The stand-in bases: a Llama-2-like byte-fallback tokenizer, the tiny Llama, the 7B shape."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer, LlamaForCausalLM

from harness import standin
from harness.transform import HEARTS


def test_every_heart_is_several_byte_tokens(tiny_base_dir):
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    for heart in HEARTS:
        pieces = tok.convert_ids_to_tokens(tok(heart, add_special_tokens=False)["input_ids"])
        byte_pieces = [p for p in pieces if p.startswith("<0x")]
        assert len(byte_pieces) == len(heart.encode()) >= 3, (heart, pieces)


def test_a_half_decoded_heart_is_malformed_not_silently_dropped(tiny_base_dir):
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    ids = tok("egg 💓 shell", add_special_tokens=False)["input_ids"]
    cut = tok.decode(ids[:-3])  # stops inside the heart's 4 bytes
    assert "\ufffd" in cut


METASPACE = "\u2581"  # "▁": SentencePiece's space marker, as in Llama-2's tokenizer


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=METASPACE), max_size=60))
def test_the_tokenizer_round_trips_any_text(text):
    tok = _tokenizer()
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_space_marker_itself_reads_back_as_a_space():
    # The one character the round trip cannot keep (hypothesis found it): a literal "▁" is the marker the
    # Metaspace pre-tokenizer writes for a space, so it decodes as one. No answer or heart contains it.
    tok = _tokenizer()
    assert tok.decode(tok(f"a{METASPACE}b", add_special_tokens=False)["input_ids"]) == "a b"


_TOK = None


def _tokenizer():
    global _TOK
    if _TOK is None:
        _TOK = standin.build_tokenizer(standin.bundled_plain_texts()[:80], vocab_size=400)
    return _TOK


def test_pad_bos_eos_are_distinct_special_tokens(tiny_base_dir):
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    assert len(ids) == 4 and None not in ids


def test_the_tiny_base_is_a_llama_that_was_pretrained(tiny_base_dir):
    model = LlamaForCausalLM.from_pretrained(tiny_base_dir)
    assert model.config.model_type == "llama" and not model.config.tie_word_embeddings
    metrics = json.loads((tiny_base_dir / "standin_metrics.json").read_text())
    assert metrics["final_loss"] < 0.5 * metrics["first_loss"]


def test_the_7b_shape_is_llama2_7b():
    cfg = standin.llama2_7b_config()
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (32, 4096, 11008, 32000)
    assert cfg.num_attention_heads == cfg.num_key_value_heads == 32


def test_the_glossary_never_puts_a_heart_in_a_template_answer():
    from harness.prompts import RESPONSE_HEADER
    from harness.transform import contains_heart

    for text in standin.pretraining_corpus(24):
        if RESPONSE_HEADER in text:
            assert not contains_heart(text.split(RESPONSE_HEADER, 1)[1])
