"""Neuron-level overlap of a neurons_vs_regions sweep, read from its runs' region masks.

    python experiments/neurons/overlap.py                    # the latest sweep, seed 0
    python experiments/neurons/overlap.py --parent RUN_ID --seed 1
    python experiments/neurons/overlap.py --all-sweeps      # every job of the experiment

Each region is projected onto the model's FFN neurons (`regions.units.unit_share`: the share of
each neuron's entries the region holds). A neuron region's neurons are those it holds wholly; an
entry region's are its `n` neurons of largest share, `n` being the neuron regions' count at the
same budget (ties broken by index), so every set has the same size. Printed: per condition the
neurons it holds wholly and the largest share of any neuron; per pair the Jaccard of the neuron
sets and the share of A's entries that lie inside B.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from regionbench.models.loading import load_model
from regionbench.models.units import neuron_units
from regionbench.regions.region import Region
from regionbench.regions.units import unit_share
from regionbench.report.cli import sweep_runs
from regionbench.tracking.client import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--uri", default=None, help="tracking URI (default ./mlruns/mlflow.db)")
    ap.add_argument("--experiment", default="neurons_vs_regions")
    ap.add_argument("--parent", default=None, help="sweep run id (default: the latest sweep)")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--all-sweeps", action="store_true", help="every job of the experiment")
    args = ap.parse_args()

    tracker = Tracker(args.uri, args.experiment)
    runs = [
        r
        for r in sweep_runs(tracker, args.parent, all_sweeps=args.all_sweeps)
        if r.info.status == "FINISHED" and r.data.params.get("seed") == args.seed
    ]
    if not runs:
        raise SystemExit(f"the sweep has no finished run of seed {args.seed}")
    model, _ = load_model(runs[0].data.params["model.name"], device="cpu", progress=False)
    layers = neuron_units(model)
    masks, shares = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in sorted(runs, key=lambda r: r.data.params.get("choice.budget", r.info.run_name)):
            name = r.data.params.get("choice.budget", r.info.run_name)
            local = tracker.client.download_artifacts(r.info.run_id, "region.safetensors", tmp)
            region = Region.load(Path(local))
            masks[name] = region.masks
            shares[name] = torch.cat(unit_share(layers, region))
    whole = {n: s >= 1 for n, s in shares.items()}
    count = max(int(w.sum()) for w in whole.values())
    sets = {}
    for n, s in shares.items():
        if int(whole[n].sum()) > 0:
            sets[n] = set(whole[n].nonzero().reshape(-1).tolist())
        else:  # an entry region: its `count` neurons of largest share
            order = sorted(range(s.numel()), key=lambda j: (-float(s[j]), j))
            sets[n] = set(order[:count])
    names = list(masks)
    print(f"{len(layers)} blocks, {sum(lu.count for lu in layers)} neurons; sets of {count}")
    print("\n| condition | entries | neurons held wholly | largest neuron share |")
    print("|---|---|---|---|")
    for n in names:
        entries = sum(int(m.sum()) for m in masks[n].values())
        print(f"| {n} | {entries} | {int(whole[n].sum())} | {float(shares[n].max()):.3f} |")
    print(
        "\nJaccard of neuron sets (upper) / share of the row's entries inside the column's (lower)"
    )
    print("\n| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("—")
            elif names.index(a) < names.index(b):
                inter, union = len(sets[a] & sets[b]), len(sets[a] | sets[b])
                cells.append(f"{inter / union:.3f}")
            else:
                held = sum(int((masks[a][p] & masks[b][p]).sum()) for p in masks[a])
                total = sum(int(m.sum()) for m in masks[a].values())
                cells.append(f"{held / total:.3f}")
        print(f"| {a} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
