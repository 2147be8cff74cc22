"""MLflow store handling, read back through MlflowClient from a temporary store."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from regionbench.config import flatten
from regionbench.tracking.client import StoreError, Tracker, resolve_uri


def test_default_uri_is_absolute_sqlite(tmp_path):
    uri = resolve_uri(None, tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    assert resolve_uri("sqlite:///rel/x.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/rel/x.db"
    assert resolve_uri("store", tmp_path) == (tmp_path / "store").resolve().as_uri()


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": None,
    }


def test_runs_read_back(tmp_path):
    tracker = Tracker(resolve_uri(None, tmp_path), "exp")
    parent = tracker.start_run("sweep")
    child = tracker.start_run("ratio=0.01", parent_run_id=parent, tags={"job_num": 0})
    tracker.log_params(child, {f"p{i}": i for i in range(250)})  # more than one batch
    tracker.log_metrics(child, {"ppl/latn": 3.5, "nan": float("nan")})
    tracker.log_metrics(child, {"forget/mean": 1.5}, step=7)
    tracker.end_run(child, "FAILED", error="Traceback...\nValueError: boom")
    tracker.end_run(parent)

    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(child)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ValueError: boom"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert len(run.data.params) == 250 and run.data.params["p249"] == "249"
    assert run.data.metrics == {"ppl/latn": 3.5, "forget/mean": 1.5}
    assert [m.step for m in client.get_metric_history(child, "forget/mean")] == [7]
    assert [r.info.run_id for r in tracker.children(parent)] == [child]
    art = client.list_artifacts(child)
    assert [a.path for a in art] == ["error.txt"]
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location == (tmp_path / "mlruns" / "artifacts").resolve().as_uri()


def test_an_interrupt_waits_until_the_mlflow_call_is_done(tmp_path):
    """Ctrl-C / SIGTERM inside an MLflow write would leave the SQLite store locked: the
    interrupt is raised when the call returns, and at once outside MLflow calls."""
    import pytest

    from regionbench.tracking.stopping import deferred_interrupts, interrupt_handler

    with pytest.raises(KeyboardInterrupt):
        interrupt_handler(15, None)

    tracker = Tracker(resolve_uri(None, tmp_path), "exp")
    run = tracker.start_run("job")
    real = tracker.client._target.log_batch
    done = []

    def log_batch(*args, **kwargs):  # the signal arrives in the middle of the write
        interrupt_handler(15, None)
        done.append(real(*args, **kwargs))

    tracker.client._target.log_batch = log_batch
    with pytest.raises(KeyboardInterrupt):
        tracker.log_metrics(run, {"a": 1.0})
    assert done == [None]
    assert MlflowClient(tracking_uri=tracker.uri).get_run(run).data.metrics == {"a": 1.0}

    # nested: raised once, when the outermost call ends
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        with deferred_interrupts():
            interrupt_handler(2, None)
        done.append("inner finished")
    assert done[-1] == "inner finished"
    with deferred_interrupts():  # and not again afterwards
        pass


@pytest.mark.slow
def test_sweeps_started_at_once_on_a_fresh_store_lose_nothing(
    tmp_path, cache_dir, sandbox_test_dir
):
    """Three sweeps launched together on a store that does not exist yet: every parent and every
    job is recorded, nested, FINISHED (the store's schema is created once, under a lock)."""
    import os
    import subprocess
    import sys

    from conftest import REPO, SMALL

    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "regionbench", "-m", f"ratio=0,0.0{i + 1}", "eval=ppl", *SMALL],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for e in errors]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "regionbench"]
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 3 and {p.info.status for p in parents} == {"FINISHED"}
    assert len(children) == 6 and {c.info.status for c in children} == {"FINISHED"}
    by_parent = {}
    for c in children:
        by_parent.setdefault(c.data.tags["mlflow.parentRunId"], []).append(c.info.run_name)
    assert sorted(by_parent) == sorted(p.info.run_id for p in parents)
    assert all(len(names) == 2 for names in by_parent.values())


def test_a_tracking_server_that_is_down_is_one_line_at_once():
    """MLflow's client retries a refused connection for minutes (4 min 15 s measured); the
    Tracker asks the server's /health first and names the URI."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        Tracker(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 15
    assert str(err.value) == (
        f"cannot reach the MLflow tracking server http://127.0.0.1:{port} (connection refused or "
        "host unreachable): start it (mlflow server --host ... --port ...) or fix tracking.uri"
    )


def test_a_store_path_that_is_a_folder_is_one_line_at_once(tmp_path):
    """MLflow retried it for 2 minutes (36 warning lines) before its one line."""
    (tmp_path / "mlruns" / "mlflow.db").mkdir(parents=True)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        Tracker(uri)
    assert time.monotonic() - start < 10
    assert str(err.value) == (
        f"cannot use the MLflow store {uri}: {tmp_path}/mlruns/mlflow.db is a folder, not a "
        "SQLite file: move it away, or point tracking.uri at a .db file "
        "(sqlite:////abs/path/mlflow.db)"
    )


@pytest.mark.slow
def test_a_store_whose_creation_meets_a_full_disk_is_not_left_half_made(tmp_path):
    """The disk fills while MLflow creates the store's tables: one line naming the folder, and
    nothing left behind, so the next run (space freed) creates the store. It used to keep a
    half-made file that failed every later run with "table ... already exists"."""
    from conftest import remount, tmpfs

    folder = tmp_path / "mlruns"
    uri = f"sqlite:///{folder}/mlflow.db"
    with tmpfs(folder, "320k"):  # a new store takes about 950 kB
        with pytest.raises(StoreError) as err:
            Tracker(uri)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(
            f"cannot create the MLflow store {uri}: no space left on device in {folder} ("
        )
        assert message.endswith(
            "; nothing was created: free space there, or point tracking.uri at another folder"
        )
        assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db.lock"]
        remount(folder, "size=8m")  # space freed
        tracker = Tracker(uri)
        run = tracker.start_run("job")
        tracker.end_run(run)
        assert MlflowClient(tracking_uri=uri).get_run(run).info.status == "FINISHED"
