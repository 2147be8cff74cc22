"""Massive activations and super weights: the few residual-stream dimensions that dwarf all the
others, and the single weights that put them there.

    acts = massive_activations(model, tok, docs)           # acts.dims == [1415, 2533] (LLaMA-2-7B)
    found = super_weights(model, tok, docs, acts)         # [SuperWeight(param=..., index=(d, j))]
    result = detect(model, tok, docs, fingerprint_model(model), cache_root())  # both, as JSON, once

- Sun et al. 2024, "Massive Activations in Large Language Models": a handful of hidden dimensions
  reach values thousands of times the median, appear after an early block and stay in the stream.
- Yu et al. 2024, "The Super Weight in Large Language Models": each is written by one weight of
  the down projection of the block where it first appears; zeroing that weight destroys the model.

Why here: a region whose removal breaks a model may simply hold a super weight, which says nothing
about languages; naming these weights lets a study exclude them or test them on their own.

Each document is scored alone, as [BOS] + its tokens cut to `max_tokens` (and to the model's
context): the papers find the spikes at the first token and the delimiters after it, and a
document's own positions keep "where it peaks" meaningful, which packed windows would not. The
stream after block i is read by a forward hook on block i, not from `output_hidden_states`: that
tuple starts with the embeddings and, in transformers' LLaMA and GPT-2 among others, ends with
the stream after the final norm instead of the last block's output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from regionbench.common.cache import JsonCache, cache_key, fingerprint_texts
from regionbench.common.packing import encode, prefix_token_id
from regionbench.common.torchtools import modes_kept
from regionbench.models.scope import transformer_blocks

MAX_TOKENS = 512  # per document, including the BOS; also cut to the model's context


@dataclass(frozen=True)
class MassiveDim:
    """One massive hidden dimension of the residual stream."""

    dim: int
    first_layer: int  # the first block after which it is massive
    layer: int  # the block after which its |activation| is largest
    value: float  # that activation, signed
    ratio: float  # |value| over the median of that block's per-dimension max |activation|
    doc: int  # where it peaks: the document (index into `texts`)...
    position: int  # ...and its token (0: the BOS or EOS the document is conditioned on)


@dataclass
class Activations:
    """Per block and hidden dimension, the largest |activation| over every token, and where."""

    max_abs: Tensor  # [blocks, hidden] fp32 CPU: what a plot of the stream shows
    value: Tensor  # [blocks, hidden] the signed activation at that maximum
    doc: Tensor  # [blocks, hidden] int64: the document it is in
    position: Tensor  # [blocks, hidden] int64: its token
    factor: float
    max_tokens: int
    n_docs: int
    massive: dict[int, MassiveDim] = field(default_factory=dict)  # by dimension

    @property
    def dims(self) -> list[int]:
        """The massive dimensions (at any block), sorted."""
        return sorted(self.massive)

    @property
    def ratios(self) -> Tensor:
        """[blocks, hidden]: each max |activation| over its block's median of them."""
        median = self.max_abs.quantile(0.5, dim=1, keepdim=True)
        return self.max_abs / median.clamp_min(torch.finfo(torch.float32).tiny)


@dataclass(frozen=True)
class SuperWeight:
    """The one weight that writes a massive dimension where it first appears."""

    param: str  # its parameter's name in `named_parameters`
    index: tuple[int, int]  # its entry: (dim, channel) for nn.Linear, (channel, dim) for Conv1D
    layer: int  # the block where the dimension first is massive
    dim: int  # the massive residual dimension it writes
    channel: int  # the input channel it reads: the largest |input| at the spiking token
    value: float  # the weight
    output_share: float  # weight x input over the stream's value at (layer, token, dim)


def _check(texts: list[str], factor: float, max_tokens: int) -> None:
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of documents")
    if not factor > 1:
        raise ValueError(f"factor {factor!r} must be > 1: it is a multiple of the median")
    if isinstance(max_tokens, bool) or int(max_tokens) < 1:
        raise ValueError(f"max_tokens {max_tokens!r} is not a positive integer")


def _rows(model: nn.Module, tokenizer, texts: list[str], max_tokens: int) -> list[Tensor]:
    """[1, n] token ids of each document: [BOS] + tokens, cut to max_tokens and the context."""
    config = getattr(model.config, "text_config", None) or model.config
    limit = min(int(max_tokens), getattr(config, "max_position_embeddings", None) or max_tokens)
    device = model.get_input_embeddings().weight.device
    first = prefix_token_id(tokenizer)
    return [
        torch.tensor([[first, *ids][:limit]], device=device)
        for ids in encode(tokenizer, list(texts))
    ]


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = [block for _, block in transformer_blocks(model)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to read")
    return blocks


def _stream(output) -> Tensor:
    """A block's output hidden states (some blocks return a tuple with them first)."""
    return output[0] if isinstance(output, tuple) else output


def massive_activations(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    factor: float = 100.0,
    max_tokens: int = MAX_TOKENS,
) -> Activations:
    """Largest |activation| of every block output and hidden dimension over all tokens of
    `texts`; a dimension is massive at a block where it is >= `factor` x that block's median."""
    _check(texts, factor, max_tokens)
    blocks = _blocks(model)
    peaks: list[list[Tensor] | None] = [None] * len(blocks)  # max_abs, value, doc, position
    current = {"doc": 0}

    def recorder(i: int):
        def record(module, args, output):
            h = _stream(output)[0].detach().float()  # [seq, hidden]; batches of one document
            top, pos = h.abs().max(dim=0)
            new = [top, h.gather(0, pos[None])[0], torch.full_like(pos, current["doc"]), pos]
            new = [t.cpu() for t in new]
            if peaks[i] is not None:  # keep the earlier peak on ties
                better = new[0] > peaks[i][0]
                new = [torch.where(better, n, o) for n, o in zip(new, peaks[i], strict=True)]
            peaks[i] = new

        return record

    rows = _rows(model, tokenizer, texts, max_tokens)
    handles = [block.register_forward_hook(recorder(i)) for i, block in enumerate(blocks)]
    try:
        with torch.no_grad(), modes_kept(model, training=False):
            for doc, row in enumerate(rows):
                current["doc"] = doc
                model(input_ids=row, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if any(p is None for p in peaks):
        raise ValueError(f"some transformer blocks of {type(model).__name__} never ran")
    max_abs, value, doc, position = (torch.stack([p[k] for p in peaks]) for k in range(4))
    acts = Activations(max_abs, value, doc, position, float(factor), int(max_tokens), len(rows))
    ratios = acts.ratios
    is_massive = ratios >= factor
    for d in is_massive.any(dim=0).nonzero().flatten().tolist():
        peak = int(max_abs[:, d].argmax())
        acts.massive[d] = MassiveDim(
            dim=d,
            first_layer=int(is_massive[:, d].nonzero()[0, 0]),
            layer=peak,
            value=float(value[peak, d]),
            ratio=float(ratios[peak, d]),
            doc=int(doc[peak, d]),
            position=int(position[peak, d]),
        )
    return acts


def _is_matrix_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | Conv1D)


def _trace(model: nn.Module, block: nn.Module, row: Tensor, pos: int):
    """Run one document; return {matrix layer of `block`: (its input, its output) at token `pos`}
    and the block's output there."""
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    out: list[Tensor] = []

    def record(module, args, output):
        seen[module] = (args[0][0, pos].float().cpu(), output[0, pos].float().cpu())

    layers = [m for m in block.modules() if _is_matrix_layer(m)]
    handles = [m.register_forward_hook(record) for m in layers]
    handles.append(
        block.register_forward_hook(lambda m, a, o: out.append(_stream(o)[0, pos].float().cpu()))
    )
    try:
        with torch.no_grad(), modes_kept(model, training=False):
            model(input_ids=row, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen, out[0]


def super_weights(
    model: nn.Module, tokenizer, texts: list[str], activations: Activations
) -> list[SuperWeight]:
    """For each massive dimension d, in the block where it first appears and at the token where
    it peaks there: the matrix layer whose output at d is largest in |value| (found from the
    data, not by name: the down projection in LLaMA, `mlp.c_proj` in GPT-2), its input channel j
    of largest |value|, and the weight that writes j into d."""
    _check(texts, activations.factor, activations.max_tokens)
    if len(texts) != activations.n_docs:
        raise ValueError(f"{len(texts)} texts, but the activations came from {activations.n_docs}")
    blocks = _blocks(model)
    rows = _rows(model, tokenizer, texts, activations.max_tokens)
    names = {id(p): name for name, p in model.named_parameters()}
    hidden = activations.max_abs.shape[1]
    found = []
    for d, info in sorted(activations.massive.items()):
        layer = info.first_layer
        doc, pos = int(activations.doc[layer, d]), int(activations.position[layer, d])
        seen, stream = _trace(model, blocks[layer], rows[doc], pos)
        # Only a layer as wide as the stream can write into it (GPT-2's c_fc and c_attn are not).
        writers = [(m, io) for m, io in seen.items() if io[1].shape[-1] == hidden]
        if not writers:
            continue
        module, (inp, outp) = max(writers, key=lambda w: abs(float(w[1][1][d])))
        j = int(inp.abs().argmax())
        index = (d, j) if isinstance(module, nn.Linear) else (j, d)  # Conv1D stores [in, out]
        weight = float(module.weight.detach()[index])
        found.append(
            SuperWeight(
                param=names[id(module.weight)],
                index=index,
                layer=layer,
                dim=d,
                channel=j,
                value=weight,
                output_share=weight * float(inp[j]) / float(stream[d]),
            )
        )
    return found


def detect(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    model_fingerprint: str,
    cache_dir: str | Path,
    *,
    factor: float = 100.0,
    max_tokens: int = MAX_TOKENS,
) -> dict:
    """Massive activations and super weights as a JSON-able dict, computed once per model, texts,
    factor and max_tokens (cached under `cache_dir/outliers`). `model_fingerprint` stands for the
    model and its tokenizer (e.g. `fingerprint_model(model)` for a model with its own tokenizer)."""
    _check(texts, factor, max_tokens)
    cache = JsonCache(Path(cache_dir) / "outliers")
    key = cache_key(
        kind="outliers",
        model=model_fingerprint,
        texts=fingerprint_texts({"x": list(texts)}),
        factor=float(factor),
        max_tokens=int(max_tokens),
    )

    def compute() -> dict:
        acts = massive_activations(model, tokenizer, texts, factor=factor, max_tokens=max_tokens)
        weights = super_weights(model, tokenizer, texts, acts)
        return {
            "factor": float(factor),
            "max_tokens": int(max_tokens),
            "n_docs": acts.n_docs,
            "dims": acts.dims,
            "massive": [asdict(acts.massive[d]) for d in acts.dims],
            "super_weights": [asdict(w) | {"index": list(w.index)} for w in weights],
            "max_ratio": float(acts.ratios.max()),
            "max_abs": acts.max_abs.tolist(),  # [blocks][hidden], for plots
        }

    return cache.get_or_compute(key, compute)[0]
