"""MLflow, and nothing else: the one module that imports mlflow.

Every job is one run; a sweep adds a parent run and nests its jobs under it. The default store is
`sqlite:///<launch dir>/mlruns/mlflow.db` with artifacts in `mlruns/artifacts/`, always absolute so
that jobs, launchers and `mlflow ui` started elsewhere agree on one store:

    mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from regionbench import names

log = logging.getLogger(__name__)

PARENT_ENV = "REGIONBENCH_PARENT_RUN_ID"
SWEEP_ENV = "REGIONBENCH_SWEEP_ID"
SWEEP_KEYS_ENV = "REGIONBENCH_SWEEP_KEYS"
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


# ---------------------------------------------------------------- interrupts and the store
# A KeyboardInterrupt raised in the middle of an SQLite commit leaves the store locked for the
# rest of the process, so the KILLED status could never be written.  `python -m regionbench`
# installs `interrupt_handler` for SIGINT and SIGTERM; it raises KeyboardInterrupt at once, except
# during an MLflow call, where the interrupt waits until the call returns.
_interrupts = {"depth": 0, "pending": False}


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    _interrupts["depth"] += 1
    try:
        yield
    finally:
        _interrupts["depth"] -= 1
    if _interrupts["depth"] == 0 and _interrupts["pending"]:
        _interrupts["pending"] = False
        raise KeyboardInterrupt


def interrupt_handler(signum: int, frame: Any) -> None:
    if _interrupts["depth"]:
        _interrupts["pending"] = True
    else:
        raise KeyboardInterrupt


class _Uninterrupted:
    """A proxy of an MlflowClient whose method calls are never cut by an interrupt."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with deferred_interrupts():
                return attr(*args, **kwargs)

        return call


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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (logged as their repr)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def check(run, groups: Sequence[str] = ()) -> None:
    """`tracking.baseline` and `tracking.pair_over` name config keys (`ratio`, `metric.name`) or
    config groups (`frozen_set`: those under conf/, and `groups` Hydra composed from elsewhere):
    a typo is an error before any work, not an empty table later."""
    import difflib

    baseline = run.tracking.baseline
    if baseline is not None and not isinstance(baseline, Mapping):
        raise ValueError(
            f"tracking.baseline {baseline!r} is not a mapping: write tracking.baseline={{ratio:0}} "
            "(or {frozen_set:none}, {metric.name:random})"
        )
    from regionbench.config import config_groups

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


class Stopwatch:
    """Collects `time/<stage>_s`: the wall-clock seconds of each stage of a job."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[names.time(stage)] = time.perf_counter() - start


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


class Tracker:
    """A thin handle on one MLflow store and experiment, used by explicit run id (no global
    active run), so one process can serve many jobs and a parent run at once. A store that
    cannot be opened is a `StoreError` whose one-line message names the URI."""

    def __init__(self, uri: str | None = None, experiment: str = "regionbench"):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(uri)
        self._mlflow = mlflow
        try:
            with _store_setup_lock(self.uri):
                self.client = _Uninterrupted(MlflowClient(tracking_uri=self.uri))
                found = self.client.get_experiment_by_name(experiment)  # creates the schema
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
        self.experiment = experiment

    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        tags = {k: str(v) for k, v in (tags or {}).items()}
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

    def log_region(self, run_id: str, region, *, mask: bool = True) -> None:
        """`region_summary.csv` (selected entries per layer x module) and, with `mask`, the
        mask file `region.safetensors` (loadable with `rb.Region.load`)."""
        rows = region.summary()
        self.log_rows(run_id, rows, "region_summary.csv")
        if mask and region.numel:
            self.log_file(run_id, region.save, "region.safetensors")
        if region.numel:
            self.log_file(run_id, lambda path: _density(rows, path), "region_density.png")

    def log_profile(
        self, run_id: str, rows: list[dict], per_dim: list[int], *, title: str, marked=()
    ) -> None:
        """`region_dims.csv` (entries per hidden dimension) and its plot `region_dims.png`."""
        from regionbench.plots import dimension_profile

        if rows:
            self.log_rows(run_id, rows, "region_dims.csv")
            draw = lambda path: dimension_profile(per_dim, path, title=title, marked=marked)  # noqa: E731
            self.log_file(run_id, draw, "region_dims.png")

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


def _density(rows: list[dict], path: Path) -> Path:
    """The share of each block matrix a region selects, layers × modules."""
    from regionbench.plots import heatmap

    layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
    modules = sorted({r["module"] for r in rows if r["layer"] is not None})
    cell = {(r["layer"], r["module"]): r["fraction"] for r in rows}
    values = [[cell.get((layer, m), math.nan) for m in modules] for layer in layers]
    top = max((v for line in values for v in line if math.isfinite(v)), default=1.0)
    return heatmap(
        values,
        [f"layer {x}" for x in layers],
        modules,
        path,
        label="share selected",
        title="the region's density per block matrix",
        fmt="{:.3f}",
        limits=(0.0, top or 1.0),  # from 0: a region selected per matrix shows one colour
    )
