"""Importance on several processes with torch.distributed (`torchrun --nproc_per_node=N`).

    torchrun --nproc_per_node=8 -m regionbench -m ratio=0.01,0.03,0.05 model=llama2-7b ...

Rank 0 runs the Hydra app as in one process (the sweep, MLflow, evaluation). The other ranks only
help with importance: whenever rank 0 computes scores (a cache miss), it sends every rank the
run's config and the token windows (`lead`); each rank scores every N-th batch of each language
(`compute._gradient_scores`) and the fp32 accumulators are all-reduced once per language, so
every metric's sum over batches is the one a single process computes (up to the order of fp32
additions). A helper rank waits in `serve` until rank 0 `release`s it at the end; other stages'
work for the helpers (evaluation: `regionbench.evaluation.ranks`) is a message `send` names and
one of `serve`'s `handlers` does.

Accumulators on the host (`importance.accumulate_device=cpu`) under NCCL, which reduces only
GPU tensors, are reduced through the rank's GPU in chunks (`all_reduce_sum`): one staging
buffer of `REDUCE_CHUNK_BYTES` on the GPU, not the accumulators.

One process (no WORLD_SIZE, or a group not initialised) is the default and nothing here runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

REDUCE_CHUNK_BYTES = 256 << 20  # staged through the GPU at a time (a CPU tensor under NCCL)
# The devices whose tensors each backend reduces where they lie.
BACKEND_DEVICES = {"gloo": ("cpu", "cuda"), "nccl": ("cuda",), "mpi": ("cpu",)}


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL with one GPU per local
    rank when CUDA is there, else gloo on CPU. Returns (rank, world size); (0, 1) otherwise."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return rank_world()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return rank_world()


def _staging(t: Tensor, near: torch.device) -> torch.device | None:
    """Where `t` must be copied to be reduced (`near`: its parameter's device), or None when the
    process group's backend reduces it in place."""
    import torch.distributed as dist

    devices = BACKEND_DEVICES.get(str(dist.get_backend()), ("cpu", "cuda"))
    if t.device.type in devices:
        return None
    if near.type in devices:
        return near
    if "cuda" in devices and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    raise ValueError(
        f"the {dist.get_backend()} backend cannot reduce {t.device.type} tensors and no device "
        f"it can is here: importance.accumulate_device={t.device.type} needs another backend"
    )


def all_reduce_sum(tensors: Iterable[tuple[Tensor, torch.device]]) -> None:
    """Sum each tensor over the ranks, in place: where it lies when the backend can reduce it
    there, else in chunks of `REDUCE_CHUNK_BYTES` through one buffer on the paired device (a CPU
    accumulator under NCCL goes through its parameter's GPU). Every rank passes the same
    tensors in the same order."""
    import torch.distributed as dist

    buffer = None
    for t, near in tensors:
        stage = _staging(t, near)
        if stage is None:
            dist.all_reduce(t)
            continue
        flat = t.view(-1)  # accumulators are contiguous
        step = max(1, REDUCE_CHUNK_BYTES // t.element_size())
        need = min(step, flat.numel())
        if (
            buffer is None
            or (buffer.device, buffer.dtype) != (stage, t.dtype)
            or len(buffer) < need
        ):
            buffer = torch.empty(need, dtype=t.dtype, device=stage)
        for start in range(0, flat.numel(), step):
            part = flat[start : start + step]
            staged = buffer[: part.numel()]
            staged.copy_(part)
            dist.all_reduce(staged)
            part.copy_(staged)


def _broadcast(message):
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def lead(run: dict, windows: dict, metric: str, options: dict) -> None:
    """Rank 0, before it scores `windows`: every helper rank scores them with it."""
    if rank_world()[1] > 1:
        _broadcast(("score", run, windows, metric, options))


def send(kind: str, *payload) -> None:
    """Rank 0: every helper rank runs `handlers[kind](*payload)` of its `serve`."""
    if rank_world()[1] > 1:
        _broadcast((kind, *payload))


def release() -> None:
    """Rank 0, at the end: the helper ranks stop serving and leave the group."""
    import torch.distributed as dist

    if rank_world()[1] > 1:
        _broadcast(None)
        dist.destroy_process_group()


def serve(
    load_model: Callable[[dict], torch.nn.Module], handlers: Mapping[str, Callable] | None = None
) -> int:
    """A helper rank: score whatever rank 0 leads, until it releases us. `load_model(run)` gives
    the model for a run's config (a session keeps it loaded across a sweep); a message `send`
    names goes to its handler. Returns the number of scorings joined."""
    import torch.distributed as dist

    from regionbench.importance.compute import iter_scores

    served = 0
    while (message := _broadcast(None)) is not None:
        if message[0] != "score":
            (handlers or {})[message[0]](*message[1:])
            continue
        _, run, windows, metric, options = message
        accumulate = run["importance"].get("accumulate_device")
        for _ in iter_scores(  # rank 0 keeps the scores; ours are dropped language by language
            load_model(run),
            windows,
            metric,
            progress=False,
            accumulate_device=accumulate,
            **options,
        ):
            pass
        served += 1
    dist.destroy_process_group()
    return served
