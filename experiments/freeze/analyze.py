"""Tables for experiments/freeze/README.md, read from a freeze sweep's MLflow runs.

    python experiments/freeze/analyze.py                    # the latest sweep of experiment freeze
    python experiments/freeze/analyze.py --parent RUN_ID    # one sweep

Per run, forgetting is summarised as logged (`forget/mean`, the arithmetic mean of the
per-language perplexity ratios, which the worst language dominates) and as the geometric mean of
those ratios (exp of the mean increase in nats per token).  Every frozen set is also compared with
the unfrozen run (ratio 0) of the same seed: the two see the same batches in the same order, so
the paired ratio removes most of the seed-to-seed spread.  The second table is the forgetting
curve: geometric-mean forgetting at every evaluation step, averaged over seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict

from regionbench.report.cli import sweep_runs
from regionbench.report.tables import aggregate, markdown
from regionbench.tracking.client import Tracker


def frozen_set(params: dict) -> str:
    ratio = float(params["ratio"])
    if ratio == 0:
        return "none"
    if params["metric.name"] == "random":  # the region kind is moot for random scores
        return f"random {ratio:.0%}"
    return f"{params['metric.name']} {params['region.name']} {ratio:.0%}"


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def langs_of(metrics: dict, kind: str) -> list[str]:
    return sorted(
        k.split("/", 1)[1] for k in metrics if k.startswith(f"{kind}/") and k != f"{kind}/mean"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--uri", default=None, help="tracking URI (default ./mlruns/mlflow.db)")
    ap.add_argument("--experiment", default="freeze")
    ap.add_argument("--parent", default=None, help="sweep run id (default: the latest sweep)")
    args = ap.parse_args()

    tracker = Tracker(args.uri, args.experiment)
    runs = [r for r in sweep_runs(tracker, args.parent) if r.info.status == "FINISHED"]
    if not runs:
        raise SystemExit("the sweep has no finished runs")
    targets = langs_of(runs[0].data.metrics, "learn")
    others = langs_of(runs[0].data.metrics, "forget")

    rows = []
    for r in runs:
        m = r.data.metrics
        rows.append(
            {
                "frozen set": frozen_set(r.data.params),
                "seed": r.data.params["seed"],
                "forget/mean": m["forget/mean"],
                "forget (geo)": geomean([m[f"forget/{lang}"] for lang in others]),
                **{f"ppl/{lang}": m[f"ppl/{lang}"] for lang in targets},
                "run_id": r.info.run_id,
            }
        )
    baseline = {row["seed"]: row for row in rows if row["frozen set"] == "none"}
    for row in rows:
        base = baseline.get(row["seed"])
        row["forget (geo) / none"] = (
            row["forget (geo)"] / base["forget (geo)"] if base else math.nan
        )
        for lang in targets:
            row[f"ppl/{lang} / none"] = (
                row[f"ppl/{lang}"] / base[f"ppl/{lang}"] if base else math.nan
            )

    metrics = [
        "forget/mean",
        "forget (geo)",
        "forget (geo) / none",
        *[f"ppl/{lang}" for lang in targets],
        *[f"ppl/{lang} / none" for lang in targets],
    ]
    print(
        f"target {', '.join(targets)}; forgetting over {', '.join(others)}; "
        f"{len(runs)} runs, mean ± std across seeds\n"
    )
    print(markdown(aggregate(rows, ["frozen set"], metrics)))

    # Forgetting curve: the step history of every forget/<lang> metric.
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        history: dict[int, list[float]] = defaultdict(list)
        for lang in others:
            for point in tracker.client.get_metric_history(row["run_id"], f"forget/{lang}"):
                history[point.step].append(point.value)
        for step, values in history.items():
            if len(values) == len(others):
                curves[row["frozen set"]][step].append(geomean(values))
    steps = sorted({s for c in curves.values() for s in c})
    print(
        "\nforgetting curve: geometric-mean forgetting after each number of steps, mean of seeds\n"
    )
    print(
        markdown(
            [
                {"frozen set": name, **{str(s): statistics.fmean(c[s]) for s in steps if c[s]}}
                for name, c in curves.items()
            ]
        )
    )


if __name__ == "__main__":
    main()
