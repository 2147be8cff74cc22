"""Neuron and head regions on ten architectures: the entries each unit owns, written out by hand
from each architecture's layout (fused [q|k|v] and [gate|up], NeoX/BLOOM's per-head interleave,
GPT-2's Conv1D [in, out], OPT's fc1/fc2 on the layer, grouped-query k/v), against the region
regionbench builds; removing it zeroes exactly those entries and restores them bit-exactly."""

from __future__ import annotations

import pytest
import torch
from archs import ARCHS, build

from regionbench.interventions.kinds import intervene
from regionbench.models.scope import scoped_params
from regionbench.models.units import head_units, neuron_units
from regionbench.regions.units import (
    lape_region,
    unit_scores,
    unit_share,
    units_region,
    whole_units,
)

ALL = slice(None)


def rows(a, b):
    return (slice(a, b), ALL)


def cols(a, b):
    return (ALL, slice(a, b))


# Neuron 5 of block 1: (module in the block, the slice of its weight) for every matrix, by hand.
NEURON_5 = {
    "llama": [
        ("mlp.gate_proj", rows(5, 6)),
        ("mlp.up_proj", rows(5, 6)),
        ("mlp.down_proj", cols(5, 6)),
    ],
    "qwen2": [
        ("mlp.gate_proj", rows(5, 6)),
        ("mlp.up_proj", rows(5, 6)),
        ("mlp.down_proj", cols(5, 6)),
    ],
    "mistral": [
        ("mlp.gate_proj", rows(5, 6)),
        ("mlp.up_proj", rows(5, 6)),
        ("mlp.down_proj", cols(5, 6)),
    ],
    "gemma": [
        ("mlp.gate_proj", rows(5, 6)),
        ("mlp.up_proj", rows(5, 6)),
        ("mlp.down_proj", cols(5, 6)),
    ],
    # gate_up_proj: rows [0, 32) gate, [32, 64) up
    "phi3": [
        ("mlp.gate_up_proj", rows(5, 6)),
        ("mlp.gate_up_proj", rows(37, 38)),
        ("mlp.down_proj", cols(5, 6)),
    ],
    # Conv1D stores [in, out]
    "gpt2": [("mlp.c_fc", cols(5, 6)), ("mlp.c_proj", rows(5, 6))],
    "gpt_neox": [("mlp.dense_h_to_4h", rows(5, 6)), ("mlp.dense_4h_to_h", cols(5, 6))],
    "opt": [("fc1", rows(5, 6)), ("fc2", cols(5, 6))],
    "bloom": [("mlp.dense_h_to_4h", rows(5, 6)), ("mlp.dense_4h_to_h", cols(5, 6))],
    "xglm": [("fc1", rows(5, 6)), ("fc2", cols(5, 6))],
}
# Head 1 of block 0 alone (head_dim 8 everywhere; the GQA models have 2 heads sharing 1 k/v
# group, which a region holds only with both heads).
HEAD_1 = {
    "llama": [("self_attn.q_proj", rows(8, 16)), ("self_attn.o_proj", cols(8, 16))],
    "qwen2": [("self_attn.q_proj", rows(8, 16)), ("self_attn.o_proj", cols(8, 16))],
    "mistral": [("self_attn.q_proj", rows(8, 16)), ("self_attn.o_proj", cols(8, 16))],
    "gemma": [("self_attn.q_proj", rows(8, 16)), ("self_attn.o_proj", cols(8, 16))],
    # qkv_proj: q rows [0, 16), k [16, 24), v [24, 32)
    "phi3": [("self_attn.qkv_proj", rows(8, 16)), ("self_attn.o_proj", cols(8, 16))],
    # c_attn [in, 3·16]: q cols [0, 16), k [16, 32), v [32, 48) (multi-head: k/v per head)
    "gpt2": [
        ("attn.c_attn", cols(8, 16)),
        ("attn.c_attn", cols(24, 32)),
        ("attn.c_attn", cols(40, 48)),
        ("attn.c_proj", rows(8, 16)),
    ],
    # query_key_value rows h·24 + [q 0:8 | k 8:16 | v 16:24]
    "gpt_neox": [("attention.query_key_value", rows(24, 48)), ("attention.dense", cols(8, 16))],
    "bloom": [
        ("self_attention.query_key_value", rows(24, 48)),
        ("self_attention.dense", cols(8, 16)),
    ],
    "opt": [
        ("self_attn.q_proj", rows(8, 16)),
        ("self_attn.k_proj", rows(8, 16)),
        ("self_attn.v_proj", rows(8, 16)),
        ("self_attn.out_proj", cols(8, 16)),
    ],
    "xglm": [
        ("self_attn.q_proj", rows(8, 16)),
        ("self_attn.k_proj", rows(8, 16)),
        ("self_attn.v_proj", rows(8, 16)),
        ("self_attn.out_proj", cols(8, 16)),
    ],
}
# What the GQA models add to HEAD_1 when head 0 is in the region too: their group's k/v rows.
GROUP_KV = {
    "llama": [("self_attn.k_proj", rows(0, 8)), ("self_attn.v_proj", rows(0, 8))],
    "qwen2": [("self_attn.k_proj", rows(0, 8)), ("self_attn.v_proj", rows(0, 8))],
    "mistral": [("self_attn.k_proj", rows(0, 8)), ("self_attn.v_proj", rows(0, 8))],
    "gemma": [("self_attn.k_proj", rows(0, 8)), ("self_attn.v_proj", rows(0, 8))],
    "phi3": [("self_attn.qkv_proj", rows(16, 32))],
}
# Head 0 of the models whose k/v rows are per head (the multi-head ones).
HEAD_0 = {
    "gpt2": [
        ("attn.c_attn", cols(0, 8)),
        ("attn.c_attn", cols(16, 24)),
        ("attn.c_attn", cols(32, 40)),
        ("attn.c_proj", rows(0, 8)),
    ],
    "gpt_neox": [("attention.query_key_value", rows(0, 24)), ("attention.dense", cols(0, 8))],
    "bloom": [
        ("self_attention.query_key_value", rows(0, 24)),
        ("self_attention.dense", cols(0, 8)),
    ],
    "opt": [
        ("self_attn.q_proj", rows(0, 8)),
        ("self_attn.k_proj", rows(0, 8)),
        ("self_attn.v_proj", rows(0, 8)),
        ("self_attn.out_proj", cols(0, 8)),
    ],
    "xglm": [
        ("self_attn.q_proj", rows(0, 8)),
        ("self_attn.k_proj", rows(0, 8)),
        ("self_attn.v_proj", rows(0, 8)),
        ("self_attn.out_proj", cols(0, 8)),
    ],
}
for arch in GROUP_KV:  # head 0 of a GQA model: its q rows and o columns
    HEAD_0[arch] = [(m, rows(0, 8) if s == rows(8, 16) else cols(0, 8)) for m, s in HEAD_1[arch]]


def _expected(model, arch: str, layer: int, entries, scope: str = "matrices") -> dict:
    prefix = ARCHS[arch][2]
    params = scoped_params(model, scope)
    masks = {name: torch.zeros(p.shape, dtype=torch.bool) for name, p in params.items()}
    for module, where in entries:
        masks[f"{prefix}.{layer}.{module}.weight"][where] = True
    return masks


def _chosen(layers, layer: int, units: list[int]):
    out = []
    for lu in layers:
        mask = torch.zeros(lu.count, dtype=torch.bool)
        if lu.layer == layer:
            mask[units] = True
        out.append(mask)
    return out


def _same(region, expected):
    assert set(region.masks) == set(expected)
    for name, mask in expected.items():
        assert torch.equal(region.masks[name], mask), name


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_neuron_region_is_exactly_the_neurons_rows_and_column(arch):
    model = build(arch)
    layers = neuron_units(model)
    assert [lu.layer for lu in layers] == [0, 1]
    region = units_region(layers, _chosen(layers, 1, [5]), scoped_params(model))
    _same(region, _expected(model, arch, 1, NEURON_5[arch]))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_head_region_is_exactly_the_heads_rows_and_columns(arch):
    model = build(arch)
    layers = head_units(model)
    assert [lu.count for lu in layers] == [2, 2]
    params = scoped_params(model)
    one = units_region(layers, _chosen(layers, 0, [1]), params)
    _same(one, _expected(model, arch, 0, HEAD_1[arch]))
    both = units_region(layers, _chosen(layers, 0, [0, 1]), params)
    everything = HEAD_0[arch] + HEAD_1[arch] + GROUP_KV.get(arch, [])
    _same(both, _expected(model, arch, 0, everything))


@pytest.mark.parametrize(
    ("arch", "unit", "bias"),
    [
        ("gpt2", neuron_units, ("mlp.c_fc", [5])),
        ("opt", neuron_units, ("fc1", [5])),
        ("qwen2", head_units, ("self_attn.q_proj", list(range(8, 16)))),
        ("bloom", head_units, ("self_attention.query_key_value", list(range(24, 48)))),
    ],
)
def test_a_readers_bias_entries_belong_to_the_unit_when_the_scope_has_biases(arch, unit, bias):
    model = build(arch)
    layers = unit(model)
    layer, which = (1, [5]) if unit is neuron_units else (0, [1])
    region = units_region(layers, _chosen(layers, layer, which), scoped_params(model, "paper"))
    module, index = bias
    name = f"{ARCHS[arch][2]}.{layer}.{module}.bias"
    assert region.masks[name].nonzero().reshape(-1).tolist() == index
    writer_biases = [n for n in region.masks if n.endswith(".bias") and n != name]
    assert not any(region.masks[n].any() for n in writer_biases)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2", "gpt_neox", "opt"])
def test_removing_a_unit_region_zeroes_exactly_its_entries_and_restores_them(arch):
    model = build(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for layers, layer, which in ((neuron_units(model), 1, [5]), (head_units(model), 0, [1])):
        region = units_region(layers, _chosen(layers, layer, which), scoped_params(model))
        with intervene(model, region, "remove") as applied:
            assert applied.selected == region.numel
            for name, p in model.named_parameters():
                mask = region.masks.get(name, torch.zeros(p.shape, dtype=torch.bool))
                assert bool((p[mask] == 0).all()), name
                assert torch.equal(p[~mask], before[name][~mask]), name
        for name, p in model.named_parameters():
            assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_unit_scores_sum_each_units_entries(arch):
    """A unit's score is the sum of its entries' scores: with all-ones scores, the number of
    entries it owns (its k/v group's split between the group's heads)."""
    model = build(arch)
    params = scoped_params(model)
    ones = {n: torch.ones(p.shape) for n, p in params.items()}
    hidden = 16
    neurons = unit_scores(neuron_units(model), ones)
    per_neuron = {"llama": 3 * hidden, "phi3": 3 * hidden, "gpt2": 2 * hidden}[arch]
    assert all(torch.equal(t, torch.full_like(t, per_neuron)) for t in neurons)
    heads = unit_scores(head_units(model), ones)
    # q rows and o columns (8 × 16 each) + k and v rows: 8 × 16 each, shared by 2 heads (GQA)
    per_head = 2 * 8 * hidden + (2 * 8 * hidden / 2 if arch != "gpt2" else 2 * 8 * hidden)
    assert all(torch.equal(t, torch.full_like(t, per_head)) for t in heads)


def test_the_share_of_a_units_entries_projects_an_entry_region_onto_units():
    model = build("llama")
    layers = neuron_units(model)
    params = scoped_params(model)
    region = units_region(layers, _chosen(layers, 1, [5, 9]), params)
    assert [w.nonzero().reshape(-1).tolist() for w in whole_units(layers, region)] == [[], [5, 9]]
    # half of neuron 9's down column taken away: 40 of its 48 entries are left
    region.masks["model.layers.1.mlp.down_proj.weight"][:8, 9] = False
    share = unit_share(layers, region)
    assert share[1][9].item() == pytest.approx(40 / 48)
    assert share[1][5].item() == 1.0 and share[0].sum().item() == 0.0


def _lape_file(path, per_lang):
    """A file in LAPE's released format: `neuron[lang][layer]` = LongTensor of FFN indices,
    saved with torch.save as RUCAIBox's identify.py saves it."""
    torch.save([[torch.tensor(ix).long() for ix in blocks] for blocks in per_lang], path)
    return path


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2", "gpt_neox", "opt"])
def test_a_lape_file_is_the_neuron_region_of_its_indices(arch, tmp_path):
    """LAPE's seven languages in order (en, zh, fr, es, vi, id, ja): zh holds neuron 5 of block 1,
    en neuron 5 of block 0; the region of zh is that neuron's entries, the union both."""
    model = build(arch)
    params = scoped_params(model)
    per_lang = [[[5], []], [[], [5]], [[], []], [[], [5]], [[], []], [[], []], [[], []]]
    path = _lape_file(tmp_path / "tiny.neuron.pth", per_lang)
    zh = lape_region(model, path, params, lang="zh")
    _same(zh, _expected(model, arch, 1, NEURON_5[arch]))
    assert zh.meta["lang"] == "zh" and zh.meta["file_langs"] == "en,zh,fr,es,vi,id,ja"
    block0, block1 = (
        _expected(model, arch, 0, NEURON_5[arch]),
        _expected(model, arch, 1, NEURON_5[arch]),
    )
    _same(lape_region(model, path, params), {n: block0[n] | block1[n] for n in block0})
    named = lape_region(model, path, params, lang="bb", langs=["aa", "bb", *"cdefg"])
    _same(named, _expected(model, arch, 1, NEURON_5[arch]))


def test_a_bad_lape_file_is_one_line_naming_what_is_wrong(tmp_path):
    model = build("llama")
    params = scoped_params(model)

    def error(per_lang, **kw):
        path = _lape_file(tmp_path / "bad.neuron.pth", per_lang)
        with pytest.raises(ValueError) as info:
            lape_region(model, path, params, **kw)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "language 0 has 3 blocks, the model has 2" in error([[[1], [2], [3]]])
    assert "neuron 32 outside the 32 of model.layers.1" in error([[[1], [32]]])
    assert "has 2 languages; name them in order with region.file_langs" in error(
        [[[1], []], [[], [2]]], langs=["aa", "bb", "cc"]
    )
    assert "region.lang 'xx' is not in the file's languages: en, zh" in error(
        [[[1], []], [[], [2]]], lang="xx"
    )
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="is not a LAPE neuron file"):
        lape_region(model, tmp_path / "junk.pth", params)
    torch.save({"a": torch.zeros(2)}, tmp_path / "dict.pth")
    with pytest.raises(ValueError, match="is not a list over languages of lists over blocks"):
        lape_region(model, tmp_path / "dict.pth", params)
