"""Massive activations and super weights: the few residual-stream dimensions that dwarf all the
others, and the single weights that put them there.

    rule = Rule()                                          # Sun et al.'s (outliers.rule=sun)
    acts = massive_activations(model, tok, docs, rule)     # acts.dims == [1415, 2533] (LLaMA-2-7B)
    found = super_weights(model, tok, docs, acts)          # [SuperWeight(param=..., index=(d, j))]
    result = detect(model, tok, docs, fingerprint_model(model), cache_root(), rule)  # JSON, once

- Sun et al. 2024, "Massive Activations in Large Language Models": a handful of hidden dimensions
  reach values thousands of times the median, appear after an early block and stay in the stream.
- Yu et al. 2024, "The Super Weight in Large Language Models": each is written by one weight of
  the down projection of the block where it first appears; zeroing that weight destroys the model.

Why here: a region whose removal breaks a model may simply hold a super weight, which says nothing
about languages; naming these weights lets a study exclude them or test them on their own.

Two rules say what is massive (`outliers.rule`, `Rule`):
- `sun` (the default), the paper's §2: an activation is massive "if its magnitude surpasses 100 and
  is at least or around 1,000 times larger than the median magnitude of its hidden state". An
  entry a of block i's output on one document is massive when |a| > `abs_min` (100) and
  |a| >= `median_factor` (1000) x the median |a| over every entry (tokens x hidden dimensions) of
  block i's output on that same document. Their code (`main_llm.py --exp2`) takes
  `torch.median(feat_abs)` per layer and per sequence, so the median is per document here too, not
  pooled over documents: one document's length or content does not move another's threshold.
  `torch.median` is the lower of the two middle values, as in theirs.
- `peak_median`, regionbench's earlier rule, kept to compare with figures made with it: dimension d
  is massive at block i when its largest |a| over every token of every document is >= `factor`
  (100) x the median over block i's hidden dimensions of their largest |a|. It has no absolute
  floor and compares peaks with peaks, so small models can reach it with modest values.

Each document is scored alone, as [BOS] + its tokens cut to `max_tokens` (and to the model's
context): the papers find the spikes at the first token and the delimiters after it, and a
document's own positions keep "where it peaks" meaningful, which packed windows would not. The
stream after block i is read by a forward hook on block i, not from `output_hidden_states`: that
tuple starts with the embeddings and, in transformers' LLaMA and GPT-2 among others, ends with
the stream after the final norm instead of the last block's output. The super weight is searched
only among the block's matrices that write the residual stream (`residual_sides`): a reader as
wide as the stream (LLaMA's q_proj) can have a large output at d and write nothing into it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from regionbench.common.cache import JsonCache, cache_key, fingerprint_texts
from regionbench.common.choices import check_choice
from regionbench.common.packing import encode, prefix_token_id
from regionbench.common.torchtools import modes_kept
from regionbench.models.residual import residual_sides
from regionbench.models.scope import transformer_blocks

log = logging.getLogger(__name__)

MAX_TOKENS = 512  # per document, including the BOS; also cut to the model's context
ALGORITHM = 2  # bump when the same inputs would give another result (old cache entries miss)
RULES = {
    "sun": "|a| > outliers.abs_min and |a| >= outliers.median_factor x the median |a| of its "
    "block's hidden states on its document (Sun et al. 2024)",
    "peak_median": "a dimension's largest |a| >= outliers.factor x the median over its block's "
    "dimensions of their largest |a| (regionbench's earlier rule)",
}


@dataclass(frozen=True)
class Rule:
    """What counts as massive: `sun` (abs_min, median_factor) or `peak_median` (factor)."""

    name: str = "sun"
    abs_min: float = 100.0
    median_factor: float = 1000.0
    factor: float = 100.0

    @classmethod
    def of(cls, config) -> Rule:
        """The rule of an `OutliersConfig` (`run.outliers`), checked."""
        return cls(
            config.rule, float(config.abs_min), float(config.median_factor), float(config.factor)
        ).checked()

    def checked(self) -> Rule:
        check_choice("outliers.rule", self.name, RULES)
        for key, low in (("abs_min", 0.0), ("median_factor", 1.0), ("factor", 1.0)):
            value = getattr(self, key)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and (value >= low if key == "abs_min" else value > low)
            if not ok:
                why = "a number >= 0" if key == "abs_min" else "> 1: it is a multiple of a median"
                raise ValueError(f"outliers.{key} {value!r} must be {why}")
        return self

    @property
    def threshold(self) -> float:
        """The multiple of the median its ratios are compared with."""
        return self.median_factor if self.name == "sun" else self.factor

    def key(self) -> dict:
        """What decides its result (the cache key): only the rule's own thresholds."""
        if self.name == "sun":
            return {"rule": "sun", "abs_min": self.abs_min, "median_factor": self.median_factor}
        return {"rule": self.name, "factor": self.factor}

    def describe(self) -> str:
        """The rule in one line, with its values, for errors and logs."""
        if self.name == "sun":
            return (
                f"outliers.rule=sun: an entry with |a| > {self.abs_min:g} and |a| >= "
                f"{self.median_factor:g} x the median |a| of its block's hidden states"
            )
        return (
            f"outliers.rule={self.name}: a dimension whose largest |a| is >= {self.factor:g} x "
            "the median of its block's per-dimension largest |a|"
        )


@dataclass(frozen=True)
class MassiveDim:
    """One massive hidden dimension of the residual stream."""

    dim: int
    first_layer: int  # the first block after which it is massive
    layer: int  # of the blocks where it is massive, the one where its spike is largest in |a|
    value: float  # that spike, signed
    ratio: float  # the rule's ratio there (`Activations.ratios`)
    doc: int  # where it is: the document (index into `texts`)...
    position: int  # ...and its token (0: the BOS or EOS the document is conditioned on)


@dataclass
class Activations:
    """Per block and hidden dimension: the largest |activation| over every token and where it is
    (what a plot of the stream shows, and the `peak_median` rule's input); the median |a| of each
    document at each block, and the largest of the entries the `sun` rule finds massive."""

    max_abs: Tensor  # [blocks, hidden] fp32 CPU
    value: Tensor  # [blocks, hidden] the signed activation at that maximum
    doc: Tensor  # [blocks, hidden] int64: the document it is in
    position: Tensor  # [blocks, hidden] int64: its token
    median: Tensor  # [docs, blocks] median |a| over all of a document's entries at a block
    doc_max: Tensor  # [docs, blocks] largest |a| of a document at a block
    spike_abs: Tensor  # [blocks, hidden] largest |a| of a sun-massive entry; 0: there is none
    spike_value: Tensor  # [blocks, hidden] that entry, signed
    spike_doc: Tensor  # [blocks, hidden] int64
    spike_position: Tensor  # [blocks, hidden] int64
    spike_ratio: Tensor  # [blocks, hidden] fp64: its |a| / its document's median (0: none)
    rule: Rule
    max_tokens: int
    n_docs: int
    massive: dict[int, MassiveDim] = field(default_factory=dict)  # by dimension

    @property
    def dims(self) -> list[int]:
        """The massive dimensions (at any block), sorted."""
        return sorted(self.massive)

    @property
    def peak_ratios(self) -> Tensor:
        """[blocks, hidden]: each max |activation| over its block's median of them."""
        median = self.max_abs.quantile(0.5, dim=1, keepdim=True)
        return self.max_abs / median.clamp_min(torch.finfo(torch.float32).tiny)

    @property
    def ratios(self) -> Tensor:
        """[blocks, hidden]: the rule's ratio, massive where >= `rule.threshold`."""
        return self.spike_ratio if self.rule.name == "sun" else self.peak_ratios.double()

    @property
    def max_entry_ratio(self) -> float:
        """The largest |a| / its document's median at any block, whatever its |a|."""
        tiny = torch.finfo(torch.float32).tiny
        return float((self.doc_max.double() / self.median.double().clamp_min(tiny)).max())

    def spike(self, layer: int, d: int) -> tuple[float, int, int]:
        """(value, document, token) of the entry the rule judges at (block, dimension)."""
        if self.rule.name == "sun":
            picked = (self.spike_value, self.spike_doc, self.spike_position)
        else:
            picked = (self.value, self.doc, self.position)
        value, doc, pos = (t[layer, d] for t in picked)
        return float(value), int(doc), int(pos)


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


def _check(texts: list[str], max_tokens: int) -> None:
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of documents")
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


def _keep_larger(new: list[Tensor], old: list[Tensor] | None) -> list[Tensor]:
    """Per entry, the (score, *where) of `new` where its score beats `old`'s (ties: the old)."""
    if old is None:
        return new
    better = new[0] > old[0]
    return [torch.where(better, n, o) for n, o in zip(new, old, strict=True)]


def massive_activations(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    rule: Rule | None = None,
    *,
    max_tokens: int = MAX_TOKENS,
) -> Activations:
    """Every block output's largest |activation| per hidden dimension over all tokens of `texts`,
    and the massive dimensions under `rule` (default: Sun et al.'s)."""
    rule = (rule or Rule()).checked()
    _check(texts, max_tokens)
    blocks = _blocks(model)
    peaks: list[list[Tensor] | None] = [None] * len(blocks)  # max_abs, value, doc, position
    spikes: list[list[Tensor] | None] = [None] * len(blocks)  # sun: |a|, value, doc, pos, ratio
    medians: list[list[float]] = [[] for _ in blocks]
    doc_max: list[list[float]] = [[] for _ in blocks]
    current = {"doc": 0}

    def recorder(i: int):
        def record(module, args, output):
            h = _stream(output)[0].detach().float()  # [seq, hidden]; one document a batch
            a = h.abs()
            doc = current["doc"]
            top, pos = a.max(dim=0)
            new = [top, h.gather(0, pos[None])[0], torch.full_like(pos, doc), pos]
            peaks[i] = _keep_larger([t.cpu() for t in new], peaks[i])
            median = a.flatten().median()
            medians[i].append(float(median))
            doc_max[i].append(float(a.max()))
            # The definition, exactly: in fp64, factor x an fp32 median has no rounding.
            massive = (a > rule.abs_min) & (a.double() >= rule.median_factor * median.double())
            best, at = torch.where(massive, a, torch.zeros_like(a)).max(dim=0)
            ratio = best.double() / median.double().clamp_min(torch.finfo(torch.float32).tiny)
            new = [best, h.gather(0, at[None])[0], torch.full_like(at, doc), at, ratio]
            spikes[i] = _keep_larger([t.cpu() for t in new], spikes[i])

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
    spike_abs, s_value, s_doc, s_position, s_ratio = (
        torch.stack([s[k] for s in spikes]) for k in range(5)
    )
    acts = Activations(
        max_abs,
        value,
        doc,
        position,
        median=torch.tensor(medians).T.contiguous(),
        doc_max=torch.tensor(doc_max).T.contiguous(),
        spike_abs=spike_abs,
        spike_value=s_value,
        spike_doc=s_doc,
        spike_position=s_position,
        spike_ratio=s_ratio,
        rule=rule,
        max_tokens=int(max_tokens),
        n_docs=len(rows),
    )
    ratios = acts.ratios
    is_massive = ratios >= rule.threshold
    for d in is_massive.any(dim=0).nonzero().flatten().tolist():
        at = is_massive[:, d].nonzero().flatten().tolist()
        layer = max(at, key=lambda i: abs(acts.spike(i, d)[0]))  # the first of equal ones
        spike, where, pos = acts.spike(layer, d)
        acts.massive[d] = MassiveDim(
            dim=d,
            first_layer=at[0],
            layer=layer,
            value=spike,
            ratio=float(ratios[layer, d]),
            doc=where,
            position=pos,
        )
    return acts


def _trace(model: nn.Module, block: nn.Module, layers: list[nn.Module], row: Tensor, pos: int):
    """Run one document; return {each of `layers`: (its input, its output) at token `pos`} and
    the output of `block` (the stream) there."""
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    out: list[Tensor] = []

    def record(module, args, output):
        seen[module] = (args[0][0, pos].float().cpu(), output[0, pos].float().cpu())

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
    """For each massive dimension d, in the block where it first appears and at the token the
    rule judged there: of the block's matrices that write the residual stream (the down
    projection and o_proj in LLaMA, `mlp.c_proj` and `attn.c_proj` in GPT-2, `fc2` in OPT:
    `residual_sides`), the one whose output at d is largest in |value|; its input channel j of
    largest |value|, and the weight that writes j into d. None for a model whose stream writers
    regionbench cannot find (logged)."""
    _check(texts, activations.max_tokens)
    if len(texts) != activations.n_docs:
        raise ValueError(f"{len(texts)} texts, but the activations came from {activations.n_docs}")
    if not activations.massive:
        return []
    try:
        sides = residual_sides(model)
    except ValueError as err:
        log.warning("no super weights searched: %s", err)
        return []
    blocks = _blocks(model)
    rows = _rows(model, tokenizer, texts, activations.max_tokens)
    writers: dict[int, list[tuple[str, nn.Module, int]]] = {}
    for name, side in sides.items():
        if side.role == "writes":
            module = model.get_submodule(name.removesuffix(".weight"))
            writers.setdefault(side.layer, []).append((name, module, side.axis))
    found = []
    for d, info in sorted(activations.massive.items()):
        layer = info.first_layer
        if not writers.get(layer):
            continue
        _, doc, pos = activations.spike(layer, d)
        modules = [m for _, m, _ in writers[layer]]
        seen, stream = _trace(model, blocks[layer], modules, rows[doc], pos)
        ran = [w for w in writers[layer] if w[1] in seen]
        if not ran:
            continue
        name, module, axis = max(ran, key=lambda w: abs(float(seen[w[1]][1][d])))
        if float(seen[module][1][d]) == 0:  # no writer of the block wrote it (the embedding did)
            continue
        inp = seen[module][0]
        j = int(inp.abs().argmax())
        index = (d, j) if axis == 0 else (j, d)  # nn.Linear stores [out, in], Conv1D [in, out]
        weight = float(module.weight.detach()[index])
        found.append(
            SuperWeight(
                param=name,
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
    rule: Rule | None = None,
    *,
    max_tokens: int = MAX_TOKENS,
) -> dict:
    """Massive activations and super weights as a JSON-able dict, computed once per model, texts,
    rule and max_tokens (cached under `cache_dir/outliers`). `model_fingerprint` stands for the
    model and its tokenizer (e.g. `fingerprint_model(model)` for a model with its own tokenizer)."""
    rule = (rule or Rule()).checked()
    _check(texts, max_tokens)
    cache = JsonCache(Path(cache_dir) / "outliers")
    key = cache_key(
        kind="outliers",
        algorithm=ALGORITHM,
        model=model_fingerprint,
        texts=fingerprint_texts({"x": list(texts)}),
        max_tokens=int(max_tokens),
        **rule.key(),
    )

    def compute() -> dict:
        acts = massive_activations(model, tokenizer, texts, rule, max_tokens=max_tokens)
        weights = super_weights(model, tokenizer, texts, acts)
        return {
            "rule": asdict(rule),
            "description": rule.describe(),
            "max_tokens": int(max_tokens),
            "n_docs": acts.n_docs,
            "dims": acts.dims,
            "massive": [asdict(acts.massive[d]) for d in acts.dims],
            "super_weights": [asdict(w) | {"index": list(w.index)} for w in weights],
            "max_ratio": float(acts.ratios.max()),  # the rule's
            "max_peak_ratio": float(acts.peak_ratios.max()),
            "max_entry_ratio": acts.max_entry_ratio,  # whatever its |a|
            "max_abs_value": float(acts.max_abs.max()),
            "max_abs": acts.max_abs.tolist(),  # [blocks][hidden], for plots
        }

    return cache.get_or_compute(key, compute)[0]


def check(run, langs) -> None:
    """`outliers.*` of a `RunConfig`, and that every language in `langs` (the importance
    languages, whose text the detector reads) has importance documents, before any model work."""
    from regionbench.data.sources import check_documents

    Rule.of(run.outliers)
    check_documents(run, "importance", langs)
