"""Units of the transformer blocks — FFN neurons and attention heads — found from the model, with
the weight entries each one owns and where its activation can be read.

    for lu in neuron_units(model):     # one LayerUnits per block: lu.count neurons
        lu.pieces                      # (param, axis, indices per group, member units)
        lu.site, lu.site_input         # the module whose output (or input) holds the activations
    head_units(model)                  # the same for attention heads

A *neuron* j of a block is input channel j of its FFN's writer (the matrix that writes the
residual stream: down_proj, fc2, c_proj, dense_4h_to_h): its row j of every FFN reader (gate_proj
and up_proj, fc1, c_fc, dense_h_to_4h; rows j and I+j of a fused [gate | up]) and its column j of
the writer (nn.Linear stores [out, in]; GPT-2's Conv1D [in, out], so there rows and columns
swap). A *head* h is input channels [h·hd, (h+1)·hd) of the attention writer (o_proj, dense,
out_proj, c_proj): those rows of q, and the rows of its key/value group g = h // (H / KV) in k and
v. A group's k/v rows belong to all of its heads at once (grouped-query attention shares them),
so a region holds them only when it holds every head of the group; a head's own entries are its q
rows and o columns. Biases of the readers (Qwen2's q/k/v, OPT's fc1, GPT-2's c_fc...) are the
unit's entries too when the scope has them; a writer's bias is in the hidden space, nobody's.

Found, as `residual_sides` is, from the model's structure and one forward pass, not from names:
the readers and the writer of each sublayer are the residual stream's (`residual_sides`), and a
sublayer is attention when its writer's input at the last position depends on its readers'
outputs at the first position (attention mixes positions, an FFN never does). The shapes give the
rest — with H heads (`config.num_attention_heads`), hd = the writer's input / H, and q, k and v
tell themselves apart by their sizes (H·hd against KV·hd) — except for fused projections, whose
row layout no shape tells: `FUSED_QKV` and `FUSED_GATE_UP` name it per architecture
(`config.model_type`); another architecture with a fused projection is a one-line error.

A neuron's activation (what LAPE counts and `activation` averages) is the output of the FFN's
activation function (LLaMA's act_fn(gate_proj(x)), before the product with up_proj, as LAPE
reads it; in a non-gated FFN the writer's input): the first parameterless module of the FFN that
maps a reader's output to I channels feeding the writer, else the writer's input. A head's
activation is its slice of the attention writer's input (its output before o_proj).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regionbench.models.residual import _axes, probe_forward, residual_sides
from regionbench.models.scope import transformer_blocks

NEURON = "neuron"
HEAD = "head"

# Fused q/k/v projections: "qkv" = [q | k | v] blocks (GPT-2's c_attn, Phi-3's qkv_proj),
# "per_head" = per head [q_h | k_h | v_h] (GPT-NeoX, BLOOM: `view(..., heads, 3, hd)`).
FUSED_QKV = {"gpt2": "qkv", "phi3": "qkv", "gpt_neox": "per_head", "bloom": "per_head"}
# Fused gate/up projections: rows [0, I) gate, [I, 2I) up (Phi-3's gate_up_proj, `chunk(2)`).
FUSED_GATE_UP = {"phi3": "gate_up"}

_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {unit: [LayerUnits]}


@dataclass(frozen=True)
class Piece:
    """The entries of one parameter that belong to a block's units: along `axis`, the indices
    `index[g]` of each group g, which belong to the units `members[g]` together (a neuron's row is
    its own group; a k/v row group is shared by the heads of its query group)."""

    param: str
    axis: int
    index: Tensor  # [groups, indices] int64
    members: Tensor  # [groups, members] int64

    def chosen(self, selected: Tensor) -> Tensor:
        """The indices along `axis` of the groups whose every member is `selected` ([count])."""
        whole = selected[self.members].all(dim=1)
        return self.index[whole].reshape(-1)


@dataclass(frozen=True)
class LayerUnits:
    """The neurons or heads of one block."""

    unit: str  # NEURON or HEAD
    layer: int  # the block's index
    block: str  # its qualified name, e.g. "model.layers.3"
    count: int
    pieces: tuple[Piece, ...]
    site: str  # the module holding the activations, e.g. "model.layers.3.mlp.act_fn"
    site_input: bool  # in the site's input (a writer), not its output (an activation module)
    width: int  # activation channels per unit at the site: 1 (neuron) or hd (head)

    @property
    def key(self) -> str:
        """The name of this block's unit scores in a score dict (activation metrics)."""
        return f"{self.block}:{self.unit}"


def neuron_units(model: nn.Module) -> list[LayerUnits]:
    """The FFN neurons of every block (see the module docstring)."""
    return _units(model)[NEURON]


def head_units(model: nn.Module) -> list[LayerUnits]:
    """The attention heads of every block (see the module docstring)."""
    return _units(model)[HEAD]


def units_of(model: nn.Module, unit: str) -> list[LayerUnits]:
    """`neuron_units` or `head_units` by the unit's name (NEURON, HEAD)."""
    found = _units(model)
    if unit not in found:
        raise ValueError(f"unknown unit {unit!r}; choices: {', '.join(found)}")
    return found[unit]


@dataclass
class _Sublayer:
    layer: int
    block: str
    container: nn.Module  # the module holding the readers and the writer (may be the block)
    readers: list[tuple[str, nn.Module]]  # (name within the block, module)
    writer: tuple[str, nn.Module]
    others: list[nn.Module]  # the other sublayers' containers inside this one (OPT's self_attn)


def _units(model: nn.Module) -> dict[str, list[LayerUnits]]:
    if model in _FOUND:
        return _FOUND[model]
    subs = _sublayers(model)
    flow = _Flow(model, subs)
    found: dict[str, list[LayerUnits]] = {NEURON: [], HEAD: []}
    for sub in subs:
        if flow.mixes_positions(sub):
            found[HEAD].append(_heads(model, sub))
        else:
            found[NEURON].append(_neurons(model, sub, flow))
    for unit, layers in found.items():
        if len({lu.layer for lu in layers}) != len(layers):
            raise ValueError(
                f"{type(model).__name__}: a block has more than one {unit} sublayer "
                "(mixture of experts?): its units are not supported"
            )
    _FOUND[model] = found
    return found


def _sublayers(model: nn.Module) -> list[_Sublayer]:
    """Each block's sublayers: the matrices of one module that read the residual stream and the
    one that writes it."""
    sides = residual_sides(model)
    blocks = transformer_blocks(model)
    groups: dict[tuple[int, str], dict[str, list[str]]] = {}
    for side in sides.values():
        path = side.module.rsplit(".", 1)[0] if "." in side.module else ""
        group = groups.setdefault((side.layer, path), {"reads": [], "writes": []})
        group[side.role].append(side.module)
    out = []
    for (layer, path), group in sorted(groups.items()):
        block_name, block = blocks[layer]
        if len(group["writes"]) != 1 or not group["reads"]:
            continue  # a stray matrix, not a sublayer
        readers = [(n, block.get_submodule(n)) for n in group["reads"]]
        name = group["writes"][0]
        container = block.get_submodule(path) if path else block
        others = [
            block.get_submodule(p) if p else block
            for (lay, p) in groups
            if lay == layer and p != path and (not path or p.startswith(f"{path}."))
        ]
        out.append(
            _Sublayer(
                layer, block_name, container, readers, (name, block.get_submodule(name)), others
            )
        )
    return out


def _loose_modules(sub: _Sublayer) -> list[nn.Module]:
    """The parameterless modules of a sublayer's container, outside the other sublayers."""
    inside = {id(m) for o in sub.others for m in o.modules()}
    return [
        m
        for m in sub.container.modules()
        if id(m) not in inside and next(m.parameters(), None) is None
    ]


class _Flow:
    """One forward pass on four tokens, recording each sublayer matrix's input and output and
    each parameterless module's, with autograd on the hidden states."""

    def __init__(self, model: nn.Module, subs: list[_Sublayer]):
        self.records: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        self.order: dict[nn.Module, int] = {}

        def record(module, args, output):
            tensors = args and torch.is_tensor(args[0]) and torch.is_tensor(output)
            if tensors and module not in self.records:
                self.records[module] = (args[0], output)
                self.order[module] = len(self.order)

        watched = [m for s in subs for m in [*(r for _, r in s.readers), s.writer[1]]]
        watched += [m for s in subs for m in _loose_modules(s)]
        probe_forward(model, list({id(m): m for m in watched}.values()), record)

    def _grads(self, output: Tensor, inputs: list[Tensor]) -> list[Tensor | None]:
        inputs = [t for t in inputs if t.requires_grad]
        if not inputs or not output.requires_grad:
            return []
        return list(torch.autograd.grad(output, inputs, allow_unused=True, retain_graph=True))

    def _writer_input(self, sub: _Sublayer) -> Tensor:
        if sub.writer[1] not in self.records:
            raise ValueError(f"{sub.block}.{sub.writer[0]} did not run in a forward pass")
        return self.records[sub.writer[1]][0]

    def mixes_positions(self, sub: _Sublayer) -> bool:
        """Whether the writer's input at the last position depends on a reader's output at the
        first: attention does, an FFN never."""
        outs = [self.records[r][1] for _, r in sub.readers if r in self.records]
        grads = self._grads(self._writer_input(sub)[:, -1].float().sum(), outs)
        return any(g is not None and bool(g[:, 0].abs().sum() > 0) for g in grads)

    def activation_module(self, sub: _Sublayer, channels: int) -> nn.Module | None:
        """The FFN's activation function: the first parameterless module to run whose output
        has `channels` channels, depends on a reader's output and feeds the writer."""
        writer_in = self._writer_input(sub)
        reader_outs = [self.records[r][1] for _, r in sub.readers if r in self.records]
        for m in sorted(
            (m for m in _loose_modules(sub) if m in self.records), key=lambda m: self.order[m]
        ):
            out = self.records[m][1]
            if out.shape[-1] != channels:
                continue
            from_reader = any(g is not None for g in self._grads(out.float().sum(), reader_outs))
            to_writer = any(g is not None for g in self._grads(writer_in.float().sum(), [out]))
            if from_reader and to_writer:
                return m
        return None


def _arch(model: nn.Module) -> str:
    config = getattr(model.config, "text_config", None) or model.config
    return str(getattr(config, "model_type", type(model).__name__))


def _out_size(module: nn.Module) -> int:
    return int(module.weight.shape[_axes(module)[1]])


def _in_size(module: nn.Module) -> int:
    return int(module.weight.shape[_axes(module)[0]])


def _pieces(
    prefix: str, module: nn.Module, axis_of: str, index: Tensor, members: Tensor
) -> list[Piece]:
    """A matrix's piece along its output ("out": rows of nn.Linear) or input ("in") axis, and
    its bias's along the output axis (a reader's)."""
    in_axis, out_axis = _axes(module)
    pieces = [Piece(f"{prefix}.weight", out_axis if axis_of == "out" else in_axis, index, members)]
    bias = getattr(module, "bias", None)
    if axis_of == "out" and isinstance(bias, nn.Parameter):
        pieces.append(Piece(f"{prefix}.bias", 0, index, members))
    return pieces


def _each(count: int) -> Tensor:
    return torch.arange(count).unsqueeze(1)


def _blocks_of(count: int, width: int, offset: int = 0) -> Tensor:
    """[count, width]: the indices offset + i·width + d."""
    return offset + torch.arange(count).unsqueeze(1) * width + torch.arange(width)


def _neurons(model: nn.Module, sub: _Sublayer, flow: _Flow) -> LayerUnits:
    wname, writer = sub.writer
    count = _in_size(writer)
    pieces = _pieces(f"{sub.block}.{wname}", writer, "in", _each(count), _each(count))
    for rname, reader in sub.readers:
        size, prefix = _out_size(reader), f"{sub.block}.{rname}"
        if size == count:
            index = _each(count)
        elif size == 2 * count and FUSED_GATE_UP.get(_arch(model)) == "gate_up":
            index = torch.stack([torch.arange(count), count + torch.arange(count)], dim=1)
        else:
            known = ", ".join(sorted(FUSED_GATE_UP)) or "none"
            raise ValueError(
                f"neurons of {_arch(model)!r}: its FFN reader {prefix} has {size} outputs for "
                f"{count} neurons, a fused layout regionbench does not know (known: {known})"
            )
        pieces += _pieces(prefix, reader, "out", index, _each(count))
    act = flow.activation_module(sub, count)
    site = _name_in(model, act) if act is not None else f"{sub.block}.{wname}"
    return LayerUnits(
        NEURON, sub.layer, sub.block, count, tuple(pieces), site, act is None, width=1
    )


def _heads(model: nn.Module, sub: _Sublayer) -> LayerUnits:
    config = getattr(model.config, "text_config", None) or model.config
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    wname, writer = sub.writer
    width = _in_size(writer)
    if heads < 1 or width % heads:
        raise ValueError(
            f"heads of {_arch(model)!r}: config.num_attention_heads {heads} does not divide the "
            f"{width} inputs of {sub.block}.{wname}"
        )
    hd = width // heads
    own = _blocks_of(heads, hd)
    pieces = _pieces(f"{sub.block}.{wname}", writer, "in", own, _each(heads))
    if len(sub.readers) == 1:  # fused q/k/v
        rname, reader = sub.readers[0]
        pieces += _fused_qkv(model, f"{sub.block}.{rname}", reader, heads, hd)
    else:
        for rname, reader in sub.readers:
            size, prefix = _out_size(reader), f"{sub.block}.{rname}"
            if size == width:  # q (or k/v of multi-head attention: the same rows)
                pieces += _pieces(prefix, reader, "out", own, _each(heads))
            elif size % hd == 0 and heads % (size // hd) == 0:  # k or v of a query group
                kv = size // hd
                members = _blocks_of(kv, heads // kv)
                pieces += _pieces(prefix, reader, "out", _blocks_of(kv, hd), members)
            else:
                raise ValueError(
                    f"heads of {_arch(model)!r}: {prefix} has {size} outputs, neither "
                    f"{heads} heads × {hd} nor a key/value group size"
                )
    return LayerUnits(
        HEAD, sub.layer, sub.block, heads, tuple(pieces), f"{sub.block}.{wname}", True, width=hd
    )


def _fused_qkv(model: nn.Module, prefix: str, reader: nn.Module, heads: int, hd: int):
    layout, size = FUSED_QKV.get(_arch(model)), _out_size(reader)
    kv2 = size // hd - heads  # 2·KV
    if layout is None or size % hd or kv2 < 2 or kv2 % 2 or heads % (kv2 // 2):
        known = ", ".join(sorted(FUSED_QKV))
        raise ValueError(
            f"heads of {_arch(model)!r}: {prefix} projects q, k and v with one matrix "
            f"({size} outputs) whose layout regionbench does not know; known: {known}"
        )
    kv = kv2 // 2
    if layout == "per_head":
        if kv != heads:
            raise ValueError(f"heads of {_arch(model)!r}: interleaved q/k/v needs KV = heads")
        return _pieces(prefix, reader, "out", _blocks_of(heads, 3 * hd), _each(heads))
    groups = _blocks_of(kv, heads // kv)
    return [
        *_pieces(prefix, reader, "out", _blocks_of(heads, hd), _each(heads)),
        *_pieces(prefix, reader, "out", _blocks_of(kv, hd, heads * hd), groups),
        *_pieces(prefix, reader, "out", _blocks_of(kv, hd, (heads + kv) * hd), groups),
    ]


def _name_in(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module not in the model")
