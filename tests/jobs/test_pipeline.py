"""End to end: the real command, a multirun on the test-sized sandbox model in a temporary
directory, read back from MLflow; bad input fails with one line and no FINISHED run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ENDLESS, REPO, SMALL, compose, run_cli
from mlflow.tracking import MlflowClient

from regionbench.pipeline import run_job
from regionbench.session import Session


def _runs(uri):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("regionbench")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir, sandbox_test_dir):
    cwd = tmp_path_factory.mktemp("sweep")
    # a cache of its own (the sandbox models shared): its first scored job must be an importance
    # miss whatever other tests scored before it
    own = tmp_path_factory.mktemp("sweep-cache")
    (own / "sandbox").symlink_to(sandbox_test_dir.parent)
    # ratio=1.5 is bad input: that job fails, the others still run, the command exits non-zero
    args = ["-m", "ratio=0,0.05,0.2,1.5", "tracking.baseline={ratio:0}", *SMALL]
    return cwd, run_cli(args, cwd, own)


def test_multirun_logs_one_parent_and_nested_jobs(sweep):
    cwd, proc = sweep
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    uri = f"sqlite:///{cwd}/mlruns/mlflow.db"
    client, parents, all_children = _runs(uri)
    assert len(parents) == 1 and len(all_children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in all_children} == {parents[0].info.run_id}
    children = [c for c in all_children if c.info.status == "FINISHED"]
    assert sorted(c.info.run_name for c in children) == ["ratio=0", "ratio=0.05", "ratio=0.2"]
    by_ratio = {float(c.data.params["ratio"]): c for c in children}
    assert set(by_ratio) == {0.0, 0.05, 0.2}
    from regionbench import sandbox

    for ratio, run in by_ratio.items():
        m = run.data.metrics
        for lang in sandbox.PRETRAIN_LANGS:
            assert {f"ppl/{lang}", f"bpb/{lang}", f"ppl_ratio/{lang}"} <= set(m)
        assert abs(m["region/fraction"] - ratio) < 1e-3
        assert {
            "sweep_id",
            "job_num",
            "git_sha",
            "regionbench_version",
            "importance_key",
            "model_id",
        } <= set(run.data.tags)
        assert run.data.params["model.name"] == "sandbox-test"
        assert run.data.params["choice.model"] == "sandbox-test"  # the groups Hydra chose
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "region_summary.csv", "lm_eval_results.json"} <= arts
        assert any(k.startswith("lm_eval/sandbox_grammar") for k in m)
    # every ratio comes with its paired bootstrap interval over the evaluation documents
    for ratio, run in by_ratio.items():
        m = run.data.metrics
        for lang in [*sandbox.PRETRAIN_LANGS, "mean"]:
            lo, value, hi = (
                m[f"ppl_ratio_lo/{lang}"],
                m[f"ppl_ratio/{lang}"],
                m[f"ppl_ratio_hi/{lang}"],
            )
            assert lo - 1e-12 <= value <= hi + 1e-12, (ratio, lang)
            assert m[f"bpb_diff_lo/{lang}"] <= m[f"bpb_diff/{lang}"] <= m[f"bpb_diff_hi/{lang}"]
        assert m["interval/joint"] == 1.0  # parallel documents: the mean resampled jointly
    assert by_ratio[0.2].data.metrics["ppl_ratio_lo/mean"] > 1.0  # clearly worse: excludes 1
    # ratio 0 is the unmodified model: every ratio is exactly 1
    unmodified = by_ratio[0.0].data.metrics
    assert all(v == 1.0 for k, v in unmodified.items() if k.startswith("ppl_ratio/"))
    assert all(
        v == pytest.approx(1.0, abs=1e-12)
        for k, v in unmodified.items()
        if k.startswith("ppl_ratio_")
    )
    assert (
        by_ratio[0.2].data.metrics["ppl_ratio/mean"]
        > by_ratio[0.05].data.metrics["ppl_ratio/mean"]
        > 1.0
    )
    # importance is computed once: the second scored job hits the cache
    tags = [by_ratio[r].data.tags["importance_cache"] for r in (0.05, 0.2)]
    assert tags == ["miss", "hit"]
    keys = {by_ratio[r].data.tags["importance_key"] for r in (0.05, 0.2)}
    assert len(keys) == 1  # one entry serves every ratio
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"sweep_comparison.csv", "sweep_comparison.md", "ppl_ratio_by_language.png"} <= arts
    assert {"ppl_ratio_heatmap.png", "region_overlap.csv", "region_overlap.png"} <= arts
    job = by_ratio[0.05].info.run_id
    assert {"region_density.png", "region_dims.png"} <= {a.path for a in client.list_artifacts(job)}
    # the top 5% of each matrix lies inside its top 20%: overlap coefficient 1, Jaccard 5/20
    import csv

    path = client.download_artifacts(parents[0].info.run_id, "region_overlap.csv", str(cwd))
    with open(path) as f:
        (row,) = list(csv.DictReader(f))
    assert {row["a"], row["b"]} == {"ratio=0.05", "ratio=0.2"}
    assert float(row["overlap_coefficient"]) == 1.0
    small = by_ratio[0.05].data.metrics["region/params"]
    big = by_ratio[0.2].data.metrics["region/params"]
    assert float(row["jaccard"]) == pytest.approx(small / big)


def _four_digits(value: float) -> float:
    """`value` at 4 significant digits, by decimal arithmetic."""
    from decimal import ROUND_HALF_EVEN, Decimal

    exact = Decimal(value)
    step = Decimal(1).scaleb(exact.adjusted() - 3)  # the unit of the 4th significant digit
    return float(exact.quantize(step, rounding=ROUND_HALF_EVEN))


def test_runs_table_shows_every_value_at_four_significant_digits(sweep):
    """MLflow's runs table prints a metric as logged (0.99819845...): each job also logs every
    value its sweep's saved view shows at 4 significant digits (`4sig/<metric>`), the view's
    columns are those, and the exact values stay under their own names."""
    import json

    cwd, _ = sweep
    client, parents, children = _runs(f"sqlite:///{cwd}/mlruns/mlflow.db")
    parent = parents[0].info.run_id
    experiment = parents[0].info.experiment_id
    tags = client.get_experiment(experiment).tags
    view = json.loads(tags[f"mlflow.sharedViewState.{parent}"])
    shown = [c.split("`")[1] for c in view["selectedColumns"] if c.startswith("metrics.")]
    assert shown[:3] == ["4sig/ppl_ratio/mean", "4sig/ppl_ratio_lo/mean", "4sig/ppl_ratio_hi/mean"]
    from regionbench import sandbox

    assert {f"4sig/ppl_ratio/{lang}" for lang in sandbox.PRETRAIN_LANGS} <= set(shown)
    assert "4sig/region/fraction" in shown and "4sig/ppl/mean" in shown
    assert all(m.startswith("4sig/") for m in shown)
    assert not any(c.startswith("params.`seed`") for c in view["selectedColumns"])
    rows = client.search_runs([experiment], view["searchFilter"])
    finished = [r for r in rows if r.info.status == "FINISHED"]
    assert sorted(r.info.run_name for r in finished) == ["ratio=0", "ratio=0.05", "ratio=0.2"]
    for run in finished:
        m = run.data.metrics
        for name in shown:
            exact = m[name.removeprefix("4sig/")]
            assert m[name] == _four_digits(exact), (run.info.run_name, name)
            digits = repr(m[name]).replace("-", "").replace(".", "").lstrip("0").rstrip("0")
            assert len(digits.split("e")[0]) <= 4, (name, m[name])  # what a browser prints
    widths = view["columnWidths"]
    assert all(widths[c] >= 7 * len(c.split("`")[1]) for c in view["selectedColumns"])


def test_each_job_logs_the_lm_eval_command_that_scores_its_model(sweep, sandbox_test_dir):
    """Tag `lm_eval_command`: a command line lm-eval's own parser reads, naming the job's tasks,
    the model folder it loaded, its dtype, batch size and device, and our tasks' folder among
    the job's artifacts (the YAML files there name data files that exist)."""
    import shlex

    from lm_eval._cli.harness import HarnessCLI

    cwd, _ = sweep
    client, _, children = _runs(f"sqlite:///{cwd}/mlruns/mlflow.db")
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 3
    for run in finished:
        (line,) = run.data.tags["lm_eval_command"].splitlines()  # one BOS policy: no rb_ppl
        argv = shlex.split(line)
        assert argv[0] == "lm_eval"
        args = HarnessCLI()._parser.parse_args(["run", *argv[1:]])  # what `lm_eval ...` runs
        assert args.model == "hf" and args.tasks == ["sandbox_grammar"]
        assert set(args.model_args) == {"pretrained", "dtype"}
        assert args.model_args["dtype"] == "float32"
        # the sandbox-test folder, through the sweep's own cache (a link to the shared one)
        assert Path(args.model_args["pretrained"]).resolve() == sandbox_test_dir.resolve()
        assert (args.batch_size, args.device) == (
            str(run.data.params["eval.lm_eval.batch_size"]),
            "cpu",
        )
        folder = Path(args.include_path)
        artifacts = Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
        assert folder == artifacts / "lm_eval_tasks"
        assert {a.path for a in client.list_artifacts(run.info.run_id, "lm_eval_tasks")} >= {
            "lm_eval_tasks/sandbox_grammar.yaml",
            "lm_eval_tasks/data",
        }
        for task in folder.glob("sandbox_grammar_*.yaml"):
            data = task.read_text().split("data_file: ")[1].split("}")[0]
            assert Path(json.loads(data)).is_file(), task


def test_each_job_describes_what_was_done_to_which_model_and_its_numbers(sweep):
    """A job's page shows its description (`mlflow.note.content`): what was done to which model,
    the headline numbers with their intervals, lm-eval's with its standard error, a markdown
    table per language and the lm_eval command."""
    cwd, _ = sweep
    _, _, children = _runs(f"sqlite:///{cwd}/mlruns/mlflow.db")
    words = {"0": "unmodified", "0.05": "taylor core 5%", "0.2": "taylor core 20%"}
    for run in [c for c in children if c.info.status == "FINISHED"]:
        note, m = run.data.tags["mlflow.note.content"], run.data.metrics
        ratio = run.data.params["ratio"].removesuffix(".0")
        assert note.splitlines()[0].startswith(
            "**[DEBUG: test-sized model and data, not results] Removing regions of sandbox-test"
        ), note
        assert f"**: {words[ratio]}, seed 0." in note.splitlines()[0]
        lo, hi = m["ppl_ratio_lo/mean"], m["ppl_ratio_hi/mean"]
        assert (
            f"ppl_ratio/mean **{m['ppl_ratio/mean']:.4g}** (95% interval over the documents "
            f"{lo:.4g} to {hi:.4g})" in note
        )
        acc, se = m["lm_eval/sandbox_grammar/acc"], m["lm_eval/sandbox_grammar/acc_stderr"]
        assert f"lm_eval/sandbox_grammar/acc **{acc:.4g}** (se {se:.2g})" in note
        assert "| language | ppl | ppl_ratio | 95% interval | bpb |" in note
        assert f"| latn | {m['ppl/latn']:.4g} | {m['ppl_ratio/latn']:.4g} |" in note
        assert f"    {run.data.tags['lm_eval_command']}" in note


def test_paired_table_on_the_parent_is_what_report_prints_from_the_runs(sweep, capsys):
    """`tracking.baseline={ratio:0}`: the parent logs sweep_paired.md; `report --baseline ratio=0
    --over seed` regenerates it, character for character, from the finished sweep's runs alone."""
    from regionbench.report import cli as report

    cwd, _ = sweep
    uri = f"sqlite:///{cwd}/mlruns/mlflow.db"
    client, parents, children = _runs(uri)
    parent = parents[0].info.run_id
    logged = Path(client.download_artifacts(parent, "sweep_paired.md", str(cwd))).read_text()
    report.main(["--uri", uri, "--baseline", "ratio=0", "--over", "seed", "--parent", parent])
    assert capsys.readouterr().out == logged
    lines = logged.strip().splitlines()
    head = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    assert head[:4] == ["ratio", "n", "ppl/mean / base", "ppl_ratio/mean / base"]
    rows = {line.split("|")[1].strip(): line.split("|")[1:-1] for line in lines[2:]}
    assert [c.strip() for c in rows["0.0"][1:]] == ["1"] * (len(head) - 1)  # baseline / itself
    # one seed, so each ratio over the baseline is the run's own ppl_ratio/mean (no interval)
    by_ratio = {c.data.params["ratio"]: c.data.metrics for c in children if c.data.metrics}
    for ratio in ("0.05", "0.2"):
        assert rows[ratio][3].strip() == f"{by_ratio[ratio]['ppl_ratio/mean']:.4g}"
    assert [c.strip() for c in rows["1.5"][1:4]] == ["1", "n/a", "n/a"]  # failed: no ratio


def test_failed_job_does_not_stop_the_sweep(sweep):
    cwd, proc = sweep
    assert "1 of 4 jobs failed: ratio=1.5" in proc.stderr
    _, parents, children = _runs(f"sqlite:///{cwd}/mlruns/mlflow.db")
    failed = [c for c in children if c.info.status != "FINISHED"]
    assert [(c.info.run_name, c.info.status) for c in failed] == [("ratio=1.5", "FAILED")]
    assert failed[0].data.params["ratio"] == "1.5"
    assert "ratio 1.5 is outside [0, 1)" in failed[0].data.tags["error"]
    assert parents[0].info.status == "FAILED"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the bad-input cases (creating a SQLite store takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.name=sandbox-xxl"], "unknown sandbox model 'sandbox-xxl'"),
        (["model.name=no-such-org/no-such-model"], "unknown model 'no-such-org/no-such-model'"),
        (["metric.name=magnitud"], "unknown metric 'magnitud': did you mean 'magnitude'"),
        (["region.name=core_botom"], "did you mean 'core_bottom'"),
        (["data.eval_langs=[latn,xx]"], "unknown language for data=sandbox 'xx'"),
        (["ratio=1.0"], "ratio 1.0 is outside [0, 1)"),
        (["data=local", "data.path=/no/such/dir"], "data.path '/no/such/dir' is not a readable"),
        (
            [
                "data=wikipedia",
                "data.importance_langs=[ar]",
                "data.eval_langs=[ar]",
                "model=sandbox-test",
            ],
            "cannot stream 'wikimedia/wikipedia'",
        ),
        (["eval.lm_eval.tasks=[sandbox_gramar]"], "sandbox_gramar"),
        (["eval.lm_eval.tasks=[arc_easy]"], "cannot load the dataset of lm-eval task 'arc_easy'"),
        (
            ["region=monolingual", "region.lang=latn", "metric=magnitude"],
            "region=monolingual needs a per-language metric",
        ),
        (["importance.seq_len=512"], "importance.seq_len 512 is longer than the model's context"),
        (
            ["intervention=freeze", "intervention.warmup_steps=9"],
            "warmup_steps 9 is more than steps 4",
        ),
    ],
)
def test_bad_input_fails_one_line_without_a_finished_run(
    store, overrides, message, sandbox_test_dir
):
    experiment = f"bad-{abs(hash(tuple(overrides)))}"
    cfg = compose(
        [*SMALL, *overrides, f"tracking.uri={store}", f"tracking.experiment={experiment}"]
    )
    result = run_job(cfg, name="bad")
    assert result["status"] == "FAILED"
    assert message in result["error"] and "\n" not in result["error"]
    if "dataset" in message:  # found while preparing the tasks: before the model is loaded
        run = MlflowClient(tracking_uri=store).get_run(result["run_id"])
        assert "model_fingerprint" not in run.data.tags
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_cli_group_typo_is_one_line(tmp_path, cache_dir):
    proc = run_cli(["metric=taylr"], tmp_path, cache_dir, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        "error: unknown metric option 'taylr': did you mean 'taylor' "
        "or 'taylor_abs'? choices: activation, fisher, lape, magnitude, random, taylor, "
        "taylor_abs, wanda"
    )
    assert not (tmp_path / "mlruns").exists()


def test_help_lists_groups(tmp_path, cache_dir):
    proc = run_cli(["--help"], tmp_path, cache_dir, timeout=60)
    assert proc.returncode == 0
    assert (
        "metric: activation, fisher, lape, magnitude, random, taylor, taylor_abs, wanda"
        in proc.stdout
    )
    assert (
        "region: coordinates, core, core_bottom, core_minus_outliers, dimension, exclusive, file, "
        "heads, lape, monolingual, neurons, outliers, random-dims, shared, specific, top-dims"
        in proc.stdout
    )
    lines = proc.stdout.splitlines()
    # the groups a command adds rather than replaces are marked, the others are not
    assert [line.split(":")[0] for line in lines if line.startswith("+")] == [
        "+budget",
        "+debug",
        "+experiment",
        "+frozen_set",
        "+importance",
    ]
    # every key of the schema with its default and the meaning written beside it there
    assert (
        "  ratio=0.01    fraction of each matrix in the region; 0 = the unmodified baseline"
        in lines
    )
    assert "  intervention.factor=0.5    scale: the region is multiplied by it" in lines
    assert any(line.startswith("  resume=false    Skip every job whose config") for line in lines)
    assert any("python -m regionbench.report" in line for line in lines)


def test_freeze_job_logs_curves_and_restores_the_model(store, sandbox_test_dir, monkeypatch):
    from regionbench.common.cache import fingerprint_model
    from regionbench.report import run_figures

    titles = {}  # each run figure's title, as drawn

    def recording(draw, name):
        def wrapper(*args, **kw):
            titles[name] = kw["title"]
            return draw(*args, **kw)

        return wrapper

    figures = run_figures
    monkeypatch.setattr(figures, "forgetting_curve", recording(figures.forgetting_curve, "curve"))
    monkeypatch.setattr(figures, "heatmap", recording(figures.heatmap, "density"))
    monkeypatch.setattr(figures, "dimension_profile", recording(figures.dimension_profile, "dims"))

    cfg = compose(
        [
            "+experiment=freeze",
            "frozen_set=core-5",
            *SMALL,
            f"tracking.uri={store}",
            "tracking.experiment=freeze-test",
            "intervention.train_docs=60",
        ]
    )
    assert cfg.model.name == "sandbox-test" and cfg.ratio == 0.05
    session = Session()
    result = run_job(cfg, name="freeze", session=session)
    assert result["status"] == "FINISHED", result
    loaded = session.loaded
    assert fingerprint_model(loaded.model, full=True) == loaded.fingerprint  # training undone
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(result["run_id"])
    m = run.data.metrics
    assert {"forget/mean", "learn/mean", "learn/armn", "forget/latn", "train/loss"} <= set(m)
    assert [h.step for h in client.get_metric_history(run.info.run_id, "forget/latn")] == [0, 2, 4]
    assert [h.value for h in client.get_metric_history(run.info.run_id, "forget/latn")][0] == 1.0
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"forgetting_curve.png", "region_summary.csv", "config.yaml"} <= arts
    assert abs(m["region/fraction"] - 0.05) < 1e-3
    assert "saved_model" not in run.data.tags  # weights are not kept unless asked
    debug = "sandbox-test [DEBUG: test-sized model and data, not results]"  # +debug=default
    assert titles == {  # what was frozen, in which model, at which ratio
        "curve": f"taylor core 5% frozen while training {debug} on armn (seed 0)",
        "density": f"taylor core 5% of {debug}: share of each block matrix selected",
        "dims": f"taylor core 5% of {debug}: entries per hidden dimension",
    }


def test_freeze_job_saves_the_trained_model_when_asked(store, sandbox_test_dir, tmp_path):
    from safetensors.torch import load_file

    from regionbench.regions.region import Region

    cfg = compose(
        [
            "+experiment=freeze",
            "frozen_set=core-5",
            *SMALL,
            f"tracking.uri={store}",
            "tracking.experiment=freeze-test",
            "intervention.steps=2",
            "intervention.eval_every=0",
            "intervention.save_model=true",
        ]
    )
    session = Session()
    result = run_job(cfg, name="freeze-save", output_dir=tmp_path, session=session)
    assert result["status"] == "FINISHED", result
    saved = tmp_path / "model"
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(result["run_id"])
    assert run.data.tags["saved_model"] == str(saved)
    assert (saved / "config.json").is_file() and (saved / "tokenizer_config.json").is_file()
    trained = load_file(saved / "model.safetensors")
    loaded = dict(session.loaded.model.named_parameters())  # restored to the original
    mask_file = client.download_artifacts(run.info.run_id, "region.safetensors", str(tmp_path))
    masks = Region.load(mask_file).masks
    moved = 0
    for name, mask in masks.items():
        before, after = loaded[name].detach(), trained[name]
        assert torch.equal(after[mask], before[mask]), name  # the frozen set, bit-identical
        moved += int((after[~mask] != before[~mask]).sum())
    assert moved > 0


def test_sigterm_ends_the_running_job_and_the_sweep_killed(tmp_path, cache_dir, sandbox_test_dir):
    """`kill` (or a scheduler's time limit) mid-sweep: exit 143, and no MLflow run stays RUNNING."""
    import contextlib
    import signal
    import sqlite3
    import time

    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO))
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regionbench",
            "-m",
            "seed=0,1",
            *SMALL,
            *ENDLESS,
        ],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        db, training, error = tmp_path / "mlruns" / "mlflow.db", False, None
        while not training:  # wait until the first job is training
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"the first job never started training: {error}"
            time.sleep(1)
            # Read-only SQL: an MlflowClient here would race the command's creation of the store.
            try:
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    training = con.execute(
                        "SELECT 1 FROM metrics WHERE key = 'train/loss' LIMIT 1"
                    ).fetchone()
            except sqlite3.Error as err:  # not created yet, or being written
                error = err
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted (SIGTERM)" in err
    client, parents, children = _runs(uri)
    assert [r.info.status for r in parents] == ["KILLED"]
    assert [(r.info.run_name, r.info.status) for r in children] == [("seed=0", "KILLED")]
    assert children[0].data.tags["error"] == "interrupted"


@pytest.fixture(scope="module")
def local_world(tmp_path_factory, sandbox_test_dir):
    """The README's real-model setting offline: a model folder and a folder of <lang>.txt."""
    import shutil

    from regionbench import sandbox

    root = tmp_path_factory.mktemp("local")
    shutil.copytree(sandbox_test_dir, root / "model")
    (root / "texts").mkdir()
    for lang in ("latn", "grek"):
        docs = sandbox.generate("importance", [lang], n_docs=150)[lang]
        (root / "texts" / f"{lang}.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return root


def test_readme_real_model_command_runs_without_eval(store, local_world):
    """`model=hf model.name=<folder> data=local data.path=<folder>`: no sandbox task asked for."""
    cfg = compose(
        [
            "model=hf",
            f"model.name={local_world / 'model'}",
            "data=local",
            f"data.path={local_world / 'texts'}",
            "ratio=0.05",
            "data.eval_docs=10",
            f"tracking.uri={store}",
            "tracking.experiment=local-readme",
        ]
    )
    result = run_job(cfg, name="local")
    assert result["status"] == "FINISHED", result
    m = result["metrics"]
    assert {"ppl_ratio/latn", "ppl_ratio/grek"} <= set(m)
    assert not any(k.startswith("lm_eval") for k in m)
    assert 0 < m["intervention/changed"] <= m["region/params"]
    assert m["interval/joint"] == 0.0  # a folder's languages are no parallel set


def test_importance_cache_key_follows_the_tokenizer(store, local_world, tmp_path):
    """Same weights, same text, another tokenizer: other samples, so another cache entry."""
    import shutil

    from regionbench.testing import tiny_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(local_world / "model", folder)
    overrides = [
        "model=hf",
        f"model.name={folder}",
        "data=local",
        f"data.path={local_world / 'texts'}",
        "ratio=0.05",
        "data.eval_docs=5",
        "eval.perplexity=false",
        f"tracking.uri={store}",
        "tracking.experiment=tok-key",
    ]
    client = MlflowClient(tracking_uri=store)
    tags = []
    for retokenize in (False, False, True):
        if retokenize:
            texts = (local_world / "texts" / "latn.txt").read_text().split("\n\n")
            tiny_tokenizer(texts, vocab_size=200, full_alphabet=True).save_pretrained(folder)
        # a new session, as a new process would load the folder afresh
        result = run_job(compose(overrides), name="tok", session=Session())
        assert result["status"] == "FINISHED", result
        run = client.get_run(result["run_id"])
        tags.append((run.data.tags["importance_key"], run.data.tags["importance_cache"]))
    assert tags[1] == (tags[0][0], "hit")
    assert tags[2][0] != tags[0][0] and tags[2][1] == "miss"


def _scored(store, texts, experiment):
    """One job in a new session, as a new process runs it; (importance key, hit or miss)."""
    overrides = [
        "model=hf",
        f"model.name={texts.parent / 'model'}",
        "data=local",
        f"data.path={texts}",
        "ratio=0.05",
        "data.eval_docs=5",
        "eval.perplexity=false",
        f"tracking.uri={store}",
        f"tracking.experiment={experiment}",
    ]
    result = run_job(compose(overrides), name="key", session=Session())
    assert result["status"] == "FINISHED", result
    tags = MlflowClient(tracking_uri=store).get_run(result["run_id"]).data.tags
    return tags["importance_key"], tags["importance_cache"]


def _own_world(local_world, tmp_path):
    import shutil

    shutil.copytree(local_world / "model", tmp_path / "model")
    shutil.copytree(local_world / "texts", tmp_path / "texts")
    return tmp_path / "texts"


def test_a_new_process_finds_its_scores_without_tokenizing_the_text(
    store, local_world, tmp_path, monkeypatch
):
    """Issue 27: a hit is keyed by the text's revision (a file's size and mtime), the settings and
    the tokenizer; the windows' fingerprint was kept by the job that tokenized them."""
    import regionbench.session

    texts = _own_world(local_world, tmp_path)
    first = _scored(store, texts, "no-retokenize")
    assert first[1] == "miss"
    real = regionbench.session.importance_samples
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(regionbench.session, "importance_samples", counted)
    assert _scored(store, texts, "no-retokenize") == (first[0], "hit")
    assert calls == []  # the hit read and tokenized no importance text
    latn = texts / "latn.txt"  # another text: another revision (size, mtime)
    latn.write_text(latn.read_text(encoding="utf-8").replace("a", "e"), encoding="utf-8")
    changed = _scored(store, texts, "no-retokenize")
    assert calls == [1] and changed[1] == "miss" and changed[0] != first[0]


def test_text_that_changed_under_the_same_revision_is_keyed_by_what_was_read(
    store, local_world, tmp_path, monkeypatch, caplog
):
    """A source whose revision does not see an edit (a hub corpus re-uploaded under its name):
    once its scores are gone, the text read for the miss is fingerprinted and keyed anew, and
    the remembered fingerprint is replaced."""
    import logging

    import regionbench.session
    from regionbench.common.cache import ScoreCache, cache_root

    monkeypatch.setattr(regionbench.session, "text_revision", lambda *a: "fixed")
    texts = _own_world(local_world, tmp_path)
    old_key, _ = _scored(store, texts, "stale")
    (texts / "latn.txt").write_text(
        (texts / "latn.txt").read_text(encoding="utf-8").replace("a", "e"), encoding="utf-8"
    )
    import shutil

    shutil.rmtree(ScoreCache(cache_root() / "importance").path(old_key))
    with caplog.at_level(logging.WARNING, logger="regionbench.session"):
        new_key, status = _scored(store, texts, "stale")
    assert status == "miss" and new_key != old_key
    assert any("changed although its revision did not" in r.message for r in caplog.records)
    assert _scored(store, texts, "stale") == (new_key, "hit")


@pytest.mark.parametrize(
    ("overrides", "top1"),
    [
        (["region=dimension", "region.dims=[0,5]"], 0.5),
        (["region=top-dims", "ratio=0.05"], 0.25),
        (["region=random-dims", "seed=1"], 0.25),
        (
            [
                "region=coordinates",
                "region.coordinates=['model.layers.1.mlp.down_proj.weight[3, 7]']",
            ],
            1.0,
        ),
    ],
)
def test_dimension_and_coordinate_regions_run_and_say_where_they_live(store, overrides, top1):
    cfg = compose(
        [
            *SMALL,
            *overrides,
            "intervention=scale",
            "intervention.factor=0",
            f"tracking.uri={store}",
            "tracking.experiment=dims",
        ]
    )
    result = run_job(cfg, name="dims")
    assert result["status"] == "FINISHED", result
    m = result["metrics"]
    assert m["region/top1_dim_share"] == pytest.approx(top1)
    assert m["region/top4_dim_share"] == pytest.approx(1.0)
    assert m["intervention/changed"] == m["region/params"] > 0
    assert m["model/outlier_dims"] == 0 and m["region/super_weights"] == 0
    assert m["ppl_ratio/mean"] != 1.0  # scaled by 0: removed, the model changed
    client = MlflowClient(tracking_uri=store)
    arts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"region_dims.csv", "region_dims.png", "region.safetensors"} <= arts


def test_half_precision_scores_are_their_own_cache_entry(store, sandbox_test_dir):
    """importance.store_dtype=bfloat16: another cache entry (the stored precision is part of the
    key), stored in bf16, and the job selects the same number of entries from it."""
    from regionbench.common.cache import ScoreCache

    client, runs = MlflowClient(tracking_uri=store), {}
    for dtype in ("float32", "bfloat16"):
        overrides = [*SMALL, "ratio=0.05", "eval=ppl", f"importance.store_dtype={dtype}"]
        cfg = compose([*overrides, f"tracking.uri={store}", "tracking.experiment=store-dtype"])
        result = run_job(cfg, name=dtype, session=Session())
        assert result["status"] == "FINISHED", result
        runs[dtype] = client.get_run(result["run_id"])
    keys = {d: r.data.tags["importance_key"] for d, r in runs.items()}
    assert keys["float32"] != keys["bfloat16"]
    root = Path(os.environ["REGIONBENCH_CACHE"]) / "importance"
    half = ScoreCache(root).get(keys["bfloat16"])
    assert {t.dtype for d in half.values() for t in (d[n] for n in d)} == {torch.bfloat16}
    params = {d: r.data.metrics["region/params"] for d, r in runs.items()}
    assert params["float32"] == params["bfloat16"]


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_an_unusable_store_is_one_line_and_no_work(tmp_path, cache_dir, sweep):
    """A garbage mlflow.db (or a store URI MLflow cannot use): exit 1 with one line naming the
    store, before any model is loaded (it used to exit 1 in silence)."""
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_text("not a database")
    args = ["-m", "ratio=0,0.05"] if sweep else []
    proc = run_cli([*args, *SMALL], tmp_path, cache_dir, timeout=120)
    assert proc.returncode == 1
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    store = f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert len(said) == 1 and f"cannot use the MLflow store {store}: " in said[0], said
    assert "file is not a database" in said[0]
    assert "loaded" not in proc.stdout + proc.stderr
    bad = run_cli(["tracking.uri=foo://bar", *SMALL], tmp_path, cache_dir, timeout=120)
    assert (
        bad.returncode == 1 and "cannot use the MLflow store foo://bar: " in bad.stdout + bad.stderr
    )
