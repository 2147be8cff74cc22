"""The report CLI that makes the experiment READMEs' tables, read from a temporary MLflow store."""

from __future__ import annotations

import pytest

from regionbench import report
from regionbench.tracking import Tracker, resolve_uri


def _sweep(tracker: Tracker, name: str, jobs: list[tuple[dict, dict]]) -> str:
    parent = tracker.start_run(name, tags={"regionbench.sweep": "true"})
    for i, (params, metrics) in enumerate(jobs):
        child = tracker.start_run(f"job{i}", parent_run_id=parent)
        tracker.log_params(child, params)
        tracker.log_metrics(child, metrics)
        tracker.end_run(child)
    tracker.end_run(parent)
    return parent


@pytest.fixture
def store(tmp_path):
    tracker = Tracker(resolve_uri(None, tmp_path), "freeze")
    old = _sweep(tracker, "old", [({"ratio": "0.5", "seed": "0"}, {"forget/mean": 100.0})])
    _sweep(tracker, "new", [
        ({"ratio": r, "seed": s, "model.name": "m"}, {"forget/mean": v})
        for r, s, v in [("0.0", "0", 2.0), ("0.0", "1", 4.0), ("0.0", "2", 6.0),
                        ("0.05", "0", 1.0), ("0.05", "1", 1.5), ("0.05", "2", 2.0)]
    ])
    return tracker, old


def test_groups_give_mean_and_sample_std_over_seeds(store, capsys):
    tracker, _ = store
    report.main(["--uri", tracker.uri, "--experiment", "freeze", "--group", "ratio",
                 "--metrics", "forget/mean"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| ratio | n | forget/mean |"
    # latest sweep only: the old sweep's ratio 0.5 is not in it; std is the sample std (n-1)
    assert lines[2:] == ["| 0.0 | 3 | 4 ± 2 |", "| 0.05 | 3 | 1.5 ± 0.5 |"]


def test_over_groups_by_the_remaining_swept_params(store, capsys):
    tracker, _ = store
    report.main(["--uri", tracker.uri, "--experiment", "freeze", "--over", "seed",
                 "--metrics", "forget/mean"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| ratio | n | forget/mean |"  # model.name does not vary: not a column
    assert lines[2] == "| 0.0 | 3 | 4 ± 2 |"


def test_parent_and_all_sweeps_select_runs(store):
    tracker, old = store
    assert [r.data.params["ratio"] for r in report.sweep_runs(tracker, old)] == ["0.5"]
    assert len(report.sweep_runs(tracker, all_sweeps=True)) == 7


def test_no_sweep_names_the_experiment(tmp_path):
    tracker = Tracker(resolve_uri(None, tmp_path), "empty")
    with pytest.raises(SystemExit, match="no sweep found in experiment 'empty'"):
        report.sweep_runs(tracker)
