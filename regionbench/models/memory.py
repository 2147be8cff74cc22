"""Device memory a job will need, estimated from the model's config before the model is loaded,
so that a batch that cannot fit fails in one line naming what fits instead of running out of
memory after minutes of loading.

    shape = model_shape(run)                       # parameters and sizes, from the config alone
    need = importance_memory(shape, batch=16, seq=512, dtype_bytes=2)    # an Estimate
    need.total, need.parts                         # bytes, and what they are made of
    have = device_memory(run, torch.device("cuda"))  # device_memory_gb, else CUDA's free memory

The estimate, per part (b samples of s tokens, h hidden, L blocks, f the FFN width, kv the key
and value width, V the vocabulary, d the model's bytes per value):

* weights: every parameter × d (the parameters counted exactly on the meta device);
* importance: one fp32 accumulator per scored entry (one language at a time; none on the
  device with `importance.accumulate_device=cpu`), plus the largest scored matrix's gradient
  and the metric's fp32 temporaries of it (gradients are folded in and freed one at a time);
* training (`freeze`, `train_region`): the intervention's optimizer state, fp32 masters and
  gradients (`interventions/sparse.py`);
* activations saved for backward, per token and block: d·(5h + 2kv + c·f) + 8h bytes, c = 4
  for a gated FFN (gate, up, their activation and product) and 2 otherwise; the 8h are the two
  norms' fp32 inputs, the 5h + 2kv their outputs, q, k, v (after RoPE), the attention output and
  o_proj's input (a fused attention kernel: no s×s matrix; an eager one adds 2·heads·s·d); one
  block more for the gradients backward works through, and the final norm's h·(8 + d). With
  gradient checkpointing a block keeps only its input (h·d) and one block is recomputed at a time;
* the loss: V·(d + 12) bytes per token (the logits, their fp32 copy, log-softmax's saved output
  and the two gradients of its backward).

Checked against what autograd saves on a tiny model on CPU (tests/unit/models/test_memory.py).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from regionbench.config import RunConfig

log = logging.getLogger(__name__)
GB = 1e9
# beyond the estimate, what a CUDA process holds anyway (context, allocator rounding)
CUDA_OVERHEAD = 0.6e9


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model, read from its config."""

    params: int  # every parameter
    scored: int  # the importance scope's entries
    largest: int  # the largest scored parameter's entries
    hidden: int
    layers: int
    inter: int
    heads: int
    kv: int  # width of k (and of v): heads_kv x head_dim
    vocab: int
    gated: bool  # a gated FFN (gate, up, down: LLaMA, Qwen, Mistral)
    eager: bool  # attention materialises the s x s matrix
    context: int


@dataclass
class Estimate:
    """Bytes per part and in total; `per_sample`: the part that grows with the batch."""

    parts: dict[str, float] = field(default_factory=dict)
    per_sample: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def words(self) -> str:
        return " + ".join(f"{k} {size(v)}" for k, v in self.parts.items() if v)


def size(nbytes: float) -> str:
    """'92.0 GB', '6.1 MB', '12 kB'."""
    for unit, scale in (("GB", GB), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1e3:.0f} kB"


def _config(run: RunConfig):
    """The model's Hugging Face config without its weights, or None (a GGUF model not yet
    converted: nothing to read)."""
    from transformers import AutoConfig

    from regionbench.models import gguf
    from regionbench.models.loading import is_sandbox

    m = run.model
    if is_sandbox(m.name):
        from regionbench.sandbox.models import SANDBOX_MODELS, llama_config

        return llama_config(SANDBOX_MODELS[m.name])
    if gguf.is_gguf(m.name):
        from regionbench.common.cache import cache_root

        folder = gguf.folder_path(m.name, cache_root(run.paths.cache_dir))
        return AutoConfig.from_pretrained(folder) if (folder / "config.json").is_file() else None
    return AutoConfig.from_pretrained(
        str(Path(m.name).expanduser()) if Path(m.name).expanduser().exists() else m.name,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
    )


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


@functools.lru_cache(maxsize=8)
def _shape(key: str) -> Shape | None:
    from transformers import AutoModelForCausalLM

    from regionbench.models.scope import scoped_params

    run = RunConfig.from_cfg(json.loads(key))
    config = _config(run)
    if config is None:
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=run.model.trust_remote_code
        )
    imp = run.importance
    scored = scoped_params(model, imp.scope, imp.include, imp.exclude)
    hidden = int(_get(config, "hidden_size", "n_embd", "d_model"))
    heads = int(_get(config, "num_attention_heads", "n_head", default=1))
    kv_heads = int(_get(config, "num_key_value_heads", default=heads))
    head_dim = int(_get(config, "head_dim", default=hidden // heads))
    names = {n.rsplit(".", 2)[-2] for n in scored}
    return Shape(
        params=sum(p.numel() for p in model.parameters()),
        scored=sum(p.numel() for p in scored.values()),
        largest=max((p.numel() for p in scored.values()), default=0),
        hidden=hidden,
        layers=int(_get(config, "num_hidden_layers", "n_layer", "num_layers")),
        inter=int(_get(config, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
        heads=heads,
        kv=kv_heads * head_dim,
        vocab=int(config.vocab_size),
        gated="gate_proj" in names or "w1" in names,
        eager=getattr(config, "_attn_implementation", None) == "eager",
        context=int(_get(config, "max_position_embeddings", "n_positions", default=2048)),
    )


def model_shape(run: RunConfig) -> Shape | None:
    """The run's model as the estimate sees it (once per model and scope in a process); None
    when its config cannot be read before loading (the estimate is then skipped)."""
    m, imp = run.model, run.importance
    key = {
        "model": {"name": m.name, "revision": m.revision, "trust_remote_code": m.trust_remote_code},
        "importance": {"scope": imp.scope, "include": imp.include, "exclude": imp.exclude},
        "paths": {"cache_dir": run.paths.cache_dir},
    }
    return _shape(json.dumps(key, sort_keys=True))


def activations_per_token(shape: Shape, dtype_bytes: int, seq: int, checkpointing: bool) -> float:
    """Bytes saved for backward per token of a batch: the blocks' and the loss's."""
    h, d = shape.hidden, dtype_bytes
    block = d * (5 * h + 2 * shape.kv + (4 if shape.gated else 2) * shape.inter) + 8 * h
    if shape.eager:
        block += 2 * shape.heads * seq * d
    # backward works through one block at a time: its activations' gradients (one block more),
    # and a checkpointed block's recomputed activations
    saved = shape.layers * h * d if checkpointing else shape.layers * block
    return saved + block + h * (8 + d) + shape.vocab * (d + 12)  # + the final norm, the loss


def importance_memory(
    shape: Shape,
    batch: int,
    seq: int,
    dtype_bytes: int,
    *,
    on_device: bool = True,
    checkpointing: bool = False,
) -> Estimate:
    """Device bytes of an importance pass at `batch` samples of `seq` tokens."""
    per_sample = seq * activations_per_token(shape, dtype_bytes, seq, checkpointing)
    parts = {
        "weights": shape.params * dtype_bytes,
        "fp32 accumulators": shape.scored * 4 if on_device else 0,
        # the largest gradient, a copy on its way to a host accumulator, the metric's temporaries
        "gradient": shape.largest * (dtype_bytes * (1 if on_device else 2) + 8),
        "activations": batch * per_sample,
    }
    return Estimate(parts, per_sample)


def training_memory(
    shape: Shape,
    batch: int,
    seq: int,
    dtype_bytes: int,
    state: Callable[[int, int, int, int], float],
    region: int,
) -> Estimate:
    """Device bytes of further training at `batch` × `seq` with `region` entries held (or
    trained) as the intervention's `state(params, region, dtype_bytes, largest)` says."""
    per_sample = seq * activations_per_token(shape, dtype_bytes, seq, False)
    parts = {
        "weights": shape.params * dtype_bytes,
        "optimizer state, masters and gradients": state(
            shape.params, region, dtype_bytes, shape.largest
        ),
        "activations": batch * per_sample,
    }
    return Estimate(parts, per_sample)


def device_memory(run: RunConfig, device: torch.device) -> float | None:
    """Bytes the job may use on `device`: `device_memory_gb` when given, else on CUDA what is
    free plus what this process's allocator already holds (a loaded model's weights too, which
    the estimate counts again), less CUDA's own overhead; None: not checked (CPU, MPS)."""
    if run.device_memory_gb is not None:
        return run.device_memory_gb * GB
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - CUDA_OVERHEAD


def largest_batch(need: Estimate, have: float) -> int:
    """The largest batch whose estimate fits `have` bytes (0: not even one sample)."""
    fixed = need.total - need.parts.get("activations", 0.0)
    if not need.per_sample:
        return 0
    return max(0, math.floor((have - fixed) / need.per_sample))
