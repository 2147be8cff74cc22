"""Importance scores against references written from the definition (own tokenization, own
windows, own per-sample loss and loop) on a tiny LLaMA, and the equal-weight rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regionbench.common.packing import pack
from regionbench.importance import METRICS, compute_importance, importance_samples
from regionbench.models.scope import scoped_params
from regionbench.regions.kinds import select
from regionbench.testing import char_tokenizer, tiny_llama

TEXTS = {
    "aa": ["the cat sat on the mat.", "a dog ran far, far away.", "cats and dogs."] * 3,
    "bb": ["zyx wvu tsr qpo.", "mnl kji hgf edc ba."] * 4,
}
SEQ, BATCH, N = 12, 3, 7  # 7 samples in batches of 3: the last batch is partial


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def reference_windows(tok, docs, seq_len, n):
    """The definition: each document is [BOS] ids [EOS], concatenated, cut into windows."""
    stream = []
    for doc in docs:
        stream += [
            tok.bos_token_id,
            *tok(doc, add_special_tokens=False)["input_ids"],
            tok.eos_token_id,
        ]
    return [stream[i * seq_len : (i + 1) * seq_len] for i in range(n)]


def sample_loss(model, window):
    """Mean next-token negative log-likelihood of one window, from the logits."""
    ids = torch.tensor([window])
    logits = model(input_ids=ids).logits[0, :-1].float()
    return -F.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).mean()


def block_matrices(model):
    return {n: p for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2}


def per_sample_grads(model, windows):
    """One fp32 gradient dict per sample, each from its own forward and backward."""
    params = block_matrices(model)
    out = []
    for window in windows:
        model.zero_grad(set_to_none=True)
        sample_loss(model, window).backward()
        out.append({n: p.grad.float().clone() for n, p in params.items()})
    model.zero_grad(set_to_none=True)
    return params, out


def test_taylor_is_abs_theta_times_summed_per_sample_gradients(tok):
    model = tiny_llama()
    scores = compute_importance(
        model, tok, TEXTS, "taylor", samples=N, seq_len=SEQ, batch_size=BATCH, progress=False
    )
    assert set(scores) == set(TEXTS)
    for lang, docs in TEXTS.items():
        params, grads = per_sample_grads(model, reference_windows(tok, docs, SEQ, N))
        assert set(scores[lang]) == set(params)
        for name, p in params.items():
            expected = (p.detach() * sum(g[name] for g in grads)).abs()
            torch.testing.assert_close(scores[lang][name], expected, rtol=1e-4, atol=1e-7)
            assert scores[lang][name].dtype == torch.float32
        # abs-then-sum is a different metric (taylor_abs); taylor must not be it.
        abs_first = {n: sum((p.detach() * g[n]).abs() for g in grads) for n, p in params.items()}
        assert max(float((abs_first[n] - scores[lang][n]).abs().max()) for n in params) > 1e-6


def test_taylor_abs_and_fisher_fold_each_batch_sum(tok):
    model = tiny_llama()
    params, grads = per_sample_grads(model, reference_windows(tok, TEXTS["aa"], SEQ, N))
    batches = [grads[i : i + BATCH] for i in range(0, N, BATCH)]  # 3 + 3 + 1
    for metric, f in [("taylor_abs", torch.abs), ("fisher", torch.square)]:
        s = compute_importance(
            model,
            tok,
            {"aa": TEXTS["aa"]},
            metric,
            samples=N,
            seq_len=SEQ,
            batch_size=BATCH,
            progress=False,
        )["aa"]
        for name, p in params.items():
            expected = sum(f(p.detach() * sum(g[name] for g in b)) for b in batches)
            torch.testing.assert_close(s[name], expected, rtol=1e-4, atol=1e-9)


def test_more_text_changes_neither_the_scores_nor_the_core(tok):
    """Equal weight: a language with three times the text is scored on the same samples."""
    model = tiny_llama()
    tripled = dict(TEXTS, aa=TEXTS["aa"] * 3)
    for samples in (N, None):
        a = compute_importance(
            model, tok, TEXTS, samples=samples, seq_len=SEQ, batch_size=BATCH, progress=False
        )
        b = compute_importance(
            model, tok, tripled, samples=samples, seq_len=SEQ, batch_size=BATCH, progress=False
        )
        for lang in TEXTS:
            for name in a[lang]:
                ratio = float(b[lang][name].sum() / a[lang][name].sum())
                assert math.isclose(ratio, 1.0, rel_tol=1e-2), (samples, lang, name, ratio)
        core_a, core_b = select(a, 0.05, "core"), select(b, 0.05, "core")
        assert all(torch.equal(core_a.masks[n], core_b.masks[n]) for n in core_a.masks)


def test_batching_does_not_change_taylor(tok):
    """A partial last batch weighs by its size: one batch of 7 == batches of 3, 3 and 1."""
    model = tiny_llama()
    kw = {"samples": N, "seq_len": SEQ, "progress": False}
    one = compute_importance(model, tok, TEXTS, batch_size=N, **kw)
    three = compute_importance(model, tok, TEXTS, batch_size=BATCH, **kw)
    for lang in TEXTS:
        for name in one[lang]:
            torch.testing.assert_close(one[lang][name], three[lang][name], rtol=1e-4, atol=1e-7)


def test_samples_none_takes_as_many_as_the_shortest_language(tok):
    windows = importance_samples(tok, TEXTS, SEQ, None)
    own = {lang: pack(tok, docs, SEQ).shape[0] for lang, docs in TEXTS.items()}
    assert own["aa"] != own["bb"]
    assert {w.shape for w in windows.values()} == {(min(own.values()), SEQ)}
    for lang, docs in TEXTS.items():
        expected = reference_windows(tok, docs, SEQ, min(own.values()))
        assert windows[lang].tolist() == expected


def test_packing_reads_a_stream_only_as_far_as_needed(tok):
    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield "the cat sat on the mat."
            i += 1

    w = pack(tok, endless(), SEQ, n_windows=5)
    assert w.tolist() == reference_windows(tok, ["the cat sat on the mat."] * 10, SEQ, 5)
    assert len(read) <= 512  # a chunk or two, not the whole (endless) stream


def test_bf16_model_accumulates_in_fp32(tok):
    model = tiny_llama().to(torch.bfloat16)
    params, grads = per_sample_grads(model, reference_windows(tok, TEXTS["aa"], SEQ, N))
    s = compute_importance(
        model,
        tok,
        {"aa": TEXTS["aa"]},
        "taylor",
        samples=N,
        seq_len=SEQ,
        batch_size=N,
        progress=False,
    )["aa"]
    for name, p in params.items():
        assert p.dtype == torch.bfloat16 and s[name].dtype == torch.float32
        reference = (p.detach().float() * sum(g[name] for g in grads)).abs()
        # bf16 forward/backward: agree in the bulk, not to fp32 precision
        assert float(F.cosine_similarity(s[name].flatten(), reference.flatten(), dim=0)) > 0.99


@pytest.mark.parametrize("accumulate_device", [None, "cpu"])
def test_a_bf16_gradient_is_added_without_an_fp32_copy_bit_identically(
    accumulate_device, monkeypatch
):
    """The hook hands the metric the gradient in the model's dtype (no fp32 copy of it is made
    before the add) and the scores are bit-identical to adding fp32 copies of the gradients, the
    way it was done before, in a loop of our own."""
    import dataclasses

    from regionbench.importance import compute, metrics

    model = tiny_llama().to(torch.bfloat16)
    g = torch.Generator().manual_seed(5)
    windows = torch.randint(3, 64, (5, 10), generator=g)
    params = block_matrices(model)
    seen = set()
    for metric in ("taylor", "taylor_abs", "fisher"):
        spec = metrics.METRICS[metric]

        def spy(acc, grad, param, update=spec.update):
            seen.add((grad.dtype, acc.dtype, grad.device == acc.device))
            update(acc, grad, param)

        monkeypatch.setitem(metrics.METRICS, metric, dataclasses.replace(spec, update=spy))
        got = compute.score_samples(
            model,
            {"aa": windows},
            metric,
            batch_size=2,
            scope="matrices",
            progress=False,
            accumulate_device=accumulate_device,
        )["aa"]
        acc = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items()}
        for start in range(0, 5, 2):  # batches of 2, 2, 1; each row's mean loss, summed
            batch = windows[start : start + 2]
            model.zero_grad(set_to_none=True)
            (model(input_ids=batch, labels=batch).loss * len(batch)).backward()
            for n, p in params.items():
                g32, theta = p.grad.float(), p.detach().float()  # the old fp32 copies
                if metric == "taylor":
                    acc[n] += g32
                elif metric == "taylor_abs":
                    acc[n] += (g32 * theta).abs()
                else:
                    acc[n] += (g32 * theta).square()
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            want = (acc[n] * p.detach().float()).abs() if metric == "taylor" else acc[n]
            assert torch.equal(got[n], want), (metric, n)
    assert seen == {(torch.bfloat16, torch.float32, True)}


def test_accumulate_device_cpu_gives_same_scores(tok):
    model, texts = tiny_llama(), {"bb": TEXTS["bb"]}
    kw = {"samples": N, "seq_len": SEQ, "batch_size": BATCH, "progress": False}
    a = compute_importance(model, tok, texts, **kw)
    b = compute_importance(model, tok, texts, accumulate_device="cpu", **kw)
    for name in a["bb"]:
        assert torch.equal(a["bb"][name], b["bb"][name])
        assert b["bb"][name].device.type == "cpu"


def test_model_state_unchanged_and_scored_in_eval_mode(tok):
    model = tiny_llama()
    kw = {"samples": N, "seq_len": SEQ, "batch_size": BATCH, "progress": False}
    reference = compute_importance(model, tok, TEXTS, **kw)
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
    scores = compute_importance(model, tok, TEXTS, **kw)
    handle.remove()

    assert len(forwards) == 6 and all(forwards)  # 2 languages x 3 batches
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


def test_second_call_gives_the_same_scores(tok):
    model = tiny_llama()
    kw = {"samples": N, "seq_len": SEQ, "batch_size": BATCH, "progress": False}
    a = compute_importance(model, tok, TEXTS, **kw)
    b = compute_importance(model, tok, TEXTS, **kw)
    assert all(torch.equal(a[lg][n], b[lg][n]) for lg in a for n in a[lg])


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
    assert set(narrow["aa"]) < set(r0["aa"])
    assert torch.equal(narrow["aa"][name], r0["aa"][name])


def test_bad_inputs_fail_fast_with_one_line_errors(tok):
    model = tiny_llama()
    with pytest.raises(ValueError, match="unknown metric 'tailor': did you mean 'taylor'"):
        compute_importance(model, tok, TEXTS, "tailor")
    with pytest.raises(ValueError, match="language 'aa'.*fewer than the 500 asked for"):
        compute_importance(model, tok, TEXTS, samples=500, seq_len=SEQ, progress=False)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        compute_importance(model, tok, {"aa": ["ab"]}, seq_len=SEQ, progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        compute_importance(model, tok, {}, progress=False)
    assert {
        "taylor",
        "magnitude",
        "random",
        "taylor_abs",
        "fisher",
        "lape",
        "activation",
        "wanda",
    } == set(METRICS)


def test_iter_scores_holds_one_language_while_computing_the_next(monkeypatch):
    """Memory that does not grow with languages: when language k+1 is being scored, nothing in
    `iter_scores` still references language k's scores (the caller has stored and dropped them)."""
    import gc
    import weakref

    from regionbench.importance import compute

    previous: list[weakref.ref] = []
    alive_at_next: list[bool] = []
    real = compute._gradient_scores

    def spy(*args, **kwargs):
        gc.collect()
        alive_at_next.append(any(ref() is not None for ref in previous))
        return real(*args, **kwargs)

    monkeypatch.setattr(compute, "_gradient_scores", spy)
    g = torch.Generator().manual_seed(0)
    windows = {lang: torch.randint(3, 64, (4, 8), generator=g) for lang in ("aa", "bb", "cc")}
    for _, scores in compute.iter_scores(tiny_llama(), windows, "taylor", batch_size=2):
        previous.append(weakref.ref(next(iter(scores.values()))))
        del scores
    assert alive_at_next == [False, False, False]


class _Killed(Exception):
    pass


def test_a_killed_scoring_resumes_where_it_stopped(tmp_path, monkeypatch):
    """The job dies in the middle of the second of three languages (checkpoint every batch): the
    next attempt reads the first language from disk, continues the second from its checkpoint,
    computes only the rest, and stores exactly the scores of an uninterrupted run."""
    from conftest import compose

    from regionbench.common.cache import ScoreCache
    from regionbench.config import RunConfig
    from regionbench.importance import cached_scores, score_samples

    model = tiny_llama()
    g = torch.Generator().manual_seed(3)
    windows = {lang: torch.randint(3, 64, (6, 8), generator=g) for lang in ("aa", "bb", "cc")}
    run = RunConfig.from_cfg(compose(["importance.batch_size=2", "importance.checkpoint_every=1"]))
    reference = score_samples(model, windows, "taylor", batch_size=2, progress=False)

    calls, kill_at = [0], [5]  # 3 batches per language: die in bb's second batch
    forward = model.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at[0]:
            raise _Killed
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    root, fps = tmp_path / "importance", ("s" * 64, "m" * 64)
    with pytest.raises(_Killed):
        cached_scores(run, model, windows, list(windows), fps, root)
    assert calls[0] == 5
    (partial,) = root.glob(".partial-*")
    assert sorted(p.name for p in partial.iterdir()) == [
        "aa.done.safetensors",
        "bb.state.json",
        "bb.state.safetensors",
    ]

    calls[0], kill_at[0] = 0, 0
    scores, key, hit = cached_scores(run, model, windows, list(windows), fps, root)
    assert not hit and calls[0] == 2 + 3  # bb's last two batches, then all of cc
    assert not partial.exists()  # removed once the entry is stored
    stored = ScoreCache(root).get(key)
    for lang in windows:
        for name, t in reference[lang].items():
            assert torch.equal(stored[lang][name], t), (lang, name)


def test_gradient_checkpointing_gives_the_same_scores_and_leaves_the_model_as_it_was(monkeypatch):
    from transformers.models.llama import modeling_llama

    from regionbench.importance import compute

    model = tiny_llama()
    g = torch.Generator().manual_seed(5)
    windows = {lang: torch.randint(3, 64, (4, 8), generator=g) for lang in ("aa", "bb")}
    runs, mlp = [0], modeling_llama.LlamaMLP.forward  # recomputed in backward if checkpointed

    def counted(self, *args, **kwargs):
        runs[0] += 1
        return mlp(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    plain = compute_importance_on(model, windows)
    assert runs[0] == 8  # 2 languages x 2 batches x 2 layers
    ckpt = compute_importance_on(model, windows, gradient_checkpointing=True)
    assert runs[0] == 8 + 16  # every layer ran again in backward
    for lang in windows:
        for name, t in plain[lang].items():
            torch.testing.assert_close(ckpt[lang][name], t, rtol=1e-6, atol=0)
    assert not compute._checkpointing(model) and not model.training


def compute_importance_on(model, windows, **kwargs):
    from regionbench.importance import score_samples

    return score_samples(model, windows, "taylor", batch_size=2, progress=False, **kwargs)


def test_gradient_checkpointing_is_refused_with_active_dropout():
    from transformers import GPT2Config, GPT2LMHeadModel

    from regionbench.importance import compute

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)).eval()
    windows = {"aa": torch.randint(3, 64, (2, 8))}
    with pytest.raises(ValueError, match="active dropout"):
        compute_importance_on(model, windows, gradient_checkpointing=True)
    assert not compute._checkpointing(model) and not model.training


# --- the authors' samples: one document each, padded, dropped when long, batch token mean -------

DOCS = {
    "aa": [
        "the cat",
        "a dog ran far, far away.",  # 26 tokens with BOS and EOS: over DOC_SEQ
        "sat on it.",
        "cats.",
        "a mat, a hat",
        "the dog and the cat sat.",  # over DOC_SEQ
        "ran",
        "far away now",
        "on a mat.",
        "hi there",
    ],
    "bb": ["zyx wvu", "tsr", "qpo nml kji hgf", "ba", "zyx wvu tsr qpo", "mnl", "k", "ji gf", "ed"],
}
DOC_SEQ, DOC_BATCH, DOC_N = 16, 3, 7


def authors_samples(tok, docs, seq_len, n, drop_long):
    """The authors' preprocessing: BOS (their tokenizer adds it) + tokens + EOS; a document
    longer than seq_len (BOS and EOS counted) is dropped, or else cut by their loader."""
    out = []
    for doc in docs:
        sample = [tok.bos_token_id, *tok(doc, add_special_tokens=False)["input_ids"]]
        sample.append(tok.eos_token_id)
        if len(sample) > seq_len:
            if drop_long:
                continue
            sample = sample[:seq_len]
        out.append(sample)
    return out[:n]


def authors_batch_loss(model, batch, seq_len, pad):
    """Their collator and HF's loss: right-padded to seq_len with pad = EOS, labels -100 on the
    padding, attention mask `ids != pad` with each row's first False set back to True (the real
    EOS), then the mean NLL over every labelled target of the micro-batch."""
    ids = torch.full((len(batch), seq_len), pad)
    labels = torch.full((len(batch), seq_len), -100)
    for row, sample in enumerate(batch):
        ids[row, : len(sample)] = torch.tensor(sample)
        labels[row, : len(sample)] = torch.tensor(sample)
    mask = ids.ne(pad)
    mask[(~mask).cumsum(dim=1) == 1] = True
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
    target = labels[:, 1:]
    scored = target != -100
    logp = F.log_softmax(logits, dim=-1).gather(2, target.clamp(min=0)[..., None])[..., 0]
    return -(logp * scored).sum() / scored.sum()


@pytest.mark.parametrize("drop_long", [True, False])
def test_documents_batch_mean_is_the_authors_importance(tok, drop_long):
    model = tiny_llama()
    scores = compute_importance(
        model,
        tok,
        DOCS,
        "taylor",
        samples=DOC_N,
        seq_len=DOC_SEQ,
        batch_size=DOC_BATCH,
        packing="documents",
        drop_long=drop_long,
        loss="batch_mean",
        progress=False,
    )
    params = block_matrices(model)
    for lang, docs in DOCS.items():
        samples = authors_samples(tok, docs, DOC_SEQ, DOC_N, drop_long)
        assert len(samples) == DOC_N
        if lang == "aa":  # the two long documents are what drop_long decides about
            assert any(len(s) == DOC_SEQ and s[-1] != tok.eos_token_id for s in samples) is (
                not drop_long
            )
        model.zero_grad(set_to_none=True)
        for start in range(0, DOC_N, DOC_BATCH):  # 3 + 3 + 1: the gradients summed
            batch = samples[start : start + DOC_BATCH]
            authors_batch_loss(model, batch, DOC_SEQ, tok.eos_token_id).backward()
        for name, p in params.items():
            expected = (p.detach() * p.grad).abs()
            torch.testing.assert_close(scores[lang][name], expected, rtol=1e-4, atol=1e-7)
        model.zero_grad(set_to_none=True)


def test_documents_sample_mean_sums_each_documents_own_mean_loss(tok):
    model = tiny_llama()
    kw = {"samples": DOC_N, "seq_len": DOC_SEQ, "packing": "documents", "drop_long": True}
    mean = compute_importance(
        model, tok, DOCS, batch_size=DOC_BATCH, loss="sample_mean", progress=False, **kw
    )
    one_batch = compute_importance(model, tok, DOCS, batch_size=DOC_N, progress=False, **kw)
    batch = compute_importance(
        model, tok, DOCS, batch_size=DOC_BATCH, loss="batch_mean", progress=False, **kw
    )
    for lang, docs in DOCS.items():
        samples = authors_samples(tok, docs, DOC_SEQ, DOC_N, drop_long=True)
        params, grads = per_sample_grads(model, samples)  # each document alone, unpadded
        for name, p in params.items():
            expected = (p.detach() * sum(g[name] for g in grads)).abs()
            torch.testing.assert_close(mean[lang][name], expected, rtol=1e-4, atol=1e-7)
            # sample_mean does not depend on the batching; batch_mean does weigh by length
            torch.testing.assert_close(one_batch[lang][name], expected, rtol=1e-4, atol=1e-7)
        ratio = [float((batch[lang][n] / mean[lang][n].clamp(min=1e-12)).median()) for n in params]
        assert max(ratio) - min(ratio) > 1e-3  # not a constant factor of sample_mean


def test_windows_batch_mean_is_the_token_mean_of_each_batch(tok):
    """windows with batch_mean: each batch's HF loss as it is, so a partial batch of one weighs
    as much as a full one (sample_mean multiplies it by the rows)."""
    model = tiny_llama()
    windows = reference_windows(tok, TEXTS["aa"], SEQ, N)
    s = compute_importance(
        model,
        tok,
        {"aa": TEXTS["aa"]},
        samples=N,
        seq_len=SEQ,
        batch_size=BATCH,
        loss="batch_mean",
        progress=False,
    )["aa"]
    params, grads = per_sample_grads(model, windows)
    for name, p in params.items():
        summed = sum(sum(g[name] for g in grads[i : i + BATCH]) / len(grads[i : i + BATCH])
                     for i in range(0, N, BATCH))  # fmt: skip
        torch.testing.assert_close(s[name], (p.detach() * summed).abs(), rtol=1e-4, atol=1e-7)


def test_packing_options_are_checked(tok):
    model = tiny_llama()
    with pytest.raises(ValueError, match="unknown packing 'document': did you mean 'documents'"):
        compute_importance(model, tok, DOCS, packing="document", progress=False)
    with pytest.raises(ValueError, match="drop_long needs packing='documents'"):
        compute_importance(model, tok, DOCS, drop_long=True, progress=False)
    with pytest.raises(ValueError, match="unknown loss 'batch'"):
        compute_importance(model, tok, DOCS, loss="batch", progress=False)
    with pytest.raises(ValueError, match="language 'bb'.*gives 7 documents of at most 16 tokens"):
        compute_importance(
            model, tok, DOCS, samples=8, seq_len=DOC_SEQ, packing="documents", drop_long=True
        )


def test_packing_and_loss_are_in_the_cache_key_only_when_not_the_default(tmp_path, monkeypatch):
    """Every input that changes the scores is in the key; the defaults add nothing, so the
    entries cached before these options existed keep their keys."""
    from conftest import compose

    from regionbench.common import cache
    from regionbench.config import RunConfig
    from regionbench.importance import cached_scores

    seen: list[dict] = []
    real = cache.cache_key
    monkeypatch.setattr(cache, "cache_key", lambda **kw: seen.append(kw) or real(**kw))
    model = tiny_llama()
    windows = {"aa": torch.randint(3, 64, (4, 8), generator=torch.Generator().manual_seed(0))}
    fps = ("s" * 64, "m" * 64)
    keys = []
    for overrides in (
        [],
        ["importance.loss=batch_mean"],
        ["importance.packing=documents"],
        ["importance.packing=documents", "importance.drop_long=true"],
    ):
        run = RunConfig.from_cfg(compose(["importance.batch_size=2", *overrides]))
        keys.append(cached_scores(run, model, windows, ["aa"], fps, tmp_path)[1])
    assert len(set(keys)) == 4
    old = {"model", "revision", "weights", "dtype", "metric", "samples", "batch_size", "scope"}
    old |= {"include", "exclude", "seed", "algorithm"}
    assert set(seen[0]) == old
    assert set(seen[1]) == old | {"loss"} and seen[1]["loss"] == "batch_mean"
    assert set(seen[3]) == old | {"packing", "drop_long"} and seen[3]["drop_long"] is True


@pytest.mark.parametrize("metric", ["random", "magnitude"])
def test_a_language_independent_entry_serves_any_languages(metric, tmp_path):
    """A static metric's key holds no language (its scores are every language's): an entry made
    for [aa] serves a run of [aa, bb, cc], each language with the same scores (it failed with
    "unknown language 'bb'")."""
    from conftest import compose

    from regionbench.config import RunConfig
    from regionbench.importance import cached_scores

    run = RunConfig.from_cfg(compose([f"metric={metric}"]))
    model = tiny_llama()
    gen = torch.Generator().manual_seed(0)
    windows = {g: torch.randint(3, 64, (2, 8), generator=gen) for g in ("aa", "bb", "cc")}
    fps = ("s" * 64, "m" * 64)
    first, key, hit = cached_scores(run, model, {"aa": windows["aa"]}, ["aa"], fps, tmp_path)
    again, key2, hit2 = cached_scores(run, model, windows, ["aa", "bb", "cc"], fps, tmp_path)
    assert (hit, hit2, key2) == (False, True, key)
    assert list(again) == ["aa", "bb", "cc"]
    for lang in again:
        assert again[lang].keys() == first["aa"].keys()
        assert all(torch.equal(again[lang][n], first["aa"][n]) for n in first["aa"])
