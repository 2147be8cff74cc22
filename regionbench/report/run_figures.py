"""The figures of one run: the forgetting curve of a training job, where a region lives (its
share of each block matrix, its entries per hidden dimension). Drawn here and handed to the
tracker as files.

    forgetting_curve(history, "forgetting_curve.png", title="...")
    region_density(region.summary(), "region_density.png", title="...")
    dimension_profile(per_dim, "region_dims.png", title="...", marked=[1415, 2533])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from regionbench.report.plots import (
    colors,
    heatmap,
    legend_outside,
    new_figure,
    ratio_axis,
    save_figure,
    set_titles,
)

_MEANS = ("mean", "gmean")


def forgetting_curve(
    history: Sequence[tuple[int, Mapping[str, float]]], path: str | Path, *, title: str = ""
) -> Path:
    """Plot `forget/<lang>` (solid) and `learn/<lang>` (dashed) perplexity ratios against the
    optimizer step, with their average over languages in bold black (the geometric `gmean` if
    logged; none for a single language), on a ratio axis with the no-change line at 1.

    `history` is `train_frozen(...)["history"]`: [(step, {metric: value})]; other keys are
    ignored.  Returns the written path (PNG unless the suffix says otherwise).
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in history:
        for key, value in metrics.items():
            if key.startswith(("forget/", "learn/")) and value is not None:
                series.setdefault(key, []).append((int(step), float(value)))
    if not series:
        keys = sorted({k for _, m in history for k in m})
        raise ValueError(f"history has no forget/<lang> or learn/<lang> metrics; keys: {keys}")

    fig, (ax,) = new_figure(width=7.6)
    langs = sorted({k.split("/", 1)[1] for k in series} - {"mean", "gmean"})
    color = dict(zip(langs, colors(len(langs)), strict=True))
    for kind in ("forget", "learn"):  # one average per kind (geometric if logged), none of one
        own = [k for k in series if k.startswith(f"{kind}/") and k.split("/")[1] not in _MEANS]
        for drop in (f"{kind}/mean", f"{kind}/gmean"):
            if len(own) < 2 or (drop.endswith("/mean") and f"{kind}/gmean" in series):
                series.pop(drop, None)
    for key in sorted(series, key=lambda k: (k.split("/")[1] in _MEANS, k)):
        points = sorted(series[key])
        steps, values = [s for s, _ in points], [v for _, v in points]
        kind, lang = key.split("/", 1)
        style = "--" if kind == "learn" else "-"
        if lang in _MEANS:
            ax.plot(steps, values, style, color="black", linewidth=2.5, label=key)
        else:
            ax.plot(
                steps,
                values,
                style,
                color=color[lang],
                marker="o",
                markersize=3,
                linewidth=1.2,
                label=key,
            )
    ratio_axis(ax, [v for points in series.values() for _, v in points])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("perplexity ratio (now / before training)")
    ax.grid(True, which="major", alpha=0.3)
    legend_outside(ax)
    set_titles(
        fig,
        ax,
        title or "forgetting during freeze training",
        "forget/<lang> (solid): the languages not trained on, above 1 = forgotten; "
        "learn/<lang> (dashed): the training language",
    )
    return save_figure(fig, path)


def dimension_profile(
    per_dim: Sequence[int], path: str | Path, *, title: str = "", marked: Sequence[int] = ()
) -> Path:
    """Where a region lives: its entries per hidden dimension of the residual stream (left;
    `marked` dimensions, e.g. massive-activation ones, in red) and the share of the region in its
    top-d dimensions against an evenly spread region (right, log d axis)."""
    counts = [int(c) for c in per_dim]
    total, hidden = sum(counts), len(counts)
    if not hidden or not total:
        raise ValueError("dimension_profile needs a region with entries on the residual stream")
    fig, (left, right) = new_figure(2)
    left.bar(range(hidden), counts, width=1.0, color="tab:blue")
    for i, d in enumerate(marked):
        label = "massive-activation dimension" if i == 0 else None
        left.bar([d], [counts[d]], width=1.0, color="tab:red", label=label)
    left.axhline(total / hidden, color="grey", linestyle=":", linewidth=1, label="evenly spread")
    left.set_xlabel("hidden dimension of the residual stream")
    left.set_ylabel("region entries (rows of writers + columns of readers)")
    left.legend(fontsize="small", loc="upper right")
    ranked = sorted(counts, reverse=True)
    shares, running = [], 0
    for c in ranked:
        running += c
        shares.append(running / total)
    ds = list(range(1, hidden + 1))
    right.plot(ds, shares, color="tab:blue", label="this region")
    right.plot(ds, [d / hidden for d in ds], color="grey", linestyle=":", label="evenly spread")
    right.set_xscale("log")
    right.set_xlabel("top-d dimensions (d)")
    right.set_ylabel("share of the region's entries")
    right.set_ylim(0, 1.02)
    right.grid(True, which="major", alpha=0.3)
    right.legend(fontsize="small", loc="lower right")
    fig.suptitle(title or "region entries per hidden dimension")
    return save_figure(fig, path)


def region_density(
    rows: list[dict],
    path: Path,
    title: str,
    score_shares: Mapping[tuple, float] | Callable[[], Mapping[tuple, float]] | None = None,
) -> Path:
    """The share of each block matrix a region selects, layers × modules; where that share is
    the same in every matrix (a region picked per matrix: core, core_bottom, random) and the
    region's `score_shares` are given (`Region.score_shares`), the share of each matrix's
    importance the selected entries hold instead, which says where the region's weight lies
    (`score_shares` may be a function: it is called only then, so other regions read no scores)."""
    layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
    modules = sorted({r["module"] for r in rows if r["layer"] is not None})
    cell = {(r["layer"], r["module"]): r["fraction"] for r in rows}
    shares = [v for key, v in cell.items() if key[0] is not None]
    uniform = bool(shares) and max(shares) - min(shares) <= 0.02 * max(shares)
    note, label = "", "share selected"
    if uniform and callable(score_shares):
        score_shares = score_shares()
    if uniform and score_shares:
        note = (
            f"every matrix has {max(shares):.3g} of its entries selected; colours: the share of "
            "the matrix's importance (Σ over languages of the scores) they hold"
        )
        cell, label = dict(score_shares), "share of the importance held"
    values = [[cell.get((layer, m), math.nan) for m in modules] for layer in layers]
    top = max((v for line in values for v in line if math.isfinite(v)), default=1.0)
    return heatmap(
        values,
        [f"layer {x}" for x in layers],
        modules,
        path,
        label=label,
        title=title,
        fmt="{:.3f}",
        limits=(0.0, top or 1.0),  # from 0: a region selected per matrix shows one colour
        note=note,
    )
