"""`train_frozen`: the further pre-training loop of the freeze intervention, and the checks of
its settings (`intervention.*`, one schema in `regionbench.config`)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from regionbench.common.choices import check_choice
from regionbench.common.names import train as train_metric
from regionbench.common.packing import PACKINGS, pack, pack_documents
from regionbench.common.torchtools import SCHEDULES, lr_factor, modes_kept
from regionbench.config import InterventionConfig
from regionbench.interventions.frozen import LOW_PRECISION, frozen_sets, into_master, optimizer_step

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
    "eval_time_s", "tokens_per_s", "frozen_params", "trainable_params": floats (log them under
    `train/`), "history": [(step, metrics logged at each eval step)], "saved_to": str | None}.
    The model and tokenizer are saved to `save_dir` only if it is given and `cfg.save_model`.
    """
    if not isinstance(cfg, InterventionConfig):
        cfg = InterventionConfig(**cfg)
    check(cfg)
    langs = list(cfg.target_langs or train_texts)
    for lang in langs:
        check_choice("training language", lang, train_texts)
        if not train_texts[lang]:
            raise ValueError(f"training text for language {lang!r} is empty")
    partial, whole = frozen_sets(model, frozen, cfg.freeze_exclude)

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
    whole_ids = {id(p) for p in whole}
    trainable = [p for p in model.parameters() if p.is_floating_point() and id(p) not in whole_ids]
    if not trainable:
        raise ValueError("the frozen set covers every parameter; nothing to train")
    frozen_numel = sum(e.index.numel() for e in partial) + sum(p.numel() for p in whole)
    trainable_numel = sum(p.numel() for p in trainable) - sum(e.index.numel() for e in partial)
    # The optimizer steps `stepped`: each fp32 parameter itself, or the fp32 master of a
    # low-precision one (whose updates bf16 would round away).
    masters = {
        p: p.detach().to(torch.float32, copy=True) for p in trainable if p.dtype in LOW_PRECISION
    }
    stepped = [masters.get(p, p) for p in trainable]
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
            p.requires_grad_(id(p) not in whole_ids and p.is_floating_point())
        hooks = [p.register_post_accumulate_grad_hook(into_master(m)) for p, m in masters.items()]
        # decay_params=matrices: matrices and embeddings, not norm gains or biases.
        vector_decay = cfg.weight_decay if cfg.decay_params == "all" else 0.0
        groups = [
            {"params": [p for p in stepped if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in stepped if p.ndim < 2], "weight_decay": vector_decay},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas)
        )
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
            bar = tqdm(total=cfg.steps, desc="freeze-train", disable=not progress)
            try:
                losses_since_log: list[float] = []
                last_loss, tokens = math.nan, 0
                eval_before, start = timers["eval"], time.perf_counter()
                for step in range(1, cfg.steps + 1):
                    last_loss, grad_norm, lr, step_tokens = optimizer_step(
                        model,
                        windows,
                        batches,
                        cfg,
                        device,
                        partial,
                        masters,
                        stepped,
                        optimizer,
                        autocast=autocast,
                    )
                    if not math.isfinite(last_loss):  # nonsense from here on: fail the job
                        raise FloatingPointError(f"training loss is {last_loss} at step {step}")
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
        "frozen_params": float(frozen_numel),
        "trainable_params": float(trainable_numel),
        "history": history,
        "saved_to": saved_to,
    }
