"""The MLflow UI's view of a sweep: the saved runs-table view its parent run names, and the
address that opens it (`python -m regionbench.report --url`, `make ui`).

    view = ui_view(parent_id, runs, params, over, metrics)   # an experiment tag's JSON
    sweep_url(tracker, None, 5000, every_experiment=True)   # http://127.0.0.1:5000/#/...
"""

from __future__ import annotations

from collections.abc import Sequence

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
# search filter, sort, visible columns, column widths and grouping. Per-run state (which rows
# are expanded) is not part of it, so the jobs are shown grouped by condition, which lists them
# without a click (a sweep's jobs nested under its parent run would need one).
VIEW_TAG = "mlflow.sharedViewState."
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
    `metrics` (the headline first, each with its `_lo`/`_hi` interval where logged), every
    language's `ppl_ratio/<lang>`, and the swept params (in grouped rows not the repeated ones:
    MLflow would show their mean) as the first columns after the run names, which are wide
    enough to read."""
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
    logged = {k for r in runs for k in r.data.metrics}
    shown: list[str] = []
    for m in metrics:  # each metric with its interval beside it, where the runs log one
        name, _, where = m.partition("/")
        shown += [m, *(b for b in (f"{name}_lo/{where}", f"{name}_hi/{where}") if b in logged)]
    # then which region hurt which language: the ratio of every evaluation language
    langs = sorted(
        k for k in logged if k.startswith("ppl_ratio/") and k.count("/") == 1 and k not in shown
    )
    # grouped rows would show the mean of a repeated param ("seed 0.5"): not those columns
    shown_params = (
        [p for p in params if p not in over]
        if group_by[0]["mode"] == "param"
        else [*sorted(params, key=lambda p: p in over)]
    )
    columns = [
        *(f"metrics.`{m}`" for m in [*shown, *langs]),
        *(f"params.`{p}`" for p in shown_params),
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
    key = run.info.run_id if VIEW_TAG + run.info.run_id in experiment.tags else None
    return f"http://127.0.0.1:{port}/{ui_path(run.info.experiment_id, key)}"
