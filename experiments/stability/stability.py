"""How many importance samples does a stable core need? Split-half agreement against n.

    python experiments/stability/stability.py                       # sandbox-m, n = 8 ... 512
    python experiments/stability/stability.py --ns 8,16,32 --plot /tmp/stability.png

For each n, two disjoint sets of n samples (windows of `--seq-len` tokens) per importance
language are scored separately, and the two scorings are compared: if the core region found from
one set of n samples is the core another n samples would give, the split-half agreement is near 1.
The windows are packed once, 2 * max(n) per language; half A of every n is the first n windows and
half B the windows [max(n), max(n) + n), so the halves never share a window and a larger n only
adds windows to both (nested prefixes: the curve moves because n grows, not because the draw
changed). Agreement per n:

* Jaccard of the two halves' core regions (top-k of S = sum over languages, per matrix) at 1% and
  5%;
* Jaccard of each language's own top 5% (the core of that language alone): min/median/max over
  the languages;
* Spearman rank correlation of S between the halves, per matrix: median (and min) over matrices.

Scoring is the expensive part (forward + backward for every window, twice per n), so n runs in
ascending order and the grid stops before an n whose estimated cost would take the run past
`--budget-min` minutes; the table then ends at the last n that fitted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from regionbench.data import sources as texts
from regionbench.importance import compute as scoring
from regionbench.regions import kinds as regions
from regionbench.regions import overlap

DEFAULT_NS = (8, 16, 32, 64, 128, 256, 512)
Scores = Mapping[str, Mapping[str, Tensor]]  # {lang: {param: score}}


def split_halves(
    windows: Mapping[str, Tensor], n: int, n_max: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Half A = windows [0, n), half B = windows [n_max, n_max + n) of every language.

    Both halves are prefixes of two fixed disjoint pools of n_max windows, so they never share a
    window and the halves of a smaller n are contained in those of a larger one."""
    if not 1 <= n <= n_max:
        raise ValueError(f"n {n} must be in [1, n_max={n_max}]")
    for lang, w in windows.items():
        if w.shape[0] < 2 * n_max:
            raise ValueError(f"{lang}: {w.shape[0]} windows, need 2 * n_max = {2 * n_max}")
    a = {lang: w[:n] for lang, w in windows.items()}
    b = {lang: w[n_max : n_max + n] for lang, w in windows.items()}
    return a, b


def summed(scores: Scores) -> dict[str, Tensor]:
    """S = sum over languages of each parameter's scores (what the core ranks)."""
    langs = list(scores)
    return {
        name: torch.stack([scores[lang][name].float() for lang in langs]).sum(0)
        for name in scores[langs[0]]
    }


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two same-shape tensors (ties get their average rank)."""
    from scipy.stats import spearmanr

    rho = spearmanr(x.reshape(-1).double().numpy(), y.reshape(-1).double().numpy()).statistic
    return float(rho)


def agreement_summary(
    a: Scores,
    b: Scores,
    core_ratios: Sequence[float] = (0.01, 0.05),
    lang_ratio: float = 0.05,
) -> dict[str, float]:
    """Split-half agreement of two scorings {lang: {param: score}} of the same parameters.

    Keys: `core_<r>` (Jaccard of the core regions at ratio r, one per `core_ratios`),
    `lang_min` / `lang_median` / `lang_max` (Jaccard of each language's own top `lang_ratio`),
    `spearman_median` / `spearman_min` (per-matrix Spearman of S)."""
    if set(a) != set(b):
        raise ValueError(f"the halves score different languages: {sorted(a)} vs {sorted(b)}")
    out = {}
    for r in core_ratios:
        ra, rb = regions.select(a, r, "core"), regions.select(b, r, "core")
        out[f"core_{r:g}"] = overlap.agreement(ra, rb).jaccard
    per_lang = [
        overlap.agreement(
            regions.select(a, lang_ratio, "core", langs=[lang]),
            regions.select(b, lang_ratio, "core", langs=[lang]),
        ).jaccard
        for lang in a
    ]
    out.update(
        lang_min=min(per_lang), lang_median=statistics.median(per_lang), lang_max=max(per_lang)
    )
    sa, sb = summed(a), summed(b)
    rhos = [spearman(sa[name], sb[name]) for name in sa]
    out.update(spearman_median=statistics.median(rhos), spearman_min=min(rhos))
    return out


def chance_jaccard(ratio: float) -> float:
    """Expected Jaccard of two independent uniformly random selections of a fraction `ratio`."""
    return ratio / (2 - ratio)


def first_reaching(rows: Sequence[Mapping], key: str, threshold: float) -> int | None:
    """The smallest n whose `key` is at least `threshold` (None if no row reaches it)."""
    for row in sorted(rows, key=lambda r: r["n"]):
        if row[key] >= threshold:
            return row["n"]
    return None


def run_grid(
    model,
    windows: Mapping[str, Tensor],
    ns: Sequence[int],
    *,
    metric: str = "taylor",
    batch_size: int = 16,
    budget_s: float = math.inf,
    log=print,
) -> tuple[list[dict], str | None]:
    """Score both halves for every n (ascending) and summarise their agreement.

    Returns (rows, why it stopped early or None). Before each n the cost is extrapolated from the
    seconds per scored window so far; an n that would end past `budget_s` is not started."""
    ns = sorted(ns)
    n_max = ns[-1]
    rows: list[dict] = []
    start = time.perf_counter()
    scored = 0  # windows scored so far (all halves and languages)
    for n in ns:
        cost = 2 * len(windows) * n
        elapsed = time.perf_counter() - start
        if scored:
            estimate = cost * elapsed / scored
            if elapsed + estimate > budget_s:
                return rows, (
                    f"stopped before n={n}: estimated {estimate / 60:.1f} min more after "
                    f"{elapsed / 60:.1f} min, over the budget of {budget_s / 60:.0f} min"
                )
        t0 = time.perf_counter()
        half_a, half_b = split_halves(windows, n, n_max)
        kwargs = {"batch_size": batch_size, "progress": False}
        scores_a = scoring.score_samples(model, half_a, metric, **kwargs)
        scores_b = scoring.score_samples(model, half_b, metric, **kwargs)
        scored += cost
        row = {"n": n, **agreement_summary(scores_a, scores_b)}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        log(
            f"n={n}: {cost} windows scored in {row['seconds']:.0f} s "
            f"(total {time.perf_counter() - start:.0f} s); core 5% Jaccard {row['core_0.05']:.3f}"
        )
    return rows, None


def markdown_table(rows: Sequence[Mapping]) -> str:
    head = (
        "| n per half | core 1% Jaccard | core 5% Jaccard | per-language top-5% Jaccard "
        "min / median / max | Spearman of S, median (min) | scoring s |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['core_0.01']:.3f} | {r['core_0.05']:.3f} | "
            f"{r['lang_min']:.3f} / {r['lang_median']:.3f} / {r['lang_max']:.3f} | "
            f"{r['spearman_median']:.3f} ({r['spearman_min']:.3f}) | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Mapping], path: str | Path, *, threshold: float, title: str) -> Path:
    """Agreement against n (log2 axis): one line per quantity, the per-language range shaded."""
    # Figure + Agg canvas, no pyplot: no global backend or figure registry (regionbench/plots.py).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ns = [r["n"] for r in rows]
    col = {k: [r[k] for r in rows] for k in rows[0] if k != "n"}
    ax.plot(ns, col["core_0.01"], "o-", label="core 1% Jaccard")
    ax.plot(ns, col["core_0.05"], "o-", label="core 5% Jaccard")
    (line,) = ax.plot(ns, col["lang_median"], "s-", label="per-language top 5% Jaccard (median)")
    ax.fill_between(
        ns,
        col["lang_min"],
        col["lang_max"],
        color=line.get_color(),
        alpha=0.2,
        label="per-language top 5% Jaccard (min-max)",
    )
    ax.plot(ns, col["spearman_median"], "^:", color="grey", label="Spearman of S (median matrix)")
    ax.axhline(
        threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(0, 1)
    ax.set_xlabel("importance samples per half, per language (n)")
    ax.set_ylabel("split-half agreement")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def parse_ns(text: str) -> list[int]:
    ns = sorted({int(x) for x in text.split(",") if x.strip()})
    if not ns or ns[0] < 1:
        raise argparse.ArgumentTypeError(f"--ns {text!r}: need positive integers, e.g. 8,16,32")
    return ns


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="sandbox-m")
    ap.add_argument("--metric", default="taylor")
    ap.add_argument("--ns", type=parse_ns, default=list(DEFAULT_NS), help="e.g. 8,16,32")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.8, help="core 5%% Jaccard to reach")
    ap.add_argument("--budget-min", type=float, default=15.0, help="scoring time budget")
    ap.add_argument("--plot", default="stability.png", help="PNG path (default: ./stability.png)")
    args = ap.parse_args(argv)

    from regionbench.models.loading import load_model

    def log(msg: str) -> None:  # progress on stderr: stdout keeps only the results
        print(msg, file=sys.stderr, flush=True)

    model, tok = load_model(args.model, progress=False)
    langs = texts.default_langs("sandbox", "importance")
    n_max = args.ns[-1]
    log(f"packing 2 x {n_max} windows of {args.seq_len} tokens for {', '.join(langs)}")
    windows = scoring.importance_samples(
        tok,
        {lang: texts.iter_texts("sandbox", "importance", lang) for lang in langs},
        seq_len=args.seq_len,
        samples=2 * n_max,
    )
    rows, stopped = run_grid(
        model,
        windows,
        args.ns,
        metric=args.metric,
        batch_size=args.batch_size,
        budget_s=args.budget_min * 60,
        log=log,
    )
    if not rows:
        raise SystemExit(stopped or "no n was scored")

    print(f"## {args.model}, {args.metric}: split-half agreement ({len(langs)} languages)\n")
    print(markdown_table(rows))
    print(
        f"\nchance level (two random selections): Jaccard {chance_jaccard(0.01):.4f} at 1%, "
        f"{chance_jaccard(0.05):.4f} at 5%"
    )
    print(f"total scoring time: {sum(r['seconds'] for r in rows):.0f} s")
    if stopped:
        print(stopped)
    reached = first_reaching(rows, "core_0.05", args.threshold)
    last = rows[-1]["n"]
    print(
        f"smallest n with core 5% Jaccard >= {args.threshold:g}: "
        + (str(reached) if reached is not None else f"not reached up to n={last}")
    )
    title = f"{args.model}, {args.metric}: split-half agreement vs importance samples"
    path = plot(rows, args.plot, threshold=args.threshold, title=title)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
