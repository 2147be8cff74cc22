"""The bad-input catalogue (issue 14, item 5): every axis and key of `python -m regionbench` given
a wrong name, type, range or file, and what the user must get for each: one line naming the value
and what is valid, a non-zero exit, no FINISHED run in the store, nothing half-written in the
cache.

Most cases are stopped by the command line's own checks (`preflight.check_command_line`, the
first thing `main()` does: before Hydra starts and before any store, cache or model is touched);
they run in this process. Broken files that only show when the job opens them run as a job
(`pipeline.run_job`), and a representative few as the real command, read back through
`MlflowClient`. The disk-full case fakes ENOSPC in the safetensors writer (no tmpfs without root).
"""

from __future__ import annotations

import errno
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import SMALL, compose, run_cli
from mlflow.tracking import MlflowClient

import regionbench.preflight as entry
from regionbench.data.local import hash_split
from regionbench.pipeline import run_job
from regionbench.session import Session

# (case id, command-line arguments, what the one error line must say). `{files}` is the folder of
# broken inputs made by the `files` fixture. Every case also gets +debug=default (sandbox-test).
CLI_CASES = [
    # an unknown option of every config group
    (
        "group-model",
        ["model=sandbox-xx"],
        ["model option 'sandbox-xx'", "choices: bible-s, bloom-560m"],
    ),
    ("group-metric", ["metric=taylr"], ["metric option 'taylr'", "did you mean 'taylor'"]),
    ("group-region", ["region=cor"], ["region option 'cor'", "did you mean 'core'"]),
    ("group-intervention", ["intervention=remov"], ["'remov'", "did you mean 'remove'"]),
    ("group-data", ["data=wiki"], ["data option 'wiki'", "did you mean 'wikipedia'"]),
    ("group-eval", ["eval=defualt"], ["eval option 'defualt'", "did you mean 'default'"]),
    ("group-frozen_set", ["+frozen_set=core-7"], ["frozen_set option 'core-7'", "core-5"]),
    ("group-experiment", ["+experiment=freez"], ["experiment option 'freez'", "'freeze'"]),
    ("group-debug", ["+debug=tiny"], ["debug option 'tiny'", "choices: default"]),
    ("group-importance", ["+importance=papr"], ["importance option 'papr'", "'paper'"]),
    ("group-budget", ["+budget=lape-neuron"], ["budget option 'lape-neuron'", "lape-neurons"]),
    ("group-null", ["model=null"], ["model option 'null'", "choices:"]),
    # ratio: out of range and not a number
    ("ratio-negative", ["ratio=-0.1"], ["ratio -0.1 is outside [0, 1)"]),
    ("ratio-one", ["ratio=1"], ["ratio 1.0 is outside [0, 1)"]),
    ("ratio-1.5", ["ratio=1.5"], ["ratio 1.5 is outside [0, 1)"]),
    ("ratio-abc", ["ratio=abc"], ["ratio 'abc' is not a number", "default: ratio=0.01"]),
    ("ratio-list", ["ratio=[0.1]"], ["ratio [0.1] is not a number"]),
    # languages
    ("eval-lang", ["data.eval_langs=[latn,klingon]"], ["'klingon'", "choices: arab, armn"]),
    ("importance-lang", ["data.importance_langs=[zz]"], ["'zz'", "choices: arab"]),
    ("eval-langs-not-a-list", ["data.eval_langs=latn"], ["'latn' is not a list of strings"]),
    (
        "monolingual-lang",
        ["region=monolingual", "region.lang=xx"],
        ["region.lang (an importance language) 'xx'", "choices: arab"],
    ),
    ("monolingual-no-lang", ["region=monolingual"], ["needs region.lang; choices: latn, cyrl"]),
    # model, dtype, device
    ("dtype", ["model.dtype=float8"], ["model.dtype 'float8'", "choices: auto, bf16"]),
    ("device", ["device=tpu"], ["device 'tpu'", "choices: auto, cpu"]),
    ("device-memory", ["device_memory_gb=0"], ["device_memory_gb 0.0 must be a finite number > 0"]),
    (
        "device-memory-too-small",
        ["device_memory_gb=0.0001"],
        ["importance at importance.batch_size=4 x 128 tokens needs ≈", "MB", "no batch fits"],
    ),
    ("model-null", ["model.name=null"], ["model.name null is not a string"]),
    ("model-hf-without-name", ["model=hf"], ["model=hf needs model.name"]),
    ("trust-remote-code", ["model.trust_remote_code=maybe"], ["'maybe' is not true or false"]),
    (
        "offline-hub-id",
        ["model.name=someorg/nonexistent"],
        ["unknown model 'someorg/nonexistent'", "not a sandbox model (sandbox-test"],
    ),
    ("missing-model-folder", ["model.name={files}/no-model"], ["no-model' does not exist"]),
    ("model-folder-without-config", ["model.name={files}/no-config"], ["has no config.json"]),
    # seed: the wrong type used to run to FINISHED (x) or silently become seed=1 (1.5)
    ("seed-x", ["seed=x"], ["seed 'x' is not an integer", "default: seed=0"]),
    ("seed-1.5", ["seed=1.5"], ["seed 1.5 is not an integer"]),
    ("seed-negative", ["seed=-1"], ["seed -1 must be an integer >= 0"]),
    # data, intervention, eval, importance, outliers values
    ("eval-docs-abc", ["data.eval_docs=abc"], ["data.eval_docs 'abc' is not an integer"]),
    ("eval-docs-zero", ["data.eval_docs=0"], ["data.eval_docs 0 must be an integer >= 1"]),
    ("factor-abc", ["intervention.factor=abc"], ["intervention.factor 'abc' is not a number"]),
    ("noise-std-negative", ["intervention=noise", "intervention.std=-1"], ["std -1.0", ">= 0"]),
    ("freeze-steps", ["intervention=freeze", "intervention.steps=-1"], ["steps -1 is not a pos"]),
    ("lm-eval-limit", ["eval.lm_eval.limit=-1"], ["eval.lm_eval.limit -1.0 must be", "(0, 1)"]),
    ("lm-eval-fewshot", ["eval.lm_eval.num_fewshot=-1"], ["num_fewshot -1 must be an integer"]),
    ("eval-batch-size", ["eval.batch_size=0"], ["eval.batch_size 0 must be an integer >= 1"]),
    ("samples-zero", ["importance.samples=0"], ["importance.samples 0 must be an integer >= 1"]),
    ("samples-negative", ["importance.samples=-5"], ["importance.samples -5 must be"]),
    ("scope", ["importance.scope=matrix"], ["'matrix': did you mean 'matrices'"]),
    ("include-regex", ["importance.include=['[']"], ["importance.include '[' is not a valid reg"]),
    ("outliers-docs", ["outliers.docs=0"], ["outliers.docs 0 must be an integer >= 1"]),
    (
        "outliers-rule",
        ["outliers.rule=sunn"],
        ["outliers.rule 'sunn'", "choices: peak_median, sun"],
    ),
    ("outliers-median-factor", ["outliers.median_factor=1"], ["outliers.median_factor 1.0 must"]),
    (
        "outliers-abs-min",
        ["outliers.abs_min=-1"],
        ["outliers.abs_min -1.0 must be a finite number >= 0"],
    ),
    ("importance-seq-len", ["importance.seq_len=1"], ["importance.seq_len 1 must be an integer"]),
    ("store-dtype", ["importance.store_dtype=fp8"], ["'fp8': choices: bfloat16, float16"]),
    ("grammar-pairs", ["eval.lm_eval.grammar_pairs=0"], ["grammar_pairs 0 must be an integer"]),
    ("packing", ["importance.packing=doc"], ["'doc': did you mean 'documents'"]),
    ("drop-long-windows", ["importance.drop_long=true"], ["drop_long=true needs importance.pack"]),
    ("ppl-protocol", ["eval.ppl_protocol=authors"], ["'authors': choices: paper, rolling"]),
    (
        "freeze-betas",
        ["intervention=freeze", "intervention.betas=[0.9,1.5]"],
        ["intervention.betas [0.9, 1.5] is not two numbers in [0, 1)"],
    ),
    ("scale-factor-inf", ["intervention=scale", "intervention.factor=inf"], ["factor inf must"]),
    ("freeze-lr", ["intervention=freeze", "intervention.lr=0"], ["lr 0.0 is not a finite num"]),
    (
        "freeze-schedule",
        ["intervention=freeze", "intervention.schedule=cosin"],
        ["'cosin': did you mean 'cosine'? choices: constant, cosine, linear"],
    ),
    (
        "freeze-target-lang",
        ["intervention=freeze", "intervention.target_langs=[zz]"],
        ["language for data=sandbox 'zz'", "choices: arab"],
    ),
    ("dimension-without-dims", ["region=dimension"], ["needs exactly one of region.dims"]),
    ("top-dims-zero", ["region=dimension", "region.top_dims=0"], ["top_dims 0 must be an int"]),
    ("everywhere-type", ["region.everywhere=maybe"], ["region.everywhere 'maybe' is not true or"]),
    (
        "everywhere-layers",
        ["region=dimension", "region.dims=[1]", "region.everywhere=true", "region.layers=[0]"],
        ["region.everywhere=true takes dimension d in every block", "drop region.layers"],
    ),
    ("data-source", ["data.source=xyz"], ["data source 'xyz': choices: bible, c4, culturax"]),
    ("data-config", ["data.config=x"], ["data.config 'x' only applies to hub sources"]),
    ("pair-over", ["tracking.pair_over=[sed]"], ["names 'sed'", "did you mean seed"]),
    (
        "lm-eval-task-of-another-source",
        ["data=local", "data.path={files}/two-splits", "eval.lm_eval.tasks=[sandbox_grammar]"],
        ["lm-eval task 'sandbox_grammar' exists only with data=sandbox", "drop it from"],
    ),
    ("experiment-null", ["tracking.experiment=null"], ["tracking.experiment null is not a str"]),
    ("resume", ["resume=maybe"], ["resume 'maybe' is not true or false"]),
    ("heartbeat", ["tracking.heartbeat_s=-1"], ["tracking.heartbeat_s must be a number of sec"]),
    (
        "stale-after",
        ["tracking.heartbeat_s=60", "tracking.stale_after_s=90"],
        ["tracking.stale_after_s=90.0 must exceed twice tracking.heartbeat_s=60.0"],
    ),
    ("device-not-here", ["device=cuda:0"], ["device 'cuda:0' is not available", "cpu"]),
    ("baseline-key", ["tracking.baseline={ratoi:0}"], ["names 'ratoi'", "did you mean ratio"]),
    (
        "coordinates-file",
        ["region=coordinates", "region.file={files}/no-such-file"],
        ["region.file", "no-such-file' is not a readable file"],
    ),
    # data=local: missing, empty, invalid UTF-8, one document, not parquet, wrong column
    ("local-no-path", ["data=local"], ["data=local needs data.path"]),
    ("local-missing", ["data=local", "data.path={files}/nowhere"], ["is not a readable folder"]),
    ("local-empty-file", ["data=local", "data.path={files}/empty"], ["xx.txt' is empty"]),
    (
        "local-invalid-utf8",
        ["data=local", "data.path={files}/garbage"],
        ["garbage/xx.txt' as text", "byte 0xff in position 6", "must be UTF-8"],
    ),
    (
        "local-one-document",
        ["data=local", "data.path={files}/one-doc"],
        ["'xx' has no eval documents", "its one document went to train", "~15"],
    ),
    (
        "local-not-parquet",
        ["data=local", "data.path={files}/not-parquet"],
        ["xx.parquet' as parquet", "magic bytes"],
    ),
    (
        "local-bad-jsonl",
        ["data=local", "data.path={files}/bad-jsonl"],
        ["xx.jsonl' as json", "JSON parse error"],
    ),
    (
        "local-text-field",
        ["data=local", "data.path={files}/jsonl", "data.text_field=body"],
        ["no 'body' column; columns: text"],
    ),
    # Hydra-level mistakes: one line that names the fix that works
    ("unknown-key", ["ratoi=0.1"], ["config key in the root 'ratoi'", "did you mean 'ratio'"]),
    ("unknown-key-plus", ["+ratoi=0.1"], ["'ratoi': did you mean 'ratio'"]),
    ("unknown-nested-key", ["data.eval_doc=3"], ["config key in data 'eval_doc'", "'eval_docs'"]),
    ("sweep-without-m", ["ratio=0.1,0.2"], ["ratio=0.1,0.2 is a sweep", "add -m", "-m ratio="]),
    ("list-sweep", ["data.eval_langs=latn,cyrl"], ["add -m", "data.eval_langs=[latn,cyrl]"]),
    ("frozen-set-without-plus", ["frozen_set=core-5"], ["added with a plus: +frozen_set=core-5"]),
    ("experiment-without-plus", ["experiment=freeze"], ["with a plus: +experiment=freeze"]),
    (
        "plus-on-a-chosen-group",
        ["+experiment=freeze", "+frozen_set=core-5"],
        ["frozen_set is already chosen", "drop the plus: frozen_set=core-5"],
    ),
    ("plus-on-a-key", ["+ratio=0.3"], ["ratio is already in the config", "drop the plus"]),
    ("no-equals", ["ratio"], ["cannot read the override 'ratio'", "write key=value"]),
    ("bad-list", ["ratio=[0.1"], ["cannot read the override 'ratio=[0.1'"]),
    ("bad-interpolation", ["model.name=${nope}"], ["model.name: Interpolation key 'nope'"]),
    # a sweep: a value of the wrong type stops it before any job runs
    ("sweep-bad-type", ["-m", "seed=0,x"], ["seed 'x' is not an integer"]),
    ("sweep-needs-key", ["-m", "model=sandbox-test,hf"], ["model=hf needs model.name"]),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Broken inputs: data folders with empty, non-UTF-8, one-document and non-parquet files, a
    model folder without config.json."""
    root = tmp_path_factory.mktemp("bad")
    for name, fname, content in [
        ("empty", "xx.txt", b""),
        ("garbage", "xx.txt", b"hello \xff\xfe world\n\n\x80\x81 more\n"),
        ("not-parquet", "xx.parquet", bytes(range(256)) * 8),
        ("bad-jsonl", "xx.jsonl", b'{"text": "a b c"\nnot json\n'),
        ("jsonl", "xx.jsonl", b'{"text": "a b c"}\n{"text": "d e f"}\n'),
    ]:
        (root / name).mkdir()
        (root / name / fname).write_bytes(content)
    (root / "one-doc").mkdir()
    doc = next(d for i in range(100) if hash_split(d := f"one document, number {i}") == "train")
    (root / "one-doc" / "xx.txt").write_text(doc + "\n")
    (root / "no-config").mkdir()
    (root / "no-config" / "README").write_text("not a model\n")
    for split in ("eval", "importance"):  # a good folder of texts
        (root / "two-splits" / split).mkdir(parents=True)
        (root / "two-splits" / split / "xx.txt").write_text("a document\n\nanother one\n")
    return root


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _half_written(folder: Path) -> list[str]:
    """Temporary files or folders left behind, and score entries without their manifest."""
    left = [p for p in _tree(folder) if ".tmp" in Path(p).name]
    scores = folder / "importance"
    if scores.is_dir():
        left += [
            str(p)
            for p in scores.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not (p / "manifest.json").is_file()
        ]
    return left


def _statuses(cwd: Path) -> list[str]:
    db = cwd / "mlruns" / "mlflow.db"
    if not db.is_file():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return [
        r.info.status
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
    ]


def _marks(case_id: str) -> list:
    if case_id != "device-not-here":
        return []
    import torch

    if torch.cuda.is_available():
        return [pytest.mark.skip(reason="this machine has a GPU")]
    return []


@pytest.mark.parametrize(
    ("args", "says"), [pytest.param(*c[1:], id=c[0], marks=_marks(c[0])) for c in CLI_CASES]
)
def test_command_line_says_one_line_before_any_work(
    args, says, files, cache_dir, tmp_path, monkeypatch
):
    args = [a.replace("{files}", str(files)) for a in args]
    monkeypatch.chdir(tmp_path)
    before = _tree(cache_dir)
    with pytest.raises(SystemExit) as done:
        entry.check_command_line([*args, *SMALL])  # what main() does first
    message = done.value.code
    assert isinstance(message, str) and message.startswith("error: "), message  # exit status 1
    assert "\n" not in message and "Traceback" not in message
    for part in [s.replace("{files}", str(files)) for s in says]:
        assert part in message, message
    assert not (tmp_path / "mlruns").exists()  # no store, so no run of any status
    assert not (tmp_path / "outputs").exists()  # Hydra never started
    assert _tree(cache_dir) == before  # nothing written to the cache


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-m", "ratio=0,1.5"],  # a value only some jobs reject fails those jobs, not the sweep
        ["-m", "seed=range(0,3)", "metric=taylor,random"],
        ["-m", "model=glob(sandbox-t*)"],
        ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "ratio=0,0.1"],
        ["eval.lm_eval.limit=0.5", "eval.lm_eval.num_fewshot=0"],
        ["+experiment=freeze", "frozen_set=core-5"],
        ["+frozen_set=core-5"],
        ["-m", "+experiment=freeze"],
        ["model=hf", "model.name={model}"],
        ["data=local", "data.path={files}/split", "importance.samples=2"],
        ["data.eval_langs=[latn,cyrl]", "importance.include=['layers\\.0\\.']"],
        ["--cfg", "job", "seed=x"],  # Hydra's own flags are Hydra's business
    ],
    ids=lambda args: " ".join(args) or "defaults",
)
def test_good_command_lines_pass_the_checks(args, files, sandbox_test_dir):
    """No false alarms: what works must still get past `preflight`."""
    from regionbench.config import conf_dir

    split = files / "split"
    for name in ("eval", "importance"):
        (split / name).mkdir(parents=True, exist_ok=True)
        (split / name / "xx.txt").write_text("a document\n\nanother one\n")
    args = [
        a.replace("{files}", str(files)).replace("{model}", str(sandbox_test_dir)) for a in args
    ]
    entry.preflight([*args, *SMALL], conf_dir())


def test_catalogue_covers_every_axis_and_group():
    from conftest import CONF

    from regionbench.config import schema_keys

    args = [a for c in CLI_CASES for a in c[1]] + [a for c in JOB_CASES for a in c.values[0]]
    named = {a.lstrip("+-~").split("=")[0].split(".")[0] for a in args}
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"}
    assert groups <= named, groups - named  # an unknown option of every group
    assert set(schema_keys()) <= named, set(schema_keys()) - named  # every section and axis
    assert len(CLI_CASES) + len(JOB_CASES) + len(REAL) >= 40


# --- broken files found when the job opens them --------------------------------------------------

SESSION = Session()


def _corrupt_weights(model: Path) -> None:
    (model / "model.safetensors").write_bytes(os.urandom(1000))


def _truncated_weights(model: Path) -> None:
    with (model / "model.safetensors").open("r+b") as f:
        f.truncate(5000)


def _no_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()


# (case id, overrides, how to break a copy of the sandbox-test folder or None, what it must say)
JOB_CASES = [
    pytest.param(
        ["model.name={model}"],
        _corrupt_weights,
        ["model.safetensors is not a readable safetensors file", "truncated or corrupt"],
        id="corrupt-safetensors",
    ),
    pytest.param(
        ["model.name={model}"],
        _truncated_weights,
        ["model.safetensors is not a readable safetensors file", "truncated or corrupt"],
        id="truncated-safetensors",
    ),
    pytest.param(["model.name={model}"], _no_weights, ["{model}"], id="model-without-weights"),
    pytest.param(
        ["eval.lm_eval.tasks=[no_such_task]"],
        None,
        ["unknown lm-eval task 'no_such_task'", "did you mean"],
        id="unknown-lm-eval-task",
    ),
    pytest.param(
        ["paths.cache_dir={tmp}/a-file/cache"],
        None,
        ["paths.cache_dir", "a-file/cache' is not a writable folder (Not a directory)"],
        id="cache-dir-not-writable",
    ),
]


@pytest.mark.parametrize(("overrides", "damage", "says"), JOB_CASES)
def test_broken_files_fail_the_job_in_one_line(
    overrides, damage, says, sandbox_test_dir, cache_dir, tmp_path
):
    model = tmp_path / "model"
    if damage is not None:
        shutil.copytree(sandbox_test_dir, model)
        damage(model)
    (tmp_path / "a-file").write_text("a file where a folder should be\n")
    subst = {"{model}": str(model), "{tmp}": str(tmp_path)}

    def fill(text: str) -> str:
        for key, value in subst.items():
            text = text.replace(key, value)
        return text

    store = tmp_path / "store"
    overrides = [fill(o) for o in overrides]
    cfg = compose([*overrides, *SMALL, f"tracking.uri=sqlite:///{store}/mlflow.db"])
    result = run_job(cfg, name="bad", session=SESSION)
    assert result["status"] == "FAILED", result
    message = result["error"]
    assert "\n" not in message and "Traceback" not in message, message
    for part in says:
        assert fill(part) in message, message
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("regionbench").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not _half_written(cache_dir)


def test_a_full_disk_fails_the_job_and_leaves_no_entry(
    sandbox_test_dir, cache_dir, tmp_path, monkeypatch
):
    """ENOSPC while the importance scores are written: the job fails in one line naming the file,
    and neither a score entry nor a temporary file is left (the next run computes again)."""
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)  # the first blocks made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    before = _tree(cache_dir / "importance") if (cache_dir / "importance").is_dir() else set()
    store = f"sqlite:///{tmp_path}/mlflow.db"
    # the random metric with a seed no other test uses: a score entry this job must write
    cfg = compose(["metric=random", "seed=4093", "ratio=0.05", *SMALL, f"tracking.uri={store}"])
    result = run_job(cfg, name="full", session=SESSION)
    assert result["status"] == "FAILED"
    assert "No space left on device" in result["error"] and "\n" not in result["error"]
    assert "scores_0.safetensors" in result["error"]
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("regionbench").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    new = _tree(cache_dir / "importance") - before
    assert not [p for p in new if not p.endswith(".lock")], new
    assert not _half_written(cache_dir)


@pytest.mark.parametrize("store", ["garbage-db", "unknown-scheme", "read-only", "deleted"])
def test_an_unusable_store_is_one_line_naming_it(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    if store == "deleted":  # the experiment was deleted in the UI: MLflow refuses new runs in it
        client = MlflowClient(tracking_uri=uri)
        client.delete_experiment(client.create_experiment("regionbench"))
    elif store == "garbage-db":
        (tmp_path / "mlruns" / "mlflow.db").write_text("not a database")
    elif store == "unknown-scheme":
        uri = "foo://bar"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only folders (the CLI case below uses a file)")
        (tmp_path / "mlruns").chmod(0o500)
    result = run_job(compose([*SMALL, f"tracking.uri={uri}"]), name="bad", session=SESSION)
    assert result["status"] == "FAILED" and result["run_id"] is None
    assert result["error"].startswith(f"cannot use the MLflow store {uri}: ")
    assert "\n" not in result["error"]
    if store == "deleted":
        assert "experiment 'regionbench' is deleted; restore it" in result["error"]


# --- the real command, a representative few ------------------------------------------------------

# (case id, arguments, what the single error line says, whether the job gets as far as the store)
REAL = [
    ("seed-x", ["seed=x"], "error: seed 'x' is not an integer (default: seed=0)", False),
    ("unknown-key", ["ratoi=0.1"], "did you mean 'ratio'?", False),
    ("sweep-without-m", ["ratio=0.1,0.2"], "add -m", False),
    ("frozen-set-without-plus", ["frozen_set=core-5"], "+frozen_set=core-5", False),
    ("ratio-1.5", ["ratio=1.5"], "error: ratio 1.5 is outside [0, 1)", False),
    ("sweep-bad-type", ["-m", "seed=0,x"], "error: seed 'x' is not an integer", False),
    ("one-document", ["data=local", "data.path={files}/one-doc"], "no eval documents", False),
    ("store-is-a-file", [], "mlruns", False),
    (
        "cache-is-a-file",
        ["paths.cache_dir={cwd}/a-file/cache"],
        "a-file/cache' is not a writable folder (Not a directory)",
        False,
    ),
]


@pytest.fixture(scope="module")
def real(files, cache_dir, sandbox_test_dir, tmp_path_factory):
    """Every REAL case run as `python -m regionbench`, two at a time."""

    def one(case):
        name, args, _, _ = case
        cwd = tmp_path_factory.mktemp(name)
        (cwd / "a-file").write_text("a file where a folder should be\n")
        if name == "store-is-a-file":
            (cwd / "mlruns").write_text("a file where the store's folder should be\n")
        args = [a.replace("{files}", str(files)).replace("{cwd}", str(cwd)) for a in args]
        return name, (cwd, run_cli([*args, *SMALL], cwd, cache_dir, timeout=300))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, REAL))


@pytest.mark.parametrize(("name", "says", "recorded"), [(c[0], c[2], c[3]) for c in REAL])
def test_the_command_exits_non_zero_with_one_line(name, says, recorded, real):
    cwd, proc = real[name]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    said = [
        line for line in output.splitlines() if line.startswith("error: ") or " failed: " in line
    ]
    assert len(said) == 1 and says in said[0], output[-3000:]
    if not recorded:  # stopped before the store: the error is the last thing said
        assert proc.stderr.strip().splitlines()[-1] == said[0]
        assert not (cwd / "mlruns").is_dir()
    else:  # the job started: its run is FAILED, never FINISHED
        assert _statuses(cwd) == ["FAILED"]
    assert "loaded sandbox-test" not in output  # no model was loaded
