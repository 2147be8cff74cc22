"""What a region kind is (`RegionKind`, the registry's entry type in `regions.kinds`) and what
it builds a run's region from (`Source`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.config import RegionConfig, RunConfig
from regionbench.regions import checks
from regionbench.regions.region import Region
from regionbench.regions.select import Pick, Summed, selection_device


@dataclass(frozen=True)
class Source:
    """What a kind builds a run's region from."""

    run: RunConfig
    scores: Mapping[str, Mapping[str, Tensor]]  # {lang: {param: score}}; {} when not ranked
    langs: Sequence[str]  # the importance languages
    model: nn.Module
    meta: dict[str, str]  # the region's origin, for its mask file
    outlier_dims: Sequence[int]  # the model's massive-activation dimensions
    # S = Σ_ℓ score_ℓ per parameter over `langs`, when asked: a job's cached entry
    # (`regions.totals.cached_totals`); None: summed from `scores` as it is read
    totals: Callable[[], Mapping[str, Tensor]] | None = None

    def summed(self) -> Mapping[str, Tensor]:
        """{param: S}: the given totals, else summed from the scores on access."""
        return self.totals() if self.totals is not None else Summed(self.scores, self.langs)

    @property
    def device(self) -> torch.device:
        """Where selection runs: the model's GPU, else the CPU."""
        return selection_device(self.model)


def _always(region: RegionConfig) -> bool:
    return True


def _never(region: RegionConfig) -> bool:
    return False


def _no_check(run: RunConfig, langs: Sequence[str]) -> None:
    return None


def _given(value) -> bool:
    return value not in (None, "", "None", "null")


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _why_built_empty(src: Source) -> str:
    return checks.too_small(src.run.ratio, src.scores) or "it selected no entry"


@dataclass(frozen=True)
class RegionKind:
    """A value of the `region` axis."""

    name: str
    doc: str
    build: Callable[[Source], Region]
    check: Callable[[RunConfig, Sequence[str]], None] = _no_check  # its options, up front
    ranks: Callable[[RegionConfig], bool] = _always  # orders entries by importance scores
    # How `ratio` sizes it: "exact" ⌊ratio·numel⌋ of each matrix, "within" a part of the top
    # ⌊ratio·numel⌋ of each matrix, "units" a fraction of the units (neurons, heads), None: it
    # does not (given by dimensions, coordinates or a file).
    sized: str | None = "exact"
    empty_at_zero: bool = True  # ratio 0 is the empty region: the unmodified model
    pick: Pick | None = None  # a per-matrix choice from scores: selectable with `select`
    # its pick reads the languages only through S = Σ_ℓ score_ℓ: it selects from the totals
    sums: bool = False
    needs_lang: bool = False  # region.lang names one importance language
    takes_lang: bool = False  # region.lang may name one (specific: that language's part)
    unit: str | None = None  # whole units of this kind (models.units), not entries
    details: Callable[[Mapping[str, str]], list[str]] | None = None  # more words, from params
    # Why a region it built has no entry (one clause): what the error says instead of a result.
    why_empty: Callable[[Source], str] = _why_built_empty
    # Whether `seed` can change the region it builds (beyond the metric's own seed): a kind
    # that does not say is taken to, so a sweep never merges its seeds by mistake.
    uses_seed: Callable[[RegionConfig], bool] = _always

    def words(self, params: Mapping[str, str], *, ratio: bool = True) -> list[str]:
        """The region in a title, from one of its runs' params: ["taylor", "core", "5%"],
        ["taylor", "monolingual", "latn", "5%"], ["top-dims"] (a preset of `dimension`),
        ["lape", "neurons", "specific", "global", "1%"]."""
        if self.sized is None:
            return [params.get("choice.region", self.name)]
        words = [params.get("metric.name", ""), self.name]
        if self.needs_lang or (self.takes_lang and _given(params.get("region.lang"))):
            words.append(params.get("region.lang", ""))
        if self.details is not None:
            words += self.details(params)
        size = _number(params.get("ratio"))
        if ratio and size is not None:
            words.append(f"{size * 100:g}%")
        return words
