"""One job, start to finish: config -> model -> texts -> importance -> region -> intervention ->
evaluation -> MLflow. Only this module knows the order; every stage is a function call elsewhere.

The loaded model, importance scores and the unmodified model's evaluation are kept for the life
of the process (and scores and baselines on disk), so the jobs of a sweep only pay for what
differs between them: a ratio sweep scores importance once and thresholds it K times.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import regionbench
from regionbench import config as C
from regionbench.config import RunConfig
from regionbench.tracking import PARENT_ENV, SWEEP_ENV, Tracker, flatten, git_sha

log = logging.getLogger(__name__)

# Process-lifetime state: Hydra's basic launcher runs a sweep's jobs one after another in one
# process, so the model stays loaded (and is restored bit-exactly after each intervention).
_MODEL: dict[str, Any] = {}
_BASELINES: dict[str, dict] = {}
_SAMPLES: dict[str, tuple[dict, str]] = {}  # importance windows and their fingerprint, per input


class Stopwatch:
    """Collects `time/<stage>_s` for MLflow."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{stage}_s"] = time.perf_counter() - start


def run_job(
    cfg: Any,
    *,
    name: str = "default",
    job_num: int = 0,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run one job and record it as one MLflow run; never raises for a failed job (the run is
    marked FAILED with its error and the result says so), so the other jobs of a sweep go on."""
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw.pop("hydra", None)
    tracking = raw.get("tracking") or {}
    tracker = Tracker(tracking.get("uri"), tracking.get("experiment") or "regionbench")
    parent = os.environ.get(PARENT_ENV)
    run_id = tracker.start_run(
        name,
        parent_run_id=parent,
        tags={
            "sweep_id": os.environ.get(SWEEP_ENV, ""),
            "job_num": job_num,
            "git_sha": git_sha(),
            "regionbench_version": regionbench.__version__,
            "model_id": (raw.get("model") or {}).get("name", ""),
        },
    )
    output_dir = Path(output_dir or tempfile.mkdtemp(prefix="regionbench-"))
    try:
        tracker.log_params(run_id, flatten(raw))
        run = C.validate(RunConfig.from_cfg(raw))
        tracker.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(raw)), "config.yaml")
        metrics = _execute(run, tracker, run_id, output_dir)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED", error="interrupted")
        raise
    except Exception as err:  # noqa: BLE001 - a failed job must not stop the sweep
        tracker.end_run(run_id, "FAILED", error=traceback.format_exc())
        message = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        log.error("job %r failed: %s", name, message.splitlines()[0] if message else message)
        log.debug("traceback:\n%s", traceback.format_exc())
        return {"status": "FAILED", "run_id": run_id, "name": name, "error": message}
    tracker.end_run(run_id, "FINISHED")
    return {"status": "FINISHED", "run_id": run_id, "name": name, "metrics": metrics}


def _execute(run: RunConfig, tracker: Tracker, run_id: str, out: Path) -> dict[str, float]:
    from regionbench.data import load_texts

    clock = Stopwatch()
    imp_langs, ev_langs = C.importance_langs(run), C.eval_langs(run)
    freeze = run.intervention.name == "freeze"
    if freeze:
        ev_langs += [lang for lang in C.target_langs(run) if lang not in ev_langs]

    with clock("data"):
        eval_texts = load_texts(
            run.data.source, "eval", ev_langs, run.data.eval_docs, **_data_kw(run)
        )
        lm_tasks = _prepare_harness(run, eval_texts)  # task-name errors before model work

    with clock("load"):
        model, tok, model_fp = _load(run)
    tracker.set_tags(run_id, {"model_fingerprint": model_fp})

    with clock("importance"):
        samples, data_fp = _importance_samples(run, tok, imp_langs, model)
        scores, key, hit = _importance(run, model, samples, data_fp, model_fp)
    log.info("importance %s (%s)", "cache hit" if hit else "computed", key[:12])
    tracker.set_tags(run_id, {"importance_key": key, "importance_cache": "hit" if hit else "miss"})

    with clock("select"):
        region = _select(run, scores, imp_langs, data_fp, model_fp)
    metrics: dict[str, float] = {
        "region/params": float(region.numel),
        "region/fraction": float(region.fraction),
    }
    _log_region(tracker, run_id, run, region, out)

    base = _baseline(run, model, tok, eval_texts, lm_tasks, model_fp)
    if freeze:
        metrics |= _freeze(
            run, model, tok, region, eval_texts, lm_tasks, base, tracker, run_id, out, clock
        )
    else:
        from regionbench.interventions import intervene

        iv = run.intervention
        with intervene(
            model,
            region,
            iv.name,
            factor=iv.factor,
            std=iv.std,
            seed=run.seed,
            relative=iv.relative,
        ) as applied:
            metrics["intervention/changed"] = float(applied.changed)
            metrics |= _evaluate(
                run, model, tok, eval_texts, lm_tasks, base, tracker, run_id, clock
            )
    metrics |= clock.times
    tracker.log_metrics(run_id, metrics)
    log.info(
        "ppl/mean %.3f  ppl_ratio/mean %.4f  region/fraction %.4f",
        metrics.get("ppl/mean", float("nan")),
        metrics.get("ppl_ratio/mean", float("nan")),
        metrics["region/fraction"],
    )
    return metrics


# --- stages --------------------------------------------------------------------------------------


def _load(run: RunConfig):
    from regionbench.cache import fingerprint_model
    from regionbench.models import load_model

    m = run.model
    key = json.dumps(
        [
            m.name,
            m.revision,
            m.dtype,
            str(m.device_map),
            run.device,
            m.trust_remote_code,
            run.paths.cache_dir,
        ]
    )
    if _MODEL.get("key") != key:
        _MODEL.clear()
        _SAMPLES.clear()  # tokenized by the previous model's tokenizer
        model, tok = load_model(
            m.name,
            dtype=m.dtype,
            device=run.device,
            revision=m.revision,
            trust_remote_code=m.trust_remote_code,
            device_map=m.device_map,
            cache_dir=run.paths.cache_dir,
        )
        _MODEL.update(
            key=key,
            model=model,
            tok=tok,
            fp=fingerprint_model(
                model, full=sum(p.numel() for p in model.parameters()) < 100_000_000
            ),
        )
    return _MODEL["model"], _MODEL["tok"], _MODEL["fp"]


def _data_kw(run: RunConfig) -> dict[str, Any]:
    return {"path": run.data.path, "config": run.data.config, "text_field": run.data.text_field}


def importance_seq_len(run: RunConfig, model) -> int:
    """`importance.seq_len`, or the paper's 512 capped at the model's context length."""
    from regionbench.evaluation.perplexity import default_max_length

    context = default_max_length(model, None)
    seq_len = run.importance.seq_len or min(512, context)
    if seq_len > context:
        raise ValueError(
            f"importance.seq_len {seq_len} is longer than the model's context of "
            f"{context} tokens; choose importance.seq_len <= {context}"
        )
    return seq_len


def _importance_samples(run: RunConfig, tok, langs: list[str], model) -> tuple[dict, str]:
    """The same number of fixed-length token windows per importance language (equal weight)
    and their fingerprint; none when no text is scored (ratio 0, a language-independent metric).
    Kept for the process: the jobs of a sweep read and tokenize the text once."""
    from regionbench.cache import fingerprint_samples
    from regionbench.data.sources import iter_texts
    from regionbench.scoring import METRICS, importance_samples

    if run.ratio == 0 or not METRICS[run.metric.name].per_language:
        return {}, ""
    seq_len = importance_seq_len(run, model)
    memo = json.dumps(
        [_MODEL["key"], run.data.source, langs, seq_len, run.importance.samples, _data_kw(run)]
    )
    if memo not in _SAMPLES:
        streams = {
            lang: iter_texts(run.data.source, "importance", lang, **_data_kw(run)) for lang in langs
        }
        samples = importance_samples(tok, streams, seq_len, run.importance.samples)
        log.info(
            "importance text: %d samples of %d tokens per language",
            *next(iter(samples.values())).shape,
        )
        _SAMPLES.clear()  # one text set at a time: 10k x 512 tokens x 6 languages is 250 MB
        _SAMPLES[memo] = (samples, fingerprint_samples(samples))
    return _SAMPLES[memo]


def importance_key(run: RunConfig, model, data_fp: str, model_fp: str) -> tuple[str, dict]:
    """The content address of a job's scores: every input that changes them. The token windows'
    fingerprint stands for the text, the tokenizer and the sample count and length."""
    from regionbench.cache import cache_key
    from regionbench.scoring import METRICS

    per_language = METRICS[run.metric.name].per_language
    inputs = {
        "model": run.model.name,
        "revision": run.model.revision,
        "weights": model_fp,
        "dtype": str(next(model.parameters()).dtype),
        "metric": run.metric.name,
        "samples": data_fp,
        "batch_size": run.importance.batch_size if per_language else None,
        "scope": run.importance.scope,
        "include": list(run.importance.include),
        "exclude": list(run.importance.exclude),
        "seed": run.seed if run.metric.name == "random" else None,
        "version": regionbench.__version__,
    }
    return cache_key(**inputs), inputs


def _importance(run: RunConfig, model, samples, data_fp: str, model_fp: str):
    """Scores from the content-addressed cache, computed and stored on a miss."""
    from regionbench.cache import ScoreCache
    from regionbench.models import resolve_cache_dir
    from regionbench.scoring import score_samples

    if run.ratio == 0:
        return {}, "none (ratio=0)", True
    key, inputs = importance_key(run, model, data_fp, model_fp)
    store = ScoreCache(resolve_cache_dir(run.paths.cache_dir) / "importance")
    scores = store.get(key)
    if scores is not None:
        return scores, key, True
    imp = run.importance
    langs = list(samples) or C.importance_langs(run)
    scores = score_samples(
        model,
        samples or dict.fromkeys(langs),
        run.metric.name,
        batch_size=imp.batch_size,
        scope=imp.scope,
        include=imp.include,
        exclude=imp.exclude,
        seed=run.seed,
    )
    store.put(key, scores, meta=inputs)
    return scores, key, False


def _select(run: RunConfig, scores, langs: list[str], data_fp: str, model_fp: str):
    from regionbench.regions import Region, select
    from regionbench.scope import scoped_params

    meta = {
        "model_id": run.model.name,
        "revision": str(run.model.revision),
        "metric": run.metric.name,
        "region": run.region.name,
        "ratio": str(run.ratio),
        "languages": ",".join(langs),
        "data_fingerprint": data_fp,
        "model_fingerprint": model_fp,
        "regionbench_version": regionbench.__version__,
    }
    if run.ratio == 0:
        imp = run.importance
        params = scoped_params(_MODEL["model"], imp.scope, imp.include, imp.exclude)
        masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
        return Region(masks=masks, meta=meta)
    return select(scores, run.ratio, run.region.name, lang=run.region.lang, langs=langs, meta=meta)


def _log_region(tracker: Tracker, run_id: str, run: RunConfig, region, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = region.summary()
    path = out / "region_summary.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["layer", "module"])
        writer.writeheader()
        writer.writerows(rows)
    tracker.log_artifact(run_id, path)
    if run.tracking.save_region and run.ratio > 0:
        region.save(out / "region.safetensors")
        tracker.log_artifact(run_id, out / "region.safetensors")


def lm_eval_tasks(run: RunConfig) -> tuple[str, ...]:
    """`eval.lm_eval.tasks`, or (null) the tasks the data source brings along."""
    from regionbench.data.sources import default_tasks

    tasks = run.eval.lm_eval.tasks
    return default_tasks(run.data.source) if tasks is None else tuple(tasks)


def _prepare_harness(run: RunConfig, eval_texts: dict[str, list[str]]):
    """Write our lm-eval tasks for this run's data; expand per-language task templates; check
    every task name. Returns (include_path, tasks) or None when no harness task is asked for."""
    tasks = list(lm_eval_tasks(run))
    if not tasks:
        return None
    from regionbench.evaluation import harness
    from regionbench.models import resolve_cache_dir

    pairs = None
    if run.data.source == "sandbox":
        from regionbench.data import sandbox

        langs = [lang for lang in eval_texts if lang in sandbox.PRETRAIN_LANGS]
        pairs = {
            lang: sandbox.minimal_pairs(lang, run.eval.lm_eval.grammar_pairs) for lang in langs
        }
    blob = json.dumps([eval_texts, pairs], ensure_ascii=False, sort_keys=True).encode()
    root = resolve_cache_dir(run.paths.cache_dir) / "tasks" / hashlib.sha256(blob).hexdigest()[:16]
    if not root.exists():
        tmp = Path(tempfile.mkdtemp(dir=root.parent if root.parent.exists() else None))
        harness.write_tasks(tmp, ppl_texts=eval_texts, grammar_pairs=pairs)
        root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another process wrote the same content first
            tmp.rename(root)
    if any("{" in t for t in tasks):
        from regionbench.data.sources import FLORES200_CODES, FLORES_CODES

        codes = [
            {
                "lang": lang,
                "flores": FLORES_CODES.get(lang, lang),
                "flores200": FLORES200_CODES.get(lang, lang),
            }
            for lang in eval_texts
        ]
        tasks, skipped = harness.expand_tasks(tasks, codes, root)
        if skipped:
            log.info("lm-eval has no task %s: skipped", ", ".join(skipped))
        if not tasks:
            raise ValueError(
                f"no lm-eval task of {list(lm_eval_tasks(run))} covers the "
                f"languages {', '.join(eval_texts)}"
            )
    harness.prepare_tasks(tasks, root)  # names and hub datasets, before any model work
    return root, tasks


def _ppl(run: RunConfig, model, tok, texts) -> dict[str, dict[str, float]]:
    from regionbench.evaluation.perplexity import perplexity

    res = perplexity(
        model, tok, texts, max_length=run.data.max_length, batch_size=run.eval.batch_size
    )
    return {lang: asdict(r) for lang, r in res.items()}


def _lm_eval(run: RunConfig, model, tok, lm_tasks) -> tuple[dict[str, float], dict]:
    if lm_tasks is None:
        return {}, {}
    from regionbench.evaluation.harness import flatten_results, run_lm_eval

    harness_dir, tasks = lm_tasks
    le = run.eval.lm_eval
    results = run_lm_eval(
        model,
        tok,
        tasks,
        limit=le.limit,
        num_fewshot=le.num_fewshot,
        batch_size=le.batch_size,
        include_path=harness_dir,
        log_samples=le.log_samples,
        max_length=run.data.max_length,
    )
    return flatten_results(results), results


def _baseline(run: RunConfig, model, tok, eval_texts, lm_tasks, model_fp: str) -> dict:
    """The unmodified model's evaluation, once per process and cached on disk."""
    from regionbench.cache import fingerprint_texts as fingerprint
    from regionbench.evaluation.harness import BOS_POLICY
    from regionbench.models import resolve_cache_dir

    parts = [
        model_fp,
        fingerprint(eval_texts),
        run.data.max_length,
        run.eval.perplexity,
        asdict(run.eval.lm_eval) if lm_tasks else None,
        str(lm_tasks),
        BOS_POLICY if lm_tasks else None,
        regionbench.__version__,
    ]
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    if key in _BASELINES:
        return _BASELINES[key]
    path = resolve_cache_dir(run.paths.cache_dir) / "baselines" / f"{key}.json"
    if path.is_file():
        with contextlib.suppress(ValueError):
            _BASELINES[key] = json.loads(path.read_text())
            log.info("baseline evaluation: cache hit")
            return _BASELINES[key]
    log.info("evaluating the unmodified model (once; cached)")
    ppl = _ppl(run, model, tok, eval_texts) if run.eval.perplexity else {}
    lm, _ = _lm_eval(run, model, tok, lm_tasks)
    base = {"ppl": ppl, "lm_eval": lm}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(base))
    os.replace(tmp, path)
    _BASELINES[key] = base
    return base


def ppl_metrics(ppl: dict[str, dict], base: dict[str, dict]) -> dict[str, float]:
    """`ppl/<lang>`, `bpb/<lang>`, `ppl_ratio/<lang>` and their means over languages."""
    out: dict[str, float] = {}
    for lang, r in ppl.items():
        out[f"ppl/{lang}"] = r["ppl"]
        out[f"bpb/{lang}"] = r["bpb"]
        if lang in base:
            out[f"ppl_ratio/{lang}"] = r["ppl"] / base[lang]["ppl"]
    for stem in ("ppl", "bpb", "ppl_ratio"):
        vals = [v for k, v in out.items() if k.startswith(f"{stem}/")]
        if vals:
            out[f"{stem}/mean"] = sum(vals) / len(vals)
    return out


def lm_eval_ratios(lm: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    return {
        k.replace("lm_eval/", "lm_eval_ratio/", 1): v / base[k]
        for k, v in lm.items()
        if not k.endswith("_stderr") and base.get(k)
    }


def _evaluate(run, model, tok, eval_texts, lm_tasks, base, tracker, run_id, clock) -> dict:
    metrics: dict[str, float] = {}
    if run.eval.perplexity:
        with clock("eval"):
            metrics |= ppl_metrics(_ppl(run, model, tok, eval_texts), base["ppl"])
    if lm_tasks is not None:
        with clock("lm_eval"):
            lm, results = _lm_eval(run, model, tok, lm_tasks)
        metrics |= lm | lm_eval_ratios(lm, base["lm_eval"])
        tracker.log_dict(run_id, _jsonable(results), "lm_eval_results.json")
    return metrics


def _freeze(
    run, model, tok, region, eval_texts, lm_tasks, base, tracker, run_id, out, clock
) -> dict:
    """Further pre-training with the region frozen; the loaded model is restored afterwards."""
    from regionbench.data import load_texts
    from regionbench.plots import forgetting_curve
    from regionbench.training import forgetting_metrics, restore_after, train_frozen

    iv = run.intervention
    targets = C.target_langs(run)
    train_texts = load_texts(run.data.source, "train", targets, iv.train_docs, **_data_kw(run))
    fcfg = C.freeze_config(run)
    before = {lang: r["ppl"] for lang, r in base["ppl"].items()}

    def eval_fn(step: int) -> dict[str, float]:
        # Step 0 is the unmodified model, whose evaluation is already cached.
        ppl = (
            before
            if step == 0
            else {lang: r["ppl"] for lang, r in _ppl(run, model, tok, eval_texts).items()}
        )
        return forgetting_metrics(before, ppl, targets)

    def log_fn(metrics: dict[str, float], step: int) -> None:
        tracker.log_metrics(run_id, metrics, step=step)

    frozen = region if region.numel > 0 else None
    with restore_after(model) as snapshot:  # one loaded model serves every job: undo training
        with clock("train"):
            summary = train_frozen(
                model,
                tok,
                train_texts,
                frozen,
                fcfg,
                eval_fn=eval_fn,
                log_fn=log_fn,
                save_dir=out / "model" if iv.save_model else None,
            )
        changed = snapshot.changed()
        metrics = _evaluate(run, model, tok, eval_texts, lm_tasks, base, tracker, run_id, clock)
    if summary["saved_to"]:
        tracker.set_tags(run_id, {"saved_model": summary["saved_to"]})
        log.info("trained model saved to %s", summary["saved_to"])
    # forget/* and learn/* were logged per step by log_fn; the run shows the last step's value.
    history = summary["history"]
    if history:
        forgetting_curve(history, out / "forgetting_curve.png")
        tracker.log_artifact(run_id, out / "forgetting_curve.png")
    metrics |= {f"train/{k}": float(v) for k, v in summary.items() if isinstance(v, int | float)}
    metrics["intervention/changed"] = float(changed)
    return metrics


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
