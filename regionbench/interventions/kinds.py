"""Interventions (`intervention=`): one registry entry per value of the axis, which the pipeline
and the report ask instead of testing the name — whether it trains, how its options are checked,
how it changes the region, and how it reads in a title.

    kind = intervention_kind(run.intervention.name)   # INTERVENTIONS[...], did-you-mean error
    if kind.trains: ...                                # further training (freeze)
    with intervene(model, region, "remove") as applied:   # the notebook API (`rb.intervene`)
        ...

`remove` zeroes the region (the paper's removal), `scale` multiplies it by `factor`, `noise` adds
seeded Gaussian noise of standard deviation `std` — in weight units, or with `relative=True` in
units of each matrix's RMS (so one setting perturbs matrices of different scales alike); it is
drawn in fp32 on CPU from a per-parameter seed, added in fp32 and rounded to the parameter's
dtype, so bf16 models get the same draw as fp32 ones. All three are undone bit-exactly
(`weights.edited`). A removal that changes none of the region's entries (they are all already
0) is an error, not a result. `freeze` further pre-trains with the region held bit-identical
(`training.train_frozen`); the pipeline undoes it from a snapshot (`weights.restore_after`).

Add an intervention: one `Intervention` in `INTERVENTIONS`, one `conf/intervention/<name>.yaml`,
one test (CONTRIBUTING.md, "Add an intervention").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.common.choices import check_choice
from regionbench.common.torchtools import seeded_generator
from regionbench.config import InterventionConfig, RunConfig
from regionbench.interventions import training
from regionbench.interventions.weights import Applied, NewValues, edited

# (the run's intervention settings, its seed) -> (param, old values, name) -> new values
Edit = Callable[[InterventionConfig, int], NewValues]


def _removed(iv: InterventionConfig, seed: int) -> NewValues:
    return lambda p, old, name: torch.zeros_like(old)


def _scaled(iv: InterventionConfig, seed: int) -> NewValues:
    return lambda p, old, name: (old.float() * iv.factor).to(old.dtype)


def _noised(iv: InterventionConfig, seed: int) -> NewValues:
    def values(p: nn.Parameter, old: Tensor, name: str) -> Tensor:
        std = iv.std
        if iv.relative:
            std = iv.std * float(p.detach().float().square().mean().sqrt())
        gen = seeded_generator(seed, name)
        noise = torch.randn(old.shape, generator=gen, dtype=torch.float32) * std
        return (old.float() + noise.to(old.device)).to(old.dtype)

    return values


def _check_factor(iv: InterventionConfig) -> None:
    if not math.isfinite(iv.factor):
        raise ValueError(f"factor {iv.factor!r} must be a finite number for intervention 'scale'")


def _check_std(iv: InterventionConfig) -> None:
    if not (math.isfinite(iv.std) and iv.std >= 0):
        raise ValueError(f"std {iv.std!r} must be a finite number >= 0 for intervention 'noise'")


def _shared(shared: Mapping[str, str], key: str) -> str:
    return f" {shared[key]}" if shared.get(key) else ""


@dataclass(frozen=True)
class Intervention:
    """A value of the `intervention` axis: an in-place `edit` of the region, or (`trains`)
    further training with the region treated specially."""

    name: str
    doc: str
    check: Callable[[InterventionConfig], None]  # its options, up front
    # the sweep in words, from the model's name and the params its runs share
    title: Callable[[str, Mapping[str, str]], str]
    edit: Edit | None = None  # in place, undone bit-exactly
    train: Callable | None = None  # further training: `training.train_frozen`'s signature
    must_change: str | None = None  # an edit that changes nothing is an error ("removing")
    word: str = ""  # after the region in a condition's words: "random 1% frozen"
    # Whether `seed` can change its result (noise draws, training order); one that does not
    # say is taken to, so a sweep never merges its seeds by mistake.
    uses_seed: bool = True

    @property
    def trains(self) -> bool:
        return self.train is not None

    @contextlib.contextmanager
    def apply(self, model: nn.Module, region, iv: InterventionConfig, seed: int):
        """The in-place edit on `region`, undone on exit; yields `Applied`."""
        if self.edit is None:
            raise ValueError(
                f"intervention {self.name!r} is a training intervention, not an in-place edit: "
                f"intervention={self.name} runs training ({self.train.__module__}."
                f"{self.train.__name__})"
            )
        with edited(model, region, self.edit(iv, seed), must_change=self.must_change) as done:
            yield done


def _freeze_title(model: str, shared: Mapping[str, str]) -> str:
    targets = shared.get("intervention.target_langs", "").strip("[]").replace("'", "")
    return f"Further training {model} on {targets or 'new text'} with weights frozen"


INTERVENTIONS: dict[str, Intervention] = {
    kind.name: kind
    for kind in (
        Intervention(
            "remove",
            "set the region to 0 (the paper's removal)",
            check=lambda iv: None,
            title=lambda model, shared: f"Removing regions of {model}",
            edit=_removed,
            must_change="removing",
            uses_seed=False,
        ),
        Intervention(
            "scale",
            "multiply the region by `factor`",
            check=_check_factor,
            title=lambda model, shared: (
                f"Scaling regions of {model}"
                + (
                    f" by {shared['intervention.factor']}"
                    if shared.get("intervention.factor")
                    else ""
                )
            ),
            edit=_scaled,
            uses_seed=False,
        ),
        Intervention(
            "noise",
            "add seeded Gaussian noise N(0, std²) to the region",
            check=_check_std,
            title=lambda model, shared: (
                "Adding noise"
                + (f" (std {shared['intervention.std']})" if shared.get("intervention.std") else "")
                + f" to regions of {model}"
            ),
            edit=_noised,
        ),
        Intervention(
            "freeze",
            "further pre-train with the region held fixed (training, not in-place)",
            check=training.check,
            title=_freeze_title,
            train=training.train_frozen,
            word="frozen",
        ),
    )
}


def intervention_kind(name: str) -> Intervention:
    """The intervention called `name`, or a one-line error naming the choices."""
    return INTERVENTIONS[check_choice("intervention", name, INTERVENTIONS)]


def check(run: RunConfig) -> None:
    """`intervention.*`, up front."""
    intervention_kind(run.intervention.name).check(run.intervention)


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
    """Apply the in-place intervention `kind` to the entries of `region` (a Region or
    {param name: bool mask}); restore them bit-exactly on exit. Yields an `Applied` with the
    counts."""
    entry = intervention_kind(kind)
    iv = InterventionConfig(name=entry.name, factor=factor, std=std, relative=relative)
    if entry.edit is not None:
        entry.check(iv)
    with entry.apply(model, region, iv, seed) as applied:
        yield applied
