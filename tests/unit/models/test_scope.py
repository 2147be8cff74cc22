"""The scope on ten architectures against hand-written lists of each block's weight matrices.

The expected module names are written out from the architectures (checked once against
`named_parameters`), never derived from `regionbench.models.scope`, so a wrong block finder or a bias
slipping into `matrices` shows up as a set difference.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from archs import ARCHS, GQA, LLAMA_MLP, build
from torch import nn

from regionbench.models.scope import SCOPES, scoped_params, transformer_blocks


def names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("arch", ARCHS)
def test_matrices_are_exactly_the_block_weight_matrices(arch):
    *_, prefix, _, modules = ARCHS[arch]
    expected = {f"{prefix}.{i}.{m}.weight" for i in range(2) for m in modules}
    got = scoped_params(build(arch))
    assert set(got) == expected
    assert list(got) == [n for n in names(build(arch)) if n in expected]  # named_parameters order


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_come_from_the_model_structure(arch):
    *_, prefix, block_class, _ = ARCHS[arch]
    blocks = transformer_blocks(build(arch))
    assert [n for n, _ in blocks] == [f"{prefix}.0", f"{prefix}.1"]
    assert {type(b).__name__ for _, b in blocks} == {block_class}


@pytest.mark.parametrize("arch", ARCHS)
def test_paper_adds_only_block_vectors_to_matrices(arch):
    prefix = ARCHS[arch][2]
    model = build(arch)
    paper, matrices = scoped_params(model, "paper"), scoped_params(model)
    assert set(paper) == {n for n in names(model) if n.startswith(f"{prefix}.")}
    assert set(matrices) < set(paper)
    assert all(paper[n].dim() == 1 for n in set(paper) - set(matrices))


def test_paper_on_llama_is_the_released_rule():
    model = build("llama")
    assert set(scoped_params(model, "paper")) == {n for n in names(model) if "layers." in n}


def test_paper_on_gpt2_has_block_norms_and_biases_only():
    paper = scoped_params(build("gpt2"), "paper")
    for n in ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.bias"]:
        assert f"transformer.h.1.{n}" in paper
    assert not {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    } & set(paper)
    assert all(n.startswith("transformer.h.") for n in paper)


def test_all_is_every_parameter():
    model = build("bloom")
    assert list(scoped_params(model, "all")) == names(model)


def test_include_and_exclude_narrow_the_scope():
    model = build("llama")
    mlp = scoped_params(model, include=[r"\.mlp\."])
    assert set(mlp) == {f"model.layers.{i}.{m}.weight" for i in range(2) for m in LLAMA_MLP}
    assert set(scoped_params(model, include=r"\.mlp\.", exclude=["gate", "up_proj"])) == {
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    }
    assert set(scoped_params(model, "all", include=["embed_tokens", "lm_head"])) == {
        "model.embed_tokens.weight",
        "lm_head.weight",
    }
    assert "model.norm.weight" not in scoped_params(model, "all", exclude=[r"norm\.weight$"])


def test_bad_scope_and_bad_regex_are_one_line_errors():
    model = build("llama")
    with pytest.raises(ValueError, match=r"did you mean 'matrices'\? choices: all, matrices, pa"):
        scoped_params(model, "matrix")
    with pytest.raises(ValueError, match=r"exclude pattern '\(' is not a valid regex"):
        scoped_params(model, exclude=["ok", "("])
    assert set(SCOPES) == {"matrices", "paper", "all"}


def test_empty_result_names_the_blocks_and_the_fix():
    with pytest.raises(ValueError) as err:
        scoped_params(build("gpt2"), include=["layers\\."], exclude=["norm"])
    msg = str(err.value)
    assert "\n" not in msg
    for part in [
        "'matrices'",
        "found 2 blocks under 'transformer.h'",
        "include=['layers\\\\.']",
        "exclude=['norm']",
        "importance.scope=all",
        "importance.include",
    ]:
        assert part in msg, (part, msg)


class Degenerate(nn.Module):
    """No transformer blocks: a list of bare Linear layers is not a stack of blocks."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.steps = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)


def test_model_without_blocks_has_a_clear_error_and_all_works():
    model = Degenerate()
    assert transformer_blocks(model) == []
    with pytest.raises(ValueError, match=r"'matrices' \(no transformer blocks found.*scope=all"):
        scoped_params(model)
    assert list(scoped_params(model, "all")) == [
        "embed.weight",
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
    ]
    assert list(scoped_params(model, "all", include="embed")) == ["embed.weight"]


class Encoder(nn.Module):
    """A torch-only model: no `_no_split_modules` (or a stale one), so the largest list of
    same-class blocks is the trunk, not the one-block adapter list."""

    def __init__(self, no_split):
        super().__init__()
        if no_split is not None:
            self._no_split_modules = no_split
        self.embed = nn.Embedding(10, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.adapters = nn.ModuleList([nn.Sequential(nn.Linear(8, 2))])


@pytest.mark.parametrize("no_split", [None, ["NotInThisModel"]])
def test_fallback_takes_the_largest_same_class_stack(no_split):
    model = Encoder(no_split)
    assert [n for n, _ in transformer_blocks(model)] == ["encoder.layers.0", "encoder.layers.1"]
    parts = [
        "self_attn.in_proj_weight",
        "self_attn.out_proj.weight",
        "linear1.weight",
        "linear2.weight",
    ]
    assert set(scoped_params(model)) == {f"encoder.layers.{i}.{p}" for i in range(2) for p in parts}


class Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(4, 8, bias=False), nn.Linear(8, 4, bias=False)


class MoEBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.experts = nn.ModuleList([Expert(), Expert()])


class MoE(nn.Module):
    # transformers also lists sub-block classes (experts, attention): blocks are the outermost.
    _no_split_modules = ["Expert", "MoEBlock"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([MoEBlock(), MoEBlock()])


def test_declared_classes_nested_in_blocks_are_part_of_them():
    model = MoE()
    assert [n for n, _ in transformer_blocks(model)] == ["blocks.0", "blocks.1"]
    assert len(scoped_params(model)) == 2 * (1 + 2 * 2)


def test_tied_embeddings_appear_once_and_stay_out_of_matrices():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**GQA, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    every = scoped_params(model, "all")
    assert len({id(p) for p in every.values()}) == len(every)
    assert "model.embed_tokens.weight" in every and "lm_head.weight" not in every
    assert not any("embed" in n or "lm_head" in n for n in scoped_params(model, "paper"))


class TiedIntoBlock(nn.Module):
    """A block projection that is the embedding: its first name is inside the blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 10), nn.Linear(4, 4))])
        self.embed = nn.Embedding(10, 4)
        self.embed.weight = self.blocks[0][0].weight


def test_a_block_weight_tied_outside_is_an_embedding():
    assert set(scoped_params(TiedIntoBlock())) == {"blocks.0.1.weight"}


class MultiHead(nn.Module):
    """Declared blocks win over a larger list of output heads (multi-token prediction)."""

    _no_split_modules = ["MoEBlock"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([MoEBlock(), MoEBlock()])
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(4, 500)) for _ in range(2)])


def test_the_declared_block_class_beats_a_larger_list():
    assert [n for n, _ in transformer_blocks(MultiHead())] == ["blocks.0", "blocks.1"]
