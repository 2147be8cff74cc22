"""The per-language table of experiments/real/README.md from the runs of an MLflow store:

    python experiments/real/table.py mlruns/mlflow.db real   # store, experiment name

Per language: the unmodified model's perplexity and each finished run's ppl_ratio with its 95%
paired-bootstrap interval; then each run's stage times."""

from __future__ import annotations

import sys

from mlflow.tracking import MlflowClient

ORDER = "en es fr it pt de ar zh ja ru pl ro hi bn tr sw ko fa id vi uk tl".split()  # noqa: SIM905


def label(run) -> str:
    p = run.data.params
    if p["metric.name"] == "random":
        return f"random 1% (seed {p['seed']})"
    return f"{p['metric.name']} core {float(p['ratio']):.0%}"


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def main(db: str, experiment: str) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=500)
        if "job_num" in r.data.tags and r.info.status == "FINISHED"
    ]
    runs.sort(key=lambda r: (r.data.params["metric.name"] == "random", int(r.data.params["seed"])))
    first = runs[0].data.metrics
    langs = [g for g in ORDER if f"ppl_ratio/{g}" in first] + ["mean"]
    print("| lang | base ppl | " + " | ".join(label(r) for r in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for lang in langs:
        base = "" if lang == "mean" else fmt(first[f"ppl/{lang}"] / first[f"ppl_ratio/{lang}"])
        cells = []
        for r in runs:
            m = r.data.metrics
            lo, hi = m[f"ppl_ratio_lo/{lang}"], m[f"ppl_ratio_hi/{lang}"]
            cells.append(f"{fmt(m[f'ppl_ratio/{lang}'])} [{fmt(lo)}, {fmt(hi)}]")
        print(f"| {lang} | {base} | " + " | ".join(cells) + " |")
    print()
    for r in runs:
        m = r.data.metrics
        times = {k.split("/")[1]: round(v) for k, v in m.items() if k.startswith("time/")}
        print(f"{label(r)}: {times}, super weights in the region {m.get('region/super_weights')}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
