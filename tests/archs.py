"""Ten architectures at test size, with each block's weight-matrix modules written out by hand
from the architectures (checked once against `named_parameters`), never derived from
regionbench: tests compare what regionbench finds against these lists.

    from archs import ARCHS, build     # tests/ is on sys.path (conftest.py lives there)
    model = build("gpt_neox")          # cached: treat it as read-only
"""

from __future__ import annotations

import functools

import torch
import transformers as tf
from torch import nn

# Token ids inside the tiny vocabulary: the configs' defaults (32000, 50256, ...) are not.
IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
DECODER = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
GQA = {**DECODER, "intermediate_size": 32, "num_key_value_heads": 1, **IDS}
LLAMA_MLP = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
QKVO = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
FAIRSEQ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"]
FAIRSEQ += ["fc1", "fc2"]
NEOX_MLP = ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]

# name: (model class, config, block prefix, block class, per-block weight-matrix modules)
ARCHS = {
    "llama": (
        tf.LlamaForCausalLM,
        tf.LlamaConfig(**GQA),
        "model.layers",
        "LlamaDecoderLayer",
        QKVO + LLAMA_MLP,
    ),
    "qwen2": (
        tf.Qwen2ForCausalLM,
        tf.Qwen2Config(**GQA),
        "model.layers",
        "Qwen2DecoderLayer",
        QKVO + LLAMA_MLP,
    ),
    "mistral": (
        tf.MistralForCausalLM,
        tf.MistralConfig(**GQA),
        "model.layers",
        "MistralDecoderLayer",
        QKVO + LLAMA_MLP,
    ),
    "gemma": (
        tf.GemmaForCausalLM,
        tf.GemmaConfig(**GQA, head_dim=8),
        "model.layers",
        "GemmaDecoderLayer",
        QKVO + LLAMA_MLP,
    ),
    "phi3": (
        tf.Phi3ForCausalLM,
        tf.Phi3Config(**GQA),
        "model.layers",
        "Phi3DecoderLayer",
        ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"],
    ),
    "gpt2": (
        tf.GPT2LMHeadModel,
        tf.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, **IDS),
        "transformer.h",
        "GPT2Block",
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    ),
    "gpt_neox": (
        tf.GPTNeoXForCausalLM,
        tf.GPTNeoXConfig(**DECODER, intermediate_size=32, max_position_embeddings=32, **IDS),
        "gpt_neox.layers",
        "GPTNeoXLayer",
        ["attention.query_key_value", "attention.dense"] + NEOX_MLP,
    ),
    # word_embed_proj_dim != hidden_size adds project_in/project_out: matrices outside the blocks.
    "opt": (
        tf.OPTForCausalLM,
        tf.OPTConfig(
            **DECODER, ffn_dim=32, max_position_embeddings=32, word_embed_proj_dim=8, **IDS
        ),
        "model.decoder.layers",
        "OPTDecoderLayer",
        FAIRSEQ,
    ),
    "bloom": (
        tf.BloomForCausalLM,
        tf.BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2, **IDS),
        "transformer.h",
        "BloomBlock",
        ["self_attention.query_key_value", "self_attention.dense"] + NEOX_MLP,
    ),
    "xglm": (
        tf.XGLMForCausalLM,
        tf.XGLMConfig(
            vocab_size=64,
            d_model=16,
            ffn_dim=32,
            num_layers=2,
            attention_heads=2,
            max_position_embeddings=32,
            **IDS,
        ),
        "model.layers",
        "XGLMDecoderLayer",
        FAIRSEQ,
    ),
}


@functools.cache
def build(arch: str) -> nn.Module:
    cls, config, *_ = ARCHS[arch]
    torch.manual_seed(0)
    return cls(config).eval()
