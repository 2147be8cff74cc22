"""Faults injected into whole jobs in this process (issue 21): an artifact folder on a tmpfs that
is full, a cache that is read-only but holds every entry a job needs. Each job's error is one
line naming the cause and the fix, and its run is never left RUNNING."""

from __future__ import annotations

import shutil

import pytest
from conftest import SMALL, compose, remount, tmpfs
from mlflow.tracking import MlflowClient

from regionbench.pipeline import run_job
from regionbench.session import Session
from regionbench.tracking.client import Tracker


def test_a_full_artifact_disk_fails_the_job_and_ends_its_run(tmp_path, sandbox_test_dir):
    """The first artifact (config.yaml) meets a full disk: the job fails in one line naming the
    run's artifact folder, and its run is FAILED (it used to stay RUNNING: error.txt was written
    before the status, and failed the same way)."""
    store = tmp_path / "store"
    uri = f"sqlite:///{store}/mlflow.db"
    Tracker(uri, "regionbench")  # the store and its experiment, before the disk fills
    with tmpfs(store / "artifacts", "256k", filled=True):
        cfg = compose([*SMALL, "ratio=0.05", f"tracking.uri={uri}"])
        result = run_job(cfg, name="full", session=Session())
    assert result["status"] == "FAILED", result
    run_id, message = result["run_id"], result["error"]
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FAILED"
    folder = store / "artifacts" / run_id / "artifacts"  # our experiment's artifact layout
    assert message == (
        f"no space left on device for the artifact config.yaml of run {run_id} in {folder}: "
        "free space there, or point tracking.uri at a store with room"
    )
    assert run.data.tags["error"].endswith(f"StoreError: {message}")  # the traceback's last line


@pytest.mark.slow
def test_a_read_only_cache_that_holds_the_entries_serves_them(tmp_path, sandbox_test_dir):
    """A shared, pre-filled cache mounted read-only: a job whose entries are all there runs from
    them; a job that needs a new entry fails in one line naming it, before computing it (the
    cache used to be refused up front as not writable)."""
    cache, uri = tmp_path / "cache", f"sqlite:///{tmp_path}/store/mlflow.db"

    def job(*extra):
        overrides = [*SMALL, "ratio=0.05", f"tracking.uri={uri}", f"paths.cache_dir={cache}"]
        return run_job(compose([*overrides, *extra]), name=" ".join(extra), session=Session())

    with tmpfs(cache, "64m"):
        shutil.copytree(sandbox_test_dir, cache / "sandbox" / sandbox_test_dir.name)
        first = job()
        assert first["status"] == "FINISHED", first
        # filled by a regionbench that kept no fingerprints of its importance windows: the job
        # tokenizes its text again and cannot keep the fingerprint, which is no failure
        shutil.rmtree(cache / "importance" / "samples")
        remount(cache, "ro")
        again = job()
        new = job("metric=random", "seed=4091")  # scores no job has cached
    assert again["status"] == "FINISHED", again
    client = MlflowClient(tracking_uri=uri)
    tags = client.get_run(again["run_id"]).data.tags
    assert tags["importance_cache"] == "hit"
    assert again["metrics"]["ppl_ratio/mean"] == first["metrics"]["ppl_ratio/mean"]
    assert new["status"] == "FAILED"
    key = client.get_run(new["run_id"]).data.tags.get("importance_key")
    assert key is None  # failed before its scores were computed
    message = new["error"]
    assert "\n" not in message
    assert message.startswith(f"cannot write the cache entry {cache}/importance/")
    assert message.endswith(
        "(Read-only file system): this process cannot write the cache; the entries it holds are "
        "used, this one is missing: make the cache writable (a group's cache: chmod -R g+w and "
        "umask 002), or point paths.cache_dir (REGIONBENCH_CACHE) at a writable folder"
    )
    exp = client.get_experiment_by_name("regionbench").experiment_id
    assert {r.info.status for r in client.search_runs([exp])} == {"FINISHED", "FAILED"}
