"""Two MLflow stores compared job by job (by experiment and run name): status, metric names and
every metric value but the wall-clock ones (`time/*`, `train/*time_s`,
`train/tokens_per_s`). Prints each difference and a summary line; exits 1
when there is one. Used to show that a change of code changes no number:

    python benchmarks/compare_stores.py sqlite:///$PWD/before/mlruns/mlflow.db \
        sqlite:///$PWD/after/mlruns/mlflow.db
"""

import sys

from mlflow.tracking import MlflowClient


def clock(metric: str) -> bool:
    """A wall-clock figure: it differs between any two runs."""
    return metric.startswith("time/") or metric in CLOCK


CLOCK = {"train/time_s", "train/eval_time_s", "train/tokens_per_s"}


def runs(uri):
    c = MlflowClient(tracking_uri=uri)
    out = {}
    for e in c.search_experiments():
        for r in c.search_runs([e.experiment_id], max_results=5000):
            if r.data.tags.get("regionbench.sweep") == "true":
                continue
            out[(e.name, r.info.run_name)] = r
    return out


a, b = runs(sys.argv[1]), runs(sys.argv[2])
diffs = 0
compared = 0
for key in sorted(set(a) | set(b)):
    ra, rb = a.get(key), b.get(key)
    if ra is None or rb is None:
        print("only in", "before" if rb is None else "after", key)
        diffs += 1
        continue
    if ra.info.status != rb.info.status:
        print("status", key, ra.info.status, rb.info.status)
        diffs += 1
    ma = {k: v for k, v in ra.data.metrics.items() if not clock(k)}
    mb = {k: v for k, v in rb.data.metrics.items() if not clock(k)}
    if set(ma) != set(mb):
        print("metric names", key, sorted(set(ma) ^ set(mb)))
        diffs += 1
    for k in set(ma) & set(mb):
        compared += 1
        if ma[k] != mb[k]:
            print("value", key, k, ma[k], mb[k])
            diffs += 1
print(
    f"{len(set(a) & set(b))} jobs in both, {compared} metric values compared, {diffs} differences"
)
sys.exit(1 if diffs else 0)
