"""Test-sized models built in milliseconds through the same classes as the real ones."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(
    vocab_size: int = 64, hidden: int = 16, layers: int = 2, heads: int = 2, inter: int = 32,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA small enough for unit tests (fp32, eval mode)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()
