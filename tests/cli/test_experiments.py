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

from regionbench.tracking.client import SEED_REUSED_TAG

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# What a study needs beyond `data=sandbox eval=default` to run on the sandbox at debug size.
ON_SANDBOX = {
    # a language sandbox-test's tokenizer knows (the held-out ones give no document of at most
    # its 128-token context), the sandbox's evaluation languages, documents as long as that
    "paper_llama2_7b_freeze": [
        "intervention.target_langs=[latn]",
        "data.eval_langs=null",
        "intervention.seq_len=128",
    ],
}


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
    offline += ON_SANDBOX.get(experiment, [])
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
    # every job is a run, or a seed of a seed-free condition that a run of it answers for
    reused = {k: v for k, v in parents[0].data.tags.items() if k.startswith(SEED_REUSED_TAG)}
    assert len(children) + len(reused) == jobs
    assert set(reused.values()) <= {c.info.run_id for c in children}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert all("ppl_ratio/mean" in c.data.metrics for c in children)


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        (
            "paper_llama2_7b",
            {
                "model.name": "meta-llama/Llama-2-7b-hf",
                "importance.packing": "documents",
                "importance.drop_long": True,
                "importance.loss": "batch_mean",
                "importance.batch_size": 8,
                "importance.seq_len": 512,
                "importance.samples": 10048,
                "importance.scope": "paper",
                "eval.ppl_protocol": "paper",
                "eval.paper_batch_size": 16,
            },
        ),
        (
            "paper_llama2_7b_freeze",
            {
                "intervention.name": "freeze",
                "intervention.lr": 5e-5,
                "intervention.betas": [0.9, 0.95],
                "intervention.weight_decay": 0.001,
                "intervention.decay_params": "all",
                "intervention.schedule": "cosine",
                "intervention.warmup_steps": 100,
                "intervention.max_grad_norm": 1.0,
                "intervention.clip_frozen": True,
                "intervention.seq_len": 512,
                "intervention.packing": "documents",
                "intervention.drop_long": True,
                "intervention.freeze_exclude": ["norm"],
                "importance.scope": "paper",
                "importance.loss": "batch_mean",
                "eval.ppl_protocol": "paper",
            },
        ),
    ],
)
def test_paper_presets_show_the_authors_settings(experiment, expected, tmp_path, cache_dir):
    """`python -m regionbench +experiment=<paper preset> --cfg job` prints the authors' settings
    (and a global batch of 256 documents for freeze training)."""
    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "regionbench", f"+experiment={experiment}", "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = yaml.safe_load(proc.stdout)
    for key, value in expected.items():
        node = job
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    iv = job["intervention"]
    if iv["name"] == "freeze":
        assert iv["batch_size"] * iv["grad_accum"] == 256
        assert iv["steps"] == 200_000 // 256
