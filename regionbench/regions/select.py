"""Per-matrix selection from importance scores: the mechanics every score-ranked region kind
shares (which entries a kind takes is its `pick`, in `regionbench.regions.kinds`).

    k = exact_k(0.01, 4096 * 11008)                       # floor(ratio · numel), decimal-exact
    mask = topk_mask(score, k, largest=True, name=param)  # exactly k entries, ties seeded
    masks = per_matrix(scores, 0.01, ["ar", "ru"], pick)  # {param: mask}, one tensor at a time
    many = per_matrix_ratios(scores, [0.01, 0.05], ["ar"], pick, device="cuda")  # read once
    totals = Summed(scores, ["ar", "ru"])                 # S = Σ_ℓ score_ℓ, summed on access

Selection is per matrix, as in the paper: each parameter tensor keeps exactly
k = floor(ratio · numel) entries, with ratio read as the decimal the user wrote (0.29 · 100 is 29,
not float's 28.999…). Ties at the threshold (all-zero scores of a pruned or zero-initialised
matrix, say) are broken by a fixed pseudo-random order of the tied entries, seeded by the
parameter's name: the top takes the tied entries first in that order and the bottom last, so a
selection is a pure function of the scores, `core` and `core_bottom` never overlap while
2k <= numel, and a tie never turns into "the first rows of the matrix". Selection streams: a
parameter's scores (all languages) are read once for every ratio asked and dropped before the
next parameter's (a few parameters at a time on CPU, one per worker thread), which is what lets it
read a lazy `ScoreCache` entry. On a CUDA `device` the picks run on the GPU; on CPU the matrices
are shared among `torch.get_num_threads()` worker threads, one matrix each (torch's `topk` of one
flat matrix runs on one core whatever its thread count, and its kernels release the GIL). Masks
come back on the CPU, the same on either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """S = Σ_ℓ score_ℓ of one parameter in fp32, added in the order given."""
    total = per_lang[0].float().clone()
    for s in per_lang[1:]:
        total += s.float()
    return total


def check_no_nan(lang: str, name: str, score: Tensor) -> None:
    if torch.isnan(score).any():
        raise ValueError(f"scores of {lang!r} for {name!r} contain NaN")


class Summed(Mapping[str, Tensor]):
    """{param: S = Σ_ℓ score_ℓ} over `langs`, each summed when it is read (on `device`), from
    the per-language scores (a lazy cache entry stays lazy); a NaN in a language is named."""

    def __init__(
        self,
        scores: Mapping[str, Mapping[str, Tensor]],
        langs: Sequence[str],
        device: str | torch.device | None = None,
    ):
        self.scores, self.langs, self.device = scores, list(langs), device

    def __getitem__(self, name: str) -> Tensor:
        per_lang = [self.scores[lg][name] for lg in self.langs]
        for lg, s in zip(self.langs, per_lang, strict=True):
            check_no_nan(lg, name, s)
        return total([s.to(self.device) if self.device is not None else s for s in per_lang])

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores[self.langs[0]])

    def __len__(self) -> int:
        return len(self.scores[self.langs[0]])


def selection_device(model) -> torch.device:
    """Where selection runs for a model: its first CUDA device, else the CPU."""
    for p in model.parameters():
        if p.device.type == "cuda":
            return p.device
    return torch.device("cpu")


def _each(fn: Callable[[str], list[Tensor]], names: list[str], device) -> list[list[Tensor]]:
    """`fn` of every parameter name, in order: one after another on a GPU (its kernels run
    asynchronously anyway); on CPU one matrix per worker thread, as many workers as torch has
    intra-op threads, each running its ops on one thread (torch's thread count is 1 meanwhile:
    N workers of N OpenMP threads each would oversubscribe the cores)."""
    threads = torch.get_num_threads()
    if torch.device(device or "cpu").type != "cpu" or threads <= 1 or len(names) <= 1:
        return [fn(name) for name in names]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(threads, len(names))) as pool:
            return list(pool.map(fn, names))
    finally:
        torch.set_num_threads(threads)


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
    *,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """{param: mask} with `pick` applied to every parameter's scores in `langs` at
    k = exact_k(ratio, numel); the scores are checked first (languages, parameters, NaN)."""
    return per_matrix_ratios(scores, [ratio], langs, pick, lang_index, device=device)[0]


def per_matrix_ratios(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratios: Sequence[float],
    langs: Sequence[str],
    pick: Pick,
    lang_index: int | None = None,
    *,
    device: str | torch.device | None = None,
    held: dict[str, tuple[float, list[float]]] | None = None,
) -> list[dict[str, Tensor]]:
    """`per_matrix` for each of `ratios`, each parameter's scores read once for all of them
    (picks on `device`, masks on the CPU). `held`, when given and one score set is ranked (a
    language total S), gets {param: (ΣS, [ΣS over each ratio's mask])} from the same read."""
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

    def masks_of(name: str) -> list[Tensor]:
        # One parameter at a time (per worker): with a lazy cache entry only these are in memory.
        per_lang = [scores[lg][name] for lg in langs]
        for lg, s in zip(langs, per_lang, strict=True):
            check_no_nan(lg, name, s)
        if device is not None:
            per_lang = [s.to(device) for s in per_lang]
        numel = per_lang[0].numel()
        masks = [pick(per_lang, exact_k(r, numel), lang_index, name).cpu() for r in ratios]
        if held is not None and len(per_lang) == 1:
            total = per_lang[0].to(torch.float64)
            held[name] = (
                float(total.sum()),
                [float(total[m.to(total.device)].sum()) for m in masks],
            )
        return masks

    found = _each(masks_of, names, device)
    return [{name: m[i] for name, m in zip(names, found, strict=True)} for i in range(len(ratios))]
