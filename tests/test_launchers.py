"""Sweeps beyond one process: the shipped launcher presets, device pinning, and (slow) real
sweeps under joblib and submitit_local that share importance and the baseline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import CONF, REPO, SMALL
from mlflow.tracking import MlflowClient

from regionbench import models


def _launcher(preset: str):
    from hydra import compose, initialize_config_dir

    from regionbench.config import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={preset}"], return_hydra_config=True)
    return cfg.hydra.launcher


def test_presets_configure_the_launchers():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    parallel = _launcher("parallel")
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2
    for preset, hours, mem in (("slurm-7b", 4, 256), ("slurm-13b", 8, 400)):
        slurm = _launcher(preset)
        assert slurm._target_.endswith("SlurmLauncher")
        assert (slurm.timeout_min, slurm.gpus_per_node, slurm.mem_gb) == (hours * 60, 1, mem)
        assert slurm.tasks_per_node == 1 and slurm.max_num_timeout == 2


def test_device_job_spreads_parallel_jobs_over_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [models.device_for_job("job", n) for n in range(6)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]
    assert models.device_for_job("cuda:2", 5) == "cuda:2"  # an explicit device stays
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.device_for_job("job", 3) == "cpu"


def _sweep(cwd, cache_dir, launcher: list[str]):
    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO))
    args = ["-m", *launcher, "ratio=0.01,0.03,0.05,0.1", "device=job", *SMALL]
    return subprocess.run(
        [sys.executable, "-m", "regionbench", *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    ],
    ids=["joblib", "submitit_local"],
)
def test_parallel_sweep_shares_importance_and_baseline(launcher, tmp_path, sandbox_test_dir):
    """4 jobs in separate processes on a cold cache (the test model already built): every run
    FINISHED under one FINISHED parent, importance computed by exactly one job (one "miss" tag),
    the unmodified model evaluated once (one log line across the jobs' logs)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sandbox").symlink_to(sandbox_test_dir.parent)  # the model, not its scores
    proc = _sweep(tmp_path, cache, launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("regionbench")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.tags["importance_cache"] for c in children) == ["hit"] * 3 + ["miss"]
    assert len({c.data.tags["importance_key"] for c in children}) == 1
    logs = "".join(p.read_text() for p in tmp_path.glob("multirun/*/*/*/regionbench.log"))
    assert logs.count("evaluating the unmodified model") == 1
    assert {c.data.params["device"] for c in children} == {"job"}
