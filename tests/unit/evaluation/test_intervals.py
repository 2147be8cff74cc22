"""Paired bootstrap intervals: exact values where the answer is known (identical models), the
coverage of a ratio known from the process that generates the documents, the narrowing that
pairing buys against an independent resampling loop, the joint resampling of parallel languages
against a reference joint bootstrap, determinism, and bad input."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest

from regionbench.common.torchtools import stable_seed
from regionbench.evaluation.intervals import paired_bootstrap, paired_bootstrap_languages
from regionbench.evaluation.perplexity import LangPerplexity

# The generating process of the coverage test. Per document: tokens t = 5 + Poisson(Gamma(2, 50))
# (mean 105, long-tailed), per-token loss mu ~ Gamma(4, 0.75) (mean 3 nats: the document's
# difficulty, shared by both models), bytes = 4 t + Poisson(20). The modified model's NLL is
# FACTOR times the base's plus t * N(0, NOISE) of its own. Over the population (ratio of
# expectations, t and mu independent): log ppl ratio = (FACTOR - 1) * E[mu].
FACTOR, SHAPE, SCALE, NOISE = 1.01, 4.0, 0.75, 0.05
MEAN_TOKENS, MEAN_EXTRA_BYTES = 5 + 2.0 * 50.0, 20
TRUE_RATIO = math.exp((FACTOR - 1) * SHAPE * SCALE)
TRUE_BPB_DIFF = (
    (FACTOR - 1)
    * MEAN_TOKENS
    * SHAPE
    * SCALE
    / (math.log(2) * (4 * MEAN_TOKENS + MEAN_EXTRA_BYTES))
)


def dataset(rng: np.random.Generator, docs: int, shape: float = SHAPE, scale: float = SCALE):
    tokens = 5 + rng.poisson(rng.gamma(2.0, 50.0, docs))
    base_nll = tokens * rng.gamma(shape, scale, docs)
    mod_nll = FACTOR * base_nll + tokens * rng.normal(0.0, NOISE, docs)
    n_bytes = 4 * tokens + rng.poisson(MEAN_EXTRA_BYTES, docs)
    return (
        {"doc_nll": base_nll, "doc_tokens": tokens, "doc_bytes": n_bytes},
        {"doc_nll": mod_nll, "doc_tokens": tokens, "doc_bytes": n_bytes},
    )


def result(nll, tokens, n_bytes) -> LangPerplexity:
    """A `LangPerplexity` as `perplexity` builds it from per-document totals."""
    total, n_tok, n_b = sum(nll), sum(tokens), sum(n_bytes)
    return LangPerplexity(
        ppl=math.exp(total / n_tok),
        bpb=total / (math.log(2) * n_b),
        nll=total,
        tokens=n_tok,
        bytes=n_b,
        doc_nll=tuple(nll),
        doc_tokens=tuple(tokens),
        doc_bytes=tuple(n_bytes),
    )


def test_the_generating_process_has_the_ratio_it_claims():
    """A million documents: the sample's values lie within ~4 standard errors (7e-5 and 2.5e-5)
    of the population's."""
    base, mod = dataset(np.random.default_rng(99), 1_000_000)
    res = paired_bootstrap(base, mod, n=1)
    assert res["ppl_ratio"]["value"] == pytest.approx(TRUE_RATIO, abs=3e-4)
    assert res["bpb_diff"]["value"] == pytest.approx(TRUE_BPB_DIFF, abs=1e-4)


def test_identical_models_give_exactly_one_and_zero():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 200, 30)
    r = result((tokens * rng.gamma(4, 0.75, 30)).tolist(), tokens.tolist(), (4 * tokens).tolist())
    res = paired_bootstrap(r, asdict(r), n=200)  # a result and its cached form mix
    assert res["ppl_ratio"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert res["bpb_diff"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert (res["docs"], res["n"], res["level"]) == (30, 200, 0.95)
    both = paired_bootstrap_languages({"a": r, "b": r}, {"a": r, "b": asdict(r)}, n=50)
    assert both["mean"]["ppl_ratio"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}


def test_point_values_are_the_ratio_of_the_results():
    base, mod = dataset(np.random.default_rng(1), 40)
    b = result(base["doc_nll"].tolist(), base["doc_tokens"].tolist(), base["doc_bytes"].tolist())
    m = result(mod["doc_nll"].tolist(), mod["doc_tokens"].tolist(), mod["doc_bytes"].tolist())
    res = paired_bootstrap(b, m, n=300)
    assert res["ppl_ratio"]["value"] == pytest.approx(m.ppl / b.ppl, rel=1e-12)
    assert res["bpb_diff"]["value"] == pytest.approx(m.bpb - b.bpb, rel=1e-9)
    for stat in ("ppl_ratio", "bpb_diff"):
        assert res[stat]["lo"] < res[stat]["value"] < res[stat]["hi"]


def test_intervals_cover_the_true_ratio_about_as_often_as_claimed():
    """1000 evaluation sets of 50 documents from the process above: the nominal 95% intervals
    cover the population's ratio 92% of the time here (percentile intervals of a ratio from 50
    long-tailed documents run a little narrow; about 95% from 100 documents on)."""
    rng = np.random.default_rng(1)
    hits = {"ppl_ratio": 0, "bpb_diff": 0}
    truth = {"ppl_ratio": TRUE_RATIO, "bpb_diff": TRUE_BPB_DIFF}
    sets = 1000
    for k in range(sets):
        res = paired_bootstrap(*dataset(rng, 50), n=500, seed=k)
        for stat in hits:
            hits[stat] += res[stat]["lo"] <= truth[stat] <= res[stat]["hi"]
    for stat, hit in hits.items():
        assert 0.90 <= hit / sets <= 0.99, (stat, hit / sets)


def test_pairing_removes_the_variance_the_models_share():
    """Documents of very different difficulty (the same for both models): an independent
    resample of each model's documents, written out here, gives a far wider interval."""
    base, mod = dataset(np.random.default_rng(2), 60, shape=1.0, scale=3.0)
    paired = paired_bootstrap(base, mod, n=1000, seed=3)["ppl_ratio"]

    rng = np.random.default_rng(4)
    ratios = []
    for _ in range(1000):
        i, j = rng.integers(0, 60, 60), rng.integers(0, 60, 60)
        ppl_b = math.exp(base["doc_nll"][i].sum() / base["doc_tokens"][i].sum())
        ppl_m = math.exp(mod["doc_nll"][j].sum() / mod["doc_tokens"][j].sum())
        ratios.append(ppl_m / ppl_b)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    assert lo < paired["lo"] <= paired["value"] <= paired["hi"] < hi
    assert paired["hi"] - paired["lo"] < 0.1 * (hi - lo)


def test_languages_are_resampled_on_their_own_and_averaged():
    base_a, mod_a = dataset(np.random.default_rng(5), 30)
    base_b, _ = dataset(np.random.default_rng(6), 20)
    base, mod = {"a": base_a, "b": base_b}, {"a": mod_a, "b": base_b}  # b: unchanged
    res = paired_bootstrap_languages(base, mod, n=400, seed=7)
    alone = paired_bootstrap(base_a, mod_a, n=400, seed=stable_seed(7, "a"))
    assert res["langs"]["a"] == alone  # the same with or without language b
    assert res["langs"]["b"]["ppl_ratio"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    for stat, one in (("ppl_ratio", 1.0), ("bpb_diff", 0.0)):
        for key in ("value", "lo", "hi"):  # b adds a constant: the mean's quantiles follow a's
            assert res["mean"][stat][key] == pytest.approx((alone[stat][key] + one) / 2)


def test_seeded_and_deterministic():
    base, mod = dataset(np.random.default_rng(8), 25)
    assert paired_bootstrap(base, mod, seed=1) == paired_bootstrap(base, mod, seed=1)
    assert paired_bootstrap(base, mod, seed=1) != paired_bootstrap(base, mod, seed=2)
    wide = paired_bootstrap(base, mod, seed=1, level=0.99)["ppl_ratio"]
    narrow = paired_bootstrap(base, mod, seed=1, level=0.5)["ppl_ratio"]
    assert wide["lo"] < narrow["lo"] < narrow["hi"] < wide["hi"]


def test_empty_documents_are_left_out_of_the_resampling():
    r = result([0.0, 30.0, 0.0, 45.0], [0, 10, 0, 15], [0, 40, 0, 61])
    s = result([0.0, 31.0, 0.0, 44.0], [0, 10, 0, 15], [0, 40, 0, 61])
    res = paired_bootstrap(r, s, n=100)
    assert res["docs"] == 2
    assert res["ppl_ratio"]["value"] == pytest.approx(s.ppl / r.ppl)


def test_bad_input_is_rejected():
    base, mod = dataset(np.random.default_rng(9), 10)
    short = {k: v[:9] for k, v in mod.items()}
    with pytest.raises(ValueError, match="document counts differ: base 10, modified 9"):
        paired_bootstrap(base, short)
    other = {**mod, "doc_bytes": mod["doc_bytes"] + 1}
    with pytest.raises(ValueError, match="not the same documents"):
        paired_bootstrap(base, other)
    old_cache = {"ppl": 3.0, "bpb": 1.0, "nll": 30.0, "tokens": 10, "bytes": 40}
    with pytest.raises(ValueError, match="per-document totals"):
        paired_bootstrap(old_cache, mod)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n "):
            paired_bootstrap(base, mod, n=n)
    for level in (0, 1, 95, -0.5):
        with pytest.raises(ValueError, match="level"):
            paired_bootstrap(base, mod, level=level)
    empty = {"doc_nll": [0.0], "doc_tokens": [0], "doc_bytes": [0]}
    with pytest.raises(ValueError, match="no document"):
        paired_bootstrap(empty, empty)
    with pytest.raises(ValueError, match="languages"):
        paired_bootstrap_languages({"a": base}, {"a": mod, "b": mod})
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap_languages({"a": base}, {"a": mod}, level=1.0)


def parallel_set(rng: np.random.Generator, langs: int, docs: int):
    """A parallel evaluation set: document i has one difficulty, one length and one change
    under the modification (the modified model's NLL per token moves by N(0, NOISE)) for every
    language (it is the same sentence); each language scales the length and the loss a little
    and adds a fifth of that noise of its own. The languages are positively correlated."""
    difficulty = rng.gamma(1.0, 3.0, docs)  # per-token loss of document i, shared
    length = 5 + rng.poisson(rng.gamma(2.0, 50.0, docs))
    shift = rng.normal(0.0, NOISE, docs)  # what the modification does to document i, shared
    base, mod = {}, {}
    for k in range(langs):
        tokens = np.maximum(1, np.round(length * rng.uniform(0.8, 1.2, docs))).astype(int)
        nll = tokens * difficulty * rng.lognormal(0.0, 0.1, docs)
        own = rng.normal(0.0, NOISE / 5, docs)
        base[f"l{k}"] = {"doc_nll": nll, "doc_tokens": tokens, "doc_bytes": 4 * tokens}
        mod[f"l{k}"] = {
            "doc_nll": FACTOR * nll + tokens * (shift + own),
            "doc_tokens": tokens,
            "doc_bytes": 4 * tokens,
        }
    return base, mod


def test_parallel_languages_resample_the_same_documents_for_the_mean():
    """The mean's interval on a parallel set equals a joint bootstrap written out here from its
    definition (B index vectors, each read by every language; the languages' resampled ratios
    averaged; percentiles), and is wider than the independent resampling, which treats the
    languages' shared document-to-document spread as independent and averages it away.

    Exact equality, not a Monte-Carlo tolerance: the reference draws its index vectors from the
    generator `paired_bootstrap_languages` documents (`stable_seed(seed, JOINT)`, one vector of
    `docs` integers per replicate, in order), and NumPy's row-by-row draws equal its block draw;
    the sums and the average over languages (added in language order, then divided) are the
    same floating-point operations."""
    from regionbench.evaluation.intervals import JOINT

    base, mod = parallel_set(np.random.default_rng(11), langs=4, docs=40)
    n, seed = 800, 5
    joint = paired_bootstrap_languages(base, mod, n=n, seed=seed, parallel=True)
    apart = paired_bootstrap_languages(base, mod, n=n, seed=seed)
    assert joint["mean"]["joint"] is True and apart["mean"]["joint"] is False

    rng = np.random.default_rng(stable_seed(seed, JOINT))
    reps = {"ppl_ratio": [], "bpb_diff": []}
    for _ in range(n):
        i = rng.integers(0, 40, 40)  # the documents of this replicate, in every language
        ratios, diffs = [], []
        for lang in base:
            b, m = base[lang], mod[lang]
            per_tok_b = b["doc_nll"][i].sum() / b["doc_tokens"][i].sum()
            per_tok_m = m["doc_nll"][i].sum() / m["doc_tokens"][i].sum()
            ratios.append(math.exp(per_tok_m - per_tok_b))
            per_byte_b = b["doc_nll"][i].sum() / b["doc_bytes"][i].sum()
            per_byte_m = m["doc_nll"][i].sum() / m["doc_bytes"][i].sum()
            diffs.append((per_byte_m - per_byte_b) / math.log(2))
        reps["ppl_ratio"].append(sum(ratios) / len(ratios))
        reps["bpb_diff"].append(sum(diffs) / len(diffs))
    for stat, values in reps.items():
        lo, hi = np.percentile(values, [2.5, 97.5])
        assert (joint["mean"][stat]["lo"], joint["mean"][stat]["hi"]) == (lo, hi), stat
        # the point value and each language's own interval do not change
        assert joint["mean"][stat]["value"] == apart["mean"][stat]["value"]
    assert joint["langs"] == apart["langs"]

    width = {
        k: r["mean"]["ppl_ratio"]["hi"] - r["mean"]["ppl_ratio"]["lo"]
        for k, r in (("joint", joint), ("apart", apart))
    }
    # four languages that share most of their documents' spread: 1.89 times wider here (2 if
    # they shared all of it: independent draws divide the mean's variance by the 4 languages)
    assert width["joint"] > 1.5 * width["apart"], width


def test_parallel_languages_with_different_document_counts_are_resampled_apart():
    base, mod = parallel_set(np.random.default_rng(12), langs=2, docs=30)
    short = {k: v[:29] for k, v in mod["l1"].items()}
    base["l1"] = mod["l1"] = short
    joint = paired_bootstrap_languages(base, mod, n=200, seed=1, parallel=True)
    apart = paired_bootstrap_languages(base, mod, n=200, seed=1)
    assert joint["mean"]["joint"] is False
    assert joint == apart | {"mean": apart["mean"] | {"joint": False}}


def test_joint_resampling_keeps_empty_documents_in_place():
    """A document that is empty in one language (a line the tokenizer drops) is drawn with its
    index like any other: the languages stay aligned, and identical models still give 1."""
    r = result([0.0, 30.0, 12.0, 45.0], [0, 10, 4, 15], [0, 40, 16, 61])
    s = result([7.0, 31.0, 11.0, 44.0], [2, 10, 4, 15], [9, 40, 16, 61])
    res = paired_bootstrap_languages({"a": r, "b": s}, {"a": r, "b": s}, n=100, parallel=True)
    assert res["mean"]["joint"] is True
    assert res["mean"]["ppl_ratio"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert res["langs"]["a"]["docs"] == 3  # its own interval still leaves the empty one out
