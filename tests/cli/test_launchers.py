"""Sweeps beyond one process: the shipped launcher presets, device pinning, and (slow) real
sweeps under joblib and submitit_local that share importance and the baseline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, SMALL, run_cli
from mlflow.tracking import MlflowClient

from regionbench.models import loading as models


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
    for preset, hours, mem in (("slurm-7b", 4, 96), ("slurm-13b", 8, 160)):
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
    args = ["-m", *launcher, "ratio=0.01,0.03,0.05,0.1", "device=job", *SMALL]
    proc = run_cli(args, tmp_path, cache, timeout=900)
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sweep_logs_to_a_tracking_server(tmp_path, cache_dir, sandbox_test_dir):
    """A real `mlflow server` on 127.0.0.1: a debug sweep logs to it through tracking.uri, and
    everything is read back through the server (runs, nesting, metrics, an artifact)."""
    import time
    import urllib.request

    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [
            *[mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            *["--backend-store-uri", f"sqlite:///{tmp_path}/server.db"],
            *["--artifacts-destination", str(tmp_path / "server-artifacts")],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow server did not start") from None
                time.sleep(0.5)
        args = ["-m", "ratio=0,0.05", f"tracking.uri={uri}", *SMALL]
        proc = run_cli(args, tmp_path, cache_dir, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"MLflow: {uri}" in proc.stdout
        assert not (tmp_path / "mlruns").exists()  # nothing went to a local store
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("regionbench")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert sorted(c.info.run_name for c in children) == ["ratio=0", "ratio=0.05"]
        assert {c.info.status for c in children} == {"FINISHED"}
        by_ratio = {c.info.run_name: c.data.metrics for c in children}
        assert by_ratio["ratio=0"]["ppl_ratio/mean"] == 1.0
        assert by_ratio["ratio=0.05"]["region/fraction"] > 0
        table = client.download_artifacts(
            parents[0].info.run_id, "sweep_comparison.md", str(tmp_path)
        )
        assert "taylor core 5%" in Path(table).read_text()  # the condition, in words
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
