"""The report CLI that makes the experiment READMEs' tables, read from a temporary MLflow store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from regionbench.report import cli as report
from regionbench.report.summary import summarize_sweep
from regionbench.tracking.client import Tracker, resolve_uri


def _sweep(tracker: Tracker, name: str, jobs: list[tuple[dict, dict]], step: int = 0) -> str:
    parent = tracker.start_run(name, tags={"regionbench.sweep": "true"})
    for i, (params, metrics) in enumerate(jobs):
        child = tracker.start_run(f"job{i}", parent_run_id=parent)
        tracker.log_params(child, params)
        tracker.log_metrics(child, metrics, step=step)
        tracker.end_run(child)
    tracker.end_run(parent)
    return parent


@pytest.fixture
def store(tmp_path):
    tracker = Tracker(resolve_uri(None, tmp_path), "freeze")
    old = _sweep(tracker, "old", [({"ratio": "0.5", "seed": "0"}, {"forget/mean": 100.0})])
    _sweep(
        tracker,
        "new",
        [
            ({"ratio": r, "seed": s, "model.name": "m"}, {"forget/mean": v})
            for r, s, v in [
                ("0.0", "0", 2.0),
                ("0.0", "1", 4.0),
                ("0.0", "2", 6.0),
                ("0.05", "0", 1.0),
                ("0.05", "1", 1.5),
                ("0.05", "2", 2.0),
            ]
        ],
    )
    return tracker, old


def test_groups_give_mean_and_sample_std_over_seeds(store, capsys):
    tracker, _ = store
    report.main(
        [
            "--uri",
            tracker.uri,
            "--experiment",
            "freeze",
            "--group",
            "ratio",
            "--metrics",
            "forget/mean",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| ratio | n | forget/mean |"
    # latest sweep only: the old sweep's ratio 0.5 is not in it; std is the sample std (n-1)
    assert lines[2:] == ["| 0.0 | 3 | 4 ± 2 |", "| 0.05 | 3 | 1.5 ± 0.5 |"]


def test_over_groups_by_the_remaining_swept_params(store, capsys):
    tracker, _ = store
    report.main(
        [
            "--uri",
            tracker.uri,
            "--experiment",
            "freeze",
            "--over",
            "seed",
            "--metrics",
            "forget/mean",
        ]
    )
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


def test_freeze_analysis_pairs_each_frozen_set_with_the_unfrozen_run_of_its_seed(
    tmp_path, monkeypatch, capsys
):
    import runpy

    from conftest import REPO

    tracker = Tracker(resolve_uri(None, tmp_path), "freeze")
    jobs = []
    for seed, base in [("0", 4.0), ("1", 16.0)]:  # forget/b is 1 in every run
        for metric, ratio, factor in [
            ("taylor", "0.0", 1.0),
            ("taylor", "0.05", 0.25),
            ("random", "0.05", 1.0),
        ]:
            params = {"metric.name": metric, "region.name": "core", "ratio": ratio, "seed": seed}
            jobs.append(
                (
                    params,
                    {
                        "forget/a": base * factor,
                        "forget/b": 1.0,
                        "forget/mean": (base * factor + 1) / 2,
                        "learn/t": 0.5,
                        "ppl/t": 2.0 * factor,
                    },
                )
            )
    parent = _sweep(tracker, "freeze", jobs, step=2)  # the final metrics, after 2 steps
    for child in tracker.children(parent):  # the curve reads the step history
        tracker.log_metrics(child.info.run_id, {"forget/a": 1.0, "forget/b": 1.0}, step=0)
    monkeypatch.setattr("sys.argv", ["analyze.py", "--uri", tracker.uri])
    runpy.run_path(str(REPO / "experiments" / "freeze" / "analyze.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "target t; forgetting over a, b; 6 runs" in out
    # forget/mean (a + b) / 2: 2.5 and 8.5 unfrozen.  Geometric mean of (a, b): 2 and 4
    # unfrozen, 1 and 2 with the 5% core, so the paired ratio is 0.5 for both seeds.
    assert "| none | 2 | 5.5 ± 4.2 | 3 ± 1.4 | 1 ± 0 | 2 ± 0 | 1 ± 0 |" in out
    assert "| taylor core 5% | 2 | 1.75 ± 1.1 | 1.5 ± 0.71 | 0.5 ± 0 | 0.5 ± 0 | 0.25 ± 0 |" in out
    assert "| random 5% | 2 | 5.5 ± 4.2 | 3 ± 1.4 | 1 ± 0 |" in out
    assert "| frozen set | 0 | 2 |" in out  # the curve: every step logged, mean of seeds
    assert "| none | 1 | 3 |" in out and "| taylor core 5% | 1 | 1.5 |" in out


def test_baseline_pairs_each_run_with_its_seeds_baseline(store, capsys):
    """`--baseline ratio=0.0 --over seed`: each run over the unfrozen run of the same seed,
    geometric mean and a t interval over the seeds' log ratios (own computation below)."""
    import math
    import statistics

    from scipy import stats

    tracker, _ = store
    argv = [
        "--uri",
        tracker.uri,
        "--experiment",
        "freeze",
        "--baseline",
        "ratio=0.0",
        "--over",
        "seed",
        "--group",
        "ratio",
        "--metrics",
        "forget/mean",
    ]
    report.main(argv)
    first = capsys.readouterr().out
    report.main(argv)  # the same table again, from the MLflow runs alone
    assert capsys.readouterr().out == first
    lines = first.strip().splitlines()
    assert lines[0] == "| ratio | n | forget/mean / base |"
    logs = [math.log(a / b) for a, b in ((1.0, 2.0), (1.5, 4.0), (2.0, 6.0))]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    lo, hi = math.exp(mean - half), math.exp(mean + half)
    assert lines[2] == "| 0.0 | 3 | 1 |"  # the baseline over itself
    expected = f"| 0.05 | 3 | {math.exp(mean):.4g} [{lo:.4g}, {hi:.4g}]{' *' if hi < 1 else ''} |"
    assert lines[3] == expected
    assert hi < 1 and lines[3].endswith(" * |")  # every seed forgets less: marked


def test_baseline_may_name_a_config_groups_choice(tmp_path, capsys):
    """`--baseline frozen_set=none` reads the logged param `choice.frozen_set`."""
    tracker = Tracker(resolve_uri(None, tmp_path), "freeze")
    jobs = [
        ({"choice.frozen_set": fs, "ratio": r, "seed": s}, {"forget/gmean": v})
        for fs, r, s, v in [
            ("none", "0.0", "0", 2.0),
            ("none", "0.0", "1", 3.0),
            ("core-5", "0.05", "0", 1.0),
            ("core-5", "0.05", "1", 1.5),
        ]
    ]
    _sweep(tracker, "sweep", jobs)
    report.main(
        [
            "--uri",
            tracker.uri,
            "--experiment",
            "freeze",
            "--baseline",
            "frozen_set=none",
            "--over",
            "seed",
            "--group",
            "choice.frozen_set",
            "--metrics",
            "forget/gmean",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2] == "| none | 2 | 1 |"
    assert lines[3] == "| core-5 | 2 | 0.5 |"  # 1/2 and 1.5/3: both exactly 0.5, no spread


def test_baseline_is_paired_along_every_axis_the_baseline_runs_vary(tmp_path, capsys):
    """`--baseline metric.name=random --over seed` on a metric × ratio × seed sweep: taylor at
    ratio r and seed s is divided by random at the same r and s, never by another ratio's random
    run (ratios below chosen so that any other pairing gives a different number)."""
    tracker = Tracker(resolve_uri(None, tmp_path), "core_region")
    value = {  # (metric, ratio, seed) -> ppl_ratio/mean
        ("random", "0.01", "0"): 1.0,
        ("random", "0.01", "1"): 1.25,
        ("random", "0.05", "0"): 2.0,
        ("random", "0.05", "1"): 4.0,
        ("taylor", "0.01", "0"): 3.0,
        ("taylor", "0.01", "1"): 3.75,
        ("taylor", "0.05", "0"): 10.0,
        ("taylor", "0.05", "1"): 20.0,
    }
    jobs = [
        ({"metric.name": m, "ratio": r, "seed": s}, {"ppl_ratio/mean": v})
        for (m, r, s), v in value.items()
    ]
    _sweep(tracker, "sweep", jobs)
    argv = ["--uri", tracker.uri, "--experiment", "core_region", "--metrics", "ppl_ratio/mean"]
    report.main([*argv, "--baseline", "metric.name=random", "--over", "seed"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| metric.name | ratio | n | ppl_ratio/mean / base |"
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in lines[2:]}
    assert rows["random", "0.01"].endswith("| 2 | 1 |")
    # 3/1 and 3.75/1.25: both 3; 10/2 and 20/4: both 5 (no spread, so no interval)
    assert rows["taylor", "0.01"].endswith("| 2 | 3 |")
    assert rows["taylor", "0.05"].endswith("| 2 | 5 |")

    # Without --over, two random runs (seeds 0 and 1) match ratio 0.01: refused, not guessed.
    with pytest.raises(SystemExit, match="two runs match the baseline .* ratio=0.01"):
        report.main([*argv, "--baseline", "metric.name=random", "--params", "metric.name", "ratio"])


# ------------------------------------------------------------------ the sweep's parent run
LANGS = ("latn", "cyrl")


def _job(metric: str, ratio: str, seed: str, values: dict[str, float]) -> tuple[dict, dict]:
    params = {
        "metric.name": metric,
        "region.name": "core",
        "ratio": ratio,
        "seed": seed,
        "model.name": "/models/sandbox-m",
        "intervention.name": "remove",
    }
    return params, values


@pytest.fixture
def seeded_sweep(tmp_path):
    """metric x ratio x 3 seeds, the unmodified (ratio 0) jobs last, plus one failed job."""
    import random

    rng = random.Random(7)
    tracker = Tracker(resolve_uri(None, tmp_path), "core_region")
    jobs = []
    for metric, ratio in [("taylor", "0.05"), ("random", "0.05"), ("taylor", "0.0")]:
        for seed in ("0", "1", "2"):
            size = float(ratio)
            values = {f"ppl_ratio/{lang}": 1 + size * rng.uniform(1, 20) for lang in LANGS}
            values["ppl_ratio/mean"] = sum(values.values()) / len(LANGS)
            values["ppl_ratio_lo/mean"] = values["ppl_ratio/mean"] * 0.99
            values["ppl_ratio_hi/mean"] = values["ppl_ratio/mean"] * 1.01
            values["region/fraction"] = size
            values["lm_eval/grammar/acc"] = rng.uniform(0.6, 0.9)
            values["lm_eval/grammar/acc_stderr"] = rng.uniform(0.01, 0.05)
            values["lm_eval/grammar_latn/acc"] = rng.uniform(0.6, 0.9)  # a subtask
            values["lm_eval/grammar_latn/acc_stderr"] = 0.1
            values["lm_eval/grammar/acc_agreement"] = 0.5  # a breakdown, without stderr
            jobs.append(_job(metric, ratio, seed, values))
    parent = _sweep(tracker, "sweep", jobs)
    failed = tracker.start_run("job-failed", parent_run_id=parent)
    tracker.log_params(failed, _job("magnitude", "0.05", "0", {})[0])
    tracker.log_metrics(failed, {"ppl_ratio/mean": 99.0})
    tracker.end_run(failed, "FAILED", error="boom")
    return tracker, parent, jobs


def _reference(jobs, metric: str, ratio: str, key: str) -> tuple[int, float, float]:
    """n, mean and sample standard deviation, written out from their definitions."""
    vals = [m[key] for p, m in jobs if p["metric.name"] == metric and p["ratio"] == ratio]
    n = len(vals)
    mean = sum(vals) / n
    sd = (sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5
    return n, mean, sd


def _artifact(tracker, run_id: str, name: str, tmp_path) -> str:
    from pathlib import Path

    return Path(tracker.client.download_artifacts(run_id, name, str(tmp_path))).read_text()


def test_sweep_comparison_is_one_row_per_condition_over_its_seeds(seeded_sweep, tmp_path):
    import csv
    import io

    tracker, parent, jobs = seeded_sweep
    summarize_sweep(tracker, parent, tracker.children(parent), {}, ["seed"])
    rows = list(
        csv.DictReader(io.StringIO(_artifact(tracker, parent, "sweep_comparison.csv", tmp_path)))
    )
    # the unmodified model first, then the conditions in the sweep's order; the failed job
    # (the only magnitude one) is no condition
    assert [r["condition"] for r in rows] == ["unmodified", "taylor core 5%", "random core 5%"]
    assert [(r["metric.name"], r["ratio"]) for r in rows] == [
        ("taylor", "0.0"),
        ("taylor", "0.05"),
        ("random", "0.05"),
    ]
    for row in rows:
        for key in [
            "ppl_ratio/mean",
            *(f"ppl_ratio/{lang}" for lang in LANGS),
            "lm_eval/grammar/acc",
        ]:
            n, mean, sd = _reference(jobs, row["metric.name"], row["ratio"], key)
            assert int(row["n"]) == n == 3
            assert float(row[key]) == pytest.approx(mean, rel=1e-12), key
            assert float(row[f"{key} sd"]) == pytest.approx(sd, rel=1e-9), key
        _, se, _ = _reference(jobs, row["metric.name"], row["ratio"], "lm_eval/grammar/acc_stderr")
        assert float(row["lm_eval/grammar/acc stderr"]) == pytest.approx(se, rel=1e-12)
    # lm-eval's top-level task only, and only the metrics it gives a standard error for
    assert not [c for c in rows[0] if "grammar_latn" in c or "acc_agreement" in c]
    table = _artifact(tracker, parent, "sweep_comparison.md", tmp_path)
    n, mean, sd = _reference(jobs, "taylor", "0.05", "ppl_ratio/mean")
    assert f"| taylor core 5% | 3 | 0.05 ± 0 | {mean:.4g} ± {sd:.2g} |" in table
    assert "| condition | cyrl | latn |" in table  # the per-language table


def test_parent_run_has_the_comparison_as_an_mlflow_table(seeded_sweep, tmp_path):
    """`sweep_comparison.json` is an MLflow table (the parent's Artifacts tab shows it as one):
    a row per condition with each mean and its 95% t interval over the seeds at 4 significant
    digits; sweep_comparison.csv has the same interval exactly."""
    import csv
    import io
    import json

    from scipy import stats

    tracker, parent, jobs = seeded_sweep
    summarize_sweep(tracker, parent, tracker.children(parent), {}, ["seed"])
    logged = json.loads(tracker.run(parent).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "sweep_comparison.json", "type": "table"} in logged
    table = json.loads(_artifact(tracker, parent, "sweep_comparison.json", tmp_path))
    rows = [dict(zip(table["columns"], line, strict=True)) for line in table["data"]]
    exact = list(
        csv.DictReader(io.StringIO(_artifact(tracker, parent, "sweep_comparison.csv", tmp_path)))
    )
    assert [r["condition"] for r in rows] == ["unmodified", "taylor core 5%", "random core 5%"]
    assert not [c for c in table["columns"] if "." in c]  # MLflow's table view: no dots
    for row, full in zip(rows, exact, strict=True):
        for key in ["ppl_ratio/mean", *(f"ppl_ratio/{lang}" for lang in LANGS)]:
            n, mean, sd = _reference(jobs, row["metric_name"], row["ratio"], key)
            half = stats.t.ppf(0.975, n - 1) * sd / n**0.5
            for col, want in ((key, mean), (f"{key} lo", mean - half), (f"{key} hi", mean + half)):
                assert row[col] == float(f"{want:.4g}"), (row["condition"], col)
                assert float(full[col]) == pytest.approx(want, rel=1e-12), (row["condition"], col)
        assert row["n"] == 3 and row["region/fraction"] == float(row["ratio"])
        assert "region/fraction lo" not in row  # a size, not an estimate


def test_parent_run_describes_the_sweep_and_opens_its_runs_table(seeded_sweep, capsys):
    import json

    tracker, parent, jobs = seeded_sweep
    summarize_sweep(tracker, parent, tracker.children(parent), {}, ["seed"])
    note = tracker.run(parent).data.tags["mlflow.note.content"]
    n, mean, sd = _reference(jobs, "taylor", "0.05", "ppl_ratio/mean")
    means = {
        name: _reference(jobs, metric, ratio, "ppl_ratio/mean")[1]
        for name, metric, ratio in [
            ("unmodified", "taylor", "0.0"),
            ("taylor core 5%", "taylor", "0.05"),
            ("random core 5%", "random", "0.05"),
        ]
    }
    hi, lo = max(means, key=means.get), min(means, key=means.get)
    assert note.splitlines()[0] == (
        "**Removing regions of sandbox-m**: 3 conditions, 9 of 10 jobs finished. Highest "
        f"ppl_ratio/mean: **{hi}** ({means[hi]:.4g}); lowest: **{lo}** ({means[lo]:.4g})."
    )
    assert f"| taylor core 5% | 3 | {mean:.4g} ± {sd:.2g} |" in note
    link = f"#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert f"({link}&viewStateShareKey={parent})" in note
    # the comparison as the parent's metrics, one per condition and compared metric
    logged = tracker.run(parent).data.metrics
    for name, value in means.items():
        key = f"ppl_ratio/mean/{name.replace('%', 'pct')}"
        assert logged[key] == pytest.approx(value, rel=1e-12), key

    # the saved runs-table view the link opens: this sweep's jobs, one row each, under their
    # parent, which MLflow opens for runs tagged as evaluations; not grouped (a group row
    # averages every column)
    for child in tracker.children(parent):
        assert child.data.tags["mlflow.runType"] == "evaluation"
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    view = json.loads(tags[f"mlflow.sharedViewState.{parent}"])
    found = tracker.client.search_runs([tracker.experiment_id], view["searchFilter"])
    assert {r.info.run_id for r in found} == {r.info.run_id for r in tracker.children(parent)}
    assert view["groupBy"] is None
    columns = view["selectedColumns"]
    assert columns[:3] == [
        "metrics.`ppl_ratio/mean`",
        "metrics.`ppl_ratio_lo/mean`",
        "metrics.`ppl_ratio_hi/mean`",
    ]
    assert {f"metrics.`ppl_ratio/{lang}`" for lang in LANGS} <= set(columns)
    # no seed column: each run names its seed, and a grouped row would average it ("seed 1")
    assert "params.`seed`" not in columns
    assert tags["mlflow.experimentKind"] == "custom_model_development"

    report.main(["--uri", tracker.uri, "--url", "--port", "5123"])
    url = capsys.readouterr().out.strip()
    assert url == f"http://127.0.0.1:5123/{link}&viewStateShareKey={parent}"


def test_report_refuses_a_store_that_does_not_exist(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    for args, path in [
        ([], elsewhere / "mlruns" / "mlflow.db"),
        (["--uri", "sqlite:///runs/x.db"], elsewhere / "runs" / "x.db"),
        (["--uri", str(tmp_path / "nope")], tmp_path / "nope"),
        (["--url"], elsewhere / "mlruns" / "mlflow.db"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "regionbench.report", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, args
        assert done.stderr.strip().splitlines() == [
            f"error: no MLflow store at {path}: run this where the sweep was launched (its "
            "mlruns/ folder is there) or pass --uri"
        ]
        assert list(elsewhere.iterdir()) == [] and not (tmp_path / "nope").exists()


def test_report_on_an_unknown_experiment_names_those_there_and_creates_none(store):
    uri = store[0].uri
    with pytest.raises(SystemExit) as stop:
        report.main(["--uri", uri, "--experiment", "frezee"])
    assert str(stop.value) == (
        f"error: cannot use the MLflow store {uri}: no experiment 'frezee' (there: Default, freeze)"
    )
    with pytest.raises(SystemExit):
        report.main(["--uri", uri, "--experiment", "frezee", "--url"])
    names = sorted(e.name for e in MlflowClient(tracking_uri=uri).search_experiments())
    assert names == ["Default", "freeze"]  # the typo made no experiment


def test_an_unknown_parent_is_one_line_naming_the_sweeps_there(store):
    """It used to be a 32-line MLflow traceback."""
    tracker, old = store
    sweeps = MlflowClient(tracking_uri=tracker.uri).search_runs(
        [tracker.experiment_id], order_by=["attributes.start_time DESC"]
    )
    new = next(r.info.run_id for r in sweeps if r.info.run_name == "new")
    with pytest.raises(SystemExit) as stop:
        report.main(["--uri", tracker.uri, "--experiment", "freeze", "--parent", "0123abcd"])
    assert stop.value.code == (
        f"error: no run '0123abcd' in the experiment 'freeze' of {tracker.uri}: its sweeps, "
        f"newest first: {new} (new), {old} (old); pass one to --parent, or leave --parent out "
        "for the latest"
    )


def _single_job(tracker: Tracker, name: str, metrics: dict) -> str:
    run = tracker.start_run(name)
    tracker.log_params(run, {"ratio": "0.01"})
    tracker.log_metrics(run, metrics)
    tracker.end_run(run)
    return run


JOB_METRICS = {
    "ppl/latn": 6.0,
    "ppl/cyrl": 5.0,
    "ppl/mean": 5.5,
    "ppl_ratio/latn": 1.2,
    "ppl_ratio_lo/latn": 1.1,
    "ppl_ratio_hi/latn": 1.3,
    "ppl_ratio/cyrl": 1.25,
    "ppl_ratio_lo/cyrl": 1.2,
    "ppl_ratio_hi/cyrl": 1.31,
    "ppl_ratio/mean": 1.225,
    "ppl_ratio_lo/mean": 1.16,
    "ppl_ratio_hi/mean": 1.3,
}


def test_after_a_single_job_the_report_prints_its_languages(store, capsys):
    """The latest run is a job of no sweep (`python -m regionbench model=hf ...`): the report
    shows it, one row per language with its interval, not an older sweep or "No sweep"."""
    tracker, _ = store
    job = _single_job(tracker, "ratio=0.01", JOB_METRICS)
    report.main(["--uri", tracker.uri, "--experiment", "freeze"])
    out = capsys.readouterr().out
    assert job in out.splitlines()[0]
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert rows == [
        "| cyrl | 5 | 1.25 | [1.2, 1.31] |",
        "| latn | 6 | 1.2 | [1.1, 1.3] |",
        "| mean | 5.5 | 1.225 | [1.16, 1.3] |",
    ]
    # every job of the experiment, the single one included; and a named set of runs
    assert job in {r.info.run_id for r in report.sweep_runs(tracker, all_sweeps=True)}
    assert len(report.sweep_runs(tracker, all_sweeps=True)) == 8
    other = _single_job(tracker, "ratio=0.02", JOB_METRICS)
    report.main(["--uri", tracker.uri, "--experiment", "freeze", "--runs", job, other])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| ratio=0.01", "| ratio=0.02"]
    with pytest.raises(SystemExit, match="no run 'nope'"):
        report.main(["--uri", tracker.uri, "--experiment", "freeze", "--runs", "nope"])


def test_a_debug_sweep_says_so_in_its_description_and_tables(tmp_path):
    """`+debug=default` numbers check the pipeline; its parent description, terminal table and
    figure titles begin with the banner, those of another sweep do not."""
    from conftest import SMALL, compose

    from regionbench.config import RunConfig
    from regionbench.report.sweep import DEBUG_BANNER

    assert RunConfig.from_cfg(compose(SMALL)).debug is True
    assert RunConfig.from_cfg(compose([])).debug is False
    tracker = Tracker(resolve_uri(None, tmp_path), "dbg")
    for debug in ("True", "False"):
        jobs = [
            (
                {**_job("taylor", r, "0", {})[0], "debug": debug},
                {"ppl_ratio/mean": 1.0 + float(r), "ppl_ratio/latn": 1.0 + float(r)},
            )
            for r in ("0.0", "0.05")
        ]
        parent = _sweep(tracker, f"debug={debug}", jobs)
        table = summarize_sweep(tracker, parent, tracker.children(parent), {}, ["seed"])
        note = tracker.run(parent).data.tags["mlflow.note.content"]
        said = (debug == "True", debug == "True")
        assert (note.startswith(f"**{DEBUG_BANNER} "), table.startswith(DEBUG_BANNER)) == said
