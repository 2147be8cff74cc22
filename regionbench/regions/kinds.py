"""Region kinds (`region=`): one registry entry per kind, which every stage asks instead of
testing the kind's name — whether it ranks entries by importance, whether `ratio` sizes it, how
its options are checked, how it is built, and how it reads in a title.

    kind = region_kind(run.region.name)      # REGION_KINDS[...], with a did-you-mean error
    kind.ranks(run.region)                   # orders entries by importance scores
    region = build(run, scores, langs, model, fingerprints, outlier_dims)   # the run's region
    region = select(scores, ratio=0.01, region="core")   # the notebook API (`rb.select`)

Add a kind: one `RegionKind` in `REGION_KINDS`, one `conf/region/<name>.yaml`, one test
(CONTRIBUTING.md, "Add a region kind").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import regionbench
from regionbench.common.choices import check_choice
from regionbench.common.torchtools import seeded_generator
from regionbench.config import RegionConfig, RunConfig
from regionbench.importance.metrics import METRICS
from regionbench.models.residual import hidden_size, residual_sides
from regionbench.models.scope import scoped_params
from regionbench.regions import dimensions, outliers
from regionbench.regions.region import Region, empty
from regionbench.regions.select import Pick, check_ratio, exact_k, per_matrix, topk_mask, total


@dataclass(frozen=True)
class Source:
    """What a kind builds a run's region from."""

    run: RunConfig
    scores: Mapping[str, Mapping[str, Tensor]]  # {lang: {param: score}}; {} when not ranked
    langs: Sequence[str]  # the importance languages
    model: nn.Module
    meta: dict[str, str]  # the region's origin, for its mask file
    outlier_dims: Sequence[int]  # the model's massive-activation dimensions


def _always(region: RegionConfig) -> bool:
    return True


def _never(region: RegionConfig) -> bool:
    return False


def _no_check(run: RunConfig, langs: Sequence[str]) -> None:
    return None


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _too_small(ratio: float, scores: Mapping[str, Mapping[str, Tensor]]) -> str | None:
    """Why a region sized by `ratio` is empty when no matrix is large enough for one entry."""
    sizes = [t.numel() for per_lang in scores.values() for t in per_lang.values()]
    if sizes and exact_k(ratio, max(sizes)) == 0:
        return (
            f"⌊ratio·numel⌋ is 0 in every matrix (the largest has {max(sizes)} entries); "
            "raise the ratio"
        )
    return None


def _why_built_empty(src: Source) -> str:
    return _too_small(src.run.ratio, src.scores) or "it selected no entry"


def _why_selection_empty(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratio: float,
    langs: Sequence[str],
    lang: str | None,
) -> str:
    """Why a selection from scores came out empty, in one clause."""
    small = _too_small(ratio, {name: scores[name] for name in langs})
    if small or lang is None:
        return small or "it selected no entry"
    others = [m for m in langs if m != lang]
    if all(torch.equal(scores[lang][n], scores[m][n]) for m in others for n in scores[lang]):
        return (
            f"the languages' scores are identical, so no entry is in {lang}'s top-k and in no "
            "other's (a language-independent metric gives every language the same scores)"
        )
    return f"every entry of {lang}'s top-k is also in another language's top-k"


def _empty(name: str, ratio: float, why: str) -> ValueError:
    return ValueError(
        f"region={name} at ratio {ratio:g} is empty: {why}. An empty region is not a result "
        "(ratio=0 is the unmodified model)"
    )


@dataclass(frozen=True)
class RegionKind:
    """A value of the `region` axis."""

    name: str
    doc: str
    build: Callable[[Source], Region]
    check: Callable[[RunConfig, Sequence[str]], None] = _no_check  # its options, up front
    ranks: Callable[[RegionConfig], bool] = _always  # orders entries by importance scores
    # How `ratio` sizes it: "exact" ⌊ratio·numel⌋ of each matrix, "within" a part of the top
    # ⌊ratio·numel⌋ of each matrix, None: it does not (given by dimensions or coordinates).
    sized: str | None = "exact"
    empty_at_zero: bool = True  # ratio 0 is the empty region: the unmodified model
    pick: Pick | None = None  # a per-matrix choice from scores: selectable with `select`
    needs_lang: bool = False  # region.lang names one importance language
    # Why a region it built has no entry (one clause): what the error says instead of a result.
    why_empty: Callable[[Source], str] = _why_built_empty
    # Whether `seed` can change the region it builds (beyond the metric's own seed): a kind
    # that does not say is taken to, so a sweep never merges its seeds by mistake.
    uses_seed: Callable[[RegionConfig], bool] = _always

    def words(self, params: Mapping[str, str], *, ratio: bool = True) -> list[str]:
        """The region in a title, from one of its runs' params: ["taylor", "core", "5%"],
        ["taylor", "monolingual", "latn", "5%"], ["top-dims"] (a preset of `dimension`)."""
        if self.sized is None:
            return [params.get("choice.region", self.name)]
        words = [params.get("metric.name", ""), self.name]
        if self.needs_lang:
            words.append(params.get("region.lang", ""))
        size = _number(params.get("ratio"))
        if ratio and size is not None:
            words.append(f"{size * 100:g}%")
        return words


# ----------------------------------------------------------------- picks from importance scores
def _core(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    return topk_mask(total(per_lang), k, largest=True, name=name)


def _core_bottom(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    return topk_mask(total(per_lang), k, largest=False, name=name)


def _monolingual(per_lang: Sequence[Tensor], k: int, lang_index: int | None, name: str) -> Tensor:
    mask = topk_mask(per_lang[lang_index], k, name=name)
    for i, s in enumerate(per_lang):
        if i != lang_index:
            mask &= ~topk_mask(s, k, name=name)
    return mask


# ---------------------------------------------------------------------------- builds and checks
def _selected(src: Source) -> Region:
    r = src.run.region
    return select(src.scores, src.run.ratio, r.name, lang=r.lang, langs=src.langs, meta=src.meta)


def _no_outlier_entry(src: Source) -> str:
    if not src.outlier_dims:
        rule = outliers.Rule.of(src.run.outliers)
        return f"the detector found no massive activation in the model ({rule.describe()})"
    return f"the core has no entry on the massive dimensions {list(src.outlier_dims)}"


def _around_outliers(only: bool) -> Callable[[Source], Region]:
    def build(src: Source) -> Region:
        sides = residual_sides(src.model)
        region = dimensions.around_dims(
            src.scores, src.run.ratio, src.langs, sides, src.outlier_dims, only=only, meta=src.meta
        )
        region.meta["region"] = src.run.region.name
        return region

    return build


def _dimension(src: Source) -> Region:
    run, r, model = src.run, src.run.region, src.model
    sides = residual_sides(model)
    if r.dims is not None:
        dims = r.dims
    elif r.random_dims is not None:
        gen = seeded_generator(run.seed, "random dimensions")
        dims = torch.randperm(hidden_size(model), generator=gen)[: r.random_dims].tolist()
    else:
        core = select(src.scores, run.ratio, "core", langs=src.langs)
        dims = dimensions.profile(core, sides, hidden_size(model)).top_dims(r.top_dims)
    meta = src.meta | {"region": r.name}
    return dimensions.dimension_region(
        model, sides, dims, layers=r.layers, modules=r.modules, everywhere=r.everywhere, meta=meta
    )


def _check_dimension(run: RunConfig, langs: Sequence[str]) -> None:
    r = run.region
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
    if r.everywhere and (r.layers is not None or r.modules is not None):
        raise ValueError(
            "region.everywhere=true takes dimension d in every block and outside them: drop "
            "region.layers and region.modules"
        )


def _coordinates(src: Source) -> Region:
    r = src.run.region
    meta = src.meta | {"region": r.name}
    return dimensions.coordinates_region(src.model, r.coordinates or r.file, meta=meta)


def _check_coordinates(run: RunConfig, langs: Sequence[str]) -> None:
    r = run.region
    if not (r.coordinates or r.file):
        raise ValueError(
            "region=coordinates needs region.coordinates=['<param>[row, col]', ...] "
            "or region.file=<path>"
        )
    if r.file and not Path(r.file).expanduser().is_file():
        raise ValueError(f"region.file {r.file!r} is not a readable file")


def _check_monolingual(run: RunConfig, langs: Sequence[str]) -> None:
    r = run.region
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


REGION_KINDS: dict[str, RegionKind] = {
    kind.name: kind
    for kind in (
        RegionKind(
            "core",
            "top ⌊ratio·numel⌋ of S = Σ_ℓ score_ℓ in each matrix",
            _selected,
            pick=_core,
            uses_seed=_never,
        ),
        RegionKind(
            "core_bottom",
            "bottom ⌊ratio·numel⌋ of S in each matrix (the paper's control)",
            _selected,
            pick=_core_bottom,
            uses_seed=_never,
        ),
        RegionKind(
            "monolingual",
            "top-k of score_lang and of no other language's score (needs lang)",
            _selected,
            check=_check_monolingual,
            sized="within",
            pick=_monolingual,
            needs_lang=True,
            uses_seed=_never,
        ),
        RegionKind(
            "dimension",
            "every block-matrix entry reading or writing the residual-stream dimensions "
            "region.dims, region.top_dims (of the core at ratio) or region.random_dims; with "
            "region.everywhere=true also their entries of the embeddings, lm_head and norms",
            _dimension,
            check=_check_dimension,
            ranks=lambda r: r.top_dims is not None,
            sized=None,
            empty_at_zero=False,
            uses_seed=lambda r: r.random_dims is not None,
        ),
        RegionKind(
            "coordinates",
            "exactly the param[row, col] entries of region.coordinates or region.file",
            _coordinates,
            check=_check_coordinates,
            ranks=lambda r: False,
            sized=None,
            empty_at_zero=False,
            uses_seed=_never,
        ),
        RegionKind(
            "core_minus_outliers",
            "the core without its entries on massive-activation dimensions, refilled from the "
            "next-ranked ones to equal size",
            _around_outliers(only=False),
            uses_seed=_never,
        ),
        RegionKind(
            "outliers",
            "the core's ranking restricted to massive-activation dimensions (up to its size)",
            _around_outliers(only=True),
            sized="within",
            why_empty=_no_outlier_entry,
            uses_seed=_never,
        ),
    )
}


def region_kind(name: str) -> RegionKind:
    """The kind called `name`, or a one-line error naming the choices."""
    return REGION_KINDS[check_choice("region", name, REGION_KINDS)]


def check(run: RunConfig, langs: Sequence[str]) -> None:
    """`ratio`, `region.*` against the run's importance languages `langs`, and `outliers.*`,
    up front."""
    check_ratio(run.ratio)
    region_kind(run.region.name).check(run, langs)
    outliers.check(run, langs)  # every run consults the detector


def build(
    run: RunConfig,
    scores,
    langs: Sequence[str],
    model: nn.Module,
    fingerprints: tuple[str, str],
    outlier_dims: Sequence[int] = (),
) -> Region:
    """The run's region, described by its origin for the mask file: its kind built from the
    scores, the model and its massive-activation dimensions `outlier_dims` (the empty region
    over the scope's parameters at ratio 0, for the kinds that `ratio` sizes)."""
    samples_fp, model_fp = fingerprints
    meta = {
        "model_id": run.model.name,
        "revision": str(run.model.revision),
        "metric": run.metric.name,
        "languages": ",".join(langs),
        "data_fingerprint": samples_fp,
        "model_fingerprint": model_fp,
        "regionbench_version": regionbench.__version__,
    }
    kind = region_kind(run.region.name)
    if run.ratio == 0 and kind.empty_at_zero:
        imp = run.importance
        return empty(scoped_params(model, imp.scope, imp.include, imp.exclude), meta)
    src = Source(run, scores, langs, model, meta, outlier_dims)
    region = kind.build(src)
    if region.numel == 0:  # only ratio 0 (returned above) gives the empty region
        raise _empty(kind.name, run.ratio, kind.why_empty(src))
    return region


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
    picks = {name: kind for name, kind in REGION_KINDS.items() if kind.pick is not None}
    kind = picks[check_choice("region", region, picks)]
    if not scores:
        raise ValueError("scores is empty: need {language: {param: score}}")
    langs = list(scores) if langs is None else list(langs)
    if not langs:
        raise ValueError("langs is empty: need at least one importance language")
    for name in langs:
        check_choice("language", name, scores)
    if kind.needs_lang:
        if lang is None:
            raise ValueError(f"region {kind.name!r} needs lang; choices: {', '.join(langs)}")
        check_choice("language", lang, langs)
        lang_index = langs.index(lang)
    elif lang is not None:
        takes = ", ".join(repr(n) for n, k in picks.items() if k.needs_lang)
        raise ValueError(f"lang {lang!r} only applies to region {takes}, not {region!r}")
    else:
        lang_index = None
    masks = per_matrix(scores, ratio, langs, kind.pick, lang_index)
    info = {str(k): str(v) for k, v in (meta or {}).items()}
    info.update(
        {
            "region": kind.name,
            "ratio": repr(ratio),
            "languages": ",".join(langs),
            "selection": "per_matrix",
        }
    )
    if lang is not None:
        info["lang"] = lang
    info.setdefault("regionbench_version", regionbench.__version__)
    region = Region(masks=masks, meta=info)
    if ratio > 0 and region.numel == 0:
        raise _empty(kind.name, ratio, _why_selection_empty(scores, ratio, langs, lang))
    return region
