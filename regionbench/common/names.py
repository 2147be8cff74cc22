"""The names of everything regionbench logs to MLflow, built here and nowhere else.

    perplexity_metrics({"latn": {"ppl": 5.2, "bpb": 1.1}}, base)  # ppl/latn, bpb/latn, ppl_ratio/...
    paper_perplexity_metrics({"latn": {"ppl": 5.0}}, base)        # ppl_paper/latn, ppl_paper_ratio/..
    lm_eval_metrics(results)                                      # lm_eval/<task>/<metric>
    forgetting_metrics(before, after, ["armn"])                   # forget/<lang>, learn/<lang>

A user's dashboards, the report and the experiment scripts read these names; DESIGN.md §4 lists
them. Every `*/mean` is the arithmetic mean over the languages present.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

REGION_PARAMS = "region/params"
REGION_FRACTION = "region/fraction"
CHANGED = "intervention/changed"  # entries whose value the intervention changed
OUTLIER_SHARE = "region/outlier_share"  # of the region's stream entries, on outlier dims
SUPER_WEIGHTS = "region/super_weights"  # super weights the region contains
OUTLIER_DIMS = "model/outlier_dims"  # massive-activation dimensions the detector found
PPL_RATIO_MEAN = "ppl_ratio/mean"
PPL_MEAN = "ppl/mean"
PPL_PAPER_MEAN = "ppl_paper/mean"
PPL_PAPER_RATIO_MEAN = "ppl_paper_ratio/mean"
FORGET_MEAN = "forget/mean"
FORGET_GMEAN = "forget/gmean"
LEARN_MEAN = "learn/mean"
# 1: the intervals of the `/mean`s resampled the documents jointly across languages (parallel
# evaluation documents); 0: each language on its own
JOINT_INTERVAL = "interval/joint"
# The runs table of MLflow's UI shows a metric's value as logged, to the last digit (it has no
# number format: mlflow/mlflow#17150), so each value the saved view shows is also logged
# rounded to 4 significant digits under this prefix: `4sig/ppl_ratio/mean` beside the exact
# `ppl_ratio/mean`, which the report, the CSVs and the API read.
SHOWN = "4sig"
SHOWN_DIGITS = 4


def dim_share(d: int) -> str:
    """Share of the region's entries (on the residual stream's matrices) in its top-d hidden
    dimensions; an evenly spread region has d / hidden."""
    return f"region/top{d}_dim_share"


def shown(metric: str) -> str:
    """The name of `metric`'s copy rounded to `SHOWN_DIGITS` significant digits."""
    return f"{SHOWN}/{metric}"


def significant(value: float, digits: int = SHOWN_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (the float nearest that decimal, so a
    browser prints it as `0.9982`, not `0.99819845`); inf and nan stay what they are."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def time(stage: str) -> str:
    """Wall-clock seconds of one pipeline stage."""
    return f"time/{stage}_s"


def train(key: str) -> str:
    """A freeze-training quantity: loss, lr, grad_norm, tokens..."""
    return f"train/{key}"


def _with_means(out: dict[str, float], stems: Sequence[str]) -> dict[str, float]:
    for stem in stems:
        vals = [v for k, v in out.items() if k.startswith(f"{stem}/")]
        if vals:
            out[f"{stem}/mean"] = sum(vals) / len(vals)
    return out


def perplexity_metrics(ppl: Mapping[str, Mapping], base: Mapping[str, Mapping]) -> dict[str, float]:
    """`ppl/<lang>`, `bpb/<lang>`, `ppl_ratio/<lang>` (to the unmodified model `base`, where it has
    the language) and their means."""
    out: dict[str, float] = {}
    for lang, r in ppl.items():
        out[f"ppl/{lang}"] = r["ppl"]
        out[f"bpb/{lang}"] = r["bpb"]
        if lang in base:
            out[f"ppl_ratio/{lang}"] = r["ppl"] / base[lang]["ppl"]
    return _with_means(out, ("ppl", "bpb", "ppl_ratio"))


def paper_perplexity_metrics(
    ppl: Mapping[str, Mapping], base: Mapping[str, Mapping]
) -> dict[str, float]:
    """`ppl_paper/<lang>` (the authors' perplexity, `eval.ppl_protocol=paper`) and
    `ppl_paper_ratio/<lang>` (to the unmodified model's, where it has the language), and their
    means."""
    out: dict[str, float] = {}
    for lang, r in ppl.items():
        out[f"ppl_paper/{lang}"] = r["ppl"]
        if lang in base:
            out[f"ppl_paper_ratio/{lang}"] = r["ppl"] / base[lang]["ppl"]
    return _with_means(out, ("ppl_paper", "ppl_paper_ratio"))


def interval_metrics(intervals: Mapping) -> dict[str, float]:
    """`ppl_ratio_lo/<lang>`, `ppl_ratio_hi/<lang>`, `bpb_diff/<lang>` (modified - unmodified)
    and its `_lo`/`_hi`, and the same for `mean`, from `intervals.paired_bootstrap_languages`:
    the paired bootstrap interval over the evaluation documents next to each point value; and
    `interval/joint`, whether the mean's replicates drew the same documents in every language."""
    out: dict[str, float] = {JOINT_INTERVAL: float(bool(intervals["mean"].get("joint")))}
    for lang, res in [*intervals["langs"].items(), ("mean", intervals["mean"])]:
        ratio, diff = res["ppl_ratio"], res["bpb_diff"]
        out[f"ppl_ratio_lo/{lang}"], out[f"ppl_ratio_hi/{lang}"] = ratio["lo"], ratio["hi"]
        out[f"bpb_diff/{lang}"] = diff["value"]
        out[f"bpb_diff_lo/{lang}"], out[f"bpb_diff_hi/{lang}"] = diff["lo"], diff["hi"]
    return out


def lm_eval_metrics(results: Mapping) -> dict[str, float]:
    """`{"lm_eval/<task>/<metric>": value}` for every numeric task and group metric of an
    lm-eval results dict.

    lm-eval's "<metric>,<filter>" keys lose the default filter ("acc,none" -> "acc",
    "acc_stderr,none" -> "acc_stderr") and keep any other one after a slash
    ("exact_match,strict-match" -> "exact_match/strict-match"). "N/A", None and non-finite
    values (a kind no pair of a language has) are left out.
    """
    flat: dict[str, float] = {}
    for section in ("results", "groups"):
        for task, metrics in (results.get(section) or {}).items():
            for key, value in metrics.items():
                if "," not in key or isinstance(value, bool):
                    continue
                if not isinstance(value, int | float) or not math.isfinite(value):
                    continue
                metric, filt = key.split(",", 1)
                name = metric if filt == "none" else f"{metric}/{filt}"
                flat[f"lm_eval/{task}/{name}"] = float(value)
    return flat


def lm_eval_ratios(lm: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """`lm_eval_ratio/<task>/<metric>`: each lm-eval metric over the unmodified model's."""
    return {
        k.replace("lm_eval/", "lm_eval_ratio/", 1): v / base[k]
        for k, v in lm.items()
        if not k.endswith("_stderr") and base.get(k)
    }


def forgetting_metrics(
    before: Mapping[str, object], after: Mapping[str, object], target_langs: Sequence[str]
) -> dict[str, float]:
    """Perplexity ratios after / before training: `learn/<lang>` for target languages (below 1:
    learned), `forget/<lang>` for the others (above 1: forgotten), plus their arithmetic
    `*/mean` and geometric `*/gmean` (exp of the mean change in nats per token: one badly hit
    language dominates the arithmetic mean, not the geometric one). Values are floats or objects
    with `.ppl` (`LangPerplexity`)."""
    if set(before) != set(after):
        raise ValueError(
            f"languages before {sorted(before)} and after {sorted(after)} training differ"
        )
    targets = set(target_langs)
    out: dict[str, dict[str, float]] = {"learn": {}, "forget": {}}
    for lang in after:
        old, new = (
            float(getattr(before[lang], "ppl", before[lang])),
            float(getattr(after[lang], "ppl", after[lang])),
        )
        if not (math.isfinite(old) and old > 0):
            raise ValueError(f"perplexity before training {old!r} for {lang!r} is not finite > 0")
        out["learn" if lang in targets else "forget"][lang] = new / old
    metrics: dict[str, float] = {}
    for kind in ("forget", "learn"):
        for lang, ratio in out[kind].items():
            metrics[f"{kind}/{lang}"] = ratio
        if out[kind]:
            metrics[f"{kind}/mean"] = sum(out[kind].values()) / len(out[kind])
            logs = [math.log(v) for v in out[kind].values()]
            metrics[f"{kind}/gmean"] = math.exp(sum(logs) / len(logs))
    return metrics


def generation_metrics(shares: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """`gen/<kind>/<lang>` and `gen/<kind>/mean` from {lang: {kind: share}} (kinds: lang_match,
    wrong_lang, distinct2; evaluation/generation.py defines them)."""
    out = {f"gen/{kind}/{lang}": v for lang, found in shares.items() for kind, v in found.items()}
    return _with_means(out, sorted({f"gen/{kind}" for found in shares.values() for kind in found}))
