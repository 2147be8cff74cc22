"""Massive activations and super weights: none in a random model, and exactly the one planted
(a single MLP channel written into one residual dimension by one down-projection weight)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from regionbench.regions.outliers import detect, massive_activations, super_weights
from regionbench.testing import char_tokenizer, tiny_llama

TEXTS = [
    "the cat sat on the mat.",
    "a dog ran, and a bird flew over the old barn.",
    "hello world, this is a short test of the detector.",
]
LAYER, DIM, CHANNEL = 1, 5, 7  # block 1 of 3 writes the spike, so block 0 must stay clean
SIGNAL = 11  # the embedding dimension that tells the spiking token (",") from all others


def mark_commas(embedding: torch.nn.Embedding, tok) -> None:
    """Every token's embedding gets -0.3 at SIGNAL, the comma's +0.3: after the norm, SIGNAL is
    about +4 at commas and -4 elsewhere, so a channel reading it fires at commas only (massive
    activations sit on delimiters) and the super weight is found only at the right token."""
    embedding.weight[:, SIGNAL] = -0.3
    embedding.weight[tok.convert_tokens_to_ids(","), SIGNAL] = 0.3


def planted_llama():
    """Channel j's silu(gate) * up is ~40 x 40 at commas and ~0 elsewhere; down_proj column j
    writes it into dim d alone."""
    model, tok = tiny_llama(layers=3), char_tokenizer()
    mlp = model.model.layers[LAYER].mlp
    with torch.no_grad():
        mark_commas(model.model.embed_tokens, tok)
        mlp.gate_proj.weight[CHANNEL] = 0
        mlp.gate_proj.weight[CHANNEL, SIGNAL] = 10
        mlp.up_proj.weight[CHANNEL] = 0
        mlp.up_proj.weight[CHANNEL, SIGNAL] = 10
        mlp.down_proj.weight[:, CHANNEL] = 0
        mlp.down_proj.weight[DIM, CHANNEL] = 50
    return model


def planted_gpt2():
    """The same plant in GPT-2 (gelu(c_fc) ~40 at commas), whose Conv1D weights are [in, out]."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64,
        n_positions=64,
        n_embd=16,
        n_layer=3,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = GPT2LMHeadModel(config).eval()
    mlp = model.transformer.h[LAYER].mlp
    with torch.no_grad():
        mark_commas(model.transformer.wte, char_tokenizer())
        mlp.c_fc.weight[:, CHANNEL] = 0
        mlp.c_fc.weight[SIGNAL, CHANNEL] = 10
        mlp.c_proj.weight[CHANNEL, :] = 0
        mlp.c_proj.weight[CHANNEL, DIM] = 50
    return model


def test_random_llama_has_no_massive_activation():
    model, tok = tiny_llama(layers=3), char_tokenizer()
    acts = massive_activations(model, tok, TEXTS)
    assert acts.dims == [] and acts.massive == {}
    assert acts.max_abs.shape == (3, 16) and acts.max_abs.dtype == torch.float32
    assert float(acts.ratios.max()) < 20  # far from the factor of 100
    assert model.training is False


def test_modes_restored_and_block_outputs_not_hidden_states():
    model, tok = tiny_llama(layers=3), char_tokenizer()
    model.train()
    acts = massive_activations(model, tok, TEXTS[:1])
    assert all(m.training for m in model.modules())
    # the reference: the last block's own output (hidden_states[-1] is after the final norm)
    ids = torch.tensor([[tok.bos_token_id, *tok(TEXTS[0], add_special_tokens=False).input_ids]])
    out = []
    model.model.layers[-1].register_forward_hook(lambda m, a, o: out.append(o))
    with torch.no_grad():
        model.eval()(ids)
    assert torch.allclose(acts.max_abs[-1], out[0][0].abs().amax(dim=0))


@pytest.mark.parametrize(
    ("build", "param", "index"),
    [
        (planted_llama, f"model.layers.{LAYER}.mlp.down_proj.weight", (DIM, CHANNEL)),
        (planted_gpt2, f"transformer.h.{LAYER}.mlp.c_proj.weight", (CHANNEL, DIM)),
    ],
    ids=["llama", "gpt2"],
)
def test_planted_super_weight_is_found(build, param, index):
    model, tok = build(), char_tokenizer()
    acts = massive_activations(model, tok, TEXTS)
    assert acts.dims == [DIM]
    found = acts.massive[DIM]
    assert found.first_layer == LAYER and found.ratio >= 100
    assert TEXTS[found.doc][found.position - 1] == ","  # position 0 is the BOS
    assert abs(found.value) == pytest.approx(float(acts.max_abs[:, DIM].max()))
    (weight,) = super_weights(model, tok, TEXTS, acts)
    assert (weight.param, weight.index) == (param, index)
    assert (weight.layer, weight.dim, weight.channel) == (LAYER, DIM, CHANNEL)
    assert weight.value == 50 and weight.output_share == pytest.approx(1, abs=0.05)

    with torch.no_grad():
        dict(model.named_parameters())[param][index] = 0
    assert massive_activations(model, tok, TEXTS).dims == []


def test_detect_is_cached_per_factor(tmp_path):
    model, tok = planted_llama(), char_tokenizer()
    first = detect(model, tok, TEXTS, "planted-llama", tmp_path)
    assert first["dims"] == [DIM] and first["massive"][0]["first_layer"] == LAYER
    assert first["super_weights"][0]["index"] == [DIM, CHANNEL]
    assert len(list((tmp_path / "outliers").glob("*.json"))) == 1

    def forward(*args, **kwargs):
        raise RuntimeError("the model ran")

    model.forward = forward
    assert detect(model, tok, TEXTS, "planted-llama", tmp_path) == first
    with pytest.raises(RuntimeError, match="the model ran"):
        detect(model, tok, TEXTS, "planted-llama", tmp_path, factor=50)


def test_bad_input():
    model, tok = tiny_llama(), char_tokenizer()
    with pytest.raises(ValueError, match="factor"):
        massive_activations(model, tok, TEXTS, factor=1)
    with pytest.raises(ValueError, match="non-empty"):
        massive_activations(model, tok, [])
    acts = massive_activations(model, tok, TEXTS)
    with pytest.raises(ValueError, match="activations came from 3"):
        super_weights(model, tok, TEXTS[:2], acts)
