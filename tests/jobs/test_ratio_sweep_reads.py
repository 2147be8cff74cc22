"""A ratio sweep in one process (the basic launcher's way) reads each language's importance
scores once between its jobs: the language total is summed by the first job and cached, the
others select from it (counted on the real pipeline, sandbox-test)."""

from __future__ import annotations

import json
import math

from conftest import SMALL, compose
from mlflow.tracking import MlflowClient

from regionbench.common import cache
from regionbench.common.cache import ScoreCache
from regionbench.pipeline import run_job
from regionbench.session import Session

RATIOS = (0.01, 0.05, 0.2)


def test_a_ratio_sweep_reads_the_scores_once(tmp_path, sandbox_test_dir, monkeypatch):
    own = tmp_path / "cache"  # a first job that computes: its own importance and totals
    own.mkdir()
    (own / "sandbox").symlink_to(sandbox_test_dir.parent)
    monkeypatch.setenv("REGIONBENCH_CACHE", str(own))
    reads: dict[tuple[str, str], int] = {}
    original = cache.LazyTensors.__getitem__

    def counting(self, name):
        reads[(str(self.path), name)] = reads.get((str(self.path), name), 0) + 1
        return original(self, name)

    monkeypatch.setattr(cache.LazyTensors, "__getitem__", counting)
    store, session, runs = f"sqlite:///{tmp_path}/mlflow.db", Session(), []
    for ratio in RATIOS:
        cfg = compose([*SMALL, f"ratio={ratio}", "eval=ppl", f"tracking.uri={store}"])
        result = run_job(cfg, name=f"ratio={ratio}", session=session)
        assert result["status"] == "FINISHED", result
        runs.append(MlflowClient(tracking_uri=store).get_run(result["run_id"]))
    (key,) = {r.data.tags["importance_key"] for r in runs}
    scores = ScoreCache(own / "importance").get(key)
    files = {str(lazy.path): list(lazy) for lazy in scores.values()}
    assert len(files) == len(scores) > 1  # one file per language
    of_scores = {k: n for k, n in reads.items() if k[0] in files}
    assert of_scores == {(f, p): 1 for f, params in files.items() for p in params}
    (totals,) = {k[0] for k in reads} - set(files)  # the cached total, once per job
    assert totals.startswith(str(own / "totals"))
    assert {n for k, n in reads.items() if k[0] == totals} == {len(RATIOS)}
    manifest = json.loads((own / "importance" / key / "manifest.json").read_text())
    shapes = next(iter(manifest["files"].values()))["tensors"]
    numels = [math.prod(shape) for shape in shapes.values()]
    for ratio, run in zip(RATIOS, runs, strict=True):  # exactly floor(ratio · numel) per matrix
        want = sum(round(ratio * 100) * n // 100 for n in numels)
        assert run.data.metrics["region/params"] == want
