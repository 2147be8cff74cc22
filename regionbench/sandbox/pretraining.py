"""The sandbox models' pre-training loop: AdamW with warmup and a cosine schedule on packed
sequences, checkpointed as it goes (every CHECKPOINT_EVERY steps or CHECKPOINT_SECONDS, and at the
end of the step a Ctrl-C or SIGTERM arrives in) and resumed with the bytes an uninterrupted run
would have given. `sandbox.models.build_sandbox_model` drives it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from regionbench.common.packing import pack_ids
from regionbench.common.torchtools import lr_factor
from regionbench.sandbox.checkpoint import Checkpoint, HeldSignals

if TYPE_CHECKING:
    from regionbench.sandbox.models import SandboxRecipe

log = logging.getLogger("regionbench.sandbox.models")

CHECKPOINT_EVERY = 50  # steps between checkpoints of a build in progress ...
CHECKPOINT_SECONDS = 60.0  # ... or seconds, whichever comes first (and on Ctrl-C / SIGTERM)


def _packed_batches(docs: list[list[int]], recipe: SandboxRecipe, seed: int):
    """Endless [B, T] batches: documents as [BOS] doc [EOS], shuffled each epoch, packed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(docs), generator=gen).tolist()
        windows = pack_ids([docs[i] for i in order], recipe.seq_len, head=[1], tail=[2])
        n = len(windows) // recipe.batch_size * recipe.batch_size
        if n == 0:
            raise ValueError(
                f"too little sandbox text for one batch of {recipe.batch_size * recipe.seq_len}"
                " tokens"
            )
        yield from windows[:n].view(-1, recipe.batch_size, recipe.seq_len)


def _lr_lambda(recipe: SandboxRecipe):
    def factor(step: int) -> float:
        return lr_factor(
            step,
            warmup=recipe.warmup,
            total=recipe.steps,
            schedule="cosine",
            min_ratio=recipe.min_lr_ratio,
        )

    return factor


def pretrain(
    model,
    docs: list[list[int]],
    recipe: SandboxRecipe,
    *,
    seed: int,
    progress: bool = True,
    desc: str = "pre-training",
    checkpoint: Checkpoint | None = None,
    resume: tuple[dict, dict] | None = None,
    notes: dict | None = None,
    on_step=None,
) -> list[float]:
    """AdamW with warmup + cosine on packed sequences; returns the loss of every step.

    With `checkpoint`, the state is saved every CHECKPOINT_EVERY steps or CHECKPOINT_SECONDS
    (with `notes`, and `seconds`: the build's time so far), and at the end of the step in which
    Ctrl-C or SIGTERM arrived, which is then re-raised; `resume` (`checkpoint.load()`) continues
    such a state with the same bytes an uninterrupted run would have. `on_step(steps_done)` runs
    after each step (tests interrupt builds with it)."""
    import torch
    from tqdm.auto import tqdm

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms: decay would just shrink them
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe))
    losses: list[float] = []
    if resume is not None:
        losses = _restore(model, opt, sched, *resume)
    begin = len(losses)
    batches = _packed_batches(docs, recipe, seed)
    for _ in range(begin):  # the data order is replayed from the seed, not stored
        next(batches)
    hooks = []
    if recipe.dropout:
        # Hooks, not config: the saved folder stays a plain LlamaForCausalLM.
        def drop(module, args, out):
            if isinstance(out, tuple):
                return (
                    torch.nn.functional.dropout(out[0], recipe.dropout, module.training),
                    *out[1:],
                )
            return torch.nn.functional.dropout(out, recipe.dropout, module.training)

        for layer in model.model.layers:
            hooks += [
                layer.self_attn.register_forward_hook(drop),
                layer.mlp.register_forward_hook(drop),
            ]
    start, saved = time.perf_counter(), (begin, time.perf_counter())
    seconds_before = resume[1].get("seconds", 0.0) if resume is not None else 0.0

    def save(done: int) -> None:
        state = {**(notes or {}), "seconds": seconds_before + time.perf_counter() - start}
        checkpoint.save(done, *_snapshot(model, opt, sched, losses, state))

    model.train()
    bar = tqdm(total=recipe.steps, initial=begin, desc=desc, unit="step", disable=not progress)
    try:
        with HeldSignals() as held, bar:
            for _ in range(begin, recipe.steps):
                x = next(batches)
                loss = model(input_ids=x, labels=x).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update()
                if len(losses) % 10 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}")
                done = len(losses)
                if on_step is not None:
                    on_step(done)
                due = bool(CHECKPOINT_EVERY) and done - saved[0] >= CHECKPOINT_EVERY
                due = due or time.perf_counter() - saved[1] >= CHECKPOINT_SECONDS
                if checkpoint is not None and (held.received or (due and done < recipe.steps)):
                    save(done)
                    saved = (done, time.perf_counter())
                if held.received:
                    bar.close()
                    kept = f"checkpoint saved in {checkpoint.folder}" if checkpoint else ""
                    kept = f": {kept}, building it again resumes there" if kept else ""
                    log.warning("%s interrupted at step %d of %d%s", desc, done, recipe.steps, kept)
                    held.deliver()
    finally:
        for hook in hooks:
            hook.remove()
        model.eval()
    return losses


def _snapshot(model, opt, sched, losses: list[float], state: dict) -> tuple[dict, dict]:
    """(tensors, JSON state) of a training step's end: everything the next steps read."""
    import torch

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    optim = opt.state_dict()
    for index, entry in optim["state"].items():
        for key, value in entry.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {key!r} is not a tensor: {value!r}")
            tensors[f"optim/{index}/{key}"] = value
    tensors["rng"] = torch.get_rng_state()
    state = {
        **state,
        "losses": list(losses),
        "param_groups": optim["param_groups"],
        "scheduler": sched.state_dict(),
    }
    return tensors, state


def _restore(model, opt, sched, tensors: dict, state: dict) -> list[float]:
    """Put a `_snapshot` back (bit for bit); returns the losses so far."""
    import torch

    model.load_state_dict(
        {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")},
        strict=True,
    )
    optim: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optim.setdefault(int(index), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} for g in state["param_groups"]]  # JSON: lists
    opt.load_state_dict({"state": optim, "param_groups": groups})
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng"])
    return [float(x) for x in state["losses"]]
