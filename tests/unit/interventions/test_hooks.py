"""Activation interventions (ablate, fix, steer): in a recorded forward the region's units hold
0, their reference value or their shifted value (references computed here with our own hooks and
loops), every weight is bit-identical during and after, and no hook is left behind."""

from __future__ import annotations

import pytest
import torch
from archs import build

from regionbench.interventions.hooks import activation_sites
from regionbench.interventions.kinds import intervene
from regionbench.models.residual import residual_sides
from regionbench.models.scope import scoped_params
from regionbench.models.units import head_units, neuron_units
from regionbench.regions.dimensions import dimension_region
from regionbench.regions.units import units_region
from regionbench.testing import tiny_llama

GEN = torch.Generator().manual_seed(0)
WINDOWS = {lang: torch.randint(3, 64, (6, 12), generator=GEN) for lang in ("aa", "bb")}
PROBE = torch.randint(3, 64, (2, 10), generator=GEN)


def _neuron_region(model, layer: int, which: list[int]):
    layers = neuron_units(model)
    chosen = [torch.zeros(lu.count, dtype=torch.bool) for lu in layers]
    chosen[layer][which] = True
    return units_region(layers, chosen, scoped_params(model))


def _recorded_input(model, module_name: str, ids: torch.Tensor) -> torch.Tensor:
    """The input of `module_name` in one forward pass, recorded by a hook of the test's own
    (registered after the intervention's, so it sees what the module computes with)."""
    seen = []
    module = model.get_submodule(module_name)
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0]


def _hook_counts(model) -> list[tuple[int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]


def _state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _bit_identical(model, before: dict) -> bool:
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.fixture()
def model():
    return tiny_llama(hidden=16, inter=32)


def test_ablate_zeroes_the_neurons_activation_and_leaves_weights_and_no_hooks(model):
    region = _neuron_region(model, 1, [3, 9])
    before, hooks = _state(model), _hook_counts(model)
    down = "model.layers.1.mlp.down_proj"
    plain = _recorded_input(model, down, PROBE)
    with intervene(model, region, "ablate") as applied:
        assert applied.selected == 2 and applied.changed == 0
        ablated = _recorded_input(model, down, PROBE)
        assert _bit_identical(model, before)
    assert bool((ablated[..., [3, 9]] == 0).all())
    keep = [j for j in range(32) if j not in (3, 9)]
    assert torch.equal(ablated[..., keep], plain[..., keep])
    assert _bit_identical(model, before) and _hook_counts(model) == hooks


def test_ablating_a_neuron_is_removing_its_weights(model):
    """LLaMA's FFN has no biases: zeroing neuron j's rows and column gives the same model as
    zeroing its activation."""
    region = _neuron_region(model, 0, [5])
    with torch.no_grad(), intervene(model, region, "ablate"):
        ablated = model(input_ids=PROBE).logits
    with torch.no_grad(), intervene(model, region, "remove"):
        removed = model(input_ids=PROBE).logits
    assert torch.allclose(ablated, removed, atol=1e-6)


def test_fix_sets_the_activation_to_its_median_on_the_reference_language(model):
    region = _neuron_region(model, 1, [4])
    down = "model.layers.1.mlp.down_proj"
    # Kojima's on_p50 by hand: each reference sample's mean activation, then their median
    means = [_recorded_input(model, down, w[None])[0, :, 4].mean() for w in WINDOWS["bb"]]
    expected = torch.stack(means).median()
    before, hooks = _state(model), _hook_counts(model)
    with intervene(model, region, "fix", reference=WINDOWS, lang="bb"):
        fixed = _recorded_input(model, down, PROBE)
    assert torch.allclose(fixed[..., 4], torch.full_like(fixed[..., 4], float(expected)), atol=1e-6)
    every = [
        _recorded_input(model, down, w[None])[0, :, 4].mean() for lg in WINDOWS for w in WINDOWS[lg]
    ]
    with intervene(model, region, "fix", reference=WINDOWS, statistic="mean"):  # both languages
        fixed = _recorded_input(model, down, PROBE)
    assert torch.allclose(
        fixed[..., 4], torch.stack(every).mean().expand_as(fixed[..., 4]), atol=1e-6
    )
    assert _bit_identical(model, before) and _hook_counts(model) == hooks


def test_steer_adds_factor_times_the_mean_difference_of_two_languages(model):
    region = _neuron_region(model, 0, [2, 7])
    down = "model.layers.0.mlp.down_proj"

    def token_mean(lang):
        acts = torch.cat([_recorded_input(model, down, w[None])[0] for w in WINDOWS[lang]])
        return acts[:, [2, 7]].mean(dim=0)

    shift = token_mean("bb") - token_mean("aa")
    plain = _recorded_input(model, down, PROBE)
    before = _state(model)
    with intervene(model, region, "steer", reference=WINDOWS, steer=["aa", "bb"], factor=3.0):
        steered = _recorded_input(model, down, PROBE)
    assert torch.allclose(steered[..., [2, 7]], plain[..., [2, 7]] + 3.0 * shift, atol=1e-5)
    assert _bit_identical(model, before)


def test_a_head_region_ablates_its_channels_of_the_attention_writer_gqa_included():
    model = build("llama")  # 2 heads sharing one k/v group
    layers = head_units(model)
    chosen = [torch.zeros(2, dtype=torch.bool), torch.tensor([False, True])]
    region = units_region(layers, chosen, scoped_params(model))
    assert [(s.module, s.channels.tolist()) for s in activation_sites(model, region)] == [
        ("model.layers.1.self_attn.o_proj", list(range(8, 16)))
    ]
    o = "model.layers.1.self_attn.o_proj"
    with intervene(model, region, "ablate"):
        x = _recorded_input(model, o, PROBE)
    assert bool((x[..., 8:16] == 0).all()) and bool((x[..., :8] != 0).any())


def test_gpt2_conv1d_neuron_sites_are_rows_of_its_weight():
    model = build("gpt2")
    region = _neuron_region(model, 0, [11])
    assert [
        (s.module, s.on_input, s.channels.tolist()) for s in activation_sites(model, region)
    ] == [("transformer.h.0.mlp.c_proj", True, [11])]
    with intervene(model, region, "ablate"):
        x = _recorded_input(model, "transformer.h.0.mlp.c_proj", PROBE)
    assert bool((x[..., 11] == 0).all())


def test_a_dimension_region_acts_on_the_streams_readers_and_writers(model):
    sides = residual_sides(model)
    region = dimension_region(model, sides, [6], layers=[1])
    sites = {(s.module, s.on_input): s.channels.tolist() for s in activation_sites(model, region)}
    readers = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
    ]
    writers = ["self_attn.o_proj", "mlp.down_proj"]
    assert sites == {
        **{(f"model.layers.1.{m}", True): [6] for m in readers},
        **{(f"model.layers.1.{m}", False): [6] for m in writers},
    }


def test_a_region_without_a_whole_unit_is_one_line(model):
    layers = neuron_units(model)
    region = _neuron_region(model, 0, [1])
    region.masks["model.layers.0.mlp.down_proj.weight"][0, 1] = False  # no longer whole
    with pytest.raises(ValueError, match="holds no whole unit"), intervene(model, region, "ablate"):
        pass
    assert layers and _hook_counts(model) == [(0, 0)] * len(list(model.modules()))


def test_hooks_are_removed_when_the_block_raises(model):
    region = _neuron_region(model, 0, [1])
    hooks = _hook_counts(model)
    with pytest.raises(RuntimeError), intervene(model, region, "ablate"):
        raise RuntimeError("boom")
    assert _hook_counts(model) == hooks
