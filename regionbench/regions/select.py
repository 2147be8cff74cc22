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

Mask files are safetensors with one packed-bit uint8 tensor per parameter (numpy.packbits,
big-endian bit order, C order) and string metadata (shapes, selected counts, a sha256 of the
bits, model, metric, region, ratio, languages, data fingerprint, regionbench version), so they
load without the run that made them. `Region.load` checks every mask against its shape, its
count and the checksum, and (given the model) names and shapes against the model, before use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import regionbench
from regionbench.common.cache import atomic_file, tensors_sha256
from regionbench.common.choices import check_choice
from regionbench.common.torchtools import seeded_generator
from regionbench.config import RunConfig

FORMAT = "regionbench-region-v1"

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


@dataclass
class Region:
    """A boolean mask per parameter (same shape) plus string metadata describing its origin."""

    masks: dict[str, Tensor]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        """Number of selected entries."""
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def total(self) -> int:
        """Number of entries in scope (all masked tensors)."""
        return sum(m.numel() for m in self.masks.values())

    @property
    def fraction(self) -> float:
        total = self.total
        return self.numel / total if total else 0.0

    def summary(self) -> list[dict]:
        """Rows {layer, module, selected, numel, fraction} per (layer index, module), e.g.
        (3, "self_attn.q_proj"); a module's weight and bias share a row; layer is None for
        parameters outside numbered blocks."""
        rows: dict[tuple, dict] = {}
        for name, mask in self.masks.items():
            layer, module = split_name(name)
            row = rows.setdefault(
                (layer, module), {"layer": layer, "module": module, "selected": 0, "numel": 0}
            )
            row["selected"] += int(mask.sum())
            row["numel"] += mask.numel()
        out = sorted(rows.values(), key=lambda r: (r["layer"] is None, r["layer"] or 0))
        for row in out:
            row["fraction"] = row["selected"] / row["numel"] if row["numel"] else 0.0
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write a self-describing safetensors mask file (atomically); returns its path."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors, shapes, counts = {}, {}, {}
        for name, mask in self.masks.items():
            bits = mask.detach().to("cpu", torch.bool).contiguous().reshape(-1).numpy()
            tensors[name] = torch.from_numpy(np.packbits(bits))
            shapes[name] = list(mask.shape)
            counts[name] = int(bits.sum())
        metadata = {str(k): str(v) for k, v in self.meta.items()}
        metadata.update(
            {
                "format": FORMAT,
                "encoding": "numpy.packbits",
                "shapes": json.dumps(shapes),
                "counts": json.dumps(counts),
                "sha256": _digest(tensors, shapes, counts),
            }
        )
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module | None = None) -> Region:
        """Read a mask file written by `save` (no pickle: safetensors + JSON only).

        Every mask is checked before it is used: its packed size against its shape, its
        selected count against the file's counts, the bits against the file's sha256 (files of
        older versions have neither: size and padding only). With `model`, the names and shapes
        are checked against the model's parameters first: a file for another model is a
        one-line error naming the first parameter that does not fit."""
        from safetensors import safe_open

        where = f"region file {str(path)!r}"
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata() or {})
            if metadata.get("format") != FORMAT:
                raise ValueError(
                    f"{str(path)!r} is not a regionbench region file "
                    f"(format {metadata.get('format')!r}, expected {FORMAT!r})"
                )
            try:
                shapes = json.loads(metadata.pop("shapes"))
                counts = json.loads(metadata.pop("counts", "null"))
                if not isinstance(shapes, dict) or not all(
                    isinstance(s, list) and all(isinstance(n, int) and n >= 0 for n in s)
                    for s in shapes.values()
                ):
                    raise ValueError("not {name: [sizes]}")
                if counts is not None and not isinstance(counts, dict):
                    raise ValueError("'counts' is not {name: count}")
            except (KeyError, ValueError) as err:
                raise ValueError(f"{where} has no valid metadata ({err})") from None
            names = set(f.keys())
            if set(shapes) != names:
                odd = sorted(names ^ set(shapes))[0]
                raise ValueError(
                    f"{where} is damaged: its 'shapes' metadata and its masks disagree on {odd!r}"
                )
            if model is not None:
                _check_fits(model, shapes, where, metadata.get("model_id"))
            digest = metadata.pop("sha256", None)
            packed = {name: f.get_tensor(name) for name in shapes}
        if digest is not None:
            tensors = {n: torch.from_numpy(b) for n, b in packed.items()}
            if _digest(tensors, shapes, counts) != digest:
                raise ValueError(f"{where} is damaged: its masks do not match their sha256")
        masks = {}
        for name, shape in shapes.items():
            count = math.prod(shape)
            bits = packed[name]
            if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (count + 7) // 8:
                raise ValueError(
                    f"{where}: mask {name!r} has {bits.size} packed bytes, its shape {shape} "
                    f"needs {(count + 7) // 8} (wrong 'shapes' metadata or a damaged file)"
                )
            unpacked = np.unpackbits(bits)
            if unpacked[count:].any():
                raise ValueError(f"{where} is damaged: mask {name!r} has bits beyond its shape")
            mask = torch.from_numpy(unpacked[:count].astype(bool)).reshape(shape)
            if counts is not None and int(mask.sum()) != counts.get(name):
                raise ValueError(
                    f"{where} is damaged: mask {name!r} selects {int(mask.sum())} entries, "
                    f"its 'counts' metadata says {counts.get(name)}"
                )
            masks[name] = mask
        for k in ("format", "encoding"):
            metadata.pop(k, None)
        return cls(masks=masks, meta=metadata)


def _digest(packed: Mapping[str, Tensor], shapes: Mapping, counts: Mapping | None) -> str:
    """sha256 of a mask file's content: the packed bits and the shapes and counts they need."""
    layout = json.dumps({"shapes": shapes, "counts": counts}, sort_keys=True)
    bits = tensors_sha256((n, packed[n]) for n in sorted(packed))
    return hashlib.sha256(f"{layout}\n{bits}".encode()).hexdigest()


def _check_fits(model, shapes: Mapping[str, list], where: str, model_id: str | None) -> None:
    """A one-line error naming the first parameter of the file that `model` lacks or has in
    another shape."""
    import difflib

    params = dict(model.named_parameters(remove_duplicate=False))
    made = f" (made for {model_id!r})" if model_id else ""
    for name, shape in shapes.items():
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{where}{made} does not fit this model: it has no parameter {name!r}{hint}"
            )
        if list(params[name].shape) != list(shape):
            raise ValueError(
                f"{where}{made} does not fit this model: {name!r} is {list(shape)} in the "
                f"file, {list(params[name].shape)} in the model"
            )


_LAYER = re.compile(r"(?:^|\.)(\d+)\.")


def split_name(name: str) -> tuple[int | None, str]:
    """("model.layers.3.self_attn.q_proj.weight") -> (3, "self_attn.q_proj")."""
    module = name.rsplit(".", 1)[0] if "." in name else name
    m = _LAYER.search(module + ".")
    if m is None:
        return None, module
    rest = module[m.end() :]
    return int(m.group(1)), rest or module


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


def empty(params: Mapping[str, torch.nn.Parameter], meta: dict | None = None) -> Region:
    """The empty region over `params` (ratio 0: the unmodified baseline)."""
    masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    return Region(masks=masks, meta={str(k): str(v) for k, v in (meta or {}).items()})


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
