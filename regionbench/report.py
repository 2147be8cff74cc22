"""Comparison tables and plots from MLflow runs: the sweep summary and the experiment READMEs.

    python -m regionbench.report                         # the latest sweep, as a markdown table
    python -m regionbench.report --parent RUN_ID --metrics ppl_ratio/mean lm_eval/sandbox_grammar/acc
    python -m regionbench.report --group metric.name region.name ratio --over seed \\
        --metrics forget/mean learn/mean                   # mean ± std across seeds
    python -m regionbench.report --baseline ratio=0 --over seed --metrics forget/gmean
                                       # each condition / the baseline of the same seed, 95% CI
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regionbench import names
from regionbench.config import TrackingConfig
from regionbench.sweep_figures import region_overlap, sweep_plots
from regionbench.tracking import CONFIG_HASH_TAG, Tracker

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
            vals = [r[m] for r in members if not math.isnan(r[m])]
            mean = statistics.fmean(vals) if vals else math.nan
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            agg[m] = f"{mean:.4g} ± {std:.2g}" if len(vals) > 1 else f"{mean:.4g}"
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
    extra = [
        n
        for n in logged
        if n in (names.FORGET_MEAN, names.FORGET_GMEAN, names.LEARN_MEAN)
        or (n.startswith("lm_eval/") and n.endswith("/acc") and n.count("/") == 2)
    ]
    return [m for m in DEFAULT_METRICS if m in logged] + extra[:4]


def _log_table(tracker: Tracker, parent_id: str, rows: list[dict], stem: str) -> str:
    table = markdown(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    tracker.log_text(parent_id, buf.getvalue(), f"{stem}.csv")
    tracker.log_text(parent_id, table + "\n", f"{stem}.md")
    return table


def summarize_sweep(
    tracker: Tracker,
    parent_id: str,
    runs: Sequence,
    baseline: dict | None = None,
    over: Sequence[str] = ("seed",),
) -> str:
    """Log the comparison table (csv, md) and plots to the parent run; with a `baseline`, also
    the paired table `sweep_paired.csv/.md` (`report --baseline ... --over ...` prints the same
    from the runs alone). Return the markdown."""
    if not runs:
        return "(no finished jobs)"
    params = swept_params(runs)
    metrics = _interesting_metrics(runs)
    table = _log_table(tracker, parent_id, rows_of(runs, params, metrics), "sweep_comparison")
    if baseline:
        try:
            paired_rows = paired_table(runs, baseline, over, params, metrics)
        except SystemExit as err:  # no or ambiguous baseline: the jobs stand, the table cannot
            log.error("no paired table: %s", err)
        else:
            table += "\n\n" + _log_table(tracker, parent_id, paired_rows, "sweep_paired")
    with tempfile.TemporaryDirectory() as tmp:
        for path in sweep_plots(runs, params, Path(tmp)):
            tracker.log_artifact(parent_id, path)
        for path in region_overlap(tracker, runs, Path(tmp)):
            tracker.log_artifact(parent_id, path)
    return table


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
        prog="python -m regionbench.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--uri", default=None, help="tracking URI (default ./mlruns/mlflow.db)")
    ap.add_argument("--experiment", default="regionbench")
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
    args = ap.parse_args(argv)
    tracker = Tracker(args.uri, args.experiment)
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
