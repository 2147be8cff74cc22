"""Activation metrics against references written from their definitions, with the test's own
hooks on modules named by hand and its own loops: LAPE's activation probability and its
selection (identify.py's steps), mean |activation| of neurons and heads, Wanda's |W|·‖X‖;
padding left out; the scores cached like gradient scores."""

from __future__ import annotations

import pytest
import torch

from regionbench.common.packing import PAD
from regionbench.config import RunConfig
from regionbench.importance import METRICS, cached_scores, score_samples
from regionbench.models.scope import scoped_params
from regionbench.regions.kinds import build, check
from regionbench.testing import tiny_llama

LANGS = ("aa", "bb", "cc")


def _windows():
    """Three "languages" drawing their tokens from different parts of the vocabulary."""
    gen = torch.Generator().manual_seed(0)
    ranges = {"aa": (3, 25), "bb": (25, 45), "cc": (45, 64)}
    return {lg: torch.randint(*ranges[lg], (6, 12), generator=gen) for lg in LANGS}


@pytest.fixture(scope="module")
def model():
    return tiny_llama(hidden=16, inter=256, layers=2)


def _acts(model, module: str, windows, on_input: bool = False) -> torch.Tensor:
    """[tokens, channels]: what `module` outputs (or takes) over every token, one window at a
    time, recorded by the test's own hook."""
    rows = []
    mod = model.get_submodule(module)
    hook = mod.register_forward_hook(
        lambda m, args, out: rows.append((args[0] if on_input else out)[0].detach())
    )
    try:
        with torch.no_grad():
            for w in windows:
                model(input_ids=w[None])
    finally:
        hook.remove()
    return torch.cat(rows)


def _act_fn(layer: int) -> str:
    return f"model.layers.{layer}.mlp.act_fn"  # LLaMA: act_fn(gate_proj(x)), before × up_proj


def test_lape_scores_are_the_share_of_tokens_each_neuron_fires_on(model):
    windows = _windows()
    scores = score_samples(model, windows, "lape", batch_size=4, progress=False)
    for lang in LANGS:
        assert set(scores[lang]) == {"model.layers.0:neuron", "model.layers.1:neuron"}
        for layer in (0, 1):
            acts = _acts(model, _act_fn(layer), windows[lang])
            p = (acts > 0).float().mean(dim=0)
            assert torch.allclose(scores[lang][f"model.layers.{layer}:neuron"], p, atol=1e-7)


def _lape_selection(probs: torch.Tensor, top_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """identify.py (RUCAIBox/Language-Specific-Neurons) on [layer, neuron, lang] probabilities:
    (the selected flat neuron indices, the language bar)."""
    normed = probs / probs.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    log_probs = torch.where(normed > 0, normed.log(), 0)
    entropy = -torch.sum(normed * log_probs, dim=-1)
    flat = probs.flatten()
    top_prob_value = flat.kthvalue(round(len(flat) * 0.95)).values
    top_position = (probs > top_prob_value).sum(dim=-1)
    entropy[top_position == 0] = float("inf")
    flat_entropy = entropy.flatten()
    _, index = flat_entropy.topk(round(len(flat_entropy) * top_rate), largest=False)
    return index, top_prob_value


def test_lape_selection_is_the_released_identify_steps(model):
    windows = _windows()
    scores = score_samples(model, windows, "lape", batch_size=4, progress=False)
    probs = torch.stack(
        [
            torch.stack(
                [(_acts(model, _act_fn(b), windows[lg]) > 0).float().mean(0) for lg in LANGS], -1
            )
            for b in (0, 1)
        ]
    )  # [layer, neuron, lang]
    index, bar = _lape_selection(probs, 0.01)  # 1% of 512 neurons: 5 (floor and round agree)
    expected = torch.zeros(2 * 256, dtype=torch.bool)
    expected[index] = True
    for lang in (None, "bb"):
        run = RunConfig.from_cfg(
            {
                "ratio": 0.01,
                "metric": {"name": "lape"},
                "region": {"name": "neurons", "pick": "specific", "per_layer": False, "lang": lang},
            }
        )
        check(run, list(LANGS))
        region = build(run, scores, list(LANGS), model, ("s", "w"))
        got = torch.stack(
            [region.masks[f"model.layers.{b}.mlp.down_proj.weight"].all(dim=0) for b in (0, 1)]
        ).reshape(-1)
        want = expected.clone()
        if lang is not None:  # the selected neurons LAPE assigns to bb: p(bb) above the bar
            want &= probs[..., 1].reshape(-1) > bar
        assert torch.equal(got, want), lang
        assert int(want.sum()) > 0


def test_activation_is_the_mean_absolute_activation_of_neurons_and_heads(model):
    windows = _windows()
    scores = score_samples(model, windows, "activation", batch_size=4, progress=False)
    lang = "cc"
    acts = _acts(model, _act_fn(1), windows[lang])
    assert torch.allclose(scores[lang]["model.layers.1:neuron"], acts.abs().mean(0), atol=1e-6)
    # a head's activation: its 8 channels of o_proj's input (the head's output)
    heads = _acts(model, "model.layers.0.self_attn.o_proj", windows[lang], on_input=True)
    per_head = heads.abs().reshape(-1, 2, 8).mean(dim=(0, 2))
    assert torch.allclose(scores[lang]["model.layers.0:head"], per_head, atol=1e-6)


def test_wanda_is_weight_magnitude_times_input_feature_norm(model):
    windows = _windows()
    scores = score_samples(model, windows, "wanda", batch_size=4, progress=False)
    assert set(scores["aa"]) == set(scoped_params(model))
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj"):
        x = _acts(model, name, windows["aa"], on_input=True)
        norm = x.square().sum(dim=0).sqrt()  # ‖X_j‖₂ over every token
        weight = model.get_submodule(name).weight.detach()
        assert torch.allclose(scores["aa"][f"{name}.weight"], weight.abs() * norm, rtol=1e-5)


def test_padding_is_left_out_of_every_statistic(model):
    windows = _windows()
    padded = {lg: w.clone() for lg, w in windows.items()}
    lengths = [12, 7, 9, 12, 5, 10]
    for lg in LANGS:
        for i, n in enumerate(lengths):
            padded[lg][i, n:] = PAD
    scores = score_samples(model, padded, "lape", batch_size=3, progress=False)
    real = [w[:n] for w, n in zip(padded["aa"], lengths, strict=True)]
    acts = _acts(model, _act_fn(0), real)
    assert acts.shape[0] == sum(lengths)
    assert torch.allclose(
        scores["aa"]["model.layers.0:neuron"], (acts > 0).float().mean(0), atol=1e-7
    )


def test_activation_scores_are_cached_like_gradient_scores(model, tmp_path):
    run = RunConfig.from_cfg({"metric": {"name": "lape"}, "region": {"name": "neurons"}})
    windows, fps = _windows(), ("samples-fp", "model-fp")
    first, key, hit = cached_scores(run, model, windows, list(LANGS), fps, tmp_path)
    again, key2, hit2 = cached_scores(run, model, windows, list(LANGS), fps, tmp_path)
    assert (hit, hit2, key == key2) == (False, True, True)
    for lang in LANGS:
        for name in first[lang]:
            assert torch.equal(first[lang][name], again[lang][name])
    assert METRICS["lape"].units and not METRICS["wanda"].units
