"""Interventions (`intervention=`): one registry entry per value of the axis, which the pipeline
and the report ask instead of testing the name — whether it trains, how its options are checked,
how it changes the region, and how it reads in a title.

    kind = intervention_kind(run.intervention.name)   # INTERVENTIONS[...], did-you-mean error
    if kind.trains: ...                                # further training (freeze, train_region)
    with intervene(model, region, "remove") as applied:   # the notebook API (`rb.intervene`)
        ...

`remove` zeroes the region (the paper's removal), `scale` multiplies it by `factor`, `noise` adds
seeded Gaussian noise of standard deviation `std` — in weight units, or with `relative=True` in
units of each matrix's RMS (so one setting perturbs matrices of different scales alike); it is
drawn in fp32 on CPU from a per-parameter seed, added in fp32 and rounded to the parameter's
dtype, so bf16 models get the same draw as fp32 ones. All three are undone bit-exactly
(`weights.edited`). A removal that changes none of the region's entries (they are all already
0) is an error, not a result. `freeze` further pre-trains with the region held bit-identical
(`training.train_frozen`), `train_region` with everything *but* the region held bit-identical and
the optimizer's state for the region alone (`training.train_region`); the pipeline undoes either
from a snapshot (`weights.restore_after`).
`ablate`, `fix` and `steer` change the activations of the region's whole units by forward hooks
(`hooks`: weights untouched, hooks removed on exit): to 0, to their median or mean on reference
text (the importance samples), or shifted by `factor` × the difference of two languages' means.

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
from regionbench.interventions import hooks, sparse, training
from regionbench.interventions.weights import Applied, NewValues, edited
from regionbench.regions.kinds import region_kind

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


def _ablated(iv: InterventionConfig) -> hooks.Action:
    return lambda x, value: torch.zeros_like(x)


def _fixed(iv: InterventionConfig) -> hooks.Action:
    return lambda x, value: value.expand_as(x)


def _steered(iv: InterventionConfig) -> hooks.Action:
    return lambda x, value: x + iv.factor * value


def _fix_values(iv: InterventionConfig, stats: list[hooks.Stats]) -> list[Tensor]:
    return [s.of(iv.statistic, iv.lang) for s in stats]


def _steer_values(iv: InterventionConfig, stats: list[hooks.Stats]) -> list[Tensor]:
    source, target = iv.steer
    return [s.token_mean[target] - s.token_mean[source] for s in stats]


STATISTICS = {"median": "the median over samples of each one's mean", "mean": "their mean"}


def _check_fix(iv: InterventionConfig) -> None:
    check_choice("intervention.statistic", iv.statistic, STATISTICS)


def _check_steer(iv: InterventionConfig) -> None:
    _check_factor(iv)
    if not iv.steer or len(iv.steer) != 2 or iv.steer[0] == iv.steer[1]:
        raise ValueError(
            f"intervention=steer needs intervention.steer=[<from>, <to>]: two importance "
            f"languages (adds factor × (mean activation in <to> - in <from>)); got {iv.steer!r}"
        )


def _fix_title(model: str, shared: Mapping[str, str]) -> str:
    lang = shared.get("intervention.lang")
    on = f" on {lang}" if lang not in (None, "", "None") else ""
    return f"Fixing unit activations of {model} to their {shared.get('intervention.statistic', 'median')}{on}"


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
    needs_region: bool = False  # an empty region (ratio=0) is an error, not a baseline
    # Whether `seed` can change its result (noise draws, training order); one that does not
    # say is taken to, so a sweep never merges its seeds by mistake.
    uses_seed: bool = True
    # an activation intervention: what its forward hooks do to the region's units
    # (`hooks.Action`), and the reference values they need from the importance text
    hook: Callable[[InterventionConfig], hooks.Action] | None = None
    values: Callable[[InterventionConfig, list[hooks.Stats]], list[Tensor]] | None = None
    # a training one: the device bytes its training keeps beyond the weights and activations,
    # from (parameters, region entries, bytes per weight, largest parameter's entries)
    memory: Callable[[int, int, int, int], float] | None = None

    @property
    def trains(self) -> bool:
        return self.train is not None

    @property
    def reads_text(self) -> bool:
        """Whether it needs reference text (`apply(..., reference=)`): the importance samples."""
        return self.values is not None

    @contextlib.contextmanager
    def apply(
        self,
        model: nn.Module,
        region,
        iv: InterventionConfig,
        seed: int,
        reference: Mapping[str, Tensor] | None = None,
    ):
        """The in-place edit on `region`, undone on exit, or the activation hooks on its units,
        removed on exit (`reference`: token windows {lang: [n, seq_len]} for their values);
        yields `Applied`."""
        if self.hook is not None and not any(
            m.any() for m in getattr(region, "masks", region).values()
        ):
            yield Applied(model, 0, 0)  # the empty region: the unmodified model
            return
        if self.hook is not None:
            sites = hooks.activation_sites(model, region)
            values = None
            if self.values is not None:
                if not reference:
                    raise ValueError(f"intervention {self.name!r} needs reference text")
                values = self.values(iv, hooks.reference_stats(model, sites, reference))
            with hooks.hooked(model, sites, self.hook(iv), values) as done:
                yield done
            return
        if self.edit is None:
            raise ValueError(
                f"intervention {self.name!r} is a training intervention, not an in-place edit: "
                f"intervention={self.name} runs training ({self.train.__module__}."
                f"{self.train.__name__})"
            )
        with edited(model, region, self.edit(iv, seed), must_change=self.must_change) as done:
            yield done


def _targets(shared: Mapping[str, str]) -> str:
    return shared.get("intervention.target_langs", "").strip("[]").replace("'", "") or "new text"


def _freeze_title(model: str, shared: Mapping[str, str]) -> str:
    return f"Further training {model} on {_targets(shared)} with weights frozen"


def _train_region_title(model: str, shared: Mapping[str, str]) -> str:
    return f"Further training only a region of {model} on {_targets(shared)}"


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
            "ablate",
            "set the activations of the region's units to 0 (forward hooks; weights untouched)",
            check=lambda iv: None,
            title=lambda model, shared: f"Ablating unit activations of {model}",
            hook=_ablated,
            word="ablated",
            uses_seed=False,
        ),
        Intervention(
            "fix",
            "fix the activations of the region's units to their median (or mean) on reference "
            "text (Kojima et al.'s on_p50; intervention.lang, intervention.statistic)",
            check=_check_fix,
            title=_fix_title,
            hook=_fixed,
            values=_fix_values,
            word="fixed",
            uses_seed=False,
        ),
        Intervention(
            "steer",
            "add factor × (mean activation in <to> − in <from>) to the region's units "
            "(intervention.steer=[<from>, <to>], intervention.factor)",
            check=_check_steer,
            title=lambda model, shared: (
                f"Steering unit activations of {model}"
                + (f" {shared['intervention.steer']}" if shared.get("intervention.steer") else "")
            ),
            hook=_steered,
            values=_steer_values,
            word="steered",
            uses_seed=False,
        ),
        Intervention(
            "freeze",
            "further pre-train with the region held fixed (training, not in-place)",
            check=training.check,
            title=_freeze_title,
            train=training.train_frozen,
            word="frozen",
            memory=sparse.freeze_bytes,
        ),
        Intervention(
            "train_region",
            "further pre-train only the region (the rest held fixed; optimizer state and fp32 "
            "masters for the region alone)",
            check=training.check_region,
            title=_train_region_title,
            train=training.train_region,
            word="trained",
            memory=sparse.region_bytes,
            needs_region=True,
        ),
    )
}


def intervention_kind(name: str) -> Intervention:
    """The intervention called `name`, or a one-line error naming the choices."""
    return INTERVENTIONS[check_choice("intervention", name, INTERVENTIONS)]


def check(run: RunConfig) -> None:
    """`intervention.*`, up front: an intervention that acts only on the region refuses the empty
    one (ratio=0 of a region that ratio sizes); the reference languages of fix/steer are among
    the importance languages."""
    kind, iv = intervention_kind(run.intervention.name), run.intervention
    kind.check(iv)
    if kind.needs_region and run.ratio == 0 and region_kind(run.region.name).empty_at_zero:
        raise ValueError(
            f"intervention={kind.name} with ratio=0: the region is empty and nothing would "
            "train; choose ratio > 0 (full training is intervention=freeze ratio=0)"
        )
    if kind.reads_text:  # its reference text is the importance samples
        from regionbench.data.sources import importance_langs

        for key, langs in (("lang", [iv.lang] if iv.lang else []), ("steer", iv.steer or [])):
            for lang in langs:
                check_choice(
                    f"intervention.{key} (an importance language)", lang, importance_langs(run)
                )


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
    reference: Mapping[str, Tensor] | None = None,
    lang: str | None = None,
    statistic: str = "median",
    steer: list[str] | None = None,
) -> Iterator[Applied]:
    """Apply the in-place intervention `kind` to the entries of `region` (a Region or
    {param name: bool mask}); restore them bit-exactly on exit. The activation interventions
    (ablate, fix, steer) hook the region's units instead, reading `reference` token windows
    {lang: [n, seq_len]} for fix (`lang`, `statistic`) and steer ([from, to], ×`factor`).
    Yields an `Applied` with the counts."""
    entry = intervention_kind(kind)
    iv = InterventionConfig(
        name=entry.name,
        factor=factor,
        std=std,
        relative=relative,
        lang=lang,
        statistic=statistic,
        steer=steer,
    )
    if entry.edit is not None or entry.hook is not None:
        entry.check(iv)
    with entry.apply(model, region, iv, seed, reference=reference) as applied:
        yield applied
