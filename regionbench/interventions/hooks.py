"""Activation interventions: forward hooks that change the activations of a region's units at
inference while every weight stays bit-identical, removed on exit (also when the block raises).

    sites = activation_sites(model, region)            # where the region's units' activations are
    stats = reference_stats(model, sites, {"latn": windows, ...})   # their values on reference text
    with hooked(model, sites, lambda x, s: torch.zeros_like(x)) as applied:   # ablate
        ...

A site is a channel of a block matrix's input whose whole slice in that matrix — the column of
nn.Linear's [out, in] weight (the row of GPT-2's Conv1D) — is in the region, or an output channel
of a matrix that writes the residual stream whose whole row is (when none of its inputs is a
site). So the region says where without naming units: a neuron region (column j of down_proj)
acts on down_proj's input j, act_fn(gate)_j · up_j, which is zero exactly when LAPE's zeroed
act_fn(gate)_j is; a head region on its hd channels of o_proj's input (the head's output); a
`dimension` region on dimension d of every stream reader's input and writer's output. Removing a
neuron's weights and ablating its activation are then the same model, for an FFN without biases.

Reference statistics are read at the same sites, on the importance samples: for each sample the
mean over its (real) tokens, then the median or mean over samples (`fix`: Kojima et al.'s
on_p50 is this median over target-language sentences); and the mean over every token of a
language (`steer`: the difference of two languages' means).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.common.packing import lm_inputs
from regionbench.common.torchtools import modes_kept
from regionbench.interventions.weights import Applied, param_masks
from regionbench.models.residual import _axes, _is_matrix_layer, residual_sides

# (the site's channels of the activation [..., c], the site's reference values or None) -> new
Action = Callable[[Tensor, Tensor | None], Tensor]


@dataclass(frozen=True)
class Site:
    """Channels of one module's input (`on_input`) or output that the region holds whole."""

    module: str
    on_input: bool
    channels: Tensor  # [c] int64, along the last axis


@dataclass(frozen=True)
class Stats:
    """A site's reference activations: each sample's mean over its tokens ([samples, c], with
    each sample's language), and each language's mean over all its tokens ({lang: [c]})."""

    per_sample: Tensor
    langs: tuple[str, ...]
    token_mean: dict[str, Tensor]

    def of(self, statistic: str, lang: str | None = None) -> Tensor:
        """The median or mean over the samples (of `lang`, else of every language)."""
        rows = self.per_sample
        if lang is not None:
            rows = rows[torch.tensor([lg == lang for lg in self.langs])]
        return rows.median(dim=0).values if statistic == "median" else rows.mean(dim=0)


def activation_sites(model: nn.Module, region) -> list[Site]:
    """The sites of `region` (a Region or {param: mask}): see the module docstring."""
    names = {id(m): n for n, m in model.named_modules()}
    owners = {id(getattr(m, "weight", None)): m for m in model.modules() if _is_matrix_layer(m)}
    try:
        writers = {n for n, s in residual_sides(model).items() if s.role == "writes"}
    except ValueError:
        writers = set()
    out = []
    for name, param, mask in param_masks(model, region):
        module = owners.get(id(param))
        if module is None or not bool(mask.any()):
            continue
        in_axis, out_axis = _axes(module)
        whole_in = mask.all(dim=1 - in_axis).nonzero().reshape(-1)
        if whole_in.numel():
            out.append(Site(names[id(module)], True, whole_in.cpu()))
        elif name in writers:
            whole_out = mask.all(dim=1 - out_axis).nonzero().reshape(-1)
            if whole_out.numel():
                out.append(Site(names[id(module)], False, whole_out.cpu()))
    return out


def _tensor_of(x):
    return x[0] if isinstance(x, tuple) else x


@contextlib.contextmanager
def hooked(
    model: nn.Module, sites: list[Site], action: Action, values: list[Tensor | None] | None = None
) -> Iterator[Applied]:
    """`action` on every site's channels in every forward pass inside the block; the hooks are
    removed on exit. `values[i]`: site i's reference values for the action. Yields an `Applied`
    (`selected` = the channels acted on; no weight changes)."""
    if not sites:
        raise ValueError(
            "the region holds no whole unit (a matrix column: a neuron, a head's channel, a "
            "residual dimension) for an activation intervention: use region=neurons, heads "
            "or dimension"
        )
    values = values or [None] * len(sites)

    def change(x: Tensor, site: Site, value: Tensor | None) -> Tensor:
        x = x.clone()
        index = site.channels.to(x.device)
        ref = None if value is None else value.to(device=x.device, dtype=torch.float32)
        x[..., index] = action(x[..., index].float(), ref).to(x.dtype)
        return x

    def pre(site, value):
        def hook(module, args):
            return (change(args[0], site, value), *args[1:])

        return hook

    def post(site, value):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (change(output[0], site, value), *output[1:])
            return change(output, site, value)

        return hook

    handles = []
    try:
        for site, value in zip(sites, values, strict=True):
            module = model.get_submodule(site.module)
            if site.on_input:
                handles.append(module.register_forward_pre_hook(pre(site, value)))
            else:
                handles.append(module.register_forward_hook(post(site, value)))
        yield Applied(model, sum(s.channels.numel() for s in sites), 0)
    finally:
        for h in handles:
            h.remove()


def reference_stats(
    model: nn.Module, sites: list[Site], samples: Mapping[str, Tensor], batch_size: int = 16
) -> list[Stats]:
    """Each site's `Stats` on token windows {lang: [n, seq_len]}: forward passes in eval mode,
    no gradient, padding left out."""
    from regionbench.importance.compute import _input_device, iter_batches

    device = _input_device(model)
    per_sample: list[list[Tensor]] = [[] for _ in sites]
    sums: list[dict[str, list]] = [{} for _ in sites]
    langs: list[str] = []
    state: dict = {}

    def recorder(i: int, site: Site):
        def take(x: Tensor) -> None:
            x = _tensor_of(x).detach()[..., site.channels.to(x.device)].float()
            mask = state["mask"]
            if x.dim() == 3 and mask is not None:
                weights = mask.to(x.device, torch.float32).unsqueeze(-1)
            else:
                weights = torch.ones(*x.shape[:-1], 1, device=x.device)
            total = (x * weights).sum(dim=-2)  # [batch, c]
            count = weights.sum(dim=-2)  # [batch, 1]
            per_sample[i].append((total / count).double().cpu())
            acc = sums[i].setdefault(state["lang"], [0.0, 0.0])
            acc[0] = acc[0] + total.sum(dim=0).double().cpu()
            acc[1] += float(count.sum())

        if site.on_input:
            return lambda module, args: take(args[0])
        return lambda module, args, output: take(output)

    handles = []
    for i, site in enumerate(sites):
        module = model.get_submodule(site.module)
        hook = recorder(i, site)
        register = (
            module.register_forward_pre_hook if site.on_input else module.register_forward_hook
        )
        handles.append(register(hook))
    try:
        with modes_kept(model, training=False), torch.no_grad():
            for lang, windows in samples.items():
                state["lang"] = lang
                for batch in iter_batches(windows, batch_size):
                    inputs = {k: v.to(device) for k, v in lm_inputs(batch).items() if k != "labels"}
                    mask = inputs.get("attention_mask")
                    state["mask"] = None if mask is None else mask.bool()
                    model(**inputs, use_cache=False)
                    langs += [lang] * batch.shape[0]
    finally:
        for h in handles:
            h.remove()
    return [
        Stats(
            torch.cat(per_sample[i]).float(),
            tuple(langs),
            {lang: (acc[0] / acc[1]).float() for lang, acc in sums[i].items()},
        )
        for i in range(len(sites))
    ]
