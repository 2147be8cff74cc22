"""One job, start to finish: config -> model -> texts -> importance -> region -> intervention ->
evaluation -> MLflow. Only this module knows the order; every stage is a call into its own
module, and what a sweep's jobs share lives in a `Session`.

    result = run_job(cfg, name="ratio=0.05")    # one MLflow run; never raises for a failed job
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regionbench
from regionbench.common import names
from regionbench.common.cache import cache_root
from regionbench.config import RunConfig
from regionbench.data import sources as texts
from regionbench.evaluation import stage as evaluation
from regionbench.importance.stage import check as check_importance
from regionbench.interventions import training
from regionbench.interventions import weights as interventions
from regionbench.models import loading as models
from regionbench.regions import dimensions
from regionbench.regions import select as regions
from regionbench.session import Loaded, Session
from regionbench.tracking.client import (
    CONFIG_HASH_TAG,
    PARENT_ENV,
    REUSED_TAG,
    SWEEP_ENV,
    Stopwatch,
    StoreError,
    Tracker,
    config_hash,
    flatten,
    git_sha,
    stoppable,
)
from regionbench.tracking.client import check as check_tracking

log = logging.getLogger(__name__)
SESSION = Session()  # the process's own: the jobs of a basic-launcher sweep share it


def validate(run: RunConfig, groups: Sequence[str] = ()) -> RunConfig:
    """Every stage checks its own options, cheaply, before a model or dataset is touched
    (`groups`: the config groups Hydra composed, which `tracking.baseline` may name)."""
    check_tracking(run, groups)
    cache_root(run.paths.cache_dir)  # a folder we can write, before any work goes into it
    texts.check(run)
    models.check(run)
    check_importance(run)
    regions.check(run, texts.importance_langs(run))
    interventions.check(run)
    if run.intervention.name == "freeze":
        training.check(run.intervention)
    evaluation.check(run)
    return run


def run_job(
    cfg: Any,
    *,
    name: str = "default",
    job_num: int = 0,
    output_dir: str | os.PathLike | None = None,
    session: Session | None = None,
    choices: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one job and record it as one MLflow run; never raises for a failed job (the run is
    marked FAILED with its error and the result says so), so the other jobs of a sweep go on."""
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw.pop("hydra", None)
    track = raw.get("tracking") or {}
    try:
        tracker = Tracker(track.get("uri"), track.get("experiment") or "regionbench")
    except StoreError as err:  # nowhere to record the job: say why, do no work
        log.error("job %r failed: %s", name, err)
        return {"status": "FAILED", "run_id": None, "name": name, "error": str(err)}
    job_hash = config_hash(raw)
    parent = os.environ.get(PARENT_ENV)
    if raw.get("resume"):
        done = tracker.finished_run(job_hash)
        if done is not None:
            return _reuse(tracker, done, name, job_num, parent)
    tags = {
        "sweep_id": os.environ.get(SWEEP_ENV, ""),
        "job_num": job_num,
        "git_sha": git_sha(),
        "regionbench_version": regionbench.__version__,
        "model_id": (raw.get("model") or {}).get("name", ""),
        CONFIG_HASH_TAG: job_hash,
    }
    run_id = tracker.start_run(name, parent_run_id=parent, tags=tags)
    output_dir = Path(output_dir or tempfile.mkdtemp(prefix="regionbench-"))
    interval = track.get("heartbeat_s", 60.0)  # checked with the rest, in validate()
    heartbeat = tracker.beating(
        run_id, interval if isinstance(interval, int | float) else 0, parent
    )
    try:
        with stoppable(), heartbeat:
            tracker.log_params(
                run_id, flatten(raw) | {f"choice.{k}": v for k, v in (choices or {}).items()}
            )
            run = validate(RunConfig.from_cfg(raw), list(choices or {}))
            run.device = models.device_for_job(run.device, job_num)
            tracker.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(raw)), "config.yaml")
            metrics = _execute(Job(run, tracker, run_id, output_dir), session or SESSION)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED", error=heartbeat.reason or "interrupted")
        raise
    except Exception as err:  # noqa: BLE001 - a failed job must not stop the sweep
        tracker.end_run(run_id, "FAILED", error=traceback.format_exc())
        message = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        log.error("job %r failed: %s", name, message.splitlines()[0] if message else message)
        log.debug("traceback:\n%s", traceback.format_exc())
        return {"status": "FAILED", "run_id": run_id, "name": name, "error": message}
    tracker.end_run(run_id, "FINISHED")
    return {"status": "FINISHED", "run_id": run_id, "name": name, "metrics": metrics}


def _reuse(tracker: Tracker, done, name: str, job_num: int, parent: str | None) -> dict[str, Any]:
    """`resume=true` and this job already FINISHED: no new run; the sweep's parent lists the
    old one among its jobs."""
    run_id = done.info.run_id
    log.info("job %r already FINISHED as run %s (resume=true): skipped", name, run_id)
    if parent:
        tracker.set_tags(parent, {f"{REUSED_TAG}{run_id}": job_num})
    metrics = dict(done.data.metrics)
    return {
        "status": "FINISHED",
        "run_id": run_id,
        "name": name,
        "metrics": metrics,
        "reused": True,
    }


def serve_importance(session: Session | None = None) -> int:
    """A helper rank under torchrun: score with rank 0 whenever it computes importance (see
    `regionbench.importance.distributed`), the model loaded once per config; the count served."""
    from regionbench.importance.distributed import serve

    session = session or SESSION
    return serve(lambda run: session.load(RunConfig.from_cfg(run)).model)


@dataclass
class Job:
    """One job's config, its MLflow run, its output folder and its stage clock."""

    run: RunConfig
    tracker: Tracker
    run_id: str
    out: Path
    clock: Stopwatch = field(default_factory=Stopwatch)


def _execute(job: Job, session: Session) -> dict[str, float]:
    run, tracker, run_id, clock = job.run, job.tracker, job.run_id, job.clock
    cache_dir = session.cache_dir(run)
    imp_langs, ev_langs = texts.importance_langs(run), texts.eval_langs(run)
    freeze = run.intervention.name == "freeze"
    if freeze:
        ev_langs += [lang for lang in texts.target_langs(run) if lang not in ev_langs]

    with clock("data"):
        eval_texts = texts.load_texts(
            run.data.source, "eval", ev_langs, run.data.eval_docs, **texts.reading(run.data)
        )
        tasks = evaluation.prepare(run, eval_texts)  # task errors before model work

    with clock("load"):
        loaded = session.load(run)
    model, tok, model_fp = loaded.model, loaded.tokenizer, loaded.fingerprint
    tracker.set_tags(run_id, {"model_fingerprint": model_fp})
    evaluation.check_texts(run, tok, eval_texts, loaded.context)  # before the importance pass

    with clock("importance"):
        scores, samples_fp, key, hit = session.scores(run, imp_langs)
    log.info("importance %s (%s)", "cache hit" if hit else "computed", key[:12])
    tracker.set_tags(run_id, {"importance_key": key, "importance_cache": "hit" if hit else "miss"})

    with clock("outliers"):
        found = session.outliers(run, eval_texts)
    with clock("select"):
        fps = (samples_fp, model_fp)
        region = dimensions.for_run(run, scores, imp_langs, model, fps, found["dims"])
    metrics = {names.REGION_PARAMS: float(region.numel), names.REGION_FRACTION: region.fraction}
    metrics |= _where_it_lives(job, model, region, found)

    base = evaluation.baseline(
        run, model, tok, eval_texts, tasks, model_fp, cache_dir, session.baselines
    )
    if freeze:
        metrics |= _freeze(job, loaded, region, eval_texts, tasks, base)
    else:
        iv = run.intervention
        kw = {"factor": iv.factor, "std": iv.std, "seed": run.seed, "relative": iv.relative}
        with interventions.intervene(model, region, iv.name, **kw) as applied:
            metrics[names.CHANGED] = float(applied.changed)
            evaluated, results = evaluation.evaluate(
                run, model, tok, eval_texts, tasks, base, clock
            )
        metrics |= evaluated
        if tasks is not None:
            tracker.log_dict(run_id, results, "lm_eval_results.json")
    metrics |= clock.times
    tracker.log_metrics(run_id, metrics)
    shown = (names.PPL_MEAN, names.PPL_RATIO_MEAN, names.REGION_FRACTION)
    log.info("  ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics))
    return metrics


def _freeze(job: Job, loaded: Loaded, region, eval_texts, tasks, base: dict) -> dict:
    """Further pre-training with the region frozen; the loaded model is restored afterwards."""
    from regionbench.report.plots import forgetting_curve

    run, tracker, run_id, clock = job.run, job.tracker, job.run_id, job.clock
    model, tok, iv = loaded.model, loaded.tokenizer, run.intervention
    targets = texts.target_langs(run)
    train_texts = texts.load_texts(
        run.data.source, "train", targets, iv.train_docs, **texts.reading(run.data)
    )
    before = {lang: r["ppl"] for lang, r in base["ppl"].items()}

    def eval_fn(step: int) -> dict[str, float]:
        # Step 0 is the unmodified model, whose evaluation is already cached.
        now = evaluation.perplexities(run, model, tok, eval_texts) if step else None
        ppl = before if step == 0 else {lang: r["ppl"] for lang, r in now.items()}
        paper = evaluation.paper_metrics(run, model, tok, eval_texts, base, now=step > 0)
        return names.forgetting_metrics(before, ppl, targets) | paper

    def log_fn(metrics: dict[str, float], step: int) -> None:
        tracker.log_metrics(run_id, metrics, step=step)

    frozen = region if region.numel > 0 else None
    save_dir = job.out / "model" if iv.save_model else None
    with interventions.restore_after(model) as snapshot:  # one model serves every job
        with clock("train"):
            summary = training.train_frozen(
                model,
                tok,
                train_texts,
                frozen,
                iv,
                seed=run.seed,
                eval_fn=eval_fn,
                log_fn=log_fn,
                save_dir=save_dir,
            )
        changed = snapshot.changed()
        # ppl_paper/* as forget/*: logged per step by log_fn, the last step's is the run's value
        metrics, results = evaluation.evaluate(
            run, model, tok, eval_texts, tasks, base, clock, paper=False
        )
    if tasks is not None:
        tracker.log_dict(run_id, results, "lm_eval_results.json")
    if summary["saved_to"]:
        tracker.set_tags(run_id, {"saved_model": summary["saved_to"]})
        log.info("trained model saved to %s", summary["saved_to"])
    # forget/* and learn/* were logged per step by log_fn; the run shows the last step's value.
    if summary["history"]:
        targets_text = ", ".join(targets)
        title = (
            f"{_what(run)} frozen while training {_model_name(run)} on {targets_text} "
            f"(seed {run.seed})"
        )
        draw = lambda path: forgetting_curve(summary["history"], path, title=title)  # noqa: E731
        tracker.log_file(run_id, draw, "forgetting_curve.png")
    metrics |= {names.train(k): float(v) for k, v in summary.items() if isinstance(v, int | float)}
    metrics[names.CHANGED] = float(changed)
    return metrics


def _where_it_lives(job: Job, model, region, found: dict) -> dict[str, float]:
    """The region's summary and dimension profile as artifacts; its concentration, its share on
    the model's massive-activation dimensions and the super weights it contains as metrics."""
    run = job.run
    density = f"{_what(run)} of {_model_name(run)}: share of each block matrix selected"
    job.tracker.log_region(job.run_id, region, mask=run.tracking.save_region, title=density)
    metrics, rows, per_dim = dimensions.where_it_lives(model, region, found)
    title = f"{_what(run)} of {_model_name(run)}: entries per hidden dimension"
    job.tracker.log_profile(job.run_id, rows, per_dim, title=title, marked=found["dims"])
    return metrics


def _what(run) -> str:
    """The region in words for a run's own figures: "taylor core 5%", "taylor monolingual latn
    5%", "nothing" (ratio 0)."""
    if run.ratio == 0:
        return "nothing"
    words = [run.metric.name, run.region.name]
    lang = getattr(run.region, "lang", None)
    if lang:
        words.append(str(lang))
    if run.ratio:
        words.append(f"{run.ratio * 100:g}%")
    return " ".join(words)


def _model_name(run) -> str:
    return Path(run.model.name).name
