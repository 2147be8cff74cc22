"""Region kinds (`region=`): one registry entry per kind, which every stage asks instead of
testing the kind's name — whether it ranks entries by importance, whether `ratio` sizes it, how
its options are checked, how it is built, and how it reads in a title.

    kind = region_kind(run.region.name)      # REGION_KINDS[...], with a did-you-mean error
    kind.ranks(run.region)                   # orders entries by importance scores
    region = build(run, scores, langs, model, fingerprints, outlier_dims)   # the run's region
    region = select(scores, ratio=0.01, region="core")   # the notebook API (`rb.select`)
    regions = select_ratios(scores, [0.01, 0.03, 0.05])   # a sweep's: each matrix read once

A kind whose pick reads the languages only through S = Σ_ℓ score_ℓ (`sums`: core, core_bottom;
and the kinds built on the core) selects from S, summed once per matrix; a job reads S from the
cache (`regions.totals`), so the jobs of a ratio sweep sum the languages once, not once each.

Unit kinds (`neurons`, `heads`: `regions.units`) select whole units with any kind's `pick`
(`region.pick`), applied to the units' scores instead of a matrix's.

Add a kind: one `RegionKind` in `REGION_KINDS`, one `conf/region/<name>.yaml`, one test
(CONTRIBUTING.md, "Add a region kind").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

import regionbench
from regionbench.common.choices import check_choice
from regionbench.common.torchtools import seeded_generator
from regionbench.config import RunConfig
from regionbench.importance.metrics import METRICS
from regionbench.models.residual import hidden_size, residual_sides
from regionbench.models.scope import scoped_params
from regionbench.models.units import HEAD, NEURON
from regionbench.regions import checks, dimensions, outliers, picks, units
from regionbench.regions.kind import RegionKind, Source, _given, _never
from regionbench.regions.region import Region, empty
from regionbench.regions.select import (
    Summed,
    check_ratio,
    per_matrix_ratios,
    topk_mask,
    total,
)
from regionbench.regions.totals import TOTAL


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
    totals = src.summed() if REGION_KINDS[r.name].sums else None
    return select(
        src.scores,
        src.run.ratio,
        r.name,
        lang=r.lang,
        langs=src.langs,
        meta=src.meta,
        totals=totals,
        device=src.device,
    )


def _no_outlier_entry(src: Source) -> str:
    if not src.outlier_dims:
        rule = outliers.Rule.of(src.run.outliers)
        return f"the detector found no massive activation in the model ({rule.describe()})"
    return f"the core has no entry on the massive dimensions {list(src.outlier_dims)}"


def _around_outliers(only: bool) -> Callable[[Source], Region]:
    def build(src: Source) -> Region:
        sides = residual_sides(src.model)
        region = dimensions.around_dims(
            {TOTAL: src.summed()},
            src.run.ratio,
            [TOTAL],
            sides,
            src.outlier_dims,
            only=only,
            meta=src.meta,
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
        core = select(
            src.scores, run.ratio, "core", langs=src.langs, totals=src.summed(), device=src.device
        )
        dims = dimensions.profile(core, sides, hidden_size(model)).top_dims(r.top_dims)
    meta = src.meta | {"region": r.name}
    return dimensions.dimension_region(
        model, sides, dims, layers=r.layers, modules=r.modules, everywhere=r.everywhere, meta=meta
    )


def _coordinates(src: Source) -> Region:
    r = src.run.region
    meta = src.meta | {"region": r.name}
    return dimensions.coordinates_region(src.model, r.coordinates or r.file, meta=meta)


def _picks() -> dict[str, RegionKind]:
    return {name: kind for name, kind in REGION_KINDS.items() if kind.pick is not None}


def _units_build(src: Source) -> Region:
    r = src.run.region
    return units.build_units(
        src.model,
        src.run,
        src.scores,
        src.langs,
        REGION_KINDS[r.name].unit,
        REGION_KINDS[r.pick].pick,
        src.meta,
    )


def _units_empty(src: Source) -> str:
    return units.why_empty(src.model, src.run, REGION_KINDS[src.run.region.name].unit)


def _check_units(run: RunConfig, langs: Sequence[str]) -> None:
    r, picks = run.region, _picks()
    pick = picks[check_choice("region.pick", r.pick, picks)]
    if r.lang and not (pick.needs_lang or pick.takes_lang):
        raise ValueError(
            f"region.lang applies to region.pick {', '.join(_lang_picks())}, not {r.pick!r}"
        )
    pick.check(run, langs)


def _unit_details(params: Mapping[str, str]) -> list[str]:
    words = []
    if params.get("region.pick", "core") != "core":
        words.append(params["region.pick"])
    if _given(params.get("region.lang")) and params.get("region.pick") in _lang_picks():
        words.append(params["region.lang"])
    if params.get("region.per_layer") == "False":
        words.append("global")
    if params.get("region.matched_random") == "True":
        words.append("random-matched")
    return words


def _lang_picks() -> list[str]:
    return [n for n, k in _picks().items() if k.needs_lang or k.takes_lang]


def _file(src: Source) -> Region:
    return units.file_region(src.model, src.run, src.meta)


REGION_KINDS: dict[str, RegionKind] = {
    kind.name: kind
    for kind in (
        RegionKind(
            "core",
            "top ⌊ratio·numel⌋ of S = Σ_ℓ score_ℓ in each matrix",
            _selected,
            pick=_core,
            sums=True,
            uses_seed=_never,
        ),
        RegionKind(
            "core_bottom",
            "bottom ⌊ratio·numel⌋ of S in each matrix (the paper's control)",
            _selected,
            pick=_core_bottom,
            sums=True,
            uses_seed=_never,
        ),
        RegionKind(
            "monolingual",
            "top-k of score_lang and of no other language's score (needs lang)",
            _selected,
            check=checks.monolingual,
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
            check=checks.dimension,
            ranks=lambda r: r.top_dims is not None,
            sized=None,
            empty_at_zero=False,
            uses_seed=lambda r: r.random_dims is not None,
        ),
        RegionKind(
            "coordinates",
            "exactly the param[row, col] entries of region.coordinates or region.file",
            _coordinates,
            check=checks.coordinates,
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
        RegionKind(
            "shared",
            "top-k of every importance language's score at once (shared by all)",
            _selected,
            check=checks.per_language,
            sized="within",
            pick=picks.shared,
            uses_seed=_never,
        ),
        RegionKind(
            "exclusive",
            "top-k of score_lang that is not shared by every language (needs lang)",
            _selected,
            check=checks.monolingual,
            sized="within",
            pick=picks.exclusive,
            needs_lang=True,
            uses_seed=_never,
        ),
        RegionKind(
            "specific",
            "the k lowest entropies over languages of the normalised scores, among entries with "
            "a language above the 0.95 quantile (LAPE's selection; region.lang: that language's)",
            _selected,
            check=checks.per_language,
            pick=picks.specific,
            takes_lang=True,
            uses_seed=_never,
        ),
        RegionKind(
            "neurons",
            "whole FFN neurons (row j of gate/up, column j of down): ratio of each block's "
            "(region.per_layer) chosen by region.pick from their summed scores",
            _units_build,
            check=_check_units,
            sized="units",
            unit=NEURON,
            details=_unit_details,
            why_empty=_units_empty,
            uses_seed=lambda r: bool(r.matched_random),
        ),
        RegionKind(
            "heads",
            "whole attention heads (rows of q and of their k/v group, columns of o): ratio of "
            "each block's (region.per_layer) chosen by region.pick from their summed scores",
            _units_build,
            check=_check_units,
            sized="units",
            unit=HEAD,
            details=_unit_details,
            why_empty=_units_empty,
            uses_seed=lambda r: bool(r.matched_random),
        ),
        RegionKind(
            "file",
            "the region of region.file: a regionbench mask, or LAPE's neuron file (region.lang: "
            "one language, else the union)",
            _file,
            check=checks.file,
            ranks=lambda r: False,
            sized=None,
            empty_at_zero=False,
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
    kind = region_kind(run.region.name)
    kind.check(run, langs)
    outliers.check(run, langs)  # every run consults the detector
    scores_units = METRICS[run.metric.name].units if run.metric.name in METRICS else ()
    if scores_units and kind.ranks(run.region) and kind.unit not in scores_units:
        takes = ", ".join(n for n, k in REGION_KINDS.items() if k.unit in scores_units)
        raise ValueError(
            f"metric {run.metric.name!r} scores whole units, not entries: region={run.region.name} "
            f"cannot rank by it; choices: {takes}"
        )


def build(
    run: RunConfig,
    scores,
    langs: Sequence[str],
    model: nn.Module,
    fingerprints: tuple[str, str],
    outlier_dims: Sequence[int] = (),
    totals: Callable[[], Mapping[str, Tensor]] | None = None,
) -> Region:
    """The run's region, described by its origin for the mask file: its kind built from the
    scores, the model and its massive-activation dimensions `outlier_dims` (the empty region
    over the scope's parameters at ratio 0, for the kinds that `ratio` sizes). `totals()` gives
    S = Σ_ℓ score_ℓ over `langs` for the kinds that select from it (a job's cached entry)."""
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
    src = Source(run, scores, langs, model, meta, outlier_dims, totals)
    region = kind.build(src)
    if region.numel == 0:  # only ratio 0 (returned above) gives the empty region
        raise checks.empty_error(kind.name, run.ratio, kind.why_empty(src))
    return region


def select(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratio: float,
    region: str = "core",
    lang: str | None = None,
    langs: Sequence[str] | None = None,
    meta: dict | None = None,
    *,
    totals: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
) -> Region:
    """Select `region` at `ratio` from {lang: {param: score}}; `langs` restricts the importance
    languages (default: all of `scores`), `lang` names the language of a monolingual region.
    `totals` ({param: S = Σ_ℓ score_ℓ over `langs`}, e.g. `regions.totals.cached_totals`) stand
    in for the scores of a kind that `sums`; the picks run on `device` (default the CPU)."""
    return select_ratios(scores, [ratio], region, lang, langs, meta, totals=totals, device=device)[
        0
    ]


def select_ratios(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratios: Sequence[float],
    region: str = "core",
    lang: str | None = None,
    langs: Sequence[str] | None = None,
    meta: dict | None = None,
    *,
    totals: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
) -> list[Region]:
    """`select` at each of `ratios`, each matrix's scores read (and, for a kind that `sums`,
    summed) once for all of them: a sweep's regions in one pass."""
    ratios = [check_ratio(r) for r in ratios]
    picks = {name: kind for name, kind in REGION_KINDS.items() if kind.pick is not None}
    kind = picks[check_choice("region", region, picks)]
    if not scores:
        raise ValueError("scores is empty: need {language: {param: score}}")
    langs = list(scores) if langs is None else list(langs)
    if not langs:
        raise ValueError("langs is empty: need at least one importance language")
    for name in langs:
        check_choice("language", name, scores)
    if kind.needs_lang or (kind.takes_lang and lang is not None):
        if lang is None:
            raise ValueError(f"region {kind.name!r} needs lang; choices: {', '.join(langs)}")
        check_choice("language", lang, langs)
        lang_index = langs.index(lang)
    elif lang is not None:
        takes = ", ".join(repr(n) for n, k in picks.items() if k.needs_lang or k.takes_lang)
        raise ValueError(f"lang {lang!r} only applies to region {takes}, not {region!r}")
    else:
        lang_index = None
    held: dict[str, tuple[float, list[float]]] = {}  # S per matrix, read once with the picks
    if kind.sums:
        for other in langs:
            if set(scores[other]) != set(scores[langs[0]]):
                raise ValueError(f"scores of {other!r} and {langs[0]!r} cover different parameters")
        if totals is None:
            totals = Summed(scores, langs, device)
        elif set(totals) != set(scores[langs[0]]):
            raise ValueError("totals and scores cover different parameters")
        found = per_matrix_ratios(
            {TOTAL: totals}, ratios, [TOTAL], kind.pick, device=device, held=held
        )
    else:
        found = per_matrix_ratios(scores, ratios, langs, kind.pick, lang_index, device=device)
    out = []
    for i, (ratio, masks) in enumerate(zip(ratios, found, strict=True)):
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
        selected = Region(masks=masks, meta=info)
        if held:
            selected.held = {name: (part[i], whole) for name, (whole, part) in held.items()}
        if ratio > 0 and selected.numel == 0:
            raise checks.empty_error(
                kind.name, ratio, checks.why_selection_empty(scores, ratio, langs, lang)
            )
        out.append(selected)
    return out
