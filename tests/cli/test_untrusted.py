"""Untrusted files: nothing in a (shared) cache is ever run as code or used unchecked.

A run's lm-eval task code comes from the installed package, never from a task folder or the
cache; edited cache entries are caught by their checksums and recomputed; a cache on another
filesystem than $TMPDIR, written under a group umask, works on the first run and stays readable
by the group."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import SMALL, run_cli
from mlflow.tracking import MlflowClient

from regionbench.evaluation import harness, task_files
from regionbench.testing import tiny_llama, tiny_tokenizer

TEXTS = {"en": ["the cat sat on the mat", "a dog ran to the old house"]}
PAIRS = {"en": [{"good": "the cat sat", "bad": "the cat sit", "kind": "agreement"}]}


def _planted(marker: Path) -> str:
    """Python that leaves `marker` behind if it is ever run, and defines what rb_tasks does."""
    return (
        f"open({str(marker)!r}, 'w').close()\n"
        "from regionbench.evaluation.tasks.rb_tasks import *  # noqa\n"
        "from regionbench.evaluation.tasks.rb_tasks import load_jsonl, grammar_results\n"
    )


def test_lm_eval_takes_task_code_from_the_package_only(tmp_path):
    """Even with rb_tasks.py planted wherever lm-eval looks for a YAML's `!function` module
    next to our task files, the code that runs is the package's."""
    root = task_files.task_folder(ppl_texts=TEXTS, grammar_pairs=PAIRS)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # private: only this user writes it
    assert task_files.task_folder(ppl_texts=TEXTS, grammar_pairs=PAIRS) == root  # once
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".yaml", ".jsonl"}
    assert not any("!function" in p.read_text(encoding="utf-8") for p in files)

    marker = tmp_path / "ran"
    for shadow in (root / "rb_tasks.py", root / "regionbench/evaluation/tasks/rb_tasks.py"):
        shadow.parent.mkdir(parents=True, exist_ok=True)
        shadow.write_text(_planted(marker))
    tok = tiny_tokenizer([d for docs in TEXTS.values() for d in docs] + ["the cat sit"])
    results = harness.run_lm_eval(
        tiny_llama(vocab_size=96), tok, ["sandbox_grammar", "rb_ppl"], include_path=root
    )
    assert {"sandbox_grammar_en", "rb_ppl_en"} <= set(results["results"])
    assert not marker.exists()
    package = Path(task_files.__file__).resolve().parent / "tasks" / "rb_tasks.py"
    loaded = {
        Path(m.__file__).resolve()
        for m in list(sys.modules.values())
        if getattr(m, "__file__", None) and Path(m.__file__).name == "rb_tasks.py"
    }
    assert loaded == {package}


def _other_filesystem() -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no /dev/shm to hold a cache on another filesystem")
    return shm


def _metrics(cwd: Path) -> list[dict]:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("regionbench")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED"] * len(runs)
    return [r.data.metrics for r in runs]


@pytest.mark.slow
def test_a_group_cache_on_another_filesystem_with_planted_code_and_edited_entries(tmp_path):
    """The first run on a cache in a tmpfs (TMPDIR on the disk) works and writes group-readable
    files under umask 002, and puts no code in the cache; then code planted where older
    versions kept task code, an edited importance score and an edited baseline number: the next
    run runs none of it, uses neither edit (one warning each), and logs the same numbers."""
    shm = _other_filesystem()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    assert os.stat(shm).st_dev != os.stat(scratch).st_dev
    cache = shm / f"regionbench-test-{uuid.uuid4().hex}"
    umask002 = ["sh", "-c", 'umask 002 && exec "$0" "$@"', sys.executable]
    args = ["ratio=0.05", *SMALL]
    env = {"TMPDIR": str(scratch)}
    try:
        first = run_cli(args, tmp_path, cache, launcher=umask002, env=env)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        written = [p for p in cache.rglob("*")]
        assert any(p.suffix == ".safetensors" for p in written)
        assert not (cache / "tasks").exists() and not [p for p in written if p.suffix == ".py"]
        wrong = {
            str(p.relative_to(cache)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in written
            if stat.S_IMODE(p.stat().st_mode) != (0o775 if p.is_dir() else 0o664)
        }
        assert not wrong  # the group can read (and, with umask 002, write) every entry
        assert not list(scratch.glob("regionbench-tasks-*"))  # the private task folder is gone

        marker = tmp_path / "ran"
        planted = cache / "tasks" / ("0" * 64)  # where regionbench < 0.2 kept task code
        (planted / "data").mkdir(parents=True)
        (planted / "rb_tasks.py").write_text(_planted(marker))
        (planted / "sandbox_grammar_latn.yaml").write_text(
            "include: _sandbox_grammar_template_yaml\ntask: sandbox_grammar_latn\n"
        )
        [scores] = (cache / "importance").glob("*/scores_0.safetensors")
        from safetensors.torch import load_file, save_file

        tensors = load_file(scores)
        name = next(iter(tensors))
        tensors[name] = torch.flip(tensors[name], [0])  # the same numbers, elsewhere
        save_file(tensors, str(scores))
        [baseline] = (cache / "baselines").glob("*.json")
        entry = json.loads(baseline.read_text())
        for lang in entry["value"]["ppl"]:
            entry["value"]["ppl"][lang]["ppl"] *= 2  # would halve every ppl_ratio
        baseline.write_text(json.dumps(entry))

        second = run_cli(args, tmp_path, cache, launcher=umask002, env=env)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out[-3000:]
        assert not marker.exists()
        damaged = [line for line in out.splitlines() if "is damaged" in line]
        assert len(damaged) == 2, damaged
        assert any(str(scores.parent) in line for line in damaged)
        assert any(str(baseline) in line for line in damaged)
        one, two = _metrics(tmp_path)
        for key in ("ppl_ratio/mean", "ppl/mean", "region/params"):
            assert two[key] == one[key], key
        assert 1.0 < one["ppl_ratio/mean"] < 10.0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
