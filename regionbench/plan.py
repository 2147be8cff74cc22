"""What a job will do, derived once from its config: the stages receive the plan instead of each
deriving it again from names.

    plan = Plan.of(run)          # one-line errors for an unknown region, intervention or metric
    plan.trains, plan.scores, plan.reads_text, plan.baseline
    plan.importance_langs, plan.eval_langs, plan.target_langs
    plan.uses_seed               # False: every seed gives the same result (run once per sweep)
    check_memory(run, plan, device)   # the job's device memory estimate, before the model loads
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from regionbench.config import RunConfig
from regionbench.data import sources
from regionbench.importance.metrics import METRICS
from regionbench.interventions.kinds import Intervention, intervention_kind
from regionbench.models import memory
from regionbench.regions.kinds import RegionKind, region_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    region: RegionKind
    intervention: Intervention
    importance_langs: tuple[str, ...]  # scored for importance (every one weighs the same)
    eval_langs: tuple[str, ...]  # evaluated: the data's, then the training languages
    target_langs: tuple[str, ...]  # trained on (none unless the intervention trains)
    scores: bool  # the region ranks entries by importance scores
    reads_text: bool  # ...with a per-language metric: importance text is read and scored
    reads_reference: bool  # the intervention reads the importance text too (fix, steer)
    baseline: bool  # the region is empty: the job evaluates the unmodified model
    uses_seed: bool  # `seed` can change the result (else a sweep runs one seed of it)

    @property
    def trains(self) -> bool:
        return self.intervention.trains

    @classmethod
    def of(cls, run: RunConfig) -> Plan:
        from regionbench.common.choices import check_choice

        region = region_kind(run.region.name)
        intervention = intervention_kind(run.intervention.name)
        metric = METRICS[check_choice("metric", run.metric.name, METRICS)]
        targets = tuple(sources.target_langs(run)) if intervention.trains else ()
        evaluated = tuple(sources.eval_langs(run))
        scores = run.ratio > 0 and region.ranks(run.region)
        baseline = run.ratio == 0 and region.empty_at_zero
        return cls(
            region=region,
            intervention=intervention,
            importance_langs=tuple(sources.importance_langs(run)),
            eval_langs=evaluated + tuple(t for t in targets if t not in evaluated),
            target_langs=targets,
            scores=scores,
            reads_text=scores and metric.per_language,
            reads_reference=intervention.reads_text and not baseline,
            baseline=baseline,
            # training uses the seed even with nothing frozen; an edit of an empty region does not
            uses_seed=(intervention.trains and intervention.uses_seed)
            or (
                not baseline
                and (
                    region.uses_seed(run.region)
                    or (scores and metric.uses_seed)
                    or intervention.uses_seed
                )
            ),
        )


def check_memory(run: RunConfig, plan: Plan, device: torch.device) -> None:
    """What the job will need on `device` (`models.memory`: the importance pass when it will
    compute one, further training when it trains, else the weights) against what the device
    has (`device_memory_gb`, or CUDA's free memory; nothing is checked on CPU without it): a
    one-line ValueError naming the largest batch or the option that fits, before the model
    loads."""
    from regionbench.models.loading import resolve_dtype

    have = memory.device_memory(run, device)
    if have is None:
        return
    shape = memory.model_shape(run)
    if shape is None:
        log.info(
            "device memory not estimated: %s's config is not readable before it loads",
            run.model.name,
        )
        return
    d = resolve_dtype(run.model.dtype, device).itemsize
    where = (
        f"device_memory_gb={run.device_memory_gb:g}"
        if run.device_memory_gb is not None
        else f"{device} has {memory.size(have)} free"
    )
    metric = METRICS[run.metric.name]
    if plan.reads_text and metric.activation is None and not _maybe_cached(run):
        imp = run.importance
        seq = imp.seq_len or min(512, shape.context)
        on_device = imp.accumulate_device is None or imp.accumulate_device.startswith("cuda")
        options = {"on_device": on_device, "checkpointing": imp.gradient_checkpointing}
        need = memory.importance_memory(shape, imp.batch_size, seq, d, **options)
        if need.total > have:
            fixes = []
            if not imp.gradient_checkpointing:
                fixes.append(("importance.gradient_checkpointing=true", {"checkpointing": True}))
            if on_device:
                fixes.append(("importance.accumulate_device=cpu", {"on_device": False}))
            alternatives = [
                (text, memory.importance_memory(shape, imp.batch_size, seq, d, **options | o))
                for text, o in fixes
            ]
            raise ValueError(
                _advice(
                    f"importance at importance.batch_size={imp.batch_size} x {seq} tokens",
                    need,
                    have,
                    where,
                    "importance.batch_size",
                    alternatives,
                    shape,
                    d,
                )
            )
    if plan.trains and plan.intervention.memory is not None:
        iv = run.intervention
        region = math.floor(run.ratio * shape.scored)
        need = memory.training_memory(
            shape, iv.batch_size, iv.seq_len, d, plan.intervention.memory, region
        )
        if need.total > have:
            raise ValueError(
                _advice(
                    f"{run.intervention.name} training at intervention.batch_size={iv.batch_size}"
                    f" x {iv.seq_len} tokens",
                    need,
                    have,
                    where,
                    "intervention.batch_size",
                    [],
                    shape,
                    d,
                    accum=iv.grad_accum,
                )
            )
    weights = shape.params * d
    if weights > have:
        raise ValueError(
            f"{run.model.name}'s weights alone need ≈ {memory.size(weights)} in "
            f"{run.model.dtype} ({where}): shard it with model.device_map=auto or load it in a "
            "smaller model.dtype"
        )


def _advice(what, need, have, where, batch_key, alternatives, shape, d, accum=None) -> str:
    """'X needs ≈ N GB (parts) but M GB: KEY=B fits (≈ G GB), or OPTION (≈ G GB)'."""
    fits = []
    best = memory.largest_batch(need, have)
    if best >= 1:
        fitted = need.total - (need.parts["activations"] - best * need.per_sample)
        step = ""
        if accum is not None:
            total = int(need.parts["activations"] / need.per_sample) * accum
            step = f" intervention.grad_accum={math.ceil(total / best)}"
        fits.append(f"{batch_key}={best}{step} fits (≈ {memory.size(fitted)})")
    fits += [
        f"{text} fits (≈ {memory.size(e.total)})" for text, e in alternatives if e.total <= have
    ]
    if not fits:
        fixed = {k: v for k, v in need.parts.items() if k != "activations"}
        fits.append(
            f"no batch fits: {' + '.join(fixed)} alone are {memory.size(sum(fixed.values()))}; "
            "shard the model with model.device_map=auto or load it in a smaller model.dtype"
        )
    return (
        f"{what} needs ≈ {memory.size(need.total)} of device memory ({need.words()}), more "
        f"than the {memory.size(have)} there ({where}): " + ", or ".join(fits)
    )


def _maybe_cached(run: RunConfig) -> bool:
    """Whether the importance cache holds an entry of this model, metric and batch size (then
    the job most likely reads its scores instead of computing them: not estimated)."""
    from regionbench.common.cache import cache_root

    imp = run.importance
    want = {
        "model": run.model.name,
        "revision": run.model.revision,
        "metric": run.metric.name,
        "batch_size": imp.batch_size,
        "scope": imp.scope,
        "include": list(imp.include),
        "exclude": list(imp.exclude),
    }
    root = Path(cache_root(run.paths.cache_dir)) / "importance"
    for manifest in root.glob("*/manifest.json"):
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8")).get("meta", {})
        except (OSError, ValueError):
            continue
        if all(meta.get(k) == v for k, v in want.items()):
            log.info("importance memory not estimated: %s holds scores of this model", root)
            return True
    return False
