"""Freeze training: further pre-train a model on target-language text while a frozen set of
parameter entries (a region) stays bit-identical, and measure what the other languages forget.

This is the paper's third experiment (Zhang et al., ACL 2024, §5): freezing the core linguistic
region during further pre-training on one language reduces forgetting of the others at equal
learning of the target.  Everything outside the frozen set trains, embeddings and `lm_head`
included, as in the paper.

    cfg = FreezeConfig(target_langs=["xx"], steps=150, lr=1e-3)
    with restore_after(model):                      # one loaded model serves many jobs
        summary = train_frozen(model, tok, texts, region, cfg, eval_fn=ev, log_fn=log)

How the frozen set stays exact: its values are saved before training and written back after every
optimizer step (AdamW's decoupled weight decay would otherwise shrink them even with a zero
gradient).  Their gradients are also zeroed before clipping, so they neither inflate the clipped
norm nor build Adam moments; an entry whose parameter is frozen as a whole leaves the optimizer.

Low-precision models (bf16/fp16, as loaded on GPU) train through fp32 master weights.  AdamW
stepping bf16 parameters directly rounds away every update below half a bf16 ulp: at the paper's
lr 5e-5 most entries of a real model never move, so a freeze study would silently under-train.
Instead the optimizer steps an fp32 copy of each trainable low-precision parameter (its moments
are fp32 too); backward still runs on the model as loaded, each low-precision gradient is added
into its master's fp32 gradient as soon as it is accumulated and then freed, and after each step
the masters are rounded back into the model's own parameters.  The model therefore keeps its
dtype, and evaluation during training sees the same kind of model as the baseline evaluation.
Frozen entries are exact in both copies (an fp32 copy of a bf16 value rounds back to itself).
The cost, per trainable low-precision entry: 4 bytes of master, 8 of Adam moments and 4 of fp32
gradient during a step, against 6 for pure-bf16 AdamW; a 7B bf16 model needs ~112 GB on top of
its 14 GB of weights, before activations.  fp32 parameters train as they are (no copy), under
CUDA bf16 autocast when the whole model is fp32.  There is no loss scaling: fp16 gradients that
underflow are lost, as they would be without masters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from regionbench.choices import check_choice
from regionbench.data.packing import pack
from regionbench.regions import param_masks

SCHEDULES = {
    "linear": "linear warmup, then linear decay towards 0 (the HF Trainer default)",
    "cosine": "linear warmup, then half-cosine decay towards 0",
    "constant": "linear warmup, then constant",
}

# Parameters of these dtypes train through fp32 master weights (module docstring).
LOW_PRECISION = (torch.bfloat16, torch.float16)

EvalFn = Callable[[int], Mapping[str, float]]
LogFn = Callable[[dict[str, float], int], None]


@dataclass
class FreezeConfig:
    """Further pre-training settings.  Paper defaults: lr 5e-5, weight decay 0.001, seq_len 512.

    `batch_size` is the micro-batch (windows per forward pass); one optimizer step sees
    `batch_size * grad_accum` windows of `seq_len` tokens.  `eval_every=0` evaluates only at step
    0 and at the end; `max_grad_norm=None` disables clipping.  `save_model`: `train_frozen` saves
    the trained model and tokenizer when also given a `save_dir` (else saving is the caller's).
    """

    target_langs: list[str]
    steps: int = 200
    lr: float = 5e-5
    weight_decay: float = 0.001
    warmup_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 512
    eval_every: int = 50
    log_every: int = 1
    seed: int = 0
    save_model: bool = False
    max_grad_norm: float | None = 1.0
    schedule: str = "linear"

    def __post_init__(self) -> None:
        # A bare string (e.g. a Hydra override `target_langs=xx`) means one language, not chars.
        langs = [self.target_langs] if isinstance(self.target_langs, str) else self.target_langs
        self.target_langs = [str(lang) for lang in langs]
        if not self.target_langs:
            raise ValueError("FreezeConfig.target_langs [] is empty; name at least one language")
        if len(set(self.target_langs)) != len(self.target_langs):
            raise ValueError(f"FreezeConfig.target_langs {self.target_langs} has duplicates")
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("seq_len", self.seq_len, minimum=2)  # one window must predict >= 1 token
        if self.warmup_steps > self.steps:
            raise ValueError(
                f"FreezeConfig.warmup_steps {self.warmup_steps} is more than steps {self.steps}"
            )
        _check_float("lr", self.lr, positive=True)
        _check_float("weight_decay", self.weight_decay, positive=False)
        if self.max_grad_norm is not None:
            _check_float("max_grad_norm", self.max_grad_norm, positive=True)
        if not isinstance(self.save_model, bool):
            raise ValueError(f"FreezeConfig.save_model {self.save_model!r} is not a bool")
        check_choice("schedule", self.schedule, SCHEDULES)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"FreezeConfig.{name} {value!r} is not {what}")


def _check_float(name: str, value: object, *, positive: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        what = "a finite number > 0" if positive else "a finite number >= 0"
        raise ValueError(f"FreezeConfig.{name} {value!r} is not {what}")


# --------------------------------------------------------------------------- the frozen set


@dataclass
class _FrozenEntries:
    """Flat indices and saved values of one parameter's frozen entries.

    Indices rather than a bool mask on the device: a 1% region costs 8 bytes per *selected*
    entry instead of 1 byte per parameter entry (6.5 GB of masks for a 7B model).
    """

    param: nn.Parameter
    index: torch.Tensor
    values: torch.Tensor


def _frozen_sets(
    model: nn.Module, frozen: object
) -> tuple[list[_FrozenEntries], list[nn.Parameter]]:
    """Resolve a masks dict / Region / None into partially and wholly frozen parameters."""
    if frozen is None:
        return [], []
    # Aliases of a tied weight are merged (their union is frozen), as for every intervention.
    merged = [(param, mask.cpu()) for _, param, mask in param_masks(model, frozen, "frozen-set")]

    partial, whole = [], []
    for param, mask in merged:
        count = int(mask.sum())
        if count == 0:
            continue
        if count == mask.numel():
            whole.append(param)
            continue
        index = mask.reshape(-1).nonzero().squeeze(1).to(param.device)
        values = param.detach().reshape(-1).index_select(0, index)  # a copy, not a view
        partial.append(_FrozenEntries(param, index, values))
    return partial, whole


# --------------------------------------------------------------------------- data


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless window indices: one seeded permutation per epoch, batches may span epochs."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def _lr_factor(step: int, cfg: FreezeConfig) -> float:
    """Multiplier of cfg.lr for 0-based optimizer step `step`.

    Warmup ramps (step + 1) / warmup so the first step already learns (HF's schedule spends it at
    lr 0); the decay reaches 1 / (steps - warmup) on the last step, never exactly 0.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


# --------------------------------------------------------------------------- training


def train_frozen(
    model: nn.Module,
    tokenizer,
    train_texts: Mapping[str, Sequence[str]],
    frozen: object,
    cfg: FreezeConfig | Mapping,
    *,
    eval_fn: EvalFn | None = None,
    log_fn: LogFn | None = None,
    progress: bool = True,
    save_dir: str | Path | None = None,
) -> dict:
    """Further pre-train `model` in place on `cfg.target_langs` with the frozen set bit-identical.

    `frozen`: {param name: bool mask shaped like the parameter}, any object with such a `.masks`
    (a `regions.Region`), or None (train everything).  All floating-point parameters train except
    the frozen entries, whatever their `requires_grad` was; the flags are restored afterwards and
    the model is left in eval mode.  A bf16/fp16 model keeps its dtype and trains through fp32
    master weights (see the module docstring for why and for the memory it costs).

    `eval_fn(step)` runs in eval mode at step 0, every `cfg.eval_every` steps and after the last
    step; its metrics are merged with `train/loss`, `train/lr`, `train/grad_norm` (logged every
    `cfg.log_every` steps, loss averaged since the previous log) and passed to
    `log_fn(metrics, step)`.  Step k means "after k optimizer steps".

    Returns {"final_loss", "steps", "tokens", "epochs", "time_s" (excluding evaluation),
    "eval_time_s", "tokens_per_s", "frozen_params", "trainable_params": floats (log them under
    `train/`), "history": [(step, metrics logged at each eval step)], "saved_to": str | None}.
    The model and tokenizer are saved to `save_dir` only if it is given and `cfg.save_model`.
    """
    if not isinstance(cfg, FreezeConfig):
        cfg = FreezeConfig(**cfg)
    for lang in cfg.target_langs:
        check_choice("training language", lang, train_texts)
        if not train_texts[lang]:
            raise ValueError(f"training text for language {lang!r} is empty")
    partial, whole = _frozen_sets(model, frozen)

    docs = [doc for lang in cfg.target_langs for doc in train_texts[lang]]
    try:
        windows = pack(tokenizer, docs, cfg.seq_len, seed=cfg.seed)
    except ValueError as err:
        raise ValueError(f"training text: {err}") from None
    device = model.get_input_embeddings().weight.device
    batches = _batches(len(windows), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))

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
        was_training = model.training
        model.eval()
        metrics = {k: float(v) for k, v in eval_fn(step).items()}
        model.train(was_training)
        timers["eval"] += time.perf_counter() - start
        return metrics

    rng_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    hooks = []
    try:
        for p in model.parameters():
            p.grad = None  # a caller's stale .grad must not leak into the first update
            p.requires_grad_(id(p) not in whole_ids and p.is_floating_point())
        hooks = [p.register_post_accumulate_grad_hook(_into(m)) for p, m in masters.items()]
        # Decay matrices and embeddings only, not norm gains or biases (as HF Trainer does).
        groups = [
            {"params": [p for p in stepped if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in stepped if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))

        # fork_rng: seed dropout etc. for reproducibility without touching the caller's RNG.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(cfg.seed)
            metrics = evaluate(0)
            if metrics:
                history.append((0, metrics))
                if log_fn is not None:
                    log_fn(dict(metrics), 0)

            model.train()
            bar = tqdm(total=cfg.steps, desc="freeze-train", disable=not progress)
            try:
                losses_since_log: list[float] = []
                last_loss = math.nan
                eval_before, start = timers["eval"], time.perf_counter()
                for step in range(1, cfg.steps + 1):
                    last_loss, grad_norm, lr = _optimizer_step(
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
                    losses_since_log.append(last_loss)
                    metrics = {}
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        metrics["train/loss"] = sum(losses_since_log) / len(losses_since_log)
                        metrics["train/lr"] = lr
                        if cfg.max_grad_norm is not None:
                            metrics["train/grad_norm"] = grad_norm
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

    tokens = cfg.steps * cfg.grad_accum * cfg.batch_size * cfg.seq_len
    return {
        "final_loss": last_loss,
        "steps": float(cfg.steps),
        "tokens": float(tokens),
        "epochs": cfg.steps * cfg.grad_accum * cfg.batch_size / len(windows),
        "time_s": train_time,
        "eval_time_s": timers["eval"],
        "tokens_per_s": tokens / max(train_time, 1e-9),
        "frozen_params": float(frozen_numel),
        "trainable_params": float(trainable_numel),
        "history": history,
        "saved_to": saved_to,
    }


def _into(master: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A post-accumulate-grad hook that adds a low-precision gradient into `master.grad` in fp32
    and frees it, so micro-batches accumulate in fp32 and no two full-model gradient copies
    coexist."""

    def hook(param: torch.Tensor) -> None:
        if master.grad is None:
            master.grad = param.grad.to(torch.float32)
        else:
            master.grad.add_(param.grad)
        param.grad = None

    return hook


def _optimizer_step(
    model, windows, batches, cfg, device, partial, masters, stepped, optimizer, *, autocast
):
    """One optimizer step over `cfg.grad_accum` micro-batches; returns (loss, grad norm, lr).

    `stepped` are the optimizer's tensors; `masters` maps a low-precision parameter to its fp32
    master among them.  A non-finite loss or gradient norm skips the update (the caller then
    fails), so NaNs never reach the weights.
    """
    step_loss = torch.zeros((), device=device)
    for _ in range(cfg.grad_accum):
        batch = windows[next(batches)].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        (loss / cfg.grad_accum).backward()
        # .to: with a device_map the loss lives on the last GPU
        step_loss += loss.detach().float().to(device) / cfg.grad_accum
    loss_value = step_loss.item()
    lr = optimizer.param_groups[0]["lr"]
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return loss_value, math.nan, lr

    with torch.no_grad():  # frozen grads out of the clipped norm and out of Adam's moments
        for e in partial:
            grad = masters.get(e.param, e.param).grad
            if grad is not None:
                grad.view(-1).index_fill_(0, e.index, 0.0)
    # Always measured (max_norm inf scales by 1): an inf/NaN gradient with a finite loss (fp16
    # overflow) must skip the update too, or clipping would turn it into NaN weights.
    grad_norm = float(nn.utils.clip_grad_norm_(stepped, cfg.max_grad_norm or math.inf))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm, lr
    optimizer.step()
    with torch.no_grad():
        for e in partial:  # undo weight decay (and any update) on the frozen set of a master ...
            if e.param in masters:
                master = masters[e.param]
                master.view(-1).index_copy_(0, e.index, e.values.to(master.dtype))
        for param, master in masters.items():
            param.copy_(master)  # rounds to the model's dtype
        for e in partial:  # ... and on the model's own parameters, which stay bit-identical
            e.param.view(-1).index_copy_(0, e.index, e.values)
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm, lr


class Snapshot:
    """CPU copies of a model's parameters and buffers, taken by `restore_after`."""

    def __init__(self, model: nn.Module):
        self.params = list(model.parameters())
        self.tensors = self.params + list(model.buffers())
        self.saved = [t.detach().to("cpu", copy=True) for t in self.tensors]

    def changed(self) -> int:
        """Parameter entries whose value differs from the snapshot now (what training moved)."""
        return sum(
            int((p.detach().cpu() != s).sum())
            for p, s in zip(self.params, self.saved, strict=False)
        )

    def restore(self) -> None:
        with torch.no_grad():
            for t, s in zip(self.tensors, self.saved, strict=True):
                t.copy_(s)


@contextmanager
def restore_after(model: nn.Module) -> Iterator[Snapshot]:
    """Snapshot every parameter and buffer to CPU and write them back bit-exactly on exit (even on
    an exception), with `requires_grad` flags and train/eval mode, so that a model loaded once can
    serve a freeze-training job and then the next job.  Costs one CPU copy of the weights.
    Yields the `Snapshot` (its `changed()` counts what the block moved)."""
    snapshot = Snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        yield snapshot
    finally:
        snapshot.restore()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)


# --------------------------------------------------------------------------- forgetting


def forgetting_metrics(
    before: Mapping[str, object], after: Mapping[str, object], target_langs: Sequence[str]
) -> dict[str, float]:
    """Perplexity ratios after / before training: `learn/<lang>` for target languages (below 1:
    learned), `forget/<lang>` for the others (above 1: forgotten), plus arithmetic `learn/mean`
    and `forget/mean` over the languages present.  Values are floats or objects with `.ppl`
    (`evaluation.perplexity.LangPerplexity`)."""
    if set(before) != set(after):
        raise ValueError(
            f"languages before {sorted(before)} and after {sorted(after)} training differ"
        )
    targets = set(target_langs)
    out: dict[str, dict[str, float]] = {"learn": {}, "forget": {}}
    for lang in after:
        old, new = (
            float(getattr(before[lang], "ppl", before[lang])),
            float(getattr(after[lang], "ppl", after[lang])),
        )
        if not (math.isfinite(old) and old > 0):
            raise ValueError(f"perplexity before training {old!r} for {lang!r} is not finite > 0")
        out["learn" if lang in targets else "forget"][lang] = new / old
    metrics: dict[str, float] = {}
    for kind in ("forget", "learn"):
        for lang, ratio in out[kind].items():
            metrics[f"{kind}/{lang}"] = ratio
        if out[kind]:
            metrics[f"{kind}/mean"] = sum(out[kind].values()) / len(out[kind])
    return metrics
