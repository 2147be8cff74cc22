"""MLflow runs, by explicit run id: with `tracking.store`, the only modules that import mlflow.

Every job is one run; a sweep adds a parent run and nests its jobs under it. The default store is
`sqlite:///<launch dir>/mlruns/mlflow.db` with artifacts in `mlruns/artifacts/`, always absolute so
that jobs, launchers and `mlflow ui` started elsewhere agree on one store:

    mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db

Faults are one line, at once: a store that cannot be opened is a `StoreError` naming it (a SQLite
file is probed before MLflow, which retries a bad one for two minutes, and created atomically, so
a full disk cannot leave a half-made store); a tracking server that stops answering mid-sweep is
a `StoreLost` after its first failed call (MLflow's own client would retry every call for
minutes), which stops the sweep; a full artifact folder is named with the run it was for.
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
from regionbench.tracking.store import (  # noqa: F401 - StoreError, StoreLost, lost_store: the API
    FULL_DISK,
    HALF_MADE,
    StoreError,
    StoreLost,
    Watched,
    check_reachable,
    create_sqlite,
    holds_no_runs,
    is_http,
    lost_store,
    probe_sqlite,
    store_setup_lock,
)

log = logging.getLogger(__name__)

PARENT_ENV = "REGIONBENCH_PARENT_RUN_ID"
SWEEP_ENV = "REGIONBENCH_SWEEP_ID"
SWEEP_KEYS_ENV = "REGIONBENCH_SWEEP_KEYS"
CONFIG_HASH_TAG = "config_hash"  # the job's resolved config, less where it is recorded
REUSED_TAG = "regionbench.reused."  # + run id, on a resumed sweep's parent: the job's number
CODE_TAGS = ("regionbench_version", "git_sha")  # what made a run: resume=true reuses the same
# On a job whose result cannot depend on its seed: its config less `seed`. A sweep runs one
# job per condition hash; its other seeds are listed on the parent under SEED_REUSED_TAG.
CONDITION_TAG = "regionbench.condition_hash"
SEED_REUSED_TAG = "regionbench.seed_reused."  # + the job's number: the run that answers for it
CLAIMED_TAG = "regionbench.claimed."  # + run id, on a resumed sweep's parent: run by another launch
# MLflow's runs table lists nested runs under their parent, closed (a click to open), but opens
# the parent of a run tagged as an evaluation (`mlflow.runType` "evaluation", what it shows
# nested evaluation runs with): a sweep's jobs are evaluations of a model, and are on screen.
NESTED_SHOWN = ("mlflow.runType", "evaluation")
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call

# MLflow's client retries a failed HTTP call 7 times with growing pauses (about 4 minutes), each
# attempt waiting up to 120 s for an answer, and a refused connection is retried like a slow
# one: a sweep whose tracking server died hung for minutes per call. These settings bound a call
# to 3 attempts within seconds for a server that is gone (30 s for one that hangs); the user's
# own environment wins. After a failed call the Tracker asks the server's /health itself.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


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
        if is_http(self.uri):
            for var, value in HTTP_SETTINGS.items():
                os.environ.setdefault(var, value)
        check_reachable(self.uri)
        db = Path(self.uri[len("sqlite:///") :]) if self.uri.startswith("sqlite:///") else None
        if db is not None:
            probe_sqlite(self.uri, db)
        try:
            with store_setup_lock(self.uri):
                if db is not None:
                    create_sqlite(self.uri, db)
                watched = Watched(MlflowClient(tracking_uri=self.uri), self.uri)
                self.client = Uninterrupted(watched)
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
        except StoreError:
            raise
        except LookupError as err:
            raise StoreError(f"cannot use the MLflow store {self.uri}: {err}") from None
        except Exception as err:  # noqa: BLE001 - every store failure, in one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if db is not None and HALF_MADE.search(str(err)) and holds_no_runs(db):
                # made part-way by a version that created stores in place
                raise StoreError(
                    f"cannot use the MLflow store {self.uri}: it is half-made (its creation "
                    f"stopped part-way, e.g. on a full disk: {first[:120]}) and holds no runs: "
                    f"remove it (rm {db}) and run again"
                ) from None
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
            tags.setdefault(*NESTED_SHOWN)
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
        with self._artifact(run_id, Path(path).name, subdir):
            self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with self._artifact(run_id, name):
            self.client.log_text(run_id, text, name)

    def log_dict(self, run_id: str, data: dict, name: str) -> None:
        with self._artifact(run_id, name):
            self.client.log_dict(run_id, data, name)

    def log_table(self, run_id: str, columns: Mapping[str, list], name: str) -> None:
        """{column: values} as an MLflow table artifact (`name`.json; the UI shows it as a
        table, and the run's "Evaluation" tab compares it across runs)."""
        with self._artifact(run_id, name):
            self.client.log_table(run_id, data=dict(columns), artifact_file=name)

    def log_figure(self, run_id: str, figure, name: str) -> None:
        with self._artifact(run_id, name):
            self.client.log_figure(run_id, figure, name)

    @contextlib.contextmanager
    def _artifact(self, run_id: str, name: str, subdir: str | None = None) -> Iterator[None]:
        """A full disk while an artifact is written is a `StoreError` naming the folder it was
        written to (a bare ENOSPC names a temporary file, or nothing)."""
        try:
            yield
        except OSError as err:
            if err.errno not in FULL_DISK:
                raise
            folder = self.artifact_folder(run_id, subdir)
            raise StoreError(
                f"no space left on device for the artifact {name} of run {run_id} in {folder}: "
                "free space there, or point tracking.uri at a store with room"
            ) from None

    def artifact_folder(self, run_id: str, subdir: str | None = None) -> str:
        """Where a run's artifacts go: a local folder, or the artifact URI of a remote store."""
        from urllib.parse import unquote, urlparse

        try:
            where = self.client.get_run(run_id).info.artifact_uri
        except Exception:  # noqa: BLE001 - naming the folder must not hide the failure
            return f"the artifact store of {self.uri}"
        if where.startswith("file:"):
            where = unquote(urlparse(where).path)
        return f"{where.rstrip('/')}/{subdir}" if subdir else where

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
        """The status first, then the error's last line (tag `error`), then its full text
        (`error.txt`): a run whose error text cannot be written (a full artifact disk) still ends,
        instead of staying RUNNING after its process is gone."""
        self.client.set_terminated(run_id, status=status)
        if not error:
            return
        self.set_tags(run_id, {"error": error.strip().splitlines()[-1][:500]})
        try:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "error.txt").write_text(error)
                self.log_artifact(run_id, Path(tmp) / "error.txt")
        except (OSError, StoreError) as err:
            log.warning("run %s ended %s without its error.txt: %s", run_id, status, err)

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

    def finished_run(self, config_hash: str, code: Mapping[str, str] | None = None):
        """(the latest FINISHED run of the job with this config hash in the experiment, or None;
        the latest one passed over). With `code` ({tag: value} of `CODE_TAGS`), only a run made
        by the same code is taken: a value that is unknown on either side ('unknown', or a run
        without the tag) does not count against it."""
        runs = self._runs_of(config_hash, "FINISHED", 1 if code is None else 200)
        for run in runs:
            tags = run.data.tags
            if code is None or all(
                code.get(k) in (None, "", "unknown")
                or tags.get(k) in (None, "", "unknown")
                or tags[k] == code[k]
                for k in CODE_TAGS
            ):
                return run, None
        return None, (runs[0] if runs else None)

    def running_run(self, config_hash: str, stale_after_s: float):
        """A RUNNING run of the job with this config hash whose owner is alive (this host: its
        process; another host: a heartbeat within `stale_after_s`), or None: the job is claimed
        by another launch."""
        for run in self._runs_of(config_hash, "RUNNING", 100):
            if _staleness(run, stale_after_s) is None:
                return run
        return None

    def condition_run(self, condition: str, sweep_id: str, stale_after_s: float):
        """(a FINISHED run of this seed-free condition in the sweep, or None; a RUNNING one
        whose owner is alive, or None): the job that answers for every seed of the condition."""
        scope = f" and tags.sweep_id = '{sweep_id}'"
        done = self._runs_of(condition, "FINISHED", 1, tag=CONDITION_TAG, where=scope)
        if done:
            return done[0], None
        running = self._runs_of(condition, "RUNNING", 100, tag=CONDITION_TAG, where=scope)
        alive = [r for r in running if _staleness(r, stale_after_s) is None]
        return None, (alive[0] if alive else None)

    def _runs_of(
        self,
        config_hash: str,
        status: str,
        max_results: int,
        *,
        tag: str = CONFIG_HASH_TAG,
        where: str = "",
    ) -> list:
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{tag}` = '{config_hash}' "
                f"and attributes.status = '{status}'{where}",
                max_results=max_results,
                order_by=["attributes.start_time DESC"],
            )
        )

    @contextlib.contextmanager
    def claiming(self, lock_dir: Callable[[], Path] | None = None) -> Iterator[None]:
        """One launch at a time decides whether a job is done, running elsewhere or to be run,
        and starts its run: under a file lock beside a SQLite store, else (a tracking server) in
        `lock_dir()` (the cache, shared by the machines of a cluster)."""
        from filelock import FileLock

        try:
            if self.uri.startswith("sqlite:///"):
                lock = Path(f"{self.uri[len('sqlite:///') :]}.claims.lock")
            elif lock_dir is not None:
                from regionbench.common.cache import cache_key

                name = cache_key(kind="claims", uri=self.uri, experiment=self.experiment)[:16]
                lock = lock_dir() / f"claims-{name}.lock"
            else:
                lock = None
            if lock is not None:
                lock.parent.mkdir(parents=True, exist_ok=True)
                held = FileLock(str(lock))
                held.acquire(timeout=600)
        except (OSError, ValueError) as err:  # a read-only cache: decide without the lock
            log.warning("claims not locked (%s): two launches at once may run a job twice", err)
            lock = None
        try:
            yield
        finally:
            if lock is not None:
                held.release()

    def stale_runs(self, stale_after_s: float) -> list[tuple[Any, str]]:
        """Runs left RUNNING by a dead process, with why they are known to be dead: their owner
        process is gone (this host), or no heartbeat for `stale_after_s` (another host)."""
        found = []
        for run in self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
        ):
            reason = _staleness(run, stale_after_s)
            if reason is not None:
                found.append((run, reason))
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


def _staleness(run, stale_after_s: float) -> str | None:
    """Why a RUNNING run is known to be dead, or None: its owner process is gone (this host), or
    no heartbeat for `stale_after_s` (another host)."""
    tags = run.data.tags
    alive = liveness.owner_alive(tags)
    beat = tags.get(liveness.HEARTBEAT_TAG, "")
    if alive is False:
        where = f"{tags[liveness.PID_TAG]} on {tags[liveness.HOST_TAG]}"
        return f"stale: its process {where} ended without closing the run"
    if alive is None and beat.isdigit() and time.time() - int(beat) > stale_after_s:
        return f"stale: no heartbeat for {time.time() - int(beat):.0f} s"
    return None
