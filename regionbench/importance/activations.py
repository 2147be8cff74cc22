"""Activation metrics: importance from forward passes over the importance samples (no gradient),
recorded by forward hooks that are removed before the function returns.

    scores = lape(model, params, batches)        # {"model.layers.0:neuron": p per neuron, ...}
    scores = mean_activation(model, params, batches)   # neurons and heads: mean |activation|
    scores = wanda(model, params, batches)       # {param: |W_ij| · ‖X_j‖₂}, every scoped matrix

They are `METRICS` entries like the gradient metrics (`metric=lape`), computed on the same
samples, cached the same way, one language at a time. `lape` and `activation` score whole units,
under each block's unit key (`LayerUnits.key`); `wanda` scores every entry of the scope's
matrices, so any region kind takes it.

* `lape` (Tang et al., ACL 2024): p_ℓ(j) = the share of language ℓ's tokens on which neuron j's
  activation (act_fn(gate_proj(x)) in a gated FFN, as LAPE reads it; see `models.units`) is > 0.
  The entropy over languages and LAPE's filter and budget are the `specific` pick's
  (`regions.kinds`): `metric=lape region=neurons region.pick=specific region.per_layer=false
  ratio=0.01` is LAPE's selection.
* `activation`: the mean |activation| over the tokens (a head's: over its hd channels too).
* `wanda` (Sun et al. 2023): |W_ij| · ‖X_j‖₂, X_j the matrix's input feature j over every token
  of the samples (their 1/√N is a constant factor, left out: the ranking is the same).

Padding (`importance.packing=documents`) is left out of every statistic: only real tokens count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from regionbench.common.packing import lm_inputs
from regionbench.common.torchtools import modes_kept
from regionbench.models.residual import _axes, _is_matrix_layer
from regionbench.models.units import HEAD, NEURON, LayerUnits, units_of

# (the tensor the hook sees [..., channels], the mask of real tokens [...]) -> None
Record = Callable[[Tensor, Tensor], None]


class _Tokens:
    """The real-token mask of the batch being run, for the hooks."""

    mask: Tensor | None = None

    def real(self, x: Tensor) -> Tensor:
        """x's rows [tokens, channels] at real tokens (all of them when the shapes differ)."""
        rows = x.detach().reshape(-1, x.shape[-1])
        if self.mask is not None and self.mask.numel() == rows.shape[0]:
            return rows[self.mask.reshape(-1).to(rows.device)]
        return rows


@contextlib.contextmanager
def _hooked(model: nn.Module, sites: list[tuple[nn.Module, bool, Record]], tokens: _Tokens):
    """Forward hooks calling each site's `record` with its input (True) or output, removed on
    exit."""

    def make(record: Record, on_input: bool):
        def hook(module, args, output):
            x = args[0] if on_input else output
            if isinstance(x, tuple):
                x = x[0]
            record(tokens.real(x), None)

        return hook

    handles = [m.register_forward_hook(make(rec, inp)) for m, inp, rec in sites]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(
    model: nn.Module, batches: Iterable[Tensor], sites, *, progress: bool = False, desc: str = ""
) -> None:
    """Forward passes over `batches` (eval mode, no gradient) with the sites' hooks on."""
    from tqdm.auto import tqdm

    from regionbench.importance.compute import _input_device

    device, tokens = _input_device(model), _Tokens()
    batches = list(batches)
    with _hooked(model, sites, tokens), modes_kept(model, training=False), torch.no_grad():
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            inputs = {k: v.to(device) for k, v in lm_inputs(batch).items() if k != "labels"}
            mask = inputs.get("attention_mask")
            tokens.mask = None if mask is None else mask.bool()
            model(**inputs, use_cache=False)


def _site(model: nn.Module, lu: LayerUnits) -> nn.Module:
    return model.get_submodule(lu.site)


class _Sum:
    """Per-channel sums of a statistic and the token count, in float64 on the tensor's device."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn, self.total, self.tokens = fn, None, 0

    def __call__(self, rows: Tensor, _=None) -> None:
        part = self.fn(rows.double()).sum(dim=0)
        self.total = part if self.total is None else self.total + part
        self.tokens += rows.shape[0]

    def mean(self) -> Tensor:
        if self.total is None or not self.tokens:
            raise ValueError("no token reached the recorded module")
        return (self.total / self.tokens).float().cpu()


def lape(model: nn.Module, params, batches: Iterable[Tensor], **kw) -> dict[str, Tensor]:
    """{neuron key of each block: p(activation > 0) per neuron} (LAPE's activation
    probability)."""
    layers = units_of(model, NEURON)
    sums = {lu.key: _Sum(lambda a: (a > 0).double()) for lu in layers}
    sites = [(_site(model, lu), lu.site_input, sums[lu.key]) for lu in layers]
    _run(model, batches, sites, **kw)
    return {key: s.mean() for key, s in sums.items()}


def mean_activation(model: nn.Module, params, batches: Iterable[Tensor], **kw) -> dict[str, Tensor]:
    """{unit key of each block: mean |activation| per neuron, and per head over its channels}."""
    layers = [*units_of(model, NEURON), *units_of(model, HEAD)]
    sums = {lu.key: _Sum(torch.abs) for lu in layers}
    sites = [(_site(model, lu), lu.site_input, sums[lu.key]) for lu in layers]
    _run(model, batches, sites, **kw)
    out = {}
    for lu in layers:
        per_channel = sums[lu.key].mean()
        out[lu.key] = per_channel.reshape(lu.count, lu.width).mean(dim=1)
    return out


def wanda(model: nn.Module, params, batches: Iterable[Tensor], **kw) -> dict[str, Tensor]:
    """{param: |W_ij| · ‖X_j‖₂} for every scoped matrix weight (Sun et al. 2023)."""
    owners = {}
    for mname, module in model.named_modules():
        if _is_matrix_layer(module):
            owners[f"{mname}.weight" if mname else "weight"] = module
    odd = [n for n in params if n not in owners]
    if odd:
        raise ValueError(
            f"metric wanda scores the weights of linear layers; {odd[0]!r} is not one "
            "(importance.scope=matrices, or exclude it)"
        )
    sums = {name: _Sum(torch.square) for name in params}
    sites = [(owners[name], True, sums[name]) for name in params]
    _run(model, batches, sites, **kw)
    out = {}
    for name, p in params.items():
        norm = (sums[name].total.float().cpu().sqrt()) if sums[name].total is not None else None
        if norm is None:
            raise ValueError(f"metric wanda: {name!r} never ran in a forward pass")
        in_axis = _axes(owners[name])[0]
        shape = [1, 1]
        shape[in_axis] = -1
        out[name] = p.detach().float().cpu().abs() * norm.reshape(shape)
    return out


def iter_activation_scores(
    model: nn.Module,
    samples,
    fn: Callable,
    params,
    *,
    batch_size: int,
    progress: bool,
    name: str,
) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """(language, scores) of the activation metric `fn` on each language's samples in turn."""
    from regionbench.importance.compute import iter_batches

    for lang, windows in samples.items():
        batches = iter_batches(windows, batch_size)
        yield lang, fn(model, params, batches, progress=progress, desc=f"{name} [{lang}]")
