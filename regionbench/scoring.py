"""Importance scores: how much each block weight matters to each language's causal-LM loss.

    scores = compute_importance(model, tokenizer, {"ar": docs_ar, "ru": docs_ru}, metric="taylor")
    scores["ar"]["model.layers.0.mlp.up_proj.weight"]      # fp32 CPU tensor, same shape

Metrics are chosen by short name from `METRICS` (the paper's `taylor`, the `magnitude` and
`random` baselines, and the cheap variants `taylor_abs` and `fisher`). Importance does not depend
on the selection ratio, so the pipeline computes it once and caches it (`regionbench.cache`).

Batches: every document is tokenized without special tokens and gets one [BOS] in front (so a
tokenizer's own add_special_tokens policy cannot change the scores), the documents of a language
are concatenated and cut into fixed `seq_len` windows (the tail shorter than a window is dropped,
as in HF's run_clm `group_texts`), and windows are batched `batch_size` at a time. The loss of a
batch is HF's `labels=input_ids` loss: the mean token cross-entropy over the batch's
`batch_size * (seq_len - 1)` next-token predictions. So Σ_b ∇L(b) weighs every batch equally
(a smaller last batch counts as much as a full one), which is what "summing gradients over
batches" in the paper means.

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
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.choices import check_choice

DEFAULT_INCLUDE: tuple[str, ...] = (r"layers\.",)
# Norm gains are vectors, not matrices: zeroing one entry silences a whole residual channel at a
# sublayer's input. In a 7B model they are 0.0006% of block parameters; in a sandbox model with
# hidden size 64-256 a "random 5%" of them is no longer a small perturbation. The paper selects
# per weight matrix, so the default scope is the blocks' matrices.
DEFAULT_EXCLUDE: tuple[str, ...] = (r"norm",)


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


def _patterns(patterns: str | Iterable[str], what: str) -> list[re.Pattern[str]]:
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{what} pattern {p!r} is not a valid regex: {e}") from None
    return compiled


def in_scope(
    name: str,
    include: str | Iterable[str] = DEFAULT_INCLUDE,
    exclude: str | Iterable[str] = DEFAULT_EXCLUDE,
) -> bool:
    """True if `name` matches (re.search) any `include` regex and no `exclude` regex."""
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    return any(p.search(name) for p in inc) and not any(p.search(name) for p in exc)


def scoped_params(
    model: nn.Module,
    include: str | Iterable[str] = DEFAULT_INCLUDE,
    exclude: str | Iterable[str] = DEFAULT_EXCLUDE,
) -> dict[str, nn.Parameter]:
    """The in-scope (>= 1-D, floating point) parameters, in `named_parameters` order."""
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    return {
        name: p
        for name, p in model.named_parameters()
        if p.dim() >= 1
        and p.is_floating_point()
        and any(r.search(name) for r in inc)
        and not any(r.search(name) for r in exc)
    }


def _bos_id(tokenizer) -> int:
    # LLaMA-style tokenizers have a BOS; some families (Qwen, GPT-2) only an EOS, which plays the
    # same "start of text" role for them (lm-eval's rolling loglikelihood does the same).
    for attr in ("bos_token_id", "eos_token_id"):
        tok = getattr(tokenizer, attr, None)
        if tok is not None:
            return int(tok)
    raise ValueError("tokenizer has neither bos_token_id nor eos_token_id; cannot mark documents")


def token_windows(tokenizer, docs: list[str], seq_len: int) -> Tensor:
    """[n, seq_len] int64 windows: ([BOS] + tokens of each doc) concatenated, tail dropped."""
    bos = _bos_id(tokenizer)
    ids: list[int] = []
    for doc_ids in tokenizer(list(docs), add_special_tokens=False, verbose=False)["input_ids"]:
        ids.append(bos)
        ids.extend(doc_ids)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def iter_batches(windows: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive `batch_size` slices of `windows` (the last one may be smaller)."""
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start : start + batch_size]


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
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    return {name: metric.finalize(accs[name], p).cpu() for name, p in params.items()}


def compute_importance(
    model: nn.Module,
    tokenizer,
    texts: dict[str, list[str]],
    metric: str = "taylor",
    *,
    seq_len: int = 128,
    batch_size: int = 8,
    include: str | Iterable[str] = DEFAULT_INCLUDE,
    exclude: str | Iterable[str] = DEFAULT_EXCLUDE,
    seed: int = 0,
    progress: bool = True,
    accumulate_device: str | torch.device | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Score every in-scope parameter for every language: {lang: {param name: fp32 CPU tensor}}.

    Language-independent metrics (`magnitude`, `random`) return the very same inner dict for
    every language. The model's weights, requires_grad flags, `.grad` and train/eval mode are
    the same afterwards as before.
    """
    spec = METRICS[check_choice("metric", metric, METRICS)]
    if not isinstance(texts, dict) or not texts:
        raise ValueError("texts must be a non-empty {language: [documents]} dict")
    if int(seq_len) < 2:
        raise ValueError(f"seq_len {seq_len!r} is too small: need >= 2 tokens per window")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size {batch_size!r} must be >= 1")
    params = scoped_params(model, include, exclude)
    if not params:
        raise ValueError(f"no parameter is in scope: include={include!r}, exclude={exclude!r}")

    if not spec.per_language:
        shared = {name: spec.static(name, p, seed) for name, p in params.items()}
        return {lang: shared for lang in texts}

    # Tokenize everything before the first backward pass, so bad data fails fast.
    windows = {}
    for lang, docs in texts.items():
        w = token_windows(tokenizer, docs, int(seq_len))
        if w.shape[0] == 0:
            raise ValueError(
                f"language {lang!r} has fewer than seq_len={seq_len} tokens; "
                "add documents or lower seq_len"
            )
        windows[lang] = w

    scores = {}
    with _scoring_state(model, params):
        for lang, w in windows.items():
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
