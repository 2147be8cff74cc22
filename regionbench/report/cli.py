"""`python -m regionbench.report`: comparison tables from MLflow runs, in a terminal.

    python -m regionbench.report                         # the latest sweep, as a markdown table
                                                         # (or the latest job: its languages)
    python -m regionbench.report --runs ID1 ID2          # any set of runs
    python -m regionbench.report --parent RUN_ID --metrics ppl_ratio/mean lm_eval/sandbox_grammar/acc
    python -m regionbench.report --group metric.name region.name ratio --over seed \\
        --metrics forget/mean learn/mean                   # mean ± std across seeds
    python -m regionbench.report --baseline ratio=0 --over seed --metrics forget/gmean
                                       # each condition / the baseline of the same seed, 95% CI
    python -m regionbench.report --url                   # the MLflow UI address of the latest
                                                         # sweep's runs table (make ui prints it)

The store is ./mlruns/mlflow.db unless --uri names another; one that does not exist is an error.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from regionbench.config import TrackingConfig
from regionbench.report.job import language_table
from regionbench.report.tables import (
    aggregate,
    interesting_metrics,
    markdown,
    paired_table,
    parse_baseline,
    rows_of,
    swept_params,
)
from regionbench.report.view import sweep_url
from regionbench.tracking.client import CONFIG_HASH_TAG, StoreError, Tracker

log = logging.getLogger(__name__)


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
            if _is_job(run):  # a sweep's job, or a job run on its own
                latest.setdefault(run.data.tags.get(CONFIG_HASH_TAG) or run.info.run_id, run)
        return sorted(latest.values(), key=lambda r: r.info.start_time)
    if parent is None:
        newest = tracker.client.search_runs(
            [tracker.experiment_id],
            max_results=200,
            order_by=["attributes.start_time DESC"],
        )
        top = [r for r in newest if "mlflow.parentRunId" not in r.data.tags]
        if not top:
            raise SystemExit(
                f"no sweep found in experiment {tracker.experiment!r} (and no job run on its "
                f"own) in {tracker.uri}: run one first, or pass --experiment"
            )
        if top[0].data.tags.get("regionbench.sweep") != "true":  # the latest is a single job
            return [top[0]]
        parent = top[0].info.run_id
    return tracker.sweep_members(parent)


def _is_job(run) -> bool:
    tags = run.data.tags
    return "mlflow.parentRunId" in tags or tags.get("regionbench.sweep") != "true"


def run_set(tracker: Tracker, ids: Sequence[str]) -> list:
    """The runs named by `--runs`, in that order; one that is not in the store is one line."""
    runs = []
    for run_id in ids:
        try:
            runs.append(tracker.run(run_id))
        except Exception:  # noqa: BLE001 - MLflow's RESOURCE_DOES_NOT_EXIST, or a malformed id
            raise SystemExit(f"error: no run {run_id!r} in {tracker.uri}") from None
    return runs


def _check_parent(tracker: Tracker, parent: str) -> None:
    """`--parent` names a run of the store, or this is one line naming the sweeps there are."""
    try:
        tracker.run(parent)
        return
    except Exception:  # noqa: BLE001 - MLflow's RESOURCE_DOES_NOT_EXIST, or a malformed id
        pass
    sweeps = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string="tags.`regionbench.sweep` = 'true'",
        max_results=6,
        order_by=["attributes.start_time DESC"],
    )
    there = ", ".join(f"{s.info.run_id} ({s.info.run_name})" for s in sweeps[:5])
    more = " and older ones" if len(sweeps) > 5 else ""
    raise SystemExit(
        f"error: no run {parent!r} in the experiment {tracker.experiment!r} of {tracker.uri}: "
        + (
            f"its sweeps, newest first: {there}{more}; pass one to --parent, or leave --parent "
            "out for the latest"
            if sweeps
            else "it has no sweeps; leave --parent out, or pass --experiment"
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m regionbench.report",
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
    ap.add_argument(
        "--all-sweeps",
        action="store_true",
        help="every finished job in the experiment, in a sweep or run on its own",
    )
    ap.add_argument("--runs", nargs="*", default=None, help="these run ids, in this order")
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
    if args.parent is not None:
        _check_parent(tracker, args.parent)
    if args.url:
        print(sweep_url(tracker, args.parent, args.port, every_experiment=every))
        return
    if tracker.mark_stale(TrackingConfig.stale_after_s):  # never shown, never left RUNNING
        log.warning("runs left RUNNING by dead processes were marked FAILED")
    if args.runs:
        runs = run_set(tracker, args.runs)
    else:
        runs = sweep_runs(tracker, args.parent, all_sweeps=args.all_sweeps)
    if len(runs) == 1 and not (args.metrics or args.group or args.over or args.baseline):
        run = runs[0]
        print(f"{run.info.run_name} (run {run.info.run_id}, {run.info.status}):\n")
        print(markdown(language_table(run)))
        return
    metrics = args.metrics or interesting_metrics(runs)
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
