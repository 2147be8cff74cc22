"""How much two regions agree: Jaccard and overlap coefficient, over all entries and per matrix.

    jaccard(a, b)                      # |a ∩ b| / |a ∪ b| over every masked entry (1: the same)
    overlap_coefficient(a, b)          # |a ∩ b| / min(|a|, |b|) (1: one contains the other)
    agreement(a, b).per_matrix         # {param: jaccard} for the matrices both regions cover
    incomparable(a, b)                 # why two regions cannot be compared, or None
    python -m regionbench.compare A.safetensors B.safetensors

Regions compared must cover the same parameters with the same shapes; mask files must come from
the same model (their `model_fingerprint` metadata), or the comparison is refused: entries of two
models' weight matrices are not the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from regionbench.regions.region import Region


@dataclass(frozen=True)
class Agreement:
    intersection: int
    union: int
    sizes: tuple[int, int]
    per_matrix: dict[str, float]  # Jaccard of each matrix both regions select from

    @property
    def jaccard(self) -> float:
        return self.intersection / self.union if self.union else 1.0

    @property
    def overlap_coefficient(self) -> float:
        smaller = min(self.sizes)
        return self.intersection / smaller if smaller else 1.0


def _masks(region: Region | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return getattr(region, "masks", region)


def agreement(a: Region | Mapping[str, Tensor], b: Region | Mapping[str, Tensor]) -> Agreement:
    """Entry-level agreement of two regions over the same parameters (two empty regions agree)."""
    ma, mb = _masks(a), _masks(b)
    if set(ma) != set(mb):
        only = sorted(set(ma) ^ set(mb))[:3]
        raise ValueError(f"the regions cover different parameters (e.g. {only}): not comparable")
    inter = union = size_a = size_b = 0
    per_matrix = {}
    for name, x in ma.items():
        y = mb[name]
        if x.shape != y.shape:
            raise ValueError(f"{name}: shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
        i, u = int((x & y).sum()), int((x | y).sum())
        inter, union = inter + i, union + u
        size_a, size_b = size_a + int(x.sum()), size_b + int(y.sum())
        if u:
            per_matrix[name] = i / u
    return Agreement(inter, union, (size_a, size_b), per_matrix)


def jaccard(a, b) -> float:
    return agreement(a, b).jaccard


def overlap_coefficient(a, b) -> float:
    return agreement(a, b).overlap_coefficient


def incomparable(a: Region | Mapping[str, Tensor], b: Region | Mapping[str, Tensor]) -> str | None:
    """Why `agreement` would refuse the pair, in words ("different models", "different
    parameters", "different shapes"), or None when they can be compared. A sweep across models
    compares the pairs it can and marks the others."""
    fa, fb = (getattr(r, "meta", {}).get("model_fingerprint") for r in (a, b))
    if fa and fb and fa != fb:
        return "different models"
    ma, mb = _masks(a), _masks(b)
    if set(ma) != set(mb):
        return "different parameters"
    if any(ma[name].shape != mb[name].shape for name in ma):
        return "different shapes"
    return None


def check_same_model(a: Region, b: Region) -> None:
    """Refuse mask files made for different models (by their recorded weight fingerprints)."""
    fa, fb = a.meta.get("model_fingerprint"), b.meta.get("model_fingerprint")
    if fa and fb and fa != fb:
        raise ValueError(
            f"the masks were made for different models ({a.meta.get('model_id', '?')} "
            f"{fa[:12]} vs {b.meta.get('model_id', '?')} {fb[:12]}): their entries are not the "
            "same weights"
        )
