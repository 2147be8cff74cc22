"""Where the block matrices meet the residual stream, for every architecture.

    sides = residual_sides(model)     # {param name: Side(role, axis, layer, module)}
    sides["model.layers.1.mlp.down_proj.weight"]    # Side(role="writes", axis=0, layer=1, ...)

A hidden dimension of the residual stream is read by the first matrices of each sublayer (q/k/v,
gate/up; GPT-2's c_attn, c_fc; OPT's fc1) and written by the last one (o_proj, down_proj, c_proj,
dense, fc2...). The paper's §3.3 finding is about these dimensions: the core region concentrates
on a few of them, and a single weight there can destroy a model. This module finds, for each
weight matrix of the blocks, whether it reads or writes the stream and which of its axes indexes
the hidden dimension (nn.Linear is [out, in]; GPT-2's Conv1D is [in, out]). It does not trust
names or declaration order (Phi-3 declares o_proj before qkv_proj): it runs the model once on a
few tokens and follows the data. Among the matrices of one module (an attention, an MLP, or a
block that holds fc1/fc2 itself), a matrix whose input depends on none of its siblings reads the
stream, and one whose output feeds none of them writes it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from regionbench.common.torchtools import modes_kept
from regionbench.models.scope import transformer_blocks

_SIDES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its sides (per process)


@dataclass(frozen=True)
class Side:
    """How one weight matrix meets the residual stream."""

    role: str  # "reads" (its input is the hidden state) or "writes" (its output is added to it)
    axis: int  # the weight's axis that indexes hidden dimensions
    layer: int  # the block's index
    module: str  # the module within its block, e.g. "mlp.down_proj"


def hidden_size(model: nn.Module) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    size = getattr(config, "hidden_size", None)
    if not size:
        raise ValueError(f"{type(model).__name__} has no hidden_size in its config")
    return int(size)


def _is_matrix_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _axes(layer: nn.Module) -> tuple[int, int]:
    """(axis of the input, axis of the output) of its weight."""
    return (1, 0) if isinstance(layer, nn.Linear) else (0, 1)  # Conv1D stores [in, out]


def residual_sides(model: nn.Module) -> dict[str, Side]:
    """{weight name: Side} for every block matrix that reads or writes the residual stream."""
    if model in _SIDES:
        return _SIDES[model]
    hidden = hidden_size(model)
    flow = _dataflow(model)
    out = {}
    for index, (prefix, block) in enumerate(transformer_blocks(model)):
        for path, module in block.named_modules():
            group = [(n, c) for n, c in module.named_children() if _is_matrix_layer(c)]
            for name, layer in group:
                siblings = [c for _, c in group if c is not layer]
                reads = not any(flow.feeds(s, layer) for s in siblings)
                writes = bool(siblings) and not any(flow.feeds(layer, s) for s in siblings)
                in_axis, out_axis = _axes(layer)
                local = f"{path}.{name}" if path else name
                if writes and layer.weight.shape[out_axis] == hidden:
                    out[f"{prefix}.{local}.weight"] = Side("writes", out_axis, index, local)
                elif reads and layer.weight.shape[in_axis] == hidden:
                    out[f"{prefix}.{local}.weight"] = Side("reads", in_axis, index, local)
    if not out:
        raise ValueError(
            f"found no block matrix of {type(model).__name__} that reads or writes its "
            f"{hidden}-dimensional residual stream"
        )
    _SIDES[model] = out
    return out


class _Flow:
    """Which matrix layer's output reaches which one's input, from one forward pass."""

    def __init__(self, records: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]):
        self.records = records

    def feeds(self, source: nn.Module, target: nn.Module) -> bool:
        if source not in self.records or target not in self.records:
            return False
        (_, out), (inp, _) = self.records[source], self.records[target]
        grad = torch.autograd.grad(inp.sum(), out, allow_unused=True, retain_graph=True)[0]
        return grad is not None


def _dataflow(model: nn.Module) -> _Flow:
    """Run the model on four tokens with autograd on, recording every matrix layer's input and
    output (the hidden states are made to require grad, whatever the parameters' flags)."""
    records: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, args, output):
        records[module] = (args[0], output)

    layers = [m for _, b in transformer_blocks(model) for m in b.modules() if _is_matrix_layer(m)]
    probe_forward(model, layers, record)
    return _Flow(records)


def probe_forward(model: nn.Module, modules, record) -> None:
    """One forward pass of four tokens in eval mode with `record(module, args, output)` hooked
    on `modules` and the embeddings' output made a leaf that requires grad (so a recorded
    output can be differentiated with respect to the stream); the hooks are removed after."""
    handles = [m.register_forward_hook(record) for m in modules]
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda m, a, out: out.detach().requires_grad_()))
    ids = torch.arange(1, 5, device=emb.weight.device).unsqueeze(0) % emb.weight.shape[0]
    try:
        with torch.enable_grad(), modes_kept(model, training=False):  # no dropout
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
