"""One job, start to finish: config -> model -> texts -> importance -> region -> intervention ->
evaluation -> MLflow. Only this module knows the order; every stage is a call into its own
module, and what a sweep's jobs share lives in a `Session`.

    result = run_job(cfg, name="ratio=0.05")    # one MLflow run; never raises for a failed job
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regionbench
from regionbench.common import names
from regionbench.common.cache import cache_root
from regionbench.common.stopwatch import Stopwatch
from regionbench.config import Resume, RunConfig, config_hash, flatten, section
from regionbench.data import sources as texts
from regionbench.evaluation import stage as evaluation
from regionbench.importance.stage import check as check_importance
from regionbench.interventions import kinds as interventions
from regionbench.interventions.weights import restore_after
from regionbench.models import loading as models
from regionbench.plan import Plan, check_memory
from regionbench.regions import dimensions
from regionbench.regions import kinds as regions
from regionbench.report.job import job_note
from regionbench.report.view import shown_copies
from regionbench.session import Loaded, Session
from regionbench.tracking.client import (
    CLAIMED_TAG,
    CODE_TAGS,
    CONDITION_TAG,
    CONFIG_HASH_TAG,
    PARENT_ENV,
    REUSED_TAG,
    SEED_REUSED_TAG,
    SWEEP_ENV,
    Tracker,
    git_sha,
)
from regionbench.tracking.client import check as check_tracking
from regionbench.tracking.stopping import stoppable

log = logging.getLogger(__name__)
LM_EVAL_COMMAND = "lm_eval_command"  # tag: the lm_eval command line that scores the model
GENERATIONS = "generations.json"  # the before/after continuations table (eval.generation)
SESSION = Session()  # the process's own: the jobs of a basic-launcher sweep share it


def validate(run: RunConfig, groups: Sequence[str] = ()) -> RunConfig:
    """Every stage checks its own options, cheaply, before a model or dataset is touched
    (`groups`: the config groups Hydra composed, which `tracking.baseline` may name)."""
    plan_job(run, groups)
    return run


def plan_job(run: RunConfig, groups: Sequence[str] = ()) -> Plan:
    """`validate`, and the job's plan, which the stages then receive."""
    check_tracking(run, groups)
    cache_root(run.paths.cache_dir)  # a folder we can use (read-only: its entries are served)
    texts.check(run)
    models.check(run)
    plan = Plan.of(run)
    texts.check_targets(run, plan.target_langs)
    check_importance(run, reads_text=plan.reads_text or plan.reads_reference)
    regions.check(run, plan.importance_langs)
    interventions.check(run)
    evaluation.check(run)
    # the device memory the job needs, before the model loads (device=job: the first GPU's)
    check_memory(run, plan, models.resolve_device(models.device_for_job(run.device, 0)))
    texts.check_reachable(run)  # last: a hub dataset answers (once per process and dataset)
    return plan


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
    try:
        track = section(raw, "tracking")
        tracker = Tracker(track.uri, track.experiment)
    except ValueError as err:  # nowhere to record the job (StoreError too): say why, do no work
        log.error("job %r failed: %s", name, err)
        return {"status": "FAILED", "run_id": None, "name": name, "error": str(err)}
    job_hash = config_hash(raw)
    parent = os.environ.get(PARENT_ENV)
    tags = {
        "sweep_id": os.environ.get(SWEEP_ENV, ""),
        "job_num": job_num,
        "git_sha": git_sha(),
        "regionbench_version": regionbench.__version__,
        "model_id": section(raw, "model").name,
        CONFIG_HASH_TAG: job_hash,
    }
    if not parent:  # a job of no sweep: this is the store's next contact after a fault
        tracker.mark_stale(track.stale_after_s)
    resume = section(raw, "resume")
    condition = _seed_free_condition(raw) if parent else None
    if condition is not None:
        tags[CONDITION_TAG] = condition
    while True:  # leaves with a run started, or with a job that needs none
        if resume is Resume.NO and condition is None:
            run_id = tracker.start_run(name, parent_run_id=parent, tags=tags)
            break
        with tracker.claiming(lambda: cache_root(section(raw, "paths").cache_dir) / "locks"):
            if condition is not None:  # one seed of a seed-free condition answers for all
                done, running = tracker.condition_run(
                    condition, tags["sweep_id"] or parent, track.stale_after_s
                )
                if done is not None:
                    return _seed_reuse(tracker, done, name, job_num, parent)
            if condition is None or running is None:
                if resume is not Resume.NO:
                    code = None if resume is Resume.ANY else {k: tags[k] for k in CODE_TAGS}
                    done, other_code = tracker.finished_run(job_hash, code)
                    if done is not None:
                        return _reuse(tracker, done, name, job_num, parent, resume)
                    if other_code is not None:
                        _say_other_code(name, other_code, tags)
                    running = tracker.running_run(job_hash, track.stale_after_s)
                    if running is not None:
                        return _claimed(tracker, running, name, job_num, parent)
                run_id = tracker.start_run(name, parent_run_id=parent, tags=tags)
                break
        # another seed of this condition runs in a parallel job of the sweep: wait for it
        log.debug("job %r: waiting for run %s, its seed-free condition", name, running.info.run_id)
        time.sleep(SEED_WAIT_S)
    output_dir = Path(output_dir or tempfile.mkdtemp(prefix="regionbench-"))
    heartbeat = tracker.beating(run_id, track.heartbeat_s, parent)  # range: validate()
    try:
        with stoppable(), heartbeat:
            tracker.log_params(
                run_id, flatten(raw) | {f"choice.{k}": v for k, v in (choices or {}).items()}
            )
            run = RunConfig.from_cfg(raw)
            plan = plan_job(run, list(choices or {}))
            run.device = models.device_for_job(run.device, job_num)
            tracker.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(raw)), "config.yaml")
            job = Job(run, plan, tracker, run_id, output_dir, dict(choices or {}))
            metrics = _execute(job, session or SESSION)
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


def _reuse(
    tracker: Tracker, done, name: str, job_num: int, parent: str | None, resume: Resume
) -> dict[str, Any]:
    """`resume=true` and this job already FINISHED: no new run; the sweep's parent lists the
    old one among its jobs."""
    run_id = done.info.run_id
    log.info("job %r already FINISHED as run %s (resume=%s): skipped", name, run_id, resume)
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


SEED_WAIT_S = 2.0  # how often a seed-free job asks whether the condition's run has ended


def _seed_free_condition(raw: dict) -> str | None:
    """The hash of the job's config less `seed` when its result cannot depend on the seed
    (`Plan.uses_seed`: the region, the metric and the intervention are deterministic), else
    None. A config that does not make a plan is None here: the job fails as it would."""
    try:
        plan = Plan.of(RunConfig.from_cfg(raw))
    except Exception:  # noqa: BLE001 - the job reports its own error when it runs
        return None
    if plan.uses_seed:
        return None
    return config_hash({k: v for k, v in raw.items() if k != "seed"})


def _seed_reuse(tracker: Tracker, done, name: str, job_num: int, parent: str) -> dict[str, Any]:
    """A seed-free job whose condition already FINISHED in this sweep under another seed: no
    new run (it would repeat that one exactly); the parent lists it as reused."""
    run_id = done.info.run_id
    seed = done.data.params.get("seed", "?")
    log.info(
        "job %r cannot depend on its seed (deterministic region, metric and intervention): run "
        "%s at seed %s answers for it, no run created",
        name,
        run_id,
        seed,
    )
    tracker.set_tags(parent, {f"{SEED_REUSED_TAG}{job_num}": run_id})
    return {
        "status": "FINISHED",
        "run_id": run_id,
        "name": name,
        "metrics": dict(done.data.metrics),
        "reused": True,
    }


def _say_other_code(name: str, other, tags: dict) -> None:
    """Why a FINISHED run of the job is not reused: other code made it."""
    made = " at git ".join(other.data.tags.get(k, "unknown") for k in CODE_TAGS)
    now = " at git ".join(str(tags[k]) for k in CODE_TAGS)
    log.info(
        "job %r: its FINISHED run %s was made by regionbench %s, this is %s: running it again "
        "(resume=any reuses it)",
        name,
        other.info.run_id,
        made,
        now,
    )


def _claimed(tracker: Tracker, running, name: str, job_num: int, parent: str | None) -> dict:
    """`resume=true` and another launch runs this job right now: not started twice."""
    run_id, tags = running.info.run_id, running.data.tags
    owner = f"pid {tags.get('regionbench.pid', '?')} on {tags.get('regionbench.host', '?')}"
    log.info(
        "job %r is running in another launch as run %s (%s): not started again; relaunch with "
        "resume=true once it has ended to compare it here",
        name,
        run_id,
        owner,
    )
    if parent:
        tracker.set_tags(parent, {f"{CLAIMED_TAG}{run_id}": job_num})
    return {"status": "CLAIMED", "run_id": run_id, "name": name, "claimed": True}


def serve_importance(session: Session | None = None) -> int:
    """A helper rank under torchrun: score with rank 0 whenever it computes importance (see
    `regionbench.importance.distributed`) and evaluate with it (`regionbench.evaluation.ranks`),
    the model loaded once per config; the count of scorings served."""
    from regionbench.evaluation import ranks
    from regionbench.importance.distributed import serve

    session = session or SESSION

    def evaluate(run: dict, what: str, args: tuple, kwargs: dict) -> None:
        loaded = session.load(RunConfig.from_cfg(run))
        ranks.join(loaded.model, loaded.tokenizer, what, args, kwargs)

    return serve(lambda run: session.load(RunConfig.from_cfg(run)).model, {ranks.JOIN: evaluate})


@dataclass
class Job:
    """One job's config and plan, its MLflow run, its output folder and its stage clock."""

    run: RunConfig
    plan: Plan
    tracker: Tracker
    run_id: str
    out: Path
    choices: dict[str, str] = field(default_factory=dict)  # the config groups it chose
    clock: Stopwatch = field(default_factory=Stopwatch)


def _execute(job: Job, session: Session) -> dict[str, float]:
    run, plan, tracker, run_id, clock = job.run, job.plan, job.tracker, job.run_id, job.clock
    cache_dir = session.cache_dir(run)

    with clock("data"):
        eval_texts = texts.load_texts(
            run.data.source,
            "eval",
            list(plan.eval_langs),
            run.data.eval_docs,
            **texts.reading(run.data),
        )
        tasks = evaluation.prepare(run, eval_texts)  # task errors before model work

    with clock("load"):
        loaded = session.load(run)
    model, tok, model_fp = loaded.model, loaded.tokenizer, loaded.fingerprint
    where = models.provenance(run.model.name, cache_dir) | texts.provenance(run.data)
    tracker.set_tags(run_id, {"model_fingerprint": model_fp, **where})
    evaluation.check_texts(run, tok, eval_texts, loaded.context)  # before the importance pass

    with clock("importance"):
        scores, samples_fp, key, hit = session.scores(run, plan)
    log.info("importance %s (%s)", "cache hit" if hit else "computed", key[:12])
    tracker.set_tags(run_id, {"importance_key": key, "importance_cache": "hit" if hit else "miss"})

    with clock("outliers"):
        found = session.outliers(run, plan)
    with clock("select"):
        fps = (samples_fp, model_fp)
        langs = list(plan.importance_langs)
        totals = functools.partial(session.totals, run, scores, key, langs)  # read if asked
        region = regions.build(run, scores, langs, model, fps, found["dims"], totals)
    metrics = {names.REGION_PARAMS: float(region.numel), names.REGION_FRACTION: region.fraction}
    metrics |= _where_it_lives(job, model, region, found, scores)

    base = evaluation.baseline(
        run, model, tok, eval_texts, tasks, model_fp, cache_dir, session.baselines
    )
    if plan.trains:
        metrics |= _train(job, loaded, region, eval_texts, tasks, base)
    else:
        reference = session.reference(run, plan) if plan.reads_reference else None
        iv = run.intervention
        with plan.intervention.apply(model, region, iv, run.seed, reference) as applied:
            metrics[names.CHANGED] = float(applied.changed)
            evaluated, results = evaluation.evaluate(
                run, model, tok, eval_texts, tasks, base, clock
            )
            written, table = evaluation.generations(run, model, tok, eval_texts, base, clock)
        metrics |= evaluated | written
        _log_generations(job, table)
        if tasks is not None:
            tracker.log_dict(run_id, results, "lm_eval_results.json")
            _log_lm_eval_command(job, model, tasks)
    metrics |= clock.times
    tracker.log_metrics(run_id, metrics | shown_copies(metrics))  # + those the runs table shows
    tracker.set_tags(run_id, {"mlflow.note.content": job_note(tracker.run(run_id))})
    shown = (names.PPL_MEAN, names.PPL_RATIO_MEAN, names.REGION_FRACTION)
    log.info("  ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics))
    return metrics


def _train(job: Job, loaded: Loaded, region, eval_texts, tasks, base: dict) -> dict:
    """Further pre-training on the target languages, the region treated as the intervention
    says (freeze: held fixed); the loaded model is restored afterwards."""
    from regionbench.report.run_figures import forgetting_curve

    run, plan, tracker, run_id, clock = job.run, job.plan, job.tracker, job.run_id, job.clock
    model, tok, iv = loaded.model, loaded.tokenizer, run.intervention
    targets = list(plan.target_langs)
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
        tracker.log_metrics(run_id, metrics | shown_copies(metrics), step=step)

    save_dir = job.out / "model" if iv.save_model else None
    with restore_after(model) as snapshot:  # one model serves every job
        with clock("train"):
            summary = plan.intervention.train(
                model,
                tok,
                train_texts,
                region if region.numel > 0 else None,
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
        written, table = evaluation.generations(run, model, tok, eval_texts, base, clock)
    metrics |= written
    _log_generations(job, table)
    if tasks is not None:
        tracker.log_dict(run_id, results, "lm_eval_results.json")
        _log_lm_eval_command(job, model, tasks, summary["saved_to"])
    if summary["saved_to"]:
        tracker.set_tags(run_id, {"saved_model": summary["saved_to"]})
        log.info("trained model saved to %s", summary["saved_to"])
    # forget/* and learn/* were logged per step by log_fn; the run shows the last step's value.
    if summary["history"]:
        title = (
            f"{_what(job)} {plan.intervention.word} while training {_model_name(run)} on "
            f"{', '.join(targets)} (seed {run.seed})"
        )
        draw = lambda path: forgetting_curve(summary["history"], path, title=title)  # noqa: E731
        tracker.log_file(run_id, draw, "forgetting_curve.png")
    metrics |= {names.train(k): float(v) for k, v in summary.items() if isinstance(v, int | float)}
    metrics[names.CHANGED] = float(changed)
    return metrics


def _log_generations(job: Job, table: dict) -> None:
    """The before/after continuations (eval.generation) as the run's table artifact."""
    if table and table["lang"]:
        job.tracker.log_table(job.run_id, table, GENERATIONS)


def _log_lm_eval_command(job: Job, model, tasks, saved_to: str | None = None) -> None:
    """Tag `lm_eval_command`: the `lm_eval` command line(s) that score the model as loaded (or
    as trained and saved, `saved_to`) as this job scored it, our tasks in its artifacts
    (`lm_eval_tasks/`); none where the artifacts are not a local folder and our tasks are used."""
    where = job.tracker.artifact_folder(job.run_id)
    folder = Path(where) / "lm_eval_tasks" if "://" not in where else None
    command = evaluation.lm_eval_command(job.run, model, tasks, folder, saved_to)
    if command is not None:
        job.tracker.set_tags(job.run_id, {LM_EVAL_COMMAND: command})


def _where_it_lives(job: Job, model, region, found: dict, scores) -> dict[str, float]:
    """The region's summary and dimension profile as artifacts; its concentration, its share on
    the model's massive-activation dimensions and the super weights it contains as metrics."""
    from regionbench.report.run_figures import dimension_profile, region_density

    run, tracker, run_id = job.run, job.tracker, job.run_id
    summary = region.summary()
    tracker.log_rows(run_id, summary, "region_summary.csv")
    if region.numel and run.tracking.save_region:
        tracker.log_file(run_id, region.save, "region.safetensors")
    if region.numel:
        title = f"{_what(job)} of {_model_name(run)}: share of each block matrix selected"
        # where a per-matrix share is the same everywhere: the importance each matrix keeps,
        # from the S sums the selection saw (a sweep reads its scores once), else the scores
        # (read only for such a region)
        shares = lambda: region.held_shares() or region.score_shares(scores)  # noqa: E731
        draw = lambda path: region_density(summary, path, title, shares)  # noqa: E731
        tracker.log_file(run_id, draw, "region_density.png")
    metrics, rows, per_dim = dimensions.where_it_lives(model, region, found)
    if rows:
        title = f"{_what(job)} of {_model_name(run)}: entries per hidden dimension"
        tracker.log_rows(run_id, rows, "region_dims.csv")
        draw = lambda path: dimension_profile(per_dim, path, title=title, marked=found["dims"])  # noqa: E731
        tracker.log_file(run_id, draw, "region_dims.png")
    return metrics


def _what(job: Job) -> str:
    """The region in words for a run's own figures: "taylor core 5%", "taylor monolingual latn
    5%", "top-dims" (a preset, by its name), "nothing" (the empty region)."""
    if job.plan.baseline:
        return "nothing"
    params = {k: str(v) for k, v in flatten(job.run.to_dict()).items()}
    if job.choices.get("region"):
        params["choice.region"] = job.choices["region"]
    return " ".join(w for w in job.plan.region.words(params) if w)


def _model_name(run) -> str:
    """The model's short name, after the debug banner in a `+debug` job's figure titles."""
    from regionbench.report.sweep import DEBUG_BANNER

    name = Path(run.model.name).name
    return f"{name} {DEBUG_BANNER}" if run.debug else name
