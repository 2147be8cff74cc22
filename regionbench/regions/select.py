"""Regions: boolean masks over parameters, selected per matrix from importance scores.

    region = select(scores, ratio=0.01, region="core")            # top 1% of Σ_ℓ score_ℓ
    region = select(scores, 0.01, "monolingual", lang="ar")       # top for ar, for no other
    region.numel, region.fraction, region.summary()               # stats, region_summary.csv rows
    region.save("core.safetensors"); Region.load("core.safetensors")

Selection is per matrix, as in the paper: each parameter tensor keeps exactly
k = floor(ratio · numel) entries, with ratio read as the decimal the user wrote (0.29 · 100 is 29,
not float's 28.999…). Ties at the threshold (all-zero scores of a pruned or zero-initialised
matrix, say) are broken by a fixed pseudo-random order of the tied entries, seeded by the
parameter's name: the top takes the tied entries first in that order and the bottom last, so a
selection is a pure function of the scores, `core` and `core_bottom` never overlap while
2k <= numel, and a tie never turns into "the first rows of the matrix". Selection streams: one
parameter's scores (all languages) are in memory at a time, which is what lets it read a lazy
`ScoreCache` entry.

The `Region` itself and its mask files: `regionbench.regions.region`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor

import regionbench
from regionbench.common.choices import check_choice
from regionbench.common.torchtools import seeded_generator
from regionbench.config import RunConfig
from regionbench.regions.region import Region

REGIONS: dict[str, str] = {
    "core": "top ⌊ratio·numel⌋ of S = Σ_ℓ score_ℓ in each matrix",
    "core_bottom": "bottom ⌊ratio·numel⌋ of S in each matrix (the paper's control)",
    "monolingual": "top-k of score_lang and of no other language's score (needs lang)",
    "dimension": "every entry reading or writing the residual-stream dimensions region.dims, "
    "region.top_dims (of the core at ratio) or region.random_dims",
    "coordinates": "exactly the param[row, col] entries of region.coordinates or region.file",
    "core_minus_outliers": "the core without its entries on massive-activation dimensions, "
    "refilled from the next-ranked ones to equal size",
    "outliers": "the core's ranking restricted to massive-activation dimensions (up to its size)",
}
# Regions that rank entries by importance scores (the others are given by position).
SCORED = ("core", "core_bottom", "monolingual", "core_minus_outliers", "outliers")


def exact_k(ratio: float, numel: int) -> int:
    """floor(ratio · numel), with ratio taken as the decimal it prints as."""
    return math.floor(Fraction(repr(float(ratio))) * numel)


def topk_mask(scores: Tensor, k: int, largest: bool = True, *, name: str = "") -> Tensor:
    """Boolean mask (shape of `scores`) of exactly k entries with the largest (or smallest)
    scores. Tied entries at the threshold are taken in a pseudo-random order seeded by `name`
    (the same order for largest and smallest, from opposite ends), so the result is
    deterministic whatever torch.topk does with ties."""
    flat = scores.detach().reshape(-1).float()
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask.view(scores.shape)
    if k >= flat.numel():
        return mask.fill_(True).view(scores.shape)
    thr = torch.topk(flat, k, largest=largest, sorted=False).values
    thr = thr.min() if largest else thr.max()
    strict = flat > thr if largest else flat < thr
    mask |= strict
    need = k - int(strict.sum())
    if need > 0:
        ties = torch.nonzero(flat == thr).reshape(-1)
        if need < ties.numel():
            gen = seeded_generator(0, f"ties:{name}")
            priority = torch.rand(ties.numel(), generator=gen).to(flat.device)
            ties = ties[torch.topk(priority, need, largest=largest).indices]
        mask[ties] = True
    return mask.view(scores.shape)


def _total(per_lang: Sequence[Tensor]) -> Tensor:
    total = per_lang[0].float().clone()
    for s in per_lang[1:]:
        total += s.float()
    return total


def _core(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    return topk_mask(_total(per_lang), k, largest=True, name=name)


def _core_bottom(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    return topk_mask(_total(per_lang), k, largest=False, name=name)


def _monolingual(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    mask = topk_mask(per_lang[lang_index], k, name=name)
    for i, s in enumerate(per_lang):
        if i != lang_index:
            mask &= ~topk_mask(s, k, name=name)
    return mask


_SELECTORS: dict[str, Callable[[Sequence[Tensor], int, int | None, str], Tensor]] = {
    "core": _core,
    "core_bottom": _core_bottom,
    "monolingual": _monolingual,
}


def check_ratio(ratio) -> float:
    """`ratio` as a float in [0, 1), else a one-line ValueError naming it."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise ValueError(
            f"ratio {ratio!r} is outside [0, 1): the fraction of each matrix to select, "
            "e.g. ratio=0.01"
        )
    return float(ratio)


def check(run: RunConfig, langs: Sequence[str]) -> None:
    """`ratio` and `region.*` against the run's importance languages `langs`, up front."""
    from regionbench.importance import METRICS

    check_ratio(run.ratio)
    r = run.region
    check_choice("region", r.name, REGIONS)
    if r.name == "dimension":
        given = [k for k in ("dims", "top_dims", "random_dims") if getattr(r, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"region=dimension needs exactly one of region.dims=[...], region.top_dims=<d> or "
                f"region.random_dims=<d>; got {', '.join(given) or 'none'}"
            )
        for key in ("top_dims", "random_dims"):
            value = getattr(r, key)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"region.{key} {value!r} must be an integer >= 1")
        if r.top_dims is not None and run.ratio == 0:
            raise ValueError("region.top_dims ranks the dimensions of the core at `ratio`: ratio=0")
    if r.name == "coordinates" and not (r.coordinates or r.file):
        raise ValueError(
            "region=coordinates needs region.coordinates=['<param>[row, col]', ...] "
            "or region.file=<path>"
        )
    if r.name == "coordinates" and r.file and not Path(r.file).expanduser().is_file():
        raise ValueError(f"region.file {r.file!r} is not a readable file")
    if r.name != "monolingual":
        return
    if not r.lang:
        raise ValueError("region=monolingual needs region.lang; choices: " + ", ".join(langs))
    check_choice("region.lang (an importance language)", r.lang, langs)
    if not METRICS[run.metric.name].per_language and run.ratio > 0:
        per_lang = sorted(n for n, m in METRICS.items() if m.per_language)
        raise ValueError(
            f"region=monolingual needs a per-language metric, not {run.metric.name!r} (every "
            f"language gets the same scores, so the region would be empty); choices: "
            f"{', '.join(per_lang)}"
        )


def select(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratio: float,
    region: str = "core",
    lang: str | None = None,
    langs: Sequence[str] | None = None,
    meta: dict | None = None,
) -> Region:
    """Select `region` at `ratio` from {lang: {param: score}}; `langs` restricts the importance
    languages (default: all of `scores`), `lang` names the language of a monolingual region."""
    ratio = check_ratio(ratio)
    region = check_choice("region", region, _SELECTORS)
    if not scores:
        raise ValueError("scores is empty: need {language: {param: score}}")
    langs = list(scores) if langs is None else list(langs)
    if not langs:
        raise ValueError("langs is empty: need at least one importance language")
    for name in langs:
        check_choice("language", name, scores)
    if region == "monolingual":
        if lang is None:
            raise ValueError(f"region 'monolingual' needs lang; choices: {', '.join(langs)}")
        check_choice("language", lang, langs)
        lang_index = langs.index(lang)
    elif lang is not None:
        raise ValueError(f"lang {lang!r} only applies to region 'monolingual', not {region!r}")
    else:
        lang_index = None

    names = list(scores[langs[0]])
    for other in langs[1:]:
        if set(scores[other]) != set(names):
            raise ValueError(f"scores of {other!r} and {langs[0]!r} cover different parameters")

    selector = _SELECTORS[region]
    masks = {}
    for name in names:
        # One parameter at a time: with a lazy cache entry only these tensors are in memory.
        per_lang = [scores[lg][name] for lg in langs]
        for lg, s in zip(langs, per_lang, strict=True):
            if torch.isnan(s).any():
                raise ValueError(f"scores of {lg!r} for {name!r} contain NaN")
        masks[name] = selector(
            per_lang, exact_k(ratio, per_lang[0].numel()), lang_index, name
        ).cpu()

    info = {str(k): str(v) for k, v in (meta or {}).items()}
    info.update(
        {
            "region": region,
            "ratio": repr(ratio),
            "languages": ",".join(langs),
            "selection": "per_matrix",
        }
    )
    if lang is not None:
        info["lang"] = lang
    info.setdefault("regionbench_version", regionbench.__version__)
    return Region(masks=masks, meta=info)
