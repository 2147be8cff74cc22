"""A job with `eval.generation.enabled=true` logs gen/* per language and its before/after
continuations as an MLflow table artifact, for an in-place intervention and for one that trains
(train_region); without the key nothing of it appears and the baseline's cache key is unchanged."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL, compose
from mlflow.tracking import MlflowClient

from regionbench import sandbox
from regionbench.pipeline import GENERATIONS, run_job
from regionbench.session import Session

GEN = ["eval.generation.enabled=true", "eval.generation.docs=4", "eval.generation.new_tokens=8"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(scope="module")
def session():
    return Session()  # one model and baseline for the module's jobs


def _table(client, run_id):
    path = client.download_artifacts(run_id, GENERATIONS)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]


@pytest.mark.parametrize(
    "overrides",
    [["ratio=0.05"], ["intervention=train_region", "ratio=0.05", "intervention.eval_every=0"]],
    ids=["remove", "train_region"],
)
def test_a_job_logs_what_the_model_writes(store, session, sandbox_test_dir, overrides):
    cfg = compose([*overrides, *SMALL, *GEN, "eval=ppl", f"tracking.uri={store}"])
    result = run_job(cfg, name="gen", session=session)
    assert result["status"] == "FINISHED", result
    client = MlflowClient(tracking_uri=store)
    m = client.get_run(result["run_id"]).data.metrics
    for lang in sandbox.PRETRAIN_LANGS:
        for kind in ("lang_match", "wrong_lang", "distinct2"):
            assert 0 <= m[f"gen/{kind}/{lang}"] <= 1, (kind, lang)
    assert {"gen/lang_match/mean", "time/generation_s"} <= set(m)
    rows = _table(client, result["run_id"])
    langs = [r["lang"] for r in rows]
    assert set(langs) >= set(sandbox.PRETRAIN_LANGS)
    assert langs == [lang for lang in dict.fromkeys(langs) for _ in range(4)]  # 4 per language
    for r in rows:
        assert set(r) == {"lang", "prompt", "before", "before_lang", "after", "after_lang"}
        assert r["prompt"] and r["before_lang"] in (*sandbox.LANGUAGES, "und")
    assert any(r["before"] != r["after"] for r in rows)  # the intervention changed something


def test_without_the_key_nothing_is_generated(store, session, sandbox_test_dir):
    cfg = compose(["ratio=0.05", *SMALL, "eval=ppl", f"tracking.uri={store}"])
    result = run_job(cfg, name="nogen", session=session)
    client = MlflowClient(tracking_uri=store)
    assert not any(k.startswith("gen/") for k in client.get_run(result["run_id"]).data.metrics)
    assert GENERATIONS not in {a.path for a in client.list_artifacts(result["run_id"])}
