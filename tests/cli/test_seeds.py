"""Seed-aware sweeps: a condition whose result cannot depend on the seed (a Taylor or magnitude
region removed or scaled) runs once per sweep, its other seeds create no run and are listed on
the parent; seeded conditions (the random control, noise, training) run at every seed."""

from __future__ import annotations

import csv

import pytest
from conftest import SMALL, compose, run_cli
from mlflow.tracking import MlflowClient

from regionbench.config import RunConfig
from regionbench.plan import Plan
from regionbench.tracking.client import SEED_REUSED_TAG


@pytest.mark.parametrize(
    "overrides, uses_seed",
    [
        (["ratio=0.01"], False),  # taylor core removed
        (["ratio=0.01", "metric=magnitude"], False),
        (["ratio=0.01", "metric=random"], True),
        (["ratio=0.01", "intervention=scale", "intervention.factor=2"], False),
        (["ratio=0.01", "intervention=noise", "intervention.std=0.1"], True),
        (["ratio=0", "metric=random"], False),  # the unmodified model, whatever the metric
        (["ratio=0", "intervention=noise", "intervention.std=0.1"], False),  # nothing to noise
        (["ratio=0", "intervention=freeze"], True),  # training with nothing frozen
        (["ratio=0.01", "intervention=freeze"], True),
        (["ratio=0.01", "region=core_bottom"], False),
        (["ratio=0.01", "region=monolingual", "region.lang=latn"], False),
        (["region=top-dims"], False),
        (["region=random-dims"], True),
        (["region=dimension", "region.dims=[3]"], False),
    ],
)
def test_which_conditions_depend_on_the_seed(overrides, uses_seed):
    run = RunConfig.from_cfg(compose([*overrides, *SMALL]))
    assert Plan.of(run).uses_seed is uses_seed


@pytest.fixture(scope="module")
def seeds_sweep(tmp_path_factory, cache_dir, sandbox_test_dir):
    cwd = tmp_path_factory.mktemp("seeds")
    args = ["-m", "metric=taylor,random", "seed=0,1,2", "ratio=0.01", "eval=ppl", *SMALL]
    return cwd, run_cli(args, cwd, cache_dir)


def test_a_seed_free_condition_runs_once_and_its_other_seeds_are_listed(seeds_sweep):
    cwd, proc = seeds_sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("regionbench")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert all(c.info.status == "FINISHED" for c in children)
    by_metric: dict[str, list] = {}
    for c in children:
        by_metric.setdefault(c.data.params["metric.name"], []).append(c)
    assert len(by_metric["taylor"]) == 1
    assert sorted(int(c.data.params["seed"]) for c in by_metric["random"]) == [0, 1, 2]
    (taylor,) = by_metric["taylor"]
    assert taylor.data.params["seed"] == "0"  # the first seed of the sweep runs
    reused = {k: v for k, v in parent.data.tags.items() if k.startswith(SEED_REUSED_TAG)}
    assert sorted(reused.values()) == [taylor.info.run_id] * 2, reused
    said = proc.stdout + proc.stderr
    assert said.count("cannot depend on its seed") == 2, said[-3000:]
    # the comparison: one taylor run with its document-bootstrap interval, three random runs
    # with their spread over seeds
    table = cwd / "multirun_summary" / "sweep_comparison.csv"
    if not table.exists():
        art = client.download_artifacts(parent.info.run_id, "sweep_comparison.csv", str(cwd))
        table = type(cwd)(art)
    rows = {r["condition"]: r for r in csv.DictReader(table.open())}
    taylor_row = next(r for c, r in rows.items() if c.startswith("taylor"))
    random_row = next(r for c, r in rows.items() if c.startswith("random"))
    assert taylor_row["n"] == "1" and random_row["n"] == "3"
    assert float(random_row["ppl_ratio/mean sd"]) > 0
