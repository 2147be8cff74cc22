"""Importance scores: how much each block weight matters to each language's causal-LM loss.

    scores = compute_importance(model, tokenizer, {"ar": docs_ar, "ru": docs_ru}, metric="taylor",
                                samples=10_000, seq_len=512)
    scores["ar"]["model.layers.0.mlp.up_proj.weight"]      # fp32 CPU tensor, same shape

Metrics are chosen by short name from `METRICS` (the paper's `taylor`, the `magnitude` and
`random` baselines, and the variants `taylor_abs` and `fisher`). Importance does not depend on
the selection ratio, so the pipeline computes it once and caches it (`regionbench.cache`).

Samples: every language is scored on the same number of fixed-length samples (`samples` windows
of `seq_len` tokens, packed by `regionbench.data.packing`: the paper's 10,000 samples of 512
tokens), so S = Σ_ℓ score_ℓ weighs languages equally and a language with more text does not pull
the core towards itself. `samples=None` takes as many as the language with the least text gives.
The loss of a sample is its mean next-token cross-entropy L_s; a batch's loss is the sum of its
samples' losses, so Σ_b ∇L(b) = Σ_s ∇L_s whatever the batching, and a partial last batch weighs by
its size. `taylor` is then |θ · Σ_s ∇L_s| (the paper's order: gradients summed first, then θ·,
then |·|); `taylor_abs` and `fisher` fold each batch's gradient as it comes (per-batch saliency).

Scope: the parameters scored are chosen by `regionbench.scope` (default: the weight matrices of
the transformer blocks, found from the model's own block list).

Memory: gradients go into one fp32 accumulator per scored parameter through
`register_post_accumulate_grad_hook`, and each `.grad` is freed the moment it is accumulated, so
peak memory is about weights + one fp32 accumulator + activations, and a bf16 model still sums in
fp32. `accumulate_device="cpu"` moves the accumulators off the GPU for models whose fp32
accumulator does not fit next to the weights. Finished scores are moved to CPU after each
language, so the GPU holds at most one language's accumulators.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.choices import check_choice
from regionbench.data.packing import pack
from regionbench.scope import scoped_params


@dataclass(frozen=True)
class Metric:
    """One importance metric.

    Gradient metrics fold each batch's gradient into an fp32 accumulator with `update(acc, grad,
    param)` and turn the accumulator into scores with `finalize(acc, param)` (both in place, on
    the accumulator's device). Static metrics ignore the data: `static(name, param, seed)` returns
    the score tensor, shared by every language.
    """

    name: str
    doc: str
    update: Callable[[Tensor, Tensor, Tensor], None] | None = None
    finalize: Callable[[Tensor, Tensor], Tensor] | None = None
    static: Callable[[str, Tensor, int], Tensor] | None = None

    @property
    def per_language(self) -> bool:
        return self.static is None


def _theta32(param: Tensor, like: Tensor) -> Tensor:
    return param.detach().to(device=like.device, dtype=torch.float32)


def _taylor_update(acc: Tensor, grad: Tensor, param: Tensor) -> None:
    acc.add_(grad)


def _taylor_finalize(acc: Tensor, param: Tensor) -> Tensor:
    # The paper's order: sum the gradients over all batches first, then θ·, then |·|.
    return acc.mul_(_theta32(param, acc)).abs_()


def _taylor_abs_update(acc: Tensor, grad: Tensor, param: Tensor) -> None:
    acc.add_((grad * _theta32(param, acc)).abs_())


def _fisher_update(acc: Tensor, grad: Tensor, param: Tensor) -> None:
    acc.add_((grad * _theta32(param, acc)).square_())


def _keep(acc: Tensor, param: Tensor) -> Tensor:
    return acc


def stable_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from (`seed`, parameter name): a parameter's random draw does not
    depend on which other parameters are in scope or on their order."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _magnitude(name: str, param: Tensor, seed: int) -> Tensor:
    return param.detach().to(device="cpu", dtype=torch.float32).abs()


def _random(name: str, param: Tensor, seed: int) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(stable_seed(seed, name))
    return torch.rand(param.shape, generator=gen, dtype=torch.float32)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "taylor",
            "|θ · Σ_b ∇θ L(b)|: gradients summed over batches first (the paper)",
            update=_taylor_update,
            finalize=_taylor_finalize,
        ),
        Metric(
            "taylor_abs",
            "Σ_b |θ · ∇θ L(b)|: per-batch first-order saliency, summed",
            update=_taylor_abs_update,
            finalize=_keep,
        ),
        Metric(
            "fisher",
            "Σ_b (θ · ∇θ L(b))²: empirical-Fisher-style saliency",
            update=_fisher_update,
            finalize=_keep,
        ),
        Metric("magnitude", "|θ|: language-independent baseline", static=_magnitude),
        Metric("random", "seeded uniform [0, 1): language-independent control", static=_random),
    )
}


def iter_batches(windows: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive `batch_size` slices of `windows` (the last one may be smaller)."""
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start : start + batch_size]


def importance_samples(
    tokenizer, texts: Mapping[str, Iterable[str]], seq_len: int, samples: int | None = None
) -> dict[str, Tensor]:
    """{lang: [samples, seq_len] token windows}: the same number for every language.

    `samples=None` packs all of each language's text and keeps as many windows as the language
    with the least text has; otherwise each language must give `samples` windows (documents
    beyond those are not read).
    """
    out = {}
    for lang, docs in texts.items():
        try:
            out[lang] = pack(tokenizer, docs, seq_len, n_windows=samples)
        except ValueError as err:
            raise ValueError(f"importance text of language {lang!r}: {err}") from None
    if samples is None and out:
        n = min(w.shape[0] for w in out.values())
        out = {lang: w[:n] for lang, w in out.items()}
    return out


def _input_device(model: nn.Module) -> torch.device:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return emb.weight.device
    return next(model.parameters()).device


@contextlib.contextmanager
def _scoring_state(model: nn.Module, params: dict[str, nn.Parameter]):
    """Eval mode, gradients only for `params`, no stale `.grad`; everything restored on exit."""
    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters() if p.grad is not None}
    scored = {id(p) for p in params.values()}
    try:
        model.eval()  # no dropout: scores must not depend on dropout draws
        for p in model.parameters():
            p.grad = None
            # Frozen embeddings etc. need no gradient buffers; the scored ones need gradients
            # even when the caller had frozen them.
            p.requires_grad_(id(p) in scored)
        with torch.enable_grad():
            yield
    finally:
        for p in model.parameters():
            p.grad = grads.get(p)
            p.requires_grad_(flags[p])
        model.train(was_training)


def _gradient_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[Tensor],
    metric: Metric,
    accumulate_device,
    progress: bool,
    desc: str,
) -> dict[str, Tensor]:
    from tqdm.auto import tqdm

    accs = {
        name: torch.zeros(
            p.shape,
            dtype=torch.float32,
            device=p.device if accumulate_device is None else accumulate_device,
        )
        for name, p in params.items()
    }

    def make_hook(acc: Tensor):
        def hook(p: Tensor) -> None:
            # Fold this batch's gradient into the fp32 accumulator and free it at once, so no
            # full set of .grad tensors ever coexists with the accumulators.
            metric.update(acc, p.grad.to(device=acc.device, dtype=torch.float32), p)
            p.grad = None

        return hook

    handles = [
        p.register_post_accumulate_grad_hook(make_hook(accs[name])) for name, p in params.items()
    ]
    device = _input_device(model)
    try:
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            batch = batch.to(device)
            # HF's loss is the mean over the batch's tokens; times the rows it is the sum of the
            # samples' mean losses, so each sample weighs the same in every batch.
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss * batch.shape[0]
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    return {name: metric.finalize(accs[name], p).cpu() for name, p in params.items()}


def compute_importance(
    model: nn.Module,
    tokenizer,
    texts: Mapping[str, Iterable[str]],
    metric: str = "taylor",
    *,
    samples: int | None = None,
    seq_len: int = 128,
    batch_size: int = 8,
    scope: str = "matrices",
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    seed: int = 0,
    progress: bool = True,
    accumulate_device: str | torch.device | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Score every in-scope parameter for every language: {lang: {param name: fp32 CPU tensor}}.

    `texts` {lang: documents} are packed into `samples` windows of `seq_len` tokens per language
    (see the module docstring); static metrics (`magnitude`, `random`) read no text and return
    the very same inner dict for every language.
    """
    check_choice("metric", metric, METRICS)
    if not isinstance(texts, Mapping) or not texts:
        raise ValueError("texts must be a non-empty {language: [documents]} dict")
    if METRICS[metric].per_language:
        windows = importance_samples(tokenizer, texts, seq_len, samples)
    else:
        windows = dict.fromkeys(texts)
    return score_samples(
        model,
        windows,
        metric,
        batch_size=batch_size,
        scope=scope,
        include=include,
        exclude=exclude,
        seed=seed,
        progress=progress,
        accumulate_device=accumulate_device,
    )


def score_samples(
    model: nn.Module,
    samples: Mapping[str, Tensor | None],
    metric: str = "taylor",
    *,
    batch_size: int = 8,
    scope: str = "matrices",
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    seed: int = 0,
    progress: bool = True,
    accumulate_device: str | torch.device | None = None,
) -> dict[str, dict[str, Tensor]]:
    """`compute_importance` on ready token windows {lang: [n, seq_len] int64} (None for static
    metrics). The model's weights, requires_grad flags, `.grad` and train/eval mode are the same
    afterwards as before."""
    spec = METRICS[check_choice("metric", metric, METRICS)]
    if not samples:
        raise ValueError("samples must be a non-empty {language: token windows} dict")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size {batch_size!r} must be >= 1")
    params = scoped_params(model, scope, include, exclude)

    if not spec.per_language:
        shared = {name: spec.static(name, p, seed) for name, p in params.items()}
        return {lang: shared for lang in samples}

    counts = {lang: (None if w is None else int(w.shape[0])) for lang, w in samples.items()}
    if None in counts.values() or len(set(counts.values())) != 1 or 0 in counts.values():
        raise ValueError(
            f"metric {metric!r} needs the same positive number of samples for "
            f"every language (equal weight); got {counts}"
        )
    scores = {}
    with _scoring_state(model, params):
        for lang, w in samples.items():
            scores[lang] = _gradient_scores(
                model,
                params,
                list(iter_batches(w, int(batch_size))),
                spec,
                accumulate_device,
                progress,
                desc=f"importance {metric} [{lang}]",
            )
    return scores
