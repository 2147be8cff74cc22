"""The figures a sweep's parent run gets, and the conditions they and the comparison table
(`report.summarize_sweep`) are built on.

A condition is what a sweep compares: the jobs that share every swept value except their seed
(`tracking.pair_over`). Each figure shows one point per condition, the mean over its jobs, with
a 95% interval (over the seeds when it has several, else the job's own interval over the
evaluation documents), says in its title what was done to which model, and names each
condition in words ("taylor core 5%", "random 1% frozen", "unmodified"):

* `ppl_ratio_by_language.png`: each condition's perplexity ratio per language (up to 8
  conditions and 12 languages);
* `ppl_ratio_heatmap.png`: the same as a condition × language table of colours;
* `<metric>_vs_<axis>.png`: the headline ratio against a numeric swept axis (ratio);
* `forgetting_by_condition.png`: freeze sweeps, forgetting at every evaluation step.

How much the conditions' regions agree is `report.overlap.region_overlap`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from regionbench.common import names
from regionbench.config import InterventionConfig
from regionbench.interventions.kinds import INTERVENTIONS, Intervention
from regionbench.regions.kinds import REGION_KINDS, RegionKind
from regionbench.report.plots import Spread, spread

MAX_POINT_CONDITIONS = 8  # more conditions side by side per language: the heatmap alone
MAX_POINT_LANGUAGES = 12
_DESCRIBED = ("metric.name", "region.name", "region.lang", "ratio", "intervention.name")

History = Callable[[str, str], Sequence[tuple[int, float]]]  # (run id, metric) -> [(step, value)]


# ----------------------------------------------------------------------------------- conditions
def conditions(runs: Sequence, params: Sequence[str], over: Sequence[str] = ("seed",)) -> dict:
    """The finished runs grouped by the values of every swept param in `params` except those
    in `over` (the seeds), in order of first appearance: {values: [runs]}."""
    keys = condition_keys(params, over)
    groups: dict[tuple, list] = {}
    for r in runs:
        if r.info.status == "FINISHED":
            groups.setdefault(tuple(r.data.params.get(k, "") for k in keys), []).append(r)
    return groups


def condition_keys(params: Sequence[str], over: Sequence[str] = ("seed",)) -> list[str]:
    return [p for p in params if p not in over]


def describe(params: Mapping[str, str], keys: Sequence[str], *, ratio: bool = True) -> str:
    """A condition in words, from one of its runs' params: "taylor core 5%", "random core 1%
    frozen", "taylor monolingual latn 5%", "unmodified" (ratio 0), "nothing frozen"; the swept
    `keys` the words do not cover follow as key=value. Without `ratio`, the size is left out
    (for a figure whose x axis is the ratio)."""
    kind, iv = _region_kind(params), _intervention(params)
    region = params.get("region.name", "")
    preset = params.get("choice.region", region)  # region=top-dims: a preset of `dimension`
    # a sweep across models: which model first, by its short name ("sandbox-s taylor core 5%")
    words: list[str] = [_model_name(params)] if "model.name" in keys else []
    if kind is not None and kind.empty_at_zero and _number(params.get("ratio")) == 0:
        words.append(f"nothing {iv.word}" if iv is not None and iv.word else "unmodified")
    else:
        words += kind.words(params, ratio=ratio) if kind is not None else [region]
        words.append(iv.word if iv is not None else "")
    for key in keys:
        value = params.get(key, "")
        if (
            key in _DESCRIBED
            or key == "model.name"
            or value in ("", "None")
            or (preset != region and key.startswith("region."))
        ):
            continue  # in the words already, not set for this condition, or set by the preset
        words.append(_WORDS[key].format(value) if key in _WORDS else f"{key}={value}")
    return " ".join(w for w in words if w)


_WORDS = {"intervention.factor": "×{}", "intervention.std": "noise std {}"}


def labels(groups: Mapping[tuple, Sequence], keys: Sequence[str], **kw) -> dict[tuple, str]:
    """Each condition's `describe`; where several read the same ("unmodified" at ratio 0 of
    two metrics), the keys whose values tell them apart follow in brackets."""
    out = {key: describe(runs[0].data.params, keys, **kw) for key, runs in groups.items()}
    for text in {t for t in out.values() if list(out.values()).count(t) > 1}:
        same = [key for key, t in out.items() if t == text]
        apart = [i for i in range(len(keys)) if len({key[i] for key in same}) > 1]
        for key in same:
            out[key] = f"{text} ({', '.join(f'{keys[i]}={key[i]}' for i in apart)})"
    return out


def what_was_done(runs: Sequence) -> str:
    """The sweep in words, from what its runs share: "Removing regions of sandbox-m (5% of
    each matrix)", "Further training sandbox-m on armn with weights frozen"; a `+debug` sweep's
    begins with DEBUG_BANNER."""
    first = runs[0].data.params
    shared = {k: v for k, v in first.items() if all(r.data.params.get(k) == v for r in runs)}
    models = list(dict.fromkeys(_model_name(r.data.params) for r in runs))
    model = (
        models[0]
        if len(models) == 1
        else f"{', '.join(models[:-1])} and {models[-1]}"
        if len(models) <= 3
        else f"{len(models)} models"
    )
    iv = _intervention(first) or INTERVENTIONS[InterventionConfig().name]
    text = iv.title(model, shared)
    size = _number(shared.get("ratio"))
    kind = _region_kind(shared) if "region.name" in shared else None
    if size and kind is not None and kind.sized == "exact":
        text += f" ({size * 100:g}% of each matrix)"
    elif size and kind is not None and kind.sized == "within":  # a part of the top k
        text += f" (from the top {size * 100:g}% of each matrix)"
    if any(is_debug(r) for r in runs):
        text = f"{DEBUG_BANNER} {text}"
    return text


DEBUG_BANNER = "[DEBUG: test-sized model and data, not results]"


def is_debug(run) -> bool:
    """A run of `+debug=default`: its numbers check the pipeline, they are not results."""
    return str(run.data.params.get("debug", "")).lower() == "true"


def _model_name(params: Mapping[str, str]) -> str:
    """A model by its short name: a hub id's or a folder's last part."""
    return Path(params.get("model.name", "the model")).name


def _region_kind(params: Mapping[str, str]) -> RegionKind | None:
    """The region kind a run names (None for a name this version does not know)."""
    return REGION_KINDS.get(params.get("region.name", ""))


def _intervention(params: Mapping[str, str]) -> Intervention | None:
    return INTERVENTIONS.get(params.get("intervention.name", ""))


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _is_number(value) -> bool:
    return _number(value) is not None


def condition_interval(runs: Sequence, metric: str) -> tuple[Spread, str]:
    """The metric over a condition's runs and what its interval is: over the seeds when there
    are several, else the run's own 95% bootstrap interval over the documents (`<stem>_lo`)."""
    s = spread(r.data.metrics.get(metric) for r in runs)
    if s.n != 1 or "/" not in metric:
        return s, "seeds" if s.n > 1 else ""
    stem, rest = metric.split("/", 1)
    lo = runs[0].data.metrics.get(f"{stem}_lo/{rest}")
    hi = runs[0].data.metrics.get(f"{stem}_hi/{rest}")
    if lo is None or hi is None:
        return s, ""
    return Spread(1, s.mean, math.nan, lo, hi), "documents"


_EXCLUDES = (
    "* (framed): its 95% interval excludes 1 (the t interval over the condition's seeds, or one "
    "run's paired bootstrap interval over the documents)"
)


def excludes_one(s: Spread) -> bool:
    """Whether a ratio's 95% interval lies wholly above or below 1 (false without one)."""
    return math.isfinite(s.lo) and math.isfinite(s.hi) and (s.lo > 1 or s.hi < 1)


def _interval_note(kinds: set[str], groups: Mapping) -> str:
    sizes = sorted({len(v) for v in groups.values()})
    runs = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    kinds = kinds - {""}
    if kinds == {"seeds"}:
        return f"mean over the {runs} seeds of each condition; bars: 95% t interval over seeds"
    if kinds == {"documents"}:
        return "one run per condition; bars: 95% paired bootstrap interval over the documents"
    if kinds:
        return (
            "mean over each condition's seeds; bars: 95% t interval over seeds, or for a single "
            "run its 95% bootstrap interval over the documents"
        )
    return f"mean over the {runs} runs of each condition"


# -------------------------------------------------------------------------------------- figures
def sweep_plots(
    runs: Sequence,
    params: Sequence[str],
    out: Path,
    *,
    over: Sequence[str] = ("seed",),
    history: History | None = None,
) -> list[Path]:
    """The sweep's figures (module docstring) in `out`; `history` reads a run's per-step
    metric, for the forgetting curves of a freeze sweep."""
    from regionbench.report.plots import condition_points, heatmap

    groups = conditions(runs, params, over)
    if not groups:
        return []
    done = [r for members in groups.values() for r in members]
    keys = condition_keys(params, over)
    label = labels(groups, keys)
    done_what = what_was_done(done)
    langs = sorted(
        {
            k.split("/", 1)[1]
            for r in done
            for k in r.data.metrics
            if k.startswith("ppl_ratio/") and k != names.PPL_RATIO_MEAN
        }
    )
    langs = language_order(langs, [label[key] for key in groups])
    paths = []
    if langs:
        cells = {
            (key, lang): condition_interval(members, f"ppl_ratio/{lang}")
            for key, members in groups.items()
            for lang in langs
        }
        note = _interval_note({kind for _, kind in cells.values()}, groups)
        if len(groups) <= MAX_POINT_CONDITIONS and len(langs) <= MAX_POINT_LANGUAGES:
            series = [
                (label[key], [(c.mean, c.lo, c.hi) for c in (cells[key, g][0] for g in langs)])
                for key in groups
            ]
            paths.append(
                condition_points(
                    langs,
                    series,
                    out / "ppl_ratio_by_language.png",
                    title=f"{done_what}: perplexity per language",
                    ylabel="perplexity ratio to the unmodified model",
                    xlabel="evaluation language",
                    note=note,
                )
            )
        if len(groups) > 1 or len(langs) > MAX_POINT_LANGUAGES:
            matrix = [[cells[key, lang][0].mean for lang in langs] for key in groups]
            finite = [v for line in matrix for v in line if math.isfinite(v) and v > 0]
            marked = [[excludes_one(cells[key, lang][0]) for lang in langs] for key in groups]
            seeds = ", mean over seeds" if any(len(m) > 1 for m in groups.values()) else ""
            paths.append(
                heatmap(
                    matrix,
                    [label[key] for key in groups],
                    langs,
                    out / "ppl_ratio_heatmap.png",
                    title=f"{done_what}\nperplexity ratio to the unmodified model per "
                    f"language{seeds}",
                    label="ppl ratio (log colours, white = 1)",
                    center=1.0,
                    log=True,
                    # within ±10% of 1 the third digit is the effect: one more
                    fmt="{:.4g}" if finite and 0.9 < min(finite) <= max(finite) < 1.1 else "{:.3g}",
                    marked=marked,
                    note=_EXCLUDES if any(map(any, marked)) else "",
                )
            )
    paths += _along_axis(done, params, over, out, done_what)
    if history is not None:
        paths += _forgetting_curves(groups, label, history, out, done_what)
    return paths


def headline_metric(runs: Sequence) -> str | None:
    """What a sweep is judged by: forgetting (geometric mean over languages) for freeze
    training, else the perplexity ratio averaged over languages."""
    logged = {k for r in runs for k in r.data.metrics}
    for metric in (names.FORGET_GMEAN, names.FORGET_MEAN, names.PPL_RATIO_MEAN):
        if metric in logged:
            return metric
    return None


_READS = {  # axis labels
    names.FORGET_GMEAN: "forgetting (ppl ratio, other languages, geo. mean)",
    names.FORGET_MEAN: "forgetting (ppl ratio, other languages, mean)",
    names.PPL_RATIO_MEAN: "ppl ratio to unmodified (mean over languages)",
}


def _along_axis(
    runs: Sequence, params: Sequence[str], over: Sequence[str], out: Path, done_what: str
) -> list[Path]:
    """The headline metric against a numeric swept axis (the ratio, if it is swept), one line
    per combination of the other swept values."""
    from regionbench.report.plots import condition_lines

    metric = headline_metric(runs)
    keys = condition_keys(params, over)
    numeric = [
        p
        for p in keys
        if all(_is_number(r.data.params.get(p)) for r in runs)
        and len({float(r.data.params[p]) for r in runs}) > 1
    ]
    if metric is None or not numeric:
        return []
    axis = "ratio" if "ratio" in numeric else numeric[0]
    others = [p for p in keys if p != axis]
    # ratio 0 is one condition whatever the region's values (no region): a point of its own,
    # one per model in a sweep across models (each model's own unmodified evaluation)
    empty = [r for r in runs if axis == "ratio" and float(r.data.params[axis]) == 0]
    lines = conditions([r for r in runs if all(r is not e for e in empty)], others, over=())
    models = [p for p in others if p.startswith("model.")]
    label = labels(lines, others, ratio=axis != "ratio")
    series, kinds = [], set()
    for members in conditions(empty, models, over=()).values():
        s, kind = condition_interval(members, metric)
        kinds.add(kind)
        series.append((describe(members[0].data.params, models), [(0.0, s.mean, s.lo, s.hi)]))
    for key, members in lines.items():
        points = []
        for x in sorted({float(r.data.params[axis]) for r in members}):
            at = [r for r in members if float(r.data.params[axis]) == x]
            s, kind = condition_interval(at, metric)
            kinds.add(kind)
            points.append((x, s.mean, s.lo, s.hi))
        series.append((label[key] or "every job", points))
    groups = conditions(runs, keys, over=())
    return [
        condition_lines(
            series,
            out / f"{metric.replace('/', '_')}_vs_{axis.replace('.', '_')}.png",
            title=f"{done_what}: {metric} against {axis}",
            xlabel=axis,
            ylabel=_READS.get(metric, metric),
            note=_interval_note(kinds, groups),
        )
    ]


def _forgetting_curves(
    groups: Mapping, label: Mapping, history: History, out: Path, done_what: str
) -> list[Path]:
    """Freeze sweeps: each condition's forgetting at every evaluation step, mean over seeds."""
    from regionbench.report.plots import condition_lines

    runs = [r for members in groups.values() for r in members]
    metric = headline_metric(runs)
    if metric not in (names.FORGET_GMEAN, names.FORGET_MEAN):
        return []
    series, kinds = [], set()
    for key, members in groups.items():
        steps: dict[int, list[float]] = {}
        for r in members:
            for step, value in history(r.info.run_id, metric):
                steps.setdefault(int(step), []).append(value)
        points = []
        for step, values in sorted(steps.items()):
            s = spread(values)
            kinds.add("seeds" if s.n > 1 else "")
            points.append((step, s.mean, s.lo, s.hi))
        if points:
            series.append((label[key], points))
    if not series:
        return []
    return [
        condition_lines(
            series,
            out / "forgetting_by_condition.png",
            title=f"{done_what}: forgetting during training",
            xlabel="optimizer step",
            ylabel=_READS[metric],
            note=_interval_note(kinds, groups),
        )
    ]


def language_order(langs: Sequence[str], job_names: Sequence[str]) -> list[str]:
    """Languages in the order the jobs name them (`region.lang=latn`, then `region.lang=cyrl`...),
    the rest alphabetically: a sweep over languages puts its diagonal on the diagonal."""
    named = [
        value
        for name in job_names
        for part in name.split()
        for value in [*part.split("=", 1)[1:], part]
        if value in langs
    ]
    first = list(dict.fromkeys(named))
    return first + sorted(lang for lang in langs if lang not in first)
