"""Freeze training keeps the frozen set bit-identical, trains the rest, is reproducible, calls its
hooks at the promised steps; forgetting ratios and plots are right."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from regionbench.common.names import forgetting_metrics
from regionbench.common.packing import pack
from regionbench.config import InterventionConfig
from regionbench.interventions.training import check, train_frozen
from regionbench.interventions.weights import restore_after
from regionbench.report.plots import sweep_plot
from regionbench.report.run_figures import forgetting_curve
from regionbench.testing import tiny_llama

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tokenizer():
    """A character-level fast tokenizer with LLaMA's special ids (pad 0, <s> 1, </s> 2)."""
    chars = "abcdefghijklmnopqrstuvwxyz ."
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {c: i + 4 for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


TEXTS = {
    "xx": [f"the cat number {w} sat on the mat." for w in ("one", "two", "six", "ten")] * 3,
    "yy": ["a dog ran far away from home."] * 4,
}


def config(**kw) -> InterventionConfig:
    base = dict(
        name="freeze",
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


def random_masks(model, fraction=0.3, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.rand(p.shape, generator=g) < fraction
        for n, p in model.named_parameters()
        if "layers." in n
    }


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_frozen_entries_bit_identical_and_the_rest_trains(tokenizer):
    model = tiny_llama()
    masks = random_masks(model)
    full = "model.layers.0.mlp.down_proj.weight"
    masks[full] = torch.ones_like(masks[full])  # a parameter frozen as a whole
    before = snapshot(model)
    summary = train_frozen(model, tokenizer, TEXTS, masks, config(), progress=False)

    for name, p in model.named_parameters():
        old, new = before[name], p.detach()
        if name in masks:
            assert torch.equal(new[masks[name]], old[masks[name]]), name
            changed = (new != old)[~masks[name]]
            assert int(changed.sum()) == changed.numel(), name  # every unfrozen entry moved
        else:  # outside the region: embeddings, final norm, lm_head train too
            assert not torch.equal(new, old), name
    assert torch.equal(dict(model.named_parameters())[full], before[full])
    assert summary["frozen_params"] == sum(int(m.sum()) for m in masks.values())
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 2 * 16
    assert math.isfinite(summary["final_loss"])
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_region_object_and_none(tokenizer):
    model = tiny_llama()
    masks = random_masks(model, fraction=0.5)
    region = type("Region", (), {"masks": masks})()
    before = snapshot(model)
    train_frozen(model, tokenizer, TEXTS, region, config(steps=2), progress=False)
    for name, mask in masks.items():
        assert torch.equal(dict(model.named_parameters())[name][mask], before[name][mask])

    model = tiny_llama()
    before = snapshot(model)
    summary = train_frozen(model, tokenizer, TEXTS, None, config(steps=2), progress=False)
    assert summary["frozen_params"] == 0
    for name, p in model.named_parameters():
        changed = p.detach() != before[name]
        if name == "model.embed_tokens.weight":  # the padding row has no gradient and stays 0
            changed = changed[1:]
        assert int(changed.sum()) == changed.numel(), name


def test_same_seed_same_weights_other_seed_differs(tokenizer):
    def run(seed):
        model = tiny_llama()
        cfg = config(steps=3, grad_accum=2, warmup_steps=1, schedule="cosine")
        train_frozen(model, tokenizer, TEXTS, random_masks(model), cfg, seed=seed, progress=False)
        return snapshot(model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_eval_and_log_hooks_called_at_the_right_steps(tokenizer):
    evals, logs = [], []

    def eval_fn(step):
        evals.append(step)
        return {"ppl/xx": 10.0 - step, "forget/yy": 1.0 + step / 10}

    cfg = config(steps=5, eval_every=2, log_every=2)
    summary = train_frozen(
        model := tiny_llama(),
        tokenizer,
        TEXTS,
        None,
        cfg,
        eval_fn=eval_fn,
        log_fn=lambda m, s: logs.append((s, dict(m))),
        progress=False,
    )
    assert evals == [0, 2, 4, 5]
    assert [s for s, _ in logs] == [0, 2, 4, 5]
    assert set(logs[0][1]) == {"ppl/xx", "forget/yy"}  # no training loss before training
    for _, metrics in logs[1:]:
        assert {"train/loss", "train/lr", "train/grad_norm", "ppl/xx", "forget/yy"} <= set(metrics)
    assert [s for s, _ in summary["history"]] == [0, 2, 4, 5]
    assert summary["history"][2][1]["forget/yy"] == pytest.approx(1.4)
    assert not model.training

    logs.clear()
    train_frozen(
        tiny_llama(),
        tokenizer,
        TEXTS,
        None,
        config(steps=3, eval_every=0),
        log_fn=lambda m, s: logs.append((s, set(m))),
        progress=False,
    )
    assert [s for s, _ in logs] == [1, 2, 3]  # no eval_fn: only training metrics, every step


def test_restore_after_puts_weights_back(tokenizer):
    model = tiny_llama()
    before = snapshot(model)
    masks = random_masks(model)
    with restore_after(model) as snap:
        train_frozen(model, tokenizer, TEXTS, masks, config(steps=1), progress=False)
        assert not torch.equal(model.lm_head.weight, before["lm_head.weight"])
        moved = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
        assert snap.changed() == moved > 0
        assert moved <= sum(p.numel() for p in model.parameters()) - sum(
            int(m.sum()) for m in masks.values()
        )  # the frozen set never moves
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_save_model(tokenizer, tmp_path):
    no_dir = train_frozen(
        tiny_llama(), tokenizer, TEXTS, None, config(steps=1, save_model=True), progress=False
    )
    assert no_dir["saved_to"] is None  # without save_dir, saving is the caller's job
    out = tmp_path / "trained"
    summary = train_frozen(
        tiny_llama(),
        tokenizer,
        TEXTS,
        None,
        config(steps=1, save_model=True),
        save_dir=out,
        progress=False,
    )
    assert summary["saved_to"] == str(out)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()


def test_pack_shuffles_bos_doc_eos_documents(tokenizer):
    windows = pack(tokenizer, ["ab", "cde"], seq_len=3, seed=0)
    assert windows.shape == (3, 3)  # 4 + 5 tokens -> three windows, tail dropped
    flat = windows.flatten().tolist()
    assert flat[0] == 1 and flat.count(1) == 2 and flat.count(2) == 2
    orders = {
        tuple(pack(tokenizer, ["ab", "cde", "f", "gh"], 2, seed=s).flatten().tolist())
        for s in range(8)
    }
    assert len(orders) > 1  # the seed shuffles the documents
    with pytest.raises(ValueError, match="fewer than seq_len 64"):
        pack(tokenizer, ["ab"], seq_len=64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps 0 is not a positive integer"),
        ({"batch_size": 1.5}, "batch_size 1.5 is not a positive integer"),
        ({"seq_len": 1}, "seq_len 1 is not an integer >= 2"),
        ({"lr": 0.0}, "lr 0.0 is not a finite number > 0"),
        ({"weight_decay": -1.0}, "weight_decay -1.0 is not a finite number >= 0"),
        ({"warmup_steps": 9}, "warmup_steps 9 is more than steps 4"),
        ({"eval_every": True}, "eval_every True is not an integer >= 0"),
        ({"target_langs": []}, "target_langs .* is empty"),
        ({"schedule": "cosin"}, "schedule 'cosin': did you mean 'cosine'"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm nan"),
        ({"betas": [0.9]}, "betas \\[0.9\\] is not two numbers in \\[0, 1\\)"),
        ({"betas": [0.9, 1.0]}, "betas .* is not two numbers"),
        ({"decay_params": "al"}, "decay_params 'al': did you mean 'all'"),
        ({"packing": "document"}, "packing 'document': did you mean 'documents'"),
        ({"drop_long": True}, "drop_long=true needs intervention.packing=documents"),
        ({"freeze_exclude": ["("]}, "freeze_exclude '\\(' is not a valid regular expression"),
        ({"clip_frozen": 1}, "clip_frozen 1 is not a bool"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=f"intervention\\.{message}"):
        check(config(**change))


def test_a_mapping_config_is_the_freeze_intervention_with_those_settings(tokenizer):
    model = tiny_llama()
    summary = train_frozen(
        model,
        tokenizer,
        TEXTS,
        None,
        {"steps": 2, "warmup_steps": 0, "seq_len": 16},
        progress=False,
    )
    assert summary["steps"] == 2.0 and dataclasses.asdict(config())["lr"] == 1e-2
    with pytest.raises(ValueError, match="intervention.steps 0 is not a positive integer"):
        train_frozen(model, tokenizer, TEXTS, None, {"steps": 0}, progress=False)


def test_bad_inputs_fail_before_training(tokenizer):
    model = tiny_llama()
    with pytest.raises(ValueError, match="unknown training language 'xy': did you mean"):
        train_frozen(model, tokenizer, TEXTS, None, config(target_langs=["xy"]))
    with pytest.raises(ValueError, match="did you mean 'lm_head.weight'"):
        train_frozen(
            model, tokenizer, TEXTS, {"lm_head.weigh": torch.ones(1, dtype=torch.bool)}, config()
        )
    with pytest.raises(ValueError, match="has shape"):
        train_frozen(
            model, tokenizer, TEXTS, {"lm_head.weight": torch.ones(2, dtype=torch.bool)}, config()
        )
    with pytest.raises(ValueError, match="not a torch.bool"):
        train_frozen(
            model, tokenizer, TEXTS, {"lm_head.weight": model.lm_head.weight.detach()}, config()
        )
    everything = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="nothing to train"):
        train_frozen(model, tokenizer, TEXTS, everything, config())


def test_forgetting_metrics_arithmetic():
    before = {"xx": 100.0, "yy": 10.0, "zz": 4.0}
    after = {"xx": 25.0, "yy": 20.0, "zz": 12.0}
    m = forgetting_metrics(before, after, ["xx"])
    assert m == pytest.approx(
        {
            "learn/xx": 0.25,
            "learn/mean": 0.25,
            "learn/gmean": 0.25,
            "forget/yy": 2.0,
            "forget/zz": 3.0,
            "forget/mean": 2.5,
            "forget/gmean": 6**0.5,  # exp(mean(log 2, log 3))
        }
    )
    ppl = type("LangPerplexity", (), {})
    obj_before, obj_after = ppl(), ppl()
    obj_before.ppl, obj_after.ppl = 8.0, 2.0
    assert forgetting_metrics({"xx": obj_before}, {"xx": obj_after}, ["xx"]) == {
        "learn/xx": 0.25,
        "learn/mean": 0.25,
        "learn/gmean": 0.25,
    }
    with pytest.raises(ValueError, match="differ"):
        forgetting_metrics(before, {"xx": 1.0}, ["xx"])
    with pytest.raises(ValueError, match="not finite > 0"):
        forgetting_metrics({"xx": 0.0}, {"xx": 1.0}, ["xx"])


def test_plots_write_png(tmp_path):
    history = [
        (
            s,
            {
                "forget/yy": 1 + s / 10,
                "forget/mean": 1 + s / 10,
                "learn/xx": 1 / (1 + s),
                "train/loss": 3.0,
            },
        )
        for s in (0, 2, 4)
    ]
    path = forgetting_curve(history, tmp_path / "plots" / "forgetting.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no forget"):
        forgetting_curve([(0, {"train/loss": 1.0})], tmp_path / "x.png")

    rows = [
        {"ratio": r, "region": g, "seed": s, "ppl_ratio/mean": 1 + r * (g == "core") + s / 100}
        for r in (0.0, 0.01, 0.05)
        for g in ("core", "random")
        for s in (0, 1)
    ]
    line = sweep_plot(rows, "ratio", ["ppl_ratio/mean"], tmp_path / "sweep.png", group="region")
    bars = sweep_plot(rows, "region", ["ppl_ratio/mean", "seed"], tmp_path / "bars.png")
    assert line.read_bytes()[:8] == PNG_MAGIC and bars.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="'ppl/xx' is in no row"):
        sweep_plot(rows, "ratio", ["ppl/xx"], tmp_path / "bad.png")


def test_lr_schedule_warmup_then_decay(tokenizer):
    lrs = {}
    cfg = config(steps=4, warmup_steps=2, lr=1.0, eval_every=0)
    train_frozen(
        tiny_llama(),
        tokenizer,
        TEXTS,
        None,
        cfg,
        progress=False,
        log_fn=lambda m, s: lrs.setdefault(s, m["train/lr"]),
    )
    assert lrs == pytest.approx({1: 0.5, 2: 1.0, 3: 1.0, 4: 0.5})


def test_non_finite_loss_fails_and_leaves_weights_untouched(tokenizer):
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="at step 1"):
        train_frozen(model, tokenizer, TEXTS, None, config(), progress=False)
    for name, p in model.named_parameters():
        assert torch.equal(p.nan_to_num(), before[name].nan_to_num()), name
    assert not model.training and all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- low precision


def block_masks(model, fraction=0.05, seed=0) -> dict[str, torch.Tensor]:
    """A seeded random `fraction` of every transformer-block matrix."""
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.rand(p.shape, generator=g) < fraction
        for n, p in model.named_parameters()
        if "layers." in n and p.ndim >= 2
    }


def test_bf16_model_trains_at_the_paper_lr(tokenizer):
    """AdamW stepping bf16 weights directly rounds away updates below half an ulp: at lr 5e-5 it
    moved ~55% of these entries in 20 steps; fp32 master weights move >99%, like fp32 training
    rounded to bf16 would."""
    model = tiny_llama().to(torch.bfloat16)
    masks = block_masks(model)
    before = snapshot(model)
    n_windows = len(pack(tokenizer, TEXTS["xx"], 16, seed=0))
    # Full batch: a steady gradient direction, so every entry drifts ~20 * lr = 1e-3.
    cfg = config(
        steps=20,
        lr=5e-5,
        weight_decay=0.001,
        batch_size=n_windows,
        schedule="constant",
        warmup_steps=0,
        eval_every=10,
    )
    evaluated = []  # the evaluation during training sees the model as loaded, in bf16

    def eval_fn(step):
        evaluated.append((step, {p.dtype for p in model.parameters()}))
        return {}

    train_frozen(model, tokenizer, TEXTS, masks, cfg, eval_fn=eval_fn, progress=False)
    assert evaluated == [(s, {torch.bfloat16}) for s in (0, 10, 20)]

    # Two kinds of entries no bf16 model can move here, so they are not counted: norm gains of
    # exactly 1.0 (half an ulp, 2**-8, is more than 1e-3) and embedding rows of tokens absent from
    # the text (no gradient; weight decay moves them 1e-6 relative).
    seen = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    for doc in TEXTS["xx"]:
        seen.update(tokenizer(doc, add_special_tokens=False)["input_ids"])
    changed = counted = 0
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16, name
        new, old = p.detach(), before[name]
        mask = masks.get(name, torch.zeros_like(new, dtype=torch.bool))
        assert torch.equal(new[mask], old[mask]), name  # bit-identical frozen entries
        count = ~mask
        if p.ndim < 2:
            continue
        if name == "model.embed_tokens.weight":
            count[[i for i in range(len(new)) if i not in seen]] = False
        changed += int((new != old)[count].sum())
        counted += int(count.sum())
    assert counted > 5000
    assert changed / counted >= 0.99, f"only {changed / counted:.1%} of trainable entries moved"


def single_window(tokenizer):
    """A corpus packing into exactly one window, so the batch of the first step is known."""
    doc = "the cat sat on the mat."
    ids = [tokenizer.bos_token_id, *tokenizer(doc, add_special_tokens=False)["input_ids"]]
    ids.append(tokenizer.eos_token_id)
    return {"zz": [doc]}, torch.tensor([ids])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_norm_is_the_norm_of_the_unfrozen_gradient(tokenizer, dtype):
    model = tiny_llama().to(dtype)
    masks = random_masks(model, fraction=0.5)
    # lm_head carries much of the gradient: freezing half of it moves the two norms apart.
    g = torch.Generator().manual_seed(1)
    masks["lm_head.weight"] = torch.rand(model.lm_head.weight.shape, generator=g) < 0.5
    texts, batch = single_window(tokenizer)
    reference = copy.deepcopy(model).train()
    reference(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    unfrozen = everything = 0.0
    for name, p in reference.named_parameters():
        grad = p.grad.double()
        everything += float(grad.square().sum())
        unfrozen += float(
            grad[~masks[name]].square().sum() if name in masks else grad.square().sum()
        )

    logs = []
    cfg = config(
        target_langs=["zz"], steps=1, batch_size=1, seq_len=batch.shape[1], max_grad_norm=1e-3
    )
    train_frozen(
        model, tokenizer, texts, masks, cfg, log_fn=lambda m, s: logs.append(m), progress=False
    )
    reported = logs[0]["train/grad_norm"]
    assert reported == pytest.approx(math.sqrt(unfrozen), rel=1e-5)
    assert math.sqrt(everything) > 1.05 * reported  # ~10% apart: the frozen entries are out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tied_and_wholly_frozen(tokenizer, dtype):
    """Tied embeddings (one master, one gradient hook for two names, masked by the alias),
    a parameter frozen as a whole (no master) and fp32 accumulation over micro-batches."""
    model = tiny_llama().to(dtype)
    model.lm_head.weight = model.model.embed_tokens.weight
    masks = random_masks(model)
    whole = "model.layers.1.mlp.up_proj.weight"
    masks[whole] = torch.ones_like(masks[whole])
    g = torch.Generator().manual_seed(1)
    masks["lm_head.weight"] = torch.rand(model.lm_head.weight.shape, generator=g) < 0.3
    model.model.norm.weight.requires_grad_(False)  # flags come back as they were
    params = dict(model.named_parameters(remove_duplicate=False))
    before = {n: p.detach().clone() for n, p in params.items()}
    train_frozen(model, tokenizer, TEXTS, masks, config(grad_accum=2), progress=False)

    assert params["lm_head.weight"] is params["model.embed_tokens.weight"]
    for name, p in params.items():
        assert p.dtype == dtype and p.grad is None, name
        assert p.requires_grad == (name != "model.norm.weight"), name
        if name in masks:
            assert torch.equal(p.detach()[masks[name]], before[name][masks[name]]), name
            assert int((p.detach() != before[name])[~masks[name]].sum()) > 0 or name == whole
    assert torch.equal(params[whole], before[whole])
    assert not torch.equal(params["model.norm.weight"], before["model.norm.weight"])

    # The gradient hooks are gone: a plain backward leaves gradients on the model again.
    batch = torch.tensor([[1, 5, 6, 7, 2]])
    model(input_ids=batch, labels=batch).loss.backward()
    assert params["lm_head.weight"].grad is not None


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_infinite_gradient_with_a_finite_loss_never_reaches_the_weights(tokenizer, max_grad_norm):
    """fp16 overflow looks like this: the loss is fine, one gradient is not."""
    model = tiny_llama()
    before = snapshot(model)
    handle = model.model.layers[0].mlp.up_proj.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(FloatingPointError, match="gradient norm is (inf|nan) at step 1"):
        train_frozen(
            model, tokenizer, TEXTS, None, config(max_grad_norm=max_grad_norm), progress=False
        )
    handle.remove()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_a_callers_stale_gradients_are_neither_used_nor_lost(tokenizer):
    clean, dirty = tiny_llama(), tiny_llama()
    stale = {n: torch.full_like(p, 100.0) for n, p in dirty.named_parameters()}
    for n, p in dirty.named_parameters():
        p.grad = stale[n]
    for model in (clean, dirty):
        train_frozen(model, tokenizer, TEXTS, random_masks(model), config(), progress=False)
    for (n, a), (_, b) in zip(clean.named_parameters(), dirty.named_parameters(), strict=True):
        assert torch.equal(a, b), n  # the same update, as if no .grad had been there
        assert b.grad is stale[n]  # and the caller's gradient is back where it was


# --------------------------------------------------------------------- the authors' settings


def test_freeze_exclude_trains_matching_parameters_inside_the_region(tokenizer):
    """The authors' frozen set, `'layers.' in name and 'norm' not in name` of the region: the
    region's norm gains train, its matrix entries stay bit-identical."""
    model = tiny_llama()
    masks = random_masks(model, fraction=0.5)  # every block parameter, norm gains included
    norms = [n for n in masks if "norm" in n]
    assert norms
    before = snapshot(model)
    summary = train_frozen(
        model, tokenizer, TEXTS, masks, config(freeze_exclude=["norm"]), progress=False
    )
    for name, mask in masks.items():
        new, old = dict(model.named_parameters())[name].detach(), before[name]
        if name in norms:
            assert int((new != old)[mask].sum()) == int(mask.sum()), name  # trained anyway
        else:
            assert torch.equal(new[mask], old[mask]), name
    assert summary["frozen_params"] == sum(int(m.sum()) for n, m in masks.items() if n not in norms)


def test_decay_params_all_decays_norm_gains_too(tokenizer):
    """AdamW's decoupled decay shrinks a weight by lr * weight_decay * itself before the update:
    after one step the two settings differ by exactly that, on vectors only."""
    lr, wd = 1e-2, 0.1

    def one_step(decay_params):
        model = tiny_llama()
        cfg = config(steps=1, lr=lr, weight_decay=wd, decay_params=decay_params)
        train_frozen(model, tokenizer, TEXTS, None, cfg, progress=False)
        return snapshot(model)

    start, matrices, every = snapshot(tiny_llama()), one_step("matrices"), one_step("all")
    for name, p0 in start.items():
        if p0.ndim >= 2:
            assert torch.equal(matrices[name], every[name]), name
        else:
            torch.testing.assert_close(
                matrices[name] - every[name], p0 * lr * wd, rtol=1e-3, atol=1e-8
            )


def test_betas_reach_adamw(tokenizer, monkeypatch):
    seen = []
    real = torch.optim.AdamW

    def spy(groups, **kwargs):
        seen.append(kwargs)
        return real(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    train_frozen(tiny_llama(), tokenizer, TEXTS, None, config(steps=1), progress=False)
    train_frozen(
        tiny_llama(), tokenizer, TEXTS, None, config(steps=1, betas=[0.9, 0.95]), progress=False
    )
    assert [k["betas"] for k in seen] == [(0.9, 0.999), (0.9, 0.95)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clip_frozen_counts_the_frozen_gradients_in_the_clipped_norm(tokenizer, dtype):
    model = tiny_llama().to(dtype)
    masks = random_masks(model, fraction=0.5)
    g = torch.Generator().manual_seed(1)
    masks["lm_head.weight"] = torch.rand(model.lm_head.weight.shape, generator=g) < 0.5
    texts, batch = single_window(tokenizer)
    reference = copy.deepcopy(model).train()
    reference(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    everything = sum(float(p.grad.double().square().sum()) for p in reference.parameters())
    before = snapshot(model)
    logs = []
    cfg = config(
        target_langs=["zz"],
        steps=1,
        batch_size=1,
        seq_len=batch.shape[1],
        max_grad_norm=1e-3,
        clip_frozen=True,
    )
    train_frozen(
        model, tokenizer, texts, masks, cfg, log_fn=lambda m, s: logs.append(m), progress=False
    )
    assert logs[0]["train/grad_norm"] == pytest.approx(math.sqrt(everything), rel=1e-5)
    for name, mask in masks.items():  # still frozen
        assert torch.equal(dict(model.named_parameters())[name][mask], before[name][mask]), name


def test_documents_packing_trains_on_padded_documents_with_the_padding_masked(tokenizer):
    texts = {"ss": ["ab cd", "efg", "hij klm nop", "q", "a long document of more than sixteen"]}
    model = tiny_llama()
    seen = []

    def record(module, args, kwargs):
        seen.append({k: kwargs[k].clone() for k in ("input_ids", "attention_mask", "labels")})

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    cfg = config(
        target_langs=["ss"], steps=3, batch_size=3, packing="documents", drop_long=True, seq_len=16
    )
    summary = train_frozen(model, tokenizer, texts, None, cfg, progress=False)
    handle.remove()
    assert summary["samples"] == 4  # the long document is left out
    lengths = {len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 2 for d in texts["ss"]}
    real = 0
    for inputs in seen:
        mask = inputs["attention_mask"].bool()
        assert (inputs["input_ids"][:, 0] == tokenizer.bos_token_id).all()
        assert torch.equal(inputs["labels"] == -100, ~mask)  # the padding: no target, no attention
        assert set(mask.sum(dim=1).tolist()) <= lengths - {max(lengths)}
        rows = mask.sum(dim=1)
        last = inputs["input_ids"][torch.arange(len(rows)), rows - 1]
        assert (last == tokenizer.eos_token_id).all()  # each document ends with its EOS
        real += int(mask.sum())
    assert summary["tokens"] == real
