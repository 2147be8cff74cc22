"""Picks from per-language scores beyond the paper's (core, core_bottom, monolingual: in
`regions.kinds`): entries or units shared by every language, exclusive to one, or specific to few
by the entropy of their scores over languages (LAPE's selection). Each is a `select.Pick`:
(per-language scores of one matrix or of the units, k, the region's language, a name for ties)
-> bool mask.

    mask = shared([s_aa, s_bb], k, None, name)        # top-k of every language at once
    mask = exclusive([s_aa, s_bb], k, 0, name)        # top-k of aa less what all share
    mask = specific([p_aa, p_bb], k, None, name)      # LAPE: k lowest entropies, filtered

Shared and exclusive follow "The Emergence of Abstract Thought" (Chen et al. 2025): exclusive to
a language is its set less the intersection over all languages (not "in no other language's":
that is `monolingual`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from regionbench.regions.select import topk_mask


def shared(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    mask = topk_mask(per_lang[0], k, name=name)
    for s in per_lang[1:]:
        mask &= topk_mask(s, k, name=name)
    return mask


def exclusive(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    return topk_mask(per_lang[lang_index], k, name=name) & ~shared(per_lang, k, None, name)


# LAPE's constants (identify.py): candidates need some language's score above this quantile of
# every score (filter_rate), and a selected entry belongs to each language above it
# (activation_bar_ratio, the same 0.95).
SPECIFIC_QUANTILE = 0.95


def _quantile(per_lang: Sequence[Tensor]) -> Tensor:
    flat = torch.stack([s.float().reshape(-1) for s in per_lang]).reshape(-1)
    return flat.kthvalue(max(1, round(flat.numel() * SPECIFIC_QUANTILE))).values


def specific(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    """LAPE's selection on any per-language scores: normalise over languages, the k lowest
    entropies among the entries with some language's score above the 0.95 quantile of all
    scores; with a language, those of the k whose score in it is above that quantile."""
    stacked = torch.stack([s.float() for s in per_lang], dim=-1)  # [..., langs]
    normed = stacked / stacked.sum(dim=-1, keepdim=True)
    normed = torch.nan_to_num(normed, nan=0.0)
    logs = torch.where(normed > 0, normed.log(), torch.zeros_like(normed))
    entropy = -(normed * logs).sum(dim=-1)
    bar = _quantile(per_lang)
    entropy = entropy.masked_fill((stacked > bar).sum(dim=-1) == 0, float("inf"))
    mask = topk_mask(-entropy, k, name=name)
    if lang_index is not None:
        mask &= per_lang[lang_index].float() > bar
    return mask
