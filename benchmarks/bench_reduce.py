"""What reducing host accumulators across ranks costs: in place (gloo) against staged through a
buffer in chunks (the way NCCL needs a CPU tensor), on `--world` CPU processes.

    .venv/bin/python benchmarks/bench_reduce.py                   # 2 ranks, 256 MB per rank
    .venv/bin/python benchmarks/bench_reduce.py --mb 1024 --chunk-mb 64

Each rank holds `--mb` MB of fp32 accumulators in 4 MB matrices and sums them over the ranks
with `regionbench.importance.distributed.all_reduce_sum`, best of `--repeats` by rank 0's CPU time
(wall time beside it): `in place` lets
gloo reduce them where they lie; `staged` copies each `--chunk-mb` chunk into a buffer, reduces
the buffer and copies it back (on a GPU the buffer is on the GPU and the copies cross PCIe; here
both are host memory, so this shows the chunking's own cost). Results are checked equal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time


def rank_main(rank: int, args, store: str, out) -> None:
    import torch
    import torch.distributed as dist

    from regionbench.importance import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=args.world)
    g = torch.Generator().manual_seed(rank)
    n = max(1, args.mb // 4)
    base = [torch.rand(1024, 1024, generator=g) for _ in range(n)]
    real = distributed._staging
    distributed.REDUCE_CHUNK_BYTES = args.chunk_mb << 20
    times, results = {}, {}
    for mode in ("in place", "staged"):
        distributed._staging = real if mode == "in place" else (lambda t, near: t.device)
        best = float("inf")
        for _ in range(args.repeats):
            accs = [t.clone() for t in base]
            dist.barrier()
            start, cpu = time.perf_counter(), time.process_time()
            distributed.all_reduce_sum((a, a.device) for a in accs)
            took = (time.perf_counter() - start, time.process_time() - cpu)
            best = min(best, took, key=lambda t: t[1]) if best != float("inf") else took
        times[mode], results[mode] = best, accs
    same = all(
        torch.equal(a, b) for a, b in zip(results["in place"], results["staged"], strict=True)
    )
    if rank == 0:
        out.put((times, same, n * 4))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--chunk-mb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=rank_main, args=(r, args, store, out)) for r in range(args.world)
        ]
        for p in procs:
            p.start()
        times, same, mb = out.get(timeout=600)
        for p in procs:
            p.join()
    print(f"{args.world} ranks x {mb} MB of fp32 accumulators, chunks of {args.chunk_mb} MB")
    for mode, (wall, cpu) in times.items():
        print(f"  {mode:9} rank 0: {cpu:7.3f} s CPU, {wall:7.3f} s wall")
    ratio = times["staged"][1] / times["in place"][1]
    print(f"  staged / in place (CPU) {ratio:.2f}x; results equal: {same}")


if __name__ == "__main__":
    main()
