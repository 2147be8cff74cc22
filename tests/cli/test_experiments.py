"""Every study in conf/experiment runs end to end at the size of the debug preset, through the
real command, and records one FINISHED run per job under one FINISHED parent (slow: minutes)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import yaml
from conftest import CONF, REPO, compose
from mlflow.tracking import MlflowClient

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def sweep_size(values: str) -> int:
    """How many values a sweep override lists: commas inside [lists] do not separate them."""
    depth, size = 0, 1
    for char in values:
        depth += (char == "[") - (char == "]")
        size += char == "," and depth == 0
    return size


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_at_debug_size(experiment, tmp_path, cache_dir, sandbox_test_dir):
    cfg = compose([f"+experiment={experiment}", "+debug=default"])
    # A study of real models reads the hub; at debug size it runs on the sandbox instead.
    offline = [] if cfg.data.source == "sandbox" else ["data=sandbox", "eval=default"]
    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO))
    args = ["-m", f"+experiment={experiment}", "+debug=default", *offline]
    proc = subprocess.run(
        [sys.executable, "-m", "regionbench", *args],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    sweep = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text())
    params = sweep["hydra"]["sweeper"]["params"]
    jobs = math.prod(sweep_size(str(values)) for values in params.values())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == jobs
    assert {c.info.status for c in children} == {"FINISHED"}
    assert all("ppl_ratio/mean" in c.data.metrics for c in children)
