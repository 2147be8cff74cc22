"""Faults injected into the real command (issue 21): a tracking server stopped mid-sweep, a
SIGTERM while the sweep's summary is written, two `resume=true` launches at once in one second, a
read-only current folder, an offline hub dataset. After each: no run is RUNNING once its process
is gone and the store has been contacted again, and every message is one line naming the cause
and the fix. Read back through MlflowClient and read-only SQL."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ENDLESS, REPO, SMALL, run_cli, tmpfs
from mlflow.tracking import MlflowClient

MAIN = str(REPO / "regionbench" / "__main__.py")

# `python -m regionbench ARGS` with a fault planted first: `{plant}` runs before main().
LAUNCH = """
import sys
{plant}
from regionbench.__main__ import main
sys.argv = [{main!r}, *sys.argv[1:]]
main()
"""

# Hydra's ${{now:}} stopped at one instant: launches started "in the same second".
FROZEN_CLOCK = """
import datetime as _dt
import hydra.core.utils as _hydra_utils
class _Frozen(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 2, 3, 4, 5)
_hydra_utils.datetime = _Frozen
"""

# The sweep's summary writes its marker file, then takes its time: the test signals it there.
SLOW_SUMMARY = """
import os, time
import regionbench.report.summary as _summary
def _slow(*args, **kwargs):
    open(os.environ["SUMMARY_MARKER"], "w").close()
    time.sleep(600)
_summary.summarize_sweep = _slow
"""


def _start(args, cwd, cache_dir, plant="", env=None):
    code = LAUNCH.format(plant=plant, main=MAIN)
    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _sql(db: Path, query: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute(query).fetchone()[0]
    except sqlite3.Error:
        return 0


def _runs(uri: str, experiment: str = "regionbench") -> tuple[list, list]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _ours(lines: str) -> list[str]:
    """What regionbench and MLflow said on stderr, less progress and Hydra's own notices."""
    return [
        line
        for line in lines.splitlines()
        if line.strip() and not line.startswith(("[", "importance", "loaded", "MLflow:"))
    ]


# --- the tracking server stops in the middle of a sweep --------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port, answering /health."""
    import urllib.request

    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [
            *[mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            *["--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts)],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise AssertionError("mlflow server did not start") from None
            time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("then", ["nothing", "sigterm"])
def test_a_tracking_server_that_dies_mid_sweep_stops_it_in_one_line(
    then, tmp_path, cache_dir, sandbox_test_dir
):
    """The server is killed while a freeze job trains (it logs every step): one line naming the
    server within seconds, exit 1 (or 143 when SIGTERM follows at once); once the server is back,
    the next contact (`report`) leaves no run RUNNING. It used to retry for 8.5 minutes, and a
    SIGTERM waited for the retrying call."""
    port, db = _free_port(), tmp_path / "server.db"
    uri = f"http://127.0.0.1:{port}"
    server = _serve(db, tmp_path / "server-artifacts", port)
    proc = None
    try:
        args = ["-m", "seed=0,1", f"tracking.uri={uri}", *SMALL, *ENDLESS]
        proc = _start(args, tmp_path, cache_dir)
        deadline = time.monotonic() + 300
        while not _sql(db, "SELECT count(*) FROM metrics WHERE key = 'train/loss'"):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the job never started training"
            time.sleep(0.5)
        _stop(server)
        killed = time.monotonic()
        if then == "sigterm":
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if server.poll() is None:
            _stop(server)
    assert took < 30, f"{took:.0f} s after the server died"
    assert proc.returncode == (143 if then == "sigterm" else 1), err[-3000:]
    assert "Traceback" not in err and "Retrying" not in err, err[-3000:]
    said = [line for line in err.splitlines() if "tracking server" in line]
    assert said == [
        f"error: lost the MLflow tracking server {uri} mid-run (connection refused or host "
        "unreachable): the sweep stopped; restart the server and relaunch the command with "
        "resume=true (runs it could not end are marked FAILED as stale then)"
    ], err[-3000:]
    if then == "sigterm":
        assert err.strip().splitlines()[-1] == "regionbench: interrupted (SIGTERM)"

    server = _serve(db, tmp_path / "server-artifacts", port)  # back, on the same store
    try:
        report = subprocess.run(
            [sys.executable, "-m", "regionbench.report", "--uri", uri],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert report.returncode == 0, report.stderr[-3000:]
        parents, children = _runs(uri)
    finally:
        _stop(server)
    assert len(parents) == 1 and len(children) == 1
    for run in (*parents, *children):
        assert run.info.status == "FAILED", run.info
        assert run.data.tags["error"].startswith(f"stale: its process {proc.pid} on ")


# --- SIGTERM while the sweep's summary is written ----------------------------------------------


@pytest.mark.slow
def test_sigterm_while_the_summary_is_written_ends_the_sweep_killed(
    tmp_path, cache_dir, sandbox_test_dir
):
    """It used to leave the parent FINISHED without its artifacts."""
    marker = tmp_path / "summary-started"
    env = {"SUMMARY_MARKER": str(marker)}
    proc = _start(["-m", "ratio=0", "eval=ppl", *SMALL], tmp_path, cache_dir, SLOW_SUMMARY, env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the summary never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    parents, children = _runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert parents[0].data.tags["error"] == "interrupted while the sweep's summary was written"
    assert [c.info.status for c in children] == ["FINISHED"]  # the job itself was done


# --- two resume=true launches at once, in the same second --------------------------------------


@pytest.fixture(scope="module")
def two_at_once(tmp_path_factory, cache_dir, sandbox_test_dir):
    """One job done, then the same 3-job sweep launched twice at once with resume=true, both in
    the same second by Hydra's clock."""
    cwd = tmp_path_factory.mktemp("two")
    first = run_cli(["-m", "ratio=0", "eval=ppl", *SMALL], cwd, cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = ["-m", "ratio=0,0.01,0.03", "eval=ppl", "resume=true", *SMALL]
    procs = [_start(sweep, cwd, cache_dir, FROZEN_CLOCK) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    return cwd, procs, outputs


@pytest.mark.slow
def test_two_resumes_at_once_never_run_a_job_twice(two_at_once):
    """Each missing job runs once, in one of the two launches; the other says that it is running
    there and leaves it out (they used to run 2 of 2 missing jobs twice)."""
    cwd, procs, outputs = two_at_once
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for _, e in outputs]
    parents, children = _runs(f"sqlite:///{cwd}/mlruns/mlflow.db")
    assert len(parents) == 3 and {p.info.status for p in parents} == {"FINISHED"}
    assert {c.info.status for c in children} == {"FINISHED"}  # nothing left RUNNING
    assert len(children) == 3  # ratio=0 by the first sweep, each missing job by one launch
    assert len({c.data.tags["config_hash"] for c in children}) == 3  # each job once
    assert sorted(float(c.data.params["ratio"]) for c in children) == [0, 0.01, 0.03]
    said = "".join(out + err for out, err in outputs)
    skipped = said.count("(resume=true): skipped")  # FINISHED before: ratio=0, at least
    claimed = said.count("is running in another launch as run")
    assert skipped >= 2 and skipped + claimed == 4  # 6 jobs launched, 2 of them run


@pytest.mark.slow
def test_launches_in_the_same_second_get_their_own_sweep_folder(two_at_once):
    """`hydra.sweep.dir` was multirun/<date>/<time>: two launches of one second shared it."""
    cwd, procs, _ = two_at_once
    parents, _ = _runs(f"sqlite:///{cwd}/mlruns/mlflow.db")
    resumed = [p for p in parents if "resume=true" in p.data.params["overrides"]]
    folders = {p.data.params["sweep_dir"] for p in resumed}
    assert len(folders) == 2, folders
    for folder in folders:
        assert Path(folder).parent == cwd / "multirun" / "2026-01-02"  # the frozen clock
        assert (Path(folder) / "multirun.yaml").is_file()
    assert {Path(f).name for f in folders} == {f"03-04-05-{p.pid}" for p in procs}


# --- a read-only current folder, an offline hub dataset ----------------------------------------


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_an_unwritable_current_folder_is_one_line_before_hydra_starts(sweep, tmp_path, cache_dir):
    """It used to be a 24-line Hydra traceback from its mkdir of outputs/."""
    here = tmp_path / "read-only"
    with tmpfs(here, "1m"):
        subprocess.run(["mount", "-o", "remount,ro", str(here)], check=True)
        args = ["-m", "ratio=0,0.1"] if sweep else []
        proc = run_cli([*args, *SMALL], here, cache_dir, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    folder = "multirun" if sweep else "outputs"
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    assert _ours(output) == [
        f"error: the current folder {here} is not writable (Read-only file system): Hydra's "
        f"{folder}/ folder and the MLflow store mlruns/ would go there; run from a writable "
        f"folder, or set {key}=/writable/folder and tracking.uri=sqlite:////writable/mlflow.db"
    ], output[-3000:]


def test_an_offline_hub_dataset_is_found_once_before_the_first_job(tmp_path, cache_dir):
    """`data=wikipedia` offline: one line before the sweep starts, not one failure per job."""
    args = ["-m", "data=wikipedia", "ratio=0.01,0.05", "data.eval_langs=[en]", *SMALL]
    args += ["data.importance_langs=[en]"]
    proc = run_cli(args, tmp_path, cache_dir, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    said = _ours(output)
    assert len(said) == 1, said
    assert said[0].startswith(
        "error: cannot stream 'wikimedia/wikipedia' config '20231101.en' for data=wikipedia ("
    )
    assert said[0].endswith("offline or gated? use data=local with files on disk, or data=sandbox")
    assert not (tmp_path / "mlruns").exists()  # before the sweep: no run of any status
    assert not (tmp_path / "multirun").exists()
