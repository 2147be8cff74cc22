"""In-place interventions touch exactly the region and are undone bit-exactly."""

from __future__ import annotations

import pytest
import torch

from regionbench.importance import compute_importance
from regionbench.interventions.kinds import INTERVENTIONS, intervene
from regionbench.regions.kinds import select
from regionbench.regions.region import Region
from regionbench.testing import tiny_llama


def region_for(model, ratio=0.2, seed=0):
    scores = compute_importance(model, None, {"aa": []}, "random", seed=seed)
    return select(scores, ratio, "core")


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bit_identical(model, before):
    for n, p in model.named_parameters():
        # view as integers: torch.equal on floats would call -0.0 == 0.0 and NaN != NaN
        assert torch.equal(
            p.detach().view(torch.int16 if p.dtype == torch.bfloat16 else torch.int32),
            before[n].view(torch.int16 if p.dtype == torch.bfloat16 else torch.int32),
        ), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_remove_zeroes_exactly_the_mask_and_restores(dtype):
    model = tiny_llama().to(dtype)
    region = region_for(model)
    before = snapshot(model)
    with intervene(model, region, "remove") as applied:
        assert applied.model is model
        nonzero = sum(
            int((p.detach()[region.masks[n]] != 0).sum())
            for n, p in before.items()
            if n in region.masks
        )
        assert applied.selected == region.numel and applied.changed == nonzero > 0
        for n, p in model.named_parameters():
            mask = region.masks.get(n)
            if mask is None:
                assert torch.equal(p, before[n])
                continue
            assert (p[mask] == 0).all()
            assert torch.equal(p[~mask], before[n][~mask])
            assert mask.any() and (before[n][mask] != 0).all()
            assert p.dtype == dtype
    assert_bit_identical(model, before)


def test_restore_after_exception_inside_block():
    model = tiny_llama()
    region = region_for(model)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), intervene(model, region, "noise", std=1.0):
        assert not all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        raise RuntimeError("boom")
    assert_bit_identical(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_and_noise_touch_only_the_mask(dtype):
    model = tiny_llama().to(dtype)
    region = region_for(model, ratio=0.3)
    before = snapshot(model)
    name = "model.layers.1.mlp.up_proj.weight"
    mask = region.masks[name]
    with intervene(model, region, "scale", factor=0.5):
        p = dict(model.named_parameters())[name]
        assert torch.equal(p[mask], (before[name][mask].float() * 0.5).to(dtype))
        assert torch.equal(p[~mask], before[name][~mask])
    assert_bit_identical(model, before)

    draws = []
    for seed in (0, 0, 1):
        with intervene(model, region, "noise", std=0.1, seed=seed):
            p = dict(model.named_parameters())[name]
            assert torch.equal(p[~mask], before[name][~mask])
            draws.append(p.detach()[mask].float() - before[name][mask].float())
        assert_bit_identical(model, before)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert 0.05 < float(draws[0].std()) < 0.2
    with intervene(model, region, "noise", std=0.0):
        assert_bit_identical(model, before)


def test_empty_region_is_a_no_op():
    model = tiny_llama()
    before = snapshot(model)
    with intervene(model, region_for(model, ratio=0.0), "remove"):
        assert_bit_identical(model, before)
    assert_bit_identical(model, before)


def test_nested_interventions_unwind_exactly():
    model = tiny_llama()
    before = snapshot(model)
    with (
        intervene(model, region_for(model, 0.3, seed=0), "noise", std=1.0, seed=4),
        intervene(model, region_for(model, 0.3, seed=1), "remove"),
    ):
        pass
    assert_bit_identical(model, before)


def test_bad_input_errors_before_any_write():
    model = tiny_llama()
    region = region_for(model)
    before = snapshot(model)
    with (
        pytest.raises(ValueError, match="training intervention.*intervention=freeze runs"),
        intervene(model, region, "freeze"),
    ):
        pass
    with (
        pytest.raises(ValueError, match="unknown intervention 'remov': did you mean 'remove'"),
        intervene(model, region, "remov"),
    ):
        pass
    with pytest.raises(ValueError, match="std -1.0"), intervene(model, region, "noise", std=-1.0):
        pass
    bad = Region(
        masks={
            **region.masks,
            "model.layers.9.mlp.up_proj.weight": torch.ones(32, 16, dtype=torch.bool),
        }
    )
    with (
        pytest.raises(ValueError, match="not a parameter of the model"),
        intervene(model, bad, "remove"),
    ):
        pass
    wrong = Region(masks={"model.layers.0.mlp.up_proj.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="has shape"), intervene(model, wrong, "remove"):
        pass
    assert_bit_identical(model, before)
    assert set(INTERVENTIONS) == {
        "remove",
        "scale",
        "noise",
        "freeze",
        "train_region",
        "ablate",
        "fix",
        "steer",
    }


def test_removing_entries_that_are_already_zero_is_an_error():
    model = tiny_llama()
    region = region_for(model)
    name = "model.layers.0.mlp.up_proj.weight"
    with torch.no_grad():
        model.get_parameter(name)[region.masks[name]] = 0.0
    before = snapshot(model)
    only = Region(masks={name: region.masks[name]})
    with (
        pytest.raises(ValueError, match=r"changes none of its \d+ entries: they are all 0"),
        intervene(model, only, "remove"),
    ):
        pass
    assert_bit_identical(model, before)
    # partly zero: a result, with the honest count
    with intervene(model, region, "remove") as applied:
        assert applied.changed == applied.selected - int(only.masks[name].sum())
    # scale by 1 is a legitimate identity control: nothing changed, no error
    with intervene(model, region, "scale", factor=1.0) as applied:
        assert applied.changed == 0 and applied.selected == region.numel


def test_relative_noise_is_in_units_of_each_matrix_rms():
    model = tiny_llama()
    region = region_for(model, ratio=0.5)
    before = snapshot(model)
    name = "model.layers.1.mlp.down_proj.weight"
    with torch.no_grad():
        model.get_parameter(name).mul_(100.0)  # one matrix on a very different scale
    big = snapshot(model)
    deltas = {}
    for relative in (False, True):
        with intervene(model, region, "noise", std=0.1, seed=3, relative=relative):
            deltas[relative] = {
                n: (p.detach() - big[n])[region.masks[n]]
                for n, p in model.named_parameters()
                if n in region.masks
            }
    for n, d in deltas[True].items():
        rms = float(big[n].float().square().mean().sqrt())
        assert abs(float(d.std()) / (0.1 * rms) - 1) < 0.25, n
        # the same seeded draw, scaled: relative noise = absolute noise * rms
        torch.testing.assert_close(d, deltas[False][n] * rms, rtol=1e-3, atol=1e-5)
    for n, d in deltas[False].items():  # absolute: the same 0.1 whatever the matrix's scale
        assert abs(float(d.std()) / 0.1 - 1) < 0.25, n
    with torch.no_grad():
        model.get_parameter(name).div_(100.0)
    assert all(torch.allclose(p, before[n]) for n, p in model.named_parameters())


def test_a_mask_on_either_alias_of_a_tied_weight_is_applied_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=True,
        )
    ).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = snapshot(model)
    a = torch.zeros(32, 8, dtype=torch.bool)
    a[0] = True
    b = torch.zeros(32, 8, dtype=torch.bool)
    b[1] = True
    region = {"lm_head.weight": a, "model.embed_tokens.weight": b}
    with intervene(model, region, "remove") as applied:
        assert applied.selected == 16
        assert (model.model.embed_tokens.weight[:2] == 0).all()
        assert (model.model.embed_tokens.weight[2:] != 0).all()
    assert_bit_identical(model, before)
