"""Slow: sweeps killed for real (SIGTERM under the basic, joblib and submitit_local launchers,
SIGKILL), then re-launched; counted through MlflowClient and psutil."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ENDLESS, REPO, SMALL
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

LAUNCHERS = {
    "joblib": ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


def _start(args, cwd, cache_dir):
    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "regionbench", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the test signals the command only
    )


def _sql(db, query: str) -> int:
    """Read-only SQL on the store while the command writes it (an MlflowClient here would race
    the command's creation of the store); 0 until the store exists."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute(query).fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait_for(proc, db, query: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _sql(db, query) < count:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"never reached {count}: {query}"
        time.sleep(0.5)


def _runs(cwd):
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("regionbench")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _ours(cwd) -> list[psutil.Process]:
    """Live processes started for this test's sweep (found by their working folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            if str(cwd) in " ".join(proc.info["cmdline"] or []) + (proc.info["cwd"] or ""):
                found.append(proc)
    return [p for p in found if p.pid != os.getpid()]


TRAINING = "SELECT count(DISTINCT run_uuid) FROM metrics WHERE key = 'train/loss'"
FINISHED = "SELECT count(*) FROM runs WHERE status = 'FINISHED'"


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_sigterm_on_a_parallel_sweep_leaves_no_running_run_and_no_process(
    launcher, tmp_path, cache_dir, sandbox_test_dir
):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m", *LAUNCHERS[launcher], "seed=0,1,2,3", *SMALL, *ENDLESS]
    proc = _start(args, tmp_path, cache_dir)
    try:
        _wait_for(proc, tmp_path / "mlruns" / "mlflow.db", TRAINING, 2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    time.sleep(2)
    assert _ours(tmp_path) == []  # no orphaned job process
    parents, children = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert len(children) >= 2 and {c.info.status for c in children} == {"KILLED"}
    assert all(c.data.tags["error"].startswith("interrupted") for c in children)


def test_resume_after_sigterm_runs_only_the_missing_jobs(tmp_path, cache_dir, sandbox_test_dir):
    """A 4-job sweep killed after its second job: the relaunch with resume=true runs the two
    missing jobs only, and its parent compares all four."""
    sweep = ["-m", "ratio=0.01,0.03,0.05,0.1", *SMALL]
    proc = _start(sweep, tmp_path, cache_dir)
    try:
        _wait_for(proc, tmp_path / "mlruns" / "mlflow.db", FINISHED, 2)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    _, before = _runs(tmp_path)
    done = {c.info.run_name: c.info.run_id for c in before if c.info.status == "FINISHED"}
    assert len(done) == 2 and len(before) <= 3

    again = _start([*sweep, "resume=true"], tmp_path, cache_dir)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    parents, after = _runs(tmp_path)
    new = [c for c in after if c.info.run_id not in {b.info.run_id for b in before}]
    assert sorted(c.info.run_name for c in new) == sorted(
        {"ratio=0.01", "ratio=0.03", "ratio=0.05", "ratio=0.1"} - set(done)
    )
    assert {c.info.status for c in new} == {"FINISHED"}
    assert (out + err).count("(resume=true): skipped") == 2
    latest = max(parents, key=lambda p: p.info.start_time)
    assert latest.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    table = client.download_artifacts(latest.info.run_id, "sweep_comparison.csv", str(tmp_path))
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(float(row["ratio"]) for row in rows) == [0.01, 0.03, 0.05, 0.1]

    from regionbench.report import cli as report
    from regionbench.tracking.client import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(report.sweep_runs(tracker, all_sweeps=True)) == 4  # not 6: each job once


def test_a_sigkilled_sweep_is_marked_failed_by_the_next_one(tmp_path, cache_dir, sandbox_test_dir):
    proc = _start(["-m", "seed=0,1", *SMALL, *ENDLESS], tmp_path, cache_dir)
    try:
        _wait_for(proc, tmp_path / "mlruns" / "mlflow.db", TRAINING, 1)
    finally:
        proc.kill()  # SIGKILL: nothing of regionbench runs after it
        proc.wait()
    parents, children = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["RUNNING"]
    assert [c.info.status for c in children] == ["RUNNING"]

    nxt = _start(["-m", "ratio=0.05", *SMALL], tmp_path, cache_dir)
    _, err = nxt.communicate(timeout=600)
    assert nxt.returncode == 0, err[-3000:]
    assert "2 runs left RUNNING by dead processes were marked FAILED" in err
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for run in (parents[0], children[0]):
        again = client.get_run(run.info.run_id)
        assert again.info.status == "FAILED"
        assert again.data.tags["error"] == (
            f"stale: its process {proc.pid} on {again.data.tags['regionbench.host']} "
            "ended without closing the run"
        )
