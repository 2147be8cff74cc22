"""`torchrun --nproc_per_node=2 -m regionbench` evaluates on both ranks and records, on rank 0,
the metrics one process records: the same sweep (a removal and a freeze run, with
lm-eval's grammar task) on the same cached importance scores."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import SMALL, run_cli
from mlflow.tracking import MlflowClient

SWEEP = ["-m", "ratio=0.05", "intervention=remove,freeze", *SMALL]
LM_EVAL_REL = 1e-6  # lm-eval batches each rank's share on its own (tests/unit/evaluation)


def _metrics(cwd) -> dict[str, dict[str, float]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("regionbench")
    runs = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    return {r.info.run_name: r.data.metrics for r in runs}


@pytest.mark.slow
def test_torchrun_evaluates_on_every_rank_as_one_process(tmp_path, sandbox_test_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sandbox").symlink_to(sandbox_test_dir.parent)
    torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun")]
    torchrun += ["--standalone", "--nproc_per_node=2"]
    results = {}
    for mode, launcher in (("single", None), ("torchrun", torchrun)):
        cwd = tmp_path / mode
        cwd.mkdir()
        env = {"OMP_NUM_THREADS": "1"}  # one thread each: the same sums on both sides
        proc = run_cli(SWEEP, cwd, cache, launcher=launcher, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[mode] = _metrics(cwd)
    single, shared = results["single"], results["torchrun"]
    assert sorted(single) == sorted(shared) and len(single) == 2
    for name, one in single.items():
        two = shared[name]
        assert sorted(one) == sorted(two), name
        evaluated = [k for k in one if k.split("/")[0] in ("ppl", "bpb", "ppl_ratio")]
        assert len(evaluated) > 10 and any(k.startswith("lm_eval/") for k in one), name
        for key, value in one.items():
            if key.startswith("time/") or key.endswith(("time_s", "per_s")):  # clocks
                continue
            if key.startswith("lm_eval/"):
                assert two[key] == pytest.approx(value, rel=LM_EVAL_REL, abs=1e-9), (name, key)
            else:  # perplexity is shared bit for bit; training and selection are rank 0's
                assert two[key] == value, (name, key)
