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


def _cpu_rank(rank: int, world: int, store: str, out: str, staged: bool) -> None:
    """Host accumulators on every rank; `staged`: reduced the way NCCL needs them, copied chunk
    by chunk into a staging buffer that is reduced (here the buffer is on the CPU too; 40-byte
    chunks, so every matrix takes several and most end with a partial one)."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from regionbench.importance import distributed

    torch.set_num_threads(1)
    staging = []
    real = distributed._staging

    def recording(t, near):
        staging.append(torch.device("cpu") if staged else real(t, near))
        return staging[-1]

    distributed._staging = recording
    if staged:
        distributed.REDUCE_CHUNK_BYTES = 40
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model = tiny_llama()
    for metric in ("taylor", "fisher"):
        scores = score_samples(
            model, _windows(), metric, batch_size=2, progress=False, accumulate_device="cpu"
        )
        if rank == 0:
            flat = {f"{lang}/{n}": t for lang, d in scores.items() for n, t in d.items()}
            save_file(flat, f"{out}.{metric}.safetensors")
    assert staging and set(staging) == ({torch.device("cpu")} if staged else {None})
    dist.destroy_process_group()


@pytest.mark.parametrize("staged", [False, True], ids=["in-place", "staged-in-chunks"])
def test_host_accumulators_on_two_processes_equal_one_process(tmp_path, staged):
    """importance.accumulate_device=cpu under torch.distributed: the sums reduced where they lie
    (gloo) or staged through a buffer in chunks (NCCL's way) equal one process's scores."""
    from safetensors.torch import load_file

    ctx = multiprocessing.get_context("fork")
    out, world = str(tmp_path / "dist"), 2
    procs = [
        ctx.Process(target=_cpu_rank, args=(r, world, str(tmp_path / "store"), out, staged))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    model = tiny_llama()
    for metric in ("taylor", "fisher"):
        single = score_samples(model, _windows(), metric, batch_size=2, progress=False)
        shared = load_file(f"{out}.{metric}.safetensors")
        assert len(shared) == sum(len(d) for d in single.values())
        for lang, d in single.items():
            for name, t in d.items():
                torch.testing.assert_close(shared[f"{lang}/{name}"], t, rtol=1e-5, atol=1e-8)
                assert t.abs().sum() > 0


def test_nccl_stages_host_tensors_through_the_gpu(monkeypatch):
    """Which tensors the backend reduces in place, and where the others go (no GPU needed)."""
    import torch.distributed as dist

    from regionbench.importance.distributed import _staging

    gpu, cpu_t = torch.device("cuda", 1), torch.zeros(2)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    assert _staging(cpu_t, gpu) == gpu  # a host accumulator: through its parameter's GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="nccl backend cannot reduce cpu tensors"):
        _staging(cpu_t, torch.device("cpu"))
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert _staging(cpu_t, gpu) is None  # gloo reduces host tensors where they lie


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [None, "cpu"], ids=["on-device", "host-accumulators"])
def test_torchrun_records_one_run_with_the_single_process_scores(
    tmp_path, sandbox_test_dir, accumulate
):
    """`torchrun --nproc_per_node=2 -m regionbench ratio=0.05`: rank 0 records the only run;
    its importance entry equals the one a single process computes (fp32 tolerance), also with
    `importance.accumulate_device=cpu` on every rank."""
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
        if mode == "torchrun" and accumulate:
            args.append(f"importance.accumulate_device={accumulate}")
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
