"""Importance as a pipeline stage: its options checked up front, and scores from the
content-addressed cache (computed and stored on a miss)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from regionbench.common.choices import check_choice
from regionbench.config import RunConfig
from regionbench.importance import distributed
from regionbench.importance.compute import LOSSES, iter_scores, score_samples
from regionbench.importance.metrics import ALGORITHM, METRICS

STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check(run: RunConfig, *, reads_text: bool) -> None:
    """`metric`, `importance.*` and, when the job scores text (`reads_text`, from its plan),
    the importance text of data=local, before any model is loaded."""
    from regionbench.common.packing import PACKINGS
    from regionbench.data.sources import check_documents, importance_langs, source
    from regionbench.models.scope import SCOPES

    check_choice("metric", run.metric.name, METRICS)
    imp = run.importance
    check_choice("importance.scope", imp.scope, SCOPES)
    check_choice("importance.packing", imp.packing, PACKINGS)
    check_choice("importance.loss", imp.loss, LOSSES)
    if imp.drop_long and imp.packing != "documents":
        raise ValueError(
            f"importance.drop_long=true needs importance.packing=documents, not {imp.packing!r} "
            "(windows cut the packed text: no document is too long)"
        )
    for key in ("include", "exclude"):
        for pattern in getattr(imp, key):
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ValueError(
                    f"importance.{key} {pattern!r} is not a valid regular expression: {err}"
                ) from None
    streamed = source(run.data.source).streamed
    if imp.samples is None and streamed and run.ratio > 0 and METRICS[run.metric.name].per_language:
        raise ValueError(
            f"importance.samples null (all the text) cannot stream all of data={run.data.source}: "
            "give a number, e.g. importance.samples=10000"
        )
    check_choice("importance.store_dtype", imp.store_dtype, STORE_DTYPES)
    if imp.accumulate_device is not None:
        check_choice(
            "importance.accumulate_device", imp.accumulate_device.split(":")[0], ("cpu", "cuda")
        )
    for key, value, low in (
        ("importance.samples", imp.samples, 1),
        ("importance.seq_len", imp.seq_len, 2),
        ("importance.batch_size", imp.batch_size, 1),
        ("importance.checkpoint_every", imp.checkpoint_every, 1),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise ValueError(f"{key} {value!r} must be an integer >= {low}")
    if reads_text:  # every importance language must have some
        check_documents(run, "importance", importance_langs(run))


def seq_len_for(run: RunConfig, context: int) -> int:
    """`importance.seq_len`, or the paper's 512 capped at the model's `context` length."""
    seq_len = run.importance.seq_len or min(512, context)
    if seq_len > context:
        raise ValueError(
            f"importance.seq_len {seq_len} is longer than the model's context of {context} "
            f"tokens; choose importance.seq_len <= {context}"
        )
    return seq_len


def cached_scores(
    run: RunConfig,
    model: nn.Module,
    samples: dict | Callable[[], dict],
    langs: list[str],
    fingerprints: tuple[str, str],
    root: Path,
) -> tuple[dict, str, bool]:
    """(scores, cache key, hit): from the content-addressed cache under `root`, computed and
    stored on a miss. The key holds every input that changes the scores; `fingerprints` are the
    token windows' (they stand for the text, the tokenizer and the samples' count and length)
    and the model's. `samples` may be a function giving the windows: it is called on a miss
    only, so a hit reads no text."""
    from regionbench.common.cache import Partial, ScoreCache, cache_key

    samples_fp, model_fp = fingerprints
    imp, per_language = run.importance, METRICS[run.metric.name].per_language
    inputs = {
        "model": run.model.name,
        "revision": run.model.revision,
        "weights": model_fp,
        "dtype": str(next(model.parameters()).dtype),
        "metric": run.metric.name,
        "samples": samples_fp,
        "batch_size": imp.batch_size if per_language else None,
        "scope": imp.scope,
        "include": list(imp.include),
        "exclude": list(imp.exclude),
        "seed": run.seed if METRICS[run.metric.name].uses_seed else None,
        "algorithm": ALGORITHM,
    }
    if imp.store_dtype != "float32":  # keys of fp32 entries stay what they were
        inputs["store_dtype"] = imp.store_dtype
    # The samples' fingerprint already tells packings apart; named too, for a reader of the
    # entry's metadata. Defaults are left out: the keys of existing entries stay what they were.
    if per_language and imp.packing != "windows":
        inputs["packing"] = imp.packing
        inputs["drop_long"] = imp.drop_long
    if per_language and imp.loss != "sample_mean":
        inputs["loss"] = imp.loss
    key = cache_key(**inputs)

    options = {
        "batch_size": imp.batch_size,
        "scope": imp.scope,
        "include": list(imp.include),
        "exclude": list(imp.exclude),
        "seed": run.seed,
        "gradient_checkpointing": imp.gradient_checkpointing,
        "loss": imp.loss,
    }

    def compute():
        windows = samples() if callable(samples) else samples
        if not per_language:  # one shared dict: stored once for every language
            return score_samples(model, dict.fromkeys(langs), run.metric.name, **options)
        # under torchrun the helper ranks score the same windows with us (gradient metrics;
        # an activation metric's forward passes are rank 0's alone)
        if METRICS[run.metric.name].activation is None:
            distributed.lead(run.to_dict(), windows, run.metric.name, options)
        # language by language: each is written to the cache and freed before the next; in one
        # process, finished languages (and checkpoints) survive a kill and are picked up again
        return iter_scores(
            model,
            windows,
            run.metric.name,
            accumulate_device=imp.accumulate_device,
            resume=partial if distributed.rank_world()[1] == 1 else None,
            checkpoint_every=imp.checkpoint_every,
            **options,
        )

    store, dtype = ScoreCache(root), STORE_DTYPES[imp.store_dtype]
    partial = Partial(root / f".partial-{key}")
    scores, hit = store.get_or_compute(key, compute, meta=inputs, dtype=dtype)
    partial.clear()
    if not per_language:  # one score set for every language: an entry made for other ones too
        shared = next(iter(scores.values()))
        scores = dict.fromkeys(langs, shared)
    return scores, key, hit
