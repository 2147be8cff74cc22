"""The head-to-head table of experiments/train_vs_freeze/README.md, from every finished job of
the experiment (both of its commands' sweeps).

    python experiments/train_vs_freeze/analyze.py [--uri URI] [--experiment train_vs_freeze]

One row per condition (what trains, which region, its size): the mean over seeds of the
geometric-mean forgetting of the known languages (`forget/gmean`) and of the target's
perplexity ratio (`learn/mean`), each with its 95% t interval over the seeds, and the same
paired with full training of the same seed (the jobs of one seed see the same batches).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict

from regionbench.interventions.kinds import INTERVENTIONS
from regionbench.report.cli import sweep_runs
from regionbench.tracking.client import Tracker

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 9: 2.262}


def condition(params: dict) -> str:
    ratio = float(params["ratio"])
    if ratio == 0:
        return "full training (nothing frozen)"
    region = "random" if params["metric.name"] == "random" else f"{params['metric.name']} core"
    word = INTERVENTIONS[params["intervention.name"]].word  # "trained" | "frozen"
    return f"{region} {ratio:.0%} {word}"


def interval(values: list[float]) -> str:
    """Mean [95% t interval] over seeds, in log space (the quantities are ratios)."""
    logs = [math.log(v) for v in values]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return f"{math.exp(mean):.3g}"
    half = T975.get(len(logs) - 1, 1.96) * statistics.stdev(logs) / math.sqrt(len(logs))
    return f"{math.exp(mean):.3g} [{math.exp(mean - half):.3g}, {math.exp(mean + half):.3g}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--uri", default=None, help="tracking URI (default ./mlruns/mlflow.db)")
    ap.add_argument("--experiment", default="train_vs_freeze")
    args = ap.parse_args()
    runs = sweep_runs(Tracker(args.uri, args.experiment), all_sweeps=True)
    rows = [
        {
            "condition": condition(r.data.params),
            "seed": r.data.params["seed"],
            "forget": r.data.metrics["forget/gmean"],
            "learn": r.data.metrics["learn/mean"],
        }
        for r in runs
        if "forget/gmean" in r.data.metrics
    ]
    full = {r["seed"]: r for r in rows if r["condition"].startswith("full")}
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["condition"]].append(r)
    print(
        "| condition | seeds | forget (geo) | learn (ppl ratio) | forget / full | learn / full |\n"
        "|---|---|---|---|---|---|"
    )
    for name in sorted(by, key=lambda c: (not c.startswith("full"), c)):
        group = by[name]
        paired = [r for r in group if r["seed"] in full]

        def rel(key: str, paired=paired) -> str:
            return interval([r[key] / full[r["seed"]][key] for r in paired])

        print(
            f"| {name} | {len(group)} | {interval([r['forget'] for r in group])} | "
            f"{interval([r['learn'] for r in group])} | {rel('forget') if paired else '-'} | "
            f"{rel('learn') if paired else '-'} |"
        )


if __name__ == "__main__":
    main()
