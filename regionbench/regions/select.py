"""Per-matrix selection from importance scores: the mechanics every score-ranked region kind
shares (which entries a kind takes is its `pick`, in `regionbench.regions.kinds`).

    k = exact_k(0.01, 4096 * 11008)                       # floor(ratio · numel), decimal-exact
    mask = topk_mask(score, k, largest=True, name=param)  # exactly k entries, ties seeded
    masks = per_matrix(scores, 0.01, ["ar", "ru"], pick)  # {param: mask}, one tensor at a time

Selection is per matrix, as in the paper: each parameter tensor keeps exactly
k = floor(ratio · numel) entries, with ratio read as the decimal the user wrote (0.29 · 100 is 29,
not float's 28.999…). Ties at the threshold (all-zero scores of a pruned or zero-initialised
matrix, say) are broken by a fixed pseudo-random order of the tied entries, seeded by the
parameter's name: the top takes the tied entries first in that order and the bottom last, so a
selection is a pure function of the scores, `core` and `core_bottom` never overlap while
2k <= numel, and a tie never turns into "the first rows of the matrix". Selection streams: one
parameter's scores (all languages) are in memory at a time, which is what lets it read a lazy
`ScoreCache` entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import torch
from torch import Tensor

from regionbench.common.choices import check_choice
from regionbench.common.torchtools import seeded_generator

# (per-language scores of one parameter, k, index of the region's language or None, parameter
# name) -> its bool mask
Pick = Callable[[Sequence[Tensor], int, int | None, str], Tensor]


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


def total(per_lang: Sequence[Tensor]) -> Tensor:
    total = per_lang[0].float().clone()
    for s in per_lang[1:]:
        total += s.float()
    return total


def check_ratio(ratio) -> float:
    """`ratio` as a float in [0, 1), else a one-line ValueError naming it."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise ValueError(
            f"ratio {ratio!r} is outside [0, 1): the fraction of each matrix to select, "
            "e.g. ratio=0.01"
        )
    return float(ratio)


def per_matrix(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratio: float,
    langs: Sequence[str],
    pick: Pick,
    lang_index: int | None = None,
) -> dict[str, Tensor]:
    """{param: mask} with `pick` applied to every parameter's scores in `langs` at
    k = exact_k(ratio, numel); the scores are checked first (languages, parameters, NaN)."""
    if not scores:
        raise ValueError("scores is empty: need {language: {param: score}}")
    if not langs:
        raise ValueError("langs is empty: need at least one importance language")
    for name in langs:
        check_choice("language", name, scores)
    names = list(scores[langs[0]])
    for other in langs[1:]:
        if set(scores[other]) != set(names):
            raise ValueError(f"scores of {other!r} and {langs[0]!r} cover different parameters")
    masks = {}
    for name in names:
        # One parameter at a time: with a lazy cache entry only these tensors are in memory.
        per_lang = [scores[lg][name] for lg in langs]
        for lg, s in zip(langs, per_lang, strict=True):
            if torch.isnan(s).any():
                raise ValueError(f"scores of {lg!r} for {name!r} contain NaN")
        k = exact_k(ratio, per_lang[0].numel())
        masks[name] = pick(per_lang, k, lang_index, name).cpu()
    return masks
