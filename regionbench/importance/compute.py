"""Computing importance: packing each language's samples and folding every batch's gradient
into fp32 accumulators (see the package docstring)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regionbench.common.choices import check_choice
from regionbench.common.packing import PACKINGS, lm_inputs, pack, pack_documents
from regionbench.common.torchtools import modes_kept
from regionbench.importance.distributed import rank_world
from regionbench.importance.metrics import METRICS, Metric
from regionbench.models.scope import scoped_params

# How a batch's loss is formed from its samples' next-token losses (`importance.loss`).
LOSSES = {
    "sample_mean": "the sum of each sample's mean token loss: every sample weighs the same",
    "batch_mean": "the mean over every target token of the batch (Hugging Face's loss over a "
    "micro-batch, as in the authors' script): a long document weighs more",
}


def iter_batches(windows: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive `batch_size` slices of `windows` (the last one may be smaller)."""
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start : start + batch_size]


def importance_samples(
    tokenizer,
    texts: Mapping[str, Iterable[str]],
    seq_len: int,
    samples: int | None = None,
    *,
    packing: str = "windows",
    drop_long: bool = False,
) -> dict[str, Tensor]:
    """{lang: [samples, seq_len] token samples}: the same number for every language.

    `packing="windows"` packs documents into full windows; `"documents"` gives one document per
    sample, right-padded (with `drop_long`, longer documents are left out instead of cut; see
    `regionbench.common.packing`). `samples=None` reads all of each language's text and keeps
    as many samples as the language with the least text has; otherwise each language must give
    `samples` (documents beyond those are not read).
    """
    check_choice("packing", packing, PACKINGS)
    if drop_long and packing != "documents":
        raise ValueError("drop_long needs packing='documents' (windows cut no document)")
    out = {}
    for lang, docs in texts.items():
        try:
            if packing == "documents":
                out[lang] = pack_documents(
                    tokenizer, docs, seq_len, n_samples=samples, drop_long=drop_long
                )
            else:
                out[lang] = pack(tokenizer, docs, seq_len, n_windows=samples)
        except ValueError as err:
            raise ValueError(f"importance text of language {lang!r}: {err}") from None
    if samples is None and out:
        n = min(w.shape[0] for w in out.values())
        out = {lang: w[:n] for lang, w in out.items()}
    return out


def batch_loss(model: nn.Module, batch: Tensor, loss: str = "sample_mean") -> Tensor:
    """The loss of one batch of samples (`LOSSES`), on the model's output device.

    Full windows keep Hugging Face's token mean, times the rows for `sample_mean` (every row has
    the same number of targets, so that is the sum of the rows' means); padded documents with
    `sample_mean` average each row over its own targets.
    """
    device = _input_device(model)
    inputs = {k: v.to(device) for k, v in lm_inputs(batch).items()}
    if loss == "batch_mean":
        return model(**inputs, use_cache=False).loss
    if "attention_mask" not in inputs:
        return model(**inputs, use_cache=False).loss * batch.shape[0]
    labels = inputs.pop("labels")
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")  # 0 at -100
    return (nll.view(target.shape).sum(dim=1) / (target != -100).sum(dim=1)).sum()


def _input_device(model: nn.Module) -> torch.device:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return emb.weight.device
    return next(model.parameters()).device


def _checkpointing(model: nn.Module, on: bool | None = None) -> bool:
    """Whether Hugging Face activation checkpointing is on; `on` switches it (the method names of
    transformers 5, else those of 4.x)."""
    new = hasattr(model, "activation_checkpointing_enable")
    if on is True:
        kwargs = {"use_reentrant": False}
        if new:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif on is False:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
    name = "is_activation_checkpointing" if new else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def _active_dropout(model: nn.Module) -> str | None:
    """The first dropout the model would apply in training mode (a module or a config rate)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"{name} (p={module.p})"
    config = getattr(model, "config", None)
    for key, value in (vars(config) if config is not None else {}).items():
        if key.endswith(("dropout", "pdrop")) and isinstance(value, float) and value > 0:
            return f"config.{key}={value}"
    return None


@contextlib.contextmanager
def _scoring_state(model: nn.Module, params: dict[str, nn.Parameter], checkpointing: bool = False):
    """Eval mode, gradients only for `params`, no stale `.grad`; everything restored on exit.
    `checkpointing`: Hugging Face gradient checkpointing (activations recomputed in backward),
    which runs only in training mode, so it is refused for a model with active dropout."""
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters() if p.grad is not None}
    scored = {id(p) for p in params.values()}
    was_checkpointing = _checkpointing(model)
    if checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"importance.gradient_checkpointing: {type(model).__name__} does not support it"
            )
        if (dropout := _active_dropout(model)) is not None:
            raise ValueError(
                f"importance.gradient_checkpointing runs the model in training mode, and it has "
                f"active dropout ({dropout}): scores would depend on dropout draws"
            )
        _checkpointing(model, True)
    # eval mode: scores must not depend on dropout draws (training mode only to checkpoint, with
    # no dropout: then the two modes compute the same function)
    with modes_kept(model, training=checkpointing):
        try:
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
            if checkpointing and not was_checkpointing:
                _checkpointing(model, False)


def _gradient_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[Tensor],
    metric: Metric,
    accumulate_device,
    progress: bool,
    desc: str,
    start: tuple[int, dict[str, Tensor]] | None = None,
    checkpoint: Callable[[int, dict[str, Tensor]], None] | None = None,
    every: int | None = None,
    loss: str = "sample_mean",
) -> dict[str, Tensor]:
    """Fold every batch's gradient into fp32 accumulators and finalize them. `start` (batches
    done, raw accumulators) resumes an interrupted language; `checkpoint(batches done, accs)` is
    called every `every` batches (one process only)."""
    from tqdm.auto import tqdm

    accs = {
        name: torch.zeros(
            p.shape,
            dtype=torch.float32,
            device=p.device if accumulate_device is None else accumulate_device,
        )
        for name, p in params.items()
    }
    done = 0
    if start is not None:
        done, saved = start
        for name, acc in accs.items():
            acc.copy_(saved[name])

    def make_hook(acc: Tensor):
        def hook(p: Tensor) -> None:
            # Fold this batch's gradient into the fp32 accumulator and free it at once, so no
            # full set of .grad tensors ever coexists with the accumulators. The gradient stays
            # in the model's dtype: the update's ops upcast it as they read it (exact for bf16
            # and fp16, so the sums are bit-identical to adding an fp32 copy; on CUDA no fp32
            # temporary of the matrix is made), and a CPU accumulator is sent half the bytes.
            grad = p.grad if p.grad.device == acc.device else p.grad.to(acc.device)
            metric.update(acc, grad, p)
            p.grad = None

        return hook

    handles = [
        p.register_post_accumulate_grad_hook(make_hook(accs[name])) for name, p in params.items()
    ]
    # Under torch.distributed each rank folds every world-th batch (whole batches, so the
    # per-batch metrics fold the same batches as one process) and the sums are all-reduced.
    rank, world = rank_world()
    mine = batches[rank::world]
    if world > 1 and (start is not None or checkpoint is not None):
        raise ValueError("resuming importance is for one process, not under torch.distributed")
    try:
        show = progress and rank == 0
        bar = tqdm(total=len(mine), initial=done, desc=desc, unit="batch", disable=not show)
        for i, batch in enumerate(mine[done:], start=done + 1):
            batch_loss(model, batch, loss).backward()
            bar.update()
            if checkpoint is not None and every and i % every == 0 and i < len(mine):
                checkpoint(i, accs)
        bar.close()
    finally:
        for h in handles:
            h.remove()
    if world > 1:
        from regionbench.importance.distributed import all_reduce_sum

        all_reduce_sum((accs[name], p.device) for name, p in params.items())
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
    packing: str = "windows",
    drop_long: bool = False,
    loss: str = "sample_mean",
) -> dict[str, dict[str, Tensor]]:
    """Score every in-scope parameter for every language: {lang: {param name: fp32 CPU tensor}}.

    `texts` {lang: documents} become `samples` samples of `seq_len` tokens per language
    (`packing`, `drop_long`: `importance_samples`; `loss`: `LOSSES`); static metrics
    (`magnitude`, `random`) read no text and return the very same inner dict for every language.
    """
    check_choice("metric", metric, METRICS)
    check_choice("loss", loss, LOSSES)
    if not isinstance(texts, Mapping) or not texts:
        raise ValueError("texts must be a non-empty {language: [documents]} dict")
    if METRICS[metric].per_language:
        windows = importance_samples(
            tokenizer, texts, seq_len, samples, packing=packing, drop_long=drop_long
        )
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
        loss=loss,
    )


def score_samples(
    model: nn.Module, samples: Mapping[str, Tensor | None], metric: str = "taylor", **options
) -> dict[str, dict[str, Tensor]]:
    """`compute_importance` on ready token windows {lang: [n, seq_len] int64} (None for static
    metrics): every language's scores at once. The model's weights, requires_grad flags, `.grad`
    and train/eval mode are the same afterwards as before. `options` are `iter_scores`'s
    (batch_size, scope, include, exclude, seed, progress, accumulate_device, ...), which gives
    the same languages one at a time."""
    return dict(iter_scores(model, samples, metric, **options))


def iter_scores(
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
    resume=None,
    checkpoint_every: int | None = None,
    gradient_checkpointing: bool = False,
    loss: str = "sample_mean",
) -> Iterator[tuple[str, Mapping[str, Tensor]]]:
    """(language, {param: score}) pairs, each language scored when the previous one has been
    taken: a caller that stores each and lets it go (the score cache) holds one language's
    scores at a time, however many languages there are. Checks run before the first pair.

    `resume` (a `regionbench.common.cache.Partial`) keeps each finished language and, every
    `checkpoint_every` batches, the accumulators of the current one: a run interrupted and
    started again continues from there, with the same result as an uninterrupted run.
    `loss`: how a batch's loss is formed (`LOSSES`)."""
    spec = METRICS[check_choice("metric", metric, METRICS)]
    check_choice("loss", loss, LOSSES)
    if not samples:
        raise ValueError("samples must be a non-empty {language: token windows} dict")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size {batch_size!r} must be >= 1")
    params = scoped_params(model, scope, include, exclude)

    if not spec.per_language:
        shared = {name: spec.static(name, p, seed) for name, p in params.items()}
        return iter([(lang, shared) for lang in samples])

    counts = {lang: (None if w is None else int(w.shape[0])) for lang, w in samples.items()}
    if None in counts.values() or len(set(counts.values())) != 1 or 0 in counts.values():
        raise ValueError(
            f"metric {metric!r} needs the same positive number of samples for "
            f"every language (equal weight); got {counts}"
        )

    size = int(batch_size)
    if spec.activation is not None:  # forward passes only: nothing to resume or all-reduce
        from regionbench.importance.activations import iter_activation_scores

        return iter_activation_scores(
            model, samples, spec.activation, params, batch_size=size, progress=progress, name=metric
        )

    def languages() -> Iterator[tuple[str, Mapping[str, Tensor]]]:
        for lang, w in samples.items():
            if resume is not None and (finished := resume.finished(lang)) is not None:
                yield lang, finished  # scored before an interruption (read from disk)
                continue
            state = resume.state(lang, size) if resume is not None else None
            start = None if state is None else (state[0] // size, state[1])

            def save(batches: int, accs: dict[str, Tensor], lang=lang) -> None:
                resume.save(lang, batches * size, size, accs)

            with _scoring_state(model, params, gradient_checkpointing):  # restored each time
                scores = _gradient_scores(
                    model,
                    params,
                    list(iter_batches(w, size)),
                    spec,
                    accumulate_device,
                    progress,
                    desc=f"importance {metric} [{lang}]",
                    start=start,
                    checkpoint=save if resume is not None and checkpoint_every else None,
                    every=checkpoint_every,
                    loss=loss,
                )
            if resume is not None:
                resume.finish(lang, scores)
            yield lang, scores
            del scores  # not held while the next language is computed

    return languages()
