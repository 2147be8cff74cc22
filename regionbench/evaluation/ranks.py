"""Evaluation on every rank under torch.distributed (`torchrun --nproc_per_node=N`): each rank
scores a share, and the result is the one a single process gives.

    torchrun --standalone --nproc_per_node=8 -m regionbench -m +experiment=paper_llama2_7b

Called on every rank of an initialised process group, `perplexity`, `paper_perplexity` and
`run_lm_eval` are collective: perplexity deals its batches round-robin (they are sorted longest
first, so the shares are even) and gathers each batch's per-row NLL, which every rank then adds up
in one process's batch order, so the totals and the per-document values (the bootstrap intervals'
units, in input order) are a single process's, bit for bit, given the same forward. lm-eval runs
`simple_evaluate` on rank 0 only, as one process; every list of requests it hands the model is
dealt out by document (a document's requests stay together: a multiple-choice question's choices
share one context) and the answers are put back in order, so everything after them — metrics,
their bootstrap, the logged samples — is lm-eval's single-process code on the same answers. A rank
that fails (out of memory) fails the call on every rank with its error, instead of leaving the
others waiting.

In the pipeline only rank 0 runs the job; the other ranks serve (`importance.distributed.serve`).
`jointly` is rank 0's side: it sends the helpers what to evaluate and the model's weights as they
are now (an intervention or a training run has changed them); a helper's `join` takes them in,
evaluates with rank 0, and puts back exactly the values it had, so its model is again the loaded
one for the next importance pass. A model with forward hooks (`intervention=ablate|fix|steer`)
cannot be sent that way: rank 0 evaluates it alone (`alone`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

import torch

from regionbench.importance.distributed import rank_world, send

log = logging.getLogger(__name__)
T = TypeVar("T")
_ALONE: ContextVar[bool] = ContextVar("regionbench_eval_alone", default=False)
JOIN = "evaluate"  # the message kind of `jointly`, a handler of `serve`


def world() -> tuple[int, int]:
    """(rank, world size) an evaluation shares its work over: the process group's, or (0, 1)
    inside `alone()`."""
    return (0, 1) if _ALONE.get() else rank_world()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Evaluations in this block run on this rank by itself, as in one process."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def deal(n: int, rank: int, world_size: int) -> range:
    """The items of `rank`: every `world_size`-th of `n`, from `rank` (round-robin; a rank may get
    none when `n < world_size`)."""
    return range(rank, n, world_size)


def gathered(compute: Callable[..., T], *args) -> list[T]:
    """Every rank's `compute(*args)`, on every rank, in rank order. If any rank raised, every rank
    raises one RuntimeError naming the rank and its error (nobody waits for a rank that died)."""
    import torch.distributed as dist

    _, size = world()
    if size == 1:
        return [compute(*args)]
    try:
        mine = (True, compute(*args))
    except Exception as err:  # noqa: BLE001 - carried to every rank, raised there
        mine = (False, f"{type(err).__name__}: {err}")
    box: list = [None] * size
    dist.all_gather_object(box, mine)
    for rank, (ok, value) in enumerate(box):
        if not ok:
            raise RuntimeError(f"evaluation failed on rank {rank}: {value}")
    return [value for _, value in box]


def in_order(shares: list[list[T]], n: int) -> list[T]:
    """The items `deal` gave each rank (`shares[rank]`, in order) as one list of `n`."""
    out: list = [None] * n
    for rank, share in enumerate(shares):
        for k, item in zip(deal(n, rank, len(shares)), share, strict=True):
            out[k] = item
    return out


# --- the pipeline: rank 0 leads, the helper ranks join ---------------------------------------


def _evaluations() -> dict[str, Callable]:
    from regionbench.evaluation.harness import run_lm_eval
    from regionbench.evaluation.perplexity import paper_perplexity, perplexity

    return {"perplexity": perplexity, "paper_perplexity": paper_perplexity, "lm_eval": run_lm_eval}


def _hooked(model: torch.nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def jointly(run: dict, what: str, model, tokenizer, *args, **kwargs):
    """Rank 0 of the pipeline: `what` ("perplexity", "paper_perplexity", "lm_eval") of the model
    as it is now, with every helper rank (module docstring); in one process, just `what`."""
    evaluate = _evaluations()[what]
    if rank_world()[1] == 1:
        return evaluate(model, tokenizer, *args, **kwargs)
    if _hooked(model):
        log.info("%s on rank 0 alone: forward hooks (an activation intervention) stay here", what)
        with alone():
            return evaluate(model, tokenizer, *args, **kwargs)
    send(JOIN, run, what, args, kwargs)
    _mirror(model)
    return evaluate(model, tokenizer, *args, **kwargs)


def join(model, tokenizer, what: str, args: tuple, kwargs: dict) -> None:
    """A helper rank: evaluate with rank 0 on rank 0's weights (`jointly`), then put back the
    values this model had. A failed evaluation is rank 0's to report (it fails the job there);
    this rank goes on serving."""
    undo = _mirror(model)
    try:
        _evaluations()[what](model, tokenizer, *args, **kwargs)
    except Exception as err:  # noqa: BLE001 - rank 0 has the same error and reports it
        log.debug("%s failed on this rank: %s", what, err)
    finally:
        with torch.no_grad():
            for tensor, where, old in undo:
                flat = tensor.view(-1)
                if where is None:
                    flat.copy_(old)
                else:
                    flat[where.to(flat.device)] = old.to(flat.device)


def _tensors(model) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _mirror(model) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Rank 0 sends every parameter and buffer; another rank takes them in and returns what it
    had where they differ bitwise: (tensor, flat indices or None for all, old values on CPU)."""
    import torch.distributed as dist

    rank, _ = rank_world()
    undo = []
    with torch.no_grad():
        for tensor in _tensors(model):
            if rank == 0:
                dist.broadcast(tensor.data, src=0)
                continue
            incoming = torch.empty_like(tensor.data)
            dist.broadcast(incoming, src=0)
            bits = _SAME_SIZE_INT[tensor.element_size()]
            differs = incoming.view(bits).view(-1) != tensor.data.view(bits).view(-1)
            count = int(differs.sum())
            if not count:
                continue
            flat = tensor.data.view(-1)
            if count * (8 + tensor.element_size()) < flat.numel() * tensor.element_size():
                where = differs.nonzero().squeeze(1)
                undo.append((tensor.data, where.cpu(), flat[where].cpu()))
            else:
                undo.append((tensor.data, None, flat.cpu().clone()))
            tensor.data.copy_(incoming)
    return undo
