"""The importance metrics, by short name: how a batch's gradient folds into an fp32 accumulator,
a language-independent score, or statistics of forward passes over the samples (see the package
docstring for the definitions, `importance.activations` for the activation metrics)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from regionbench.common.torchtools import seeded_generator
from regionbench.importance import activations
from regionbench.models.units import HEAD, NEURON

# Bump when the same inputs would give other scores: cached entries of the old way are then misses.
ALGORITHM = 2  # 2: equal samples per language, per-sample mean losses summed


@dataclass(frozen=True)
class Metric:
    """One importance metric.

    Gradient metrics fold each batch's gradient into an fp32 accumulator with `update(acc, grad,
    param)` and turn the accumulator into scores with `finalize(acc, param)` (both in place, on
    the accumulator's device; `grad` is in the parameter's dtype, on the accumulator's device: an
    op with an fp32 operand upcasts it exactly, e.g. `acc.add_(grad)`). Static metrics ignore the data: `static(name, param, seed)` returns
    the score tensor, shared by every language. Activation metrics run forward passes over a
    language's samples: `activation(model, scoped params, batches)` returns its scores, per entry
    of the scope's parameters, or (`units`) per whole unit under each block's unit key.
    """

    name: str
    doc: str
    update: Callable[[Tensor, Tensor, Tensor], None] | None = None
    finalize: Callable[[Tensor, Tensor], Tensor] | None = None
    static: Callable[[str, Tensor, int], Tensor] | None = None
    uses_seed: bool = False  # its scores depend on `seed` (the random control)
    activation: Callable[..., dict[str, Tensor]] | None = None
    units: tuple[str, ...] = ()  # the units it scores whole (models.units); () = every entry

    @property
    def per_language(self) -> bool:
        return self.static is None


def _theta32(param: Tensor, like: Tensor) -> Tensor:
    return param.detach().to(device=like.device, dtype=torch.float32)


def _taylor_update(acc: Tensor, grad: Tensor, param: Tensor) -> None:
    acc.add_(grad)


def _taylor_finalize(acc: Tensor, param: Tensor) -> Tensor:
    # The paper's order: sum the gradients over all batches first, then θ·, then |·|.
    return acc.mul_(_theta32(param, acc)).abs_()


def _taylor_abs_update(acc: Tensor, grad: Tensor, param: Tensor) -> None:
    acc.add_((grad * _theta32(param, acc)).abs_())


def _fisher_update(acc: Tensor, grad: Tensor, param: Tensor) -> None:
    acc.add_((grad * _theta32(param, acc)).square_())


def _keep(acc: Tensor, param: Tensor) -> Tensor:
    return acc


def _magnitude(name: str, param: Tensor, seed: int) -> Tensor:
    return param.detach().to(device="cpu", dtype=torch.float32).abs()


def _random(name: str, param: Tensor, seed: int) -> Tensor:
    return torch.rand(param.shape, generator=seeded_generator(seed, name), dtype=torch.float32)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "taylor",
            "|θ · Σ_b ∇θ L(b)|: gradients summed over batches first (the paper)",
            update=_taylor_update,
            finalize=_taylor_finalize,
        ),
        Metric(
            "taylor_abs",
            "Σ_b |θ · ∇θ L(b)|: per-batch first-order saliency, summed",
            update=_taylor_abs_update,
            finalize=_keep,
        ),
        Metric(
            "fisher",
            "Σ_b (θ · ∇θ L(b))²: empirical-Fisher-style saliency",
            update=_fisher_update,
            finalize=_keep,
        ),
        Metric("magnitude", "|θ|: language-independent baseline", static=_magnitude),
        Metric(
            "random",
            "seeded uniform [0, 1): language-independent control",
            static=_random,
            uses_seed=True,
        ),
        Metric(
            "lape",
            "p(activation > 0) of each FFN neuron per language (LAPE, Tang et al. 2024)",
            activation=activations.lape,
            units=(NEURON,),
        ),
        Metric(
            "activation",
            "mean |activation| of each FFN neuron and attention head per language",
            activation=activations.mean_activation,
            units=(NEURON, HEAD),
        ),
        Metric(
            "wanda",
            "|W_ij| · ‖X_j‖₂ over the language's tokens (Wanda, Sun et al. 2023)",
            activation=activations.wanda,
        ),
    )
}
