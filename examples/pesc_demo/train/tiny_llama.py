"""The embedded default model: a Llama-architecture causal LM of a few million parameters.

It is built from a config (no download) for the byte tokenizer, then pre-trained briefly by
``examples/finetune.py`` to give "the dense model" that PESC crafts. The sizes are chosen so the
whole demo (dense pre-training plus two fine-tunes) runs in minutes on 2 CPU cores while each
decoder layer still has a real gated FFN (gate/up/down projections) for the experts to share.
"""
from __future__ import annotations

import torch

DEFAULT_SIZES = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
)


def tiny_llama_config(tokenizer, **overrides):
    """A LlamaConfig for ``tokenizer``'s vocabulary (rounded up to a multiple of 8)."""
    from transformers import LlamaConfig

    sizes = {**DEFAULT_SIZES, **overrides}
    vocab = -(-len(tokenizer) // 8) * 8
    return LlamaConfig(
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def build_tiny_llama(tokenizer, seed: int = 0, **overrides):
    """A freshly initialised tiny Llama (deterministic for a given seed)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_llama_config(tokenizer, **overrides))
