"""Comparison tables and plots from MLflow runs: the sweep summary and the experiment READMEs.

    python -m regionbench.report.tables                         # the latest sweep, as a markdown table
    python -m regionbench.report.tables --parent RUN_ID --metrics ppl_ratio/mean lm_eval/sandbox_grammar/acc
    python -m regionbench.report.tables --group metric.name region.name ratio --over seed \\
        --metrics forget/mean learn/mean                   # mean ± std across seeds
    python -m regionbench.report.tables --baseline ratio=0 --over seed --metrics forget/gmean
                                       # each condition / the baseline of the same seed, 95% CI
    python -m regionbench.report.tables --url                   # the MLflow UI address of the latest
                                                         # sweep's runs table (make ui prints it)

The store is ./mlruns/mlflow.db unless --uri names another; one that does not exist is an error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from regionbench.common import names
from regionbench.config import TrackingConfig
from regionbench.report.plots import spread
from regionbench.report.sweep import (
    condition_keys,
    conditions,
    headline_metric,
    labels,
    language_order,
    region_overlap,
    sweep_plots,
    what_was_done,
)
from regionbench.tracking.client import CONFIG_HASH_TAG, StoreError, Tracker

DEFAULT_METRICS = (names.REGION_FRACTION, names.PPL_MEAN, names.PPL_RATIO_MEAN)
# not a sweep's axes for the default columns (a group's choice repeats the values it sets)
_IGNORED_PARAMS = ("paths.", "tracking.", "choice.", "resume")
log = logging.getLogger(__name__)


def swept_params(runs: Sequence) -> list[str]:
    """Params whose values differ between the runs: the sweep's axes."""
    keys = sorted({k for r in runs for k in r.data.params})
    return [
        k
        for k in keys
        if not k.startswith(_IGNORED_PARAMS) and len({r.data.params.get(k) for r in runs}) > 1
    ]


def rows_of(runs: Sequence, params: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """One row per run; a run that did not finish shows its status and no values."""
    return [
        {
            "run": r.info.run_name,
            "status": r.info.status,
            **{p: r.data.params.get(p, "") for p in params},
            **{
                m: r.data.metrics.get(m, math.nan) if r.info.status == "FINISHED" else math.nan
                for m in metrics
            },
        }
        for r in runs
    ]


def _grouped(rows: list[dict], group: Sequence[str]) -> dict[tuple, list[dict]]:
    """The rows sharing each combination of `group` values, in order of first appearance."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[g] for g in group)].append(row)
    return groups


def aggregate(rows: list[dict], group: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Mean ± sample std of each metric over the rows sharing the `group` values."""
    out = []
    for key, members in _grouped(rows, group).items():
        agg = dict(zip(group, key, strict=True)) | {"n": len(members)}
        for m in metrics:
            s = spread(r[m] for r in members)
            agg[m] = f"{s.mean:.4g} ± {s.sd:.2g}" if s.n > 1 else f"{s.mean:.4g}"
        out.append(agg)
    return out


def paired(
    rows: list[dict],
    baseline: dict[str, str],
    pair_on: Sequence[str],
    group: Sequence[str],
    metrics: Sequence[str],
    level: float = 0.95,
) -> list[dict]:
    """Each run's metric over its baseline run's, averaged per `group` as a geometric mean with a
    t interval on the log ratios; `*` marks an interval that excludes 1 (a difference from the
    baseline at that level). The baseline's own row is 1 by definition.

    A run's baseline is the run matching `baseline` with the same `pair_on` values (e.g. the
    same seed: same data, same order) and the same value of every other column along which the
    baseline runs differ: with `--baseline metric.name=random`, taylor at ratio 0.05 and seed 1
    is paired with random at ratio 0.05 and seed 1; with `--baseline frozen_set=none` (one
    unfrozen run per seed) every frozen set is paired with the unfrozen run of its seed. A run
    with no such baseline is left out of its row's ratio."""
    from scipy import stats

    def is_base(row):
        return all(_same(row.get(k), v) for k, v in baseline.items())

    base_rows = [r for r in rows if is_base(r)]
    if not base_rows:
        raise SystemExit(f"no run matches the baseline {baseline}")
    columns = [c for c in rows[0] if c not in baseline and c not in ("run", "status", *metrics)]
    varying = [c for c in columns if len({str(r[c]) for r in base_rows}) > 1]
    match = list(dict.fromkeys([*pair_on, *varying]))
    bases: dict[tuple, dict] = {}
    for r in base_rows:
        key = tuple(str(r[k]) for k in match)
        if key in bases:
            where = ", ".join(f"{k}={v}" for k, v in zip(match, key, strict=True)) or "every run"
            raise SystemExit(
                f"two runs match the baseline {baseline} at {where}: name the run to compare "
                "against more precisely (more KEY=VALUE pairs, or --over for a repeated axis)"
            )
        bases[key] = r
    out = []
    for key, members in _grouped(rows, group).items():
        agg = dict(zip(group, key, strict=True)) | {"n": len(members)}
        for m in metrics:
            logs = []
            for row in members:
                base = bases.get(tuple(str(row[k]) for k in match))
                if base is None or math.isnan(row[m]) or not base[m] > 0 or not row[m] > 0:
                    continue
                logs.append(math.log(row[m] / base[m]))
            if not logs:
                agg[f"{m} / base"] = "n/a"
                continue
            mean = statistics.fmean(logs)
            if len(logs) < 2 or all(x == logs[0] for x in logs):
                agg[f"{m} / base"] = f"{math.exp(mean):.4g}"
                continue
            half = stats.t.ppf((1 + level) / 2, len(logs) - 1) * statistics.stdev(logs)
            lo, hi = (
                math.exp(mean - half / len(logs) ** 0.5),
                math.exp(mean + half / len(logs) ** 0.5),
            )
            mark = " *" if hi < 1 or lo > 1 else ""
            agg[f"{m} / base"] = f"{math.exp(mean):.4g} [{lo:.4g}, {hi:.4g}]{mark}"
        out.append(agg)
    return out


def _same(logged, wanted) -> bool:
    """A logged param equals a wanted value: as text, or as numbers (ratio 0 is logged 0.0)."""
    if str(logged) == str(wanted):
        return True
    try:
        return float(logged) == float(wanted)
    except (TypeError, ValueError):
        return False


def parse_baseline(text: str) -> dict[str, str]:
    """`KEY=VALUE[,KEY=VALUE]` (the --baseline option) as a dict; a part without `=` is an error."""
    parts = [p for p in text.split(",") if p.strip()]
    bad = [p for p in parts if "=" not in p or not p.split("=", 1)[0].strip()]
    if bad or not parts:
        raise SystemExit(f"--baseline {text!r}: expected KEY=VALUE[,KEY=VALUE], e.g. ratio=0")
    return dict(p.strip().split("=", 1) for p in parts)


def paired_table(
    runs: Sequence,
    baseline: dict,
    over: Sequence[str],
    params: Sequence[str],
    metrics: Sequence[str],
    group: Sequence[str] | None = None,
) -> list[dict]:
    """The paired comparison of a sweep's runs with its `baseline` run(s): what
    `report --baseline` prints and what a sweep with `tracking.baseline` logs on its parent."""
    metrics = [m for m in metrics if m != names.REGION_FRACTION]  # a size, not an outcome
    logged = {k for r in runs for k in r.data.params}
    # a config group's choice (frozen_set=none) is logged as the param choice.frozen_set
    base = {k if k in logged else f"choice.{k}": v for k, v in baseline.items()}
    chosen = [k for k in base if k.startswith("choice.")]  # name the rows by that choice
    group = list(group or [*chosen, *(p for p in params if p not in over)])
    rows = rows_of(runs, list(dict.fromkeys([*params, *over, *base, *group])), metrics)
    return paired(rows, base, list(over), group, metrics)


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    fmt = [(f"{v:.4g}" if isinstance(v, float) else str(v)) for r in rows for v in r.values()]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i in range(len(rows)):
        lines.append("| " + " | ".join(fmt[i * len(cols) : (i + 1) * len(cols)]) + " |")
    return "\n".join(lines)


def _interesting_metrics(runs: Sequence) -> list[str]:
    logged = sorted({k for r in runs for k in r.data.metrics})
    extra = [n for n in logged if n in (names.FORGET_MEAN, names.FORGET_GMEAN, names.LEARN_MEAN)]
    return [m for m in DEFAULT_METRICS if m in logged] + extra + lm_eval_headlines(logged)


def lm_eval_headlines(logged) -> list[str]:
    """lm-eval's main metrics of its top-level tasks: those it gives a standard error for (acc,
    acc_norm, ...; not the per-kind breakdowns), of tasks that are not a subtask of another
    logged task (`sandbox_grammar`, not `sandbox_grammar_latn`; `mmlu`, not `mmlu_anatomy`)."""
    logged = set(logged)
    main = [
        k
        for k in logged
        if k.startswith("lm_eval/") and k.count("/") == 2 and f"{k}_stderr" in logged
    ]
    tasks = {k.split("/")[1] for k in main}
    top = {t for t in tasks if not any(t.startswith(f"{u}_") for u in tasks if u != t)}
    return sorted(k for k in main if k.split("/")[1] in top)


def _log_table(tracker: Tracker, parent_id: str, rows: list[dict], stem: str) -> str:
    table = markdown(rows)
    tracker.log_text(parent_id, _csv(rows), f"{stem}.csv")
    tracker.log_text(parent_id, table + "\n", f"{stem}.md")
    return table


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------ the sweep's comparison table
def _is_baseline(params: Mapping[str, str], baseline: Mapping | None) -> bool:
    """A condition is the sweep's baseline: it matches `tracking.baseline` (a config group's
    choice is the param `choice.<group>`), or without one, it is the unmodified model."""
    if baseline:
        return all(_same(params.get(k, params.get(f"choice.{k}")), v) for k, v in baseline.items())
    return _same(params.get("ratio"), 0) and params.get("region.name") != "dimension"


def comparison(
    runs: Sequence,
    params: Sequence[str],
    over: Sequence[str] = ("seed",),
    baseline: Mapping | None = None,
) -> tuple[list[dict], list[str], list[str]]:
    """One row per condition (the finished runs sharing every swept value but `over`), the
    baseline condition(s) first: `condition` (in words), the swept values, `n`, and for every
    metric its mean over the condition's runs and their sample standard deviation (`<m> sd`,
    empty for one run); lm-eval metrics also `<m> stderr`, lm-eval's standard error over the
    task's items (mean over the runs); one `ppl_ratio/<lang>` column per language.
    Returns (rows, headline metrics, per-language metrics)."""
    groups = conditions(runs, params, over)
    keys = condition_keys(params, over)
    label = labels(groups, keys)
    done = [r for members in groups.values() for r in members]
    logged = {k for r in done for k in r.data.metrics}
    metrics = [m for m in _COMPARED if m in logged] + lm_eval_headlines(logged)
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
            if f"{m}_stderr" in logged:
                row[f"{m} stderr"] = spread(r.data.metrics.get(f"{m}_stderr") for r in members).mean
        rows.append(row)
    first = [_is_baseline(groups[key][0].data.params, baseline) for key in groups]
    rows = [row for row, b in zip(rows, first, strict=True) if b] + [
        row for row, b in zip(rows, first, strict=True) if not b
    ]
    return rows, metrics, langs


_COMPARED = (
    names.REGION_FRACTION,
    names.PPL_RATIO_MEAN,
    names.PPL_MEAN,
    names.FORGET_GMEAN,
    names.FORGET_MEAN,
    names.LEARN_MEAN,
)


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
    tracker.log_text(parent_id, _csv(rows), "sweep_comparison.csv")
    tracker.log_text(parent_id, table + "\n", "sweep_comparison.md")
    if baseline:
        try:
            paired_rows = paired_table(runs, baseline, over, params, _interesting_metrics(runs))
        except SystemExit as err:  # no or ambiguous baseline: the jobs stand, the table cannot
            log.error("no paired table: %s", err)
        else:
            table += "\n\n" + _log_table(tracker, parent_id, paired_rows, "sweep_paired")
    view = ui_view(parent_id, runs, params, over, metrics)
    tracker.client.set_experiment_tag(
        tracker.experiment_id, _VIEW_TAG + parent_id, json.dumps(view)
    )
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
        "Every condition and language: `sweep_comparison.md` (Artifacts); figures: "
        "`ppl_ratio_by_language.png`, `ppl_ratio_heatmap.png` and the other PNGs there. "
        f"[The jobs of this sweep, grouped by condition]({link}).",
    ]
    return "\n".join(lines)


NOTE_ROWS = 12  # conditions in the parent's description; the rest are in sweep_comparison.md


# ---------------------------------------------------------------------------- the MLflow UI view
# MLflow's UI keeps a shared view of an experiment's runs table (what its Share button writes)
# as an experiment tag `mlflow.sharedViewState.<key>`, opened by `?viewStateShareKey=<key>`:
# search filter, sort, visible columns, column widths and grouping. Per-run state (which rows
# are expanded) is not part of it, so the jobs are shown grouped by condition, which lists them
# without a click (a sweep's jobs nested under its parent run would need one).
_VIEW_TAG = "mlflow.sharedViewState."
_RUN_NAME_COLUMN = "attributes.`Run Name`"


def ui_view(
    parent_id: str,
    runs: Sequence,
    params: Sequence[str],
    over: Sequence[str],
    metrics: Sequence[str],
) -> dict:
    """The runs-table view of one sweep: its jobs (`sweep_id` tag), oldest first, grouped by
    condition (or, with one job per condition, listed under one group), with the compared
    `metrics` (the headline first) and the swept params as the first columns after the run
    names, which are wide enough to read."""
    keys = condition_keys(params, over)
    groups = conditions(runs, params, over)
    repeated = any(len(members) > 1 for members in groups.values())
    group_by = (
        [{"mode": "param", "groupByData": k} for k in keys]
        if repeated and keys
        else [{"mode": "tag", "groupByData": "mlflow.parentRunId"}]
    )
    names = [r.info.run_name or "" for r in runs]
    if group_by[0]["mode"] == "param":  # MLflow labels a group "Group: key: value, ..."
        names += [", ".join(f"{k}: {v}" for k, v in zip(keys, key, strict=True)) for key in groups]
    longest = max(map(len, names))
    first = headline_metric([r for members in groups.values() for r in members])
    metrics = sorted(metrics, key=lambda m: m != first)  # stable: the headline first
    columns = [
        *(f"metrics.`{m}`" for m in metrics),
        *(f"params.`{p}`" for p in sorted(params, key=lambda p: p in over)),
    ]
    return {
        "searchFilter": f"tags.sweep_id = '{parent_id}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": columns,
        # the compared metrics right after the run names (MLflow puts other columns after)
        "columnOrder": [_RUN_NAME_COLUMN, *columns],
        "columnWidths": {_RUN_NAME_COLUMN: min(420, 110 + 7 * longest)},
        "groupBy": {"aggregateFunction": "average", "groupByKeys": group_by},
    }


def ui_path(experiment_id: str, parent_id: str | None = None) -> str:
    """The UI route of an experiment's runs table in MLflow's "Model training" view (3.17 opens
    every experiment in its GenAI view otherwise), in a sweep's saved view if given."""
    path = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return path + (f"&viewStateShareKey={parent_id}" if parent_id else "")


def sweep_url(tracker: Tracker, parent: str | None, port: int, *, every_experiment: bool) -> str:
    """The address of a sweep's runs table in `mlflow ui --port PORT` on this machine: sweep
    `parent`, else the latest one (of every experiment, or of the tracker's)."""
    if parent is None:
        ids = (
            [e.experiment_id for e in tracker.client.search_experiments()]
            if every_experiment
            else [tracker.experiment_id]
        )
        found = tracker.client.search_runs(
            ids,
            filter_string="tags.`regionbench.sweep` = 'true'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        where = "the store" if every_experiment else f"experiment {tracker.experiment!r}"
        if not found:
            raise SystemExit(f"no sweep found in {where} ({tracker.uri})")
        run = found[0]
    else:
        run = tracker.run(parent)
    experiment = tracker.client.get_experiment(run.info.experiment_id)
    key = run.info.run_id if _VIEW_TAG + run.info.run_id in experiment.tags else None
    return f"http://127.0.0.1:{port}/{ui_path(run.info.experiment_id, key)}"


def local_store(uri: str | None) -> Path | None:
    """The file or folder a local tracking URI names (the default ./mlruns/mlflow.db, a sqlite
    or file URI, a path), resolved as `Tracker` resolves it but without creating anything;
    None for a tracking server."""
    if not uri:
        return Path.cwd() / "mlruns" / "mlflow.db"
    if uri.startswith("sqlite:///"):
        return Path.cwd() / uri[len("sqlite:///") :]  # an absolute path stays itself
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    if "://" not in uri:
        return Path.cwd() / uri
    return None


def sweep_runs(tracker: Tracker, parent: str | None = None, *, all_sweeps: bool = False) -> list:
    """The jobs of sweep `parent` (default: the experiment's latest sweep; a resumed sweep's
    reused runs included; a failed job is a row without values), or with `all_sweeps` every
    finished job of every sweep in the experiment, each job once: a job that ran in several
    sweeps counts by its latest finished run."""
    if all_sweeps:
        runs = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            max_results=5000,
            order_by=["attributes.start_time DESC"],
        )
        latest: dict[str, Any] = {}
        for run in runs:
            if "mlflow.parentRunId" in run.data.tags:
                latest.setdefault(run.data.tags.get(CONFIG_HASH_TAG) or run.info.run_id, run)
        return sorted(latest.values(), key=lambda r: r.info.start_time)
    if parent is None:
        sweeps = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string="tags.`regionbench.sweep` = 'true'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if not sweeps:
            raise SystemExit(f"no sweep found in experiment {tracker.experiment!r}")
        parent = sweeps[0].info.run_id
    return tracker.sweep_members(parent)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m regionbench.report.tables",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--uri", default=None, help="tracking URI (default ./mlruns/mlflow.db)")
    ap.add_argument(
        "--experiment", default=None, help="default: regionbench (with --url: every experiment)"
    )
    ap.add_argument("--parent", default=None, help="sweep run id (default: the latest sweep)")
    ap.add_argument("--metrics", nargs="*", default=None)
    ap.add_argument("--params", nargs="*", default=None, help="columns (default: swept params)")
    ap.add_argument("--group", nargs="*", default=None, help="aggregate over runs sharing these")
    ap.add_argument(
        "--over",
        nargs="*",
        default=None,
        help="aggregate over these params (e.g. seed), grouping by the rest",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        help="KEY=VALUE[,KEY=VALUE]: each run over the matching run with the same --over values",
    )
    ap.add_argument("--all-sweeps", action="store_true", help="every job in the experiment")
    ap.add_argument(
        "--url",
        action="store_true",
        help="print the MLflow UI address of the sweep's runs table (mlflow ui --port PORT)",
    )
    ap.add_argument("--port", type=int, default=5000, help="the UI's port, for --url")
    args = ap.parse_args(argv)
    store = local_store(args.uri)
    if store is not None and not store.exists():
        raise SystemExit(
            f"error: no MLflow store at {store}: run this where the sweep was launched (its "
            "mlruns/ folder is there) or pass --uri"
        )
    every = args.url and args.experiment is None
    try:  # MLflow's own "Default" experiment is always there; nothing is created to look
        tracker = Tracker(
            args.uri, "Default" if every else args.experiment or "regionbench", create=False
        )
    except StoreError as err:
        raise SystemExit(f"error: {err}") from None
    if args.url:
        print(sweep_url(tracker, args.parent, args.port, every_experiment=every))
        return
    if tracker.mark_stale(TrackingConfig.stale_after_s):  # never shown, never left RUNNING
        log.warning("runs left RUNNING by dead processes were marked FAILED")
    runs = sweep_runs(tracker, args.parent, all_sweeps=args.all_sweeps)
    metrics = args.metrics or _interesting_metrics(runs)
    params = args.params if args.params is not None else swept_params(runs)
    params = list(dict.fromkeys([*(args.group or []), *params]))
    rows = rows_of(runs, params, metrics)
    if args.baseline:
        base = parse_baseline(args.baseline)
        rows = paired_table(runs, base, args.over or [], params, metrics, args.group)
    elif args.group:
        rows = aggregate(rows, args.group, metrics)
    elif args.over:
        rows = aggregate(rows, [p for p in params if p not in args.over], metrics)
    print(markdown(rows))


if __name__ == "__main__":
    main()
