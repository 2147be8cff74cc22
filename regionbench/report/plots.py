"""Plots logged as run artifacts: the forgetting curve of a freeze-training run, a sweep's
conditions compared (per language, or along a swept axis), labelled heatmaps and dimension
profiles.

Ratios to the unmodified model are drawn around 1 (a dotted line marks "no change"), on a log
axis when they span more than a factor of 4 (×2 and ×0.5 are then equally far from 1); each
condition gets its own colour and the legend sits outside the data.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never through pyplot, so no
global backend or figure registry is touched (safe in threads, notebooks and headless jobs), and
matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Spread:
    """One metric over the runs of a condition (its seeds): `n` finite values, their mean, the
    sample standard deviation `sd` and the `level` t interval of the mean [lo, hi] (nan when
    n < 2; lo = hi = mean when every value is the same)."""

    n: int
    mean: float
    sd: float
    lo: float
    hi: float


def spread(values: Iterable[float], level: float = 0.95) -> Spread:
    """The `Spread` of `values`; None and non-finite values are left out."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return Spread(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return Spread(1, mean, math.nan, math.nan, math.nan)
    from scipy import stats

    sd = statistics.stdev(vals)
    half = float(stats.t.ppf((1 + level) / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))
    return Spread(len(vals), mean, sd, mean - half, mean + half)


def new_figure(panels: int = 1, *, width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return fig, axes


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format=path.suffix[1:] or "png")
    return path


LOG_SPAN = 4.0  # ratios whose largest / smallest exceeds this are drawn on a log axis


def colors(n: int) -> list:
    """`n` colours that tell conditions apart: tab10 up to 10, tab20 (pairs reordered so that
    neighbours differ) up to 20, evenly spaced hues beyond."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"]((2 * i) % 20 + (2 * i) // 20) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def ratio_axis(ax, values, *, axis: str = "y") -> None:
    """A ratio axis: a dotted line at 1, log scale with plain-number ticks when the values
    span more than `LOG_SPAN`, and 1 always in view."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    line = ax.axhline if axis == "y" else ax.axvline
    line(1.0, color="grey", linestyle=":", linewidth=1.2, zorder=0)
    if not finite:
        return
    lo, hi = min([*finite, 1.0]), max([*finite, 1.0])
    target = ax.yaxis if axis == "y" else ax.xaxis
    if hi / lo > LOG_SPAN:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(NullFormatter())
    else:
        pad = max((hi - lo) * 0.08, 0.002)
        (ax.set_ylim if axis == "y" else ax.set_xlim)(lo - pad, hi + pad)


def legend_outside(ax, title: str | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            title=title,
            fontsize="small",
            title_fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
        )


def _errors(points) -> list[list[float]] | None:
    """matplotlib's asymmetric yerr from (mean, lo, hi) triples; nan bounds draw no bar, and
    neither does a bound on the wrong side of the mean (a bootstrap interval need not contain
    its point value; an unchanged model's is the value give or take rounding)."""
    if not any(math.isfinite(lo) and math.isfinite(hi) for _, lo, hi in points):
        return None
    below = [max(m - lo, 0.0) if math.isfinite(lo) else 0.0 for m, lo, _ in points]
    above = [max(hi - m, 0.0) if math.isfinite(hi) else 0.0 for m, _, hi in points]
    return [below, above]


def condition_points(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[tuple[float, float, float]]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    xlabel: str = "",
    note: str = "",
) -> Path:
    """Each condition's value per category (e.g. per language), as points side by side with
    their interval: `series` is [(condition, [(mean, lo, hi) per category])]; nan lo/hi draw
    no bar. The y axis is a ratio axis (`ratio_axis`)."""
    if not categories or not series:
        raise ValueError("condition_points needs at least one category and one condition")
    for label, points in series:
        if len(points) != len(categories):
            raise ValueError(f"{label!r} has {len(points)} values for {len(categories)} categories")
    width = max(6.4, 0.55 * len(categories) * max(1, len(series)) ** 0.5 + 3.5)
    fig, (ax,) = new_figure(1, width=width, height=4.4)
    step = 0.8 / len(series)
    for i, ((label, points), color) in enumerate(zip(series, colors(len(series)), strict=True)):
        xs = [c - 0.4 + step * (i + 0.5) for c in range(len(categories))]
        keep = [j for j, (m, _, _) in enumerate(points) if math.isfinite(m)]
        ax.errorbar(
            [xs[j] for j in keep],
            [points[j][0] for j in keep],
            yerr=_errors([points[j] for j in keep]),
            fmt="o",
            markersize=5,
            capsize=3,
            color=color,
            label=label,
        )
    for c in range(1, len(categories)):
        ax.axvline(c - 0.5, color="0.9", linewidth=0.8, zorder=0)
    ax.set_xticks(range(len(categories)), list(categories))
    ax.set_xlim(-0.5, len(categories) - 0.5)
    ratio_axis(ax, [v for _, pts in series for p in pts for v in p])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    legend_outside(ax)
    set_titles(fig, ax, title, note)
    return save_figure(fig, path)


def condition_lines(
    series: Sequence[tuple[str, Sequence[tuple[float, float, float, float]]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    note: str = "",
    ratio: bool = True,
) -> Path:
    """Each condition's value along a numeric axis, with its interval: `series` is
    [(condition, [(x, mean, lo, hi)])], each drawn shifted by under 1% of the x range from its
    neighbour so that equal values stay visible. With `ratio`, the y axis is a ratio axis."""
    if not series or not any(points for _, points in series):
        raise ValueError("condition_lines needs at least one condition with a point")
    fig, (ax,) = new_figure(1, width=7.6, height=4.4)
    xs = [p[0] for _, points in series for p in points]
    # conditions with equal values would hide each other: each is shifted a little along x
    nudge = 0.008 * (max(xs) - min(xs)) if len(series) > 1 else 0.0
    for i, ((label, points), color) in enumerate(zip(series, colors(len(series)), strict=True)):
        points = sorted(p for p in points if math.isfinite(p[1]))
        if not points:
            continue
        shift = (i - (len(series) - 1) / 2) * nudge
        ax.errorbar(
            [p[0] + shift for p in points],
            [p[1] for p in points],
            yerr=_errors([p[1:] for p in points]),
            marker="o",
            markersize=4,
            capsize=3,
            linewidth=1.4,
            color=color,
            label=label,
        )
    values = [v for _, pts in series for p in pts for v in p[1:]]
    if ratio:
        ratio_axis(ax, values)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    legend_outside(ax)
    set_titles(fig, ax, title, note)
    return save_figure(fig, path)


def set_titles(fig, ax, title: str, note: str = "") -> None:
    """The figure's title (what was done, to which model) and under it a note on how to read
    it (what the bars are), each wrapped to the figure's width."""
    width = fig.get_figwidth()
    fig.suptitle(_wrap(title, int(width * 11)), fontsize="medium")
    if note:
        ax.set_title(_wrap(note, int(width * 13)), fontsize="small", color="0.3")


def _wrap(text: str, chars: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, max(chars, 20)) for line in text.splitlines())


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

    Numeric `x` (e.g. ratio) draws lines, anything else (e.g. region) points side by side. Rows
    sharing (group, x) (seeds) are averaged, with a bar for the 95% t interval of their mean.
    Rows without a metric, or with a non-finite one, are skipped for that metric.
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

    fig, axes = new_figure(len(ys))
    palette = colors(len(groups))
    for ax, y in zip(axes, ys, strict=True):
        for gi, g in enumerate(groups):
            points = []
            for xv in xs:
                s = spread(
                    float(row[y])
                    for row in rows
                    if row.get(x) == xv
                    and (group is None or str(row.get(group)) == g)
                    and _is_number(row.get(y))
                )
                if s.n:
                    points.append((xs.index(xv), xv, s))
            if not points:
                continue
            label = f"{group}={g}" if group else y
            means = [p[2].mean for p in points]
            yerr = _errors([(p[2].mean, p[2].lo, p[2].hi) for p in points])
            if numeric:
                ax.errorbar(
                    [p[1] for p in points],
                    means,
                    yerr=yerr,
                    marker="o",
                    capsize=3,
                    color=palette[gi],
                    label=label,
                )
            else:
                width = 0.8 / len(groups)
                pos = [p[0] - 0.4 + width * (gi + 0.5) for p in points]
                ax.errorbar(
                    pos, means, yerr=yerr, fmt="o", capsize=3, color=palette[gi], label=label
                )
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(True, alpha=0.3)
        if group:
            legend_outside(ax)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


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
    missing: str = "",
    note: str = "",
    marked: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """A labelled matrix: rows × cols, each cell annotated with its value. `center` (e.g. 1 for
    ratios) puts the neutral colour there with a diverging map; `log` colours by log values
    (ratios from ×0.5 to ×2 look alike on both sides); `limits` fixes the colour scale (0 to 1
    for Jaccard, from 0 for shares) so that equal values never look different. A NaN cell is
    left blank, with the text `missing` in it ("—": not compared); `note` says how to read it.
    A `marked` cell (e.g. its interval excludes 1) has a `*` after its value, in bold, and a
    black frame."""
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    data = np.array(values, dtype=float)
    if data.shape != (len(rows), len(cols)) or not data.size:
        raise ValueError(f"heatmap values {data.shape} do not match {len(rows)} x {len(cols)}")
    marks = np.zeros(data.shape, dtype=bool) if marked is None else np.array(marked, dtype=bool)
    if marks.shape != data.shape:
        raise ValueError(f"heatmap marks {marks.shape} do not match {len(rows)} x {len(cols)}")
    finite = data[np.isfinite(data)]
    width = max(6.4, 0.75 * len(cols) + 3 + 0.07 * max(map(len, rows), default=0))  # labels
    fig, (ax,) = new_figure(1, width=width, height=max(3.2, 0.5 * len(rows) + 1.8))
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
                    fmt.format(data[i, j]) + ("*" if marks[i, j] else ""),
                    ha="center",
                    va="center",
                    color=ink,
                    fontsize="small",
                    fontweight="bold" if marks[i, j] else "normal",
                )
                if marks[i, j]:
                    frame = Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, linewidth=1.4)
                    ax.add_patch(frame)
            elif missing:
                ax.text(j, i, missing, ha="center", va="center", color="0.5", fontsize="small")
    bar = fig.colorbar(image, ax=ax, label=label)
    if isinstance(norm, LogNorm):  # readable ratios (0.95, 1, 1.05), not 9.5 x 10^-1
        ticks = np.geomspace(norm.vmin, norm.vmax, 5).tolist()
        digits = next(d for d in range(3, 8) if len({f"{t:.{d}g}" for t in ticks}) == 5)
        bar.set_ticks(ticks)
        bar.ax.yaxis.set_major_formatter(FormatStrFormatter(f"%.{digits}g"))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    set_titles(fig, ax, title, note)
    return save_figure(fig, path)
