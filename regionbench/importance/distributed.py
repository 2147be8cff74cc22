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

One process (no WORLD_SIZE, or a group not initialised) is the default and nothing here runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch


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
