"""Regions made of residual-stream dimensions or of single coordinates, and where a region lives.

    sides = residual_sides(model)
    dimension_region(model, sides, [2100], layers=[1])     # every entry reading or writing dim 2100
    dimension_region(model, sides, [2100], everywhere=True)   # and the embeddings', norms', ...
    coordinates_region(model, ["model.layers.1.mlp.down_proj.weight[2100, 3]"])
    profile(region, residual_sides(model), hidden_size(model))   # entries per hidden dimension

The paper's §3.3: the core region is not spread evenly over the hidden dimensions but
concentrates on a few, and perturbing one parameter there can destroy a model. A dimension d of
the residual stream is the column d of every matrix that reads the stream and the row d of every
matrix that writes it (`regionbench.models.residual`). That is all a dimension region takes
by default: removing it leaves the embedding writing d, every norm counting d in its statistics
(and scaling it by its gain) and `lm_head` reading it; `everywhere=True` also takes d's entries of
those (`stream_vectors`), so that removal silences d in the whole stream. `profile` counts a region's entries per
dimension, so "is the core concentrated?" becomes the share of the region in its top-d
dimensions against the d / hidden share an evenly spread region would have. Outlier-aware
selections (`around_dims`) take the core with given dimensions left out (refilled from the
next-ranked entries, at equal size) or only on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from regionbench.common import names
from regionbench.models.residual import Side, hidden_size, residual_sides
from regionbench.models.scope import transformer_blocks
from regionbench.regions.region import Region
from regionbench.regions.select import exact_k, topk_mask

_COORD = re.compile(r"^\s*([\w.]+)\s*\[\s*(\d+)\s*(?:,\s*(\d+)\s*)?\]\s*$")


def _dim_slice(shape: torch.Size, axis: int, dims: Sequence[int]) -> Tensor:
    """Bool mask of the entries of a `shape` tensor on hidden dimensions `dims` along `axis`."""
    mask = torch.zeros(shape, dtype=torch.bool)
    index = torch.tensor(sorted(set(dims)), dtype=torch.long)
    mask.index_fill_(axis, index, True)
    return mask


def _is_matrix_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _is_stream_norm(module: nn.Module, own: dict, below: str | None, hidden: int) -> bool:
    """A leaf whose own parameters are all vectors over the stream (a norm's gain and bias),
    outside the blocks or a block's own child (not inside its attention or MLP)."""
    if not own or list(module.children()) or (below is not None and "." in below):
        return False
    return all(p.dim() == 1 and p.shape[0] == hidden for p in own.values())


def stream_vectors(model: nn.Module, sides: Mapping[str, Side]) -> dict[str, int]:
    """{parameter name: its axis of hidden dimensions} for every parameter outside the block
    matrices through which a residual-stream dimension enters, leaves or is scaled: the input
    embedding and learned position embeddings as wide as the stream (column d), `lm_head`
    (column d; a tied one is the embedding's tensor, named once), projections between the
    embedding and the stream (OPT's project_in: row d, project_out: column d), the weight and
    bias of every norm over the stream (entry d: each block's norms and the final one; a norm
    inside an attention or MLP, such as a q/k norm, is over other axes and is left out), and the
    bias of every block matrix that writes the stream (entry d). What `region.everywhere` adds."""
    hidden = hidden_size(model)
    names = {id(p): n for n, p in model.named_parameters()}  # a tied tensor: its first name
    blocks = [prefix for prefix, _ in transformer_blocks(model)]
    out: dict[str, int] = {}

    def add(param, axis: int) -> None:
        if param is not None and id(param) in names:
            out.setdefault(names[id(param)], axis)

    def in_blocks(path: str) -> str | None:
        """The path below its block ("ln_1", "attn.c_proj"), None outside every block."""
        for prefix in blocks:
            if path.startswith(prefix + "."):
                return path[len(prefix) + 1 :]
        return None

    head = model.get_output_embeddings()
    if isinstance(head, nn.Linear) and head.in_features == hidden:
        add(head.weight, 1)
    for path, module in model.named_modules():
        below = in_blocks(path)
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, nn.Embedding):
            if below is None and module.embedding_dim == hidden:
                add(module.weight, 1)
        elif _is_matrix_layer(module):
            if below is None and module is not head and isinstance(module, nn.Linear):
                if module.out_features == hidden:  # writes the stream
                    add(module.weight, 0)
                    add(module.bias, 0)
                elif module.in_features == hidden:  # reads it
                    add(module.weight, 1)
        elif _is_stream_norm(module, own, below, hidden):
            for param in own.values():
                add(param, 0)
    for name, side in sides.items():
        if side.role == "writes":
            writer = model.get_submodule(name.removesuffix(".weight"))
            bias = getattr(writer, "bias", None)
            if bias is not None and bias.dim() == 1 and bias.shape[0] == hidden:
                add(bias, 0)
    return out


def dimension_region(
    model: nn.Module,
    sides: Mapping[str, Side],
    dims: Iterable[int],
    *,
    layers: Iterable[int] | None = None,
    modules: Iterable[str] | None = None,
    everywhere: bool = False,
    meta: dict | None = None,
) -> Region:
    """Every entry of the stream's readers and writers on hidden dimensions `dims`, optionally in
    blocks `layers` only and in modules whose name ends with one of `modules` only.

    Only block matrices: removing d leaves the embedding writing d, every norm counting it and
    `lm_head` reading it. `everywhere=True` also takes d's entries of those (`stream_vectors`),
    so that removing the region zeroes d in the stream from the embedding on (a position
    encoding that is a buffer, as XGLM's sinusoids, still writes it)."""
    dims, hidden = sorted(set(int(d) for d in dims)), hidden_size(model)
    if not dims:
        raise ValueError("region.dims is empty: name the hidden dimensions, e.g. [2100]")
    bad = [d for d in dims if not 0 <= d < hidden]
    if bad:
        raise ValueError(f"region.dims {bad} are outside the {hidden} hidden dimensions")
    layers = None if layers is None else set(layers)
    modules = None if modules is None else tuple(modules)
    params = dict(model.named_parameters())
    masks = {}
    for name, side in sides.items():
        chosen = (layers is None or side.layer in layers) and (
            modules is None or side.module.endswith(modules)
        )
        shape = params[name].shape
        masks[name] = (
            _dim_slice(shape, side.axis, dims) if chosen else torch.zeros(shape, dtype=bool)
        )
    if not any(m.any() for m in masks.values()):
        raise ValueError(
            f"region.layers {sorted(layers or [])} / region.modules {list(modules or [])} leave "
            f"no matrix; modules look like {sorted({s.module for s in sides.values()})}"
        )
    if everywhere:
        if layers is not None or modules is not None:
            raise ValueError(
                "region.everywhere=true takes dimension d in every block and outside them: "
                "drop region.layers and region.modules"
            )
        for name, axis in stream_vectors(model, sides).items():
            masks[name] = _dim_slice(params[name].shape, axis, dims)
    info = {"dims": json.dumps(dims)} | ({"everywhere": "true"} if everywhere else {})
    return Region(masks=masks, meta=info | (meta or {}))


def parse_coordinates(entries: Iterable[str] | str | Path) -> list[tuple[str, tuple[int, ...]]]:
    """`["name[i, j]", ...]`, or a file with one per line (or a JSON list of them)."""
    if isinstance(entries, str | Path) and Path(entries).is_file():
        text = Path(entries).read_text(encoding="utf-8")
        entries = json.loads(text) if text.lstrip().startswith("[") else text.splitlines()
    out = []
    for entry in entries:
        if not str(entry).strip() or str(entry).lstrip().startswith("#"):
            continue
        m = _COORD.match(str(entry))
        if m is None:
            raise ValueError(f"coordinate {entry!r} is not 'param.name[row, col]' (or [index])")
        out.append((m.group(1), tuple(int(g) for g in m.groups()[1:] if g is not None)))
    if not out:
        raise ValueError("no coordinates given: region.coordinates=['<param>[row, col]', ...]")
    return out


def coordinates_region(model: nn.Module, entries, *, meta: dict | None = None) -> Region:
    """Exactly the listed `param[i, j]` entries (checked against the model's names and shapes)."""
    import difflib

    params = dict(model.named_parameters())
    masks: dict[str, Tensor] = {}
    for name, index in parse_coordinates(entries):
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"coordinate parameter {name!r} is not in the model{hint}")
        shape = tuple(params[name].shape)
        if len(index) != len(shape) or any(
            not 0 <= i < n for i, n in zip(index, shape, strict=False)
        ):
            raise ValueError(f"coordinate {name}{list(index)} is outside its shape {list(shape)}")
        masks.setdefault(name, torch.zeros(shape, dtype=torch.bool))[index] = True
    return Region(masks=masks, meta=dict(meta or {}))


def around_dims(
    scores: Mapping[str, Mapping[str, Tensor]],
    ratio: float,
    langs: Sequence[str],
    sides: Mapping[str, Side],
    dims: Iterable[int],
    *,
    only: bool,
    meta: dict | None = None,
) -> Region:
    """The core's selection (top ⌊ratio·numel⌋ of S per matrix) with the entries on hidden
    dimensions `dims` left out and refilled from the next-ranked ones (`only=False`:
    core_minus_outliers), or restricted to them, as many as there are up to the core's size
    (`only=True`: outliers)."""
    dims = sorted(set(dims))
    masks = {}
    for name in scores[langs[0]]:
        total = sum(scores[lang][name].float() for lang in langs)
        k = exact_k(ratio, total.numel())
        on = _dim_slice(total.shape, sides[name].axis, dims) if name in sides and dims else None
        if on is None:
            masks[name] = (
                torch.zeros(total.shape, dtype=torch.bool)
                if only
                else topk_mask(total, k, name=name)
            )
            continue
        if only:
            k = min(k, int(on.sum()))
            total = total.masked_fill(~on, float("-inf"))
        else:
            k = min(k, int((~on).sum()))
            total = total.masked_fill(on, float("-inf"))
        masks[name] = topk_mask(total, k, name=name)
    return Region(masks=masks, meta={"dims": json.dumps(dims)} | (meta or {}))


@dataclass(frozen=True)
class Profile:
    """A region's entries per hidden dimension (on the matrices that read or write the stream)."""

    per_dim: Tensor  # [hidden] int64
    on_stream: int  # the region's entries on those matrices

    def top_dims(self, d: int) -> list[int]:
        """The d dimensions holding most of the region (ties: lower dimension first)."""
        order = sorted(range(len(self.per_dim)), key=lambda i: (-int(self.per_dim[i]), i))
        return order[:d]

    def top_share(self, d: int) -> float:
        """Share of the region's stream entries in its top-d dimensions; an evenly spread region
        has d / hidden."""
        if not self.on_stream:
            return 0.0
        return float(self.per_dim[self.top_dims(d)].sum()) / self.on_stream

    def rows(self) -> list[dict]:
        """{dim, entries, share} for every dimension the region touches, most entries first."""
        total = max(self.on_stream, 1)
        return [
            {"dim": d, "entries": int(self.per_dim[d]), "share": int(self.per_dim[d]) / total}
            for d in self.top_dims(len(self.per_dim))
            if self.per_dim[d] > 0
        ]

    def share_on(self, dims: Iterable[int]) -> float:
        dims = list(dims)
        return float(self.per_dim[dims].sum()) / self.on_stream if self.on_stream and dims else 0.0


def profile_of(model: nn.Module, region: Region) -> Profile | None:
    """The region's profile over the model's hidden dimensions; None for a model whose residual
    stream regionbench cannot find."""
    try:
        sides = residual_sides(model)
    except ValueError:
        return None
    return profile(region, sides, hidden_size(model))


def profile(region: Region, sides: Mapping[str, Side], hidden: int) -> Profile:
    per_dim = torch.zeros(hidden, dtype=torch.long)
    for name, mask in region.masks.items():
        side = sides.get(name)
        if side is None:
            continue
        other = 1 - side.axis
        per_dim += mask.to(torch.long).sum(dim=other)
    return Profile(per_dim=per_dim, on_stream=int(per_dim.sum()))


def where_it_lives(model: nn.Module, region: Region, found: dict) -> tuple[dict, list, list]:
    """(metrics, `region_dims.csv` rows, entries per hidden dimension) of a region on a model
    whose massive-activation dimensions and super weights are `found` (`outliers.detect`)."""
    prof = profile_of(model, region) if region.numel else None
    contained = sum(
        bool(region.masks[w["param"]][tuple(w["index"])])
        for w in found["super_weights"]
        if w["param"] in region.masks
    )
    metrics = {names.OUTLIER_DIMS: float(len(found["dims"])), names.SUPER_WEIGHTS: float(contained)}
    if prof is None or not prof.on_stream:
        return metrics, [], []
    metrics |= {names.dim_share(d): prof.top_share(d) for d in (1, 4, 16)}
    metrics[names.OUTLIER_SHARE] = prof.share_on(found["dims"])
    return metrics, prof.rows(), prof.per_dim.tolist()
