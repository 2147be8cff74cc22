"""Small torch mechanisms several stages share, each written once: module modes kept across a
block, seeded per-parameter draws, and the learning-rate schedule of every training loop
(sandbox pre-training and freeze training).

    with modes_kept(model, training=False):     # eval mode inside, every module's flag after
        ...
    gen = seeded_generator(seed, "model.layers.0.mlp.up_proj.weight")
    factor = lr_factor(step, warmup=15, total=150, schedule="linear")
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

import torch
from torch import nn

SCHEDULES = {
    "linear": "linear warmup, then linear decay towards 0 (the HF Trainer default)",
    "cosine": "linear warmup, then half-cosine decay towards `min_ratio`",
    "constant": "linear warmup, then constant",
}


@contextlib.contextmanager
def modes_kept(model: nn.Module, training: bool | None = None) -> Iterator[nn.Module]:
    """Inside: every module in `training` mode (None: as it is). After, even on an exception:
    each module's own train/eval flag as before (a model may mix them: frozen dropout, say)."""
    modes = {module: module.training for module in model.modules()}
    try:
        if training is not None:
            model.train(training)
        yield model
    finally:
        for module, mode in modes.items():
            module.train(mode)


def stable_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from (`seed`, `name`): a parameter's random draw does not depend on
    which other parameters are in scope or on their order."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for the draws of one named object (a parameter, a tie order)."""
    return torch.Generator(device="cpu").manual_seed(stable_seed(seed, name))


def lr_factor(
    step: int, *, warmup: int, total: int, schedule: str = "linear", min_ratio: float = 0.0
) -> float:
    """Multiplier of the peak learning rate for 0-based optimizer step `step` of `total`.

    Warmup ramps (step + 1) / warmup so the first step already learns (HF's schedule spends it at
    lr 0); the decay then goes from 1 towards `min_ratio`, which it nears on the last step but
    never reaches.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":  # this operation order reproduces the sandbox models' weights
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * (1.0 - progress)
