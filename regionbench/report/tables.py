"""Tables from MLflow runs: rows of params and metrics, aggregated over seeds, paired with a
baseline run, as markdown or CSV (what `python -m regionbench.report` prints).

    rows = rows_of(runs, ["metric.name", "ratio"], ["ppl_ratio/mean"])
    aggregate(rows, ["metric.name", "ratio"], ["ppl_ratio/mean"])          # mean ± std, with n
    paired_table(runs, {"ratio": "0"}, ["seed"], params, metrics)          # over the baseline
    print(markdown(rows))
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

from regionbench.common import names
from regionbench.report.plots import spread
from regionbench.tracking.client import Tracker

DEFAULT_METRICS = (names.REGION_FRACTION, names.PPL_MEAN, names.PPL_RATIO_MEAN)
# not a sweep's axes for the default columns (a group's choice repeats the values it sets)
_IGNORED_PARAMS = ("paths.", "tracking.", "choice.", "resume")
MODEL_PARAMS = "model."  # the params that say which model a run measured


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
    unfrozen run per seed) every frozen set is paired with the unfrozen run of its seed. The
    model's columns (`model.*`) always match, unless the baseline names one (`--baseline
    model.name=A`: every model over A): a ratio of model B is never taken over model A's
    unmodified run. A `pair_on` column on which the baseline runs do not vary is not matched:
    one unmodified run (seed-free, so run at one seed) is every seed's baseline. A run with no
    such baseline is left out of its row's ratio."""
    from scipy import stats

    def is_base(row):
        return all(same_value(row.get(k), v) for k, v in baseline.items())

    base_rows = [r for r in rows if is_base(r)]
    if not base_rows:
        raise SystemExit(f"no run matches the baseline {baseline}")
    columns = [c for c in rows[0] if c not in baseline and c not in ("run", "status", *metrics)]
    varying = [c for c in columns if len({str(r[c]) for r in base_rows}) > 1]
    # a run is never paired with another model's baseline, even where only one model has one
    models = [c for c in columns if c.startswith(MODEL_PARAMS)]
    # a baseline that ran at one seed only answers for every seed (a seed-free condition runs
    # once per sweep: its other seeds reuse that run)
    pair_on = [k for k in pair_on if k in varying]
    match = list(dict.fromkeys([*pair_on, *models, *varying]))
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


def same_value(logged, wanted) -> bool:
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


def interesting_metrics(runs: Sequence) -> list[str]:
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


def log_table(tracker: Tracker, parent_id: str, rows: list[dict], stem: str) -> str:
    table = markdown(rows)
    tracker.log_text(parent_id, to_csv(rows), f"{stem}.csv")
    tracker.log_text(parent_id, table + "\n", f"{stem}.md")
    return table


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
