"""The sweep callback's end: a summary that fails is a failed sweep (Hydra only warns about an
exception raised in a callback, so the sweep used to exit 0 with its parent FINISHED)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from regionbench.callbacks import MlflowSweepCallback
from regionbench.report import summary
from regionbench.tracking.client import Tracker


@pytest.fixture
def sweep(tmp_path):
    """A callback whose sweep has one FINISHED job (ratio 0.01, ppl_ratio/mean 1.5)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = OmegaConf.create({"tracking": {"uri": uri, "experiment": "cb"}})
    tracker = Tracker(uri, "cb")
    callback = MlflowSweepCallback()
    callback.parent = tracker.start_run("sweep ratio=0.01")
    job = tracker.start_run("ratio=0.01", parent_run_id=callback.parent)
    tracker.log_params(job, {"ratio": 0.01})
    tracker.log_metrics(job, {"ppl_ratio/mean": 1.5})
    tracker.end_run(job)
    return uri, config, callback


def test_a_failing_summary_fails_the_sweep_and_its_parent(sweep, monkeypatch, capsys):
    uri, config, callback = sweep

    def broken(*args, **kw):
        raise RuntimeError("no plot today")

    monkeypatch.setattr(summary, "summarize_sweep", broken)
    with pytest.raises(SystemExit) as stop:
        callback.on_multirun_end(config)
    assert stop.value.code == 1
    ours = [line for line in capsys.readouterr().err.splitlines() if "mlflow.store" not in line]
    assert len(ours) == 1 and ours[0].startswith(
        "error: the sweep's summary failed (RuntimeError: no plot today)"
    ), ours
    parent = MlflowClient(tracking_uri=uri).get_run(callback.parent)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"] == "RuntimeError: no plot today"


def test_a_sweep_whose_summary_works_ends_finished(sweep, capsys):
    uri, config, callback = sweep
    callback.on_multirun_end(config)  # no SystemExit
    assert MlflowClient(tracking_uri=uri).get_run(callback.parent).info.status == "FINISHED"
    assert "error" not in capsys.readouterr().err
