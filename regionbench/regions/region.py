"""A region: a boolean mask per parameter, with the metadata of its origin, and its mask file.

    region.numel, region.fraction, region.summary()               # stats, region_summary.csv rows
    region.score_shares(scores)                                   # importance held per matrix
    region.save("core.safetensors"); Region.load("core.safetensors", model=model)

Mask files are safetensors with one packed-bit uint8 tensor per parameter (numpy.packbits,
big-endian bit order, C order) and string metadata (shapes, selected counts, a sha256 of the
bits, model, metric, region, ratio, languages, data fingerprint, regionbench version, and a sha256
of that metadata), so they load without the run that made them. `Region.load` checks every mask
against its shape, its count and the checksum, the metadata against its own checksum (an edited
`ratio` is damage, not a new region), and (given the model) names and shapes against the model,
before use. Files of format v1 (before the metadata had a checksum) still load, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from regionbench.common.cache import atomic_file, tensors_sha256

FORMAT = "regionbench-region-v2"  # v2: `meta_sha256` covers the metadata
OLD_FORMATS = ("regionbench-region-v1",)
log = logging.getLogger(__name__)


@dataclass
class Region:
    """A boolean mask per parameter (same shape) plus string metadata describing its origin."""

    masks: dict[str, Tensor]
    meta: dict[str, str] = field(default_factory=dict)
    # {param: (S held by the mask, S of the matrix)}, recorded by a selection that ranked the
    # language total S; `score_shares` then needs no scores read again
    held: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    @property
    def numel(self) -> int:
        """Number of selected entries."""
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def total(self) -> int:
        """Number of entries in scope (all masked tensors)."""
        return sum(m.numel() for m in self.masks.values())

    @property
    def fraction(self) -> float:
        total = self.total
        return self.numel / total if total else 0.0

    def summary(self) -> list[dict]:
        """Rows {layer, module, selected, numel, fraction} per (layer index, module), e.g.
        (3, "self_attn.q_proj"); a module's weight and bias share a row; layer is None for
        parameters outside numbered blocks."""
        rows: dict[tuple, dict] = {}
        for name, mask in self.masks.items():
            layer, module = split_name(name)
            row = rows.setdefault(
                (layer, module), {"layer": layer, "module": module, "selected": 0, "numel": 0}
            )
            row["selected"] += int(mask.sum())
            row["numel"] += mask.numel()
        out = sorted(rows.values(), key=lambda r: (r["layer"] is None, r["layer"] or 0))
        for row in out:
            row["fraction"] = row["selected"] / row["numel"] if row["numel"] else 0.0
        return out

    def score_shares(self, scores: Mapping[str, Mapping[str, Tensor]]) -> dict[tuple, float]:
        """{(layer, module): the share of S = Σ_ℓ score_ℓ over its matrices that the region's
        entries hold} from per-language `scores` {lang: {param: Tensor}} (a top-k region holds
        more than its share of the entries, a bottom-k less); {} unless every masked parameter
        has a score per entry (float64 sums of the languages; `held_shares` gives the same from
        what a selection of S saw, without reading the scores again)."""
        if not scores or any(
            name not in per or per[name].shape != mask.shape
            for per in scores.values()
            for name, mask in self.masks.items()
        ):
            return {}
        held: dict[tuple, list[float]] = {}
        for name, mask in self.masks.items():
            total = sum(per[name].detach().to("cpu", torch.float64) for per in scores.values())
            pair = held.setdefault(split_name(name), [0.0, 0.0])
            pair[0] += float(total[mask.to("cpu")].sum())
            pair[1] += float(total.sum())
        return {key: h / t if t > 0 else math.nan for key, (h, t) in held.items()}

    def held_shares(self) -> dict[tuple, float]:
        """`score_shares` from the S sums its selection recorded (`held`, fp32 S: equal to
        `score_shares` to fp32 rounding); {} for a region selected otherwise."""
        if not self.held or set(self.held) != set(self.masks):
            return {}
        sums: dict[tuple, list[float]] = {}
        for name, (part, whole) in self.held.items():
            pair = sums.setdefault(split_name(name), [0.0, 0.0])
            pair[0] += part
            pair[1] += whole
        return {key: h / t if t > 0 else math.nan for key, (h, t) in sums.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write a self-describing safetensors mask file (atomically); returns its path."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors, shapes, counts = {}, {}, {}
        for name, mask in self.masks.items():
            bits = mask.detach().to("cpu", torch.bool).contiguous().reshape(-1).numpy()
            tensors[name] = torch.from_numpy(np.packbits(bits))
            shapes[name] = list(mask.shape)
            counts[name] = int(bits.sum())
        metadata = {str(k): str(v) for k, v in self.meta.items()}
        metadata.update(
            {
                "format": FORMAT,
                "encoding": "numpy.packbits",
                "shapes": json.dumps(shapes),
                "counts": json.dumps(counts),
                "sha256": _digest(tensors, shapes, counts),
            }
        )
        metadata["meta_sha256"] = _meta_digest(metadata)
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module | None = None) -> Region:
        """Read a mask file written by `save` (no pickle: safetensors + JSON only).

        Every mask is checked before it is used: its packed size against its shape, its
        selected count against the file's counts, the bits against the file's sha256 (files of
        older versions have neither: size and padding only). With `model`, the names and shapes
        are checked against the model's parameters first: a file for another model is a
        one-line error naming the first parameter that does not fit."""
        from safetensors import safe_open

        where = f"region file {str(path)!r}"
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata() or {})
            if metadata.get("format") not in (FORMAT, *OLD_FORMATS):
                raise ValueError(
                    f"{str(path)!r} is not a regionbench region file "
                    f"(format {metadata.get('format')!r}, expected {FORMAT!r})"
                )
            _check_meta(metadata, where)
            try:
                shapes = json.loads(metadata.pop("shapes"))
                counts = json.loads(metadata.pop("counts", "null"))
                if not isinstance(shapes, dict) or not all(
                    isinstance(s, list) and all(isinstance(n, int) and n >= 0 for n in s)
                    for s in shapes.values()
                ):
                    raise ValueError("not {name: [sizes]}")
                if counts is not None and not isinstance(counts, dict):
                    raise ValueError("'counts' is not {name: count}")
            except (KeyError, ValueError) as err:
                raise ValueError(f"{where} has no valid metadata ({err})") from None
            names = set(f.keys())
            if set(shapes) != names:
                odd = sorted(names ^ set(shapes))[0]
                raise ValueError(
                    f"{where} is damaged: its 'shapes' metadata and its masks disagree on {odd!r}"
                )
            if model is not None:
                _check_fits(model, shapes, where, metadata.get("model_id"))
            digest = metadata.pop("sha256", None)
            packed = {name: f.get_tensor(name) for name in shapes}
        if digest is not None:
            tensors = {n: torch.from_numpy(b) for n, b in packed.items()}
            if _digest(tensors, shapes, counts) != digest:
                raise ValueError(f"{where} is damaged: its masks do not match their sha256")
        masks = {}
        for name, shape in shapes.items():
            count = math.prod(shape)
            bits = packed[name]
            if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (count + 7) // 8:
                raise ValueError(
                    f"{where}: mask {name!r} has {bits.size} packed bytes, its shape {shape} "
                    f"needs {(count + 7) // 8} (wrong 'shapes' metadata or a damaged file)"
                )
            unpacked = np.unpackbits(bits)
            if unpacked[count:].any():
                raise ValueError(f"{where} is damaged: mask {name!r} has bits beyond its shape")
            mask = torch.from_numpy(unpacked[:count].astype(bool)).reshape(shape)
            if counts is not None and int(mask.sum()) != counts.get(name):
                raise ValueError(
                    f"{where} is damaged: mask {name!r} selects {int(mask.sum())} entries, "
                    f"its 'counts' metadata says {counts.get(name)}"
                )
            masks[name] = mask
        for k in ("format", "encoding", "meta_sha256"):
            metadata.pop(k, None)
        return cls(masks=masks, meta=metadata)


def _digest(packed: Mapping[str, Tensor], shapes: Mapping, counts: Mapping | None) -> str:
    """sha256 of a mask file's content: the packed bits and the shapes and counts they need."""
    layout = json.dumps({"shapes": shapes, "counts": counts}, sort_keys=True)
    bits = tensors_sha256((n, packed[n]) for n in sorted(packed))
    return hashlib.sha256(f"{layout}\n{bits}".encode()).hexdigest()


# Covered by `sha256` with the bits (so that a forged size is named as such), not by meta_sha256.
_LAYOUT_KEYS = ("sha256", "meta_sha256", "shapes", "counts")


def _meta_digest(metadata: Mapping[str, str]) -> str:
    """sha256 of a mask file's metadata: its origin (model, metric, region, ratio, languages,
    fingerprints, version) and format."""
    meta = {k: v for k, v in metadata.items() if k not in _LAYOUT_KEYS}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _check_meta(metadata: Mapping[str, str], where: str) -> None:
    """The metadata matches its checksum (format v2), or a v1 file says once that it has none."""
    if metadata.get("format") in OLD_FORMATS:
        log.warning(
            "%s is of format %s: its metadata (ratio, model, metric, ...) has no checksum, so an "
            "edit of it cannot be told; save the region again to give it one",
            where,
            metadata["format"],
        )
        return
    if metadata.get("meta_sha256") != _meta_digest(metadata):
        raise ValueError(
            f"{where} is damaged: its metadata (model, metric, region, ratio, languages, ...) "
            "does not match its sha256: edited or corrupt; use the file the run saved, or make "
            "the region again"
        )


def _check_fits(model, shapes: Mapping[str, list], where: str, model_id: str | None) -> None:
    """A one-line error naming the first parameter of the file that `model` lacks or has in
    another shape."""
    import difflib

    params = dict(model.named_parameters(remove_duplicate=False))
    made = f" (made for {model_id!r})" if model_id else ""
    for name, shape in shapes.items():
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{where}{made} does not fit this model: it has no parameter {name!r}{hint}"
            )
        if list(params[name].shape) != list(shape):
            raise ValueError(
                f"{where}{made} does not fit this model: {name!r} is {list(shape)} in the "
                f"file, {list(params[name].shape)} in the model"
            )


_LAYER = re.compile(r"(?:^|\.)(\d+)\.")


def split_name(name: str) -> tuple[int | None, str]:
    """("model.layers.3.self_attn.q_proj.weight") -> (3, "self_attn.q_proj")."""
    module = name.rsplit(".", 1)[0] if "." in name else name
    m = _LAYER.search(module + ".")
    if m is None:
        return None, module
    rest = module[m.end() :]
    return int(m.group(1)), rest or module


def empty(params: Mapping[str, torch.nn.Parameter], meta: dict | None = None) -> Region:
    """The empty region over `params` (ratio 0: the unmodified baseline)."""
    masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    return Region(masks=masks, meta={str(k): str(v) for k, v in (meta or {}).items()})
