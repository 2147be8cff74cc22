"""An empty region is an error, never a result (issue 20, item 8): `region=outliers` on a model
without a massive activation, a monolingual region from a language-independent metric through the
Python API, a region of 0 entries at ratio > 0 — one line naming why, before any evaluation, and
no FINISHED run. Only the public API (`rb.*`, `run_job`, the real config) is used, so the same
file runs against older checkouts too."""

from __future__ import annotations

import pytest
from conftest import SMALL, compose
from mlflow.tracking import MlflowClient

import regionbench as rb
from regionbench.pipeline import run_job
from regionbench.testing import char_tokenizer, tiny_llama

TEXTS = {
    "aa": ["the cat sat on the mat.", "a dog ran over the old barn."],
    "bb": ["hello world, this is a test.", "another short document here."],
}


def test_a_monolingual_region_of_a_language_independent_metric_is_refused():
    model, tok = tiny_llama(), char_tokenizer()
    scores = rb.importance(model, tok, TEXTS, metric="magnitude", progress=False)
    with pytest.raises(ValueError) as err:
        rb.select(scores, ratio=0.05, region="monolingual", lang="aa")
    message = str(err.value)
    assert "region=monolingual at ratio 0.05 is empty" in message
    assert "the languages' scores are identical" in message and "\n" not in message
    assert rb.select(scores, ratio=0.05, region="core").numel > 0  # the core is fine
    assert rb.select(scores, ratio=0.0, region="monolingual", lang="aa").numel == 0  # ratio 0


def test_a_ratio_too_small_for_one_entry_is_refused():
    model, tok = tiny_llama(), char_tokenizer()
    scores = rb.importance(model, tok, TEXTS, metric="magnitude", progress=False)
    with pytest.raises(ValueError, match=r"⌊ratio·numel⌋ is 0 in every matrix \(the largest has"):
        rb.select(scores, ratio=1e-6, region="core")


def test_outliers_on_a_model_without_massive_activations_fails_before_evaluation(
    tmp_path, monkeypatch
):
    """sandbox-test has no massive activation: the job fails with one line before it evaluates
    anything (neither the unmodified model nor the modified one), its run is FAILED with no
    evaluation metric, and the store holds no FINISHED run."""
    from regionbench.evaluation import stage

    evaluated = []
    for name in ("baseline", "evaluate", "perplexities"):
        real = getattr(stage, name)
        spy = lambda *a, _real=real, _name=name, **k: evaluated.append(_name) or _real(*a, **k)  # noqa: E731
        monkeypatch.setattr(stage, name, spy)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose([*SMALL, "region=outliers", "ratio=0.05", f"tracking.uri={store}"])
    result = run_job(cfg, name="outliers")
    assert result["status"] == "FAILED", result
    assert evaluated == []
    error = result["error"]
    assert "\n" not in error
    assert error.startswith("region=outliers at ratio 0.05 is empty: the detector found no")
    assert "outliers.rule=sun" in error
    client = MlflowClient(tracking_uri=store)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.status for r in runs] == ["FAILED"]
    metrics = client.get_run(result["run_id"]).data.metrics
    assert not any(k.startswith(("ppl", "bpb", "lm_eval")) for k in metrics), metrics
