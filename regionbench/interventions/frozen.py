"""The frozen set and the fp32 master weights of freeze training, and one optimizer step that
keeps the frozen entries bit-identical in both (see the package docstring)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from regionbench.common.packing import PAD, lm_inputs
from regionbench.interventions.weights import param_masks

# Parameters of these dtypes train through fp32 master weights (package docstring).
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class FrozenEntries:
    """Flat indices and saved values of one parameter's frozen entries.

    Indices rather than a bool mask on the device: a 1% region costs 8 bytes per *selected*
    entry instead of 1 byte per parameter entry (6.5 GB of masks for a 7B model).
    """

    param: nn.Parameter
    index: torch.Tensor
    values: torch.Tensor


def frozen_sets(
    model: nn.Module, frozen: object, exclude: Sequence[str] = ()
) -> tuple[list[FrozenEntries], list[nn.Parameter]]:
    """Resolve a masks dict / Region / None into partially and wholly frozen parameters.
    A parameter whose name matches a regex of `exclude` (re.search; a tied weight by its first
    alias) is left out: it trains even where the region covers it."""
    if frozen is None:
        return [], []
    # Aliases of a tied weight are merged (their union is frozen), as for every intervention.
    merged = [
        (param, mask.cpu())
        for name, param, mask in param_masks(model, frozen, "frozen-set")
        if not any(re.search(pattern, name) for pattern in exclude)
    ]

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
        partial.append(FrozenEntries(param, index, values))
    return partial, whole


def into_master(master: torch.Tensor) -> Callable[[torch.Tensor], None]:
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


def accumulate(model, windows, batches, cfg, device, *, autocast) -> tuple[float, int]:
    """Forward and backward over `cfg.grad_accum` micro-batches; (loss, tokens read).

    Each micro-batch's loss is Hugging Face's token mean over its targets (padding excluded),
    and the step's gradient their mean (the parameters' hooks move it where the optimizer
    reads it)."""
    step_loss = torch.zeros((), device=device)
    tokens = 0
    for _ in range(cfg.grad_accum):
        batch = windows[next(batches)]
        tokens += int((batch != PAD).sum())
        inputs = {k: v.to(device) for k, v in lm_inputs(batch).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**inputs, use_cache=False).loss
        (loss / cfg.grad_accum).backward()
        # .to: with a device_map the loss lives on the last GPU
        step_loss += loss.detach().float().to(device) / cfg.grad_accum
    return step_loss.item(), tokens


def frozen_update(cfg, partial, masters, stepped, optimizer) -> float:
    """Clip, step and restore the frozen set, after `accumulate`; the gradient norm. `stepped`
    are the optimizer's tensors; `masters` maps a low-precision parameter to its fp32 master
    among them. A non-finite gradient norm skips the update (the caller then fails), so NaNs
    never reach the weights."""

    def drop_frozen_grads() -> None:
        with torch.no_grad():  # out of Adam's moments (and, unless clip_frozen, the clipped norm)
            for e in partial:
                grad = masters.get(e.param, e.param).grad
                if grad is not None:
                    grad.view(-1).index_fill_(0, e.index, 0.0)

    if not cfg.clip_frozen:
        drop_frozen_grads()
    # Always measured (max_norm inf scales by 1): an inf/NaN gradient with a finite loss (fp16
    # overflow) must skip the update too, or clipping would turn it into NaN weights.
    grad_norm = float(nn.utils.clip_grad_norm_(stepped, cfg.max_grad_norm or math.inf))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return grad_norm
    if cfg.clip_frozen:  # counted in the norm, as the authors' restore-after-step does
        drop_frozen_grads()
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
    return grad_norm
