"""train_region trains exactly the region: every other entry bit-identical, every region entry
moved, AdamW's state and the fp32 masters of the region's size only; it is freeze's loop (the
same weights as freezing the region's complement), reproducible, and refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch

from regionbench.config import InterventionConfig, RunConfig
from regionbench.interventions import kinds
from regionbench.interventions.training import train_frozen, train_region
from regionbench.testing import char_tokenizer, tiny_llama

TEXTS = {"xx": [f"the cat number {w} sat on the mat." for w in ("one", "two", "six", "ten")] * 3}


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def config(**kw) -> InterventionConfig:
    base = dict(
        name="train_region",
        target_langs=["xx"],
        warmup_steps=0,
        steps=4,
        lr=1e-2,
        weight_decay=0.1,
        batch_size=2,
        seq_len=16,
        eval_every=2,
    )
    return InterventionConfig(**(base | kw))


def region_masks(model, fraction=0.1, seed=0) -> dict[str, torch.Tensor]:
    """Random entries of every block matrix, one FFN neuron (a row of gate/up, a column of
    down: what `region=neurons` selects) and one parameter as a whole."""
    g = torch.Generator().manual_seed(seed)
    masks = {
        n: torch.rand(p.shape, generator=g) < fraction
        for n, p in model.named_parameters()
        if "layers." in n and p.ndim >= 2
    }
    for name, index in (("gate_proj", (3, slice(None))), ("down_proj", (slice(None), 3))):
        full = f"model.layers.1.mlp.{name}.weight"
        masks[full][index] = True
    masks["model.layers.0.self_attn.v_proj.weight"][:] = True
    return masks


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Captured:
    """Every AdamW the training builds, to read its state afterwards."""

    def __init__(self, monkeypatch):
        self.optimizers = []
        real = torch.optim.AdamW
        captured = self

        class Spy(real):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                captured.optimizers.append(self)

        monkeypatch.setattr(torch.optim, "AdamW", Spy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_only_the_region_moves_and_the_optimizer_holds_only_the_region(
    tokenizer, monkeypatch, dtype
):
    model = tiny_llama().to(dtype)
    masks = region_masks(model)
    size = sum(int(m.sum()) for m in masks.values())
    total = sum(p.numel() for p in model.parameters())
    before = snapshot(model)
    spy = Captured(monkeypatch)
    lr = 1e-2 if dtype == torch.float32 else 5e-2  # a bf16 entry moves by > half an ulp
    summary = train_region(model, tokenizer, TEXTS, masks, config(lr=lr), progress=False)

    for name, p in model.named_parameters():
        new, old = p.detach(), before[name]
        assert new.dtype == dtype, name
        mask = masks.get(name)
        if mask is None:  # embeddings, norms, lm_head: not in the region
            assert torch.equal(new, old), name
            continue
        assert torch.equal(new[~mask], old[~mask]), name  # bit-identical outside
        assert bool((new[mask] != old[mask]).all()), name  # every region entry moved

    (optimizer,) = spy.optimizers
    tensors = [t for group in optimizer.param_groups for t in group["params"]]
    assert all(t.ndim == 1 and t.dtype == torch.float32 for t in tensors)  # flat fp32 masters
    assert sum(t.numel() for t in tensors) == size
    state = [(k, v) for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    assert {k for k, _ in state} == {"exp_avg", "exp_avg_sq"}
    assert sum(v.numel() for _, v in state) == 2 * size  # two moments per region entry
    assert summary["optimizer_state"] == 2 * size
    assert summary["master_params"] == summary["trainable_params"] == size
    assert summary["frozen_params"] == total - size
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_it_is_freezes_loop_on_the_complement(tokenizer):
    """Training only R and freezing everything but R are one computation: the same batches,
    schedule and AdamW arithmetic on the same entries (no clipping: the clipped norm is summed in
    another order, which moves the last bits)."""
    cfg = dict(max_grad_norm=None, steps=3, grad_accum=2, warmup_steps=1, schedule="cosine")
    model = tiny_llama()
    masks = region_masks(model)
    train_region(model, tokenizer, TEXTS, masks, config(**cfg), seed=3, progress=False)
    trained = snapshot(model)

    model = tiny_llama()
    complement = {
        n: ~masks[n] if n in masks else torch.ones_like(p, dtype=torch.bool)
        for n, p in model.named_parameters()
    }
    train_frozen(model, tokenizer, TEXTS, complement, config(**cfg), seed=3, progress=False)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), trained[name], rtol=1e-6, atol=1e-7)


def test_same_seed_same_weights_other_seed_differs(tokenizer):
    def run(seed):
        model = tiny_llama()
        train_region(
            model, tokenizer, TEXTS, region_masks(model), config(), seed=seed, progress=False
        )
        return snapshot(model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_curves_and_saved_model_as_freeze(tokenizer, tmp_path):
    steps = []
    model = tiny_llama()
    summary = train_region(
        model,
        tokenizer,
        TEXTS,
        type("Region", (), {"masks": region_masks(model)})(),  # any object with .masks
        config(steps=5, eval_every=2, save_model=True),
        eval_fn=lambda step: steps.append(step) or {"learn/xx": 1.0},
        progress=False,
        save_dir=tmp_path / "model",
    )
    assert steps == [0, 2, 4, 5]
    assert [s for s, _ in summary["history"]] == [0, 2, 4, 5]
    assert (tmp_path / "model" / "config.json").is_file()
    assert summary["saved_to"] == str(tmp_path / "model")


def test_freeze_exclude_keeps_matching_parameters_fixed(tokenizer):
    model = tiny_llama()
    masks = region_masks(model)
    before = snapshot(model)
    train_region(model, tokenizer, TEXTS, masks, config(freeze_exclude=["v_proj"]), progress=False)
    for name, p in model.named_parameters():
        if "v_proj" in name:
            assert torch.equal(p.detach(), before[name]), name
        elif name in masks:
            assert not torch.equal(p.detach(), before[name]), name


def test_what_it_cannot_do_is_a_one_line_error(tokenizer):
    model = tiny_llama()
    with pytest.raises(ValueError, match="needs a region"):
        train_region(model, tokenizer, TEXTS, None, config(), progress=False)
    empty = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="nothing to train"):
        train_region(model, tokenizer, TEXTS, empty, config(), progress=False)
    with pytest.raises(ValueError, match="clip_frozen=false"):
        train_region(model, tokenizer, TEXTS, region_masks(model), config(clip_frozen=True))
    run = RunConfig.from_cfg({"intervention": {"name": "train_region"}, "ratio": 0.0})
    with pytest.raises(ValueError, match="ratio=0: the region is empty"):
        kinds.check(run)
    kinds.check(RunConfig.from_cfg({"intervention": {"name": "train_region"}, "ratio": 0.01}))
    entry = kinds.intervention_kind("train_region")
    assert entry.trains and entry.word == "trained"
