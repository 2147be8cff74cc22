"""In-place interventions on a loaded model's region, undone bit-exactly when the block ends.

    with intervene(model, region, "remove") as applied:  # region entries set to 0
        ppl = perplexity(model, tok, texts)
        applied.changed                                  # entries whose value it changed
    # here every parameter is bitwise what it was: one loaded model serves many jobs

`remove` zeroes the region (the paper's removal), `scale` multiplies it by `factor`, `noise` adds
seeded Gaussian noise of standard deviation `std` — in weight units, or with `relative=True` in
units of each matrix's RMS (so one setting perturbs matrices of different scales alike); it is
drawn in fp32 on CPU from a per-parameter seed, added in fp32 and rounded to the parameter's
dtype, so bf16 models get the same draw as fp32 ones. Only the masked entries are touched.
The original masked values are copied aside before anything changes and written back on exit,
also when the block raises, so restoring does not depend on inverting the operation (x·0 or bf16
rounding cannot be undone). A removal that changes none of the region's entries (they are all
already 0) is an error, not a result. `freeze` is listed because it is a value of the
`intervention` axis, but it is a training intervention (regionbench.interventions.training.train_frozen), not
an in-place edit; `restore_after` undoes it (and any change) from a CPU snapshot of the model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.common.choices import check_choice
from regionbench.common.torchtools import modes_kept, seeded_generator
from regionbench.config import RunConfig

INTERVENTIONS: dict[str, str] = {
    "remove": "set the region to 0 (the paper's removal)",
    "scale": "multiply the region by `factor`",
    "noise": "add seeded Gaussian noise N(0, std²) to the region",
    "freeze": "further pre-train with the region held fixed (training, not in-place)",
}


@dataclass
class Applied:
    """What an intervention did: `selected` region entries, `changed` of them got a new value."""

    model: nn.Module
    selected: int
    changed: int


def param_masks(
    model: torch.nn.Module, region, what: str = "region"
) -> list[tuple[str, torch.nn.Parameter, Tensor]]:
    """(name, parameter, bool mask) for every masked parameter of `model`, checked before any
    change: names (with a did-you-mean), shapes and dtype. `region` is a Region or {name: mask}.
    A mask may name either alias of a tied weight; masks on one tensor are merged (their union),
    so every intervention and the frozen set treat tied weights alike."""
    import difflib

    masks = getattr(region, "masks", region)
    if not isinstance(masks, Mapping):
        raise ValueError(f"{what} {type(region).__name__} is not a Region or a dict of masks")
    params = dict(model.named_parameters(remove_duplicate=False))
    merged: dict[int, tuple[str, torch.nn.Parameter, Tensor]] = {}
    for name, mask in masks.items():
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{what} parameter {name!r} is not a parameter of the model{hint}")
        param = params[name]
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            raise ValueError(f"{what} mask for {name!r} is not a torch.bool tensor")
        if tuple(mask.shape) != tuple(param.shape):
            raise ValueError(
                f"{what} mask for {name!r} has shape {tuple(mask.shape)}, parameter "
                f"has {tuple(param.shape)}"
            )
        if id(param) in merged:  # two aliases of one tied weight
            first, _, other = merged[id(param)]
            mask = other | mask.to(other.device)
            name = first
        merged[id(param)] = (name, param, mask)
    return list(merged.values())


def _new_values(kind: str, old: Tensor, name: str, factor: float, std: float, seed: int) -> Tensor:
    if kind == "remove":
        return torch.zeros_like(old)
    if kind == "scale":
        return (old.float() * factor).to(old.dtype)
    gen = seeded_generator(seed, name)
    noise = torch.randn(old.shape, generator=gen, dtype=torch.float32) * std
    return (old.float() + noise.to(old.device)).to(old.dtype)


def check_intervention(kind: str, *, factor: float = 0.0, std: float = 0.0) -> str:
    """Validate an in-place intervention's name and arguments (one-line ValueError)."""
    kind = check_choice("intervention", kind, INTERVENTIONS)
    if kind == "freeze":
        raise ValueError(
            "intervention 'freeze' is a training intervention, not an in-place edit: "
            "intervention=freeze runs training (regionbench.interventions.training.train_frozen)"
        )
    if kind == "scale" and not math.isfinite(factor):
        raise ValueError(f"factor {factor!r} must be a finite number for intervention 'scale'")
    if kind == "noise" and not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std {std!r} must be a finite number >= 0 for intervention 'noise'")
    return kind


@contextlib.contextmanager
def intervene(
    model: nn.Module,
    region,
    kind: str = "remove",
    *,
    factor: float = 0.0,
    std: float = 0.0,
    seed: int = 0,
    relative: bool = False,
) -> Iterator[Applied]:
    """Apply `kind` to the entries of `region` (a Region or {param name: bool mask}) in place;
    restore them bit-exactly on exit. Yields an `Applied` with the counts."""
    kind = check_intervention(kind, factor=factor, std=std)
    targets = param_masks(model, region)  # all checks before the first write
    saved: list[tuple[Tensor, Tensor, Tensor]] = []
    selected = changed = 0
    try:
        with torch.no_grad():
            for name, p, mask in targets:
                mask = mask.to(device=p.device, dtype=torch.bool)
                if not bool(mask.any()):
                    continue
                old = p[mask]  # advanced indexing copies: these bits are what we restore
                scale = std
                if kind == "noise" and relative:
                    scale = std * float(p.detach().float().square().mean().sqrt())
                new = _new_values(kind, old, name, factor, scale, seed)
                saved.append((p, mask, old))
                p[mask] = new
                selected += old.numel()
                changed += int((new != old).sum())
        if kind == "remove" and selected and not changed:
            raise ValueError(
                f"removing the region changes none of its {selected} entries: they "
                "are all 0 already (a pruned or zero-initialised model?)"
            )
        yield Applied(model, selected, changed)
    finally:
        with torch.no_grad():
            # Reverse order, so parameters that share storage come back right too.
            for p, mask, old in reversed(saved):
                p[mask] = old


def check(run: RunConfig) -> None:
    """`intervention.*` of an in-place intervention, up front (freeze: `training.check`)."""
    iv = run.intervention
    if check_choice("intervention", iv.name, INTERVENTIONS) != "freeze":
        check_intervention(iv.name, factor=iv.factor, std=iv.std)


class Snapshot:
    """CPU copies of a model's parameters and buffers, taken by `restore_after`: what undoes a
    change nobody can invert (training)."""

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


@contextlib.contextmanager
def restore_after(model: nn.Module) -> Iterator[Snapshot]:
    """Snapshot every parameter and buffer to CPU and write them back bit-exactly on exit (even on
    an exception), with `requires_grad` flags and train/eval mode, so that a model loaded once can
    serve a freeze-training job and then the next job.  Costs one CPU copy of the weights.
    Yields the `Snapshot` (its `changed()` counts what the block moved)."""
    snapshot = Snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    with modes_kept(model):
        try:
            yield snapshot
        finally:
            snapshot.restore()
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
                p.grad = None
