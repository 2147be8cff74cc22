"""Plots logged as run artifacts: the forgetting curve of a freeze-training run and a generic
sweep comparison (one panel per metric, x = a swept axis, one series per group).

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never through pyplot, so no
global backend or figure registry is touched (safe in threads, notebooks and headless jobs), and
matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path


def _figure(panels: int = 1, *, width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format=path.suffix[1:] or "png")
    return path


def forgetting_curve(
    history: Sequence[tuple[int, Mapping[str, float]]], path: str | Path, *, title: str = ""
) -> Path:
    """Plot `forget/<lang>` (solid) and `learn/<lang>` (dashed) perplexity ratios against the
    optimizer step, the means in bold black, on a log axis with the no-change line at 1.

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

    fig, (ax,) = _figure()
    for key in sorted(series, key=lambda k: (k.endswith("/mean"), k)):
        points = sorted(series[key])
        steps, values = [s for s, _ in points], [v for _, v in points]
        kind, lang = key.split("/", 1)
        style = "--" if kind == "learn" else "-"
        if lang == "mean":
            ax.plot(steps, values, style, color="black", linewidth=2.5, label=key)
        else:
            ax.plot(steps, values, style, marker="o", markersize=3, linewidth=1.2, label=key)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    values = [v for points in series.values() for _, v in points]
    if all(math.isfinite(v) and v > 0 for v in values):
        ax.set_yscale("log")  # ratios: x2 forgotten and x0.5 learned are equally far from 1
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("perplexity ratio (now / before training)")
    ax.set_title(title or "forgetting (solid) and learning (dashed) during freeze training")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def sweep_plot(
    rows: Sequence[Mapping[str, object]],
    x: str,
    ys: Sequence[str],
    path: str | Path,
    group: str | None = None,
    *,
    title: str = "",
    logy: bool = False,
) -> Path:
    """One panel per metric in `ys` against the swept axis `x`, one series per value of `group`.

    Numeric `x` (e.g. ratio) draws lines, anything else (e.g. region) grouped bars.  Rows sharing
    (group, x) (seeds) are averaged, with a +-1 standard deviation bar.  Rows without a metric,
    or with a non-finite one, are skipped for that metric.
    """
    if not rows:
        raise ValueError("sweep_plot rows [] is empty")
    if isinstance(ys, str):
        ys = [ys]
    if not ys:
        raise ValueError("sweep_plot ys [] is empty; name at least one metric")
    keys = sorted({k for row in rows for k in row})
    for name in [x, *ys, *([group] if group else [])]:
        if not any(name in row for row in rows):
            raise ValueError(f"sweep_plot column {name!r} is in no row; columns: {keys}")

    xs = list(dict.fromkeys(row[x] for row in rows if x in row))
    numeric = all(_is_number(v) for v in xs)
    if numeric:
        xs.sort()
    groups = list(dict.fromkeys(str(row.get(group)) for row in rows)) if group else [None]

    fig, axes = _figure(len(ys))
    for ax, y in zip(axes, ys, strict=True):
        for gi, g in enumerate(groups):
            points = []
            for xv in xs:
                vals = [
                    float(row[y])
                    for row in rows
                    if row.get(x) == xv
                    and (group is None or str(row.get(group)) == g)
                    and _is_number(row.get(y))
                    and math.isfinite(float(row[y]))
                ]
                if vals:
                    mean = sum(vals) / len(vals)
                    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
                    points.append((xs.index(xv), xv, mean, std))
            if not points:
                continue
            label = f"{group}={g}" if group else y
            means, stds = [p[2] for p in points], [p[3] for p in points]
            if numeric:
                ax.errorbar(
                    [p[1] for p in points], means, yerr=stds, marker="o", capsize=3, label=label
                )
            else:
                width = 0.8 / len(groups)
                pos = [p[0] - 0.4 + width * (gi + 0.5) for p in points]
                ax.bar(pos, means, width=width, yerr=stds, capsize=3, label=label)
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(True, alpha=0.3)
        if group:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


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
    fig, (left, right) = _figure(2)
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
    return _save(fig, path)


def heatmap(
    values: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: str | Path,
    *,
    title: str,
    label: str,
    center: float | None = None,
    log: bool = False,
    fmt: str = "{:.3g}",
    limits: tuple[float, float] | None = None,
) -> Path:
    """A labelled matrix: rows × cols, each cell annotated with its value. `center` (e.g. 1 for
    ratios) puts the neutral colour there with a diverging map; `log` colours by log values
    (ratios from ×0.5 to ×2 look alike on both sides); `limits` fixes the colour scale (0 to 1
    for Jaccard, from 0 for shares) so that equal values never look different."""
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    data = np.array(values, dtype=float)
    if data.shape != (len(rows), len(cols)) or not data.size:
        raise ValueError(f"heatmap values {data.shape} do not match {len(rows)} x {len(cols)}")
    finite = data[np.isfinite(data)]
    width = max(6.4, 0.75 * len(cols) + 3)
    fig, (ax,) = _figure(1, width=width, height=max(3.2, 0.5 * len(rows) + 1.8))
    norm, cmap = None, "viridis"
    if center is not None and finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        lo, hi = min(lo, center - 1e-9), max(hi, center + 1e-9)
        if log and lo > 0:
            span = max(abs(math.log(lo / center)), abs(math.log(hi / center)))
            norm = LogNorm(center * math.exp(-span), center * math.exp(span))
        else:
            norm = TwoSlopeNorm(center, lo, hi)
        cmap = "RdBu_r"
    if norm is None and limits is not None:
        norm = Normalize(*limits)
    image = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(cols)), list(cols), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(data[i, j]):
                r, g, b, _ = image.cmap(image.norm(data[i, j]))
                ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                ax.text(
                    j,
                    i,
                    fmt.format(data[i, j]),
                    ha="center",
                    va="center",
                    color=ink,
                    fontsize="small",
                )
    bar = fig.colorbar(image, ax=ax, label=label)
    if isinstance(norm, LogNorm):  # readable ratios (0.95, 1, 1.05), not 9.5 x 10^-1
        bar.set_ticks(np.geomspace(norm.vmin, norm.vmax, 5).tolist())
        bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title)
    return _save(fig, path)
