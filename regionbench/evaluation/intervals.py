"""Confidence intervals for a modified model's perplexity ratio to the unmodified model: a paired
bootstrap over evaluation documents.

    from regionbench.evaluation.intervals import paired_bootstrap, paired_bootstrap_languages
    paired_bootstrap(base["en"], mod["en"])  # {"ppl_ratio": {"value", "lo", "hi"}, "bpb_diff": ..}
    paired_bootstrap_languages(base, mod)    # {"langs": {lang: ...}, "mean": ...}
    paired_bootstrap_languages(base, mod, parallel=True)   # parallel documents: joint resamples

`base` and `mod` are `LangPerplexity` results (or their `dataclasses.asdict`, as cached) of the
two models on the same documents. Is a ratio of 1.004 an effect or luck of the draw? The
interval answers: how far the ratio would move on another evaluation set of the same kind.

Why over documents: the independent units of an evaluation set are its documents, not its
tokens (the tokens of one document share its topic, style and difficulty), so resampling tokens
would understate the spread. A percentile bootstrap needs no model of how the documents' losses
are distributed, and recomputes the statistics exactly as they are defined (ratios of sums).

Why paired: both models read the same documents, and most of the document-to-document variance
(a hard document is hard for both) is shared. Each bootstrap replicate draws one set of document
indices and uses it for both models, so that shared variance cancels in the ratio; resampling
the two models independently would count it twice and give intervals many times wider.

Why jointly across languages on parallel data: where the i-th document says the same in every
language (the sandbox, FLORES), a document that is hard in one language is hard in the others,
and the mean over languages is a statistic of the documents, not of each language apart. A
replicate of the mean then draws one set of document indices and uses it for every language;
drawing each language's indices on its own would treat the languages' errors as independent and
average away the part of their spread they share (the more the languages agree on which
documents are hard, the narrower that interval is than it should be). The languages of a
non-parallel source are independent samples: each is resampled on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from regionbench.common.torchtools import stable_seed

DOC_FIELDS = ("doc_nll", "doc_tokens", "doc_bytes")
STATS = {
    "ppl_ratio": "perplexity of the modified model / that of the unmodified one",
    "bpb_diff": "bits per byte of the modified model - those of the unmodified one",
}


def paired_bootstrap(
    base, mod, *, n: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, object]:
    """Point value and percentile interval of each statistic in `STATS`, over `n` resamples of
    the documents (the same resample for both models), seeded by `seed`.

    Returns `{"ppl_ratio": {"value", "lo", "hi"}, "bpb_diff": {...}, "docs", "n", "level"}`
    (`docs`: documents with any text; plain floats and ints, so JSON).
    """
    _check(n, level)
    values, reps, docs = _replicates(base, mod, n, np.random.default_rng(seed))
    return _summary(values, reps, level) | {"docs": docs}


def paired_bootstrap_languages(
    base: Mapping[str, object],
    mod: Mapping[str, object],
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    parallel: bool = False,
) -> dict[str, object]:
    """`paired_bootstrap` for every language of two `{lang: result}` evaluations, and for the
    mean over languages of each statistic (the `ppl_ratio/mean` the runs log).

    Returns `{"langs": {lang: paired_bootstrap(...)}, "mean": {"ppl_ratio": {...},
    "bpb_diff": {...}, "n", "level", "joint"}}`. A language's own interval resamples its
    documents on their own, with the seed `stable_seed(seed, lang)` (so it does not depend on
    the other languages). The mean's replicates:

    * `parallel` (the documents align across languages) and every language has the same number
      of documents: `joint` is true; replicate r draws one vector of document indices (from
      `np.random.default_rng(stable_seed(seed, JOINT))`, row r of `integers(0, docs, (n, docs))`)
      and every language reads the same indices, empty documents included (they add nothing
      to a sum, and dropping them would misalign the languages);
    * otherwise `joint` is false: a replicate of the mean averages the languages' own
      replicates of the same index.
    """
    _check(n, level)
    if set(base) != set(mod):
        raise ValueError(f"languages of base {sorted(base)} and modified {sorted(mod)} differ")
    if not mod:
        raise ValueError("no languages to compare")
    langs, mean_values, mean_reps = {}, {}, {}
    for lang in mod:
        rng = np.random.default_rng(stable_seed(seed, lang))
        values, reps, docs = _replicates(base[lang], mod[lang], n, rng)
        langs[lang] = _summary(values, reps, level) | {"docs": docs}
        for stat in STATS:
            mean_values[stat] = mean_values.get(stat, 0.0) + values[stat] / len(mod)
            mean_reps[stat] = mean_reps.get(stat, 0.0) + reps[stat] / len(mod)
    joint = parallel and aligned(base, mod)
    if joint:
        mean_reps = _joint_replicates(base, mod, n, np.random.default_rng(stable_seed(seed, JOINT)))
    return {"langs": langs, "mean": _summary(mean_values, mean_reps, level) | {"joint": joint}}


JOINT = "mean over languages, jointly"  # the name the joint resample's seed derives from


def aligned(base: Mapping[str, object], mod: Mapping[str, object]) -> bool:
    """Every language of both evaluations has the same number of documents: the i-th
    documents of a parallel set can be drawn together."""
    fields = [_field(r, key) for r in [*base.values(), *mod.values()] for key in DOC_FIELDS]
    counts = {None if f is None else len(f) for f in fields}
    return len(counts) == 1 and counts.isdisjoint({None, 0})


def _joint_replicates(base, mod, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The mean over languages of each statistic, for `n` replicates that draw the same
    document indices in every language."""
    totals = {lang: _totals(base[lang], mod[lang], drop_empty=False) for lang in mod}
    docs = next(iter(totals.values())).shape[1]
    idx = rng.integers(0, docs, size=(n, docs))
    reps = [_stats(np.stack([row[idx].sum(axis=1) for row in rows])) for rows in totals.values()]
    return {stat: sum(r[stat] for r in reps) / len(reps) for stat in STATS}


def _check(n: int, level: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n {n!r} bootstrap replicates: must be an integer >= 1")
    if not 0 < level < 1:
        raise ValueError(f"level {level!r} must lie strictly between 0 and 1")


def _field(result, key: str):
    return result.get(key) if isinstance(result, Mapping) else getattr(result, key, None)


def _totals(base, mod, *, drop_empty: bool = True) -> np.ndarray:
    """[6, docs] float64: nll, tokens, bytes of each (non-empty) document, base then modified."""
    rows = [_field(r, key) for r in (base, mod) for key in DOC_FIELDS]
    if any(row is None for row in rows):
        raise ValueError(
            "a result without per-document totals (doc_nll, doc_tokens, doc_bytes): "
            "cached before they existed?"
        )
    counts = {len(row) for row in rows}
    if len(counts) > 1:
        raise ValueError(
            f"document counts differ: base {len(rows[0])}, modified {len(rows[3])} "
            f"(nll, tokens, bytes: {[len(row) for row in rows]})"
        )
    totals = np.asarray(rows, dtype=np.float64)
    if not np.array_equal(totals[2], totals[5]):
        raise ValueError("base and modified documents differ in bytes: not the same documents")
    # An empty document adds nothing to any sum; left in, it would only make each replicate's
    # effective number of documents random.
    if drop_empty:
        totals = totals[:, totals[2] > 0]
    if totals.shape[1] == 0:
        raise ValueError("no document with any text to resample")
    return totals


def _stats(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic of `STATS` from the six sums (leading axis) of `_totals`' rows."""
    nll_b, tok_b, bytes_b, nll_m, tok_m, bytes_m = sums
    # A replicate may draw only documents without tokens (whitespace a tokenizer drops): nan.
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "ppl_ratio": np.exp(nll_m / tok_m - nll_b / tok_b),
            "bpb_diff": (nll_m / bytes_m - nll_b / bytes_b) / math.log(2),
        }


def _replicates(base, mod, n: int, rng: np.random.Generator):
    """(point value of each statistic, its `n` bootstrap replicates, documents resampled)."""
    totals = _totals(base, mod)
    docs = totals.shape[1]
    idx = rng.integers(0, docs, size=(n, docs))  # row r: the documents of replicate r
    # Row by row keeps one [n, docs] copy at a time; the same indices for base and modified.
    sums = np.stack([row[idx].sum(axis=1) for row in totals])
    return _stats(totals.sum(axis=1)), _stats(sums), docs


def _summary(values, reps, level: float) -> dict[str, object]:
    tails = [50 - 50 * level, 50 + 50 * level]  # 2.5 and 97.5 exactly (1 - 0.95 is not 0.05)
    out: dict[str, object] = {}
    for stat in STATS:
        lo, hi = np.nanpercentile(reps[stat], tails)
        out[stat] = {"value": float(values[stat]), "lo": float(lo), "hi": float(hi)}
    return out | {"n": len(reps["ppl_ratio"]), "level": level}
