"""Residual-stream dimensions and coordinates as regions, on LLaMA- and GPT-2-style layouts and
the other architectures: which matrices read or write the stream (checked by running each
module), exact entries against a direct computation, bit-exact interventions, and profiles."""

from __future__ import annotations

import itertools

import pytest
import torch
from archs import ARCHS, build

from regionbench.interventions.kinds import intervene
from regionbench.models.residual import hidden_size, residual_sides
from regionbench.regions.dimensions import (
    around_dims,
    coordinates_region,
    dimension_region,
    profile,
    stream_vectors,
)
from regionbench.regions.kinds import select
from regionbench.regions.select import exact_k

# The modules that write the residual stream, per architecture (written out by hand).
WRITERS = {
    "llama": {"self_attn.o_proj", "mlp.down_proj"},
    "qwen2": {"self_attn.o_proj", "mlp.down_proj"},
    "mistral": {"self_attn.o_proj", "mlp.down_proj"},
    "gemma": {"self_attn.o_proj", "mlp.down_proj"},
    "phi3": {"self_attn.o_proj", "mlp.down_proj"},
    "gpt2": {"attn.c_proj", "mlp.c_proj"},
    "gpt_neox": {"attention.dense", "mlp.dense_4h_to_h"},
    "opt": {"self_attn.out_proj", "fc2"},
    "bloom": {"self_attention.dense", "mlp.dense_4h_to_h"},
    "xglm": {"self_attn.out_proj", "fc2"},
}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_block_matrix_reads_or_writes_the_stream_as_its_module_does(arch):
    model = build(arch)
    *_, prefix, _, modules = ARCHS[arch]
    sides = residual_sides(model)
    expected = {f"{prefix}.{i}.{m}.weight" for i in range(2) for m in modules}
    assert set(sides) == expected
    assert {s.module for s in sides.values() if s.role == "writes"} == WRITERS[arch]
    hidden = hidden_size(model)
    for name, side in sides.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        weight = module.weight
        # Run the module itself: zero the weight's slice at hidden dim d and see what it did.
        d = 3
        with torch.no_grad():
            saved = weight.detach().clone()
            weight.index_fill_(side.axis, torch.tensor([d]), 0.0)
            n_in = weight.shape[1] if isinstance(module, torch.nn.Linear) else weight.shape[0]
            x = torch.randn(5, n_in)
            y = module(x)
            if side.role == "writes":  # output dim d no longer depends on the input
                bias = module.bias[d] if module.bias is not None else 0.0
                torch.testing.assert_close(y[:, d], torch.full((5,), float(bias)))
            else:  # the input's dim d no longer reaches the output
                x2 = x.clone()
                x2[:, d] += 10.0
                torch.testing.assert_close(module(x2), y)
                assert n_in == hidden
            weight.copy_(saved)


# What region.everywhere adds, per architecture (written out by hand): {name: axis of hidden
# dimensions} outside the blocks, and in every block. Gemma, GPT-2, OPT and BLOOM tie lm_head to
# the embedding (one tensor, named once); OPT's embedding is 8 wide, so project_in writes the
# stream (row d) and project_out reads it (column d); every LayerNorm has a bias, and so do the
# stream writers of GPT-2, NeoX, OPT and BLOOM.
NORM = {"weight": 0, "bias": 0}


def _entries(prefix: str, modules: dict[str, dict[str, int]]) -> dict[str, int]:
    return {f"{prefix}{m}.{p}": axis for m, params in modules.items() for p, axis in params.items()}


EVERYWHERE = {
    "llama": (
        {"model.embed_tokens.weight": 1, "lm_head.weight": 1, "model.norm.weight": 0},
        _entries("", {"input_layernorm": {"weight": 0}, "post_attention_layernorm": {"weight": 0}}),
    ),
    "gemma": (
        {"model.embed_tokens.weight": 1, "model.norm.weight": 0},
        _entries("", {"input_layernorm": {"weight": 0}, "post_attention_layernorm": {"weight": 0}}),
    ),
    "gpt2": (
        {"transformer.wte.weight": 1, "transformer.wpe.weight": 1}
        | _entries("transformer.", {"ln_f": NORM}),
        _entries("", {"ln_1": NORM, "ln_2": NORM, "attn.c_proj": {"bias": 0}})
        | _entries("", {"mlp.c_proj": {"bias": 0}}),
    ),
    "gpt_neox": (
        {"gpt_neox.embed_in.weight": 1, "lm_head.weight": 1}
        | _entries("gpt_neox.", {"final_layer_norm": NORM}),
        _entries("", {"input_layernorm": NORM, "post_attention_layernorm": NORM})
        | _entries("", {"attention.dense": {"bias": 0}, "mlp.dense_4h_to_h": {"bias": 0}}),
    ),
    "opt": (
        {
            "model.decoder.embed_positions.weight": 1,
            "model.decoder.project_in.weight": 0,
            "model.decoder.project_out.weight": 1,
        }
        | _entries("model.decoder.", {"final_layer_norm": NORM}),
        _entries("", {"self_attn_layer_norm": NORM, "final_layer_norm": NORM})
        | _entries("", {"self_attn.out_proj": {"bias": 0}, "fc2": {"bias": 0}}),
    ),
    "bloom": (
        {"transformer.word_embeddings.weight": 1}
        | _entries("transformer.", {"word_embeddings_layernorm": NORM, "ln_f": NORM}),
        _entries("", {"input_layernorm": NORM, "post_attention_layernorm": NORM})
        | _entries("", {"self_attention.dense": {"bias": 0}, "mlp.dense_4h_to_h": {"bias": 0}}),
    ),
}


@pytest.mark.parametrize("arch", EVERYWHERE)
def test_everywhere_adds_the_embeddings_lm_head_norms_and_writer_biases(arch):
    model = build(arch)
    *_, prefix, _, _ = ARCHS[arch]
    outside, per_block = EVERYWHERE[arch]
    expected = dict(outside)
    for i in range(2):
        expected |= {f"{prefix}.{i}.{name}": axis for name, axis in per_block.items()}
    sides = residual_sides(model)
    assert stream_vectors(model, sides) == expected

    dims = [2, 9]
    plain = dimension_region(model, sides, dims)
    region = dimension_region(model, sides, dims, everywhere=True)
    assert set(region.masks) == set(plain.masks) | set(expected)
    assert region.meta["everywhere"] == "true" and "everywhere" not in plain.meta
    params = dict(model.named_parameters())
    for name, mask in region.masks.items():
        if name in plain.masks:
            assert torch.equal(mask, plain.masks[name])  # the block matrices: as before
            continue
        direct = torch.zeros(params[name].shape, dtype=torch.bool)
        for index in itertools.product(*(range(n) for n in direct.shape)):
            direct[index] = index[expected[name]] in dims  # own loop over the entries
        assert torch.equal(mask, direct), name


@pytest.mark.parametrize("arch", EVERYWHERE)
def test_removing_a_dimension_everywhere_silences_it_in_the_stream(arch):
    """Block matrices only: the embedding still writes d. Everywhere: d is exactly 0 in every
    hidden state the model returns (embedding output, each block's, the final norm's)."""
    model = build(arch)
    sides, hidden, d = residual_sides(model), hidden_size(model), 5
    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(0))

    def stream() -> list[torch.Tensor]:
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
        return [h for h in states if h.shape[-1] == hidden]  # OPT's last is projected to 8

    with intervene(model, dimension_region(model, sides, [d]), "remove"):
        assert stream()[0][..., d].abs().min() > 0  # the embedding still writes d
    with intervene(model, dimension_region(model, sides, [d], everywhere=True), "remove"):
        states = stream()
        assert len(states) >= 2 and all(bool((h[..., d] == 0).all()) for h in states)
        assert all(h.abs().sum() > 0 for h in states)  # only d


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dimension_region_has_exactly_the_rows_and_columns_of_those_dims(arch):
    model = build(arch)
    sides = residual_sides(model)
    dims = [0, 5, 11]
    region = dimension_region(model, sides, dims)
    params = dict(model.named_parameters())
    expected = 0
    for name in sides:
        w = params[name]
        side = sides[name]
        direct = torch.zeros(w.shape, dtype=torch.bool)
        for d in dims:  # own loop over the entries
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    if (i if side.axis == 0 else j) == d:
                        direct[i, j] = True
        assert torch.equal(region.masks[name], direct), name
        expected += int(direct.sum())
    assert region.numel == expected
    layer1 = dimension_region(model, sides, dims, layers=[1], modules=["c_proj", "down_proj"])
    assert all(sides[n].layer == 1 for n, m in layer1.masks.items() if m.any())
    assert {sides[n].role for n, m in layer1.masks.items() if m.any()} == {"writes"}
    with pytest.raises(ValueError, match="outside the 16 hidden dimensions"):
        dimension_region(model, sides, [16])


def test_coordinates_region_is_exactly_the_listed_entries(tmp_path):
    model = build("llama")
    entries = [
        "model.layers.1.mlp.down_proj.weight[3, 7]",
        "model.layers.0.self_attn.q_proj.weight[0,0]",
    ]
    region = coordinates_region(model, entries)
    assert region.numel == 2
    assert bool(region.masks["model.layers.1.mlp.down_proj.weight"][3, 7])
    file = tmp_path / "coords.txt"
    file.write_text("# the super weight\n" + "\n".join(entries) + "\n")
    same = coordinates_region(model, str(file))
    assert all(torch.equal(region.masks[n], same.masks[n]) for n in region.masks)
    with pytest.raises(ValueError, match="did you mean 'model.layers.1.mlp.down_proj.weight'"):
        coordinates_region(model, ["model.layers.1.mlp.down_prj.weight[0, 0]"])
    with pytest.raises(ValueError, match="outside its shape"):
        coordinates_region(model, ["model.layers.1.mlp.down_proj.weight[16, 0]"])
    with pytest.raises(ValueError, match="is not 'param.name"):
        coordinates_region(model, ["down_proj[1;2]"])


@pytest.mark.parametrize("kind", ["remove", "scale", "noise"])
def test_interventions_on_dimension_and_coordinate_regions_restore_bit_exactly(kind):
    model = build("gpt2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sides = residual_sides(model)
    for region in (
        dimension_region(model, sides, [2, 9]),
        coordinates_region(model, ["transformer.h.0.mlp.c_proj.weight[5, 2]"]),
    ):
        with intervene(model, region, kind, factor=4.0, std=0.5, seed=1) as applied:
            assert applied.changed == region.numel
        for n, p in model.named_parameters():
            assert torch.equal(p.view(torch.int32), before[n].view(torch.int32)), n


def test_profile_counts_entries_per_hidden_dimension():
    model = build("llama")
    sides = residual_sides(model)
    hidden = hidden_size(model)
    region = dimension_region(model, sides, [4])
    prof = profile(region, sides, hidden)
    assert prof.top_dims(1) == [4] and prof.top_share(1) == 1.0 and prof.on_stream == region.numel
    assert prof.share_on([4]) == 1.0 and prof.share_on([5]) == 0.0
    # a region spread evenly: every dimension holds the same share
    even = {n: torch.ones(model.get_parameter(n).shape, dtype=torch.bool) for n in sides}
    prof = profile(type(region)(masks=even), sides, hidden)
    assert prof.top_share(4) == pytest.approx(4 / hidden)


def scores_for(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        lang: {n: torch.rand(p.shape, generator=g) for n, p in residual_sides_params(model)}
        for lang in ("aa", "bb")
    }


def residual_sides_params(model):
    params = dict(model.named_parameters())
    return [(n, params[n]) for n in residual_sides(model)]


def test_core_minus_outliers_and_outliers():
    model = build("llama")
    sides = residual_sides(model)
    scores = scores_for(model)
    ratio, dims = 0.05, [1, 6]
    core = select(scores, ratio, "core", langs=["aa", "bb"])
    minus = around_dims(scores, ratio, ["aa", "bb"], sides, dims, only=False)
    only = around_dims(scores, ratio, ["aa", "bb"], sides, dims, only=True)
    ranked = 0
    for name, side in sides.items():
        on = torch.zeros(core.masks[name].shape, dtype=torch.bool)
        on.index_fill_(side.axis, torch.tensor(dims), True)
        k = exact_k(ratio, on.numel())
        assert int(minus.masks[name].sum()) == int(core.masks[name].sum()) == k  # equal size
        assert not (minus.masks[name] & on).any()  # nothing on the outlier dims
        assert (core.masks[name] & ~on).logical_and(~minus.masks[name]).sum() == 0  # refilled
        assert not (only.masks[name] & ~on).any() and int(only.masks[name].sum()) == min(
            k, int(on.sum())
        )
        total = scores["aa"][name] + scores["bb"][name]
        rest = on & ~only.masks[name]
        if only.masks[name].any() and rest.any():  # the best-ranked entries on those dims
            assert total[only.masks[name]].min() >= total[rest].max()
            ranked += 1
    assert ranked == len(sides)  # in every matrix the core's size is below the dims' entries


def test_dimension_profile_plot_is_a_png_and_refuses_an_empty_region(tmp_path):
    from regionbench.report.run_figures import dimension_profile

    path = dimension_profile([3, 0, 9, 1], tmp_path / "p.png", title="t", marked=[2])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="needs a region with entries"):
        dimension_profile([0, 0], tmp_path / "q.png")
