"""MLflow, and nothing else: the one module that imports mlflow.

Every job is one run; a sweep adds a parent run and nests its jobs under it. The default store is
`sqlite:///<launch dir>/mlruns/mlflow.db` with artifacts in `mlruns/artifacts/`, always absolute so
that jobs, launchers and `mlflow ui` started elsewhere agree on one store:

    mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from regionbench.tracking import liveness
from regionbench.tracking.heartbeat import Heartbeat
from regionbench.tracking.stopping import Uninterrupted

log = logging.getLogger(__name__)

PARENT_ENV = "REGIONBENCH_PARENT_RUN_ID"
SWEEP_ENV = "REGIONBENCH_SWEEP_ID"
SWEEP_KEYS_ENV = "REGIONBENCH_SWEEP_KEYS"
CONFIG_HASH_TAG = "config_hash"  # the job's resolved config, less where it is recorded
REUSED_TAG = "regionbench.reused."  # + run id, on a resumed sweep's parent: the job's number
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


def resolve_uri(uri: str | None = None, base_dir: str | os.PathLike | None = None) -> str:
    """An absolute tracking URI; relative sqlite/file paths are resolved against `base_dir`."""
    base = Path(base_dir or os.getcwd()).resolve()
    if not uri:
        uri = f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :])
        uri = f"sqlite:///{path if path.is_absolute() else (base / path).resolve()}"
    elif "://" not in uri:
        uri = (base / uri).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def git_sha() -> str:
    """The source checkout's commit (with +dirty), or 'unknown' for an installed package."""
    src = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=src,
            text=True,
            capture_output=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=src,
            text=True,
            capture_output=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check(run, groups: Sequence[str] = ()) -> None:
    """`tracking.baseline` and `tracking.pair_over` name config keys (`ratio`, `metric.name`) or
    config groups (`frozen_set`: those under conf/, and `groups` Hydra composed from elsewhere):
    a typo is an error before any work, not an empty table later."""
    import difflib

    for key in ("heartbeat_s", "stale_after_s"):
        value = getattr(run.tracking, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"tracking.{key} must be a number of seconds >= 0, got {value!r}")
    beat, stale = run.tracking.heartbeat_s, run.tracking.stale_after_s
    if beat and stale <= 2 * beat:
        raise ValueError(
            f"tracking.stale_after_s={stale!r} must exceed twice tracking.heartbeat_s={beat!r}: "
            "a live run would be taken for a dead one"
        )
    baseline = run.tracking.baseline
    if baseline is not None and not isinstance(baseline, Mapping):
        raise ValueError(
            f"tracking.baseline {baseline!r} is not a mapping: write tracking.baseline={{ratio:0}} "
            "(or {frozen_set:none}, {metric.name:random})"
        )
    from regionbench.config import config_groups, flatten

    groups = {*groups, *config_groups()}
    keys = set(flatten(run.to_dict()))
    # a key whose value is a mapping or a list (region.dims, data.eval_langs) is a key too
    keys |= {k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)}
    valid = sorted(keys | set(groups))
    for option, named in (("baseline", baseline or {}), ("pair_over", run.tracking.pair_over)):
        for key in named:
            if key in keys or key in groups:
                continue
            near = difflib.get_close_matches(str(key), valid, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else "e.g. ratio, seed, metric.name"
            raise ValueError(
                f"tracking.{option} names {key!r}, which is neither a config key nor a config "
                f"group: {hint}"
            )


@contextlib.contextmanager
def _store_setup_lock(uri: str) -> Iterator[None]:
    """One process at a time opens a SQLite store (its first opening creates and migrates the
    schema; sweeps started together on a fresh store would otherwise race and lose runs) and
    creates an experiment. Other stores handle concurrency themselves."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        yield


class StoreError(ValueError):
    """The MLflow store cannot be used (unreadable file, unknown scheme, server down, ...)."""


def _reachable(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server answers its /health endpoint at once, or this is a `StoreError` now:
    MLflow's own client retries a refused connection for minutes before it gives up."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as err:
        reason = type(err).__name__
        if isinstance(err, requests.ConnectionError):
            reason = "connection refused or host unreachable"
        elif isinstance(err, requests.HTTPError):
            reason = f"HTTP {err.response.status_code} from /health"
        raise StoreError(
            f"cannot reach the MLflow tracking server {uri} ({reason}): start it "
            "(mlflow server --host ... --port ...) or fix tracking.uri"
        ) from None


class Tracker:
    """A thin handle on one MLflow store and experiment, used by explicit run id (no global
    active run), so one process can serve many jobs and a parent run at once. A store that
    cannot be opened is a `StoreError` whose one-line message names the URI."""

    def __init__(
        self, uri: str | None = None, experiment: str = "regionbench", *, create: bool = True
    ):
        import mlflow
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        try:
            self.uri = resolve_uri(uri)
        except OSError as err:  # `mlruns` is a file, an unwritable folder
            raise StoreError(f"cannot use the MLflow store {uri or './mlruns'}: {err}") from None
        _reachable(self.uri)
        try:
            with _store_setup_lock(self.uri):
                self.client = Uninterrupted(MlflowClient(tracking_uri=self.uri))
                found = self.client.get_experiment_by_name(experiment)  # creates the schema
                if found is None and not create:  # a reader: a typo must not become an experiment
                    names = [e.name for e in self.client.search_experiments()]
                    raise LookupError(
                        f"no experiment '{experiment}' (there: {', '.join(sorted(names))})"
                    )
                if found is None:
                    # What MLflow's UI records for an experiment created under "Model training"
                    # (runs, not traces). MLflow 3 UIs before its Model training / GenAI switch
                    # open such an experiment on its runs table; 3.17 follows the switch (the
                    # URL's `workflowType=machine_learning`, see `report --url`).
                    self.experiment_id = self.client.create_experiment(
                        experiment,
                        artifact_location=_artifact_root(self.uri),
                        tags={"mlflow.experimentKind": "custom_model_development"},
                    )
                else:
                    self.experiment_id = found.experiment_id
        except Exception as err:  # noqa: BLE001 - every store failure, in one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise StoreError(f"cannot use the MLflow store {self.uri}: {first}") from None
        if found is not None and found.lifecycle_stage == "deleted":  # MLflow refuses its runs
            raise StoreError(
                f"cannot use the MLflow store {self.uri}: its experiment '{experiment}' is "
                f"deleted; restore it (MLFLOW_TRACKING_URI={self.uri} mlflow experiments restore "
                f"-x {found.experiment_id}) or choose another with tracking.experiment=NAME"
            )
        self.experiment = experiment

    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        tags = {k: str(v) for k, v in (tags or {}).items()}
        tags |= liveness.owner() | {liveness.HEARTBEAT_TAG: str(int(time.time()))}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | os.PathLike, subdir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_dict(self, run_id: str, data: dict, name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_figure(self, run_id: str, figure, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    def log_rows(self, run_id: str, rows: list[dict], name: str) -> None:
        """A list of dicts as a CSV artifact `name`."""
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
        self.log_text(run_id, buf.getvalue(), name)

    def log_file(self, run_id: str, write: Callable[[Path], Any], name: str) -> None:
        """The artifact `name`, written by `write(path)` into a private temporary folder (a
        plot, a mask file)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            self.log_artifact(run_id, path)

    def end_run(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        if error:
            self.set_tags(run_id, {"error": error.strip().splitlines()[-1][:500]})
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "error.txt").write_text(error)
                self.log_artifact(run_id, Path(tmp) / "error.txt")
        self.client.set_terminated(run_id, status=status)

    def children(self, parent_run_id: str) -> list:
        """The nested runs of a sweep, oldest first."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=5000,
            order_by=["attributes.start_time ASC"],
        )
        return list(runs)

    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def sweep_members(self, parent_run_id: str) -> list:
        """The jobs of a sweep: its nested runs and, for a resumed sweep, the finished runs of
        earlier sweeps it reused (in job order)."""
        runs = self.children(parent_run_id)
        tags = self.run(parent_run_id).data.tags
        reused = {k[len(REUSED_TAG) :]: v for k, v in tags.items() if k.startswith(REUSED_TAG)}
        runs += [self.run(run_id) for run_id in reused]
        order = lambda r: int(reused.get(r.info.run_id, r.data.tags.get("job_num", 0)) or 0)  # noqa: E731
        return sorted(runs, key=order)

    def finished_run(self, config_hash: str):
        """The latest FINISHED run of the job with this config hash in the experiment, or None."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{CONFIG_HASH_TAG} = '{config_hash}' "
            "and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def stale_runs(self, stale_after_s: float) -> list[tuple[Any, str]]:
        """Runs left RUNNING by a dead process, with why they are known to be dead: their owner
        process is gone (this host), or no heartbeat for `stale_after_s` (another host)."""
        found = []
        now = time.time()
        for run in self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
        ):
            tags = run.data.tags
            alive = liveness.owner_alive(tags)
            beat = tags.get(liveness.HEARTBEAT_TAG, "")
            if alive is False:
                where = f"{tags[liveness.PID_TAG]} on {tags[liveness.HOST_TAG]}"
                found.append((run, f"stale: its process {where} ended without closing the run"))
            elif alive is None and beat.isdigit() and now - int(beat) > stale_after_s:
                found.append((run, f"stale: no heartbeat for {now - int(beat):.0f} s"))
        return found

    def mark_stale(self, stale_after_s: float) -> int:
        """End every stale run FAILED, its reason as the error; the count."""
        stale = self.stale_runs(stale_after_s)
        for run, reason in stale:
            log.warning("run %s (%s) marked FAILED: %s", run.info.run_id, run.info.run_name, reason)
            self.end_run(run.info.run_id, "FAILED", error=reason)
        return len(stale)

    def beating(self, run_id: str, interval_s: float, parent_run_id: str | None = None):
        """A `Heartbeat` on `run_id` (a context manager)."""
        return Heartbeat(self.client._target, run_id, interval_s, parent_run_id)
