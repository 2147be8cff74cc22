"""Importance scores against independent computations on a tiny LLaMA."""

from __future__ import annotations

import pytest
import torch

from regionbench.importance import (
    METRICS,
    compute_importance,
    in_scope,
    iter_batches,
    scoped_params,
    token_windows,
)
from regionbench.testing import char_tokenizer, tiny_llama

TEXTS = {
    "aa": ["the cat sat on the mat.", "a dog ran far, far away.", "cats and dogs."] * 3,
    "bb": ["zyx wvu tsr qpo.", "mnl kji hgf edc ba."] * 4,
}
SEQ, BATCH = 12, 3


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def per_batch_grads(model, tok, docs):
    """Independent reference: plain autograd, one fp32 gradient dict per batch."""
    params = {n: p for n, p in model.named_parameters() if ".layers." in n and "norm" not in n}
    out = []
    for batch in iter_batches(token_windows(tok, docs, SEQ), BATCH):
        model.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()
        out.append({n: p.grad.float().clone() for n, p in params.items()})
    model.zero_grad(set_to_none=True)
    return params, out


def test_windows_are_bos_prefixed_docs_packed_with_tail_dropped(tok):
    docs = ["abc", "de", "fghij"]
    w = token_windows(tok, docs, 4)
    ids = [1] + tok("abc", add_special_tokens=False)["input_ids"] + [1] + \
        tok("de", add_special_tokens=False)["input_ids"] + [1] + \
        tok("fghij", add_special_tokens=False)["input_ids"]  # 13 tokens -> 3 windows of 4
    assert w.shape == (3, 4) and w.dtype == torch.long
    assert w.reshape(-1).tolist() == ids[:12]


def test_scope_defaults_to_block_params():
    model = tiny_llama()
    names = set(scoped_params(model))
    assert all(".layers." in n for n in names)
    assert not any("norm" in n for n in names)  # norm gains are vectors, not matrices
    assert "model.layers.0.input_layernorm.weight" in scoped_params(model, exclude=())
    assert not {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} & names
    assert in_scope("model.layers.1.mlp.up_proj.weight")
    assert not in_scope("model.layers.1.mlp.up_proj.weight", exclude=[r"mlp\."])
    assert in_scope("lm_head.weight", include=["lm_head"])
    mlp_only = scoped_params(model, include=[r"layers\..*mlp"], exclude=["down"])
    assert mlp_only and all("mlp" in n and "down" not in n for n in mlp_only)
    with pytest.raises(ValueError, match="no parameter is in scope"):
        compute_importance(model, None, TEXTS, "magnitude", include=["nothing_matches"])


def test_taylor_equals_independent_autograd_and_is_sum_then_abs(tok):
    model = tiny_llama()
    scores = compute_importance(model, tok, TEXTS, "taylor", seq_len=SEQ, batch_size=BATCH,
                                progress=False)
    assert set(scores) == set(TEXTS)
    for lang, docs in TEXTS.items():
        params, grads = per_batch_grads(model, tok, docs)
        assert len(grads) >= 2  # several batches, so the summation order matters
        assert set(scores[lang]) == set(params)
        for name, p in params.items():
            total = sum(g[name] for g in grads)
            expected = (p.detach() * total).abs()
            torch.testing.assert_close(scores[lang][name], expected, rtol=1e-5, atol=1e-8)
            assert scores[lang][name].dtype == torch.float32
        # abs-then-sum is a different metric (taylor_abs); taylor must not be it.
        abs_first = {n: sum((p.detach() * g[n]).abs() for g in grads) for n, p in params.items()}
        diff = max(float((abs_first[n] - scores[lang][n]).abs().max()) for n in params)
        assert diff > 1e-6
    assert not torch.equal(scores["aa"]["model.layers.0.mlp.up_proj.weight"],
                           scores["bb"]["model.layers.0.mlp.up_proj.weight"])


def test_taylor_abs_and_fisher_match_per_batch_definitions(tok):
    model = tiny_llama()
    docs = {"aa": TEXTS["aa"]}
    params, grads = per_batch_grads(model, tok, docs["aa"])
    for metric, f in [("taylor_abs", lambda x: x.abs()), ("fisher", lambda x: x.square())]:
        s = compute_importance(model, tok, docs, metric, seq_len=SEQ, batch_size=BATCH,
                               progress=False)["aa"]
        for name, p in params.items():
            expected = sum(f(p.detach() * g[name]) for g in grads)
            torch.testing.assert_close(s[name], expected, rtol=1e-5, atol=1e-10)


def test_bf16_model_accumulates_in_fp32(tok):
    model = tiny_llama().to(torch.bfloat16)
    docs = {"aa": TEXTS["aa"]}
    params, grads = per_batch_grads(model, tok, docs["aa"])
    s = compute_importance(model, tok, docs, "taylor", seq_len=SEQ, batch_size=BATCH,
                           progress=False)["aa"]
    for name, p in params.items():
        assert p.dtype == torch.bfloat16 and s[name].dtype == torch.float32
        fp32_sum = torch.zeros(p.shape)
        for g in grads:
            fp32_sum += g[name]
        torch.testing.assert_close(s[name], (p.detach().float() * fp32_sum).abs(),
                                   rtol=1e-5, atol=1e-10)


def test_accumulate_device_cpu_gives_same_scores(tok):
    model, texts = tiny_llama(), {"bb": TEXTS["bb"]}
    a = compute_importance(model, tok, texts, seq_len=SEQ, batch_size=BATCH, progress=False)
    b = compute_importance(model, tok, texts, seq_len=SEQ, batch_size=BATCH, progress=False,
                           accumulate_device="cpu")
    for lang in texts:
        for name in a[lang]:
            assert torch.equal(a[lang][name], b[lang][name])
            assert b[lang][name].device.type == "cpu"


def test_model_state_unchanged_and_scored_in_eval_mode(tok):
    model = tiny_llama()
    reference = compute_importance(model, tok, TEXTS, seq_len=SEQ, batch_size=BATCH,
                                   progress=False)
    # Dropout that would change the scores if scoring ran in train mode.
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    model.model.embed_tokens.weight.requires_grad_(False)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)  # in scope, frozen by caller
    stale = torch.full_like(model.lm_head.weight, 7.0)
    model.lm_head.weight.grad = stale
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    forwards = []

    def no_grad_buffers_alive(module, args):
        # Each batch's .grad is folded into the accumulators and freed at once: none survives
        # into the next forward (peak memory = weights + accumulators + activations).
        forwards.append(all(p.grad is None for p in module.parameters()))
        assert not module.training

    handle = model.register_forward_pre_hook(no_grad_buffers_alive)
    scores = compute_importance(model, tok, TEXTS, seq_len=SEQ, batch_size=BATCH, progress=False)
    handle.remove()

    assert len(forwards) > 4 and all(forwards)
    assert model.training
    assert all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.lm_head.weight.grad is stale
    assert all(p.grad is None for n, p in model.named_parameters() if n != "lm_head.weight")
    for lang in TEXTS:
        for name in reference[lang]:
            assert torch.equal(scores[lang][name], reference[lang][name])
    assert scores["aa"]["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0


def test_static_metrics_are_language_independent_and_seeded():
    model = tiny_llama()
    mag = compute_importance(model, None, TEXTS, "magnitude")
    assert mag["aa"] is mag["bb"]
    for name, p in scoped_params(model).items():
        assert torch.equal(mag["aa"][name], p.detach().abs())
    r0 = compute_importance(model, None, TEXTS, "random", seed=0)
    r0b = compute_importance(model, None, TEXTS, "random", seed=0)
    r1 = compute_importance(model, None, TEXTS, "random", seed=1)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert r0["aa"] is r0["bb"]
    assert torch.equal(r0["aa"][name], r0b["aa"][name])
    assert not torch.equal(r0["aa"][name], r1["aa"][name])
    assert float(r0["aa"][name].min()) >= 0 and float(r0["aa"][name].max()) < 1
    # A parameter's draw does not depend on what else is in scope.
    narrow = compute_importance(model, None, TEXTS, "random", seed=0, include=["layers.1.self"])
    assert torch.equal(narrow["aa"][name], r0["aa"][name])


def test_bad_inputs_fail_fast_with_one_line_errors(tok):
    model = tiny_llama()
    with pytest.raises(ValueError, match="unknown metric 'tailor': did you mean 'taylor'"):
        compute_importance(model, tok, TEXTS, "tailor")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        compute_importance(model, tok, {"aa": ["ab"]}, seq_len=SEQ, progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        compute_importance(model, tok, {}, progress=False)
    assert {"taylor", "magnitude", "random"} <= set(METRICS)
