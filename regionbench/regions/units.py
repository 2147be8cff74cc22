"""Regions of whole units — FFN neurons, attention heads — as ordinary weight masks: ranked by a
metric aggregated over each unit's entries, selected by any score pick, loaded from LAPE's files.

    layers = neuron_units(model)                       # regionbench.models.units
    per_unit = unit_scores(layers, scores["latn"])     # [count] per block
    chosen = select_units([unit_scores(layers, scores[l]) for l in langs], 0.05, pick)
    region = units_region(layers, chosen, scoped_params(model))   # a Region: masks over weights
    unit_share(layers, region)                         # share of each unit's entries in a region
    region = lape_region(model, "LLaMA-2-7B.neuron.pth", params, lang="zh")

A unit region is a boolean mask per parameter like any other, so remove/scale/noise, freeze, the
mask files, overlap and the sweep report work on it unchanged; its masks cover the same
parameters as an entry region of the same scope. `ratio` is the fraction of units: of each
block's (`per_layer`, as the paper's per-matrix selection) or of all blocks' together (global, as
LAPE). A unit's score is the sum of its entries' scores — a k/v row group shared by the heads of
a query group counts 1/G for each — or, for a metric that scores units directly (`lape`,
`activation`), its own score. Any per-matrix pick of `regions.kinds` (core, core_bottom,
monolingual, shared, exclusive, specific) applies to the units' scores as it does to a matrix's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from regionbench.common.torchtools import seeded_generator
from regionbench.config import RunConfig
from regionbench.models.scope import scoped_params
from regionbench.models.units import LayerUnits, neuron_units, units_of
from regionbench.regions.region import Region
from regionbench.regions.select import Pick, exact_k

# The languages of LAPE's released 7-language files (`neuron[i]`: i-th of these), README.
LAPE_LANGS = ("en", "zh", "fr", "es", "vi", "id", "ja")


def unit_scores(layers: Sequence[LayerUnits], scores: Mapping[str, Tensor]) -> list[Tensor]:
    """Each block's [count] unit scores (fp32) from one language's {param: score}: a unit
    metric's own (its key `lu.key`), else the sum of the unit's entries' scores over the
    parameters `scores` has (a group shared by m units adds 1/m of its sum to each)."""
    out = []
    for lu in layers:
        if lu.key in scores:
            out.append(scores[lu.key].detach().float().reshape(-1).cpu())
            continue
        total, found = torch.zeros(lu.count), False
        for piece in lu.pieces:
            if piece.param not in scores:
                continue
            s = scores[piece.param].detach().float().cpu()
            found = True
            along = s if s.dim() == 1 else s.sum(dim=1 - piece.axis)  # [size of the axis]
            per_group = along[piece.index].sum(dim=1)
            share = per_group / piece.members.shape[1]
            total.index_add_(
                0, piece.members.reshape(-1), share.repeat_interleave(piece.members.shape[1])
            )
        if not found:
            raise ValueError(
                f"the scores have no entry of the {lu.unit}s of {lu.block} (their parameters "
                "are outside the importance scope?)"
            )
        out.append(total)
    return out


def select_units(
    per_lang: Sequence[Sequence[Tensor]],
    ratio: float,
    pick: Pick,
    lang_index: int | None = None,
    *,
    per_layer: bool = True,
    name: str = "units",
) -> list[Tensor]:
    """[count] bool per block: `pick` applied to the units' per-language scores (`per_lang[l]`
    is language l's list over blocks) with k = ⌊ratio · units⌋ of each block (`per_layer`) or of
    all blocks together."""
    blocks = len(per_lang[0])
    if per_layer:
        return [
            pick(
                [lang[b] for lang in per_lang],
                exact_k(ratio, per_lang[0][b].numel()),
                lang_index,
                f"{name}:{b}",
            )
            for b in range(blocks)
        ]
    sizes = [int(t.numel()) for t in per_lang[0]]
    flat = [torch.cat(list(lang)) for lang in per_lang]
    chosen = pick(flat, exact_k(ratio, sum(sizes)), lang_index, name)
    return list(torch.split(chosen, sizes))


def matched_random(selected: Sequence[Tensor], seed: int, name: str = "units") -> list[Tensor]:
    """As many random units in each block as `selected` has there (seeded by `seed`)."""
    out = []
    for b, chosen in enumerate(selected):
        gen = seeded_generator(seed, f"matched random {name}:{b}")
        mask = torch.zeros(chosen.numel(), dtype=torch.bool)
        mask[torch.randperm(chosen.numel(), generator=gen)[: int(chosen.sum())]] = True
        out.append(mask)
    return out


def units_region(
    layers: Sequence[LayerUnits],
    selected: Sequence[Tensor],
    params: Mapping[str, nn.Parameter],
    meta: dict | None = None,
) -> Region:
    """The Region over `params` (the scope: every one gets a mask) holding every entry of the
    `selected` units that lies in `params`."""
    masks = {name: torch.zeros(p.shape, dtype=torch.bool) for name, p in params.items()}
    for lu, chosen in zip(layers, selected, strict=True):
        chosen = chosen.to(torch.bool).cpu()
        if chosen.numel() != lu.count:
            raise ValueError(f"{lu.block}: {chosen.numel()} choices for {lu.count} {lu.unit}s")
        for piece in lu.pieces:
            if piece.param in masks:
                index = piece.chosen(chosen)
                if index.numel():
                    masks[piece.param].index_fill_(piece.axis, index, True)
    return Region(masks=masks, meta={str(k): str(v) for k, v in (meta or {}).items()})


def unit_share(layers: Sequence[LayerUnits], region: Region) -> list[Tensor]:
    """Per block, the share of each unit's entries (in the region's parameters) that the region
    holds: 1 for the units of a unit region, the projection of an entry region onto units."""
    held = unit_scores(layers, {n: m.float() for n, m in region.masks.items()})
    ones = unit_scores(layers, {n: torch.ones(m.shape) for n, m in region.masks.items()})
    return [h / o.clamp(min=1) for h, o in zip(held, ones, strict=True)]


def whole_units(layers: Sequence[LayerUnits], region: Region) -> list[Tensor]:
    """Per block, [count] bool: the units all of whose entries the region holds."""
    return [share >= 1 for share in unit_share(layers, region)]


def lape_region(
    model: nn.Module,
    path: str | os.PathLike,
    params: Mapping[str, nn.Parameter],
    *,
    lang: str | None = None,
    langs: Sequence[str] | None = None,
    meta: dict | None = None,
) -> Region:
    """The neuron region of a file in LAPE's released format (`<Model>.neuron.pth`: a list over
    languages of lists over blocks of LongTensors of FFN neuron indices): language `lang` (named
    by `langs`, the file's languages in order; LAPE's seven by default), else the union of every
    language. Read with `torch.load(weights_only=True)`, which admits tensors and containers only
    (nothing else is unpickled), and checked against the model: its block count and neuron
    count."""
    where = f"region.file {str(path)!r}"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable in any way
        raise ValueError(f"{where} is not a LAPE neuron file: {err}".splitlines()[0]) from None
    layers = neuron_units(model)
    if (
        not isinstance(data, list | tuple)
        or not data
        or not all(isinstance(per, list | tuple) for per in data)
    ):
        raise ValueError(f"{where} is not a list over languages of lists over blocks")
    for i, per in enumerate(data):
        if len(per) != len(layers):
            raise ValueError(
                f"{where}: language {i} has {len(per)} blocks, the model has {len(layers)}"
            )
    names = list(langs) if langs is not None else list(LAPE_LANGS[: len(data)])
    if len(names) != len(data):
        raise ValueError(
            f"{where} has {len(data)} languages; name them in order with "
            f"region.file_langs=[...] ({len(names)} given)"
        )
    if lang is not None and lang not in names:
        raise ValueError(f"region.lang {lang!r} is not in the file's languages: {', '.join(names)}")
    chosen = [torch.zeros(lu.count, dtype=torch.bool) for lu in layers]
    for i, per in enumerate(data):
        if lang is not None and names[i] != lang:
            continue
        for b, (lu, idx) in enumerate(zip(layers, per, strict=True)):
            if (
                not torch.is_tensor(idx)
                or idx.dim() > 1
                or (idx.is_floating_point() and idx.numel())
            ):
                raise ValueError(f"{where}: [{i}][{b}] is not a 1-D tensor of neuron indices")
            idx = idx.reshape(-1).long()
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= lu.count):
                raise ValueError(
                    f"{where}: [{i}][{b}] has neuron {int(idx.max())} outside the "
                    f"{lu.count} of {lu.block}"
                )
            chosen[b][idx] = True
    info = {"region_file": str(path), "file_langs": ",".join(names)} | dict(meta or {})
    if lang is not None:
        info["lang"] = lang
    return units_region(layers, chosen, params, info)


def build_units(
    model: nn.Module,
    run: RunConfig,
    scores: Mapping[str, Mapping[str, Tensor]],
    langs: Sequence[str],
    unit: str,
    pick: Pick,
    meta: dict,
) -> Region:
    """A run's unit region (`region=neurons|heads`): `pick` on the units' scores at `ratio`,
    per block or global, or as many matched random units; masks over the importance scope."""
    r, imp = run.region, run.importance
    layers = units_of(model, unit)
    params = scoped_params(model, imp.scope, imp.include, imp.exclude)
    per_lang = [unit_scores(layers, scores[lang]) for lang in langs]
    lang_index = list(langs).index(r.lang) if r.lang else None
    chosen = select_units(per_lang, run.ratio, pick, lang_index, per_layer=r.per_layer, name=unit)
    if r.matched_random:
        chosen = matched_random(chosen, run.seed, unit)
    info = dict(meta) | {
        "region": r.name,
        "ratio": repr(run.ratio),
        "pick": r.pick,
        "per_layer": str(r.per_layer),
        "matched_random": str(r.matched_random),
        "selection": "per_layer" if r.per_layer else "global",
    }
    if r.lang:
        info["lang"] = r.lang
    return units_region(layers, chosen, params, info)


def why_empty(model: nn.Module, run: RunConfig, unit: str) -> str:
    """Why a unit region `build_units` made has no unit, in one clause."""
    r, sizes = run.region, [lu.count for lu in units_of(model, unit)]
    k = max(exact_k(run.ratio, n) for n in sizes) if r.per_layer else exact_k(run.ratio, sum(sizes))
    if k == 0:
        where = f"the largest block has {max(sizes)}" if r.per_layer else f"{sum(sizes)} in all"
        return f"⌊ratio·{unit}s⌋ is 0 ({where}); raise the ratio"
    if r.lang:
        return f"no {unit} region.pick={r.pick} chose belongs to {r.lang}"
    return f"region.pick={r.pick} chose no {unit}"


def file_region(model: nn.Module, run: RunConfig, meta: dict) -> Region:
    """`region=file`: a regionbench mask file (.safetensors, checked against the model), else a
    LAPE neuron file (`lape_region`)."""
    r, imp = run.region, run.importance
    path = Path(r.file).expanduser()
    if path.suffix == ".safetensors":
        if r.lang:
            raise ValueError("region.lang picks a language of a LAPE file, not of a mask file")
        region = Region.load(path, model=model)
        return Region(region.masks, region.meta | {"region": r.name, "region_file": str(path)})
    params = scoped_params(model, imp.scope, imp.include, imp.exclude)
    info = dict(meta) | {"region": r.name}
    return lape_region(model, path, params, lang=r.lang, langs=r.file_langs, meta=info)
