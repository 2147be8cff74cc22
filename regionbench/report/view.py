"""The MLflow UI's view of a sweep: the saved runs-table view its parent run names, and the
address that opens it (`python -m regionbench.report --url`, `make ui`).

    view = ui_view(parent_id, runs, params, over, metrics)   # an experiment tag's JSON
    sweep_url(tracker, None, 5000, every_experiment=True)   # http://127.0.0.1:5000/#/...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from regionbench.common import names
from regionbench.report.sweep import (
    condition_keys,
    conditions,
    headline_metric,
)
from regionbench.tracking.client import Tracker

# the metrics a sweep's comparison (and its runs table) shows, with lm-eval's headline ones
COMPARED = (
    names.REGION_FRACTION,
    names.PPL_RATIO_MEAN,
    names.PPL_MEAN,
    names.FORGET_GMEAN,
    names.FORGET_MEAN,
    names.LEARN_MEAN,
)

# ---------------------------------------------------------------------------- the MLflow UI view
# MLflow's UI keeps a shared view of an experiment's runs table (what its Share button writes)
# as an experiment tag `mlflow.sharedViewState.<key>`, opened by `?viewStateShareKey=<key>`:
# search filter, sort, visible columns, column widths and grouping. The view lists a sweep's jobs
# one row each under their parent (which the UI opens: `client.NESTED_SHOWN`), ungrouped: a
# group row shows MLflow's own average of its runs, of a swept seed too ("seed 0.5"), at every
# digit; the conditions' means with their intervals are the parent's (its description,
# `sweep_comparison.json`). MLflow prints a metric as logged, so the columns are the copies at
# 4 significant digits (`names.shown`) where the jobs log them.
VIEW_TAG = "mlflow.sharedViewState."
_RUN_NAME_COLUMN = "attributes.`Run Name`"


def shown_metrics(logged, first: str | None = None) -> list[str]:
    """The metrics the runs table shows, among the names `logged`, in column order: the
    compared ones (`first`, the headline, leading; then lm-eval's headline metrics), each
    followed by its `_lo`/`_hi` interval where logged, then every language's
    `ppl_ratio/<lang>`."""
    from regionbench.report.tables import lm_eval_headlines

    logged = set(logged)
    compared = [m for m in COMPARED if m in logged] + lm_eval_headlines(logged)
    compared.sort(key=lambda m: m != first)  # stable: the headline first
    shown: list[str] = []
    for m in compared:
        name, _, where = m.partition("/")
        shown += [m, *(b for b in (f"{name}_lo/{where}", f"{name}_hi/{where}") if b in logged)]
    shown += sorted(
        k for k in logged if k.startswith("ppl_ratio/") and k.count("/") == 1 and k not in shown
    )
    return shown


def shown_copies(metrics: Mapping[str, float]) -> dict[str, float]:
    """`names.shown(m)`: the value at 4 significant digits, for each metric the runs table
    shows (`shown_metrics`); logged beside the exact values."""
    return {names.shown(m): names.significant(metrics[m]) for m in shown_metrics(metrics)}


def _width(header: str) -> int:
    """A column wide enough for its header (MLflow's default cuts it after ~13 characters)."""
    return max(90, 40 + 7 * len(header))


def ui_view(
    parent_id: str,
    runs: Sequence,
    params: Sequence[str],
    over: Sequence[str],
    metrics: Sequence[str],
) -> dict:
    """The runs-table view of one sweep: its jobs (the runs nested under its parent),
    oldest first, one row each, with the compared `metrics` (the headline first, each with its
    `_lo`/`_hi` interval where logged) and every language's `ppl_ratio/<lang>` at 4 significant
    digits, and the swept params but the seed (in the run's name already) as the first columns
    after the run names, which are wide enough to read."""
    groups = conditions(runs, params, over)
    run_names = [r.info.run_name or "" for r in runs]
    first = headline_metric([r for members in groups.values() for r in members])
    logged = {k for r in runs for k in r.data.metrics}
    wanted = {*metrics, *_intervals(metrics)}
    shown = [
        m
        for m in shown_metrics(logged, first)
        if m in wanted or (m.startswith("ppl_ratio/") and m.count("/") == 1)
    ]
    # each column the copy at 4 significant digits, where every run that logs the value has it
    columns = [f"metrics.`{names.shown(m) if _copied(runs, m) else m}`" for m in shown]
    columns += [f"params.`{p}`" for p in condition_keys(params, over)]
    widths = {c: _width(c.split("`")[1]) for c in columns}
    return {
        "searchFilter": f"tags.mlflow.parentRunId = '{parent_id}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": columns,
        # the compared metrics right after the run names (MLflow puts other columns after)
        "columnOrder": [_RUN_NAME_COLUMN, *columns],
        "columnWidths": {_RUN_NAME_COLUMN: min(420, 110 + 7 * max(map(len, run_names))), **widths},
        "groupBy": None,
    }


def _intervals(metrics: Sequence[str]) -> list[str]:
    out = []
    for m in metrics:
        name, _, where = m.partition("/")
        out += [f"{name}_lo/{where}", f"{name}_hi/{where}"]
    return out


def _copied(runs: Sequence, metric: str) -> bool:
    """Every run that logs `metric` logs its copy at 4 significant digits (runs of an older
    version have none: their column is the exact value)."""
    having = [r for r in runs if metric in r.data.metrics]
    return bool(having) and all(names.shown(metric) in r.data.metrics for r in having)


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
    key = run.info.run_id if VIEW_TAG + run.info.run_id in experiment.tags else None
    return f"http://127.0.0.1:{port}/{ui_path(run.info.experiment_id, key)}"
