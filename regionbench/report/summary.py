"""The sweep's summary on its parent run: the comparison table (one row per condition), the
paired table, the description shown on the parent's page, the saved runs-table view and the
figures.

    table = summarize_sweep(tracker, parent_id, runs, baseline={"ratio": 0}, over=["seed"])
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from regionbench.common import names
from regionbench.regions.kinds import REGION_KINDS
from regionbench.report.overlap import region_overlap
from regionbench.report.plots import spread
from regionbench.report.sweep import (
    condition_interval,
    condition_keys,
    conditions,
    headline_metric,
    labels,
    language_order,
    sweep_plots,
    what_was_done,
)
from regionbench.report.tables import (
    interesting_metrics,
    lm_eval_headlines,
    log_table,
    paired_table,
    same_value,
    swept_params,
    to_csv,
)
from regionbench.report.view import COMPARED, VIEW_TAG, ui_path, ui_view
from regionbench.tracking.client import Tracker

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the sweep's comparison table
def _is_baseline(params: Mapping[str, str], baseline: Mapping | None) -> bool:
    """A condition is the sweep's baseline: it matches `tracking.baseline` (a config group's
    choice is the param `choice.<group>`), or without one, it is the unmodified model."""
    if baseline:
        return all(
            same_value(params.get(k, params.get(f"choice.{k}")), v) for k, v in baseline.items()
        )
    kind = REGION_KINDS.get(params.get("region.name", ""))
    return same_value(params.get("ratio"), 0) and kind is not None and kind.empty_at_zero


def comparison(
    runs: Sequence,
    params: Sequence[str],
    over: Sequence[str] = ("seed",),
    baseline: Mapping | None = None,
) -> tuple[list[dict], list[str], list[str]]:
    """One row per condition (the finished runs sharing every swept value but `over`), the
    baseline condition(s) first: `condition` (in words), the swept values, `n`, and for every
    metric its mean over the condition's runs and their sample standard deviation (`<m> sd`,
    empty for one run) and its 95% interval (`<m> lo`, `<m> hi`: the t interval over the seeds,
    or one run's bootstrap interval over the documents, `sweep.condition_interval`; not for the
    region's size); lm-eval metrics also `<m> stderr`, lm-eval's standard error over the task's
    items (mean over the runs); one `ppl_ratio/<lang>` column per language.
    Returns (rows, headline metrics, per-language metrics)."""
    groups = conditions(runs, params, over)
    keys = condition_keys(params, over)
    label = labels(groups, keys)
    done = [r for members in groups.values() for r in members]
    logged = {k for r in done for k in r.data.metrics}
    metrics = [m for m in COMPARED if m in logged] + lm_eval_headlines(logged)
    langs = [
        k.split("/", 1)[1]
        for k in logged
        if k.startswith("ppl_ratio/") and k != names.PPL_RATIO_MEAN and k.count("/") == 1
    ]
    langs = [f"ppl_ratio/{g}" for g in language_order(langs, list(label.values()))]
    rows = []
    for key, members in groups.items():
        row = {"condition": label[key], **dict(zip(keys, key, strict=True)), "n": len(members)}
        for m in [*metrics, *langs]:
            s = spread(r.data.metrics.get(m) for r in members)
            row[m], row[f"{m} sd"] = s.mean, s.sd
            if m != names.REGION_FRACTION:  # a size, no estimate
                iv, _ = condition_interval(members, m)
                row[f"{m} lo"], row[f"{m} hi"] = iv.lo, iv.hi
            if f"{m}_stderr" in logged:
                row[f"{m} stderr"] = spread(r.data.metrics.get(f"{m}_stderr") for r in members).mean
        rows.append(row)
    first = [_is_baseline(groups[key][0].data.params, baseline) for key in groups]
    rows = [row for row, b in zip(rows, first, strict=True) if b] + [
        row for row, b in zip(rows, first, strict=True) if not b
    ]
    return rows, metrics, langs


def _cell(row: Mapping, metric: str) -> str:
    """mean ± sd (sd over the condition's runs, when there are several), (se x) for lm-eval."""
    mean, sd, se = row.get(metric), row.get(f"{metric} sd"), row.get(f"{metric} stderr")
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.4g}"
    if sd is not None and math.isfinite(sd):
        text += f" ± {sd:.2g}"
    if se is not None and math.isfinite(se):
        text += f" (se {se:.2g})"
    return text


def _short(metric: str) -> str:
    return metric.removeprefix("lm_eval/")


def comparison_markdown(
    rows: list[dict], metrics: Sequence[str], langs: Sequence[str], heading: str, limit=None
) -> str:
    """The comparison as markdown: a headline table and, with `langs`, a per-language table
    (means; their sd is in the CSV). `limit` keeps that many conditions, baseline first."""
    shown = rows if limit is None else rows[:limit]
    lines = [heading, ""]
    lines += [
        "| condition | n | " + " | ".join(_short(m) for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    lines += [
        f"| {r['condition']} | {r['n']} | " + " | ".join(_cell(r, m) for m in metrics) + " |"
        for r in shown
    ]
    if len(shown) < len(rows):
        lines.append(f"\n({len(rows) - len(shown)} more conditions in `sweep_comparison.md`)")
    if langs:
        lines += [
            "",
            "Perplexity ratio to the unmodified model per language (mean over each "
            "condition's runs; their sd in `sweep_comparison.csv`):",
            "",
            "| condition | " + " | ".join(m.split("/", 1)[1] for m in langs) + " |",
            "|---|" + "---|" * len(langs),
        ]
        lines += [
            f"| {r['condition']} | " + " | ".join(_mean(r.get(m)) for m in langs) + " |"
            for r in shown
        ]
    return "\n".join(lines)


def _mean(value) -> str:
    return f"{value:.4g}" if value is not None and math.isfinite(value) else "–"


def summarize_sweep(
    tracker: Tracker,
    parent_id: str,
    runs: Sequence,
    baseline: dict | None = None,
    over: Sequence[str] = ("seed",),
) -> str:
    """Log the sweep's comparison to its parent run and return it as markdown:
    `sweep_comparison.csv/.md` (one row per condition, `comparison`), with a `baseline` the
    paired table `sweep_paired.csv/.md` (`report --baseline ... --over ...` prints the same
    from the runs alone), the figures (`sweep_figures`), a short description of what was
    compared and the headline numbers (the parent's `mlflow.note.content`, shown on its page),
    and a saved view of the runs table (`ui_view`) that `report --url` opens."""
    if not runs:
        return "(no finished jobs)"
    params = swept_params(runs)
    rows, metrics, langs = comparison(runs, params, over, baseline)
    if not rows:
        return "(no finished jobs)"
    done = [r for r in runs if r.info.status == "FINISHED"]
    what = what_was_done(done)
    heading = (
        f"{what}: {len(done)} jobs in {len(rows)} conditions. Each cell: the mean over the "
        "condition's n jobs ± their sample standard deviation; lm-eval metrics also give "
        "lm-eval's standard error over the task's items (se)."
    )
    table = comparison_markdown(rows, metrics, langs, heading)
    tracker.log_text(parent_id, to_csv(rows), "sweep_comparison.csv")
    # the same rows as an MLflow table: the parent's Artifacts tab shows it as a table
    tracker.log_table(parent_id, table_columns(rows), COMPARISON_TABLE)
    # the comparison as the parent's own metrics, for MLflow's compare and chart views
    tracker.log_metrics(parent_id, condition_metrics(rows, metrics))
    tracker.log_text(parent_id, table + "\n", "sweep_comparison.md")
    if baseline:
        try:
            paired_rows = paired_table(runs, baseline, over, params, interesting_metrics(runs))
        except SystemExit as err:  # no or ambiguous baseline: the jobs stand, the table cannot
            log.error("no paired table: %s", err)
        else:
            table += "\n\n" + log_table(tracker, parent_id, paired_rows, "sweep_paired")
    view = ui_view(parent_id, runs, params, over, metrics)
    tracker.client.set_experiment_tag(tracker.experiment_id, VIEW_TAG + parent_id, json.dumps(view))
    link = ui_path(tracker.experiment_id, parent_id)
    tracker.set_tags(
        parent_id, {"mlflow.note.content": sweep_note(tracker, parent_id, runs, rows, link)}
    )
    # the figures last: a figure that cannot be drawn leaves the tables, view and note logged
    with tempfile.TemporaryDirectory() as tmp:
        history = _history(tracker)
        for path in sweep_plots(runs, params, Path(tmp), over=over, history=history):
            tracker.log_artifact(parent_id, path)
        for path in region_overlap(tracker, runs, Path(tmp), params=params, over=over):
            tracker.log_artifact(parent_id, path)
    return table


COMPARISON_TABLE = "sweep_comparison.json"


def table_columns(rows: Sequence[Mapping]) -> dict[str, list]:
    """The comparison rows as {column: values} for `Tracker.log_table`, numbers at 4
    significant digits (to read; `sweep_comparison.csv` has them exact), a missing or
    undefined one (the sd of one run) as null. A column named like a swept key has `_` for its
    dots (`metric_name`): MLflow's table view reads a dotted name as a path, and shows nothing."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out: dict[str, list] = {k.replace(".", "_"): [] for k in keys}
    for row in rows:
        for key in keys:
            values = out[key.replace(".", "_")]
            value = row.get(key)
            if isinstance(value, float):
                value = names.significant(value) if math.isfinite(value) else None
            values.append(value)
    return out


def condition_metrics(rows: Sequence[Mapping], metrics: Sequence[str]) -> dict[str, float]:
    """`<metric>/<condition>` for every condition's mean of every compared metric, e.g.
    `ppl_ratio/mean/taylor core 5pct` (MLflow allows letters, digits, `_ - . :` and spaces in
    a segment of a metric's name: `%` is written `pct`, any other character `_`; a condition
    without words, as a sweep of one job, is `all jobs`)."""
    out = {}
    for row in rows:
        # one path segment MLflow accepts: no "/" inside, no empty or dot-only name
        label = re.sub(r"[^\w.\- :]", "_", str(row["condition"]).replace("%", "pct")).strip(" .")
        label = label or "all jobs"
        for m in metrics:
            value = row.get(m)
            if value is not None and math.isfinite(value):
                out[f"{m}/{label}"] = float(value)
    return out


def _history(tracker: Tracker):
    def read(run_id: str, metric: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, metric)]

    return read


def sweep_note(
    tracker: Tracker, parent_id: str, runs: Sequence, rows: list[dict], link: str
) -> str:
    """The parent run's description: what was compared and the extremes of the headline metric
    first (the UI shows the first lines until "Show more"), then each condition's headline
    numbers, how the sweep was launched, and where the rest is."""
    done = [r for r in runs if r.info.status == "FINISHED"]
    parent = tracker.run(parent_id).data.params
    metric = headline_metric(done)
    lm_eval = lm_eval_headlines({k for r in done for k in r.data.metrics})[:2]
    lines = [
        f"**{what_was_done(done)}**: {len(rows)} conditions, {len(done)} of {len(runs)} jobs "
        "finished."
    ]
    ranked = sorted(
        (r for r in rows if metric and math.isfinite(r[metric])),
        key=lambda r: r[metric],
        reverse=True,
    )
    if len(ranked) > 1:
        hi, lo = ranked[0], ranked[-1]
        lines[0] += (
            f" Highest {metric}: **{hi['condition']}** ({hi[metric]:.4g}); lowest: "
            f"**{lo['condition']}** ({lo[metric]:.4g})."
        )
    shown = [m for m in (metric, *lm_eval) if m]
    lines += ["", *comparison_markdown(rows, shown, [], "", limit=NOTE_ROWS).splitlines()[2:], ""]
    if parent.get("command"):
        lines += [f"Launched with `{parent['command']}` in `{parent.get('launch_dir', '?')}`."]
    lines += [
        "Every condition and language: `sweep_comparison.json` (a table) and "
        "`sweep_comparison.csv` with 95% intervals, `sweep_comparison.md` (Artifacts); figures: "
        "`ppl_ratio_by_language.png`, `ppl_ratio_heatmap.png` and the other PNGs there. "
        f"[The jobs of this sweep, one row each]({link}).",
    ]
    return "\n".join(lines)


NOTE_ROWS = 12  # conditions in the parent's description; the rest are in sweep_comparison.md
