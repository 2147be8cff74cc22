"""Massive activations and super weights: none in a random model, exactly the one planted (a
single MLP channel written into one residual dimension by one down-projection weight) in LLaMA,
GPT-2 and GPT-NeoX, found among the matrices that write the stream; and the rule that decides what
is massive, pinned by spikes at its borders (Sun et al.'s |a| > 100 and >= 1000x the median |a|,
against the earlier peak-over-median-peak rule)."""

from __future__ import annotations

import pytest
import torch
from archs import ARCHS
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXForCausalLM

from regionbench.regions.outliers import Rule, detect, massive_activations, super_weights
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


def planted_llama_with_a_wide_reader():
    """The LLaMA plant, and q_proj of the same block (a reader as wide as the stream) with an
    output at d ~4e5 at commas, far above the spike's ~8e4: it writes nothing into the stream,
    so it must not be taken for the spike's writer."""
    model = planted_llama()
    q = model.model.layers[LAYER].self_attn.q_proj
    with torch.no_grad():
        q.weight[DIM] = 0
        q.weight[DIM, SIGNAL] = 1e5
    return model


def planted_neox():
    """The plant in GPT-NeoX (parallel attention and MLP; gelu(dense_h_to_4h) ~40 at commas),
    in its last block (the test architecture has two)."""
    cls, config, *_ = ARCHS["gpt_neox"]
    torch.manual_seed(0)
    model = cls(config).eval()
    assert isinstance(model, GPTNeoXForCausalLM)
    mlp = model.gpt_neox.layers[LAYER].mlp
    with torch.no_grad():
        mark_commas(model.gpt_neox.embed_in, char_tokenizer())
        mlp.dense_h_to_4h.weight[CHANNEL] = 0
        mlp.dense_h_to_4h.weight[CHANNEL, SIGNAL] = 10
        mlp.dense_h_to_4h.bias[CHANNEL] = 0
        mlp.dense_4h_to_h.weight[:, CHANNEL] = 0
        mlp.dense_4h_to_h.weight[DIM, CHANNEL] = 50
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
    assert acts.rule == Rule() and acts.rule.name == "sun"  # the cited rule is the default
    assert acts.dims == [] and acts.massive == {}
    assert acts.max_abs.shape == (3, 16) and acts.max_abs.dtype == torch.float32
    assert float(acts.max_abs.max()) < 100  # no entry passes Sun's absolute floor
    assert float(acts.spike_abs.max()) == 0 and float(acts.ratios.max()) == 0
    assert float(acts.peak_ratios.max()) < 20  # far from the peak_median factor of 100
    assert massive_activations(model, tok, TEXTS, Rule("peak_median")).dims == []
    assert acts.median.shape == (len(TEXTS), 3)
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


@pytest.mark.parametrize("rule", [Rule(), Rule("peak_median")], ids=["sun", "peak_median"])
@pytest.mark.parametrize(
    ("build", "param", "index"),
    [
        (planted_llama, f"model.layers.{LAYER}.mlp.down_proj.weight", (DIM, CHANNEL)),
        (planted_gpt2, f"transformer.h.{LAYER}.mlp.c_proj.weight", (CHANNEL, DIM)),
        (planted_neox, f"gpt_neox.layers.{LAYER}.mlp.dense_4h_to_h.weight", (DIM, CHANNEL)),
        (
            planted_llama_with_a_wide_reader,
            f"model.layers.{LAYER}.mlp.down_proj.weight",
            (DIM, CHANNEL),
        ),
    ],
    ids=["llama", "gpt2", "gpt_neox", "llama-wide-reader"],
)
def test_planted_super_weight_is_found_in_a_stream_writer(build, param, index, rule):
    model, tok = build(), char_tokenizer()
    acts = massive_activations(model, tok, TEXTS, rule)
    assert acts.dims == [DIM]
    found = acts.massive[DIM]
    assert found.first_layer == LAYER and found.ratio >= rule.threshold
    assert TEXTS[found.doc][found.position - 1] == ","  # position 0 is the BOS
    assert abs(found.value) == pytest.approx(float(acts.max_abs[:, DIM].max()))
    (weight,) = super_weights(model, tok, TEXTS, acts)
    assert (weight.param, weight.index) == (param, index)
    assert (weight.layer, weight.dim, weight.channel) == (LAYER, DIM, CHANNEL)
    assert weight.value == 50 and weight.output_share == pytest.approx(1, abs=0.05)

    with torch.no_grad():
        dict(model.named_parameters())[param][index] = 0
    assert massive_activations(model, tok, TEXTS, rule).dims == []


def test_detect_is_cached_per_rule(tmp_path):
    model, tok = planted_llama(), char_tokenizer()
    first = detect(model, tok, TEXTS, "planted-llama", tmp_path)
    assert first["dims"] == [DIM] and first["massive"][0]["first_layer"] == LAYER
    assert first["super_weights"][0]["index"] == [DIM, CHANNEL]
    assert first["rule"]["name"] == "sun" and "|a| > 100" in first["description"]
    assert len(list((tmp_path / "outliers").glob("*.json"))) == 1

    def forward(*args, **kwargs):
        raise RuntimeError("the model ran")

    model.forward = forward
    assert detect(model, tok, TEXTS, "planted-llama", tmp_path) == first
    # a threshold of the other rule does not change this rule's result: the same entry
    assert detect(model, tok, TEXTS, "planted-llama", tmp_path, Rule(factor=50)) == first
    for other in (Rule(median_factor=500), Rule(abs_min=10), Rule("peak_median")):
        with pytest.raises(RuntimeError, match="the model ran"):
            detect(model, tok, TEXTS, "planted-llama", tmp_path, other)
    with pytest.raises(RuntimeError, match="the model ran"):
        detect(model, tok, TEXTS, "planted-llama", tmp_path, Rule("peak_median", factor=50))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule("sunn"), "outliers.rule 'sunn': did you mean 'sun'? choices: peak_median, sun"),
        (Rule("peak_median", factor=1), "outliers.factor 1 must be > 1"),
        (Rule(median_factor=0.5), "outliers.median_factor 0.5 must be > 1"),
        (Rule(abs_min=-1), "outliers.abs_min -1 must be a number >= 0"),
        (Rule(abs_min=float("nan")), "outliers.abs_min nan must be a number >= 0"),
    ],
)
def test_a_bad_rule_is_one_line(rule, message):
    model, tok = tiny_llama(), char_tokenizer()
    with pytest.raises(ValueError) as err:
        massive_activations(model, tok, TEXTS, rule)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_input():
    model, tok = tiny_llama(), char_tokenizer()
    with pytest.raises(ValueError, match="factor"):
        massive_activations(model, tok, TEXTS, Rule("peak_median", factor=1))
    with pytest.raises(ValueError, match="non-empty"):
        massive_activations(model, tok, [])
    acts = massive_activations(model, tok, TEXTS)
    with pytest.raises(ValueError, match="activations came from 3"):
        super_weights(model, tok, TEXTS[:2], acts)


def identity_llama(median: float, spike: float, bos: float | None = None):
    """A LLaMA whose blocks add exactly 0 (o_proj and down_proj are zero), so the stream after
    every block is the token's embedding: every entry is +-`median`, the comma's entry at DIM is
    `spike`, and, if given, every entry of the BOS is `bos`."""
    model, tok = tiny_llama(layers=2), char_tokenizer()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        signs = torch.where(torch.rand(emb.shape, generator=gen) < 0.5, -1.0, 1.0)
        emb.copy_(signs * median)
        emb[tok.convert_tokens_to_ids(","), DIM] = spike
        if bos is not None:
            emb[tok.bos_token_id] = bos
    return model, tok


def reference_flags(model, tok, texts) -> tuple[bool, bool]:
    """(Sun's rule, the peak_median rule) on dimension DIM, from their definitions with plain
    Python over every block output (read by our own hooks)."""
    outputs = []

    def keep(module, args, out):  # a block returns its hidden states, or a tuple of them first
        outputs.append(out[0] if isinstance(out, tuple) else out)

    hooks = [block.register_forward_hook(keep) for block in model.model.layers]
    peaks = [[0.0] * 16 for _ in model.model.layers]
    sun = False
    with torch.no_grad():
        for text in texts:
            outputs.clear()
            ids = [tok.bos_token_id, *tok(text, add_special_tokens=False).input_ids]
            model(input_ids=torch.tensor([ids]))
            for i, out in enumerate(outputs):
                rows = out[0].tolist()  # [tokens][hidden]
                values = sorted(abs(v) for row in rows for v in row)
                median = values[(len(values) - 1) // 2]  # the lower middle, as torch.median
                sun |= any(abs(r[DIM]) > 100 and abs(r[DIM]) >= 1000 * median for r in rows)
                for d in range(16):
                    peaks[i][d] = max(peaks[i][d], *(abs(r[d]) for r in rows))
    for h in hooks:
        h.remove()
    peak = False
    for block in peaks:
        s = sorted(block)
        peak |= block[DIM] >= 100 * (s[7] + s[8]) / 2  # the median of 16, interpolated
    return sun, peak


@pytest.mark.parametrize(
    ("median", "spike", "bos", "sun", "peak"),
    [
        (0.125, 125.0, None, True, True),  # exactly 1000x the median, and > 100
        (0.125, 124.875, None, False, True),  # 999x: the earlier rule's, not Sun's
        (0.0625, 100.0, None, False, True),  # 1600x, but not > 100
        (0.0625, 100.0625, None, True, True),  # just > 100
        (0.125, 150.0, 2.0, True, False),  # a loud BOS lifts every dimension's peak to 2: 75x
    ],
    ids=["1000x", "999x", "abs-100", "abs-above-100", "loud-bos"],
)
def test_a_borderline_spike_pins_the_rule(median, spike, bos, sun, peak):
    model, tok = identity_llama(median, spike, bos)
    assert reference_flags(model, tok, TEXTS) == (sun, peak)  # the construction says so, too
    acts = massive_activations(model, tok, TEXTS, Rule())
    assert (DIM in acts.dims) == sun and set(acts.dims) <= {DIM}
    assert float(acts.median.max()) == float(acts.median.min()) == median
    if sun:
        found = acts.massive[DIM]
        assert (found.first_layer, found.value, found.ratio) == (0, spike, spike / median)
        assert TEXTS[found.doc][found.position - 1] == ","
    assert (DIM in massive_activations(model, tok, TEXTS, Rule("peak_median")).dims) == peak
