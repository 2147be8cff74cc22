"""Editing a loaded model's weights in place, undone bit-exactly: the mechanism of the in-place
interventions (`regionbench.interventions.kinds`), and the snapshot that undoes training.

    with edited(model, region, lambda p, old, name: torch.zeros_like(old)) as applied:
        ppl = perplexity(model, tok, texts)
        applied.changed                                  # entries whose value it changed
    # here every parameter is bitwise what it was: one loaded model serves many jobs
    with restore_after(model) as snapshot:               # anything, training included
        ...

Only the masked entries are touched. The original masked values are copied aside before
anything changes and written back on exit, also when the block raises, so restoring does not
depend on inverting the operation (x·0 or bf16 rounding cannot be undone). `restore_after`
undoes any change (training) from a CPU snapshot of the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.common.torchtools import modes_kept


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


# (parameter, the region's old values in it, parameter name) -> their new values
NewValues = Callable[[nn.Parameter, Tensor, str], Tensor]


@contextlib.contextmanager
def edited(
    model: nn.Module, region, new_values: NewValues, *, must_change: str | None = None
) -> Iterator[Applied]:
    """Set the entries of `region` (a Region or {param name: bool mask}) to
    `new_values(param, old, name)` in place; restore them bit-exactly on exit. `must_change`
    names an edit that is an error when it changes no entry (a removal of zeros). Yields an
    `Applied` with the counts."""
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
                new = new_values(p, old, name)
                saved.append((p, mask, old))
                p[mask] = new
                selected += old.numel()
                changed += int((new != old).sum())
        if must_change and selected and not changed:
            raise ValueError(
                f"{must_change} the region changes none of its {selected} entries: they "
                "are all 0 already (a pruned or zero-initialised model?)"
            )
        yield Applied(model, selected, changed)
    finally:
        with torch.no_grad():
            # Reverse order, so parameters that share storage come back right too.
            for p, mask, old in reversed(saved):
                p[mask] = old


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
