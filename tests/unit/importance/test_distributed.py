"""Importance across processes (torch.distributed, gloo on CPU) equals one process's, and
`torchrun -m regionbench` (slow) records one run whose scores match a single-process run."""

from __future__ import annotations

import multiprocessing
import os
import sys

import pytest
import torch
from conftest import SMALL, run_cli
from mlflow.tracking import MlflowClient

from regionbench.importance import score_samples
from regionbench.importance.distributed import rank_world
from regionbench.testing import tiny_llama

METRICS = ("taylor", "taylor_abs", "fisher")


def _windows() -> dict[str, torch.Tensor]:
    # 9 windows per language in batches of 2: 5 batches, the last one partial (rank 0 gets 3)
    g = torch.Generator().manual_seed(7)
    return {lang: torch.randint(3, 64, (9, 16), generator=g) for lang in ("aa", "bb")}


def _documents() -> dict[str, torch.Tensor]:
    """Padded documents (the authors' samples) of 3 to 16 tokens, scored with batch_mean."""
    from regionbench.common.packing import PAD

    windows = _windows()
    g = torch.Generator().manual_seed(8)
    for w in windows.values():
        for row, n in zip(w, torch.randint(3, 17, (len(w),), generator=g).tolist(), strict=True):
            row[n:] = PAD
    return windows


def _rank(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    assert rank_world() == (rank, world)
    model = tiny_llama()
    for metric in METRICS:
        scores = score_samples(model, _windows(), metric, batch_size=2, progress=False)
        if rank == 0:
            flat = {f"{lang}/{n}": t for lang, d in scores.items() for n, t in d.items()}
            save_file(flat, f"{out}.{metric}.safetensors")
    scores = score_samples(model, _documents(), batch_size=2, loss="batch_mean", progress=False)
    if rank == 0:
        flat = {f"{lang}/{n}": t for lang, d in scores.items() for n, t in d.items()}
        save_file(flat, f"{out}.documents.safetensors")
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_scores_on_several_processes_equal_one_process(tmp_path, world):
    from safetensors.torch import load_file

    ctx = multiprocessing.get_context("fork")
    out = str(tmp_path / "dist")
    procs = [
        ctx.Process(target=_rank, args=(r, world, str(tmp_path / "store"), out))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    model = tiny_llama()
    for metric in (*METRICS, "documents"):
        if metric == "documents":
            single = score_samples(
                model, _documents(), batch_size=2, loss="batch_mean", progress=False
            )
        else:
            single = score_samples(model, _windows(), metric, batch_size=2, progress=False)
        shared = load_file(f"{out}.{metric}.safetensors")
        assert len(shared) == sum(len(d) for d in single.values())
        for lang, d in single.items():
            for name, t in d.items():
                torch.testing.assert_close(shared[f"{lang}/{name}"], t, rtol=1e-5, atol=1e-8)
                assert t.abs().sum() > 0  # not a trivially equal zero


@pytest.mark.slow
def test_torchrun_records_one_run_with_the_single_process_scores(tmp_path, sandbox_test_dir):
    """`torchrun --nproc_per_node=2 -m regionbench ratio=0.05`: rank 0 records the only run;
    its importance entry equals the one a single process computes (fp32 tolerance)."""
    from regionbench.common.cache import ScoreCache

    results = {}
    for mode in ("single", "torchrun"):
        cwd, cache = tmp_path / mode, tmp_path / mode / "cache"
        cache.mkdir(parents=True)
        (cache / "sandbox").symlink_to(sandbox_test_dir.parent)
        launcher = None
        if mode == "torchrun":
            torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
            launcher = [torchrun, "--standalone", "--nproc_per_node=2"]
        args = ["ratio=0.05", "eval=ppl", *SMALL]
        proc = run_cli(args, cwd, cache, launcher=launcher, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
        exp = client.get_experiment_by_name("regionbench")
        (run,) = client.search_runs([exp.experiment_id])  # one run: rank 0's
        assert run.info.status == "FINISHED" and run.data.tags["importance_cache"] == "miss"
        key = run.data.tags["importance_key"]
        results[mode] = (run.data.metrics, ScoreCache(cache / "importance").get(key))
    (m1, s1), (m2, s2) = results["single"], results["torchrun"]
    assert s1 is not None and s2 is not None and sorted(s1) == sorted(s2)
    for lang in s1:
        for name in s1[lang]:
            torch.testing.assert_close(s2[lang][name], s1[lang][name], rtol=1e-5, atol=1e-8)
    assert m2["ppl_ratio/mean"] == pytest.approx(m1["ppl_ratio/mean"], rel=1e-4)
