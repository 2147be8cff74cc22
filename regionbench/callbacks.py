"""Hydra callbacks that make a sweep one MLflow parent run with its jobs nested under it.

The parent is created before any job starts (which also creates the store once, so parallel
launchers never race to migrate a fresh SQLite file); its id reaches the jobs through the
environment, so it works for in-process and subprocess launchers alike. At the end the parent
gets the comparison table and plots, and the command exits non-zero naming any failed job.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import regionbench
from regionbench.config import TrackingConfig, section
from regionbench.tracking import liveness
from regionbench.tracking.client import (
    PARENT_ENV,
    SWEEP_ENV,
    SWEEP_KEYS_ENV,
    StoreError,
    StoreLost,
    Tracker,
    git_sha,
)

log = logging.getLogger("regionbench")


def swept_keys(config: DictConfig, overrides: list[str]) -> list[str]:
    """The keys a sweep varies (`ratio=0.01,0.05`, or an experiment's hydra.sweeper.params):
    they name its jobs, so runs read `ratio=0.05` rather than every override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return list(dict.fromkeys([*keys, *params]))


def _launch_command() -> str:
    """The command line that started this process, as a shell would take it back."""
    args = sys.argv[1:]
    if Path(sys.argv[0]).parent == Path(regionbench.__file__).parent:  # python -m regionbench
        return shlex.join(["python", "-m", "regionbench", *args])
    return shlex.join([Path(sys.argv[0]).name, *args])


def _typed(config: DictConfig, key: str) -> Any:
    """The sweep's `key` (`tracking`, `resume`) as the schema types it, defaults included."""
    node = config.get(key)
    if node is None:
        return section({}, key)
    value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return section({key: value}, key)


def _tracking(config: DictConfig) -> TrackingConfig:
    return _typed(config, "tracking")


def _tracker(config: DictConfig) -> Tracker:
    tracking = _tracking(config)
    return Tracker(tracking.uri, tracking.experiment)


def _end_if_interrupted(tracker: Tracker, parent: str, heartbeat) -> None:
    """An interrupted sweep: stop the job processes a launcher started (joblib workers,
    submitit jobs; they end their own runs KILLED), end any job run they could not (a worker
    killed outright) and the parent KILLED."""
    heartbeat.__exit__(None, None, None)
    try:
        if tracker.run(parent).info.status != "RUNNING":
            return
    except StoreLost:  # said once already; the next contact marks its runs stale
        liveness.stop_descendants()
        return
    stopped = liveness.stop_descendants()
    if stopped:
        log.info("stopped %d job processes", stopped)
    with contextlib.suppress(StoreLost):  # said once, by the entry point
        for run in tracker.children(parent):
            if run.info.status == "RUNNING":
                tracker.end_run(
                    run.info.run_id, "KILLED", error="interrupted: the sweep was stopped"
                )
        tracker.end_run(parent, "KILLED", error="interrupted")


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.claimed: list[str] = []  # jobs another launch was running (resume=true)
        self.parent: str | None = None
        self.heartbeat = None  # the parent's (a thread: stays in this process)

    def __getstate__(self) -> dict:  # launchers pickle the callbacks into their job processes
        return {**self.__dict__, "heartbeat": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            tracker = _tracker(config)
        except StoreError as err:  # before any job: one line, not Hydra's traceback
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        self.parent = tracker.start_run(
            "sweep " + " ".join(overrides),
            tags={
                "git_sha": git_sha(),
                "regionbench_version": regionbench.__version__,
                "regionbench.sweep": "true",
                "model_id": config.model.name,
            },
        )
        tracker.set_tags(self.parent, {"sweep_id": self.parent})
        tracking = _tracking(config)
        stale = tracker.mark_stale(tracking.stale_after_s)
        if stale:
            log.warning("%d runs left RUNNING by dead processes were marked FAILED", stale)
        self.heartbeat = tracker.beating(self.parent, tracking.heartbeat_s)
        self.heartbeat.__enter__()
        tracker.log_params(
            self.parent,
            {
                "overrides": " ".join(overrides),
                # where the jobs' outputs are, and how to launch the sweep again from there
                "sweep_dir": str(Path(config.hydra.sweep.dir).resolve()),
                "launch_dir": os.getcwd(),
                "command": _launch_command(),
                "resume": _typed(config, "resume"),
            },
        )
        os.environ[PARENT_ENV] = os.environ[SWEEP_ENV] = self.parent
        os.environ[SWEEP_KEYS_ENV] = ",".join(swept_keys(config, overrides))
        log.info("MLflow: sweep run %s in %s", self.parent, tracker.uri)
        # An interrupted sweep never reaches on_multirun_end; the parent must not stay RUNNING.
        atexit.register(_end_if_interrupted, tracker, self.parent, self.heartbeat)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        result = job_return._return_value
        if isinstance(result, dict) and result.get("status") == "CLAIMED":  # another launch's
            self.claimed.append(" ".join(job_return.overrides or []) or "default")
        elif not isinstance(result, dict) or result.get("status") != "FINISHED":
            self.failed.append(" ".join(job_return.overrides or []) or "default")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.failed:
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from regionbench.report.summary import summarize_sweep

        if self.parent is None:
            return
        if self.heartbeat is not None:
            self.heartbeat.__exit__(None, None, None)
        try:
            tracker = _tracker(config)
        except StoreError as err:  # the store went away after the last job: one line, exit 1
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        children = tracker.sweep_members(self.parent)
        failed = [r.info.run_name for r in children if r.info.status != "FINISHED"]
        summary_error, interrupted = None, False
        try:
            tracking = _tracking(config)
            baseline, over = dict(tracking.baseline or {}), list(tracking.pair_over)
            table = summarize_sweep(tracker, self.parent, children, baseline, over)
            print(table)
        except KeyboardInterrupt:  # SIGTERM while the summary is written: the sweep is KILLED
            interrupted = True
            raise
        except Exception:  # noqa: BLE001 - Hydra would only warn and exit 0: say it, exit 1
            summary_error = traceback.format_exc()
        finally:
            status = "FAILED" if failed or not children or summary_error else "FINISHED"
            if interrupted:
                status, summary_error = (
                    "KILLED",
                    "interrupted while the sweep's summary was written",
                )
            tracker.end_run(self.parent, status, error=summary_error)
            for var in (PARENT_ENV, SWEEP_ENV, SWEEP_KEYS_ENV):
                os.environ.pop(var, None)
        served = tracker.uri.startswith(("http://", "https://"))  # a tracking server: its UI
        print(
            f"MLflow: {tracker.uri}"
            if served
            else f"MLflow: mlflow ui --backend-store-uri {tracker.uri}"
        )
        if self.claimed:
            print(
                f"{len(self.claimed)} jobs were running in another launch, not here: "
                f"{', '.join(self.claimed)}; relaunch with resume=true once it has ended to "
                "compare every job in one sweep"
            )
        if failed:
            print(
                f"{len(failed)} of {len(children)} jobs failed: {', '.join(failed)}",
                file=sys.stderr,
            )
        if summary_error:
            last = summary_error.strip().splitlines()[-1]
            print(
                f"error: the sweep's summary failed ({last}); the jobs' runs are complete, the "
                f"parent run {self.parent} is FAILED with the traceback in error.txt",
                file=sys.stderr,
            )
        if failed or summary_error:
            sys.exit(1)
