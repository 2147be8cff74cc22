"""Perplexity and bits-per-byte: analytic values, an independent per-document loop, lm-eval's
own loglikelihood_rolling, and a brute-force check of the windows of long documents."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from regionbench.evaluation.perplexity import LangPerplexity, perplexity
from regionbench.testing import tiny_llama, tiny_tokenizer

VOCAB = 96
TEXTS = {
    "en": ["the cat sat on the mat", "a dog ran to the old house", "the cat ran"],
    "ru": ["кошка сидела на коврике", "собака бежала домой"],
    "el": ["η γάτα κάθεται", "ο σκύλος τρέχει στο σπίτι", "γάτα"],
    "ko": ["고양이가 매트 위에 앉았다", "개가 집으로 달렸다"],
}
LONG = {"en": [" ".join(TEXTS["en"] * 2)], "ko": [" ".join(TEXTS["ko"] * 2)]}  # ~100 tokens


@pytest.fixture(scope="module")
def tok():
    tok = tiny_tokenizer([doc for docs in TEXTS.values() for doc in docs])
    assert len(tok) <= VOCAB and tok("a").input_ids[0] == tok.bos_token_id
    return tok


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=VOCAB)


def reference_nll(model, tok, docs: list[str], max_length: int) -> float:
    """Brute force: chunks of `max_length` predicted tokens, each read after the `max_length`
    tokens before the chunk's end ([BOS] first), one plain forward per chunk."""
    total = 0.0
    for doc in docs:
        ids = tok(doc, add_special_tokens=False).input_ids
        seq = torch.tensor([tok.bos_token_id, *ids])
        for start in range(0, len(ids), max_length):
            end = min(start + max_length, len(ids))
            first = max(0, end - max_length)
            with torch.no_grad():
                logits = model(seq[first:end][None]).logits[0].float()
            total += F.cross_entropy(
                logits[start - first :], seq[start + 1 : end + 1], reduction="sum"
            ).item()
    return total


def test_uniform_logits_give_the_vocabulary_size(tok):
    flat = tiny_llama(vocab_size=VOCAB)
    with torch.no_grad():
        flat.lm_head.weight.zero_()
    res = perplexity(flat, tok, TEXTS, batch_size=3, progress=False)
    for lang, docs in TEXTS.items():
        tokens = sum(len(tok(d, add_special_tokens=False).input_ids) for d in docs)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        r = res[lang]
        assert (r.tokens, r.bytes) == (tokens, n_bytes)
        assert r.doc_tokens == tuple(len(tok(d, add_special_tokens=False).input_ids) for d in docs)
        assert r.doc_bytes == tuple(len(d.encode("utf-8")) for d in docs)
        assert r.ppl == pytest.approx(VOCAB, rel=1e-6)
        assert r.nll == pytest.approx(tokens * math.log(VOCAB), rel=1e-6)
        assert r.bpb == pytest.approx(tokens * math.log2(VOCAB) / n_bytes, rel=1e-6)
    assert res["ko"].bytes > 2 * sum(len(d) for d in TEXTS["ko"])  # bytes, not characters


def test_matches_a_plain_per_document_loop(model, tok):
    res = perplexity(model, tok, TEXTS, batch_size=3, progress=False)  # windows padded, mixed
    for lang, docs in TEXTS.items():
        nll = reference_nll(model, tok, docs, max_length=10**6)
        assert res[lang].nll == pytest.approx(nll, rel=1e-5)
        assert res[lang].ppl == pytest.approx(math.exp(nll / res[lang].tokens), rel=1e-5)
        assert res[lang].bpb == pytest.approx(nll / math.log(2) / res[lang].bytes, rel=1e-5)
        per_doc = [reference_nll(model, tok, [doc], max_length=10**6) for doc in docs]
        assert res[lang].doc_nll == pytest.approx(per_doc, rel=1e-5)


def test_documents_keep_their_own_totals_in_input_order(model, tok):
    """Several windows per document, documents of two languages in one batch, empty documents
    (accepted: no tokens, no windows, nll 0) among them; the totals are the documents' sums."""
    docs = {"en": ["", LONG["en"][0], TEXTS["en"][2], ""], "ko": [TEXTS["ko"][0], LONG["ko"][0]]}
    res = perplexity(model, tok, docs, max_length=7, batch_size=4, progress=False)
    for lang, texts in docs.items():
        r = res[lang]
        assert len(r.doc_nll) == len(r.doc_tokens) == len(r.doc_bytes) == len(texts)
        assert r.doc_nll == pytest.approx([reference_nll(model, tok, [t], 7) for t in texts])
        assert r.doc_tokens == tuple(len(tok(t, add_special_tokens=False).input_ids) for t in texts)
        assert r.doc_bytes == tuple(len(t.encode("utf-8")) for t in texts)
        assert (sum(r.doc_nll), sum(r.doc_tokens), sum(r.doc_bytes)) == (r.nll, r.tokens, r.bytes)
    en = res["en"]
    for empty in (0, 3):
        assert (en.doc_nll[empty], en.doc_tokens[empty], en.doc_bytes[empty]) == (0.0, 0, 0)
    assert en.doc_tokens[1] > 3 * 7  # the long document really was split
    cached = json.loads(json.dumps(asdict(en)))  # how the pipeline caches a baseline
    assert cached["doc_nll"] == list(en.doc_nll) and cached["doc_bytes"] == list(en.doc_bytes)


@pytest.mark.parametrize("max_length", [1, 7, 32])
def test_long_documents_are_split_into_windows(model, tok, max_length):
    docs = {**LONG, "short": TEXTS["el"]} if max_length > 1 else {"short": TEXTS["el"]}
    res = perplexity(model, tok, docs, max_length=max_length, batch_size=4, progress=False)
    assert max(r.tokens for r in res.values()) > 3 * max_length
    for lang, texts in docs.items():
        assert res[lang].nll == pytest.approx(
            reference_nll(model, tok, texts, max_length), rel=1e-5
        )
    whole = perplexity(model, tok, docs, progress=False)  # one window each: other numbers
    longest = max(res, key=lambda lang: res[lang].tokens)
    assert whole[longest].tokens == res[longest].tokens
    assert whole[longest].nll != res[longest].nll


def test_agrees_with_lm_eval_loglikelihood_rolling(model, tok):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    docs = {**TEXTS, "long": LONG["en"]}
    ours = perplexity(model, tok, docs, max_length=16, batch_size=5, progress=False)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=16, add_bos_token=False)
    for lang, texts in docs.items():
        requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
        nll = -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))
        bpb = nll / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)
        assert ours[lang].bpb == pytest.approx(bpb, rel=1e-6)


def test_modes_are_restored_and_no_gradients_kept(tok):
    net = tiny_llama(vocab_size=VOCAB).train()
    net.model.layers[0].eval()  # a mixed state must survive too
    res = perplexity(net, tok, {"en": TEXTS["en"]}, progress=False)
    assert isinstance(res["en"], LangPerplexity)
    assert net.training and not net.model.layers[0].training and net.model.layers[1].training
    assert all(p.grad is None for p in net.parameters())


def test_eos_is_the_prefix_without_bos(model, tok):
    no_bos = tiny_tokenizer([d for docs in TEXTS.values() for d in docs])
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None
    flat = perplexity(model, no_bos, {"en": TEXTS["en"]}, progress=False)["en"]
    bos = perplexity(model, tok, {"en": TEXTS["en"]}, progress=False)["en"]
    assert flat.tokens == bos.tokens and flat.nll != bos.nll


def test_bad_input_is_rejected_before_any_work(model, tok):
    with pytest.raises(ValueError, match="'ru' contain no tokens"):
        perplexity(model, tok, {"en": TEXTS["en"], "ru": ["", ""]}, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(model, tok, TEXTS, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="max_length"):
        perplexity(model, tok, TEXTS, max_length=0, progress=False)


def test_default_window_is_the_models_context_as_lm_eval_resolves_it(tok):
    """No 2048 cap: a 3000-token context reads a 2500-token document in one window, like lm-eval,
    and batches of long windows stay within the token budget (one window per forward here)."""
    from lm_eval.models.huggingface import HFLM
    from transformers import LlamaConfig, LlamaForCausalLM

    from regionbench.evaluation import perplexity as P

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=3000,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    ).eval()
    assert P.default_max_length(model, tok) == 3000
    assert HFLM(pretrained=model, tokenizer=tok, batch_size=1).max_length == 3000
    doc = " ".join(TEXTS["en"] * 40)
    n = len(tok(doc, add_special_tokens=False).input_ids)
    assert 2048 < n < 3000
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kw: shapes.append(kw["input_ids"].shape), with_kwargs=True
    )
    res = perplexity(model, tok, {"en": [doc, doc[:1000]]}, batch_size=2, progress=False)
    hook.remove()
    assert shapes[0] == (1, n)  # whole document, alone: 2 * n tokens exceed 2 * 2048
    assert res["en"].nll == pytest.approx(
        reference_nll(model, tok, [doc, doc[:1000]], 10**6), rel=1e-5
    )


def test_the_head_runs_only_on_scored_positions(model, tok):
    """Each window alone (batch_size=1): the LM head sees exactly the positions the window
    predicts (7 per window, the rest in the last one), not its context."""
    doc = LONG["en"][0]
    n = len(tok(doc, add_special_tokens=False).input_ids)
    assert n % 7 and n > 3 * 7
    seen = []
    hook = model.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    res = perplexity(model, tok, {"en": [doc]}, max_length=7, batch_size=1, progress=False)
    hook.remove()
    assert sorted(seen, reverse=True) == [7] * (n // 7) + [n % 7]
    assert res["en"].nll == pytest.approx(reference_nll(model, tok, [doc], 7), rel=1e-5)


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM behind a forward that does not take `logits_to_keep`: every position's
    logits come back."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_a_forward_without_logits_to_keep_gives_the_same_values(model, tok):
    docs = {**LONG, "el": TEXTS["el"]}
    wrapped = _NoLogitsToKeep(model)
    seen = []
    hook = model.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    plain = perplexity(wrapped, tok, docs, max_length=7, batch_size=3, progress=False)
    hook.remove()
    assert all(width == 7 for _, width, _ in seen)  # every position of every full window
    kept = perplexity(model, tok, docs, max_length=7, batch_size=3, progress=False)
    for lang in docs:
        assert plain[lang].doc_nll == pytest.approx(kept[lang].doc_nll, rel=1e-6)


def test_the_log_softmax_chunks_may_split_a_window(model, tok, monkeypatch):
    """Chunks of 5 positions cut windows of 7 (and batches of several windows) mid-row."""
    from regionbench.evaluation import perplexity as P

    docs = {**LONG, "el": TEXTS["el"]}
    whole = perplexity(model, tok, docs, max_length=7, batch_size=4, progress=False)
    monkeypatch.setattr(P, "TOKENS_PER_ROW", 5)
    cut = perplexity(model, tok, docs, max_length=7, batch_size=4, progress=False)
    for lang, texts in docs.items():
        assert cut[lang].doc_nll == pytest.approx(whole[lang].doc_nll, rel=1e-6)
        assert cut[lang].nll == pytest.approx(reference_nll(model, tok, texts, 7), rel=1e-5)


# --- the authors' protocol ----------------------------------------------------------------------


def authors_ppl(model, tok, docs, seq_len, batch_size):
    """Their `evaluation()`, one document per forward: [BOS] ids [EOS], documents over seq_len
    left out, each batch's loss the mean NLL over its targets (EOS included), exp of the mean
    over batches."""
    kept = []
    for doc in docs:
        seq = [tok.bos_token_id, *tok(doc, add_special_tokens=False).input_ids, tok.eos_token_id]
        if len(seq) <= seq_len:
            kept.append(torch.tensor(seq))
    losses = []
    for start in range(0, len(kept), batch_size):
        nll, count = 0.0, 0
        for seq in kept[start : start + batch_size]:
            with torch.no_grad():
                logits = model(seq[None, :-1]).logits[0].float()
            nll += F.cross_entropy(logits, seq[1:], reduction="sum").item()
            count += len(seq) - 1
        losses.append(nll / count)
    return math.exp(sum(losses) / len(losses)), len(kept), losses


def test_paper_perplexity_is_exp_of_the_mean_batch_loss(model, tok):
    from regionbench.evaluation.perplexity import paper_perplexity

    docs = {lang: [*d, *LONG.get(lang, [])] * 2 for lang, d in TEXTS.items()}
    res = paper_perplexity(model, tok, docs, seq_len=40, batch_size=2, progress=False)
    for lang, texts in docs.items():
        ppl, kept, losses = authors_ppl(model, tok, texts, 40, 2)
        assert res[lang].ppl == pytest.approx(ppl, rel=1e-5)
        assert res[lang].batch_loss == pytest.approx(losses, rel=1e-5)
        assert (res[lang].docs, res[lang].dropped) == (kept, len(texts) - kept)
    assert res["en"].dropped >= 2  # the long documents are left out
    # not the corpus-level perplexity: batches weigh the same whatever their token counts
    pooled = perplexity(model, tok, {"en": docs["en"]}, progress=False)["en"].ppl
    assert res["en"].ppl != pytest.approx(pooled, rel=1e-3)


def test_paper_perplexity_of_uniform_logits_is_the_vocabulary_size(tok):
    from regionbench.evaluation.perplexity import paper_perplexity

    flat = tiny_llama(vocab_size=VOCAB)
    with torch.no_grad():
        flat.lm_head.weight.zero_()
    res = paper_perplexity(flat, tok, TEXTS, seq_len=64, batch_size=3, progress=False)
    assert all(r.ppl == pytest.approx(VOCAB, rel=1e-6) for r in res.values())
    with pytest.raises(ValueError, match="paper perplexity of language 'en'.*no sample"):
        paper_perplexity(flat, tok, {"en": LONG["en"]}, seq_len=8, progress=False)
