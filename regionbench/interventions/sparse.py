"""Region-only training (`intervention=train_region`): the region's entries of each parameter
gathered into one flat fp32 master, the only tensors the optimizer sees, so AdamW's moments, the
fp32 masters and the fp32 gradients exist for the region alone.

    entries = region_entries(model, region)         # one RegionEntries per parameter it touches
    hooks = [e.param.register_post_accumulate_grad_hook(gather_into(e)) for e in entries]
    ... backward ...                                # each .grad is gathered, then freed
    region_step(entries, optimizer, max_grad_norm)  # clip, AdamW on the masters, scatter back

Why gather and scatter, not a LoRA or a sparse optimizer: a region is an arbitrary boolean mask
per matrix (top-k entries, FFN neurons, attention heads), so the one representation that covers
them all is the flat index of its entries. A LoRA restricted to the region's rows (peft) fits
neuron and head regions but not entry regions, and its low-rank update is another model class
than "these entries move"; torch's sparse gradients are not supported by AdamW. Gathering keeps
the update exactly AdamW on the region's coordinates: the same arithmetic as freezing the
complement, without the state for the complement.

Memory, per entry of the region: 4 bytes of fp32 master, 8 of AdamW moments, 4 of fp32 gradient
and 8 of int64 index: 24 bytes, against freeze's 16 per *trainable* entry (+ 8 + s per frozen
entry). Every parameter outside the region has `requires_grad=False`, so autograd computes no
gradient for it at all; a region parameter's full gradient exists only between its accumulation
and its hook (one parameter at a time, in the model's dtype). Peak:

    train_region:  W·s + 24·|R| + max_{p ∈ R}(numel(p))·s + activations
    freeze:        W·s + (12 + 4·[s < 4])·(W − |F|) + (8 + s)·|F| + activations

with W the parameters, s their bytes (4 for fp32, 2 for bf16), |R| the region's entries and |F|
the frozen set's (freeze keeps a master only for low-precision parameters; a region or frozen
set covering a whole parameter keeps no index). A 1% region of LLaMA-2-7B in bf16 (6.5e7
entries) needs 13.5 GB of weights + 1.6 GB; freezing it needs 13.5 + 107 GB
(`benchmarks/bench_train_memory.py` measures both; README, "Scaling out").

Entries outside the region are never written, so they stay bit-identical; the region's entries
are written back from their masters after every step (rounded to the parameter's dtype).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from regionbench.interventions.weights import param_masks


def freeze_bytes(params: int, frozen: int, dtype_bytes: int, largest: int) -> float:
    """Freeze's training state beyond weights and activations (the formula above): fp32
    gradient and AdamW moments per trainable entry, an fp32 master for low precision, and the
    frozen entries' index and snapshot."""
    master = 4 if dtype_bytes < 4 else 0
    return (12 + master) * (params - frozen) + (8 + dtype_bytes) * frozen


def region_bytes(params: int, region: int, dtype_bytes: int, largest: int) -> float:
    """train_region's: 24 bytes per region entry and the largest region matrix's gradient."""
    return 24 * region + largest * dtype_bytes


@dataclass
class RegionEntries:
    """One parameter's region entries: their flat indices (None: the whole parameter) and the
    fp32 master of their values, the tensor the optimizer steps."""

    param: nn.Parameter
    index: torch.Tensor | None
    master: torch.Tensor

    @property
    def numel(self) -> int:
        return self.master.numel()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        flat = tensor.reshape(-1)
        return flat if self.index is None else flat.index_select(0, self.index)

    def write_back(self) -> None:
        """The master into the model's parameter, rounded to its dtype; nothing else moves."""
        with torch.no_grad():
            values = self.master.to(self.param.dtype)
            if self.index is None:
                self.param.view(-1).copy_(values)
            else:
                self.param.view(-1).index_copy_(0, self.index, values)


def region_entries(
    model: nn.Module, region: object, exclude: Sequence[str] = ()
) -> list[RegionEntries]:
    """The region's entries of every floating-point parameter it touches (a Region or
    {name: mask}; tied aliases merged). Names matching a regex of `exclude` are left out of the
    region (they stay fixed, as `freeze_exclude` leaves them out of the frozen set)."""
    if region is None:
        raise ValueError("train_region needs a region: an empty one trains nothing")
    entries = []
    for name, param, mask in param_masks(model, region, "region"):
        if any(re.search(pattern, name) for pattern in exclude):
            continue
        if not param.is_floating_point():
            continue
        flat = mask.reshape(-1).to(param.device)
        count = int(flat.sum())
        if count == 0:
            continue
        index = None if count == flat.numel() else flat.nonzero().squeeze(1)
        master = (
            param.detach().reshape(-1).to(torch.float32, copy=True)
            if index is None
            else param.detach().reshape(-1).index_select(0, index).to(torch.float32)
        )
        entries.append(RegionEntries(param, index, master))
    if not entries:
        raise ValueError("the region has no entry in a floating-point parameter: nothing to train")
    return entries


def gather_into(entry: RegionEntries) -> Callable[[torch.Tensor], None]:
    """A post-accumulate-grad hook: the region's entries of the parameter's gradient are added
    into the master's fp32 gradient, and the full gradient is freed at once."""

    def hook(param: torch.Tensor) -> None:
        grad = entry.gather(param.grad).to(torch.float32)
        if entry.master.grad is None:
            entry.master.grad = grad.clone() if entry.index is None else grad
        else:
            entry.master.grad.add_(grad)
        param.grad = None

    return hook


def region_step(
    entries: Sequence[RegionEntries], optimizer: torch.optim.Optimizer, max_grad_norm
) -> float:
    """Clip the region's gradient, step AdamW on the masters and write them back; the gradient
    norm (before clipping). A non-finite norm skips the update, so NaNs never reach the weights."""
    masters = [e.master for e in entries]
    grad_norm = float(nn.utils.clip_grad_norm_(masters, max_grad_norm or math.inf))
    if math.isfinite(grad_norm):
        optimizer.step()
        for e in entries:
            e.write_back()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
