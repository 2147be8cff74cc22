"""The further pre-training loop of the training interventions and the checks of their settings
(`intervention.*`, one schema in `regionbench.config`):

    train_frozen(model, tok, texts, region, cfg, seed=0)   # freeze: all but the region trains
    train_region(model, tok, texts, region, cfg, seed=0)   # train_region: only the region trains

Both run the same loop (data order, schedule, clipping, evaluation and logging steps, seeds,
`save_model`), so their forgetting and learning curves compare one for one; they differ only in
which entries the optimizer holds (`frozen`: masters and the frozen set; `sparse`: the region's
flat masters)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from regionbench.common.choices import check_choice
from regionbench.common.names import train as train_metric
from regionbench.common.packing import PACKINGS, pack, pack_documents
from regionbench.common.torchtools import SCHEDULES, lr_factor, modes_kept
from regionbench.config import InterventionConfig
from regionbench.interventions.frozen import (
    LOW_PRECISION,
    accumulate,
    frozen_sets,
    frozen_update,
    into_master,
)
from regionbench.interventions.sparse import gather_into, region_entries, region_step

# Which trained parameters AdamW's weight decay applies to (`intervention.decay_params`).
DECAY_PARAMS = {
    "matrices": "matrices and embeddings, not norm gains or biases (as HF Trainer does)",
    "all": "every trained parameter (the authors': their no-decay names match nothing in LLaMA)",
}
EvalFn = Callable[[int], Mapping[str, float]]
LogFn = Callable[[dict[str, float], int], None]


def check(cfg: InterventionConfig) -> None:
    """One-line errors for freeze-training settings, before any model work."""
    for name in ("steps", "batch_size", "grad_accum", "log_every", "train_docs"):
        _check_int(name, getattr(cfg, name), minimum=1)
    for name in ("warmup_steps", "eval_every"):
        _check_int(name, getattr(cfg, name), minimum=0)
    _check_int("seq_len", cfg.seq_len, minimum=2)  # one window must predict >= 1 token
    if cfg.warmup_steps > cfg.steps:
        raise ValueError(
            f"intervention.warmup_steps {cfg.warmup_steps} is more than steps {cfg.steps}"
        )
    _check_float("lr", cfg.lr, positive=True)
    _check_float("weight_decay", cfg.weight_decay, positive=False)
    if cfg.max_grad_norm is not None:
        _check_float("max_grad_norm", cfg.max_grad_norm, positive=True)
    for name in ("save_model", "drop_long", "clip_frozen"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"intervention.{name} {getattr(cfg, name)!r} is not a bool")
    check_choice("intervention.schedule", cfg.schedule, SCHEDULES)
    check_choice("intervention.decay_params", cfg.decay_params, DECAY_PARAMS)
    check_choice("intervention.packing", cfg.packing, PACKINGS)
    if cfg.drop_long and cfg.packing != "documents":
        raise ValueError(
            f"intervention.drop_long=true needs intervention.packing=documents, not "
            f"{cfg.packing!r} (windows cut the packed text: no document is too long)"
        )
    betas = cfg.betas
    if not (
        isinstance(betas, list | tuple)
        and len(betas) == 2
        and all(
            isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
        )
    ):
        raise ValueError(f"intervention.betas {betas!r} is not two numbers in [0, 1)")
    for pattern in cfg.freeze_exclude:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as err:
            raise ValueError(
                f"intervention.freeze_exclude {pattern!r} is not a valid regular expression: {err}"
            ) from None
    langs = cfg.target_langs
    if langs is not None and (not langs or len(set(langs)) != len(langs)):
        raise ValueError(f"intervention.target_langs {langs} is empty or has duplicates")


def check_region(cfg: InterventionConfig) -> None:
    """`check`, and what only-the-region training cannot do."""
    check(cfg)
    if cfg.clip_frozen:
        raise ValueError(
            "intervention.clip_frozen=true counts the gradients of the fixed entries in the "
            "clipped norm, but train_region computes no gradient outside the region: set "
            "intervention.clip_frozen=false"
        )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"intervention.{name} {value!r} is not {what}")


def _check_float(name: str, value: object, *, positive: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        what = "a finite number > 0" if positive else "a finite number >= 0"
        raise ValueError(f"intervention.{name} {value!r} is not {what}")


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless window indices: one seeded permutation per epoch, batches may span epochs."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


@dataclass
class _Trained:
    """What one training loop steps: which parameters need gradients, the hooks that move their
    gradients to the optimizer's tensors, its groups, the update after a backward, the counts."""

    needs_grad: set[int]  # ids of the parameters that get requires_grad=True
    hooks: list[tuple[nn.Parameter, Callable]]
    groups: list[dict]  # AdamW's parameter groups (weight decay per group)
    update: Callable[[torch.optim.Optimizer], float]  # clip, step, write back -> grad norm
    trainable: int  # entries that train
    fixed: int  # entries held bit-identical
    masters: int  # fp32 master entries the optimizer steps instead of the model's own


def _decay_groups(cfg: InterventionConfig, tensors, is_matrix) -> list[dict]:
    # decay_params=matrices: matrices and embeddings, not norm gains or biases.
    vector_decay = cfg.weight_decay if cfg.decay_params == "all" else 0.0
    groups = [
        {"params": [t for t in tensors if is_matrix(t)], "weight_decay": cfg.weight_decay},
        {"params": [t for t in tensors if not is_matrix(t)], "weight_decay": vector_decay},
    ]
    return [g for g in groups if g["params"]]


def _frozen(model: nn.Module, frozen: object, cfg: InterventionConfig) -> _Trained:
    partial, whole = frozen_sets(model, frozen, cfg.freeze_exclude)
    whole_ids = {id(p) for p in whole}
    trainable = [p for p in model.parameters() if p.is_floating_point() and id(p) not in whole_ids]
    if not trainable:
        raise ValueError("the frozen set covers every parameter; nothing to train")
    fixed = sum(e.index.numel() for e in partial) + sum(p.numel() for p in whole)
    # The optimizer steps `stepped`: each fp32 parameter itself, or the fp32 master of a
    # low-precision one (whose updates bf16 would round away).
    masters = {
        p: p.detach().to(torch.float32, copy=True) for p in trainable if p.dtype in LOW_PRECISION
    }
    stepped = [masters.get(p, p) for p in trainable]
    return _Trained(
        needs_grad={id(p) for p in trainable},
        hooks=[(p, into_master(m)) for p, m in masters.items()],
        groups=_decay_groups(cfg, stepped, lambda t: t.ndim >= 2),
        update=lambda optimizer: frozen_update(cfg, partial, masters, stepped, optimizer),
        trainable=sum(p.numel() for p in trainable) - sum(e.index.numel() for e in partial),
        fixed=fixed,
        masters=sum(m.numel() for m in masters.values()),
    )


def _region(model: nn.Module, region: object, cfg: InterventionConfig) -> _Trained:
    entries = region_entries(model, region, cfg.freeze_exclude)
    ndim = {id(e.master): e.param.ndim for e in entries}
    trainable = sum(e.numel for e in entries)
    total = sum(p.numel() for p in model.parameters())
    return _Trained(
        needs_grad={id(e.param) for e in entries},
        hooks=[(e.param, gather_into(e)) for e in entries],
        groups=_decay_groups(cfg, [e.master for e in entries], lambda t: ndim[id(t)] >= 2),
        update=lambda optimizer: region_step(entries, optimizer, cfg.max_grad_norm),
        trainable=trainable,
        fixed=total - trainable,
        masters=trainable,
    )


def train_frozen(
    model: nn.Module,
    tokenizer,
    train_texts: Mapping[str, Sequence[str]],
    frozen: object,
    cfg: InterventionConfig | Mapping,
    *,
    seed: int = 0,
    eval_fn: EvalFn | None = None,
    log_fn: LogFn | None = None,
    progress: bool = True,
    save_dir: str | Path | None = None,
) -> dict:
    """Further pre-train `model` in place on `train_texts` (only `cfg.target_langs` of them, if
    set) with the frozen set bit-identical; `seed` fixes the data order and dropout draws.

    `frozen`: {param name: bool mask shaped like the parameter}, any object with such a `.masks`
    (a `regions.Region`), or None (train everything); parameters matching `cfg.freeze_exclude`
    train whatever the mask says.  All floating-point parameters train except
    the frozen entries, whatever their `requires_grad` was; the flags are restored afterwards and
    the model is left in eval mode.  A bf16/fp16 model keeps its dtype and trains through fp32
    master weights (see the module docstring for why and for the memory it costs).

    `eval_fn(step)` runs in eval mode at step 0, every `cfg.eval_every` steps and after the last
    step; its metrics are merged with `train/loss`, `train/lr`, `train/grad_norm` (logged every
    `cfg.log_every` steps, loss averaged since the previous log) and passed to
    `log_fn(metrics, step)`.  Step k means "after k optimizer steps".

    Returns {"final_loss", "steps", "tokens" (read, padding not counted), "samples" (windows or
    documents to draw from), "epochs", "time_s" (excluding evaluation),
    "eval_time_s", "tokens_per_s", "frozen_params", "trainable_params", "master_params" (fp32
    masters), "optimizer_state" (entries of AdamW's moments): floats (log them under `train/`),
    "history": [(step, metrics logged at each eval step)], "saved_to": str | None}.
    The model and tokenizer are saved to `save_dir` only if it is given and `cfg.save_model`.
    """
    if not isinstance(cfg, InterventionConfig):
        cfg = InterventionConfig(**cfg)
    check(cfg)
    return _further_train(
        model,
        tokenizer,
        train_texts,
        cfg,
        lambda: _frozen(model, frozen, cfg),
        seed=seed,
        eval_fn=eval_fn,
        log_fn=log_fn,
        progress=progress,
        save_dir=save_dir,
        desc="freeze-train",
    )


def train_region(
    model: nn.Module,
    tokenizer,
    train_texts: Mapping[str, Sequence[str]],
    region: object,
    cfg: InterventionConfig | Mapping,
    *,
    seed: int = 0,
    eval_fn: EvalFn | None = None,
    log_fn: LogFn | None = None,
    progress: bool = True,
    save_dir: str | Path | None = None,
) -> dict:
    """`train_frozen`'s inverse, with its signature, loop and summary: only the entries of
    `region` (a Region or {name: bool mask}; not None) train, every other entry stays
    bit-identical, and the optimizer's state and the fp32 masters exist for the region alone
    (`regionbench.interventions.sparse`). Parameters matching `cfg.freeze_exclude` are left out
    of the region (they stay fixed); `cfg.clip_frozen` must be false."""
    if not isinstance(cfg, InterventionConfig):
        cfg = InterventionConfig(**cfg)
    check_region(cfg)
    return _further_train(
        model,
        tokenizer,
        train_texts,
        cfg,
        lambda: _region(model, region, cfg),
        seed=seed,
        eval_fn=eval_fn,
        log_fn=log_fn,
        progress=progress,
        save_dir=save_dir,
        desc="train-region",
    )


def _further_train(
    model: nn.Module,
    tokenizer,
    train_texts: Mapping[str, Sequence[str]],
    cfg: InterventionConfig,
    resolve: Callable[[], _Trained],
    *,
    seed: int,
    eval_fn: EvalFn | None,
    log_fn: LogFn | None,
    progress: bool,
    save_dir: str | Path | None,
    desc: str,
) -> dict:
    """The loop both training interventions share; `resolve()` says what the optimizer steps."""
    langs = list(cfg.target_langs or train_texts)
    for lang in langs:
        check_choice("training language", lang, train_texts)
        if not train_texts[lang]:
            raise ValueError(f"training text for language {lang!r} is empty")
    trained = resolve()

    docs = [doc for lang in langs for doc in train_texts[lang]]
    try:
        if cfg.packing == "documents":  # the batches draw rows at random: no shuffle needed
            windows = pack_documents(tokenizer, docs, cfg.seq_len, drop_long=cfg.drop_long)
        else:
            windows = pack(tokenizer, docs, cfg.seq_len, seed=seed)
    except ValueError as err:
        raise ValueError(f"training text: {err}") from None
    device = model.get_input_embeddings().weight.device
    batches = _batches(len(windows), cfg.batch_size, torch.Generator().manual_seed(seed))

    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters() if p.grad is not None}
    # Autocast would also recast bf16/fp16 weights, so it serves fp32 models only; a
    # low-precision model trains as loaded, like it is evaluated.
    autocast = device.type == "cuda" and not any(
        p.dtype in LOW_PRECISION for p in model.parameters()
    )

    history: list[tuple[int, dict[str, float]]] = []
    timers = {"eval": 0.0}

    def evaluate(step: int) -> dict[str, float]:
        if eval_fn is None:
            return {}
        start = time.perf_counter()
        with modes_kept(model, training=False):
            metrics = {k: float(v) for k, v in eval_fn(step).items()}
        timers["eval"] += time.perf_counter() - start
        return metrics

    rng_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    hooks = []
    try:
        for p in model.parameters():
            p.grad = None  # a caller's stale .grad must not leak into the first update
            p.requires_grad_(id(p) in trained.needs_grad)
        hooks = [p.register_post_accumulate_grad_hook(hook) for p, hook in trained.hooks]
        optimizer = torch.optim.AdamW(trained.groups, lr=cfg.lr, betas=tuple(cfg.betas))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, warmup=cfg.warmup_steps, total=cfg.steps, schedule=cfg.schedule),
        )

        # fork_rng: seed dropout etc. for reproducibility without touching the caller's RNG.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            metrics = evaluate(0)
            if metrics:
                history.append((0, metrics))
                if log_fn is not None:
                    log_fn(dict(metrics), 0)

            model.train()
            bar = tqdm(total=cfg.steps, desc=desc, disable=not progress)
            try:
                losses_since_log: list[float] = []
                last_loss, tokens = math.nan, 0
                eval_before, start = timers["eval"], time.perf_counter()
                for step in range(1, cfg.steps + 1):
                    lr = optimizer.param_groups[0]["lr"]
                    last_loss, step_tokens = accumulate(
                        model, windows, batches, cfg, device, autocast=autocast
                    )
                    if not math.isfinite(last_loss):  # nonsense from here on: fail the job
                        optimizer.zero_grad(set_to_none=True)
                        raise FloatingPointError(f"training loss is {last_loss} at step {step}")
                    grad_norm = trained.update(optimizer)
                    if not math.isfinite(grad_norm):
                        raise FloatingPointError(f"gradient norm is {grad_norm} at step {step}")
                    scheduler.step()
                    tokens += step_tokens
                    losses_since_log.append(last_loss)
                    metrics = {}
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        metrics[train_metric("loss")] = sum(losses_since_log) / len(
                            losses_since_log
                        )
                        metrics[train_metric("lr")] = lr
                        if cfg.max_grad_norm is not None:
                            metrics[train_metric("grad_norm")] = grad_norm
                        losses_since_log = []
                    if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                        metrics.update(evaluate(step))
                        if eval_fn is not None:
                            history.append((step, dict(metrics)))
                    if metrics and log_fn is not None:
                        log_fn(metrics, step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.3f}")
                train_time = time.perf_counter() - start - (timers["eval"] - eval_before)
            finally:
                bar.close()
        state = sum(
            t.numel()
            for per_param in optimizer.state.values()
            for key, t in per_param.items()
            if key != "step" and torch.is_tensor(t)
        )
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = grads.get(p)
        model.eval()

    saved_to = None
    if cfg.save_model and save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
        saved_to = str(save_dir)

    return {
        "final_loss": last_loss,
        "steps": float(cfg.steps),
        "tokens": float(tokens),
        "samples": float(len(windows)),
        "epochs": cfg.steps * cfg.grad_accum * cfg.batch_size / len(windows),
        "time_s": train_time,
        "eval_time_s": timers["eval"],
        "tokens_per_s": tokens / max(train_time, 1e-9),
        "frozen_params": float(trained.fixed),
        "trainable_params": float(trained.trainable),
        "master_params": float(trained.masters),
        "optimizer_state": float(state),
        "history": history,
        "saved_to": saved_to,
    }
