"""Checks of `region.*` that region kinds share (their `check`), one line each before any work
(kinds.py names them in its entries), and the one-line error that replaces an empty region.

    checks.per_language(run, langs)   # raises a one-line ValueError, else None
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from regionbench.common.choices import check_choice
from regionbench.config import RunConfig
from regionbench.importance.metrics import METRICS
from regionbench.regions.select import exact_k


def dimension(run: RunConfig, langs: Sequence[str]) -> None:
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


def coordinates(run: RunConfig, langs: Sequence[str]) -> None:
    r = run.region
    if not (r.coordinates or r.file):
        raise ValueError(
            "region=coordinates needs region.coordinates=['<param>[row, col]', ...] "
            "or region.file=<path>"
        )
    if r.file and not Path(r.file).expanduser().is_file():
        raise ValueError(f"region.file {r.file!r} is not a readable file")


def per_language(run: RunConfig, langs: Sequence[str]) -> None:
    """A pick that compares the languages' scores: a per-language metric; region.lang, if
    given, an importance language."""
    r = run.region
    if r.lang:
        check_choice("region.lang (an importance language)", r.lang, langs)
    if not METRICS[run.metric.name].per_language and run.ratio > 0:
        per_lang = sorted(n for n, m in METRICS.items() if m.per_language)
        raise ValueError(
            f"region={r.name} needs a per-language metric, not {run.metric.name!r} (every "
            f"language gets the same scores, so the region would be empty); choices: "
            f"{', '.join(per_lang)}"
        )


def monolingual(run: RunConfig, langs: Sequence[str]) -> None:
    if not run.region.lang:
        raise ValueError(
            f"region={run.region.name} needs region.lang; choices: " + ", ".join(langs)
        )
    per_language(run, langs)


def file(run: RunConfig, langs: Sequence[str]) -> None:
    r = run.region
    if not r.file:
        raise ValueError(
            "region=file needs region.file=<path>: a regionbench mask (.safetensors) or a LAPE "
            "neuron file (.pth)"
        )
    if not Path(r.file).expanduser().is_file():
        raise ValueError(f"region.file {r.file!r} is not a readable file")


# --- why a region is empty (the error instead of a result) ----------------------------------
def too_small(ratio: float, scores: Mapping[str, Mapping[str, Tensor]]) -> str | None:
    """Why a region sized by `ratio` is empty when no matrix is large enough for one entry."""
    sizes = [t.numel() for per_lang in scores.values() for t in per_lang.values()]
    if sizes and exact_k(ratio, max(sizes)) == 0:
        return (
            f"⌊ratio·numel⌋ is 0 in every matrix (the largest has {max(sizes)} entries); "
            "raise the ratio"
        )
    return None


def why_selection_empty(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratio: float,
    langs: Sequence[str],
    lang: str | None,
) -> str:
    """Why a selection from scores came out empty, in one clause."""
    small = too_small(ratio, {name: scores[name] for name in langs})
    if small or lang is None:
        return small or "it selected no entry"
    others = [m for m in langs if m != lang]
    if all(torch.equal(scores[lang][n], scores[m][n]) for m in others for n in scores[lang]):
        return (
            f"the languages' scores are identical, so no entry is in {lang}'s top-k and in no "
            "other's (a language-independent metric gives every language the same scores)"
        )
    return f"every entry of {lang}'s top-k is also in another language's top-k"


def empty_error(name: str, ratio: float, why: str) -> ValueError:
    return ValueError(
        f"region={name} at ratio {ratio:g} is empty: {why}. An empty region is not a result "
        "(ratio=0 is the unmodified model)"
    )
