"""Nothing stale: runs left RUNNING by dead processes are found and ended FAILED, heartbeats,
a burst of signals unwinds once, and `resume=true` reuses finished jobs (read back through
MlflowClient from temporary stores)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import SMALL, compose
from mlflow.tracking import MlflowClient

from regionbench.report import cli as report
from regionbench.tracking import liveness
from regionbench.tracking.client import (
    CONFIG_HASH_TAG,
    PARENT_ENV,
    Tracker,
    resolve_uri,
)
from regionbench.tracking.stopping import deferred_interrupts, stop_once, stoppable


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_of_dead_processes_are_marked_failed_and_live_ones_kept(tmp_path):
    tracker = Tracker(resolve_uri(None, tmp_path), "exp")
    now = int(time.time())
    me = liveness.owner()
    made = {
        "live": me,  # this very process
        "dead": liveness.owner(_dead_pid()) | {liveness.START_TAG: "12.00"},
        "recycled": me | {liveness.START_TAG: "12.00"},  # our pid, another process's start
        "remote_silent": {
            liveness.HOST_TAG: "elsewhere/0",
            liveness.PID_TAG: "1",
            liveness.HEARTBEAT_TAG: str(now - 1000),
        },
        "remote_beating": {
            liveness.HOST_TAG: "elsewhere/0",
            liveness.PID_TAG: "1",
            liveness.HEARTBEAT_TAG: str(now - 10),
        },
    }
    ids = {}
    for name, tags in made.items():
        ids[name] = tracker.start_run(name)
        tracker.set_tags(ids[name], tags)  # as its owner would have stamped it
    finished = tracker.start_run("finished")
    tracker.set_tags(finished, made["dead"])
    tracker.end_run(finished)

    assert tracker.mark_stale(stale_after_s=600) == 3
    client = MlflowClient(tracking_uri=tracker.uri)
    status = {name: client.get_run(i).info.status for name, i in ids.items()}
    assert status == {
        "live": "RUNNING",
        "dead": "FAILED",
        "recycled": "FAILED",
        "remote_silent": "FAILED",
        "remote_beating": "RUNNING",
    }
    assert client.get_run(finished).info.status == "FINISHED"
    error = client.get_run(ids["dead"]).data.tags["error"]
    assert error == f"stale: its process {made['dead'][liveness.PID_TAG]} on {liveness.host()} " + (
        "ended without closing the run"
    )
    assert (
        client.get_run(ids["remote_silent"])
        .data.tags["error"]
        .startswith("stale: no heartbeat for 10")
    )
    assert tracker.mark_stale(stale_after_s=600) == 0  # a second pass finds nothing new


def test_every_run_names_its_owner(tmp_path):
    tracker = Tracker(resolve_uri(None, tmp_path), "exp")
    tags = tracker.run(tracker.start_run("job")).data.tags
    assert tags[liveness.PID_TAG] == str(os.getpid())
    assert tags[liveness.HOST_TAG] == liveness.host()
    assert liveness.owner_alive(tags) is True
    assert abs(int(tags[liveness.HEARTBEAT_TAG]) - time.time()) < 60


def test_the_report_never_shows_a_stale_run_and_ends_it(tmp_path, capsys):
    tracker = Tracker(resolve_uri(None, tmp_path), "exp")
    parent = tracker.start_run("sweep", tags={"regionbench.sweep": "true"})
    for ratio, dead in (("0.1", False), ("0.2", True)):
        child = tracker.start_run(f"ratio={ratio}", parent_run_id=parent)
        tracker.log_params(child, {"ratio": ratio})
        tracker.log_metrics(child, {"ppl_ratio/mean": 1.5})
        if dead:
            tracker.set_tags(child, liveness.owner(_dead_pid()))
        else:
            tracker.end_run(child)
    tracker.end_run(parent)
    report.main(["--uri", tracker.uri, "--experiment", "exp"])
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert "1.5" in rows["ratio=0.1"] and "FINISHED" in rows["ratio=0.1"]
    assert "1.5" not in rows["ratio=0.2"] and "FAILED" in rows["ratio=0.2"]  # not a result
    stale = [r for r in tracker.children(parent) if r.info.run_name == "ratio=0.2"]
    assert stale[0].info.status == "FAILED" and stale[0].data.tags["error"].startswith("stale")


def test_heartbeat_stamps_the_run_and_stops_the_job_when_its_sweep_ends(tmp_path):
    tracker = Tracker(resolve_uri(None, tmp_path), "exp")
    parent = tracker.start_run("sweep")
    job = tracker.start_run("job", parent_run_id=parent)
    tracker.set_tags(job, {liveness.HEARTBEAT_TAG: "0"})
    with pytest.raises(KeyboardInterrupt), stoppable(), tracker.beating(job, 0.2, parent) as beat:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the job at work, its sweep alive: beats only
            time.sleep(0.05)
        assert beat.reason is None
        assert int(tracker.run(job).data.tags[liveness.HEARTBEAT_TAG]) > time.time() - 5
        tracker.end_run(parent, "KILLED")  # the sweep is stopped elsewhere
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.05)
        pytest.fail("the job was not stopped")
    assert beat.reason == f"the sweep's parent run {parent} ended KILLED"


def test_a_burst_of_signals_unwinds_once():
    seen = []
    handler = stop_once(seen.append)
    with pytest.raises(KeyboardInterrupt):
        handler(15, None)
    with deferred_interrupts():  # the cleanup writing KILLED: the next signals are ignored
        handler(15, None)
        handler(2, None)
    handler(15, None)
    assert seen == [15]


@pytest.fixture
def jobs(tmp_path, sandbox_test_dir, monkeypatch):
    """Run one debug job into a temporary store: `run(extra_overrides, resume=...)`."""
    from regionbench.pipeline import run_job

    uri = resolve_uri(None, tmp_path)
    tracker = Tracker(uri, "regionbench")
    cache = tmp_path / "cache"  # its own: other tests expect the session cache without these
    cache.mkdir()
    (cache / "sandbox").symlink_to(sandbox_test_dir.parent)

    def run(extra=(), parent=None, **kw):
        monkeypatch.setenv(PARENT_ENV, parent or "")
        overrides = [*SMALL, "ratio=0.05", f"tracking.uri={uri}", f"paths.cache_dir={cache}"]
        cfg = compose([*overrides, *extra])
        return run_job(cfg, name=" ".join(extra) or "job", **kw)

    return tracker, run


def test_resume_skips_a_finished_job_and_lists_it_in_the_new_sweep(jobs):
    tracker, run = jobs
    sweep = lambda: tracker.start_run("sweep", tags={"regionbench.sweep": "true"})  # noqa: E731
    first = run(parent=sweep())
    assert first["status"] == "FINISHED" and "reused" not in first
    hash_ = tracker.run(first["run_id"]).data.tags[CONFIG_HASH_TAG]

    parent = sweep()
    again = run(["resume=true"], parent=parent, job_num=3)
    assert again["reused"] and again["run_id"] == first["run_id"]
    assert again["metrics"]["ppl_ratio/mean"] == first["metrics"]["ppl_ratio/mean"]
    other = run(["resume=true", "seed=1"], parent=parent, job_num=4)  # not run before
    assert other["status"] == "FINISHED" and "reused" not in other
    assert tracker.run(other["run_id"]).data.tags[CONFIG_HASH_TAG] != hash_

    client = MlflowClient(tracking_uri=tracker.uri)
    assert len(client.search_runs([tracker.experiment_id])) == 4  # 2 parents, 2 jobs: none twice
    members = tracker.sweep_members(parent)
    assert [r.info.run_id for r in members] == [first["run_id"], other["run_id"]]
    assert [r.info.run_id for r in report.sweep_runs(tracker, parent)] == [
        first["run_id"],
        other["run_id"],
    ]

    rerun = run(["seed=1"], parent=sweep())  # no resume: run again, the report counts it once
    assert rerun["status"] == "FINISHED" and rerun["run_id"] != other["run_id"]
    counted = {r.info.run_id for r in report.sweep_runs(tracker, all_sweeps=True)}
    assert counted == {first["run_id"], rerun["run_id"]}


def test_resume_reuses_only_runs_of_the_same_code_unless_any(jobs, caplog):
    """A FINISHED run made at another git sha is run again under resume=true, with a line that
    says why; resume=any reuses it (resume used to match on the config hash alone, so results of
    code before a fix were reused silently)."""
    import logging

    tracker, run = jobs
    old = run()
    assert old["status"] == "FINISHED"
    tracker.set_tags(old["run_id"], {"git_sha": "0123456789ab"})  # made by other code

    anyway = run(["resume=any"])
    assert anyway["reused"] and anyway["run_id"] == old["run_id"]
    with caplog.at_level(logging.INFO, logger="regionbench"):
        again = run(["resume=true"])
    assert again["status"] == "FINISHED" and "reused" not in again
    assert again["run_id"] != old["run_id"]
    from regionbench.tracking.client import git_sha

    said = [r.getMessage() for r in caplog.records if "was made by regionbench" in r.getMessage()]
    version = tracker.run(old["run_id"]).data.tags["regionbench_version"]
    assert said == [
        f"job 'resume=true': its FINISHED run {old['run_id']} was made by regionbench {version} "
        f"at git 0123456789ab, this is {version} at git {git_sha()}: running it again "
        "(resume=any reuses it)"
    ]
    same = run(["resume=true"])  # now there is one of this code
    assert same["reused"] and same["run_id"] == again["run_id"]
