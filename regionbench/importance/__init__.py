"""Importance scores: how much each block weight matters to each language's causal-LM loss.

    scores = compute_importance(model, tokenizer, {"ar": docs_ar, "ru": docs_ru}, metric="taylor",
                                samples=10_000, seq_len=512)
    scores["ar"]["model.layers.0.mlp.up_proj.weight"]      # fp32 CPU tensor, same shape

Metrics are chosen by short name from `METRICS` (the paper's `taylor`, the `magnitude` and
`random` baselines, and the variants `taylor_abs` and `fisher`). Importance does not depend on
the selection ratio, so the pipeline computes it once and caches it (`regionbench.common.cache`).

Samples: every language is scored on the same number of fixed-length samples (`samples` windows
of `seq_len` tokens, packed by `regionbench.common.packing`: the paper's 10,000 samples of 512
tokens), so S = Σ_ℓ score_ℓ weighs languages equally and a language with more text does not pull
the core towards itself. `samples=None` takes as many as the language with the least text gives.
`packing="documents"` makes one sample of each document instead (cut at `seq_len`, or left out
with `drop_long`; the padding is masked out of the loss): the authors' samples.
The loss of a sample is its mean next-token cross-entropy L_s; a batch's loss is the sum of its
samples' losses (`loss="sample_mean"`), so Σ_b ∇L(b) = Σ_s ∇L_s whatever the batching, and a
partial last batch weighs by its size. `loss="batch_mean"` is the authors' (Hugging Face's loss
of a micro-batch): the mean over all the batch's target tokens, so a long document weighs more
and the batching matters. `taylor` is then |θ · Σ_s ∇L_s| (the paper's order: gradients summed first, then θ·,
then |·|); `taylor_abs` and `fisher` fold each batch's gradient as it comes (per-batch saliency).

Scope: the parameters scored are chosen by `regionbench.models.scope` (default: the weight matrices of
the transformer blocks, found from the model's own block list).

Memory: gradients go into one fp32 accumulator per scored parameter through
`register_post_accumulate_grad_hook`, and each `.grad` is freed the moment it is accumulated, so
peak memory is about weights + one fp32 accumulator + activations, and a bf16 model still sums in
fp32. `accumulate_device="cpu"` moves the accumulators off the GPU for models whose fp32
accumulator does not fit next to the weights. Finished scores are moved to CPU after each
language, so the GPU holds at most one language's accumulators.

The package imports nothing until a name is used (`regionbench` imports it first so that the
notebook API's `rb.importance` stays the function, `compute_importance`).
"""

from __future__ import annotations

import importlib

_NAMES = {
    "compute_importance": "compute",
    "importance_samples": "compute",
    "iter_batches": "compute",
    "iter_scores": "compute",
    "score_samples": "compute",
    "ALGORITHM": "metrics",
    "METRICS": "metrics",
    "Metric": "metrics",
    "cached_scores": "stage",
    "check": "stage",
    "seq_len_for": "stage",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
